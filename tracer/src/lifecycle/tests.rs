//! Every fault row of docs/contracts.md §1 as synthetic spans: each yields exactly its one
//! detection, a healthy order none.

use std::collections::BTreeMap;

use super::*;

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

struct Span(SpanRecord);

impl Span {
    fn new(order: &str, service: &str, kind: SpanKind, rule: &str, owner: &str) -> Self {
        let mut attributes = BTreeMap::new();
        attributes.insert("order.id".into(), AttrValue::Str(order.into()));
        attributes.insert("order.rule".into(), AttrValue::Str(rule.into()));
        attributes.insert("order.owner".into(), AttrValue::Str(owner.into()));
        Span(SpanRecord {
            trace_id: crate::spans::order_trace_id(order),
            span_id: [7; 8],
            parent_span_id: Some(crate::spans::order_root_span_id(order)),
            links: Vec::new(),
            name: rule.into(),
            kind,
            start_unix_nano: 0,
            end_unix_nano: 0,
            status: SpanStatus::Unset,
            resource: BTreeMap::from([("service.name".into(), AttrValue::Str(service.into()))]),
            attributes,
            events: Vec::new(),
        })
    }
    fn server(order: &str, service: &str, rule: &str) -> Self {
        Self::new(order, service, SpanKind::Server, rule, service)
    }
    fn client(order: &str, service: &str, rule: &str, owner: &str) -> Self {
        Self::new(order, service, SpanKind::Client, rule, owner)
    }
    fn attr(mut self, key: &str, value: &str) -> Self {
        self.0
            .attributes
            .insert(key.into(), AttrValue::Str(value.into()));
        self
    }
    fn code(mut self, code: i64) -> Self {
        self.0
            .attributes
            .insert("http.response.status_code".into(), AttrValue::Int(code));
        if code >= 500 || (code >= 400 && self.0.kind == SpanKind::Client) {
            self.0.status = SpanStatus::Error;
        }
        if code >= 400 {
            return self.attr("error.type", &code.to_string());
        }
        self
    }
    /// A successful call reaching `status` (order.step and order.status both set).
    fn reached(self, status: &str) -> Self {
        self.code(200)
            .attr("order.step", status)
            .attr("order.status", status)
    }
    fn at(mut self, secs: f64, duration: f64) -> SpanRecord {
        self.0.start_unix_nano = T0 + (secs * 1e9) as u64;
        self.0.end_unix_nano = self.0.start_unix_nano + (duration * 1e9) as u64;
        self.0
    }
}

/// The spans of one order's walk (contracts §1), bent by `fault`, starting at `t` seconds.
fn walk(order: &str, fault: Option<&str>, t: f64) -> Vec<SpanRecord> {
    let f = |kind: &str| fault == Some(kind);
    let mut spans = Vec::new();
    let create = Span::server(order, "shop-api", "shop.create")
        .reached("INITIATED")
        .attr("order.key", "cart-key-1");
    if f("session_hung") {
        spans.push(create.at(t, 4.0));
        return spans;
    }
    spans.push(create.at(t, 0.05));
    let lookup_shop = Span::server(order, "shop-api", "shop.lookup").attr("order.lookup", "found");
    if f("created_not_saved") {
        spans.push(
            Span::server(order, "shop-api", "shop.lookup")
                .code(404)
                .attr("order.lookup", "not_found")
                .at(t + 0.5, 0.01),
        );
        return spans;
    }
    let upload = Span::server(order, "shop-api", "shop.upload");
    match fault {
        Some("upload_storage_full") => {
            spans.push(
                upload
                    .attr("order.step", "FILE_UPLOADED")
                    .code(507)
                    .at(t + 1.0, 0.3),
            );
            return spans;
        }
        Some("upload_timeout") => {
            spans.push(
                upload
                    .attr("order.step", "FILE_UPLOADED")
                    .code(504)
                    .at(t + 1.0, 1.5),
            );
            return spans;
        }
        _ => spans.push(upload.reached("FILE_UPLOADED").at(t + 1.0, 0.3)),
    }
    let submit = Span::server(order, "shop-api", "shop.submit");
    if f("submit_db_error") {
        spans.push(
            submit
                .attr("order.step", "SUBMITTED")
                .code(500)
                .at(t + 2.0, 0.05),
        );
        return spans;
    }
    spans.push(submit.reached("SUBMITTED").at(t + 2.0, 0.05));
    spans.push(
        lookup_shop
            .code(200)
            .attr("order.observed_status", "SUBMITTED")
            .at(t + 2.2, 0.01),
    );
    let pricing_client = Span::client(order, "shop-api", "mes.pricing", "mes-api");
    let pricing_server = Span::server(order, "mes-api", "mes.pricing");
    match fault {
        Some("pricing_no_answer") => {
            spans.push(
                pricing_client
                    .attr("order.step", "PRICE_CALCULATED")
                    .attr("error.type", "timeout")
                    .at(t + 2.1, 3.0),
            );
            let mut server = pricing_server
                .attr("order.step", "PRICE_CALCULATED")
                .attr("error.type", "reset")
                .at(t + 2.1, 3.0);
            server.status = SpanStatus::Error;
            spans.push(server);
            return spans;
        }
        Some("pricing_after_change") => {
            spans.push(
                pricing_client
                    .attr("order.step", "PRICE_CALCULATED")
                    .code(409)
                    .at(t + 2.1, 0.1),
            );
            spans.push(
                pricing_server
                    .attr("order.step", "PRICE_CALCULATED")
                    .code(409)
                    .at(t + 2.1, 0.1),
            );
            return spans;
        }
        _ => {
            spans.push(pricing_client.reached("PRICE_CALCULATED").at(t + 2.1, 0.2));
            spans.push(pricing_server.reached("PRICE_CALCULATED").at(t + 2.1, 0.19));
        }
    }
    spans.push(
        Span::client(order, "mes-api", "queue.publish_priced", "order-queue")
            .code(202)
            .at(t + 2.4, 0.01),
    );
    if f("priced_order_dropped") {
        return spans;
    }
    spans.push(
        Span::server(order, "crm-api", "crm.receive_deal")
            .code(201)
            .at(t + 2.6, 0.02),
    );
    spans.push(
        Span::server(order, "crm-api", "crm.approve")
            .reached("MANUFACTURING_APPROVED")
            .at(t + 3.5, 0.02),
    );
    spans.push(
        Span::client(order, "crm-api", "queue.publish_work_order", "order-queue")
            .code(202)
            .at(t + 3.6, 0.01),
    );
    if f("work_order_dropped") {
        return spans;
    }
    spans.push(
        Span::server(order, "mes-api", "mes.receive_work_order")
            .code(201)
            .at(t + 3.8, 0.02),
    );
    if f("operator_never_started") {
        return spans;
    }
    let transition =
        |to: &str| Span::server(order, "mes-api", "mes.transition").attr("order.step", to);
    spans.push(
        transition("MANUFACTURING_STARTED")
            .reached("MANUFACTURING_STARTED")
            .at(t + 4.5, 0.02),
    );
    match fault {
        Some("completion_500") => {
            spans.push(
                transition("MANUFACTURING_COMPLETED")
                    .code(500)
                    .at(t + 5.5, 0.02),
            );
            return spans;
        }
        Some("completion_lost") => {
            spans.push(
                transition("MANUFACTURING_COMPLETED")
                    .reached("MANUFACTURING_COMPLETED")
                    .at(t + 5.5, 0.02),
            );
            spans.push(
                Span::server(order, "mes-api", "mes.lookup")
                    .code(200)
                    .attr("order.lookup", "found")
                    .attr("order.observed_status", "MANUFACTURING_STARTED")
                    .at(t + 6.0, 0.01),
            );
            return spans;
        }
        _ => spans.push(
            transition("MANUFACTURING_COMPLETED")
                .reached("MANUFACTURING_COMPLETED")
                .at(t + 5.5, 0.02),
        ),
    }
    if f("packaging_not_recorded") {
        return spans;
    }
    if !f("packaging_skipped") {
        spans.push(
            transition("PACKAGING")
                .reached("PACKAGING")
                .at(t + 6.5, 0.02),
        );
    }
    if f("shipping_unavailable") {
        spans.push(transition("SHIPPED").code(503).at(t + 7.5, 0.02));
        return spans;
    }
    spans.push(transition("SHIPPED").reached("SHIPPED").at(t + 7.5, 0.02));
    spans.push(
        Span::server(order, "mes-api", "mes.lookup")
            .code(200)
            .attr("order.lookup", "found")
            .attr("order.observed_status", "SHIPPED")
            .at(t + 7.7, 0.01),
    );
    if f("carrier_webhook_lost") {
        return spans;
    }
    spans.push(
        Span::server(order, "crm-api", "crm.carrier_webhook")
            .reached("CLOSED")
            .at(t + 8.5, 0.02),
    );
    spans
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
    let (lifecycle, events) = run(walk("SO-1", None, 0.0), 60.0);
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
    let table = [
        ("created_not_saved", "vanished", "FILE_UPLOADED", "shop-api"),
        (
            "upload_storage_full",
            "failed_step",
            "FILE_UPLOADED",
            "shop-api",
        ),
        ("upload_timeout", "failed_step", "FILE_UPLOADED", "shop-api"),
        ("submit_db_error", "failed_step", "SUBMITTED", "shop-api"),
        (
            "pricing_no_answer",
            "failed_step",
            "PRICE_CALCULATED",
            "mes-api",
        ),
        (
            "pricing_after_change",
            "failed_step",
            "PRICE_CALCULATED",
            "mes-api",
        ),
        (
            "priced_order_dropped",
            "lost_in_transit",
            "MANUFACTURING_APPROVED",
            "crm-api",
        ),
        (
            "work_order_dropped",
            "lost_in_transit",
            "MANUFACTURING_STARTED",
            "mes-api",
        ),
        (
            "operator_never_started",
            "stuck",
            "MANUFACTURING_STARTED",
            "mes-api",
        ),
        (
            "completion_500",
            "failed_step",
            "MANUFACTURING_COMPLETED",
            "mes-api",
        ),
        (
            "completion_lost",
            "backwards",
            "MANUFACTURING_COMPLETED",
            "mes-api",
        ),
        ("packaging_not_recorded", "stuck", "PACKAGING", "mes-api"),
        ("packaging_skipped", "skipped", "PACKAGING", "mes-api"),
        ("shipping_unavailable", "failed_step", "SHIPPED", "mes-api"),
        ("carrier_webhook_lost", "stuck", "CLOSED", "crm-api"),
    ];
    for (fault, kind, step, service) in table {
        let (lifecycle, _) = run(walk("SO-F", Some(fault), 0.0), 60.0);
        assert_eq!(
            detections_of(&lifecycle, "SO-F"),
            one(kind, step, service),
            "fault {fault}"
        );
    }
}

#[test]
fn hung_session_gives_stuck_first_order_and_duplicate_second() {
    let mut spans = walk("SO-A", Some("session_hung"), 0.0);
    spans.extend(walk("SO-B", None, 2.1));
    let (lifecycle, _) = run(spans, 60.0);
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
fn same_key_without_a_hung_creation_is_no_duplicate() {
    let mut spans = walk("SO-A", None, 0.0);
    spans.extend(walk("SO-B", None, 2.1));
    let (lifecycle, _) = run(spans, 60.0);
    assert!(detections_of(&lifecycle, "SO-A").is_empty());
    assert!(detections_of(&lifecycle, "SO-B").is_empty());
}

#[test]
fn detections_come_within_their_limit_and_resolve_when_the_order_moves_on() {
    let (lifecycle, events) = run(walk("SO-S", Some("carrier_webhook_lost"), 0.0), 30.0);
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
    let late = Span::server("SO-S", "crm-api", "crm.carrier_webhook")
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
    let mut spans = walk("SO-R", Some("submit_db_error"), 0.0);
    spans.extend(walk("SO-R", None, 0.0).into_iter().skip(3));
    let (lifecycle, _) = run(spans, 60.0);
    assert!(detections_of(&lifecycle, "SO-R").is_empty());
}

#[test]
fn spans_out_of_order_within_the_reorder_window_are_no_skip() {
    let mut lifecycle = Lifecycle::new(test_config());
    let mut spans = walk("SO-O", None, 0.0);
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
    for span in walk("SO-1", Some("packaging_not_recorded"), 0.0) {
        lifecycle.ingest(span, T0 + 6 * S);
    }
    for span in walk("SO-2", Some("work_order_dropped"), 0.0) {
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
    let saved: Vec<OrderState> = lifecycle.take_dirty();
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
    for span in walk("SO-T", Some("priced_order_dropped"), 0.0) {
        lifecycle.ingest(span, T0 + 3 * S);
    }
    lifecycle.tick(T0 + 4 * S);
    let mut restored = Lifecycle::restore(test_config(), lifecycle.take_dirty());
    let events = restored.tick(T0 + 10 * S);
    assert!(
        events
            .iter()
            .any(|e| matches!(e, Event::Raised(d) if d.kind == DetectionKind::LostInTransit))
    );
}

#[test]
fn expiry_gives_the_order_up_and_resolves_what_is_open() {
    let (mut lifecycle, _) = run(walk("SO-X", Some("operator_never_started"), 0.0), 30.0);
    let events = lifecycle.tick(T0 + 700 * S);
    assert!(events.iter().any(|e| matches!(e, Event::Resolved(_))));
    assert!(events.iter().any(|e| matches!(e, Event::RootSpan(_))));
    assert!(events.iter().any(|e| matches!(e, Event::Forgotten { .. })));
    assert!(lifecycle.order("SO-X").is_none());
}

#[test]
fn memory_is_bounded_by_max_orders() {
    let mut config = test_config();
    config.max_orders = 3;
    config.reorder_secs = 0.0;
    let mut lifecycle = Lifecycle::new(config);
    for i in 0..10 {
        let span = Span::server(&format!("SO-{i}"), "shop-api", "shop.create")
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
    let mut span = Span::server("SO-1", "shop-api", "shop.create").at(0.0, 0.1);
    span.attributes.remove("order.id");
    lifecycle.ingest(span, T0);
    lifecycle.tick(T0 + S);
    assert_eq!(lifecycle.counters().spans_without_order, 1);
    assert_eq!(lifecycle.orders().count(), 0);
}
