//! `sagalog export --duckdb FILE`: a known history (crafted journal with exact timestamps)
//! exported, then every query documented in docs/operations.md, parsed out of the page itself
//! so page and test cannot drift, gives the right answers.

#![cfg(feature = "duckdb")]

use crate::ops_support;

use ops_support::*;
use sagalog::engine::record::{Failed, Finished, RecoveryStarted, Started, Succeeded};
use sagalog::engine::{Outcome, Record, Value};
use sagalog::participant::Direction::{self, Compensate, Forward};

/// 2026-01-01T10:00:00Z in ms.
const H0: u64 = 1_767_261_600_000;
const MIN: u64 = 60_000;
const HOUR: u64 = 3_600_000;

fn start(id: &str, step: u32, direction: Direction, attempt: u32, at_ms: u64) -> Record {
    Record::StepStarted(Started { saga: id.into(), step, direction, attempt, at_ms, deadline_ms: None })
}

fn ok(id: &str, step: u32, direction: Direction, attempt: u32, at_ms: u64, by_marker: bool) -> Record {
    Record::StepSucceeded(Succeeded {
        saga: id.into(),
        step,
        direction,
        attempt,
        by_marker,
        at_ms,
        outputs: Default::default(),
    })
}

fn fail(id: &str, step: u32, attempt: u32, at_ms: u64, error: &str, retryable: bool) -> Record {
    Record::StepFailed(Failed {
        saga: id.into(),
        step,
        direction: Forward,
        attempt,
        error: error.into(),
        retryable,
        maybe_applied: false,
        at_ms,
    })
}

fn done(id: &str, outcome: Outcome, at_ms: u64) -> Record {
    Record::SagaFinished(Finished { saga: id.into(), outcome, at_ms })
}

/// The history: hour 10 has c1..c3 completed (c3's step 1 took 5 s) and x1 compensated
/// (step 1 failed: disk full); hour 11 has c4 completed after a retried step 0, x2 compensated
/// (step 0 refused), and c5, found unfinished by a recovery at 11:30 and finished at 11:31.
fn history() -> Vec<Record> {
    let mut r = Vec::new();
    for (id, step1_ms) in [("c1", 100), ("c2", 100), ("c3", 5_000)] {
        let t = H0 + MIN;
        r.push(submitted(&two_steps(id, 1), t));
        r.extend([start(id, 0, Forward, 1, t), ok(id, 0, Forward, 1, t + 100, false)]);
        r.extend([start(id, 1, Forward, 1, t + 200), ok(id, 1, Forward, 1, t + 200 + step1_ms, false)]);
        r.push(done(id, Outcome::Completed, H0 + 2 * MIN));
    }
    let t = H0 + 3 * MIN;
    r.push(submitted(&two_steps("x1", 1), t));
    r.extend([start("x1", 0, Forward, 1, t), ok("x1", 0, Forward, 1, t + 100, false)]);
    r.extend([start("x1", 1, Forward, 1, t + 200), fail("x1", 1, 1, t + 300, "disk full", false)]);
    r.extend([start("x1", 0, Compensate, 1, t + 400), ok("x1", 0, Compensate, 1, t + 500, false)]);
    r.push(done("x1", Outcome::Compensated, t + 600));

    let t = H0 + HOUR;
    r.push(submitted(&two_steps("c4", 1), t));
    r.extend([start("c4", 0, Forward, 1, t), fail("c4", 0, 1, t + 100, "database is locked", true)]);
    r.extend([start("c4", 0, Forward, 2, t + 200), ok("c4", 0, Forward, 2, t + 300, false)]);
    r.extend([start("c4", 1, Forward, 1, t + 400), ok("c4", 1, Forward, 1, t + 500, false)]);
    r.push(done("c4", Outcome::Completed, t + MIN));
    r.push(submitted(&two_steps("x2", -1), t + MIN));
    r.extend([start("x2", 0, Forward, 1, t + MIN), fail("x2", 0, 1, t + MIN + 100, "CHECK constraint failed", false)]);
    r.push(done("x2", Outcome::Compensated, t + 2 * MIN));

    r.push(submitted(&two_steps("c5", 1), t + 20 * MIN));
    r.push(start("c5", 0, Forward, 1, t + 25 * MIN));
    r.push(Record::RecoveryStarted(RecoveryStarted { reason: "recovery".into(), unfinished: 1, at_ms: t + 30 * MIN }));
    // Settled by its marker, with the outputs the marker held (issue 11 item 1).
    let Record::StepSucceeded(mut settled) = ok("c5", 0, Forward, 1, t + 30 * MIN + 1_000, true) else {
        unreachable!()
    };
    settled.outputs = [("batch".to_owned(), Value::Int(7)), ("tag".to_owned(), Value::Text("x".into()))].into();
    r.push(Record::StepSucceeded(settled));
    r.extend([start("c5", 1, Forward, 1, t + 30 * MIN + 2_000), ok("c5", 1, Forward, 1, t + 30 * MIN + 2_100, false)]);
    r.push(done("c5", Outcome::Completed, t + 31 * MIN));
    r
}

/// The named queries of docs/operations.md: `<!-- query: NAME -->` followed by a sql block.
fn documented_queries() -> Vec<(String, String)> {
    let page = include_str!("../../docs/operations.md");
    let mut out = Vec::new();
    for chunk in page.split("<!-- query: ").skip(1) {
        let (name, rest) = chunk.split_once(" -->").expect("a query marker ends with -->");
        let body = rest.split_once("```sql\n").expect("a sql block follows the marker").1;
        let sql = body.split_once("```").expect("the sql block ends").0;
        out.push((name.trim().to_owned(), sql.trim().to_owned()));
    }
    out
}

fn rows(conn: &duckdb::Connection, sql: &str) -> Vec<Vec<String>> {
    let mut stmt = conn.prepare(sql).unwrap_or_else(|e| panic!("{e}: {sql}"));
    let mut rows = stmt.query([]).unwrap();
    let mut out = Vec::new();
    while let Some(row) = rows.next().unwrap() {
        let stmt = row.as_ref();
        let n = stmt.column_count();
        out.push((0..n).map(|i| text(row.get::<_, duckdb::types::Value>(i).unwrap())).collect());
    }
    out
}

fn text(v: duckdb::types::Value) -> String {
    use duckdb::types::Value as V;
    match v {
        V::Null => "NULL".into(),
        V::Boolean(b) => b.to_string(),
        V::TinyInt(i) => i.to_string(),
        V::SmallInt(i) => i.to_string(),
        V::Int(i) => i.to_string(),
        V::BigInt(i) => i.to_string(),
        V::HugeInt(i) => i.to_string(),
        V::UTinyInt(i) => i.to_string(),
        V::USmallInt(i) => i.to_string(),
        V::UInt(i) => i.to_string(),
        V::UBigInt(i) => i.to_string(),
        V::Float(f) => f.to_string(),
        V::Double(f) => f.to_string(),
        V::Decimal(d) => d.to_string(),
        V::Text(s) => s,
        V::Timestamp(_, t) => {
            humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + std::time::Duration::from_micros(t as u64))
                .to_string()
        }
        other => format!("{other:?}"),
    }
}

/// Export a known history; each documented query answers what the history says.
#[test]
fn documented_queries_give_the_right_answers() {
    let dir = data_dir();
    append(dir.path(), &history());
    let file = dir.path().join("history.duckdb");
    let out = sagalog(&["export", "--duckdb", file.to_str().unwrap()], dir.path());
    assert!(out.status.success(), "{} {}", stdout(&out), stderr(&out));
    assert!(stdout(&out).contains("7 sagas, 14 steps"), "{}", stdout(&out));

    let conn = duckdb::Connection::open(&file).unwrap();
    let outputs: Vec<(i64, Option<String>)> = conn
        .prepare("SELECT step, CAST(outputs AS VARCHAR) FROM steps WHERE saga_id = 'c5' ORDER BY step")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(outputs, [(0, Some(r#"{"batch":7,"tag":"x"}"#.to_owned())), (1, None)], "each step's outputs as JSON");
    let queries = documented_queries();
    let names: Vec<&str> = queries.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            "success_rate_per_hour",
            "failures_by_participant_and_error",
            "compensation_rate",
            "recovery_times",
            "slowest_steps"
        ]
    );
    for (name, sql) in &queries {
        let got = rows(&conn, sql);
        match name.as_str() {
            "success_rate_per_hour" => assert_eq!(
                got,
                [["2026-01-01T10:00:00Z", "4", "3", "75"], ["2026-01-01T11:00:00Z", "3", "2", "66.7"]],
                "{name}"
            ),
            "failures_by_participant_and_error" => assert_eq!(
                got,
                [
                    ["files", "forward", "disk full", "1", "1"],
                    ["ledger", "forward", "CHECK constraint failed", "1", "1"],
                    ["ledger", "forward", "database is locked", "1", "1"],
                ],
                "{name}"
            ),
            "compensation_rate" => assert_eq!(got, [["2", "7", "28.6"]], "{name}"),
            "recovery_times" => {
                assert_eq!(got.len(), 1, "{name}: {got:?}");
                assert_eq!(got[0][2..], ["1", "60000"], "{name}: {got:?}");
            }
            "slowest_steps" => {
                assert_eq!(got[0][..3], ["write", "files", "forward"], "{name}: {got:?}");
                assert_eq!(got[0][6], "5000", "{name}: {got:?}");
                assert!(got.iter().all(|r| r[2] != "compensate" || r[0] == "record"), "{got:?}");
            }
            other => panic!("query {other} has no expected answer in this test"),
        }
    }
    // Exporting again replaces the tables rather than doubling them.
    drop(conn);
    let out = sagalog(&["export", "--duckdb", file.to_str().unwrap()], dir.path());
    assert!(out.status.success(), "{}", stderr(&out));
    let conn = duckdb::Connection::open(&file).unwrap();
    assert_eq!(rows(&conn, "SELECT count(*) FROM sagas"), [["7"]]);
}
