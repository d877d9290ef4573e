//! What the kernel side did not capture: a connection entered mid-way, gaps in bodies and
//! in method frames, and the bounds on messages waiting for their settlement.

use super::*;

#[test]
fn a_connection_entered_midway_finds_its_frames() {
    // The first bytes seen are the middle of a delivery's body; then whole frames follow.
    let writes = consumer_conversation();
    let tail = &writes[5].1[writes[5].1.len() - 5000..];
    let mut midway = Driver::new(Role::Client);
    midway.feed(Direction::Recv, tail, 5);
    midway.feed(Direction::Send, &writes[6].1, 70);
    midway.feed(Direction::Recv, &writes[7].1, 80);
    midway.feed(Direction::Send, &writes[8].1, 90);
    let got = midway.transfers();
    // The consume was not seen: the queue is unknown, the delivery and its reject are paired.
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].delivery_tag, Some(3));
    assert_eq!(got[0].queue, None);
    assert_eq!(got[0].settlement, Settlement::Rejected { requeue: false });
    assert!(midway.counters.resyncs >= 1);
}

#[test]
fn a_gap_inside_a_large_body_is_stepped_over() {
    let writes = consumer_conversation();
    let mut run = Driver::new(Role::Client);
    for (i, (from, bytes)) in writes.iter().enumerate() {
        let ts = 10 * (i as u64 + 1);
        if i == 5 {
            // Captured up to 16 KiB of the 300 KB write, as the kernel side cuts it.
            run.feed(dir(*from), &bytes[..16_384], ts);
            run.gap(dir(*from), (bytes.len() - 16_384) as u64, ts);
        } else {
            run.feed(dir(*from), bytes, ts);
        }
    }
    let got = run.transfers();
    assert_eq!(
        got.len(),
        4,
        "{:?}",
        got.iter().map(|t| summary(t)).collect::<Vec<_>>()
    );
    assert!(got[2].body_truncated && got[2].body_len == 300_000);
    assert_eq!(got[2].settlement, Settlement::Acked);
    assert_eq!(run.counters.resyncs, 0);
}

#[test]
fn publishes_after_a_lost_publish_on_a_confirm_channel_are_reported_sent() {
    let mut run = Driver::new(Role::Client);
    run.feed(Direction::Send, PREFACE, 1);
    run.feed(Direction::Send, &method(1, 85, 10, &[0]), 2);
    run.feed(Direction::Send, &publish(1, "x", "k", b"{}", "m-0"), 3);
    // The kernel side lost the middle of the next publish's method frame.
    let lost = publish(1, "x", "k", b"{}", "m-1");
    run.feed(Direction::Send, &lost[..10], 4);
    run.gap(Direction::Send, (lost.len() - 10) as u64, 4);
    for (i, id) in ["m-2", "m-3"].iter().enumerate() {
        run.feed(
            Direction::Send,
            &publish(1, "x", "k", b"{}", id),
            5 + i as u64,
        );
    }
    let sent: Vec<_> = run
        .transfers()
        .iter()
        .map(|t| (t.property("message-id"), t.settlement))
        .collect();
    let id = |s: &'static str| Some(s.as_bytes().into());
    assert_eq!(
        sent,
        [(id("m-2"), Settlement::Sent), (id("m-3"), Settlement::Sent)]
    );
    // The one published before the loss still waits for its confirm.
    run.close(10);
    assert_eq!(run.transfers().len(), 3);
    assert_eq!(run.transfers()[2].settlement, Settlement::Reset);
}

#[test]
fn unsettled_messages_are_reset_at_close_and_bounded() {
    let mut run = Driver::new(Role::Client);
    run.feed(Direction::Send, PREFACE, 1);
    run.feed(Direction::Send, &method(1, 85, 10, &[0]), 2);
    for i in 0..100 {
        run.feed(
            Direction::Send,
            &publish(1, "x", "k", b"{}", &format!("m-{i}")),
            3 + i,
        );
    }
    run.close(500);
    assert_eq!(run.transfers().len(), 64);
    assert!(
        run.transfers()
            .iter()
            .all(|t| t.settlement == Settlement::Reset)
    );
    assert_eq!(run.counters.unsettled_overflow, 36);
}

#[test]
fn unsettled_messages_are_held_until_settled_or_shed() {
    let body = [b'b'; 900];
    let mut run = Driver::new(Role::Client);
    run.feed(Direction::Send, PREFACE, 1);
    run.feed(Direction::Send, &method(1, 85, 10, &[0]), 2);
    for i in 0..10 {
        run.feed(Direction::Send, &publish(1, "x", "k", &body, "m"), 3 + i);
    }
    // Each waits with its names, properties and body prefix.
    let held = run.held_bytes();
    assert!((10 * 900..10 * 1000).contains(&held), "{held}");
    run.feed(Direction::Recv, &ack(1, 4, true), 20);
    assert_eq!(run.transfers().len(), 4);
    assert_eq!(run.held_bytes(), held / 10 * 6);
    assert_eq!(run.shed(), 6);
    assert_eq!(run.held_bytes(), 0);
    // No frame was cut: both directions keep their place and the numbering. The confirms
    // of the shed ones are expected, not unpaired; the next publishes pair as before.
    run.feed(Direction::Recv, &ack(1, 10, true), 30);
    run.feed(Direction::Send, &publish(1, "x", "k", &body, "m"), 31);
    run.feed(Direction::Send, &publish(1, "x", "k", &body, "m"), 32);
    run.feed(Direction::Recv, &ack(1, 12, true), 33);
    run.close(40);
    assert_eq!(run.counters.unpaired_settlements, 0);
    assert_eq!(run.counters.resyncs, 0);
    let tags: Vec<_> = run.transfers().iter().map(|t| t.delivery_tag).collect();
    assert_eq!(tags[4..], [Some(11), Some(12)]);
    assert!(
        run.transfers()
            .iter()
            .all(|t| t.settlement == Settlement::Acked)
    );
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(256))]

    /// Garbage, real frames and cut frames mixed, split anywhere, with gaps: no panic, the
    /// buffers stay bounded, the settled messages stay bounded.
    #[test]
    fn garbage_never_panics_and_stays_bounded(
        parts in proptest::collection::vec(
            proptest::prop_oneof![
                proptest::collection::vec(proptest::prelude::any::<u8>(), 0..64),
                proptest::sample::select(
                    publisher_conversation().into_iter().chain(consumer_conversation()).map(|(_, b)| b[..b.len().min(2000)].to_vec()).collect::<Vec<_>>()
                ),
            ],
            0..12,
        ),
        cuts in proptest::collection::vec(1..300usize, 1..8),
        gaps in proptest::collection::vec(0..5000u64, 0..4),
    ) {
        let mut run = Driver::new(Role::Unknown);
        let all = parts.concat();
        let mut rest = &all[..];
        let mut i = 0;
        while !rest.is_empty() {
            let n = cuts[i % cuts.len()].min(rest.len());
            let d = if i % 3 == 0 { Direction::Recv } else { Direction::Send };
            run.feed(d, &rest[..n], i as u64);
            if let Some(g) = gaps.get(i) {
                run.gap(d, *g, i as u64);
            }
            rest = &rest[n..];
            i += 1;
        }
        run.close(u64::MAX);
        for t in run.transfers() {
            proptest::prop_assert!(t.body.len() <= 1024);
            proptest::prop_assert!(t.end_ns >= t.start_ns);
        }
    }
}
