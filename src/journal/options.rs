//! Journal settings, with the limits that bound its memory and batches.

use std::sync::Arc;
use std::time::Duration;

use super::faults::IoFaults;

/// When appended records are made durable before being acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncPolicy {
    /// Acknowledge an append only after an `fdatasync` that covers it has returned.
    /// One `fdatasync` covers every appender waiting at that moment (group commit).
    /// The default, and the only crash-safe policy.
    Always,
    /// Acknowledge after the write; `fdatasync` at most every interval.
    /// **Not crash-safe**: acknowledged records written within the last interval can be lost
    /// on power failure (not on a process crash). For tests and benchmarks.
    Interval(Duration),
    /// Never `fdatasync`. **Not crash-safe.** For tests and benchmarks.
    Never,
}

impl SyncPolicy {
    /// Parses `always`, `never` or `interval:<ms>` (as written in configs and on command lines).
    pub fn parse(text: &str) -> Result<SyncPolicy, String> {
        match text {
            "always" => Ok(SyncPolicy::Always),
            "never" => Ok(SyncPolicy::Never),
            other => match other.strip_prefix("interval:").map(str::parse::<u64>) {
                Some(Ok(ms)) if ms > 0 => Ok(SyncPolicy::Interval(Duration::from_millis(ms))),
                _ => Err(format!("unknown sync policy {other:?}: expected always, never or interval:<ms> (ms > 0)")),
            },
        }
    }
}

/// Journal settings. `Options::default()` is what production uses.
#[derive(Debug, Clone)]
pub struct Options {
    /// A segment is sealed and a new one started once the next record would take it past
    /// this size. A record larger than this gets a segment of its own.
    pub segment_bytes_max: u64,
    pub sync: SyncPolicy,
    /// Appends that may wait for the writer before `append` itself waits (backpressure).
    pub channel_capacity: usize,
    /// The most records one write + `fdatasync` covers.
    pub batch_records_max: usize,
    /// The most frame bytes one write + `fdatasync` covers (a single larger record still goes).
    pub batch_bytes_max: usize,
    /// Injected write/fsync failures, for tests only.
    pub faults: Option<Arc<IoFaults>>,
}

/// Smallest segment size accepted: a header and a few small frames.
pub const SEGMENT_BYTES_MIN: u64 = 4096;

impl Default for Options {
    fn default() -> Self {
        Options {
            segment_bytes_max: 64 * 1024 * 1024,
            sync: SyncPolicy::Always,
            channel_capacity: 4096,
            batch_records_max: 4096,
            batch_bytes_max: 4 * 1024 * 1024,
            faults: None,
        }
    }
}

impl Options {
    pub(crate) fn validate(&self) -> Result<(), String> {
        if self.segment_bytes_max < SEGMENT_BYTES_MIN {
            return Err(format!(
                "segment_bytes_max {} is below the minimum {SEGMENT_BYTES_MIN}",
                self.segment_bytes_max
            ));
        }
        if self.channel_capacity == 0 || self.batch_records_max == 0 || self.batch_bytes_max == 0 {
            return Err("channel_capacity, batch_records_max and batch_bytes_max must be positive".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sync_policies_parse_and_bad_ones_name_the_input() {
        assert_eq!(SyncPolicy::parse("always"), Ok(SyncPolicy::Always));
        assert_eq!(SyncPolicy::parse("never"), Ok(SyncPolicy::Never));
        assert_eq!(SyncPolicy::parse("interval:5"), Ok(SyncPolicy::Interval(Duration::from_millis(5))));
        for bad in ["sometimes", "interval:0", "interval:x", ""] {
            assert!(SyncPolicy::parse(bad).unwrap_err().contains(&format!("{bad:?}")));
        }
    }
}
