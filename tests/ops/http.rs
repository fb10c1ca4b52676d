//! The offline tools on a data directory with an `http` participant (issue 11 item 4): the
//! dry-run plans its in-doubt step as a re-send (no marker is asked), the audit notes that it
//! keeps no markers instead of reporting them missing, config check finds it reachable, and
//! none of them sends a single byte to the service.

use crate::ops_support;

use std::collections::BTreeMap;
use std::io::Read;
use std::net::TcpListener;
use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ops_support::{append, sagalog, stderr, stdout};
use sagalog::catalog::Catalog;
use sagalog::engine::record::{Finished, Started, Submitted, Succeeded};
use sagalog::engine::{Direction, Outcome, Record, SagaDefinition, StepCall, Value};
use serde_json::Value as Json;

fn config(base_url: &str) -> String {
    format!(
        r#"
[journal]
sync = "always"

[participants.billing]
kind = "http"
base_url = "{base_url}"
health = "GET /healthz"

[actions.charge]
participant = "billing"
params = {{ order_id = "text" }}
returns = {{ charge_id = "text" }}
forward = {{ http = "POST /charges", json = {{ order = "{{order_id}}" }}, output = {{ charge_id = "/id" }} }}
compensate = {{ http = "POST /charges/{{output.charge_id}}/refund" }}
"#
    )
}

/// A service that accepts connections and counts the bytes it is sent (it never answers).
fn listener() -> (String, Arc<Mutex<usize>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let base_url = format!("http://{}", listener.local_addr().unwrap());
    let received = Arc::new(Mutex::new(0usize));
    let counted = received.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let counted = counted.clone();
            std::thread::spawn(move || {
                stream.set_read_timeout(Some(Duration::from_secs(5))).ok();
                let mut buf = [0u8; 1024];
                while let Ok(n @ 1..) = stream.read(&mut buf) {
                    *counted.lock().unwrap() += n;
                }
            });
        }
    });
    (base_url, received)
}

fn charge(id: &str) -> SagaDefinition {
    SagaDefinition {
        id: id.into(),
        steps: vec![StepCall {
            action: "charge".into(),
            params: BTreeMap::from([("order_id".into(), Value::Text(id.into()))]),
            from: BTreeMap::new(),
        }],
    }
}

/// `in-doubt`: its charge started, no outcome; `done`: completed.
fn crafted(dir: &Path, config: &str) {
    std::fs::write(dir.join("sagalog.toml"), config).unwrap();
    let catalog = Catalog::parse(config).unwrap();
    let mut records = Vec::new();
    for def in [charge("in-doubt"), charge("done")] {
        records.push(Record::SagaSubmitted(Submitted {
            saga: def.id.clone(),
            digest: def.digest(),
            steps: def.steps.clone(),
            policies: catalog.validate(&def).unwrap(),
            at_ms: 10,
            actions: catalog.resolved_actions(&def),
            scope: None,
        }));
        records.push(Record::StepStarted(Started {
            saga: def.id.clone(),
            step: 0,
            direction: Direction::Forward,
            attempt: 1,
            at_ms: 11,
            deadline_ms: None,
        }));
    }
    records.push(Record::StepSucceeded(Succeeded {
        saga: "done".into(),
        step: 0,
        direction: Direction::Forward,
        attempt: 1,
        by_marker: false,
        at_ms: 12,
        outputs: BTreeMap::from([("charge_id".into(), Value::Text("ch_1".into()))]),
    }));
    records.push(Record::SagaFinished(Finished { saga: "done".into(), outcome: Outcome::Completed, at_ms: 13 }));
    append(dir, &records);
}

/// Dry-run, audit and config check on a data directory with an HTTP participant: the
/// in-doubt step is planned as a re-send (marker "no_markers"), the audit notes the
/// participant keeps no markers and finds nothing, config check reaches it by TCP only, and
/// the service receives no byte from any of them.
#[test]
fn offline_tools_plan_re_sends_note_no_markers_and_send_nothing() {
    let (base_url, received) = listener();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let config = config(&base_url);
    crafted(d, &config);

    let out = sagalog(&["replay", "--dry-run", "--json"], d);
    assert!(out.status.success(), "dry-run failed: {}", stderr(&out));
    let plan: Json = serde_json::from_str(&stdout(&out)).unwrap();
    let saga = plan["sagas"].as_array().unwrap().iter().find(|s| s["id"] == "in-doubt").unwrap();
    assert_eq!(saga["expected"], "completed", "{saga}");
    let forward = &saga["steps"][0]["forward"];
    assert_eq!(
        (&forward["journaled"], &forward["marker"], &forward["action"]),
        (&"in_doubt".into(), &"no_markers".into(), &"rerun".into()),
        "{forward}"
    );
    let table = stdout(&sagalog(&["replay", "--dry-run"], d));
    assert!(table.contains("none kept (re-sent by key)") && table.contains("RE-RUN"), "{table}");

    let out = sagalog(&["audit", "--json"], d);
    let report: Json = serde_json::from_str(&stdout(&out)).unwrap_or_else(|e| panic!("{e}: {}", stderr(&out)));
    assert_eq!(report["findings"], Json::Array(vec![]), "{report}");
    let notes = report["notes"].to_string();
    assert!(notes.contains("participant billing (http) keeps no markers"), "{notes}");

    let out = Command::new(env!("CARGO_BIN_EXE_sagalog"))
        .args(["config", "check", "--json", "--config"])
        .arg(d.join("sagalog.toml"))
        .arg("--data-dir")
        .arg(d)
        .output()
        .unwrap();
    let checked: Json = serde_json::from_str(&String::from_utf8_lossy(&out.stdout)).unwrap();
    assert_eq!(checked["participants_reachable"], serde_json::json!(["billing"]), "{checked}");
    assert_eq!(out.status.code(), Some(0), "{checked}");

    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(*received.lock().unwrap(), 0, "a read-only tool sent bytes to the service");
}
