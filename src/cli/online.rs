//! The online form of the operator tools: `audit`, `replay --dry-run`, `export`, `wal verify`
//! and `wal dump` against a running server, through its HTTP API (`/v1/admin/audit`,
//! `/recovery-plan`, `/export`, `/journal/verify`, `/journal/records`; see
//! `server/online_tools.rs` for why the server does the reading).
//!
//! A tool goes online when `--http URL` is given, or when its `--data-dir` is held by a running
//! server: then the server's HTTP address is taken from the configuration the tool resolves
//! (`--config`, the data directory's `sagalog.toml`, the embedded default), and the tool says
//! so on stderr. Without an address it fails, naming `--http`.
//!
//! Never does: read the data directory itself while a server holds it.

use std::path::Path;
use std::time::Duration;

use clap::Args;
use serde::de::DeserializeOwned;

use crate::data_dir::{Access, DataDir, JOURNAL_DIR};
use crate::ops;

/// How long one online tool may take before the CLI gives up (an audit of a large history
/// reads every marker).
const TIMEOUT: Duration = Duration::from_secs(3600);

#[derive(Debug, Clone, Args)]
pub struct OnlineArgs {
    /// Ask a running server over its HTTP API (`[server] http_listen`, e.g.
    /// http://127.0.0.1:50052) instead of reading a stopped data directory. Used by itself
    /// when --data-dir is held by a running server whose address the config names.
    #[arg(long, value_name = "URL")]
    pub http: Option<String>,
    /// Bearer token for the online form (role admin) [default: $SAGALOG_TOKEN].
    #[arg(long, value_name = "TOKEN")]
    pub token: Option<String>,
}

/// A running server's HTTP API.
pub struct Online {
    base: String,
    token: Option<String>,
    client: reqwest::Client,
}

/// Whether the tool runs online, and against which server. `Ok(None)`: offline.
pub fn choose(args: &OnlineArgs, data_dir: Option<&Path>, config: Option<&Path>) -> Result<Option<Online>, ops::Error> {
    let token = args.token.clone().or_else(|| std::env::var("SAGALOG_TOKEN").ok().filter(|t| !t.is_empty()));
    if let Some(url) = &args.http {
        return Online::new(url, token).map(Some);
    }
    let Some(dir) = data_dir else {
        return Err(ops::Error::Usage("give --data-dir D (a stopped server's) or --http URL (a running one's)".into()));
    };
    if !dir.join(JOURNAL_DIR).is_dir() {
        return Ok(None); // the offline tool says what is wrong with it
    }
    let holder = match DataDir::open(dir, Access::Shared) {
        Ok(held) => {
            drop(held);
            return Ok(None);
        }
        Err(crate::data_dir::Error::Locked { holder, .. }) => holder,
        Err(e) => return Err(e.into()),
    };
    let (catalog, source) = ops::history::load_catalog(dir, config)?;
    let listen = &catalog.config.server.metrics_listen;
    if listen.is_empty() {
        return Err(ops::Error::Usage(format!(
            "data directory {} is in use by another sagalog process{holder}, and its configuration ({source}) names no \
             HTTP port (server.http_listen): pass --http URL of the server's HTTP API to run this online, or stop \
             the server",
            dir.display()
        )));
    }
    let url = format!("http://{}", connectable(listen));
    eprintln!(
        "note: data directory {} is in use by another sagalog process{holder}; asking that server online at {url} \
         (see docs/operations.md, \"Online and offline tools\")",
        dir.display()
    );
    Online::new(&url, token).map(Some)
}

/// A listen address as a client dials it: the wildcard becomes loopback.
fn connectable(listen: &str) -> String {
    if let Some(port) = listen.strip_prefix("0.0.0.0:") {
        format!("127.0.0.1:{port}")
    } else if let Some(port) = listen.strip_prefix("[::]:") {
        format!("[::1]:{port}")
    } else {
        listen.to_owned()
    }
}

impl Online {
    fn new(url: &str, token: Option<String>) -> Result<Online, ops::Error> {
        let base = if url.contains("://") { url.to_owned() } else { format!("http://{url}") };
        let base = base.trim_end_matches('/').to_owned();
        let client = reqwest::Client::builder()
            .timeout(TIMEOUT)
            .build()
            .map_err(|e| ops::Error::Usage(format!("HTTP client: {e}")))?;
        Ok(Online { base, token, client })
    }

    async fn get(&self, path: &str) -> Result<reqwest::Response, ops::Error> {
        let url = format!("{}{path}", self.base);
        let mut request = self.client.get(&url);
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        let response = request.send().await.map_err(|e| {
            ops::Error::Usage(format!("cannot reach the server at {url}: {e} (is --http the server's HTTP port?)"))
        })?;
        if response.status().is_success() {
            return Ok(response);
        }
        let status = response.status();
        let body = response.text().await.unwrap_or_default();
        let error = serde_json::from_str::<serde_json::Value>(&body).ok();
        let code = error.as_ref().and_then(|e| e["error"]["status"].as_str().map(str::to_owned));
        let message = error
            .as_ref()
            .and_then(|e| e["error"]["message"].as_str().map(str::to_owned))
            .unwrap_or_else(|| body.trim().to_owned());
        Err(match code.as_deref() {
            Some("DATA_LOSS") => ops::Error::Corrupt(message),
            Some(code) => ops::Error::Usage(format!("the server at {url} answered {code}: {message}")),
            None => ops::Error::Usage(format!("the server at {url} answered HTTP {status}: {message}")),
        })
    }

    /// `GET path`, its JSON body read as `T`.
    pub async fn json<T: DeserializeOwned>(&self, path: &str) -> Result<T, ops::Error> {
        let response = self.get(path).await?;
        let url = format!("{}{path}", self.base);
        let bytes = response.bytes().await.map_err(|e| ops::Error::Usage(format!("reading {url}: {e}")))?;
        serde_json::from_slice(&bytes)
            .map_err(|e| ops::Error::Usage(format!("the answer of {url} does not parse: {e}")))
    }

    /// `GET path` written to the file `target`; answers the response's headers.
    #[cfg(feature = "duckdb")]
    pub async fn download(&self, path: &str, target: &Path) -> Result<reqwest::header::HeaderMap, ops::Error> {
        let response = self.get(path).await?;
        let headers = response.headers().clone();
        let url = format!("{}{path}", self.base);
        let bytes = response.bytes().await.map_err(|e| ops::Error::Usage(format!("reading {url}: {e}")))?;
        let partial = std::path::PathBuf::from(format!("{}.partial", target.display()));
        std::fs::write(&partial, &bytes)
            .and_then(|()| std::fs::rename(&partial, target))
            .map_err(|e| ops::Error::Usage(format!("writing {}: {e}", target.display())))?;
        Ok(headers)
    }
}
