//! Clocks and time formats both sides share: the kernel's monotonic time base, Unix time,
//! and RFC 3339 for people and wire formats.

use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// Unix time in ns.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// Unix ns as RFC 3339 (UTC), the API's and the alerts' time format.
pub fn rfc3339(ns: u64) -> String {
    OffsetDateTime::from_unix_timestamp_nanos(ns as i128)
        .ok()
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_default()
}

/// Nanoseconds to add to a CLOCK_MONOTONIC timestamp (what the kernel stamps events with) to
/// get Unix time. Read once at start: both clocks tick together, short of NTP slewing.
pub fn monotonic_to_unix_offset_ns() -> i128 {
    clock_ns(libc::CLOCK_REALTIME) - clock_ns(libc::CLOCK_MONOTONIC)
}

/// CLOCK_MONOTONIC now: the kernel's `bpf_ktime_get_ns` clock, so the agent's own
/// timestamps (time-outs, seeded connection ids) sort with the kernel's events.
pub fn monotonic_now_ns() -> u64 {
    clock_ns(libc::CLOCK_MONOTONIC) as u64
}

fn clock_ns(clock: libc::clockid_t) -> i128 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; both clock ids exist on every Linux.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    ts.tv_sec as i128 * 1_000_000_000 + ts.tv_nsec as i128
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_is_utc_with_nanoseconds() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_500_000_001), "1970-01-01T00:00:01.500000001Z");
    }

    #[test]
    fn monotonic_plus_offset_is_unix_time() {
        let unix = (monotonic_now_ns() as i128 + monotonic_to_unix_offset_ns()) as u64;
        let skew = unix.abs_diff(unix_now());
        assert!(skew < 1_000_000_000, "clocks {skew} ns apart");
    }
}
