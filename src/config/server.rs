//! The `[server]` block of the config file: listen address, tokens, TLS, limits. Schema,
//! defaults and the checks serde cannot make; `server` serves it.
//!
//! ```toml
//! [server]
//! listen = "127.0.0.1:50051"      # `serve --listen` overrides it
//! anonymous = "off"               # "off" | "client" | "admin": the role of a call with no token
//! http_listen = "127.0.0.1:9464"  # the HTTP port: API, console, /metrics, probes; "" = none
//!                                 # (first spelled metrics_listen, still read)
//! demo_notifier = ""              # "demo/notifications.sqlite": serve the demo notifier on the
//!                                 # metrics_listen port, its database relative to the data dir
//! message_bytes_max = 4194304     # largest request message (old spelling: max_message_bytes)
//! pending_submits_max = 1024      # submits being journaled at once; more get RESOURCE_EXHAUSTED
//!                                 # (old spelling: max_pending_submits)
//! shutdown_grace_ms = 10000       # how long SIGTERM lets running steps finish
//! log_format = "text"             # "text" | "json" (one object per line); --log-format wins
//!
//! [[server.tokens]]
//! name = "orders-service"         # shows up in logs and as the default operator name
//! token = "a-long-random-secret"  # at least 16 characters
//! role = "client"                 # "client": Sagas; "worker": Workers; "admin": all three
//!
//! [server.tls]                    # optional: serve gRPC over TLS (rustls)
//! cert = "tls/server.pem"         # PEM certificate chain, relative to the data directory
//! key = "tls/server.key"          # PEM private key (PKCS#8, PKCS#1 or SEC1)
//! ```

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

/// The default gRPC listen address (loopback only).
pub const DEFAULT_LISTEN: &str = "127.0.0.1:50051";
/// Tokens shorter than this are refused: they could be guessed.
pub const TOKEN_CHARS_MIN: usize = 16;

/// What a caller may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// The `Sagas` service.
    Client,
    /// `Sagas`, `Admin` and `Workers`.
    Admin,
    /// The `Workers` service only: the processes that run worker steps.
    Worker,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Client => "client",
            Role::Admin => "admin",
            Role::Worker => "worker",
        }
    }

    /// Whether a caller with this role may call a service that needs `needs`: `admin` may
    /// call every service, the other roles their own.
    pub fn may_call(self, needs: Role) -> bool {
        self == Role::Admin || self == needs
    }
}

/// The role of a call without a token.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Anonymous {
    /// Calls without a token are refused (UNAUTHENTICATED).
    #[default]
    Off,
    Client,
    Admin,
}

impl Anonymous {
    pub fn role(self) -> Option<Role> {
        match self {
            Anonymous::Off => None,
            Anonymous::Client => Some(Role::Client),
            Anonymous::Admin => Some(Role::Admin),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenConfig {
    pub name: String,
    pub token: String,
    pub role: Role,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    pub cert: String,
    pub key: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    pub listen: String,
    pub anonymous: Anonymous,
    /// The HTTP port: the HTTP/JSON API, the console, `/metrics`, the probes. Spelled
    /// `http_listen` or `metrics_listen` (its first name).
    #[serde(alias = "http_listen")]
    pub metrics_listen: String,
    /// The demo notifier's database, relative to the data directory; "" = no notifier. It is
    /// served on `metrics_listen` (`server::demo_notifier`).
    pub demo_notifier: String,
    /// Spelled `message_bytes_max` (`max_message_bytes` is still read).
    #[serde(rename = "message_bytes_max", alias = "max_message_bytes")]
    pub max_message_bytes: usize,
    /// Spelled `pending_submits_max` (`max_pending_submits` is still read).
    #[serde(rename = "pending_submits_max", alias = "max_pending_submits")]
    pub max_pending_submits: u32,
    pub shutdown_grace_ms: u64,
    pub tokens: Vec<TokenConfig>,
    pub tls: Option<TlsConfig>,
    /// How `serve` writes its logs on stderr; `--log-format` (or `$SAGALOG_LOG_FORMAT`) wins.
    pub log_format: LogFormat,
}

/// How logs are written: `text`, one human-readable line per event, or `json`, one JSON object
/// per line with the event's fields (`saga_id`, `step`, `participant`, …) as keys.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize, serde::Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: DEFAULT_LISTEN.into(),
            anonymous: Anonymous::Off,
            metrics_listen: String::new(),
            demo_notifier: String::new(),
            max_message_bytes: 4 * 1024 * 1024,
            max_pending_submits: 1024,
            shutdown_grace_ms: 10_000,
            tokens: Vec::new(),
            tls: None,
            log_format: LogFormat::Text,
        }
    }
}

impl ServerConfig {
    /// Checks what serde cannot: addresses parse, tokens are long and unique, limits are sane.
    /// The message names the offending field.
    pub fn check(&self) -> Result<(), String> {
        parse_addr("server.listen", &self.listen)?;
        if !self.metrics_listen.is_empty() {
            parse_addr("server.metrics_listen", &self.metrics_listen)?;
        }
        if !self.demo_notifier.is_empty() && self.metrics_listen.is_empty() {
            return Err("server.demo_notifier is served on server.metrics_listen, which is not set".into());
        }
        if self.max_message_bytes < 1024 {
            return Err(format!("server.message_bytes_max = {} is below 1024", self.max_message_bytes));
        }
        if self.max_pending_submits == 0 {
            return Err("server.pending_submits_max must be at least 1".into());
        }
        for (i, t) in self.tokens.iter().enumerate() {
            if t.name.trim().is_empty() {
                return Err(format!("server.tokens[{i}]: `name` is empty"));
            }
            if t.token.chars().count() < TOKEN_CHARS_MIN {
                return Err(format!(
                    "server.tokens[{i}] ({:?}): the token has {} characters; at least {TOKEN_CHARS_MIN} are required",
                    t.name,
                    t.token.chars().count()
                ));
            }
            if t.token.chars().any(|c| c.is_whitespace() || c.is_control()) {
                return Err(format!("server.tokens[{i}] ({:?}): the token contains whitespace", t.name));
            }
            for (j, other) in self.tokens[..i].iter().enumerate() {
                if other.name == t.name {
                    return Err(format!("server.tokens[{i}]: name {:?} is also used by server.tokens[{j}]", t.name));
                }
                if other.token == t.token {
                    return Err(format!(
                        "server.tokens[{i}] ({:?}): the same token as server.tokens[{j}] ({:?})",
                        t.name, other.name
                    ));
                }
            }
        }
        if self.tokens.is_empty() && self.anonymous == Anonymous::Off {
            return Err(
                "server: no [[server.tokens]] and anonymous = \"off\": nobody could call the API; add a token".into()
            );
        }
        Ok(())
    }
}

/// Parses a listen address, naming the field in the error.
pub fn parse_addr(field: &str, value: &str) -> Result<SocketAddr, String> {
    value.parse().map_err(|e| format!("{field} = {value:?} is not an address like 127.0.0.1:50051 ({e})"))
}
