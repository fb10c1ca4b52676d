//! The demo notifier: a small HTTP service the embedded default's demo saga calls through an
//! `http` participant, so that the demo shows a step against "a service the business calls"
//! with nothing to install. It is served on the `[server] metrics_listen` port when
//! `[server] demo_notifier` names its database (relative to the data directory), and it
//! behaves as the participant contract asks of a receiver: it **deduplicates by the
//! `Idempotency-Key` header**, durably, so a re-sent request (after a retry or a crash) answers
//! what the first one answered and records nothing twice.
//!
//! - `POST /demo/notifications` with `Idempotency-Key` and a JSON object body
//!   (`{"run_id": "…", "execution_id": 7}`): records one notification per key; answers
//!   `201 {"id": "<n>", …}` the first time and `200` with the same body for a repeated key.
//! - `POST /demo/notifications/{id}/retract`: marks it retracted (the compensation);
//!   retracting twice answers the same; an unknown id is `404`.
//! - `GET /demo/notifications`: every notification, oldest first, as a JSON array.
//!
//! Errors are JSON bodies `{"error": "…"}` with 400 (bad request), 404 or 500 (its database
//! failed; the participant retries a 5xx). The database is a SQLite file in the default
//! rollback-journal mode with `synchronous = FULL`: a notification answered is durable.
//!
//! Never does: run unless configured, or take part in sagalog's own durability (it is a
//! stand-in for a remote service; losing it loses only demo data).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Body, Bytes};
use hyper::{Method, Request, Response, StatusCode};
use serde_json::json;

/// The most of a request body the notifier reads.
pub const BODY_BYTES_MAX: usize = 64 * 1024;

/// The route prefix the notifier owns on the HTTP port.
pub const PREFIX: &str = "/demo/notifications";

/// An open notifier database.
pub struct Notifier {
    path: PathBuf,
    db: Mutex<rusqlite::Connection>,
}

impl std::fmt::Debug for Notifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Notifier").field("path", &self.path).finish_non_exhaustive()
    }
}

/// A notifier answer: status and JSON body.
type Answer = (StatusCode, serde_json::Value);

impl Notifier {
    /// Opens (creating it and its directory if needed) the notifier's database.
    pub fn open(path: &Path) -> Result<Notifier, String> {
        let fail = |e: &dyn std::fmt::Display| format!("demo notifier database {}: {e}", path.display());
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| fail(&e))?;
        }
        let db = rusqlite::Connection::open(path).map_err(|e| fail(&e))?;
        db.execute_batch(
            "PRAGMA synchronous = FULL;
             CREATE TABLE IF NOT EXISTS notifications (
                 id INTEGER PRIMARY KEY AUTOINCREMENT,
                 idempotency_key TEXT NOT NULL UNIQUE,
                 body TEXT NOT NULL,
                 received_ms INTEGER NOT NULL,
                 retracted_ms INTEGER
             );",
        )
        .map_err(|e| fail(&e))?;
        Ok(Notifier { path: path.to_owned(), db: Mutex::new(db) })
    }

    /// Whether this request is the notifier's to answer.
    pub fn owns(path: &str) -> bool {
        path == PREFIX || path.starts_with(&format!("{PREFIX}/"))
    }

    /// Answers one request (its body read here, bounded by [`BODY_BYTES_MAX`]).
    pub async fn respond<B>(self: Arc<Self>, request: Request<B>) -> Response<Full<Bytes>>
    where
        B: Body,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let (parts, body) = request.into_parts();
        let bytes = match Limited::new(body, BODY_BYTES_MAX).collect().await {
            Ok(collected) => collected.to_bytes(),
            Err(e) => return reply((StatusCode::BAD_REQUEST, error(format!("reading the body: {e}")))),
        };
        let key = parts.headers.get(crate::participant::http::IDEMPOTENCY_KEY_HEADER).map(|v| v.to_str());
        let key = match key {
            None => None,
            Some(Ok(k)) => Some(k.to_owned()),
            Some(Err(_)) => return reply((StatusCode::BAD_REQUEST, error("Idempotency-Key is not visible ASCII"))),
        };
        let (method, path) = (parts.method, parts.uri.path().to_owned());
        let answer = tokio::task::spawn_blocking(move || self.answer(&method, &path, key.as_deref(), &bytes)).await;
        reply(answer.unwrap_or_else(|e| (StatusCode::INTERNAL_SERVER_ERROR, error(format!("the handler failed: {e}")))))
    }

    fn answer(&self, method: &Method, path: &str, key: Option<&str>, body: &[u8]) -> Answer {
        let rest = path.strip_prefix(PREFIX).unwrap_or_default();
        let db = self.db.lock().unwrap_or_else(PoisonError::into_inner);
        let result = match (method, rest) {
            (&Method::POST, "" | "/") => notify(&db, key, body),
            (&Method::GET, "" | "/") => list(&db),
            (&Method::POST, rest) => match rest.strip_prefix('/').and_then(|r| r.strip_suffix("/retract")) {
                Some(id) => match id.parse::<i64>() {
                    Ok(id) => retract(&db, id),
                    Err(_) => Ok((StatusCode::NOT_FOUND, error(format!("no notification {id:?}")))),
                },
                None => Ok((StatusCode::NOT_FOUND, error(format!("no route POST {path}")))),
            },
            _ => Ok((StatusCode::NOT_FOUND, error(format!("no route {method} {path}")))),
        };
        result.unwrap_or_else(|e| {
            (StatusCode::INTERNAL_SERVER_ERROR, error(format!("demo notifier database {}: {e}", self.path.display())))
        })
    }
}

fn error(message: impl Into<String>) -> serde_json::Value {
    json!({ "error": message.into() })
}

fn reply((status, body): Answer) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(format!("{body}\n"))));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(hyper::header::CONTENT_TYPE, hyper::header::HeaderValue::from_static("application/json"));
    response
}

fn now_ms() -> i64 {
    let since = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    i64::try_from(since.as_millis()).unwrap_or(i64::MAX)
}

/// One notification per idempotency key: the first request records it (201), a repeated key
/// answers the same notification (200) and records nothing.
fn notify(db: &rusqlite::Connection, key: Option<&str>, body: &[u8]) -> rusqlite::Result<Answer> {
    let Some(key) = key.filter(|k| !k.is_empty()) else {
        return Ok((StatusCode::BAD_REQUEST, error("the Idempotency-Key header is required")));
    };
    let fields: serde_json::Value = match serde_json::from_slice(body) {
        Ok(value @ serde_json::Value::Object(_)) => value,
        Ok(_) => return Ok((StatusCode::BAD_REQUEST, error("the body is not a JSON object"))),
        Err(e) => return Ok((StatusCode::BAD_REQUEST, error(format!("the body is not JSON: {e}")))),
    };
    let inserted = db.execute(
        "INSERT INTO notifications (idempotency_key, body, received_ms) VALUES (?1, ?2, ?3) \
         ON CONFLICT (idempotency_key) DO NOTHING",
        rusqlite::params![key, fields.to_string(), now_ms()],
    )?;
    let (id, stored, retracted): (i64, String, Option<i64>) =
        db.query_row("SELECT id, body, retracted_ms FROM notifications WHERE idempotency_key = ?1", [key], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
        })?;
    let status = if inserted == 1 { StatusCode::CREATED } else { StatusCode::OK };
    Ok((status, notification(id, key, &stored, retracted)))
}

fn notification(id: i64, key: &str, body: &str, retracted_ms: Option<i64>) -> serde_json::Value {
    let body: serde_json::Value = serde_json::from_str(body).unwrap_or(serde_json::Value::Null);
    json!({ "id": id.to_string(), "idempotency_key": key, "body": body, "retracted": retracted_ms.is_some() })
}

fn retract(db: &rusqlite::Connection, id: i64) -> rusqlite::Result<Answer> {
    db.execute(
        "UPDATE notifications SET retracted_ms = ?2 WHERE id = ?1 AND retracted_ms IS NULL",
        rusqlite::params![id, now_ms()],
    )?;
    let found =
        db.query_row("SELECT idempotency_key, body, retracted_ms FROM notifications WHERE id = ?1", [id], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?, r.get::<_, Option<i64>>(2)?))
        });
    match found {
        Ok((key, body, retracted)) => Ok((StatusCode::OK, notification(id, &key, &body, retracted))),
        Err(rusqlite::Error::QueryReturnedNoRows) => {
            Ok((StatusCode::NOT_FOUND, error(format!("no notification {id}"))))
        }
        Err(e) => Err(e),
    }
}

fn list(db: &rusqlite::Connection) -> rusqlite::Result<Answer> {
    let mut statement = db.prepare("SELECT id, idempotency_key, body, retracted_ms FROM notifications ORDER BY id")?;
    let rows = statement
        .query_map([], |r| Ok(notification(r.get(0)?, &r.get::<_, String>(1)?, &r.get::<_, String>(2)?, r.get(3)?)))?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok((StatusCode::OK, serde_json::Value::Array(rows)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn post(n: &Notifier, path: &str, key: Option<&str>, body: &str) -> Answer {
        n.answer(&Method::POST, path, key, body.as_bytes())
    }

    /// A repeated key records nothing and answers the first notification; a retraction is
    /// idempotent; bad requests are 400 with a reason; both survive reopening the database.
    #[test]
    fn notifications_are_deduplicated_by_key_and_retracted_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("demo/notifications.sqlite");
        let n = Notifier::open(&path).unwrap();
        let (status, first) = post(&n, PREFIX, Some("s/2/forward"), r#"{"run_id":"r","execution_id":7}"#);
        assert_eq!(status, StatusCode::CREATED);
        assert_eq!(first["id"], "1");
        let (status, again) = post(&n, PREFIX, Some("s/2/forward"), r#"{"run_id":"other"}"#);
        assert_eq!((status, &again), (StatusCode::OK, &first), "a repeated key answers the first notification");
        assert_eq!(post(&n, PREFIX, None, "{}").0, StatusCode::BAD_REQUEST);
        assert_eq!(post(&n, PREFIX, Some("k"), "[1]").0, StatusCode::BAD_REQUEST);
        assert_eq!(post(&n, PREFIX, Some("k"), "not json").0, StatusCode::BAD_REQUEST);
        drop(n);
        let n = Notifier::open(&path).unwrap();
        assert_eq!(post(&n, PREFIX, Some("s/2/forward"), "{}").1, first, "durable across a reopen");
        let (status, retracted) = post(&n, &format!("{PREFIX}/1/retract"), Some("s/2/compensate"), "");
        assert_eq!(status, StatusCode::OK);
        assert_eq!(retracted["retracted"], true);
        assert_eq!(post(&n, &format!("{PREFIX}/1/retract"), Some("s/2/compensate"), "").1, retracted);
        assert_eq!(post(&n, &format!("{PREFIX}/9/retract"), None, "").0, StatusCode::NOT_FOUND);
        assert_eq!(post(&n, &format!("{PREFIX}/x/retract"), None, "").0, StatusCode::NOT_FOUND);
        let (status, all) = n.answer(&Method::GET, PREFIX, None, b"");
        assert_eq!(status, StatusCode::OK);
        assert_eq!(all.as_array().map(Vec::len), Some(1));
        assert!(Notifier::owns(PREFIX) && Notifier::owns("/demo/notifications/1/retract"));
        assert!(!Notifier::owns("/metrics") && !Notifier::owns("/demo/notificationsx"));
    }
}
