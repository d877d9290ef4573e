//! AMQP conversations as a client library and RabbitMQ write them, fed through a
//! [`Stream`] the way `streams` does: split at every byte, channels interleaved, large bodies
//! across frames, heartbeats, entered mid-way, and garbage.

mod losses;

use std::sync::Arc;

use bytes::BytesMut;

use super::stream::Stream;
use super::wire::{FRAME_BODY, FRAME_END, FRAME_HEADER, FRAME_HEARTBEAT, FRAME_METHOD, PREFACE};
use super::{Counters, Env, Operation, Settlement, Transfer};
use crate::capture::{ConnKey, Direction, Role};
use crate::protocol::{ConnMeta, Record};

/// Who wrote the bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Writer {
    Client,
    Broker,
}

pub(crate) type Write = (Writer, Vec<u8>);

/// One frame: type, channel, size, payload, end octet.
pub(crate) fn frame(kind: u8, channel: u16, payload: &[u8]) -> Vec<u8> {
    let mut f = vec![kind];
    f.extend_from_slice(&channel.to_be_bytes());
    f.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    f.extend_from_slice(payload);
    f.push(FRAME_END);
    f
}

fn short(s: &str) -> Vec<u8> {
    let mut v = vec![s.len() as u8];
    v.extend_from_slice(s.as_bytes());
    v
}

fn method(channel: u16, class: u16, id: u16, args: &[u8]) -> Vec<u8> {
    let mut p = class.to_be_bytes().to_vec();
    p.extend_from_slice(&id.to_be_bytes());
    p.extend_from_slice(args);
    frame(FRAME_METHOD, channel, &p)
}

/// Content header + body frames (`frame_max` bytes each at most) of a message.
fn content(
    channel: u16,
    body: &[u8],
    message_id: &str,
    order_header: Option<&str>,
    frame_max: usize,
) -> Vec<u8> {
    let mut p = vec![0, 60, 0, 0];
    p.extend_from_slice(&(body.len() as u64).to_be_bytes());
    let mut flags = 0x8000u16 | 0x0080; // content-type, message-id
    let mut props = short("application/json");
    if let Some(id) = order_header {
        flags |= 0x2000;
        let mut table = short("x-order-id");
        table.push(b'S');
        table.extend_from_slice(&(id.len() as u32).to_be_bytes());
        table.extend_from_slice(id.as_bytes());
        props.extend_from_slice(&(table.len() as u32).to_be_bytes());
        props.extend_from_slice(&table);
    }
    props.extend(short(message_id));
    p.extend_from_slice(&flags.to_be_bytes());
    p.extend(props);
    let mut out = frame(FRAME_HEADER, channel, &p);
    for piece in body.chunks(frame_max - 8) {
        out.extend(frame(FRAME_BODY, channel, piece));
    }
    out
}

fn u64b(n: u64) -> Vec<u8> {
    n.to_be_bytes().to_vec()
}

pub(crate) fn publish(
    channel: u16,
    exchange: &str,
    key: &str,
    body: &[u8],
    message_id: &str,
) -> Vec<u8> {
    let mut args = vec![0, 0];
    args.extend(short(exchange));
    args.extend(short(key));
    args.push(0);
    let mut out = method(channel, 60, 40, &args);
    out.extend(content(channel, body, message_id, None, 131_072));
    out
}

pub(crate) fn ack(channel: u16, tag: u64, multiple: bool) -> Vec<u8> {
    let mut args = u64b(tag);
    args.push(u8::from(multiple));
    method(channel, 60, 80, &args)
}

fn nack(channel: u16, tag: u64) -> Vec<u8> {
    let mut args = u64b(tag);
    args.push(2);
    method(channel, 60, 120, &args)
}

pub(crate) fn deliver(
    channel: u16,
    consumer: &str,
    tag: u64,
    exchange: &str,
    key: &str,
    body: &[u8],
    frame_max: usize,
) -> Vec<u8> {
    let mut args = short(consumer);
    args.extend(u64b(tag));
    args.push(0);
    args.extend(short(exchange));
    args.extend(short(key));
    let mut out = method(channel, 60, 60, &args);
    out.extend(content(channel, body, "m-d", Some("SO-7"), frame_max));
    out
}

fn consume(channel: u16, queue: &str, tag: &str) -> Vec<u8> {
    let mut args = vec![0, 0];
    args.extend(short(queue));
    args.extend(short(tag));
    args.push(0);
    args.extend_from_slice(&0u32.to_be_bytes());
    method(channel, 60, 20, &args)
}

fn heartbeat() -> Vec<u8> {
    frame(FRAME_HEARTBEAT, 0, b"")
}

/// A publisher's connection: handshake, confirms on, three publishes acked two ways, one
/// returned, one nacked, heartbeats between.
pub(crate) fn publisher_conversation() -> Vec<Write> {
    use Writer::*;
    let mut start = PREFACE.to_vec();
    start.extend(method(0, 10, 11, &[0; 8]));
    let mut tune_ok = method(0, 10, 31, &[0, 0, 0, 2, 0, 0, 0, 60]);
    tune_ok.extend(method(1, 20, 10, &[0]));
    tune_ok.extend(method(1, 85, 10, &[0]));
    let body = |id: &str| format!(r#"{{"orderRef":"{id}","price":{{"amount":80.0}}}}"#);
    let mut two = publish(
        1,
        "shop.priced-orders",
        "priced.eu",
        body("SO-2").as_bytes(),
        "m-2",
    );
    two.extend(publish(
        1,
        "shop.priced-orders",
        "priced.eu",
        body("SO-3").as_bytes(),
        "m-3",
    ));
    let mut returned = method(
        1,
        60,
        50,
        &[
            [1, 56].as_slice(),
            &short("NO_ROUTE"),
            &short("shop.priced-orders"),
            &short("priced.latam"),
        ]
        .concat(),
    );
    returned.extend(content(1, body("SO-4").as_bytes(), "m-4", None, 131_072));
    returned.extend(ack(1, 4, false));
    vec![
        (Client, start),
        (Broker, method(0, 10, 30, &[0, 0, 0, 2, 0, 0, 0, 60])),
        (Client, tune_ok),
        (Broker, method(1, 20, 11, &[0, 0, 0, 0])),
        (
            Client,
            publish(
                1,
                "shop.priced-orders",
                "priced.eu",
                body("SO-1").as_bytes(),
                "m-1",
            ),
        ),
        (Broker, ack(1, 1, false)),
        (Client, two),
        (Broker, heartbeat()),
        (Broker, ack(1, 3, true)),
        (
            Client,
            publish(
                1,
                "shop.priced-orders",
                "priced.latam",
                body("SO-4").as_bytes(),
                "m-4",
            ),
        ),
        (Broker, returned),
        (
            Client,
            publish(
                1,
                "shop.priced-orders",
                "priced.eu",
                body("SO-5").as_bytes(),
                "m-5",
            ),
        ),
        (Broker, nack(1, 5)),
        (Client, heartbeat()),
    ]
}

/// A consumer's connection: two channels consuming, deliveries interleaved, one large body
/// in many frames, acks (one `multiple`) and a reject.
pub(crate) fn consumer_conversation() -> Vec<Write> {
    use Writer::*;
    let big = vec![b'x'; 300_000];
    let mut both = deliver(
        1,
        "ctag-1",
        1,
        "shop.priced-orders",
        "priced.eu",
        br#"{"orderRef":"SO-1"}"#,
        131_072,
    );
    both.extend(deliver(
        2,
        "ctag-2",
        1,
        "shop.work-orders",
        "plant-1",
        br#"{"order":{"id":"SO-2"}}"#,
        4096,
    ));
    both.extend(deliver(
        1,
        "ctag-1",
        2,
        "shop.priced-orders",
        "priced.eu",
        &big,
        131_072,
    ));
    let mut acks = ack(2, 1, false);
    acks.extend(ack(1, 2, true));
    let mut reject = u64b(3);
    reject.push(0);
    vec![
        (Client, PREFACE.to_vec()),
        (
            Client,
            [
                method(1, 20, 10, &[0]),
                consume(1, "crm.priced-orders", "ctag-1"),
            ]
            .concat(),
        ),
        (Broker, method(1, 60, 21, &short("ctag-1"))),
        (
            Client,
            [method(2, 20, 10, &[0]), consume(2, "mes.work-orders", "")].concat(),
        ),
        (Broker, method(2, 60, 21, &short("ctag-2"))),
        (Broker, both),
        (Client, acks),
        (
            Broker,
            deliver(
                1,
                "ctag-1",
                3,
                "shop.priced-orders",
                "priced.eu",
                br#"{"orderRef":"SO-3"}"#,
                131_072,
            ),
        ),
        (Client, method(1, 60, 90, &reject)),
    ]
}

fn meta(role: Role) -> ConnMeta {
    ConnMeta {
        conn: ConnKey {
            pid: 1,
            fd: 3,
            conn_id: 1,
        },
        service: Arc::from("mes-api"),
        role,
        local: None,
        peer: None,
        tls: false,
    }
}

/// The bounds every [`Driver`] runs with.
fn driver_env<'a>(counters: &'a mut Counters, out: &'a mut Vec<Record>) -> Env<'a> {
    Env {
        max_frame_bytes: 16 * 1024,
        max_body_bytes: 1024,
        max_unsettled: 64,
        max_buffered_bytes: 64 * 1024,
        counters,
        out,
    }
}

/// Drives a [`Stream`] the way `streams` does: whole units parsed from each piece, the
/// rest buffered.
pub(crate) struct Driver {
    pub stream: Option<Stream>,
    pub meta: ConnMeta,
    bufs: [BytesMut; 2],
    pub counters: Counters,
    pub out: Vec<Record>,
}

impl Driver {
    pub fn new(role: Role) -> Self {
        Driver {
            stream: None,
            meta: meta(role),
            bufs: [BytesMut::new(), BytesMut::new()],
            counters: Counters::default(),
            out: Vec::new(),
        }
    }

    pub fn feed(&mut self, d: Direction, piece: &[u8], ts: u64) {
        let mut env = driver_env(&mut self.counters, &mut self.out);
        let stream = self
            .stream
            .get_or_insert_with(|| Stream::new(&mut self.meta, None, &mut env));
        let buf = &mut self.bufs[usize::from(d == Direction::Recv)];
        buf.extend_from_slice(piece);
        stream.run(&mut self.meta, d, buf, ts, &mut env);
        assert!(buf.len() <= 64 * 1024, "buffer bounded");
        assert_eq!(
            stream.held_bytes(),
            stream.recount_held(),
            "held kept exact"
        );
    }

    pub fn gap(&mut self, d: Direction, n: u64, ts: u64) {
        let mut env = driver_env(&mut self.counters, &mut self.out);
        let buf = &mut self.bufs[usize::from(d == Direction::Recv)];
        if let Some(stream) = &mut self.stream
            && stream.gap(&self.meta, d, n, buf, ts, &mut env)
        {
            buf.clear();
        }
    }

    pub fn close(&mut self, ts: u64) {
        let mut env = driver_env(&mut self.counters, &mut self.out);
        if let Some(stream) = &mut self.stream {
            stream.close(&self.meta, ts, &mut env);
            assert_eq!(stream.held_bytes(), 0, "a closed connection holds nothing");
        }
    }

    /// Sheds what the connection holds, as `streams` does over its byte budget; the
    /// buffers of partial frames go too.
    pub fn shed(&mut self) -> usize {
        let mut env = driver_env(&mut self.counters, &mut self.out);
        let buffered = self.bufs.each_mut().map(|b| {
            let held = !b.is_empty();
            b.clear();
            held
        });
        let Some(stream) = &mut self.stream else {
            return 0;
        };
        let dropped = stream.shed(&self.meta, buffered, &mut env);
        assert_eq!(
            stream.held_bytes(),
            0,
            "shedding gives back all that was held"
        );
        dropped
    }

    pub fn held_bytes(&self) -> usize {
        self.stream.as_ref().map_or(0, Stream::held_bytes)
    }

    pub fn transfers(&self) -> Vec<&Transfer> {
        self.out
            .iter()
            .filter_map(|r| match r {
                Record::Amqp(t) => Some(t),
                _ => None,
            })
            .collect()
    }
}

/// The traced process is the client.
fn dir(from: Writer) -> Direction {
    match from {
        Writer::Client => Direction::Send,
        Writer::Broker => Direction::Recv,
    }
}

/// What a transfer says, in comparable form.
fn summary(t: &Transfer) -> String {
    format!(
        "{:?} {} {} q={:?} tag={:?} {:?} body={}/{}{} id={:?} order={:?} {}..{}",
        t.operation,
        String::from_utf8_lossy(&t.exchange),
        String::from_utf8_lossy(&t.routing_key),
        t.queue
            .as_ref()
            .map(|q| String::from_utf8_lossy(q).into_owned()),
        t.delivery_tag,
        t.settlement,
        t.body.len(),
        t.body_len,
        if t.body_truncated { " cut" } else { "" },
        t.property("message-id")
            .map(|m| String::from_utf8_lossy(&m).into_owned()),
        t.header("x-order-id"),
        t.start_ns,
        t.end_ns,
    )
}

/// Feeds `writes`, write `i` stamped `10 * (i + 1)`, write `cut.0` split at byte `cut.1`.
fn replay(role: Role, writes: &[Write], cut: Option<(usize, usize)>) -> Driver {
    let mut driver = Driver::new(role);
    for (i, (from, bytes)) in writes.iter().enumerate() {
        let ts = 10 * (i as u64 + 1);
        match cut {
            Some((w, at)) if w == i => {
                driver.feed(dir(*from), &bytes[..at], ts);
                driver.feed(dir(*from), &bytes[at..], ts);
            }
            _ => driver.feed(dir(*from), bytes, ts),
        }
    }
    driver.close(10 * (writes.len() as u64 + 1));
    driver
}

#[test]
fn publishes_pair_with_confirms_returns_and_nacks() {
    let run = replay(Role::Client, &publisher_conversation(), None);
    let got: Vec<String> = run.transfers().into_iter().map(summary).collect();
    assert_eq!(
        got,
        [
            "Publish shop.priced-orders priced.eu q=None tag=Some(1) Acked body=43/43 id=Some(\"m-1\") order=None 50..60",
            "Publish shop.priced-orders priced.eu q=None tag=Some(2) Acked body=43/43 id=Some(\"m-2\") order=None 70..90",
            "Publish shop.priced-orders priced.eu q=None tag=Some(3) Acked body=43/43 id=Some(\"m-3\") order=None 70..90",
            "Publish shop.priced-orders priced.latam q=None tag=Some(4) Returned { reply_code: 312 } body=43/43 id=Some(\"m-4\") order=None 100..110",
            "Publish shop.priced-orders priced.eu q=None tag=Some(5) Nacked { requeue: true } body=43/43 id=Some(\"m-5\") order=None 120..130",
        ]
    );
    assert_eq!(run.meta.role, Role::Client);
    assert_eq!(
        (
            run.counters.connections,
            run.counters.resyncs,
            run.counters.unpaired_settlements
        ),
        (1, 0, 0)
    );
}

#[test]
fn deliveries_pair_with_acks_across_channels_and_frames() {
    let run = replay(Role::Client, &consumer_conversation(), None);
    let got: Vec<String> = run.transfers().into_iter().map(summary).collect();
    assert_eq!(
        got,
        [
            "Deliver shop.work-orders plant-1 q=Some(\"mes.work-orders\") tag=Some(1) Acked body=23/23 id=Some(\"m-d\") order=Some(\"SO-7\") 60..70",
            "Deliver shop.priced-orders priced.eu q=Some(\"crm.priced-orders\") tag=Some(1) Acked body=19/19 id=Some(\"m-d\") order=Some(\"SO-7\") 60..70",
            "Deliver shop.priced-orders priced.eu q=Some(\"crm.priced-orders\") tag=Some(2) Acked body=1024/300000 cut id=Some(\"m-d\") order=Some(\"SO-7\") 60..70",
            "Deliver shop.priced-orders priced.eu q=Some(\"crm.priced-orders\") tag=Some(3) Rejected { requeue: false } body=19/19 id=Some(\"m-d\") order=Some(\"SO-7\") 80..90",
        ]
    );
    assert!(
        run.transfers()
            .iter()
            .all(|t| t.operation == Operation::Deliver)
    );
}

#[test]
fn every_write_split_at_every_byte_gives_the_same_transfers() {
    for writes in [publisher_conversation(), consumer_conversation()] {
        let reference: Vec<String> = replay(Role::Client, &writes, None)
            .transfers()
            .into_iter()
            .map(summary)
            .collect();
        for (w, (_, bytes)) in writes.iter().enumerate() {
            // The 300 KB delivery: every byte of its frame boundaries and a stride inside.
            let cuts: Vec<usize> = if bytes.len() > 10_000 {
                (1..bytes.len())
                    .filter(|at| at % 997 == 0 || at % 131_072 < 16 || at < &400)
                    .collect()
            } else {
                (1..bytes.len()).collect()
            };
            for at in cuts {
                let got: Vec<String> = replay(Role::Client, &writes, Some((w, at)))
                    .transfers()
                    .into_iter()
                    .map(summary)
                    .collect();
                assert_eq!(got, reference, "write {w} split at {at}");
            }
        }
    }
}

#[test]
fn an_unknown_role_is_learnt_from_the_preface_or_the_methods() {
    let run = replay(Role::Unknown, &publisher_conversation(), None);
    assert_eq!(run.meta.role, Role::Client);
    assert_eq!(run.transfers().len(), 5);
    // The broker's side of the same connection: the preface arrives.
    let mut run = Driver::new(Role::Unknown);
    for (i, (from, bytes)) in publisher_conversation().iter().enumerate() {
        let d = match from {
            Writer::Client => Direction::Recv,
            Writer::Broker => Direction::Send,
        };
        run.feed(d, bytes, 10 * (i as u64 + 1));
    }
    assert_eq!(run.meta.role, Role::Server);
    assert_eq!(run.transfers().len(), 5);
}
