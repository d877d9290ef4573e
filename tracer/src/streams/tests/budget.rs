//! `max_total_bytes`: one byte budget over every connection's buffers and the HTTP messages
//! being assembled; over it, the largest holders drop what they hold, whole, and count it.

use super::*;

const BUDGET: usize = 256 * 1024;

fn budget_config() -> StreamsConfig {
    let config = StreamsConfig {
        max_total_bytes: BUDGET,
        max_buffered_bytes: 32 * 1024,
        max_header_bytes: 16 * 1024,
        max_body_bytes: 64 * 1024,
        ..StreamsConfig::default()
    };
    config.validate().unwrap();
    config
}

fn upload_head(i: i32, body_len: usize) -> Vec<u8> {
    format!("POST /upload/{i} HTTP/1.1\r\nhost: x\r\ncontent-length: {body_len}\r\n\r\n")
        .into_bytes()
}

#[test]
fn the_total_stays_within_the_budget_and_every_shed_byte_is_counted() {
    let mut run = Run::new(budget_config());
    let body = vec![b'a'; 1024];
    let conns = 40;
    for i in 0..conns {
        run.feed(open(key(i), Role::Server, 1));
        let head = upload_head(i, 60 * 1024);
        run.feed(data(key(i), Direction::Recv, 2, &head, head.len()));
    }
    // Slow bodies: a KiB at a time on every connection in turn.
    let mut shed_seen = 0;
    for round in 0..60 {
        for i in 0..conns {
            let before = run.streams.held_bytes();
            let shed_before = run.streams.counters().shed_bytes;
            let ts = 10 + round;
            run.feed(data(key(i), Direction::Recv, ts, &body, body.len()));
            let after = run.streams.held_bytes();
            assert!(after <= BUDGET, "{after} held");
            let shed = run.streams.counters().shed_bytes - shed_before;
            // What the event added is at most its own bytes and a head's worth; all else
            // that left the total was shed and counted.
            assert!(
                before + 8192 >= after + shed as usize,
                "{before} {after} {shed}"
            );
            shed_seen += usize::from(shed > 0);
        }
    }
    let counters = run.streams.counters().clone();
    assert!(shed_seen > 0 && counters.connections_shed > 0);
    assert!(counters.shed_requests > 0 && counters.shed_requests <= conns as u64);
    for i in 0..conns {
        run.feed(close(key(i), 100));
    }
    assert_eq!(
        run.streams.held_bytes(),
        0,
        "closing gives back all that was held"
    );
    // Requests that were not shed end as resets at the close; none is reported twice.
    let reported = http(&run.out).len() as u64;
    assert_eq!(reported + counters.shed_requests, conns as u64);
}

#[test]
fn a_shed_connection_goes_on_with_its_next_message() {
    let config = StreamsConfig {
        max_total_bytes: 128 * 1024,
        ..budget_config()
    };
    let mut run = Run::new(config);
    // Fourteen connections hold 5 KiB of a head each, still incomplete.
    let partial = b"GET /slow HTTP/1.1\r\nx-pad: "
        .iter()
        .copied()
        .chain([b'p'; 5000])
        .collect::<Vec<_>>();
    for i in 2..16 {
        run.feed(open(key(i), Role::Server, 1));
        run.feed(data(key(i), Direction::Recv, 2, &partial, partial.len()));
    }
    // One upload's body prefix grows until the total passes the budget.
    let big = key(1);
    run.feed(open(big, Role::Server, 3));
    let head = upload_head(1, 60 * 1024);
    run.feed(data(big, Direction::Recv, 4, &head, head.len()));
    let piece = vec![b'b'; 4 * 1024];
    let mut n = 0;
    while run.streams.counters().connections_shed == 0 {
        assert!(n < 20, "the budget was never reached");
        run.feed(data(big, Direction::Recv, 5 + n, &piece, piece.len()));
        n += 1;
    }
    let counters = run.streams.counters().clone();
    assert_eq!(counters.shed_requests, 1, "the largest holder went first");
    assert!(run.streams.held_bytes() <= 96 * 1024);
    // The connection looks for its next message start: the next request is whole.
    let next = b"GET /next HTTP/1.1\r\nhost: x\r\n\r\n";
    run.feed(data(big, Direction::Recv, 50, next, next.len()));
    let ok = b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n";
    run.feed(data(big, Direction::Send, 51, ok, ok.len()));
    let exchanges = http(&run.out);
    assert_eq!(exchanges.len(), 1);
    assert_eq!(exchanges[0].request.head.target, "/next");
    assert_eq!(exchanges[0].status(), Some(200));
}

#[test]
fn amqp_messages_waiting_for_confirms_count_and_are_shed_whole() {
    use crate::amqp::tests::{Writer, publish, publisher_conversation};
    let mut run = Run::new(budget_config());
    let (conns, publishes) = (40, 30);
    let body = vec![b'j'; 4096];
    // Handshake and `confirm.select` on channel 1, then publishes the broker never confirms.
    let handshake: Vec<_> = publisher_conversation().into_iter().take(4).collect();
    for i in 0..conns {
        run.feed(open(key(i), Role::Client, 1));
        for (from, bytes) in &handshake {
            let d = match from {
                Writer::Client => Direction::Send,
                Writer::Broker => Direction::Recv,
            };
            run.feed(data(key(i), d, 2, bytes, bytes.len()));
        }
    }
    for n in 0..publishes {
        for i in 0..conns {
            let message = publish(1, "shop.priced-orders", "priced.eu", &body, "m");
            run.feed(data(
                key(i),
                Direction::Send,
                10 + n,
                &message,
                message.len(),
            ));
            let held = run.streams.held_bytes();
            assert!(held <= BUDGET, "{held} held");
        }
    }
    let counters = run.streams.counters().clone();
    assert!(counters.connections_shed > 0 && counters.shed_bytes > 0);
    assert_eq!(counters.shed_requests, 0);
    assert_eq!(counters.amqp.resyncs, 0, "no frame was cut by the shedding");
    for i in 0..conns {
        run.feed(close(key(i), 100));
    }
    assert_eq!(run.streams.held_bytes(), 0);
    // Every publish is either reported (reset at the close) or counted shed, never both.
    let reported = run
        .out
        .iter()
        .filter(|r| matches!(r, Record::Amqp(_)))
        .count() as u64;
    assert_eq!(
        reported + counters.shed_messages,
        (conns as u64) * publishes
    );
}
