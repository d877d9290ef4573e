//! One AMQP channel: messages assembled from their method, content header and body frames;
//! publishes waiting for the broker's confirm, deliveries waiting for the consumer's ack;
//! which queue each consumer tag reads.

use std::collections::VecDeque;

use bytes::Bytes;

use super::method::Properties;
use super::{Counters, Operation, Settlement, Transfer};
use crate::protocol::{BodyAcc, ConnMeta, Record};

/// Consumers, and consumes or gets waiting for their answer, remembered per channel.
const MAX_CONSUMERS: usize = 64;

/// Which way a frame went, in the connection's terms.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Way {
    /// Client to broker (publishes, acks of deliveries).
    ToBroker,
    /// Broker to client (deliveries, confirms, returns).
    FromBroker,
}

impl Way {
    fn slot(self) -> usize {
        match self {
            Way::ToBroker => 0,
            Way::FromBroker => 1,
        }
    }
}

/// What a message's method said, before its content arrives.
#[derive(Clone, Debug)]
pub(super) enum Begun {
    Publish,
    Return {
        reply_code: u16,
    },
    Deliver {
        consumer_tag: Bytes,
        delivery_tag: u64,
        redelivered: bool,
    },
    GetOk {
        delivery_tag: u64,
        redelivered: bool,
    },
}

/// A message whose content is still coming.
#[derive(Debug)]
struct Assembling {
    begun: Begun,
    exchange: Bytes,
    routing_key: Bytes,
    properties: Option<Properties>,
    body_size: u64,
    received: u64,
    body: BodyAcc,
    truncated: bool,
    start_ns: u64,
}

impl Assembling {
    /// What the message holds against the stage's byte budget: its names, properties and
    /// body prefix so far (what a [`Transfer`] made of it will hold).
    fn held_bytes(&self) -> usize {
        self.exchange.len()
            + self.routing_key.len()
            + self.properties.as_ref().map_or(0, Properties::encoded_len)
            + self.body.len()
    }
}

/// What a message waiting for its settlement holds against the stage's byte budget.
fn transfer_bytes(t: &Transfer) -> usize {
    t.exchange.len() + t.routing_key.len() + t.properties.encoded_len() + t.body.len()
}

#[derive(Debug)]
struct Consumer {
    tag: Bytes,
    queue: Bytes,
    no_ack: bool,
}

/// A message waiting for its settlement.
#[derive(Debug)]
struct Waiting {
    tag: u64,
    transfer: Transfer,
    /// The broker returned it; its confirm is still to come.
    returned: Option<u16>,
}

#[derive(Debug, Default)]
pub(super) struct Channel {
    pub id: u16,
    confirm: bool,
    /// Publish sequence numbers are not known (publishes were lost, or the channel was
    /// entered mid-way): confirms cannot be paired.
    tags_unknown: bool,
    next_tag: u64,
    assembling: [Option<Assembling>; 2],
    /// Per way: the highest tag of a waiting message shed over the byte budget, so that its
    /// settlement, when it comes, is not counted unpaired.
    shed_up_to: [u64; 2],
    unconfirmed: VecDeque<Waiting>,
    unacked: VecDeque<Waiting>,
    consumers: Vec<Consumer>,
    consumes: VecDeque<(Bytes, Bytes, bool)>,
    gets: VecDeque<(Bytes, bool)>,
}

/// Everything a channel needs from its connection to settle messages.
pub(super) struct Cx<'a, 'e> {
    pub meta: &'a ConnMeta,
    pub max_body_bytes: usize,
    pub max_unsettled: usize,
    /// Messages waiting on the whole connection.
    pub waiting: &'a mut usize,
    /// Bytes the connection's messages (assembling or waiting) hold.
    pub held: &'a mut usize,
    pub counters: &'e mut Counters,
    pub out: &'e mut Vec<Record>,
}

impl Cx<'_, '_> {
    fn hold(&mut self, n: usize) {
        *self.held += n;
    }

    fn release(&mut self, n: usize) {
        *self.held = self.held.saturating_sub(n);
    }

    /// A waiting message leaves the connection (settled, given up or shed).
    fn unwait(&mut self, waiting: &Waiting) {
        *self.waiting -= 1;
        self.release(transfer_bytes(&waiting.transfer));
    }

    fn emit(&mut self, mut transfer: Transfer, settlement: Settlement, ts_ns: u64) {
        transfer.settlement = settlement;
        transfer.end_ns = ts_ns.max(transfer.start_ns);
        self.counters.messages += 1;
        match settlement {
            Settlement::Timeout => self.counters.timeouts += 1,
            Settlement::Reset | Settlement::ChannelClosed { .. } => self.counters.resets += 1,
            _ => {}
        }
        self.out.push(Record::Amqp(transfer));
    }
}

impl Channel {
    pub fn new(id: u16) -> Self {
        Channel {
            id,
            next_tag: 1,
            ..Channel::default()
        }
    }

    /// Seen first in the middle of its life: its publish numbering is unknown.
    pub fn entered_midway(id: u16) -> Self {
        Channel {
            tags_unknown: true,
            ..Channel::new(id)
        }
    }

    pub fn confirm_select(&mut self) {
        if !self.confirm {
            self.confirm = true;
            self.next_tag = 1;
        }
    }

    /// Frames of this channel were lost going to the broker: a publish may be among them.
    pub fn publishes_lost(&mut self) {
        self.tags_unknown = true;
    }

    pub fn consume(&mut self, queue: Bytes, tag: Bytes, no_ack: bool, no_wait: bool) {
        if no_wait {
            self.consumed(tag, Some((queue, no_ack)));
        } else if self.consumes.len() < MAX_CONSUMERS {
            self.consumes.push_back((queue, tag, no_ack));
        }
    }

    /// `basic.consume-ok` names the tag (the broker's, when the client left it empty).
    pub fn consume_ok(&mut self, tag: Bytes) {
        let asked = self
            .consumes
            .pop_front()
            .map(|(queue, _, no_ack)| (queue, no_ack));
        self.consumed(tag, asked);
    }

    fn consumed(&mut self, tag: Bytes, asked: Option<(Bytes, bool)>) {
        let Some((queue, no_ack)) = asked else {
            return;
        };
        self.consumers.retain(|c| c.tag != tag);
        if self.consumers.len() < MAX_CONSUMERS {
            self.consumers.push(Consumer { tag, queue, no_ack });
        }
    }

    pub fn cancel(&mut self, tag: &Bytes) {
        self.consumers.retain(|c| c.tag != *tag);
    }

    pub fn get(&mut self, queue: Bytes, no_ack: bool) {
        if self.gets.len() < MAX_CONSUMERS {
            self.gets.push_back((queue, no_ack));
        }
    }

    pub fn get_empty(&mut self) {
        self.gets.pop_front();
    }

    /// A method that carries content began a message going `way`.
    pub fn begin(
        &mut self,
        way: Way,
        begun: Begun,
        exchange: Bytes,
        routing_key: Bytes,
        ts_ns: u64,
        cx: &mut Cx<'_, '_>,
    ) {
        self.abandon(way, cx);
        cx.hold(exchange.len() + routing_key.len());
        self.assembling[way.slot()] = Some(Assembling {
            begun,
            exchange,
            routing_key,
            properties: None,
            body_size: 0,
            received: 0,
            body: BodyAcc::Empty,
            truncated: false,
            start_ns: ts_ns,
        });
    }

    /// A message whose content never fully came: its publish still counts for confirms.
    fn abandon(&mut self, way: Way, cx: &mut Cx<'_, '_>) {
        if let Some(message) = self.assembling[way.slot()].take() {
            cx.release(message.held_bytes());
            cx.counters.incomplete_messages += 1;
            if matches!(message.begun, Begun::Publish) && self.confirm {
                self.next_tag += 1;
            }
        }
    }

    /// Returns whether a body follows (the caller's framer expects it).
    pub fn content_header(
        &mut self,
        way: Way,
        body_size: u64,
        properties: Properties,
        ts_ns: u64,
        cx: &mut Cx<'_, '_>,
    ) -> bool {
        let Some(message) = &mut self.assembling[way.slot()] else {
            return false;
        };
        cx.hold(properties.encoded_len());
        if let Some(old) = message.properties.replace(properties) {
            // A second content header for one method: the first one's bytes are gone.
            cx.release(old.encoded_len());
        }
        message.body_size = body_size;
        if body_size == 0 {
            self.complete(way, ts_ns, cx);
            return false;
        }
        true
    }

    pub fn body(&mut self, way: Way, piece: Bytes, ts_ns: u64, cx: &mut Cx<'_, '_>) {
        let Some(message) = &mut self.assembling[way.slot()] else {
            return;
        };
        message.received += piece.len() as u64;
        let room = cx.max_body_bytes.saturating_sub(message.body.len());
        if piece.len() > room {
            message.truncated = true;
        }
        if room > 0 {
            let kept = piece.len().min(room);
            message.body.push(piece.slice(..kept));
            cx.hold(kept);
        }
        if message.received >= message.body_size {
            self.complete(way, ts_ns, cx);
        }
    }

    /// `missing` body bytes of the message going `way` were not captured.
    pub fn body_missing(&mut self, way: Way, missing: u64, ts_ns: u64, cx: &mut Cx<'_, '_>) {
        let Some(message) = &mut self.assembling[way.slot()] else {
            return;
        };
        message.received += missing;
        message.truncated = true;
        if message.received >= message.body_size {
            self.complete(way, ts_ns, cx);
        }
    }

    /// A method or header frame of the message going `way` was lost.
    pub fn frame_lost(&mut self, way: Way, cx: &mut Cx<'_, '_>) {
        self.abandon(way, cx);
        if way == Way::ToBroker {
            self.publishes_lost();
        }
    }

    fn complete(&mut self, way: Way, ts_ns: u64, cx: &mut Cx<'_, '_>) {
        let Some(message) = self.assembling[way.slot()].take() else {
            return;
        };
        cx.release(message.held_bytes());
        let (operation, queue, tag, redelivered, no_ack) = match &message.begun {
            Begun::Publish | Begun::Return { .. } => (Operation::Publish, None, None, false, false),
            Begun::Deliver {
                consumer_tag,
                delivery_tag,
                redelivered,
            } => {
                let consumer = self.consumers.iter().find(|c| c.tag == *consumer_tag);
                (
                    Operation::Deliver,
                    consumer.map(|c| c.queue.clone()),
                    Some(*delivery_tag),
                    *redelivered,
                    consumer.is_some_and(|c| c.no_ack),
                )
            }
            Begun::GetOk {
                delivery_tag,
                redelivered,
            } => {
                let (queue, no_ack) = self.gets.pop_front().unzip();
                (
                    Operation::Get,
                    queue,
                    Some(*delivery_tag),
                    *redelivered,
                    no_ack.unwrap_or(false),
                )
            }
        };
        let mut transfer = Transfer {
            meta: cx.meta.clone(),
            operation,
            channel: self.id,
            exchange: message.exchange,
            routing_key: message.routing_key,
            queue,
            delivery_tag: tag,
            redelivered,
            properties: message.properties.unwrap_or_default(),
            body: message.body.finish(),
            body_len: message.body_size,
            body_truncated: message.truncated,
            start_ns: message.start_ns,
            end_ns: ts_ns,
            settlement: Settlement::Sent,
        };
        match message.begun {
            Begun::Publish if self.confirm && !self.tags_unknown => {
                let tag = self.next_tag;
                self.next_tag += 1;
                transfer.delivery_tag = Some(tag);
                self.wait(
                    Waiting {
                        tag,
                        transfer,
                        returned: None,
                    },
                    Way::FromBroker,
                    cx,
                );
            }
            // Without a numbering to pair its confirm by, a publish is reported as sent.
            Begun::Publish => cx.emit(transfer, Settlement::Sent, ts_ns),
            Begun::Return { reply_code } => {
                let same = |w: &&mut Waiting| {
                    w.returned.is_none()
                        && w.transfer.exchange == transfer.exchange
                        && w.transfer.routing_key == transfer.routing_key
                };
                match self.unconfirmed.iter_mut().find(same) {
                    Some(waiting) => waiting.returned = Some(reply_code),
                    // No confirms on the channel: the returned message stands for its publish.
                    None => {
                        if self.confirm {
                            cx.counters.unpaired_settlements += 1;
                        }
                        transfer.start_ns = ts_ns;
                        cx.emit(transfer, Settlement::Returned { reply_code }, ts_ns);
                    }
                }
            }
            _ if no_ack => cx.emit(transfer, Settlement::AutoAcked, ts_ns),
            _ => {
                let tag = transfer.delivery_tag.unwrap_or(0);
                self.wait(
                    Waiting {
                        tag,
                        transfer,
                        returned: None,
                    },
                    Way::ToBroker,
                    cx,
                );
            }
        }
    }

    /// Keeps a message until its settlement comes `from`.
    fn wait(&mut self, waiting: Waiting, from: Way, cx: &mut Cx<'_, '_>) {
        if *cx.waiting >= cx.max_unsettled {
            cx.counters.unsettled_overflow += 1;
            return;
        }
        *cx.waiting += 1;
        cx.hold(transfer_bytes(&waiting.transfer));
        match from {
            Way::FromBroker => self.unconfirmed.push_back(waiting),
            Way::ToBroker => self.unacked.push_back(waiting),
        }
    }

    /// An ack, nack or reject for `tag` (`multiple`: and every earlier one) came `way`:
    /// from the broker it settles publishes, from the client deliveries.
    pub fn settle(
        &mut self,
        way: Way,
        tag: u64,
        multiple: bool,
        settlement: Settlement,
        ts_ns: u64,
        cx: &mut Cx<'_, '_>,
    ) {
        let queue = match way {
            Way::FromBroker => &mut self.unconfirmed,
            Way::ToBroker => &mut self.unacked,
        };
        let mut settled = 0;
        let mut emit = |waiting: Waiting, cx: &mut Cx<'_, '_>| {
            settled += 1;
            cx.unwait(&waiting);
            let outcome = waiting.returned.map_or(settlement, |reply_code| {
                resolve_returned(settlement, reply_code)
            });
            cx.emit(waiting.transfer, outcome, ts_ns);
        };
        if multiple {
            // Tags rise in order on a channel, so the settled ones are at the front.
            while queue.front().is_some_and(|w| tag == 0 || w.tag <= tag) {
                if let Some(waiting) = queue.pop_front() {
                    emit(waiting, cx);
                }
            }
        } else if let Some(waiting) = queue
            .iter()
            .position(|w| w.tag == tag)
            .and_then(|at| queue.remove(at))
        {
            emit(waiting, cx);
        }
        let shed = tag != 0 && tag <= self.shed_up_to[way.slot()];
        if settled == 0 && !shed {
            cx.counters.unpaired_settlements += 1;
        }
    }

    /// Whether `way`'s settlements have anything to settle (for a connection whose sides are
    /// not known yet).
    pub fn waits_for(&self, way: Way, tag: u64) -> bool {
        let queue = match way {
            Way::FromBroker => &self.unconfirmed,
            Way::ToBroker => &self.unacked,
        };
        queue.iter().any(|w| w.tag == tag)
    }

    /// The channel (or the connection) ended: what waits is reported with `settlement`.
    pub fn end(&mut self, settlement: Settlement, ts_ns: u64, cx: &mut Cx<'_, '_>) {
        for way in [Way::ToBroker, Way::FromBroker] {
            if let Some(message) = self.assembling[way.slot()].take() {
                cx.release(message.held_bytes());
                cx.counters.incomplete_messages += 1;
            }
        }
        for waiting in self.unconfirmed.drain(..).chain(self.unacked.drain(..)) {
            cx.unwait(&waiting);
            cx.emit(waiting.transfer, settlement, ts_ns);
        }
    }

    /// Gives up on messages settled by nobody within `timeout_ns` of their arrival.
    pub fn expire(&mut self, now_ns: u64, timeout_ns: u64, cx: &mut Cx<'_, '_>) {
        for queue in [&mut self.unconfirmed, &mut self.unacked] {
            while queue
                .front()
                .is_some_and(|w| w.transfer.end_ns.saturating_add(timeout_ns) <= now_ns)
            {
                if let Some(waiting) = queue.pop_front() {
                    cx.unwait(&waiting);
                    cx.emit(waiting.transfer, Settlement::Timeout, now_ns);
                }
            }
        }
    }

    /// Drops the messages being assembled and those waiting for their settlement (the stage
    /// is over its byte budget); returns how many. Settlements of the dropped ones that come
    /// later are expected, not unpaired.
    pub fn shed(&mut self, cx: &mut Cx<'_, '_>) -> usize {
        let mut dropped = 0;
        for message in self.assembling.iter_mut().filter_map(Option::take) {
            cx.release(message.held_bytes());
            dropped += 1;
        }
        for (way, queue) in [
            (Way::FromBroker, &mut self.unconfirmed),
            (Way::ToBroker, &mut self.unacked),
        ] {
            for waiting in queue.drain(..) {
                let up_to = &mut self.shed_up_to[way.slot()];
                *up_to = (*up_to).max(waiting.tag);
                cx.unwait(&waiting);
                dropped += 1;
            }
        }
        dropped
    }

    #[cfg(test)]
    pub fn recount_held(&self) -> usize {
        let assembling: usize = self
            .assembling
            .iter()
            .flatten()
            .map(Assembling::held_bytes)
            .sum();
        let waiting: usize = self
            .unconfirmed
            .iter()
            .chain(&self.unacked)
            .map(|w| transfer_bytes(&w.transfer))
            .sum();
        assembling + waiting
    }

    pub fn is_idle(&self) -> bool {
        self.unconfirmed.is_empty() && self.unacked.is_empty()
    }
}

/// A returned publish is reported as returned whatever the confirm after it says.
fn resolve_returned(confirm: Settlement, reply_code: u16) -> Settlement {
    match confirm {
        Settlement::Acked => Settlement::Returned { reply_code },
        other => other,
    }
}
