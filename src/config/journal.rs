//! The `[journal]` block: how the write-ahead log syncs and how large its segments grow.
//! Schema and defaults only; `journal::SyncPolicy::parse` interprets `sync`.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct JournalConfig {
    /// `always` (default, crash-safe), `interval:<ms>` or `never` (not crash-safe).
    pub sync: String,
    pub segment_bytes_max: u64,
}

impl Default for JournalConfig {
    fn default() -> Self {
        JournalConfig { sync: "always".into(), segment_bytes_max: 64 * 1024 * 1024 }
    }
}
