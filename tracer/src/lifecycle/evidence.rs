//! What the monitor could see: how far each source's evidence has got (its watermark), and
//! the gaps in which it saw nothing (its own downtime, a source starting late or falling
//! silent, events the capture or the monitor's queue dropped).
//!
//! Limits are judged at the evidence's time, not the wall clock's: a lagging pipeline delays
//! a detection instead of inventing it. A gap never makes a detection by itself: orders in
//! flight across it wait for new evidence, then count their limits from the gap's end.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// A source that has not reported its watermark for this long no longer holds the
/// lifecycle's clock back (it may be gone for good); when it reports again, the time it was
/// silent is a gap.
pub(super) const SOURCE_SILENCE_NS: u64 = 30_000_000_000;

/// A time span in which the monitor may have missed exchanges.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Gap {
    /// Unix ns: evidence is complete up to here.
    pub start: u64,
    /// Unix ns: evidence is complete again from here.
    pub end: u64,
    pub cause: GapCause,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GapCause {
    /// The monitor was not running (crash, restart, upgrade).
    MonitorDown,
    /// A source's first evidence after the monitor started came later than the monitor's.
    SourceStarted,
    /// A source reported nothing for a while, then came back.
    SourceSilent,
    /// The agent lost captured events (ring buffer, queues, budgets).
    CaptureDrops,
    /// The monitor's own span queue was full.
    MonitorQueueFull,
}

impl GapCause {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::MonitorDown => "monitor_down",
            Self::SourceStarted => "source_started",
            Self::SourceSilent => "source_silent",
            Self::CaptureDrops => "capture_drops",
            Self::MonitorQueueFull => "monitor_queue_full",
        }
    }

    /// Whether connection state may be lost with it (the agent restarted or went away): what
    /// long-lived connections carry may be invisible afterwards.
    pub fn loses_connections(self) -> bool {
        matches!(
            self,
            Self::MonitorDown | Self::SourceStarted | Self::SourceSilent
        )
    }

    pub fn parse(text: &str) -> Option<Self> {
        [
            Self::MonitorDown,
            Self::SourceStarted,
            Self::SourceSilent,
            Self::CaptureDrops,
            Self::MonitorQueueFull,
        ]
        .into_iter()
        .find(|c| c.as_str() == text)
    }
}

struct Mark {
    /// Unix ns (the source's clock): every exchange that ended before it was handed over.
    up_to: u64,
    /// Unix ns (the monitor's clock) of the last report.
    heard_at: u64,
    silent: bool,
}

/// The watermarks of the sources that report one (sources that do not, such as plain OTLP
/// senders, leave the clock to the wall).
#[derive(Default)]
pub(super) struct Watermarks {
    sources: BTreeMap<String, Mark>,
}

/// What a report tells beyond the watermark itself.
pub(super) enum Report {
    /// The source's first report.
    First,
    /// The source is back after a silence: (its last watermark before it).
    Returned(u64),
    Ongoing,
}

impl Watermarks {
    pub(super) fn report(&mut self, source: &str, up_to: u64, now: u64) -> Report {
        let Some(mark) = self.sources.get_mut(source) else {
            self.sources.insert(
                source.to_string(),
                Mark {
                    up_to,
                    heard_at: now,
                    silent: false,
                },
            );
            return Report::First;
        };
        let report = if mark.silent {
            Report::Returned(mark.up_to)
        } else {
            Report::Ongoing
        };
        // A watermark never goes back (a source's clock stepping back changes nothing seen).
        mark.up_to = mark.up_to.max(up_to);
        mark.heard_at = now;
        mark.silent = false;
        report
    }

    /// How far all sources heard from lately have got; `None` when none reports.
    pub(super) fn horizon(&mut self, now: u64) -> Option<u64> {
        let mut horizon: Option<u64> = None;
        for (source, mark) in &mut self.sources {
            if !mark.silent && now.saturating_sub(mark.heard_at) > SOURCE_SILENCE_NS {
                tracing::warn!(
                    source,
                    "no watermark from this source for {} s: judging limits without it",
                    SOURCE_SILENCE_NS / 1_000_000_000
                );
                mark.silent = true;
            }
            if !mark.silent {
                horizon = Some(horizon.map_or(mark.up_to, |h| h.min(mark.up_to)));
            }
        }
        horizon
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;

    #[test]
    fn the_horizon_is_the_slowest_source_heard_from_lately() {
        let mut marks = Watermarks::default();
        assert_eq!(marks.horizon(100 * S), None);
        assert!(matches!(marks.report("a", 90 * S, 100 * S), Report::First));
        assert!(matches!(marks.report("b", 95 * S, 100 * S), Report::First));
        assert_eq!(marks.horizon(100 * S), Some(90 * S));
        // Stepping back changes nothing.
        assert!(matches!(
            marks.report("a", 80 * S, 101 * S),
            Report::Ongoing
        ));
        assert_eq!(marks.horizon(101 * S), Some(90 * S));
        // `a` falls silent: `b` alone holds the clock, and `a`'s return is told.
        marks.report("b", 140 * S, 140 * S);
        assert_eq!(marks.horizon(140 * S), Some(140 * S));
        assert!(matches!(
            marks.report("a", 150 * S, 150 * S),
            Report::Returned(up_to) if up_to == 90 * S
        ));
        assert_eq!(marks.horizon(150 * S), Some(140 * S));
    }

    #[test]
    fn causes_round_trip() {
        for cause in [GapCause::MonitorDown, GapCause::CaptureDrops] {
            assert_eq!(GapCause::parse(cause.as_str()), Some(cause));
        }
    }
}
