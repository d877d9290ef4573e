//! Every delay of the testbed, scaled by one time factor (`--time-factor`).
//!
//! At factor 1 a healthy order never goes quiet for more than `think_max` plus service
//! time (well under a second), while a stuck or lost order stays silent for good: a monitor
//! whose limits are a few seconds tells the two apart. The fault timeouts sit between.

use std::time::Duration;

/// The testbed's delays at a given time factor.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Timings {
    factor: f64,
}

impl Timings {
    /// Timings scaled by `factor` (1.0 = the documented defaults; must be positive).
    pub fn new(factor: f64) -> Self {
        Timings { factor }
    }

    fn ms(&self, ms: f64) -> Duration {
        Duration::from_secs_f64(ms * self.factor / 1000.0)
    }

    /// Shortest think time of an actor before a step.
    pub fn think_min(&self) -> Duration {
        self.ms(50.0)
    }

    /// Longest think time of an actor before a step.
    pub fn think_max(&self) -> Duration {
        self.ms(400.0)
    }

    /// How long the customer waits for the create call before giving up.
    pub fn create_timeout(&self) -> Duration {
        self.ms(1500.0)
    }

    /// When a hung session's create is finally answered: twice the customer's patience.
    pub fn session_hung_delay(&self) -> Duration {
        self.create_timeout() * 2
    }

    /// How long the shop waits for object storage before answering `504`.
    pub fn storage_timeout(&self) -> Duration {
        self.ms(2000.0)
    }

    /// The shop's client timeout for the MES pricing call.
    pub fn pricing_timeout(&self) -> Duration {
        self.ms(2000.0)
    }

    /// How long an unanswered pricing request is held open at most, in case the shop's
    /// client never closes it.
    pub fn pricing_hang(&self) -> Duration {
        self.pricing_timeout() * 10
    }

    /// Client timeout of every other call (driver and services): generous, since a 4 MiB
    /// upload on a loaded machine takes a while; never below ten seconds.
    pub fn request_timeout(&self) -> Duration {
        self.ms(10_000.0).max(Duration::from_secs(10))
    }

    /// How long the driver waits for the broker to deliver a message before calling the
    /// order's walk broken: generous, since a broker on a loaded machine lags.
    pub fn delivery_deadline(&self) -> Duration {
        self.request_timeout() * 3
    }
}

impl Default for Timings {
    fn default() -> Self {
        Timings::new(1.0)
    }
}
