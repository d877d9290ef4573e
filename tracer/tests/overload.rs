//! The agent's pipeline behind its capture reader: a real bounded queue between them, filled
//! faster than the pipeline drains it, carrying captured-shape events (keep-alive
//! connections, messages cut across reads and batches). It sheds whole exchanges, sampled-out
//! orders first, and counts every one.

use std::collections::HashSet;
use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::mpsc;
use tracer::agent::{Backlog, Pipeline, PipelineSnapshot};
use tracer::capture::event::{ConnOpen, DataChunk};
use tracer::capture::{CaptureEvent, ConnKey, Direction, Role};
use tracer::config::Config;
use tracer::export::{ExportConfig, ExportKind, Exporter, Fanout};
use tracer::orders::RuleSet;
use tracer::sampling::{Sampler, SamplingConfig, keep_by_ratio};
use tracer::spans::{AttrValue, Redactor, SpanBuilder, SpanRecord, order_trace_id};
use tracer::streams::Streams;

const ORDERS: usize = 600;
const CONNS: usize = 8;
/// Batches the reader → pipeline queue holds.
const QUEUE: usize = 16;
const EVENTS_PER_BATCH: usize = 5;
const RATIO: f64 = 0.5;

fn order_id(n: usize) -> String {
    format!("SO-{n:06}")
}

fn sampled_in(n: usize) -> bool {
    keep_by_ratio(&order_trace_id(&order_id(n)), RATIO)
}

fn conn(i: usize) -> ConnKey {
    ConnKey {
        pid: 4242,
        fd: 10 + i as i32,
        conn_id: i as u64,
    }
}

fn data(i: usize, direction: Direction, ts_ns: u64, bytes: &[u8]) -> CaptureEvent {
    CaptureEvent::Data(DataChunk {
        conn: conn(i),
        service: Arc::from("shop-api"),
        tid: 1,
        direction,
        ts_ns,
        len: bytes.len() as u64,
        payload: Bytes::copy_from_slice(bytes),
        tls: false,
    })
}

/// The shop's server side: each order submitted on one of a few keep-alive connections, the
/// request read in two pieces, the answer written in one.
fn captured_events() -> Vec<CaptureEvent> {
    let mut events: Vec<CaptureEvent> = (0..CONNS)
        .map(|i| {
            CaptureEvent::Open(ConnOpen {
                conn: conn(i),
                service: Arc::from("shop-api"),
                role: Role::Server,
                local: None,
                peer: None,
                ts_ns: 1,
            })
        })
        .collect();
    for n in 0..ORDERS {
        let id = order_id(n);
        let body = format!(r#"{{"note":"{}"}}"#, "x".repeat(n % 300));
        let request = format!(
            "POST /api/v1/orders/{id}/submit HTTP/1.1\r\nhost: shop\r\ncontent-type: \
             application/json\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        );
        let answer = format!(r#"{{"order_id":"{id}","status":"SUBMITTED"}}"#);
        let response = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{answer}",
            answer.len()
        );
        let (i, ts) = (n % CONNS, 10 + 3 * n as u64);
        let cut = request.len() / 2;
        events.push(data(i, Direction::Recv, ts, &request.as_bytes()[..cut]));
        events.push(data(i, Direction::Recv, ts + 1, &request.as_bytes()[cut..]));
        events.push(data(i, Direction::Send, ts + 2, response.as_bytes()));
    }
    events
}

fn batches() -> Vec<Vec<CaptureEvent>> {
    let mut events = captured_events().into_iter().peekable();
    let mut out = Vec::new();
    while events.peek().is_some() {
        out.push(events.by_ref().take(EVENTS_PER_BATCH).collect());
    }
    out
}

/// The pipeline as the agent builds it (testbed rules, the real sampler and fanout), with a
/// consumer that takes every span built, as the in-process monitor does.
fn pipeline() -> (Pipeline, mpsc::Receiver<SpanRecord>) {
    let config = Config::embedded_default();
    let rules = RuleSet::compile(&config.services).unwrap();
    let builder = SpanBuilder::new(rules, Redactor::default(), "test-host".into(), 0);
    let streams = Streams::new(config.streams.clone()).keeping_headers(builder.headers_read());
    let none = ExportConfig {
        kind: ExportKind::None,
        ..ExportConfig::default()
    };
    let sampling = SamplingConfig {
        default_ratio: RATIO,
        ..SamplingConfig::default()
    };
    let (tx, rx) = mpsc::channel(4 * ORDERS);
    let fanout = Fanout::new(
        Sampler::new(sampling),
        Exporter::start(&none).unwrap().handle(),
    )
    .with_consumer(Box::new(tx));
    (Pipeline::new(streams, builder, fanout, 0), rx)
}

/// The reader's side: queues batches without ever waiting, as long as the queue has room
/// (a burst the ring absorbed); the pipeline's side takes `take` batches at each turn.
fn drive(fill_to: usize, keep_at_least: usize) -> (PipelineSnapshot, Vec<SpanRecord>) {
    let (mut pipeline, mut spans) = pipeline();
    let (tx, mut rx) = mpsc::channel::<Vec<CaptureEvent>>(QUEUE);
    let mut pending = batches().into_iter().peekable();
    loop {
        while rx.len() < fill_to
            && let Some(batch) = pending.next()
        {
            tx.try_send(batch).expect("the queue has room");
        }
        let Ok(batch) = rx.try_recv() else { break };
        let backlog = Backlog {
            queued: rx.len(),
            capacity: rx.max_capacity(),
        };
        pipeline.on_batch(batch, backlog);
        // Behind, but catching up now and then: drain down to `keep_at_least` before the
        // next burst.
        while rx.len() > keep_at_least
            && let Ok(batch) = rx.try_recv()
        {
            let backlog = Backlog {
                queued: rx.len(),
                capacity: rx.max_capacity(),
            };
            pipeline.on_batch(batch, backlog);
        }
    }
    let mut built = Vec::new();
    while let Ok(span) = spans.try_recv() {
        built.push(span);
    }
    (pipeline.snapshot(), built)
}

fn order_of(span: &SpanRecord) -> usize {
    match span.attributes.get("order.id") {
        Some(AttrValue::Str(id)) => id.trim_start_matches("SO-").parse().unwrap(),
        other => panic!("a span without an order: {other:?}"),
    }
}

/// Every span is of a whole exchange (answered 200, no error), and the stage saw nothing cut.
fn assert_whole(snapshot: &PipelineSnapshot, spans: &[SpanRecord]) {
    for span in spans {
        assert_eq!(
            span.attributes.get("http.response.status_code"),
            Some(&AttrValue::Int(200)),
            "{span:?}"
        );
        assert!(span.attributes.get("error.type").is_none(), "{span:?}");
    }
    let streams = &snapshot.streams;
    assert_eq!(
        (
            streams.http.parse_errors,
            streams.http.resyncs,
            streams.gaps
        ),
        (0, 0, 0)
    );
    assert_eq!(streams.http.pairing.unpaired_responses, 0);
    assert_eq!(snapshot.pipeline.no_order_id, 0, "no body was cut");
}

#[test]
fn behind_the_reader_the_pipeline_sheds_sampled_out_orders_first() {
    // The queue stays between half and three quarters full: only orders the sampler drops
    // anyway are shed.
    let (snapshot, spans) = drive(QUEUE * 5 / 8, QUEUE / 2);
    assert_whole(&snapshot, &spans);
    let counters = snapshot.pipeline;
    assert!(counters.shed_sampled_out > 0, "{counters:?}");
    assert_eq!(counters.shed_exchanges, 0, "{counters:?}");
    let orders: HashSet<usize> = spans.iter().map(order_of).collect();
    assert_eq!(orders.len(), spans.len(), "one span per exchange");
    for n in (0..ORDERS).filter(|n| sampled_in(*n)) {
        assert!(orders.contains(&n), "sampled-in order {n} was shed");
    }
    let sampled_out_built = orders.iter().filter(|n| !sampled_in(**n)).count() as u64;
    let sampled_out = (0..ORDERS).filter(|n| !sampled_in(*n)).count() as u64;
    assert_eq!(sampled_out_built + counters.shed_sampled_out, sampled_out);
    assert_eq!(counters.spans, spans.len() as u64);
}

#[test]
fn far_behind_it_sheds_whole_exchanges_and_counts_every_one() {
    // Bursts fill the queue; the pipeline drains it to empty between them.
    let (snapshot, spans) = drive(QUEUE, 0);
    assert_whole(&snapshot, &spans);
    let counters = snapshot.pipeline;
    assert!(counters.shed_exchanges > 0, "{counters:?}");
    assert!(counters.shed_sampled_out > 0, "{counters:?}");
    assert!(counters.spans > 0, "caught up between bursts: {counters:?}");
    assert_eq!(
        counters.spans + counters.shed_sampled_out + counters.shed_exchanges,
        ORDERS as u64,
        "every exchange built or counted shed: {counters:?}"
    );
    assert_eq!(counters.order_exchanges, counters.spans);
    let orders: HashSet<usize> = spans.iter().map(order_of).collect();
    assert_eq!(orders.len(), spans.len());
}

#[test]
fn keeping_up_it_sheds_nothing() {
    let (snapshot, spans) = drive(1, 0);
    assert_whole(&snapshot, &spans);
    let counters = snapshot.pipeline;
    assert_eq!((counters.shed_sampled_out, counters.shed_exchanges), (0, 0));
    assert_eq!(spans.len(), ORDERS);
}
