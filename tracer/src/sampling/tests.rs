use std::time::Duration;

use super::*;
use crate::spans::{SpanKind, order_root_span_id, order_trace_id};

const SERVICES: [&str; 3] = ["shop-api", "mes-api", "crm-api"];

fn span(order: &str, service: &str, error: bool) -> SpanRecord {
    SpanRecord {
        trace_id: order_trace_id(order),
        span_id: rand::random(),
        parent_span_id: Some(order_root_span_id(order)),
        links: Vec::new(),
        name: "POST /x".into(),
        kind: SpanKind::Server,
        start_unix_nano: 1,
        end_unix_nano: 2,
        status: if error {
            SpanStatus::Error
        } else {
            SpanStatus::Unset
        },
        resource: [("service.name".into(), AttrValue::Str(service.into()))].into(),
        attributes: [("order.id".into(), AttrValue::Str(order.into()))].into(),
        events: Vec::new(),
    }
}

fn config(ratio: f64) -> SamplingConfig {
    SamplingConfig {
        default_ratio: ratio,
        ..SamplingConfig::default()
    }
}

/// Offers each order's spans (two per service; the `error_at`-th one failing, when given) and
/// returns how many of each order's spans were exported.
fn run(
    sampler: &mut Sampler,
    orders: &[String],
    error_at: impl Fn(usize) -> Option<usize>,
) -> Vec<usize> {
    let now = Instant::now();
    let mut exported: HashMap<[u8; 16], usize> = HashMap::new();
    let mut out = Vec::new();
    for (n, order) in orders.iter().enumerate() {
        for i in 0..6 {
            sampler.offer(
                span(order, SERVICES[i / 2], error_at(n) == Some(i)),
                now,
                &mut out,
            );
        }
    }
    for s in out {
        *exported.entry(s.trace_id).or_default() += 1;
    }
    orders
        .iter()
        .map(|o| exported.get(&order_trace_id(o)).copied().unwrap_or(0))
        .collect()
}

fn orders(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("SO-{i:06}")).collect()
}

#[test]
fn orders_are_kept_or_dropped_whole_and_hosts_agree() {
    let orders = orders(2000);
    let a = run(&mut Sampler::new(config(0.3)), &orders, |_| None);
    let b = run(&mut Sampler::new(config(0.3)), &orders, |_| None);
    assert_eq!(a, b, "two agents decide alike");
    assert!(
        a.iter().all(|n| *n == 0 || *n == 6),
        "an order split: {a:?}"
    );
    let kept = a.iter().filter(|n| **n == 6).count();
    assert!(
        (450..750).contains(&kept),
        "0.3 of 2000 orders should be about 600, got {kept}"
    );
}

#[test]
fn an_order_with_an_error_is_never_dropped() {
    let orders = orders(1000);
    // An error at a different step of each order: before it, the ratio had dropped the order.
    let counts = run(&mut Sampler::new(config(0.0)), &orders, |n| {
        (n % 3 == 0).then_some(n % 6)
    });
    for (n, count) in counts.iter().enumerate() {
        assert_eq!(*count, if n % 3 == 0 { 6 } else { 0 }, "order {n}");
    }
}

#[test]
fn errors_are_kept_even_with_keeping_off_for_the_rest() {
    let mut sampler = Sampler::new(SamplingConfig {
        always_keep_errors: false,
        ..config(0.0)
    });
    let counts = run(&mut sampler, &orders(10), |_| Some(0));
    assert!(
        counts.iter().all(|c| *c == 0),
        "always_keep_errors = false obeys the ratio"
    );
    let mut sampler = Sampler::new(config(0.0));
    let mut out = Vec::new();
    let mut lookup = span("SO-1", "shop-api", false);
    lookup
        .attributes
        .insert("order.lookup".into(), AttrValue::Str("not_found".into()));
    sampler.offer(lookup, Instant::now(), &mut out);
    assert_eq!(
        out.len(),
        1,
        "a lookup that found nothing is an anomaly, kept"
    );
}

#[test]
fn ratios_are_nested_per_service() {
    let orders = orders(500);
    let mut low = Sampler::new(config(0.1));
    let mut high = Sampler::new(config(0.5));
    let (low, high) = (
        run(&mut low, &orders, |_| None),
        run(&mut high, &orders, |_| None),
    );
    assert!(low.iter().zip(&high).all(|(l, h)| *l == 0 || *h == 6));
    let mut cfg = config(1.0);
    cfg.services.insert(
        "mes-api".into(),
        ServiceSampling {
            ratio: Some(0.0),
            max_spans_per_second: None,
        },
    );
    let counts = run(&mut Sampler::new(cfg), &orders, |_| None);
    assert!(
        counts.iter().all(|c| *c == 4),
        "mes-api's two spans of each order dropped"
    );
}

#[test]
fn the_ceiling_limits_a_service_but_not_its_errors() {
    let mut cfg = config(1.0);
    cfg.services.insert(
        "mes-api".into(),
        ServiceSampling {
            ratio: None,
            max_spans_per_second: Some(10),
        },
    );
    let mut sampler = Sampler::new(cfg);
    let start = Instant::now();
    let mut out = Vec::new();
    for i in 0..100 {
        sampler.offer(span(&format!("SO-{i}"), "mes-api", false), start, &mut out);
        sampler.offer(span(&format!("SO-{i}"), "shop-api", false), start, &mut out);
    }
    assert_eq!(out.len(), 110);
    assert_eq!(sampler.counters().dropped_ceiling, 90);
    sampler.offer(span("SO-x", "mes-api", true), start, &mut out);
    assert_eq!(out.len(), 111, "errors bypass the ceiling");
    for i in 0..20 {
        sampler.offer(
            span(&format!("SO-{i}"), "mes-api", false),
            start + Duration::from_millis(500),
            &mut out,
        );
    }
    assert_eq!(out.len(), 116, "half a second refills five tokens");
}

#[test]
fn the_lookback_is_bounded() {
    let mut sampler = Sampler::new(SamplingConfig {
        error_lookback_spans: 5,
        ..config(0.0)
    });
    let now = Instant::now();
    let mut out = Vec::new();
    for i in 0..10 {
        sampler.offer(span(&format!("SO-{i}"), "shop-api", false), now, &mut out);
    }
    sampler.offer(span("SO-0", "shop-api", true), now, &mut out);
    assert_eq!(out.len(), 1, "SO-0's first span was evicted");
    sampler.offer(span("SO-9", "shop-api", true), now, &mut out);
    assert_eq!(out.len(), 3, "SO-9's first span was still held");
    let c = sampler.counters();
    assert_eq!(
        (c.lookback_evicted, c.recalled, c.dropped_ratio),
        (5, 1, 10)
    );
    for i in 0..1000 {
        sampler.offer(span(&format!("T-{i}"), "shop-api", false), now, &mut out);
        sampler.offer(span(&format!("T-{i}"), "shop-api", true), now, &mut out);
    }
    assert!(
        sampler.held.order.len() <= 32,
        "stale entries are compacted"
    );
}

#[test]
fn ratio_hash_matches_the_documented_formula() {
    // python3: tid = sha256(b"order-tracer/trace/v1:SO-1").digest()[:16]
    //          (int.from_bytes(tid[8:16], "big") >> 11) / 2**53  → 0.22067115238088963
    let tid = order_trace_id("SO-1");
    assert!(keep_by_ratio(&tid, 0.2207));
    assert!(!keep_by_ratio(&tid, 0.2206));
    assert!(!keep_by_ratio(&tid, 0.0));
    assert!(keep_by_ratio(&tid, 1.0));
}

#[test]
fn config_is_validated() {
    let parse = |text: &str| crate::config::Config::parse(text, "t").map(|c| c.sampling);
    let ok = parse("[sampling]\ndefault_ratio = 0.5\n[sampling.service.mes-api]\nratio = 0.1\nmax_spans_per_second = 500\n").unwrap();
    assert_eq!(ok.services["mes-api"].max_spans_per_second, Some(500));
    assert!(ok.always_keep_errors);
    for (text, expected) in [
        ("[sampling]\ndefault_ratio = 1.5\n", "between 0.0"),
        ("[sampling.service.x]\nratio = -0.1\n", "service.x.ratio"),
        (
            "[sampling.service.x]\nmax_spans_per_second = 0\n",
            "ratio = 0.0",
        ),
        ("[sampling]\nratio = 0.5\n", "ratio"),
    ] {
        let err = parse(text).unwrap_err().to_string();
        assert!(err.contains(expected), "{expected:?} in {err}");
    }
}

#[test]
fn drops_by_ratio_tells_before_the_span_what_offer_decides() {
    let mut sampling = config(0.3);
    sampling.services.insert(
        "mes-api".into(),
        ServiceSampling {
            ratio: Some(0.8),
            max_spans_per_second: None,
        },
    );
    let mut sampler = Sampler::new(sampling);
    let now = Instant::now();
    for n in 0..200 {
        let order = format!("SO-{n}");
        for service in SERVICES {
            let told = sampler.drops_by_ratio(service, &order_trace_id(&order));
            let mut out = Vec::new();
            sampler.offer(span(&order, service, false), now, &mut out);
            assert_eq!(told, out.is_empty(), "{order} {service}");
        }
    }
    // An error pins its order: the rest of it is no longer told dropped.
    let pinned = (0..200)
        .map(|n| format!("SO-{n}"))
        .find(|o| sampler.drops_by_ratio("shop-api", &order_trace_id(o)))
        .unwrap();
    sampler.offer(span(&pinned, "shop-api", true), now, &mut Vec::new());
    assert!(!sampler.drops_by_ratio("shop-api", &order_trace_id(&pinned)));
}
