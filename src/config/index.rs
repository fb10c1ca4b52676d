//! The `[index]` block: retention, checkpoint interval and the sled page-cache bound.
//! Schema and defaults only; `index::Index` and the node read them.

use serde::{Deserialize, Serialize};

/// The index's default page-cache bound (sled's own default is 1 GiB, which a server with a
/// million finished sagas would fill).
pub const CACHE_BYTES_DEFAULT: u64 = 64 * 1024 * 1024;

/// The default of [`IndexConfig::snapshot_lag_records`].
pub const SNAPSHOT_LAG_RECORDS_DEFAULT: u64 = 100_000;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IndexConfig {
    /// Finished sagas older than this are purged from the index (0 keeps them forever).
    pub retention_hours: u64,
    /// The most finished sagas the index keeps: beyond it, those that finished first are
    /// purged at each checkpoint (0, the default, sets no limit; `retention_hours` applies
    /// either way). With it the index, and the memory sled keeps for it, stay bounded however
    /// many sagas finish within the retention time.
    pub retention_sagas_max: u64,
    /// How often finished sagas are checkpointed so the journal can drop old segments.
    pub checkpoint_interval_ms: u64,
    /// The most memory the index's page cache may use, in bytes. The index holds every
    /// finished saga; this bound is what keeps the server's memory flat as they accumulate.
    pub cache_bytes_max: u64,
    /// An unfinished saga whose oldest needed record lies more than this many records behind
    /// the journal's head is asked to re-journal its whole state (a `SagaSnapshot` record),
    /// so that one long-lived saga (STUCK, parked on a dead participant) does not keep every
    /// segment since it started: the journal's size and the restart time stay bounded by
    /// recent activity.
    pub snapshot_lag_records: u64,
}

impl Default for IndexConfig {
    fn default() -> Self {
        IndexConfig {
            retention_hours: 30 * 24,
            retention_sagas_max: 0,
            checkpoint_interval_ms: 5_000,
            cache_bytes_max: CACHE_BYTES_DEFAULT,
            snapshot_lag_records: SNAPSHOT_LAG_RECORDS_DEFAULT,
        }
    }
}
