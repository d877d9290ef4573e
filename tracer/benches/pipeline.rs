//! The agent's pipeline on recorded-style capture events: the walk of many testbed orders
//! (docs/contracts.md) on keep-alive connections, seen from the server side of every traced
//! service and the client side of their outgoing calls, uploads truncated at a 16 KiB capture
//! cap. Measures exchanges per second through the stages (so far `streams` + `http`).
//!
//! `cargo bench -p tracer --bench pipeline`

use std::hint::black_box;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use tracer::capture::event::{ConnClose, ConnOpen, DataChunk};
use tracer::capture::{CaptureEvent, ConnKey, Direction, Role};
use tracer::http::HeaderFilter;
use tracer::orders::RuleSet;
use tracer::protocol::Record;
use tracer::spans::{Redactor, SpanBuilder};
use tracer::streams::{Streams, StreamsConfig};

const ORDERS: usize = 400;
/// What the kernel side copies of one syscall's payload.
const CAPTURE_CAP: usize = 16 * 1024;
/// Bytes one server read of an upload returns.
const READ_SIZE: usize = 64 * 1024;
const CONNS_PER_PEER: u64 = 4;

/// One call of the walk: who answers, who calls (when traced), and the bytes both ways.
struct Call {
    server: &'static str,
    /// The calling service when it is traced (its client side is captured too).
    client: Option<&'static str>,
    request: Vec<u8>,
    response: Vec<u8>,
}

fn request(method: &str, target: &str, port: u16, content_type: &str, body: &[u8]) -> Vec<u8> {
    let mut bytes = format!(
        "{method} {target} HTTP/1.1\r\nhost: 127.0.0.1:{port}\r\naccept: */*\r\n\
         content-type: {content_type}\r\ncontent-length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    bytes.extend_from_slice(body);
    bytes
}

fn json_request(method: &str, target: &str, port: u16, json: &str) -> Vec<u8> {
    request(method, target, port, "application/json", json.as_bytes())
}

fn json_response(status: &str, json: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\
         date: Thu, 26 Nov 2026 10:00:00 GMT\r\n\r\n{json}",
        json.len()
    )
    .into_bytes()
}

fn chunked_json_response(json: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\
         date: Thu, 26 Nov 2026 10:00:00 GMT\r\n\r\n{:x}\r\n{json}\r\n0\r\n\r\n",
        json.len()
    )
    .into_bytes()
}

/// The calls of one order, steps 1 to 14 and the operators' lookups.
fn order_walk(n: usize) -> Vec<Call> {
    let id = format!("SO-{n:06}");
    let size = 200 * 1024 + (n % 8) * 100 * 1024;
    let model: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
    let price = r#"{"amount":"129.00","currency":"EUR"}"#;
    let shop = |request, response| Call {
        server: "shop-api",
        client: None,
        request,
        response,
    };
    let mes = |client, request, response| Call {
        server: "mes-api",
        client,
        request,
        response,
    };
    let crm = |request, response| Call {
        server: "crm-api",
        client: None,
        request,
        response,
    };
    let transition = |to: &str, state: &str| {
        mes(
            None,
            json_request(
                "POST",
                &format!("/mes/api/work-orders/{id}/transitions"),
                18081,
                &format!(r#"{{"to":"{to}"}}"#),
            ),
            json_response(
                "200 OK",
                &format!(r#"{{"orderRef":"{id}","state":"{state}"}}"#),
            ),
        )
    };
    vec![
        shop(
            json_request(
                "POST",
                "/api/v1/orders",
                18080,
                &format!(
                    r#"{{"customer_id":"C-{n}","items":[{{"sku":"RING-01","qty":1}}],"cart_id":"K-{n}"}}"#
                ),
            ),
            json_response(
                "201 Created",
                &format!(r#"{{"order_id":"{id}","status":"INITIATED"}}"#),
            ),
        ),
        shop(
            request(
                "PUT",
                &format!("/api/v1/orders/{id}/model"),
                18080,
                "application/octet-stream",
                &model,
            ),
            json_response(
                "200 OK",
                &format!(r#"{{"order_id":"{id}","status":"FILE_UPLOADED","size_bytes":{size}}}"#),
            ),
        ),
        shop(
            json_request("POST", &format!("/api/v1/orders/{id}/submit"), 18080, "{}"),
            json_response(
                "200 OK",
                &format!(r#"{{"order_id":"{id}","status":"SUBMITTED"}}"#),
            ),
        ),
        shop(
            request(
                "GET",
                &format!("/api/v1/orders/{id}"),
                18080,
                "application/json",
                b"",
            ),
            json_response(
                "200 OK",
                &format!(r#"{{"order_id":"{id}","status":"SUBMITTED"}}"#),
            ),
        ),
        mes(
            Some("shop-api"),
            json_request(
                "POST",
                "/mes/api/pricing-requests",
                18081,
                &format!(r#"{{"orderRef":"{id}","model":{{"sizeBytes":{size}}}}}"#),
            ),
            json_response(
                "200 OK",
                &format!(r#"{{"orderRef":"{id}","state":"PRICED","price":{price}}}"#),
            ),
        ),
        Call {
            server: "order-queue",
            client: Some("mes-api"),
            request: json_request(
                "POST",
                "/queue/v1/topics/priced-orders/messages",
                18083,
                &format!(r#"{{"orderRef":"{id}","price":{price}}}"#),
            ),
            response: json_response("202 Accepted", r#"{"messageId":"m-1"}"#),
        },
        crm(
            json_request(
                "POST",
                "/crm/v1/deals",
                18082,
                &format!(r#"{{"deal":{{"source":"mes","price":{price}}}}}"#),
            ),
            json_response(
                "201 Created",
                &format!(r#"{{"deal":{{"order":{{"id":"{id}"}},"stage":"AWAITING_APPROVAL"}}}}"#),
            ),
        ),
        crm(
            json_request("POST", &format!("/crm/v1/deals/{id}/approve"), 18082, "{}"),
            json_response(
                "200 OK",
                &format!(r#"{{"order":{{"id":"{id}","status":"MANUFACTURING_APPROVED"}}}}"#),
            ),
        ),
        crm(
            request(
                "GET",
                &format!("/crm/v1/deals/{id}"),
                18082,
                "application/json",
                b"",
            ),
            chunked_json_response(&format!(
                r#"{{"deal":{{"order":{{"id":"{id}","status":"MANUFACTURING_APPROVED"}}}}}}"#
            )),
        ),
        Call {
            server: "order-queue",
            client: Some("crm-api"),
            request: json_request(
                "POST",
                "/queue/v1/topics/work-orders/messages",
                18083,
                &format!(r#"{{"order":{{"id":"{id}"}}}}"#),
            ),
            response: json_response("202 Accepted", r#"{"messageId":"m-2"}"#),
        },
        mes(
            None,
            json_request(
                "POST",
                "/mes/api/work-orders",
                18081,
                &format!(r#"{{"workOrder":{{"orderRef":"{id}"}}}}"#),
            ),
            json_response(
                "201 Created",
                &format!(r#"{{"orderRef":"{id}","state":"QUEUED"}}"#),
            ),
        ),
        transition("IN_WORK", "IN_WORK"),
        transition("DONE", "DONE"),
        mes(
            None,
            request(
                "GET",
                &format!("/mes/api/work-orders/{id}"),
                18081,
                "application/json",
                b"",
            ),
            json_response(
                "200 OK",
                &format!(r#"{{"orderRef":"{id}","state":"DONE"}}"#),
            ),
        ),
        transition("PACKING", "PACKING"),
        transition("DISPATCHED", "DISPATCHED"),
        crm(
            json_request(
                "POST",
                "/crm/v1/webhooks/carrier",
                18082,
                &format!(r#"{{"shipment":{{"order_ref":"{id}","event":"DELIVERED"}}}}"#),
            ),
            json_response(
                "200 OK",
                &format!(r#"{{"order":{{"id":"{id}","status":"CLOSED"}}}}"#),
            ),
        ),
    ]
}

/// Records the capture events of `orders` walks, and how many exchanges they hold.
fn record(orders: usize) -> (Vec<CaptureEvent>, u64) {
    let mut events = Vec::new();
    let mut opened = std::collections::HashMap::<(String, Role, u64), ConnKey>::new();
    let mut ts = 1_000u64;
    let mut exchanges = 0;
    let mut next_id = 0u64;
    for n in 0..orders {
        for (i, call) in order_walk(n).into_iter().enumerate() {
            let slot = (n + i) as u64 % CONNS_PER_PEER;
            let mut sides = vec![];
            if call.server != "order-queue" {
                sides.push((call.server, Role::Server));
            }
            if let Some(client) = call.client {
                sides.push((client, Role::Client));
            }
            let request = Bytes::from(call.request);
            let response = Bytes::from(call.response);
            for (service, role) in sides {
                exchanges += 1;
                let service: Arc<str> = Arc::from(service);
                let name = format!("{service}->{}", call.server);
                let conn = *opened.entry((name, role, slot)).or_insert_with(|| {
                    next_id += 1;
                    let conn = ConnKey {
                        pid: 1000 + next_id as u32 % 3,
                        fd: 10 + next_id as i32,
                        conn_id: next_id,
                    };
                    events.push(CaptureEvent::Open(ConnOpen {
                        conn,
                        service: service.clone(),
                        role,
                        local: None,
                        peer: None,
                        ts_ns: ts,
                    }));
                    conn
                });
                let (req_dir, resp_dir) = match role {
                    Role::Server => (Direction::Recv, Direction::Send),
                    _ => (Direction::Send, Direction::Recv),
                };
                // A server reads an upload in several reads; a client writes it in one.
                let read = if role == Role::Server {
                    READ_SIZE
                } else {
                    usize::MAX
                };
                for (dir, bytes, piece) in
                    [(req_dir, &request, read), (resp_dir, &response, usize::MAX)]
                {
                    let mut at = 0;
                    while at < bytes.len() {
                        let len = piece.min(bytes.len() - at);
                        ts += 1_000;
                        events.push(CaptureEvent::Data(DataChunk {
                            conn,
                            service: service.clone(),
                            tid: 1,
                            direction: dir,
                            ts_ns: ts,
                            len: len as u64,
                            payload: bytes.slice(at..at + len.min(CAPTURE_CAP)),
                            tls: false,
                        }));
                        at += len;
                    }
                }
            }
        }
    }
    for conn in opened.into_values() {
        events.push(CaptureEvent::Close(ConnClose {
            conn,
            service: Arc::from("any"),
            ts_ns: ts,
        }));
    }
    (events, exchanges)
}

/// Feeds the events through the streams stage, keeping the headers `headers` names as the
/// agent does; `later` is what the agent does next with each batch of exchanges. Returns the
/// exchanges made.
fn run(events: &[CaptureEvent], headers: &HeaderFilter, mut later: impl FnMut(&[Record])) -> usize {
    let mut streams = Streams::new(StreamsConfig::default()).keeping_headers(headers.clone());
    let mut out = Vec::with_capacity(256);
    let mut total = 0;
    for ev in events {
        streams.on_event(ev.clone(), &mut out);
        if out.len() >= 256 {
            total += out.len();
            later(&out);
            out.clear();
        }
    }
    later(&out);
    total + out.len()
}

/// The agent's stages after the parser, without export: rules, then span building.
fn span_builder() -> SpanBuilder {
    let config = tracer::config::Config::embedded_default();
    SpanBuilder::new(
        RuleSet::compile(&config.services).expect("the testbed rules compile"),
        Redactor::new(&config.export.redact_path_segments).expect("the testbed patterns compile"),
        "bench".to_string(),
        0,
    )
}

fn spans_of(builder: &mut SpanBuilder, records: &[Record], spans: &mut u64) {
    for record in records {
        if let (_, Some(span)) = builder.build(record) {
            *spans += 1;
            black_box(span);
        }
    }
}

fn pipeline(c: &mut Criterion) {
    let (events, exchanges) = record(ORDERS);
    let mut builder = span_builder();
    let headers = builder.headers_read();
    assert_eq!(
        run(&events, &headers, |out| {
            black_box(out);
        }) as u64,
        exchanges,
        "every recorded exchange comes out"
    );
    let mut spans = 0;
    run(&events, &headers, |out| {
        spans_of(&mut builder, out, &mut spans)
    });
    assert!(
        spans > 0,
        "the testbed rules make spans of the recorded exchanges"
    );

    // Wall time and this thread's CPU time: on a shared machine the second leaves out the
    // time other processes held the core.
    let (start, cpu_start) = (Instant::now(), thread_cpu_secs());
    let rounds = 20;
    let mut made = 0;
    for _ in 0..rounds {
        black_box(run(&events, &headers, |out| {
            spans_of(&mut builder, out, &mut made)
        }));
    }
    let (secs, cpu) = (start.elapsed().as_secs_f64(), thread_cpu_secs() - cpu_start);
    let per = |secs: f64| secs * 1e6 / (exchanges * rounds) as f64;
    println!(
        "events → spans: {exchanges} exchanges ({spans} order spans) from {} events per round, \
         {:.0} exchanges/s ({:.2} µs each, {:.2} µs of CPU) on one core, without export",
        events.len(),
        (exchanges * rounds) as f64 / secs,
        per(secs),
        per(cpu),
    );

    let mut group = c.benchmark_group("pipeline");
    group.throughput(Throughput::Elements(exchanges));
    group.sample_size(20);
    group.bench_function("streams+http", |b| {
        b.iter(|| {
            run(black_box(&events), &headers, |out| {
                black_box(out);
            })
        })
    });
    group.bench_function("events→spans", |b| {
        b.iter(|| {
            let mut made = 0;
            run(black_box(&events), &headers, |out| {
                spans_of(&mut builder, out, &mut made)
            })
        })
    });
    group.finish();
}

/// CPU time this thread has used, in seconds.
fn thread_cpu_secs() -> f64 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec, which `now` is.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut now) };
    now.tv_sec as f64 + now.tv_nsec as f64 * 1e-9
}

criterion_group!(benches, pipeline);
criterion_main!(benches);
