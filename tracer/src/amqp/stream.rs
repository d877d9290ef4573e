//! One AMQP connection: both directions framed, frames dispatched to their channels, and
//! which side is the broker learnt from the protocol header, the connection's role or the
//! methods only one side sends. `streams` owns the bytes and calls in here.

use super::channel::{Begun, Channel, Cx, Way};
use super::framer::{Framer, GapEffect, Lost, Unit};
use super::method::{Method, parse_content_header};
use super::wire::{self, Scan};
use super::{Env, Settlement};
use crate::capture::{Direction, Role};
use crate::protocol::{ConnMeta, Input};

/// Channels followed per connection (brokers allow up to 2047); frames of others are passed
/// over.
const MAX_CHANNELS: usize = 256;
/// The frame size until `connection.tune-ok` says otherwise (RabbitMQ's default).
const DEFAULT_FRAME_MAX: u32 = 131_072;
/// How far into the bytes a resync looks for two consecutive frames.
const RESYNC_WINDOW: usize = 8192;

pub(crate) struct Stream {
    /// Send, recv.
    framers: [Framer; 2],
    /// Per direction: position unknown, looking for two consecutive frames.
    resync: [bool; 2],
    /// The direction that carries the client's frames to the broker.
    to_broker: Option<Direction>,
    frame_max: u32,
    /// Whether the connection was followed from its protocol header (else from the middle:
    /// channels first seen are of unknown numbering).
    from_start: bool,
    channels: Vec<Channel>,
    /// Messages waiting for a confirm or an ack, over all channels.
    waiting: usize,
    /// Bytes the messages being assembled and waiting hold, over all channels: kept as
    /// they change, since the stage asks after every event.
    held: usize,
}

fn slot(d: Direction) -> usize {
    match d {
        Direction::Send => 0,
        Direction::Recv => 1,
    }
}

fn other(d: Direction) -> Direction {
    match d {
        Direction::Send => Direction::Recv,
        Direction::Recv => Direction::Send,
    }
}

impl Stream {
    /// A connection claimed by AMQP. `preface_from`: the direction whose bytes began with the
    /// protocol header (the client's), when they did.
    pub fn new(meta: &mut ConnMeta, preface_from: Option<Direction>, env: &mut Env<'_>) -> Self {
        env.counters.connections += 1;
        let to_broker = preface_from.or(match meta.role {
            Role::Client => Some(Direction::Send),
            Role::Server => Some(Direction::Recv),
            Role::Unknown => None,
        });
        let mut stream = Stream {
            framers: [Framer::default(), Framer::default()],
            resync: [false; 2],
            to_broker: None,
            frame_max: DEFAULT_FRAME_MAX,
            from_start: preface_from.is_some(),
            channels: Vec::new(),
            waiting: 0,
            held: 0,
        };
        if let Some(d) = to_broker {
            stream.learn_sides(meta, d);
        }
        stream
    }

    fn learn_sides(&mut self, meta: &mut ConnMeta, to_broker: Direction) {
        if self.to_broker.is_none() {
            self.to_broker = Some(to_broker);
            if meta.role == Role::Unknown {
                meta.role = match to_broker {
                    Direction::Send => Role::Client,
                    Direction::Recv => Role::Server,
                };
            }
        }
    }

    fn way(&self, d: Direction) -> Option<Way> {
        self.to_broker.map(|b| {
            if b == d {
                Way::ToBroker
            } else {
                Way::FromBroker
            }
        })
    }

    /// Consumes everything of `input` that is not an incomplete frame.
    pub fn run<I: Input>(
        &mut self,
        meta: &mut ConnMeta,
        d: Direction,
        input: &mut I,
        ts_ns: u64,
        env: &mut Env<'_>,
    ) {
        loop {
            if self.resync[slot(d)] {
                let window = RESYNC_WINDOW.min(env.max_buffered_bytes);
                match wire::find_frames(input.bytes(), false, window) {
                    Scan::Found { at } => {
                        input.skip(at);
                        self.resync[slot(d)] = false;
                        self.framers[slot(d)].reset();
                    }
                    Scan::NotFound { keep_from } => {
                        input.skip(keep_from);
                        return;
                    }
                }
            }
            let unit = match self.framers[slot(d)].step(input, env.max_frame_bytes) {
                Ok(Unit::NeedMore) => return,
                Ok(unit) => unit,
                Err(Lost) => {
                    self.lose_sync(d, env);
                    continue;
                }
            };
            self.on_unit(meta, d, unit, ts_ns, env);
        }
    }

    fn on_unit(
        &mut self,
        meta: &mut ConnMeta,
        d: Direction,
        unit: Unit,
        ts_ns: u64,
        env: &mut Env<'_>,
    ) {
        if !matches!(unit, Unit::Body { .. }) {
            env.counters.frames += 1;
        }
        match unit {
            Unit::NeedMore | Unit::Heartbeat => {}
            Unit::ProtocolHeader => {
                self.from_start = true;
                self.learn_sides(meta, d);
            }
            Unit::Oversized { channel } => {
                env.counters.oversized_frames += 1;
                self.frame_lost(meta, d, channel, env);
            }
            Unit::Method { channel, payload } => match Method::parse(&payload) {
                Some(method) => self.method(meta, d, channel, method, ts_ns, env),
                // Well framed but not a method we know: the frames are fine, the method is
                // lost to us.
                None => self.frame_lost(meta, d, channel, env),
            },
            Unit::ContentHeader { channel, payload } => {
                let Some(way) = self.way(d) else { return };
                let Some((size, properties)) = parse_content_header(&payload) else {
                    return self.frame_lost(meta, d, channel, env);
                };
                let (mut cx, ch) = self.channel(meta, channel, env);
                if let Some(ch) = ch
                    && ch.content_header(way, size, properties, ts_ns, &mut cx.as_cx())
                {
                    self.framers[slot(d)].expect_body(channel, size);
                }
            }
            Unit::Body { channel, piece } => {
                let Some(way) = self.way(d) else { return };
                let (mut cx, ch) = self.channel(meta, channel, env);
                if let Some(ch) = ch {
                    ch.body(way, piece, ts_ns, &mut cx.as_cx());
                }
            }
        }
    }

    fn method(
        &mut self,
        meta: &mut ConnMeta,
        d: Direction,
        channel: u16,
        method: Method,
        ts_ns: u64,
        env: &mut Env<'_>,
    ) {
        // Methods only one side sends tell the sides of a connection entered mid-way.
        match &method {
            Method::Publish { .. }
            | Method::ConfirmSelect
            | Method::Consume { .. }
            | Method::Get { .. }
            | Method::Reject { .. }
            | Method::TuneOk { .. } => self.learn_sides(meta, d),
            Method::Deliver { .. }
            | Method::GetOk { .. }
            | Method::GetEmpty
            | Method::Return { .. }
            | Method::ConsumeOk { .. } => self.learn_sides(meta, other(d)),
            Method::Ack { delivery_tag, .. } | Method::Nack { delivery_tag, .. }
                if self.to_broker.is_none() =>
            {
                // Whichever side has a message waiting for this tag is settled by it.
                let from_broker = self
                    .channels
                    .iter()
                    .any(|c| c.id == channel && c.waits_for(Way::FromBroker, *delivery_tag));
                let to_broker = self
                    .channels
                    .iter()
                    .any(|c| c.id == channel && c.waits_for(Way::ToBroker, *delivery_tag));
                match (from_broker, to_broker) {
                    (true, false) => self.learn_sides(meta, other(d)),
                    (false, true) => self.learn_sides(meta, d),
                    _ => {}
                }
            }
            _ => {}
        }
        let Some(way) = self.way(d) else { return };
        if let Method::TuneOk { frame_max } = method {
            if frame_max >= 4096 {
                self.frame_max = frame_max;
            }
            return;
        }
        if method == Method::ChannelOpen {
            // The id is reused: the old channel's close was missed, and what it still held
            // ends as at a close.
            if let Some(at) = self.channels.iter().position(|c| c.id == channel) {
                let mut old = self.channels.swap_remove(at);
                let (_, mut cx) = self.parts(meta, env);
                old.end(Settlement::Reset, ts_ns, &mut cx.as_cx());
            }
        }
        let from_start = self.from_start || method == Method::ChannelOpen;
        let (mut cx, ch) = self.channel_with(meta, channel, from_start, env);
        let Some(ch) = ch else { return };
        let cx = &mut cx.as_cx();
        match method {
            Method::ConfirmSelect => ch.confirm_select(),
            Method::Consume {
                queue,
                tag,
                no_ack,
                no_wait,
            } => ch.consume(queue, tag, no_ack, no_wait),
            Method::ConsumeOk { tag } => ch.consume_ok(tag),
            Method::Cancel { tag } => ch.cancel(&tag),
            Method::Get { queue, no_ack } => ch.get(queue, no_ack),
            Method::GetEmpty => ch.get_empty(),
            Method::Publish {
                exchange,
                routing_key,
            } => ch.begin(way, Begun::Publish, exchange, routing_key, ts_ns, cx),
            Method::Return {
                reply_code,
                exchange,
                routing_key,
            } => ch.begin(
                way,
                Begun::Return { reply_code },
                exchange,
                routing_key,
                ts_ns,
                cx,
            ),
            Method::Deliver {
                tag,
                delivery_tag,
                redelivered,
                exchange,
                routing_key,
            } => {
                let begun = Begun::Deliver {
                    consumer_tag: tag,
                    delivery_tag,
                    redelivered,
                };
                ch.begin(way, begun, exchange, routing_key, ts_ns, cx)
            }
            Method::GetOk {
                delivery_tag,
                redelivered,
                exchange,
                routing_key,
            } => {
                let begun = Begun::GetOk {
                    delivery_tag,
                    redelivered,
                };
                ch.begin(way, begun, exchange, routing_key, ts_ns, cx)
            }
            Method::Ack {
                delivery_tag,
                multiple,
            } => ch.settle(way, delivery_tag, multiple, Settlement::Acked, ts_ns, cx),
            Method::Nack {
                delivery_tag,
                multiple,
                requeue,
            } => ch.settle(
                way,
                delivery_tag,
                multiple,
                Settlement::Nacked { requeue },
                ts_ns,
                cx,
            ),
            Method::Reject {
                delivery_tag,
                requeue,
            } => ch.settle(
                way,
                delivery_tag,
                false,
                Settlement::Rejected { requeue },
                ts_ns,
                cx,
            ),
            Method::ChannelClose { reply_code } => {
                ch.end(Settlement::ChannelClosed { reply_code }, ts_ns, cx)
            }
            Method::ChannelCloseOk => {
                ch.end(Settlement::ChannelClosed { reply_code: 200 }, ts_ns, cx);
                self.channels.retain(|c| c.id != channel);
            }
            Method::TuneOk { .. }
            | Method::ConnectionClose
            | Method::ChannelOpen
            | Method::Other => {}
        }
    }

    /// The channel's state, created on first sight (within the bound), with what it needs.
    fn channel<'s, 'e, 'm>(
        &'s mut self,
        meta: &'m ConnMeta,
        id: u16,
        env: &'s mut Env<'e>,
    ) -> (ChannelCx<'s, 'm, 'e>, Option<&'s mut Channel>) {
        let from_start = self.from_start;
        self.channel_with(meta, id, from_start, env)
    }

    fn channel_with<'s, 'e, 'm>(
        &'s mut self,
        meta: &'m ConnMeta,
        id: u16,
        from_start: bool,
        env: &'s mut Env<'e>,
    ) -> (ChannelCx<'s, 'm, 'e>, Option<&'s mut Channel>) {
        let at = match self.channels.iter().position(|c| c.id == id) {
            Some(at) => Some(at),
            None if self.channels.len() < MAX_CHANNELS => {
                self.channels.push(if from_start {
                    Channel::new(id)
                } else {
                    Channel::entered_midway(id)
                });
                Some(self.channels.len() - 1)
            }
            None => None,
        };
        let (channels, cx) = self.parts(meta, env);
        (cx, at.map(|at| &mut channels[at]))
    }

    /// The channels, and what they borrow of the connection and the stage while they work.
    fn parts<'s, 'e, 'm>(
        &'s mut self,
        meta: &'m ConnMeta,
        env: &'s mut Env<'e>,
    ) -> (&'s mut Vec<Channel>, ChannelCx<'s, 'm, 'e>) {
        let cx = ChannelCx {
            meta,
            waiting: &mut self.waiting,
            held: &mut self.held,
            env,
        };
        (&mut self.channels, cx)
    }

    fn frame_lost(&mut self, meta: &ConnMeta, d: Direction, channel: u16, env: &mut Env<'_>) {
        let Some(way) = self.way(d) else { return };
        let (mut cx, ch) = self.channel(meta, channel, env);
        if let Some(ch) = ch {
            ch.frame_lost(way, &mut cx.as_cx());
        }
    }

    /// Direction `d` no longer knows where frames start: what it was sending is lost, and it
    /// looks for two consecutive frames.
    pub fn lose_sync(&mut self, d: Direction, env: &mut Env<'_>) {
        if self.resync[slot(d)] {
            return;
        }
        env.counters.resyncs += 1;
        self.resync[slot(d)] = true;
        self.framers[slot(d)].reset();
        if self.way(d) == Some(Way::ToBroker) {
            for ch in &mut self.channels {
                ch.publishes_lost();
            }
        }
    }

    /// Bytes the connection's messages hold against the stage's byte budget: those being
    /// assembled (names, properties, body prefix) and those waiting for their settlement.
    pub fn held_bytes(&self) -> usize {
        self.held
    }

    /// Drops every message being assembled or waiting (the stage is over its byte budget);
    /// returns how many. `buffered`: per direction (send, recv), whether the caller's buffer
    /// held part of a frame, now dropped: that direction looks for its next frames, the
    /// other keeps its place (bodies are never buffered, so it may be inside one).
    pub fn shed(&mut self, meta: &ConnMeta, buffered: [bool; 2], env: &mut Env<'_>) -> usize {
        for d in [Direction::Send, Direction::Recv] {
            if buffered[slot(d)] {
                self.lose_sync(d, env);
            }
        }
        let (channels, mut cx) = self.parts(meta, env);
        channels.iter_mut().map(|ch| ch.shed(&mut cx.as_cx())).sum()
    }

    #[cfg(test)]
    pub fn recount_held(&self) -> usize {
        self.channels.iter().map(Channel::recount_held).sum()
    }

    /// `n` bytes of direction `d` were not captured; `buffered` is what the caller holds of
    /// an incomplete frame. Returns whether the buffer is to be dropped.
    pub fn gap(
        &mut self,
        meta: &ConnMeta,
        d: Direction,
        n: u64,
        buffered: &[u8],
        ts_ns: u64,
        env: &mut Env<'_>,
    ) -> bool {
        if self.resync[slot(d)] {
            return true;
        }
        match self.framers[slot(d)].gap(n, buffered, self.frame_max) {
            GapEffect::Body { channel, missing } => {
                if let Some(way) = self.way(d) {
                    let (mut cx, ch) = self.channel(meta, channel, env);
                    if let Some(ch) = ch {
                        ch.body_missing(way, missing, ts_ns, &mut cx.as_cx());
                    }
                }
                false
            }
            GapEffect::Frame { channel } => {
                self.frame_lost(meta, d, channel, env);
                true
            }
            GapEffect::Lost => {
                self.lose_sync(d, env);
                true
            }
        }
    }

    /// The connection closed: every message still waiting is reported as reset.
    pub fn close(&mut self, meta: &ConnMeta, ts_ns: u64, env: &mut Env<'_>) {
        let (channels, mut cx) = self.parts(meta, env);
        for ch in channels.iter_mut() {
            ch.end(Settlement::Reset, ts_ns, &mut cx.as_cx());
        }
        channels.clear();
    }

    /// Gives up on messages unsettled for `timeout_ns`.
    pub fn expire(&mut self, meta: &ConnMeta, now_ns: u64, timeout_ns: u64, env: &mut Env<'_>) {
        if self.waiting == 0 {
            return;
        }
        let (channels, mut cx) = self.parts(meta, env);
        for ch in channels.iter_mut().filter(|c| !c.is_idle()) {
            ch.expire(now_ns, timeout_ns, &mut cx.as_cx());
        }
    }
}

/// The parts of a connection and of the stage a channel borrows while it works.
pub(super) struct ChannelCx<'s, 'm, 'e> {
    meta: &'m ConnMeta,
    waiting: &'s mut usize,
    held: &'s mut usize,
    env: &'s mut Env<'e>,
}

impl ChannelCx<'_, '_, '_> {
    fn as_cx(&mut self) -> Cx<'_, '_> {
        Cx {
            meta: self.meta,
            max_body_bytes: self.env.max_body_bytes,
            max_unsettled: self.env.max_unsettled,
            waiting: self.waiting,
            held: self.held,
            counters: self.env.counters,
            out: self.env.out,
        }
    }
}
