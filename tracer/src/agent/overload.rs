//! Overload: how far the pipeline task is behind the capture reader, and what it sheds.
//!
//! The kernel side never waits, and the reader drops a whole batch (bytes in the middle of
//! messages, `capture_queue_full`) only when the queue between them is full. Before that,
//! the pipeline sheds whole exchanges, which are what the streams stage hands on: past half
//! the queue, those of orders the sampler drops anyway (their spans are not built); past
//! three quarters, every exchange, before its rules run. Parsing goes on in both, so every
//! connection keeps its place and no exchange is reported in part. It stops shedding when
//! the queue is back to a quarter (a level is left at the mark below the one that entered
//! it, so a queue hovering at a mark does not flap).

/// The reader → pipeline queue as the pipeline sees it before a batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backlog {
    /// Batches waiting.
    pub queued: usize,
    /// Batches the queue holds at most.
    pub capacity: usize,
}

impl Backlog {
    /// `queued` is at least `num / den` of the capacity.
    fn at_least(self, num: usize, den: usize) -> bool {
        self.queued.saturating_mul(den) >= self.capacity.max(1).saturating_mul(num)
    }

    fn at_most(self, num: usize, den: usize) -> bool {
        self.queued.saturating_mul(den) <= self.capacity.max(1).saturating_mul(num)
    }
}

/// What the pipeline sheds, from least to most.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    /// Keeping up: everything is built.
    #[default]
    Normal,
    /// Exchanges of orders the sampler drops by ratio are shed unbuilt.
    SampledOut,
    /// Every exchange is shed, unclassified.
    All,
}

impl Level {
    /// The level after a look at the queue.
    pub fn next(self, backlog: Backlog) -> Level {
        let pressure = if backlog.at_least(3, 4) {
            Level::All
        } else if backlog.at_least(1, 2) {
            Level::SampledOut
        } else {
            Level::Normal
        };
        let leave = match self {
            Level::Normal => return pressure,
            Level::SampledOut => backlog.at_most(1, 4),
            Level::All => backlog.at_most(1, 2),
        };
        if pressure > self || leave {
            pressure
        } else {
            self
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(level: Level, queued: usize) -> Level {
        level.next(Backlog {
            queued,
            capacity: 256,
        })
    }

    #[test]
    fn levels_rise_at_half_and_three_quarters_and_fall_a_mark_lower() {
        assert_eq!(at(Level::Normal, 127), Level::Normal);
        assert_eq!(at(Level::Normal, 128), Level::SampledOut);
        assert_eq!(at(Level::Normal, 192), Level::All);
        assert_eq!(at(Level::SampledOut, 100), Level::SampledOut);
        assert_eq!(at(Level::SampledOut, 64), Level::Normal);
        assert_eq!(at(Level::All, 150), Level::All);
        assert_eq!(at(Level::All, 128), Level::SampledOut);
        assert_eq!(at(Level::All, 10), Level::Normal);
        // A queue of one batch: shedding only when that batch is waiting.
        let one = |level: Level, queued| {
            level.next(Backlog {
                queued,
                capacity: 1,
            })
        };
        assert_eq!(one(Level::Normal, 0), Level::Normal);
        assert_eq!(one(Level::Normal, 1), Level::All);
        assert_eq!(one(Level::All, 0), Level::Normal);
    }
}
