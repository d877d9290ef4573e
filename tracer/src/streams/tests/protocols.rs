//! Connections claimed by a protocol other than HTTP: AMQP by its protocol header, or entered
//! mid-way by two consecutive frames; HTTP beside it unchanged.

use super::*;
use crate::amqp::tests::{Writer, consumer_conversation, publisher_conversation};
use crate::capture::{Direction, Role};
use crate::http::fixtures;

fn amqp_dir(from: Writer) -> Direction {
    match from {
        Writer::Client => Direction::Send,
        Writer::Broker => Direction::Recv,
    }
}

fn transfers(out: &[Record]) -> usize {
    out.iter().filter(|r| matches!(r, Record::Amqp(_))).count()
}

#[test]
fn the_amqp_protocol_header_claims_a_connection() {
    let mut run = Run::new(StreamsConfig::default());
    run.feed(open(key(1), Role::Client, 0));
    run.feed(open(key(2), Role::Server, 0));
    for (i, (from, bytes)) in publisher_conversation().iter().enumerate() {
        run.feed(data(key(1), amqp_dir(*from), i as u64, bytes, bytes.len()));
    }
    // An HTTP connection of the same process goes on as before.
    for (i, (kind, bytes)) in fixtures::keep_alive_conversation(500).iter().enumerate() {
        let d = direction(Role::Server, *kind);
        run.feed(data(key(2), d, i as u64, bytes, bytes.len()));
    }
    run.feed(close(key(1), 100));
    run.feed(close(key(2), 100));
    assert_eq!(transfers(&run.out), 5);
    assert_eq!(run.seen().len(), 9);
    let c = run.streams.counters();
    assert_eq!((c.amqp.connections, c.http.non_http_connections), (1, 0));
    assert_eq!((c.http.parse_errors, c.http.resyncs), (0, 0));
}

#[test]
fn an_amqp_connection_entered_midway_is_found_by_its_frames() {
    // No open event (the agent started late); the first bytes are whole frames.
    let writes = consumer_conversation();
    let mut run = Run::new(StreamsConfig::default());
    for (i, (from, bytes)) in writes.iter().enumerate().skip(5) {
        run.feed(data(key(3), amqp_dir(*from), i as u64, bytes, bytes.len()));
    }
    run.feed(close(key(3), 100));
    // The consumes were not seen; the deliveries and their acks were.
    assert_eq!(transfers(&run.out), 4);
    assert_eq!(run.streams.counters().amqp.connections, 1);
    assert_eq!(run.streams.counters().http.non_http_connections, 0);
}
