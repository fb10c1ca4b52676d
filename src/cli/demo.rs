//! The demo saga of the embedded default ([`crate::config::EMBEDDED_DEFAULT`]), which
//! `submit --demo`, the debug commands and the tests run. Builds a definition; never submits it.

use crate::engine::{SagaDefinition, StepCall, Value};

/// The demo saga of the embedded default, for run `run_id`: record the execution in SQLite
/// (step 0, which returns `execution_id`), store its results in DuckDB under that id (step 1),
/// tell the notifier (step 2, HTTP) and write the artefact file (step 3); steps 1 and 2 take
/// the id with `from = steps.0.execution_id`. Two values of `rows` fail on purpose, to exercise
/// compensation: a negative count is refused by the ledger (step 0 fails, nothing to undo),
/// more than 1,000,000 by the warehouse (step 1 fails, step 0 is undone).
pub fn demo_saga(saga_id: &str, run_id: &str, rows: i64) -> SagaDefinition {
    let text = |s: &str| Value::Text(s.to_owned());
    let report = format!("{{\"run_id\":\"{run_id}\",\"rows\":{rows}}}");
    let step = |action: &str, params: Vec<(&str, Value)>, from: &[&str]| StepCall {
        action: action.to_owned(),
        params: params.into_iter().map(|(k, v)| (k.to_owned(), v)).collect(),
        from: from.iter().map(|name| ((*name).to_owned(), format!("steps.0.{name}"))).collect(),
    };
    SagaDefinition {
        id: saga_id.to_owned(),
        steps: vec![
            step(
                "record_execution",
                vec![("run_id", text(run_id)), ("job", text("nightly-etl")), ("rows", Value::Int(rows))],
                &[],
            ),
            step(
                "store_results",
                vec![("run_id", text(run_id)), ("job", text("nightly-etl")), ("rows", Value::Int(rows))],
                &["execution_id"],
            ),
            step("notify", vec![("run_id", text(run_id))], &["execution_id"]),
            step("write_artifact", vec![("run_id", text(run_id)), ("report", text(&report))], &[]),
        ],
    }
}

/// [`demo_saga`] with a durable pause of `pause_ms` between storing the results and notifying
/// (`submit --demo`: a saga that is still running a couple of seconds after its submit, so
/// that the README's `kill -9` catches it mid-flight). The step indices of `from` are those of
/// [`demo_saga`]'s first two steps, which come first here too.
pub fn demo_saga_with_pause(saga_id: &str, run_id: &str, rows: i64, pause_ms: i64) -> SagaDefinition {
    let mut saga = demo_saga(saga_id, run_id, rows);
    let pause = StepCall {
        action: "pause".to_owned(),
        params: [("delay_ms".to_owned(), Value::Int(pause_ms))].into_iter().collect(),
        from: Default::default(),
    };
    saga.steps.insert(2, pause);
    saga
}
