//! Every fault row of docs/contracts.md §1 as synthetic spans: each yields exactly its one
//! detection, a healthy order none.

use super::*;
use crate::spans::{Attributes, SpanKind, SpanStatus, order_root_span_id, order_trace_id};

#[path = "../../tests/monitor_common/walk.rs"]
mod walk;
use walk::{FAULTS, Span, hung_pair, walk};

const S: u64 = 1_000_000_000;
const T0: u64 = 1_800_000_000 * S;

fn test_config() -> LifecycleConfig {
    let mut config = LifecycleConfig::default();
    for status in &mut config.statuses {
        if status.stuck_after_secs.is_some() {
            status.stuck_after_secs = Some(10.0);
        }
    }
    for transit in &mut config.transits {
        transit.limit_secs = 5.0;
    }
    config.retry_grace_secs = 2.0;
    config.hung_creation_secs = 2.0;
    config.duplicate_window_secs = 60.0;
    config.reorder_secs = 0.5;
    config.order_expiry_secs = 600.0;
    config
}

/// Feeds spans at their end time (plus a small delivery delay) and ticks every 250 ms.
fn run(spans: Vec<SpanRecord>, until_secs: f64) -> (Lifecycle, Vec<Event>) {
    let mut lifecycle = Lifecycle::new(test_config());
    let mut spans = spans;
    spans.sort_by_key(|s| s.end_unix_nano);
    let mut events = Vec::new();
    let mut next = 0;
    let mut now = T0;
    while now <= T0 + (until_secs * 1e9) as u64 {
        while next < spans.len() && spans[next].end_unix_nano + S / 10 <= now {
            events.extend(lifecycle.ingest(spans[next].clone(), now));
            next += 1;
        }
        events.extend(lifecycle.tick(now));
        now += S / 4;
    }
    (lifecycle, events)
}

/// A span that names `order` and nothing else.
pub(crate) fn span_of(order: &str) -> SpanRecord {
    let mut span = Span::server(order, "shop-api", "shop.create", T0).at(0.0, 0.0);
    span.attributes.retain(|k, _| k == "order.id");
    span
}

fn detections_of(lifecycle: &Lifecycle, order: &str) -> Vec<(String, String, String)> {
    lifecycle
        .order(order)
        .map(|o| {
            o.detections
                .iter()
                .map(|d| {
                    (
                        d.kind.as_str().to_string(),
                        d.step.clone(),
                        d.service.clone(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

fn one(kind: &str, step: &str, service: &str) -> Vec<(String, String, String)> {
    vec![(kind.into(), step.into(), service.into())]
}

#[test]
fn healthy_order_closes_without_detections_and_emits_its_root_span() {
    let (lifecycle, events) = run(walk("SO-1", None, T0), 60.0);
    let order = lifecycle.order("SO-1").unwrap();
    assert_eq!(order.status.as_deref(), Some("CLOSED"));
    assert_eq!(order.history.len(), 10, "{:?}", order.history);
    assert!(order.detections.is_empty(), "{:?}", order.detections);
    let roots: Vec<_> = events
        .iter()
        .filter_map(|e| match e {
            Event::RootSpan(span) => Some(span),
            _ => None,
        })
        .collect();
    assert_eq!(roots.len(), 1);
    assert_eq!(roots[0].span_id, crate::spans::order_root_span_id("SO-1"));
    assert_eq!(roots[0].start_unix_nano, T0);
    assert!(roots[0].events.len() >= 10);
}

#[test]
fn every_fault_row_yields_exactly_its_detection() {
    for (fault, kind, step, service) in FAULTS {
        let (lifecycle, _) = run(walk("SO-F", Some(fault), T0), 60.0);
        assert_eq!(
            detections_of(&lifecycle, "SO-F"),
            one(kind, step, service),
            "fault {fault}"
        );
    }
}

#[test]
fn hung_session_gives_stuck_first_order_and_duplicate_second() {
    let (lifecycle, _) = run(hung_pair("SO-A", "SO-B", T0), 60.0);
    assert_eq!(
        detections_of(&lifecycle, "SO-A"),
        one("stuck", "FILE_UPLOADED", "shop-api")
    );
    assert_eq!(
        detections_of(&lifecycle, "SO-B"),
        one("possible_duplicate", "INITIATED", "shop-api")
    );
    // The duplicate went on to CLOSED: its finding stays on record, resolved.
    let b = lifecycle.order("SO-B").unwrap();
    assert_eq!(b.status.as_deref(), Some("CLOSED"));
    assert!(b.detections[0].resolved_at.is_some());
}

#[test]
fn only_the_first_creation_after_a_hung_one_is_a_duplicate() {
    let mut spans = hung_pair("SO-A", "SO-B", T0);
    let mut later = walk("SO-C", None, T0 + 5 * S);
    later[0] = spans[0].clone();
    later[0]
        .attributes
        .insert("order.id".into(), AttrValue::Str("SO-C".into()));
    later[0].start_unix_nano = T0 + 5 * S;
    later[0].end_unix_nano = T0 + 5 * S + S / 10;
    spans.extend(later);
    let (lifecycle, _) = run(spans, 60.0);
    assert_eq!(detections_of(&lifecycle, "SO-B").len(), 1);
    assert!(detections_of(&lifecycle, "SO-C").is_empty());
}

#[test]
fn same_key_without_a_hung_creation_is_no_duplicate() {
    let mut spans = hung_pair("SO-A", "SO-B", T0);
    // The first creation answered in time this once.
    spans[0].end_unix_nano = spans[0].start_unix_nano + S / 10;
    spans.extend(walk("SO-A", None, T0).into_iter().skip(1));
    let (lifecycle, _) = run(spans, 60.0);
    assert!(detections_of(&lifecycle, "SO-A").is_empty());
    assert!(detections_of(&lifecycle, "SO-B").is_empty());
}

#[test]
fn detections_come_within_their_limit_and_resolve_when_the_order_moves_on() {
    let (lifecycle, events) = run(walk("SO-S", Some("carrier_webhook_lost"), T0), 30.0);
    let raised = events
        .iter()
        .find_map(|e| match e {
            Event::Raised(d) => Some(d.clone()),
            _ => None,
        })
        .unwrap();
    let shipped_at = T0 + (7.52 * 1e9) as u64;
    assert!(raised.at >= shipped_at + 10 * S && raised.at <= shipped_at + 11 * S);
    // The late webhook arrives: the stuck detection resolves, nothing new is raised.
    let mut lifecycle = lifecycle;
    let now = T0 + 31 * S;
    let late = Span::server("SO-S", "crm-api", "crm.carrier_webhook", T0)
        .reached("CLOSED")
        .at(30.5, 0.01);
    lifecycle.ingest(late, now);
    let events = lifecycle.tick(now + S);
    assert!(
        events
            .iter()
            .any(|e| matches!(e, Event::Resolved(d) if d.id == raised.id))
    );
    assert!(!events.iter().any(|e| matches!(e, Event::Raised(_))));
}

#[test]
fn a_retry_that_succeeds_within_the_grace_raises_nothing() {
    let mut spans = walk("SO-R", Some("submit_db_error"), T0);
    spans.extend(walk("SO-R", None, T0).into_iter().skip(3));
    let (lifecycle, _) = run(spans, 60.0);
    assert!(detections_of(&lifecycle, "SO-R").is_empty());
}

#[test]
fn spans_out_of_order_within_the_reorder_window_are_no_skip() {
    let mut lifecycle = Lifecycle::new(test_config());
    let mut spans = walk("SO-O", None, T0);
    spans.reverse();
    let now = T0 + 20 * S;
    for span in spans {
        lifecycle.ingest(span, now);
    }
    lifecycle.tick(now + S);
    let order = lifecycle.order("SO-O").unwrap();
    assert_eq!(order.status.as_deref(), Some("CLOSED"));
    assert!(order.detections.is_empty(), "{:?}", order.detections);
}

#[test]
fn restored_state_raises_nothing_twice_and_keeps_timers() {
    let mut lifecycle = Lifecycle::new(test_config());
    for span in walk("SO-1", Some("packaging_not_recorded"), T0) {
        lifecycle.ingest(span, T0 + 6 * S);
    }
    for span in walk("SO-2", Some("work_order_dropped"), T0) {
        lifecycle.ingest(span, T0 + 6 * S);
    }
    lifecycle.tick(T0 + 7 * S);
    let first = lifecycle.tick(T0 + 20 * S);
    assert_eq!(
        first
            .iter()
            .filter(|e| matches!(e, Event::Raised(_)))
            .count(),
        2
    );
    let saved: Vec<OrderState> = lifecycle.take_changes().orders.into_values().collect();
    let mut restored = Lifecycle::restore(test_config(), saved);
    let again = restored.tick(T0 + 25 * S);
    assert!(
        !again.iter().any(|e| matches!(e, Event::Raised(_))),
        "{again:?}"
    );
    assert_eq!(restored.order("SO-1").unwrap().open_detections().count(), 1);
}

#[test]
fn transit_timer_survives_a_restart() {
    let mut lifecycle = Lifecycle::new(test_config());
    for span in walk("SO-T", Some("priced_order_dropped"), T0) {
        lifecycle.ingest(span, T0 + 3 * S);
    }
    lifecycle.tick(T0 + 4 * S);
    let saved = lifecycle.take_changes().orders.into_values().collect();
    let mut restored = Lifecycle::restore(test_config(), saved);
    let events = restored.tick(T0 + 10 * S);
    assert!(
        events
            .iter()
            .any(|e| matches!(e, Event::Raised(d) if d.kind == DetectionKind::LostInTransit))
    );
}

#[test]
fn expiry_gives_the_order_up_and_resolves_what_is_open() {
    let (mut lifecycle, _) = run(walk("SO-X", Some("operator_never_started"), T0), 30.0);
    lifecycle.take_changes();
    let events = lifecycle.tick(T0 + 700 * S);
    assert!(events.iter().any(|e| matches!(e, Event::Resolved(_))));
    assert!(events.iter().any(|e| matches!(e, Event::RootSpan(_))));
    assert!(events.iter().any(|e| matches!(e, Event::Forgotten { .. })));
    assert!(lifecycle.order("SO-X").is_none());
    // The store gets the final state, detections resolved, to keep it queryable.
    let changes = lifecycle.take_changes();
    assert!(changes.orders.is_empty());
    let last = &changes.forgotten["SO-X"];
    assert!(last.open_detections().next().is_none(), "{last:?}");
}

#[test]
fn the_inbox_changes_are_the_spans_taken_in_and_applied_since_the_last_save() {
    let mut lifecycle = Lifecycle::new(test_config());
    lifecycle.ingest(span_of("SO-1"), T0);
    lifecycle.ingest(span_of("SO-2"), T0);
    let first = lifecycle.take_changes();
    assert_eq!(first.inbox_added.keys().collect::<Vec<_>>(), [&1, &2]);
    assert!(first.inbox_removed.is_empty() && first.orders.is_empty());
    lifecycle.tick(T0 + S);
    lifecycle.ingest(span_of("SO-3"), T0 + S);
    let second = lifecycle.take_changes();
    assert_eq!(second.inbox_added.keys().collect::<Vec<_>>(), [&3]);
    assert_eq!(second.inbox_removed.iter().collect::<Vec<_>>(), [&1, &2]);
    assert_eq!(second.orders.len(), 2);
    // Resumed from a store, the spans keep their seqs and new ones follow them.
    let mut resumed = Lifecycle::new(test_config());
    resumed.resume_inbox(vec![(3, T0 + S, span_of("SO-3"))]);
    resumed.ingest(span_of("SO-4"), T0 + S);
    let third = resumed.take_changes();
    assert_eq!(third.inbox_added.keys().collect::<Vec<_>>(), [&4]);
    resumed.flush(T0 + 2 * S);
    assert_eq!(
        resumed
            .take_changes()
            .inbox_removed
            .iter()
            .collect::<Vec<_>>(),
        [&3, &4]
    );
}

#[test]
fn memory_is_bounded_by_max_orders() {
    let mut config = test_config();
    config.max_orders = 3;
    config.reorder_secs = 0.0;
    let mut lifecycle = Lifecycle::new(config);
    for i in 0..10 {
        let span = Span::server(&format!("SO-{i}"), "shop-api", "shop.create", T0)
            .reached("INITIATED")
            .at(i as f64, 0.01);
        lifecycle.ingest(span, T0 + i * S);
        lifecycle.tick(T0 + i * S + S / 2);
    }
    assert_eq!(lifecycle.orders().count(), 3);
    assert_eq!(lifecycle.counters().orders_evicted, 7);
}

#[test]
fn spans_without_an_order_id_are_counted_not_applied() {
    let mut lifecycle = Lifecycle::new(test_config());
    let mut span = Span::server("SO-1", "shop-api", "shop.create", T0).at(0.0, 0.1);
    span.attributes.remove("order.id");
    lifecycle.ingest(span, T0);
    lifecycle.tick(T0 + S);
    assert_eq!(lifecycle.counters().spans_without_order, 1);
    assert_eq!(lifecycle.orders().count(), 0);
}

#[test]
fn spans_delivered_again_after_the_order_moved_on_change_nothing() {
    for fault in [None, Some("completion_lost"), Some("created_not_saved")] {
        let spans = walk("SO-D", fault, T0);
        let mut lifecycle = Lifecycle::new(test_config());
        for span in &spans {
            lifecycle.ingest(span.clone(), T0 + 20 * S);
        }
        lifecycle.tick(T0 + 21 * S);
        let before = lifecycle.order("SO-D").unwrap().clone();
        // The exporter retries a batch the monitor had already taken.
        for span in spans {
            lifecycle.ingest(span, T0 + 22 * S);
        }
        lifecycle.tick(T0 + 23 * S);
        assert_eq!(lifecycle.order("SO-D").unwrap(), &before, "fault {fault:?}");
    }
}

#[test]
fn spans_come_in_cut_to_what_the_lifecycle_reads() {
    let mut span = Span::server("SO-1", "shop-api", "shop.create", T0)
        .reached("INITIATED")
        .attr("http.request.header.cookie", "secret")
        .attr("order.rule", &"r".repeat(1000))
        .at(0.0, 0.1);
    span.name = "POST /orders?email=secret".into();
    span.resource
        .insert("host.name".into(), AttrValue::Str("secret".into()));
    let cut = minimal(span.clone()).unwrap();
    assert!(cut.name.is_empty() && cut.events.is_empty() && cut.links.is_empty());
    assert_eq!(cut.resource.keys().collect::<Vec<_>>(), ["service.name"]);
    assert!(!cut.attributes.contains_key("http.request.header.cookie"));
    assert!(
        !cut.attributes.contains_key("order.rule"),
        "over-long values go"
    );
    assert_eq!(
        cut.attributes["order.status"],
        span.attributes["order.status"]
    );
    assert_eq!(minimal(cut.clone()), Some(cut), "idempotent");
    for bad in ["", " ", &"X".repeat(20_000)] {
        let mut span = span.clone();
        span.attributes
            .insert("order.id".into(), AttrValue::Str(bad.to_string()));
        assert_eq!(minimal(span), None, "{bad:.20}");
    }
    let mut lifecycle = Lifecycle::new(test_config());
    let mut without = span.clone();
    without.attributes.remove("order.id");
    lifecycle.ingest(without, T0);
    assert_eq!(lifecycle.buffered_spans(), 0);
    assert_eq!(lifecycle.counters().spans_without_order, 1);
}

#[test]
fn a_transit_may_start_from_a_status_reached() {
    let mut config = test_config();
    config.transits.push(TransitConfig {
        from_rule: None,
        from_status: Some("SHIPPED".into()),
        to_rule: "crm.carrier_webhook".into(),
        step: "CLOSED".into(),
        service: "crm-api".into(),
        limit_secs: 3.0,
    });
    let mut lifecycle = Lifecycle::new(config);
    let spans = walk("SO-9", Some("carrier_webhook_lost"), T0);
    let mut now = T0;
    let mut events = Vec::new();
    for span in spans {
        now = now.max(span.end_unix_nano);
        events.extend(lifecycle.ingest(span, now));
    }
    // The hand-over's limit (3 s after SHIPPED at 7.5 s) passes before the stuck limit.
    for _ in 0..30 {
        now += S / 4;
        events.extend(lifecycle.tick(now));
    }
    assert_eq!(
        detections_of(&lifecycle, "SO-9"),
        one("lost_in_transit", "CLOSED", "crm-api")
    );
}

/// A walk fed at its end times, with the monitor blind (nothing fed, no ticks) from `down`
/// to `up` seconds after T0 and told so on its return.
fn run_with_downtime(spans: Vec<SpanRecord>, down: f64, up: f64, until: f64) -> Lifecycle {
    let mut lifecycle = Lifecycle::new(test_config());
    let mut spans = spans;
    spans.sort_by_key(|s| s.end_unix_nano);
    let secs = |t: f64| T0 + (t * 1e9) as u64;
    let mut now = T0;
    let mut next = 0;
    while now <= secs(until) {
        let blind = now > secs(down) && now < secs(up);
        while next < spans.len() && spans[next].end_unix_nano + S / 10 <= now {
            if !blind {
                lifecycle.ingest(spans[next].clone(), now);
            }
            next += 1;
        }
        if now >= secs(up) && now < secs(up) + S / 4 {
            let saved: Vec<OrderState> = lifecycle.take_changes().orders.into_values().collect();
            let judged = lifecycle.judged().unwrap();
            lifecycle = Lifecycle::restore(test_config(), saved);
            lifecycle.resume_after_downtime(judged, now);
        }
        if !blind {
            lifecycle.tick(now);
        }
        now += S / 4;
    }
    lifecycle
}

#[test]
fn downtime_makes_no_detection_by_itself() {
    // SO-1's next statuses (and its close) all happen while the monitor is down; SO-2's walk
    // jumps over the downtime from SUBMITTED to later statuses.
    let mut spans = walk("SO-1", None, T0);
    spans.retain(|s| s.end_unix_nano < T0 + 3 * S || s.end_unix_nano > T0 + 4 * S);
    spans.extend(walk("SO-2", None, T0));
    let lifecycle = run_with_downtime(spans, 2.3, 5.0, 60.0);
    for order in ["SO-1", "SO-2"] {
        assert!(
            detections_of(&lifecycle, order).is_empty(),
            "{order}: {:?}",
            detections_of(&lifecycle, order)
        );
    }
    assert_eq!(
        lifecycle.order("SO-2").unwrap().status.as_deref(),
        Some("CLOSED")
    );
}

#[test]
fn an_order_blind_across_a_gap_counts_its_limit_from_the_gap_s_end() {
    // Stuck in SHIPPED for good (carrier_webhook_lost, SHIPPED reached at 7.52 s); the monitor
    // is down from 8 s to 15 s, then a lookup shows the CRM still at SHIPPED.
    let mut spans = walk("SO-S", Some("carrier_webhook_lost"), T0);
    spans.push(
        Span::server("SO-S", "crm-api", "crm.lookup", T0)
            .code(200)
            .attr("order.lookup", "found")
            .attr("order.observed_status", "SHIPPED")
            .at(16.0, 0.01),
    );
    let lifecycle = run_with_downtime(spans.clone(), 8.0, 15.0, 40.0);
    let order = lifecycle.order("SO-S").unwrap();
    assert_eq!(
        detections_of(&lifecycle, "SO-S"),
        one("stuck", "CLOSED", "crm-api")
    );
    // Counted from the gap's end (15 s + 10 s), not from SHIPPED (7.52 s + 10 s).
    assert!(order.detections[0].at >= T0 + 25 * S, "{order:?}");
    // Without new evidence after the gap, nothing is judged.
    spans.pop();
    let lifecycle = run_with_downtime(spans, 8.0, 15.0, 40.0);
    assert!(detections_of(&lifecycle, "SO-S").is_empty());
    assert!(lifecycle.order("SO-S").unwrap().blind_until.is_some());
    assert_eq!(lifecycle.blind_orders(), 1);
}

#[test]
fn faults_after_a_gap_are_still_found() {
    // Down from 0.5 s to 1.5 s: the walks go on well after it, into their faults.
    for (fault, kind, step, service) in [
        ("submit_db_error", "failed_step", "SUBMITTED", "shop-api"),
        ("packaging_skipped", "skipped", "PACKAGING", "mes-api"),
        (
            "work_order_dropped",
            "lost_in_transit",
            "MANUFACTURING_STARTED",
            "mes-api",
        ),
        ("carrier_webhook_lost", "stuck", "CLOSED", "crm-api"),
    ] {
        // A healthy order beside it shows the hand-overs' receivers are in sight.
        let mut spans = walk("SO-F", Some(fault), T0);
        spans.extend(walk("SO-H", None, T0));
        let lifecycle = run_with_downtime(spans, 0.5, 1.5, 40.0);
        assert_eq!(
            detections_of(&lifecycle, "SO-F"),
            one(kind, step, service),
            "{fault}"
        );
    }
}

#[test]
fn a_lagging_source_delays_detections_instead_of_inventing_them() {
    // The agent's evidence lags 15 s behind the wall clock (limits are 10 s): a healthy
    // walk must raise nothing; a real stuck order is raised once the evidence shows it.
    let mut lifecycle = Lifecycle::new(test_config());
    let mut spans = walk("SO-H", None, T0);
    spans.extend(walk("SO-S", Some("carrier_webhook_lost"), T0));
    spans.sort_by_key(|s| s.end_unix_nano);
    let lag = 15 * S;
    let mut now = T0;
    let mut next = 0;
    let mut raised = Vec::new();
    while now <= T0 + 60 * S {
        let evidence = now.saturating_sub(lag);
        while next < spans.len() && spans[next].end_unix_nano <= evidence {
            raised.extend(lifecycle.ingest(spans[next].clone(), now));
            next += 1;
        }
        lifecycle.watermark("agent", evidence, now);
        raised.extend(lifecycle.tick(now));
        now += S / 4;
    }
    assert!(detections_of(&lifecycle, "SO-H").is_empty());
    assert_eq!(
        detections_of(&lifecycle, "SO-S"),
        one("stuck", "CLOSED", "crm-api")
    );
    // Raised at the evidence's time of the limit, though the wall clock was 15 s later.
    let at = lifecycle.order("SO-S").unwrap().detections[0].at;
    let shipped_at = T0 + (7.52 * 1e9) as u64;
    assert!(
        at >= shipped_at + 10 * S && at <= shipped_at + 11 * S,
        "{at}"
    );
}

#[test]
fn a_paused_source_holds_the_timers_until_it_goes_silent() {
    let mut lifecycle = Lifecycle::new(test_config());
    for span in walk("SO-P", None, T0).into_iter().take(3) {
        lifecycle.ingest(span, T0 + 3 * S);
    }
    lifecycle.watermark("agent", T0 + 3 * S, T0 + 3 * S);
    // The feed pauses: 20 s of wall clock, no watermark: SUBMITTED's 10 s limit is not judged.
    let mut events = Vec::new();
    for i in 0..80 {
        events.extend(lifecycle.tick(T0 + 4 * S + i * S / 4));
    }
    assert!(!events.iter().any(|e| matches!(e, Event::Raised(_))));
    // It resumes with its backlog: the walk went on, nothing was stuck.
    for span in walk("SO-P", None, T0).into_iter().skip(3) {
        lifecycle.ingest(span, T0 + 24 * S);
    }
    lifecycle.watermark("agent", T0 + 24 * S, T0 + 24 * S);
    lifecycle.tick(T0 + 26 * S);
    assert!(detections_of(&lifecycle, "SO-P").is_empty());
    assert_eq!(
        lifecycle.order("SO-P").unwrap().status.as_deref(),
        Some("CLOSED")
    );
}

#[test]
fn a_detection_resolved_by_late_evidence_never_ends_before_it_began() {
    let (mut lifecycle, _) = run(walk("SO-S", Some("carrier_webhook_lost"), T0), 30.0);
    let raised_at = lifecycle.order("SO-S").unwrap().detections[0].at;
    // The webhook's span ended before the raise but comes late (past the reorder window).
    let late = Span::server("SO-S", "crm-api", "crm.carrier_webhook", T0)
        .reached("CLOSED")
        .at(15.0, 0.01);
    lifecycle.ingest(late, T0 + 31 * S);
    let events = lifecycle.tick(T0 + 32 * S);
    let resolved = events
        .iter()
        .find_map(|e| match e {
            Event::Resolved(d) => Some(d.clone()),
            _ => None,
        })
        .unwrap();
    assert!(resolved.resolved_at.unwrap() >= raised_at, "{resolved:?}");
}

#[test]
fn an_order_known_only_from_before_a_gap_waits_for_evidence_after_it() {
    // The first span was in the inbox when the monitor went down; the rest of the walk
    // happened while it was down. Resumed after the gap, the order raises nothing.
    let mut lifecycle = Lifecycle::new(test_config());
    let first = walk("SO-I", None, T0).remove(0);
    lifecycle.resume_inbox(vec![(1, T0 + S / 10, first)]);
    lifecycle.resume_after_downtime(T0, T0 + 20 * S);
    for i in 0..200 {
        lifecycle.tick(T0 + 20 * S + i * S / 4);
    }
    assert!(detections_of(&lifecycle, "SO-I").is_empty());
    assert!(lifecycle.order("SO-I").unwrap().blind_until.is_some());
}

#[test]
fn a_hand_over_whose_receiver_was_not_seen_since_the_agent_started_is_no_loss() {
    // The agent restarted: the MES's consumer connection predates it and stays invisible.
    // The order waits at MANUFACTURING_APPROVED; `stuck` says so, not `lost_in_transit`.
    let mut lifecycle = Lifecycle::new(test_config());
    lifecycle.watermark("agent", T0, T0);
    let mut spans = walk("SO-N", Some("operator_never_started"), T0);
    spans.retain(|s| str_attr(s, "order.rule") != Some("mes.receive_work_order"));
    for span in spans {
        lifecycle.ingest(span, T0 + 5 * S);
    }
    for i in 0..120 {
        let now = T0 + 6 * S + i * S / 4;
        lifecycle.watermark("agent", now, now);
        lifecycle.tick(now);
    }
    assert_eq!(
        detections_of(&lifecycle, "SO-N"),
        one("stuck", "MANUFACTURING_STARTED", "mes-api")
    );
    // Once a receive was seen, a silent hand-over is a loss again.
    let mut lifecycle = Lifecycle::new(test_config());
    lifecycle.watermark("agent", T0, T0);
    let mut spans = walk("SO-D", Some("work_order_dropped"), T0);
    spans.extend(walk("SO-H", None, T0));
    for span in spans {
        lifecycle.ingest(span, T0 + 10 * S);
    }
    for i in 0..80 {
        let now = T0 + 11 * S + i * S / 4;
        lifecycle.watermark("agent", now, now);
        lifecycle.tick(now);
    }
    assert_eq!(
        detections_of(&lifecycle, "SO-D"),
        one("lost_in_transit", "MANUFACTURING_STARTED", "mes-api")
    );
}
