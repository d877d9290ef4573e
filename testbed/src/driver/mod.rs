//! The load driver: `testbed serve` and `testbed run`.
