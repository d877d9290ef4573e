//! The per-event stages, owned by one task: streams (with the protocols' parsers), rules and
//! span building, sampling and the consumers (`export::Fanout`). Behind the capture reader,
//! it sheds whole exchanges (see `overload`).

use tokio::sync::{mpsc, watch};

use super::overload::{Backlog, Level};
use super::{PipelineCounters, PipelineSnapshot, TICK};
use crate::capture::CaptureEvent;
use crate::capture::counters::CaptureProgress;
use crate::clock::monotonic_now_ns;
use crate::export::Fanout;
use crate::http::Outcome;
use crate::orders::Classification;
use crate::protocol::Record;
use crate::sampling::Sampler;
use crate::spans::{MatchOutcome, SpanBuilder, SpanRecord, order_trace_id};
use crate::streams::Streams;

/// The agent's pipeline: capture events in, spans out to the fanout.
pub struct Pipeline {
    streams: Streams,
    builder: SpanBuilder,
    fanout: Fanout,
    counters: PipelineCounters,
    /// Reused output buffer of the streams stage.
    records: Vec<Record>,
    level: Level,
    /// CLOCK_MONOTONIC to unix ns, as the spans are stamped.
    unix_offset: i128,
    /// CLOCK_MONOTONIC ns of the newest event processed.
    last_event_ns: u64,
}

impl Pipeline {
    /// `builder` stamps spans with `unix_offset` (see `clock::monotonic_to_unix_offset_ns`),
    /// which the watermark uses too.
    pub fn new(streams: Streams, builder: SpanBuilder, fanout: Fanout, unix_offset: i128) -> Self {
        Pipeline {
            streams,
            builder,
            fanout,
            counters: PipelineCounters::default(),
            records: Vec::new(),
            level: Level::Normal,
            unix_offset,
            last_event_ns: 0,
        }
    }

    /// Processes events until the queue closes; publishes the counters each tick.
    pub(super) async fn run(
        mut self,
        mut events: mpsc::Receiver<Vec<CaptureEvent>>,
        progress: CaptureProgress,
        snapshot: watch::Sender<PipelineSnapshot>,
    ) {
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                batch = events.recv() => match batch {
                    Some(batch) => {
                        // Once the reader is gone (shutdown) nothing more comes: what is
                        // queued is drained whole, not shed.
                        let queued = if events.is_closed() { 0 } else { events.len() };
                        let backlog = Backlog {
                            queued,
                            capacity: events.max_capacity(),
                        };
                        self.on_batch(batch, backlog);
                    }
                    None => break,
                },
                _ = tick.tick() => {
                    self.expire(monotonic_now_ns());
                    self.watermark(&events, &progress);
                    snapshot.send_replace(self.snapshot());
                }
            }
        }
        snapshot.send_replace(self.snapshot());
    }

    /// Tells the in-process consumers how far the evidence has got: up to what the reader
    /// had drained when nothing is left queued, else up to the newest event processed.
    fn watermark(
        &mut self,
        events: &mpsc::Receiver<Vec<CaptureEvent>>,
        progress: &CaptureProgress,
    ) {
        // Read before looking at the queue: the reader stores it after queueing.
        let drained = progress.drained_at_ns();
        let up_to = if events.is_empty() {
            drained.max(self.last_event_ns)
        } else {
            self.last_event_ns
        };
        if up_to > 0 {
            self.fanout
                .watermark((up_to as i128 + self.unix_offset).max(0) as u64);
        }
    }

    /// Processes one batch of the reader's; `backlog`: what is still queued behind it.
    pub fn on_batch(&mut self, batch: Vec<CaptureEvent>, backlog: Backlog) {
        self.level = self.level.next(backlog);
        if let Some(newest) = batch.iter().map(CaptureEvent::ts_ns).max() {
            self.last_event_ns = self.last_event_ns.max(newest);
        }
        for event in batch {
            self.streams.on_event(event, &mut self.records);
        }
        self.on_records();
    }

    /// Times out what waits too long as of `now_ns` (CLOCK_MONOTONIC) and builds its spans.
    pub fn expire(&mut self, now_ns: u64) {
        self.streams.expire(now_ns, &mut self.records);
        self.on_records();
    }

    fn on_records(&mut self) {
        match self.level {
            Level::Normal => {
                for record in self.records.drain(..) {
                    build(
                        &mut self.builder,
                        &mut self.fanout,
                        &mut self.counters,
                        &record,
                    );
                }
            }
            Level::SampledOut => {
                for record in self.records.drain(..) {
                    let sampler = self.fanout.sampler();
                    let mut shed = false;
                    let (outcome, span) = self.builder.build_unless(&record, |classification| {
                        shed = sampled_out(sampler, &record, classification);
                        shed
                    });
                    if shed {
                        self.counters.shed_sampled_out += 1;
                    } else {
                        hand_on(&mut self.fanout, &mut self.counters, outcome, span);
                    }
                }
            }
            Level::All => {
                self.counters.shed_exchanges += self.records.len() as u64;
                self.records.clear();
            }
        }
    }

    pub fn snapshot(&self) -> PipelineSnapshot {
        PipelineSnapshot {
            streams: self.streams.counters().clone(),
            pipeline: PipelineCounters {
                monitor_drops: self.fanout.consumer_drops(),
                ..self.counters
            },
            sampling: self.fanout.sampler().counters().clone(),
        }
    }
}

/// Classifies a record, builds its span and hands it on.
fn build(
    builder: &mut SpanBuilder,
    fanout: &mut Fanout,
    counters: &mut PipelineCounters,
    record: &Record,
) {
    let (outcome, span) = builder.build(record);
    hand_on(fanout, counters, outcome, span);
}

/// Counts a built record and hands its span on.
fn hand_on(
    fanout: &mut Fanout,
    counters: &mut PipelineCounters,
    outcome: MatchOutcome,
    span: Option<SpanRecord>,
) {
    match outcome {
        MatchOutcome::Order => counters.order_exchanges += 1,
        MatchOutcome::NoOrderId => counters.no_order_id += 1,
        MatchOutcome::Unmatched => counters.unmatched += 1,
    }
    if let Some(span) = span {
        counters.spans += 1;
        fanout.submit(span);
    }
}

/// Whether the record is of an order the sampler drops by ratio, and no error that sampling
/// would keep whatever the ratio: such exchanges are shed first.
fn sampled_out(sampler: &Sampler, record: &Record, classification: &Classification<'_>) -> bool {
    if may_be_important(record) {
        return false;
    }
    let Classification::Order(order) = classification else {
        // No order, no sampling decision to go by.
        return false;
    };
    let service = match record {
        Record::Http(exchange) => &exchange.service,
        Record::Amqp(transfer) => &transfer.meta.service,
    };
    sampler.drops_by_ratio(service, &order_trace_id(&order.order_id))
}

/// Errors and failed lookups make important spans, which sampling keeps whatever the ratio
/// says: any exchange that is not a plain success could be one (a superset of what the span
/// builder marks as an error), and is not shed as sampled out.
fn may_be_important(record: &Record) -> bool {
    match record {
        Record::Http(exchange) => {
            exchange.outcome != Outcome::Complete || exchange.status().is_none_or(|s| s >= 400)
        }
        Record::Amqp(transfer) => !transfer.settlement.succeeded(),
    }
}
