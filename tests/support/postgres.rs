//! The test PostgreSQL server, shared by the tests that need one (included by `#[path]`).
//!
//! `SAGALOG_TEST_POSTGRES` gives its conninfo (default `host=127.0.0.1 port=5432 user=postgres
//! dbname=test`). Without a server a test prints `SKIPPED` and passes, unless
//! `SAGALOG_REQUIRE_POSTGRES=1` (set by `.ci/run`) makes the skip a failure.

#![allow(dead_code)]

use std::time::Duration;

const POSTGRES_DEFAULT: &str = "host=127.0.0.1 port=5432 user=postgres dbname=test";

/// The conninfo of the test server.
pub fn conninfo() -> String {
    std::env::var("SAGALOG_TEST_POSTGRES").unwrap_or_else(|_| POSTGRES_DEFAULT.to_owned())
}

/// A direct client to the test server, or `None` after a loud notice naming `test` when none
/// answers within 5 s (a panic under `SAGALOG_REQUIRE_POSTGRES=1`).
pub async fn client(test: &str) -> Option<tokio_postgres::Client> {
    client_at(&conninfo(), test).await
}

/// [`client`] for the server at `conninfo`.
pub async fn client_at(conninfo: &str, test: &str) -> Option<tokio_postgres::Client> {
    let connected =
        tokio::time::timeout(Duration::from_secs(5), tokio_postgres::connect(conninfo, tokio_postgres::NoTls))
            .await
            .map_err(|e| e.to_string())
            .and_then(|r| r.map_err(|e| e.to_string()));
    match connected {
        Ok((client, connection)) => {
            tokio::spawn(connection);
            Some(client)
        }
        Err(e) if std::env::var("SAGALOG_REQUIRE_POSTGRES").as_deref() == Ok("1") => {
            panic!("SAGALOG_REQUIRE_POSTGRES=1 but no PostgreSQL at {conninfo:?}: {e}")
        }
        Err(e) => {
            eprintln!("SKIPPED: {test}: no PostgreSQL at {conninfo:?} ({e})");
            None
        }
    }
}
