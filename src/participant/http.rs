//! The `http` participant: one HTTP request per step, to a service that deduplicates by the
//! `Idempotency-Key` header. It owns the request (base URL, configured headers with `env:`
//! values read at open, the key), the classification of the answer (connection errors,
//! timeouts, 408, 429 and 5xx retryable with the `Retry-After` seconds as a hint; every other
//! status permanent, with the status and the first KiB of the body), the step's outputs read
//! from the JSON answer by JSON Pointer, and the health probe.
//!
//! Never does: keep or look up a marker (there is none: `has_markers` is false, and every
//! lookup fails permanently so that "no marker" can never read as "not applied"; see the
//! participant contract, "Participants without markers"), follow a redirect, or send
//! anything when opened read-only (its probe then only opens a TCP connection).

use std::collections::BTreeMap;
use std::time::Duration;

use reqwest::header::{HeaderMap, HeaderName, HeaderValue};

use super::{Applied, BoxFuture, Direction, Error, Kind, Operation, Outputs, Participant, StepKey};
use crate::config::{ParamType, ParticipantConfig};
use crate::engine::value::Value;

/// The header every request carries: `<saga id>/<step>/<direction>`.
pub const IDEMPOTENCY_KEY_HEADER: &str = "Idempotency-Key";

/// The methods an action or a health check may use.
pub const METHODS: [&str; 5] = ["GET", "POST", "PUT", "PATCH", "DELETE"];

/// The most of an error answer's body an error message repeats.
pub const ERROR_BODY_BYTES_MAX: usize = 1024;

/// The largest successful answer read for outputs.
pub const RESPONSE_BYTES_MAX: usize = 4 * 1024 * 1024;

/// What the lookups answer: there is no marker to look up.
const NO_MARKERS: &str = "an http participant keeps no markers: an in-doubt step is re-sent with its idempotency key, \
                          never settled by a lookup";

/// `"POST /charges/{id}"` split into its method and path, or why it is not one: a known
/// method ([`METHODS`]), one space, and a path that starts with `/` and holds no whitespace.
pub fn request_line(text: &str) -> Result<(&str, &str), String> {
    let Some((method, path)) = text.split_once(' ') else {
        return Err(format!("{text:?} is not \"METHOD /path\""));
    };
    if !METHODS.contains(&method) {
        return Err(format!("unknown method {method:?} (expected one of {})", METHODS.join(", ")));
    }
    if !path.starts_with('/') {
        return Err(format!("the path {path:?} does not start with /"));
    }
    if path.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!("the path {path:?} holds whitespace or control characters"));
    }
    Ok((method, path))
}

/// Why `base_url` cannot be an `http` participant's base URL, if it cannot: it must be an
/// absolute `http` or `https` URL with a host, and without a query or fragment.
pub fn base_url_problem(base_url: &str) -> Option<String> {
    let url = match reqwest::Url::parse(base_url) {
        Ok(url) => url,
        Err(e) => return Some(format!("{base_url:?} is not a URL: {e}")),
    };
    if !matches!(url.scheme(), "http" | "https") {
        return Some(format!("{base_url:?} is not an http:// or https:// URL"));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Some(format!("{base_url:?} names no host"));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Some(format!("{base_url:?} has a query or fragment; actions' paths are appended to it"));
    }
    None
}

/// The `Idempotency-Key` of a step: `<saga id>/<step>/<direction>`, the same on every attempt
/// and after a crash.
pub fn idempotency_key(key: &StepKey) -> String {
    format!("{}/{}/{}", key.saga_id, key.step, key.direction.as_str())
}

/// An HTTP service. See the module doc.
pub struct Http {
    name: String,
    /// The base URL without a trailing `/`; an action's path is appended.
    base: String,
    host: String,
    port: u16,
    client: reqwest::Client,
    headers: HeaderMap,
    health: Option<(reqwest::Method, String)>,
    timeout: Duration,
    read_only: bool,
}

impl Http {
    /// Opens the participant `name` of `config`: reads every `env:` header value now (a
    /// missing variable is a permanent error naming the participant, the header and the
    /// variable). Sends nothing.
    pub fn open(name: &str, config: &ParticipantConfig) -> Result<Http, Error> {
        let (http, missing) = Http::build(name, config, false)?;
        match missing.into_iter().next() {
            Some(problem) => Err(Error::permanent(name, problem)),
            None => Ok(http),
        }
    }

    /// Opens the participant for the offline tools: it sends no request (`apply` fails, the
    /// probe only opens a TCP connection) and a missing environment variable is a note.
    pub fn open_read_only(name: &str, config: &ParticipantConfig) -> Result<(Http, Vec<String>), Error> {
        let (http, missing) = Http::build(name, config, true)?;
        Ok((http, missing.into_iter().map(|m| format!("participant {name}: {m} (a start would fail)")).collect()))
    }

    /// The participant, and the headers left out because their environment variable is not
    /// set (one line each).
    fn build(name: &str, config: &ParticipantConfig, read_only: bool) -> Result<(Http, Vec<String>), Error> {
        let base_url = config.base_url.as_deref().unwrap_or_default();
        if let Some(problem) = base_url_problem(base_url) {
            return Err(Error::permanent(name, format!("base_url {problem}")));
        }
        let url = reqwest::Url::parse(base_url).map_err(|e| Error::permanent(name, format!("base_url: {e}")))?;
        let host = url.host_str().unwrap_or_default().trim_start_matches('[').trim_end_matches(']').to_owned();
        let port = url.port_or_known_default().unwrap_or(80);
        let mut headers = HeaderMap::new();
        let mut missing = Vec::new();
        for (header, value) in &config.headers {
            let header_name = HeaderName::from_bytes(header.as_bytes())
                .map_err(|e| Error::permanent(name, format!("header {header:?} is not a valid header name: {e}")))?;
            if header_name.as_str().eq_ignore_ascii_case(IDEMPOTENCY_KEY_HEADER) {
                return Err(Error::permanent(
                    name,
                    format!("header {header:?}: sagalog sets {IDEMPOTENCY_KEY_HEADER} itself, one per step"),
                ));
            }
            let value = match value.strip_prefix("env:") {
                Some(variable) => match std::env::var(variable) {
                    Ok(value) => value,
                    Err(e) => {
                        missing.push(format!(
                            "header {header:?} takes env:{variable}, but environment variable {variable} {}",
                            match e {
                                std::env::VarError::NotPresent => "is not set".to_owned(),
                                std::env::VarError::NotUnicode(_) => "is not valid unicode".to_owned(),
                            }
                        ));
                        continue;
                    }
                },
                None => value.clone(),
            };
            // The value may be a secret: the error never repeats it.
            let mut value = HeaderValue::from_str(&value).map_err(|_| {
                Error::permanent(name, format!("the value of header {header:?} is not a valid header value"))
            })?;
            value.set_sensitive(true);
            headers.insert(header_name, value);
        }
        let health = match config.health.as_deref() {
            Some(line) => {
                let (method, path) = request_line(line).map_err(|e| Error::permanent(name, format!("health: {e}")))?;
                let method = reqwest::Method::from_bytes(method.as_bytes())
                    .map_err(|e| Error::permanent(name, format!("health: {e}")))?;
                Some((method, path.to_owned()))
            }
            None => None,
        };
        let timeout = Duration::from_millis(config.http_timeout_ms());
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| Error::permanent(name, format!("cannot build the HTTP client: {}", chain(&e))))?;
        let http = Http {
            name: name.to_owned(),
            base: base_url.trim_end_matches('/').to_owned(),
            host,
            port,
            client,
            headers,
            health,
            timeout,
            read_only,
        };
        Ok((http, missing))
    }

    /// Sends one request and classifies the answer; on a 2xx, reads the outputs.
    async fn send(
        &self,
        key: &StepKey,
        method: &str,
        path: &str,
        body: Option<&serde_json::Value>,
        outputs: &BTreeMap<String, (String, ParamType)>,
    ) -> Result<Outputs, Error> {
        let name = &self.name;
        let what = format!("step {key}: {method} {path}");
        let verb = reqwest::Method::from_bytes(method.as_bytes())
            .map_err(|e| Error::permanent(name, format!("{what}: bad method: {e}")))?;
        let mut request = self
            .client
            .request(verb, format!("{}{path}", self.base))
            .headers(self.headers.clone())
            .header(IDEMPOTENCY_KEY_HEADER, idempotency_key(key));
        if let Some(body) = body {
            request = request.json(body);
        }
        // Any failure to get an answer promises nothing about whether the request arrived.
        let response = request.send().await.map_err(|e| Error::retryable(name, format!("{what}: {}", chain(&e))))?;
        let status = response.status();
        if status.is_success() {
            if outputs.is_empty() {
                return Ok(Outputs::new());
            }
            // From here on the receiver has applied the effect: a failure keeps the step
            // uncertain (`maybe_applied`), so its compensation is never skipped.
            let applied = |message: String| {
                let mut e = Error::permanent(name, format!("{what}: answered {status}, but {message}"));
                e.maybe_applied = true;
                e
            };
            let (bytes, complete) = read_capped(response, RESPONSE_BYTES_MAX)
                .await
                .map_err(|e| applied(format!("its body could not be read: {}", chain(&e))))?;
            if !complete {
                return Err(applied(format!("its body is larger than {RESPONSE_BYTES_MAX} bytes")));
            }
            let json: serde_json::Value = serde_json::from_slice(&bytes)
                .map_err(|e| applied(format!("its body is not JSON ({e}), so the outputs cannot be read")))?;
            return outputs_from(&json, outputs).map_err(applied);
        }
        let retry_after_ms = retry_after_ms(response.headers());
        let (bytes, complete) = read_capped(response, ERROR_BODY_BYTES_MAX).await.unwrap_or_default();
        let body = String::from_utf8_lossy(&bytes);
        let body = if complete { body.into_owned() } else { format!("{body}…") };
        let message = format!("{what}: HTTP {status}: {body}");
        if status.as_u16() == 408 || status.as_u16() == 429 || status.is_server_error() {
            let mut e = Error::retryable(name, message);
            e.retry_after_ms = retry_after_ms;
            Err(e)
        } else {
            Err(Error::permanent(name, message))
        }
    }

    /// Opens (and drops) a TCP connection to the service's host and port.
    async fn connect(&self) -> Result<(), Error> {
        let address = (self.host.as_str(), self.port);
        match tokio::time::timeout(self.timeout, tokio::net::TcpStream::connect(address)).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => {
                Err(Error::retryable(&self.name, format!("cannot connect to {}:{}: {e}", self.host, self.port)))
            }
            Err(_) => Err(Error::retryable(
                &self.name,
                format!(
                    "cannot connect to {}:{}: timed out after {} ms",
                    self.host,
                    self.port,
                    self.timeout.as_millis()
                ),
            )),
        }
    }
}

/// The `Retry-After` of an answer in milliseconds, when it is a number of seconds (the
/// HTTP-date form is not read).
pub fn retry_after_ms(headers: &HeaderMap) -> Option<u64> {
    let seconds: u64 = headers.get(reqwest::header::RETRY_AFTER)?.to_str().ok()?.trim().parse().ok()?;
    Some(seconds.saturating_mul(1000))
}

/// The step's outputs from a JSON answer: each name's value at its JSON Pointer, of its
/// declared type (an integer is accepted for a float; bytes are taken from a string). A
/// missing, null or mistyped value is an error naming the output and the pointer.
pub fn outputs_from(
    json: &serde_json::Value,
    wanted: &BTreeMap<String, (String, ParamType)>,
) -> Result<Outputs, String> {
    use serde_json::Value as J;
    let mut outputs = Outputs::new();
    for (name, (pointer, ty)) in wanted {
        let found = match json.pointer(pointer) {
            None | Some(J::Null) => {
                return Err(format!("the answer has no value at JSON pointer {pointer:?} for output {name:?}"));
            }
            Some(found) => found,
        };
        let value = match (ty, found) {
            (ParamType::Text, J::String(s)) => Value::Text(s.clone()),
            (ParamType::Bytes, J::String(s)) => Value::Bytes(s.as_bytes().to_vec()),
            (ParamType::Bool, J::Bool(b)) => Value::Bool(*b),
            (ParamType::Int, J::Number(n)) if n.as_i64().is_some() => Value::Int(n.as_i64().unwrap_or_default()),
            (ParamType::Float, J::Number(n)) if n.as_f64().is_some() => Value::Float(n.as_f64().unwrap_or_default()),
            (ty, found) => {
                return Err(format!(
                    "the value at JSON pointer {pointer:?} for output {name:?} is {}, declared {}",
                    json_type(found),
                    ty.name()
                ));
            }
        };
        outputs.insert(name.clone(), value);
    }
    Ok(outputs)
}

fn json_type(value: &serde_json::Value) -> &'static str {
    use serde_json::Value as J;
    match value {
        J::Null => "null",
        J::Bool(_) => "a bool",
        J::Number(n) if n.is_i64() || n.is_u64() => "an integer",
        J::Number(_) => "a float",
        J::String(_) => "a string",
        J::Array(_) => "an array",
        J::Object(_) => "an object",
    }
}

/// At most `max` bytes of the body, and whether that was all of it.
async fn read_capped(mut response: reqwest::Response, max: usize) -> Result<(Vec<u8>, bool), reqwest::Error> {
    let mut out = Vec::new();
    while let Some(chunk) = response.chunk().await? {
        let room = max - out.len();
        if chunk.len() > room {
            out.extend_from_slice(&chunk[..room]);
            return Ok((out, false));
        }
        out.extend_from_slice(&chunk);
    }
    Ok((out, true))
}

/// An error with its causes, `a: b: c` (reqwest's own message alone says little).
fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

impl Participant for Http {
    fn name(&self) -> &str {
        &self.name
    }

    fn kind(&self) -> Kind {
        Kind::Http
    }

    fn has_markers(&self) -> bool {
        false
    }

    fn apply<'a>(&'a self, key: &'a StepKey, attempt: u32, op: &'a Operation) -> BoxFuture<'a, Result<Applied, Error>> {
        Box::pin(async move { self.apply_with_outputs(key, attempt, op).await.map(|(applied, _)| applied) })
    }

    /// Sends the request (every attempt with the same `Idempotency-Key`). The answer cannot
    /// say whether the receiver deduplicated it, so a success is always `Applied`.
    ///
    /// A permanent failure of any attempt after the first is [`Error::maybe_applied`]: the
    /// executor sends a step again only after an attempt that may have been sent (a retryable
    /// failure, a timeout, a crash in flight), and this answer does not say whether that one
    /// applied; the step stays uncertain (re-sent, never skipped; STUCK after the compensation
    /// budget). See the participant contract, "Participants without markers".
    fn apply_with_outputs<'a>(
        &'a self,
        key: &'a StepKey,
        attempt: u32,
        op: &'a Operation,
    ) -> BoxFuture<'a, Result<(Applied, Outputs), Error>> {
        Box::pin(async move {
            if self.read_only {
                return Err(Error::permanent(&self.name, "opened read-only: sends no request"));
            }
            let sent = match op {
                Operation::Http { method, path, body, outputs } => self
                    .send(key, method, path, body.as_ref(), outputs)
                    .await
                    .map(|outputs| (Applied::Applied, outputs)),
                Operation::Noop => Ok((Applied::Applied, Outputs::new())),
                _ => Err(Error::permanent(&self.name, format!("step {key}: an http participant only sends requests"))),
            };
            sent.map_err(|mut e| {
                if attempt > 1 && !e.is_retryable() {
                    e.maybe_applied = true;
                }
                e
            })
        })
    }

    fn lookup_marker<'a>(&'a self, key: &'a StepKey) -> BoxFuture<'a, Result<bool, Error>> {
        let _ = key;
        super::no_markers(&self.name, NO_MARKERS)
    }

    fn settle_marker<'a>(&'a self, key: &'a StepKey, through_attempt: u32) -> BoxFuture<'a, Result<bool, Error>> {
        let _ = (key, through_attempt);
        super::no_markers(&self.name, NO_MARKERS)
    }

    fn markers<'a>(&'a self, saga_id: &'a str) -> BoxFuture<'a, Result<Vec<(u32, Direction)>, Error>> {
        let _ = saga_id;
        super::no_markers(&self.name, NO_MARKERS)
    }

    fn all_markers(&self) -> BoxFuture<'_, Result<Vec<super::MarkerEntry>, Error>> {
        super::no_markers(&self.name, NO_MARKERS)
    }

    /// `health = "GET /healthz"`: a 2xx answer is healthy; without it (and when opened
    /// read-only, which sends nothing) a TCP connection to the service.
    fn probe(&self) -> BoxFuture<'_, Result<(), Error>> {
        Box::pin(async move {
            let Some((method, path)) = self.health.as_ref().filter(|_| !self.read_only) else {
                return self.connect().await;
            };
            let request =
                self.client.request(method.clone(), format!("{}{path}", self.base)).headers(self.headers.clone());
            let response = request
                .send()
                .await
                .map_err(|e| Error::retryable(&self.name, format!("health {method} {path}: {}", chain(&e))))?;
            if response.status().is_success() {
                Ok(())
            } else {
                Err(Error::retryable(&self.name, format!("health {method} {path}: HTTP {}", response.status())))
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(text: &str) -> ParticipantConfig {
        toml::from_str(text).unwrap()
    }

    /// A request line is a known method, one space and a path from `/`; anything else is
    /// refused saying what is wrong.
    #[test]
    fn request_lines_are_checked() {
        assert_eq!(request_line("POST /charges/{id}/refund"), Ok(("POST", "/charges/{id}/refund")));
        for (bad, expected) in [
            ("FETCH /x", "unknown method \"FETCH\""),
            ("post /x", "unknown method \"post\""),
            ("POST charges", "does not start with /"),
            ("POST", "is not \"METHOD /path\""),
            ("POST /a b", "whitespace"),
        ] {
            let err = request_line(bad).unwrap_err();
            assert!(err.contains(expected), "{bad}: {err}");
        }
    }

    /// The key is `<saga id>/<step>/<direction>`, whatever the marker scope.
    #[test]
    fn the_idempotency_key_names_saga_step_and_direction() {
        let key = StepKey::new("order-17", 2, Direction::Compensate).scoped(Some("i.n".into()));
        assert_eq!(idempotency_key(&key), "order-17/2/compensate");
    }

    /// Outputs come from their JSON Pointers with their declared types; a missing, null or
    /// mistyped value names the output and the pointer.
    #[test]
    fn outputs_are_read_by_json_pointer_and_type_checked() {
        let json = serde_json::json!({ "id": "ch_1", "amount": 250, "rate": 1, "ok": true, "nested": { "n": [7] }, "none": null });
        let wanted = |pairs: &[(&str, &str, ParamType)]| {
            pairs.iter().map(|(n, p, t)| (n.to_string(), (p.to_string(), *t))).collect::<BTreeMap<_, _>>()
        };
        let outputs = outputs_from(
            &json,
            &wanted(&[
                ("id", "/id", ParamType::Text),
                ("amount", "/amount", ParamType::Int),
                ("rate", "/rate", ParamType::Float),
                ("ok", "/ok", ParamType::Bool),
                ("n", "/nested/n/0", ParamType::Int),
            ]),
        )
        .unwrap();
        assert_eq!(outputs["id"], Value::Text("ch_1".into()));
        assert_eq!(outputs["rate"], Value::Float(1.0));
        assert_eq!(outputs["n"], Value::Int(7));
        for (pointer, ty, expected) in [
            ("/missing", ParamType::Text, "no value at JSON pointer \"/missing\" for output \"x\""),
            ("/none", ParamType::Text, "no value at JSON pointer \"/none\""),
            ("/amount", ParamType::Text, "at JSON pointer \"/amount\" for output \"x\" is an integer, declared text"),
            ("/id", ParamType::Int, "is a string, declared int"),
        ] {
            let err = outputs_from(&json, &wanted(&[("x", pointer, ty)])).unwrap_err();
            assert!(err.contains(expected), "{pointer}: {err}");
        }
    }

    /// `Retry-After` in seconds becomes milliseconds; a date or garbage is no hint.
    #[test]
    fn retry_after_seconds_are_read() {
        let mut headers = HeaderMap::new();
        assert_eq!(retry_after_ms(&headers), None);
        headers.insert(reqwest::header::RETRY_AFTER, HeaderValue::from_static(" 2 "));
        assert_eq!(retry_after_ms(&headers), Some(2000));
        headers.insert(reqwest::header::RETRY_AFTER, HeaderValue::from_static("Wed, 21 Oct 2015 07:28:00 GMT"));
        assert_eq!(retry_after_ms(&headers), None);
    }

    /// An `env:` header whose variable is missing fails the open naming the participant, the
    /// header and the variable; opened read-only it is a note. A set variable is read.
    #[test]
    fn a_missing_header_variable_is_named() {
        let text = "kind = \"http\"\nbase_url = \"http://127.0.0.1:9\"\nheaders = { authorization = \"env:SAGALOG_TEST_SURELY_UNSET_TOKEN\" }";
        let err = Http::open("billing", &config(text)).err().unwrap().to_string();
        assert!(
            err.starts_with("billing: header \"authorization\" takes env:SAGALOG_TEST_SURELY_UNSET_TOKEN"),
            "{err}"
        );
        assert!(err.contains("environment variable SAGALOG_TEST_SURELY_UNSET_TOKEN is not set"), "{err}");
        let (_, notes) = Http::open_read_only("billing", &config(text)).unwrap();
        assert_eq!(notes.len(), 1, "{notes:?}");
        let text = "kind = \"http\"\nbase_url = \"http://127.0.0.1:9\"\nheaders = { authorization = \"env:PATH\" }";
        let http = Http::open("billing", &config(text)).unwrap();
        assert!(http.headers.contains_key("authorization"));
        let text = "kind = \"http\"\nbase_url = \"http://127.0.0.1:9\"\nheaders = { idempotency-key = \"x\" }";
        assert!(
            Http::open("billing", &config(text)).err().unwrap().to_string().contains("sets Idempotency-Key itself")
        );
    }

    /// Base URLs must be absolute http(s) URLs with a host and no query.
    #[test]
    fn base_urls_are_checked() {
        assert_eq!(base_url_problem("http://127.0.0.1:8081"), None);
        assert_eq!(base_url_problem("https://billing.example/api/"), None);
        for bad in ["127.0.0.1:8081", "ftp://x", "http://x/?a=1", "not a url"] {
            assert!(base_url_problem(bad).is_some(), "{bad} was accepted");
        }
    }

    /// A participant opened read-only sends nothing, and every marker lookup fails: there is
    /// no marker, and "absent" must never be answered.
    #[tokio::test]
    async fn read_only_sends_nothing_and_lookups_never_answer_absent() {
        let text = "kind = \"http\"\nbase_url = \"http://127.0.0.1:9\"";
        let (http, _) = Http::open_read_only("billing", &config(text)).unwrap();
        let key = StepKey::new("s", 0, Direction::Forward);
        let op = Operation::Http { method: "POST".into(), path: "/x".into(), body: None, outputs: BTreeMap::new() };
        let err = http.apply(&key, 1, &op).await.unwrap_err();
        assert!(!err.is_retryable() && err.message.contains("read-only"), "{err}");
        assert!(!http.has_markers());
        assert!(http.lookup_marker(&key).await.is_err());
        assert!(http.settle_marker(&key, 1).await.is_err());
        assert!(http.lookup_markers(std::slice::from_ref(&key)).await.is_err());
    }

    /// A permanent answer to the first attempt speaks for the key (not applied); to a later
    /// attempt it keeps the doubt the earlier one left (`maybe_applied`), so the executor never
    /// skips the step's compensation: the policy of "Participants without markers".
    #[tokio::test]
    async fn a_permanent_failure_after_the_first_attempt_may_have_applied() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            while let Ok((mut conn, _)) = listener.accept().await {
                let mut buf = [0u8; 4096];
                let _ = conn.read(&mut buf).await;
                let answer = "HTTP/1.1 400 Bad Request\r\nContent-Length: 3\r\nConnection: close\r\n\r\nbad";
                let _ = conn.write_all(answer.as_bytes()).await;
            }
        });
        let text = format!("kind = \"http\"\nbase_url = \"http://127.0.0.1:{port}\"");
        let http = Http::open("billing", &config(&text)).unwrap();
        let key = StepKey::new("s", 0, Direction::Forward);
        let op = Operation::Http { method: "POST".into(), path: "/x".into(), body: None, outputs: BTreeMap::new() };
        let first = http.apply(&key, 1, &op).await.unwrap_err();
        assert!(!first.is_retryable() && !first.maybe_applied && first.message.contains("HTTP 400"), "{first}");
        let later = http.apply(&key, 2, &op).await.unwrap_err();
        assert!(!later.is_retryable() && later.maybe_applied && later.message.contains("HTTP 400"), "{later}");
    }
}
