//! The `[participants.NAME]` blocks: which databases and file trees steps act on, and the
//! participant kinds a config can declare. Schema and defaults only; `participant::open_all`
//! opens them.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ParticipantConfig {
    pub kind: Kind,
    /// File or directory for `sqlite`, `duckdb` and `fs`, relative to the data directory
    /// unless absolute.
    #[serde(default)]
    pub path: Option<String>,
    /// libpq connection string for `postgres`.
    #[serde(default)]
    pub url: Option<String>,
    #[serde(default = "default_pool_size")]
    pub pool_size: usize,
    /// Statements run once when the participant is opened (for example
    /// `CREATE TABLE IF NOT EXISTS …`), for SQLite and DuckDB participants.
    #[serde(default)]
    pub init: Vec<String>,
}

fn default_pool_size() -> usize {
    4
}

/// The kinds of participant a config can declare.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Postgres,
    Sqlite,
    Duckdb,
    Fs,
    /// In-memory, for tests and benchmarks only.
    Memory,
}

impl Kind {
    /// The name a config spells it with.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Postgres => "postgres",
            Kind::Sqlite => "sqlite",
            Kind::Duckdb => "duckdb",
            Kind::Fs => "fs",
            Kind::Memory => "memory",
        }
    }
}
