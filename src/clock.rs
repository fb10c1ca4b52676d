//! The wall clock, read in one place: milliseconds since the Unix epoch, for the timestamps
//! sagalog records (journal records, markers, archived sagas) and shows. Never used to order
//! events or to decide anything: the journal's LSN order does that.

use std::time::{SystemTime, UNIX_EPOCH};

/// Now, in milliseconds since the epoch (0 for a clock set before 1970).
pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}
