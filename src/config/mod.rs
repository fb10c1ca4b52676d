//! The configuration file: its schema, its defaults and the embedded default, one file per
//! TOML block. This module is a leaf: it imports no other module of the crate, so everything
//! may read the config without the config knowing it. It never validates what needs another
//! module's knowledge: `catalog` checks actions against participants and binds saga values,
//! `journal::SyncPolicy` parses `sync`, `ServerConfig::check` checks the `[server]` block.

pub mod actions;
pub mod embedded;
pub mod executor;
pub mod index;
pub mod journal;
pub mod participants;
pub mod server;

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

pub use actions::{
    ActionConfig, CheckConfig, DELAY_PARAM, DelayMs, OperationConfig, ParamType, RetryConfig, RowsGuard, RowsSpec,
};
pub use embedded::EMBEDDED_DEFAULT;
pub use executor::{DELAY_MS_MAX_DEFAULT, ExecutorConfig};
pub use index::{CACHE_BYTES_DEFAULT, IndexConfig};
pub use journal::JournalConfig;
pub use participants::{
    FENCE_TABLE_DEFAULT, HTTP_TIMEOUT_MS_DEFAULT, Kind, MARKER_TABLE_DEFAULT, ParticipantConfig, table_name_problem,
};
pub use server::{LogFormat, ServerConfig};

/// The whole config file.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub journal: JournalConfig,
    #[serde(default)]
    pub executor: ExecutorConfig,
    #[serde(default)]
    pub index: IndexConfig,
    #[serde(default)]
    pub participants: BTreeMap<String, ParticipantConfig>,
    #[serde(default)]
    pub actions: BTreeMap<String, ActionConfig>,
    /// The gRPC server (only `serve` reads it).
    #[serde(default)]
    pub server: ServerConfig,
}

/// Why a config file is not usable.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("config {path} is not valid: {message}")]
    Parse { path: String, message: String },
    #[error("config: {0}")]
    Invalid(String),
}

impl Config {
    /// Reads a config file and parses it (schema only: [`crate::catalog::Catalog::load`] also
    /// checks it).
    pub fn read(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| ConfigError::Read { path: path.display().to_string(), source })?;
        Config::parse(&text).map_err(|e| match e {
            ConfigError::Parse { message, .. } => ConfigError::Parse { path: path.display().to_string(), message },
            other => other,
        })
    }

    /// Parses config text (schema only).
    pub fn parse(text: &str) -> Result<Config, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError::Parse { path: "<text>".into(), message: e.to_string() })
    }
}
