//! Cost per exchange of the orders → spans → sampling stages, and of encoding for export,
//! on the testbed's mix of calls. The agent's budget is 200k exchanges/s per core end to end
//! (5 µs each, capture and parsing included).

use std::time::Instant;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use tracer::capture::Role;
use tracer::http::Exchange;
use tracer::orders::RuleSet;
use tracer::sampling::{Sampler, SamplingConfig};
use tracer::spans::fixtures::{ExchangeFixture, exchange};
use tracer::spans::{Redactor, SpanBuilder};

/// One order's walk as the traced services see it, plus a call no rule claims.
fn walk(order: &str) -> Vec<Exchange> {
    let server = |svc, method, target: &str| exchange(svc, Role::Server, method, target);
    vec![
        server("shop-api", "POST", "/api/v1/orders")
            .request_body(r#"{"customer_id":"c-1","items":[{"sku":"ring-7","qty":1}],"cart_id":"k-9"}"#)
            .respond(201, &format!(r#"{{"order_id":"{order}","status":"INITIATED"}}"#)),
        server("shop-api", "PUT", &format!("/api/v1/orders/{order}/model")).respond(200, "{}"),
        server("shop-api", "POST", &format!("/api/v1/orders/{order}/submit")).respond(200, "{}"),
        exchange("shop-api", Role::Client, "POST", "/mes/api/pricing-requests")
            .request_body(&format!(r#"{{"orderRef":"{order}","model":{{"sizeBytes":204800}}}}"#))
            .respond(200, &format!(r#"{{"orderRef":"{order}","state":"PRICED","price":{{"amount":120,"currency":"EUR"}}}}"#)),
        server("crm-api", "POST", "/crm/v1/deals")
            .request_header("x-order-id", order)
            .respond(201, &format!(r#"{{"deal":{{"order":{{"id":"{order}"}},"stage":"AWAITING_APPROVAL"}}}}"#)),
        server("mes-api", "POST", &format!("/mes/api/work-orders/{order}/transitions"))
            .request_body(r#"{"to":"IN_WORK"}"#)
            .respond(200, &format!(r#"{{"orderRef":"{order}","state":"IN_WORK"}}"#)),
        server("crm-api", "GET", &format!("/crm/v1/deals/{order}"))
            .respond(200, &format!(r#"{{"deal":{{"order":{{"id":"{order}","status":"SHIPPED"}}}}}}"#)),
        server("shop-api", "GET", "/health").respond(200, "ok"),
    ]
}

fn bench(c: &mut Criterion) {
    let rules = RuleSet::compile(&tracer::config::Config::embedded_default().services).unwrap();
    let mut builder = SpanBuilder::new(rules, Redactor::default(), "bench-host".into(), 0);
    let exchanges: Vec<Exchange> = (0..64)
        .flat_map(|i| walk(&format!("SO-2026-{i:06}")))
        .collect();
    let mut group = c.benchmark_group("per_exchange");
    group.throughput(Throughput::Elements(exchanges.len() as u64));
    group.bench_function("classify", |b| {
        b.iter(|| {
            exchanges
                .iter()
                .filter(|ex| {
                    matches!(
                        builder.rules().classify(*ex),
                        tracer::orders::Classification::Order(_)
                    )
                })
                .count()
        })
    });
    group.bench_function("classify_and_build_span", |b| {
        b.iter(|| {
            exchanges
                .iter()
                .filter_map(|ex| builder.build(ex).1)
                .count()
        })
    });
    // Parts of building a span, for where the time goes.
    let ids: Vec<String> = (0..exchanges.len())
        .map(|i| format!("SO-2026-{i:06}"))
        .collect();
    group.bench_function("part_trace_and_root_ids", |b| {
        b.iter(|| {
            ids.iter()
                .map(|id| {
                    tracer::spans::order_trace_id(id)[0] ^ tracer::spans::order_root_span_id(id)[0]
                })
                .fold(0, |a, x| a ^ x)
        })
    });
    let redactor = Redactor::default();
    group.bench_function("part_redact_unmatched_path", |b| {
        b.iter(|| {
            exchanges
                .iter()
                .map(|ex| redactor.path(&ex.request.head.target, None).len())
                .sum::<usize>()
        })
    });
    let spans: Vec<_> = exchanges
        .iter()
        .filter_map(|ex| builder.build(ex).1)
        .collect();
    group.bench_function("sample", |b| {
        let mut sampler = Sampler::new(SamplingConfig {
            default_ratio: 0.5,
            ..SamplingConfig::default()
        });
        let mut out = Vec::with_capacity(spans.len());
        b.iter(|| {
            let now = Instant::now();
            for span in &spans {
                sampler.offer(span.clone(), now, &mut out);
            }
            out.clear();
        })
    });
    group.bench_function("encode_otlp_protobuf", |b| {
        b.iter(|| prost::Message::encoded_len(&tracer::export::to_request(&spans)))
    });
    group.bench_function("encode_json_lines", |b| {
        let mut out = Vec::with_capacity(spans.len() * 1024);
        b.iter(|| {
            out.clear();
            for span in &spans {
                tracer::export::write_line(&mut out, span);
            }
            out.len()
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
