//! The operator tools against a running server (issue 14, item 3): `sagalog audit`,
//! `replay --dry-run`, `wal verify`, `wal dump` and `export` on a data directory a server holds
//! go online by themselves (the config names the HTTP port) or with `--http`, and answer what
//! the offline tools answer once the server has stopped. The online audit finds real damage
//! (a marker deleted under the running server), and sagas in flight are neither judged nor
//! reported.

use std::process::{Command, Output};
use std::time::Duration;

use serde_json::{Value as Json, json};

use super::api_support::*;

fn sagalog(args: &[&str], token: Option<&str>) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_sagalog"));
    c.args(args).env_remove("SAGALOG_TOKEN").env_remove("SAGALOG_SERVER");
    if let Some(token) = token {
        c.env("SAGALOG_TOKEN", token);
    }
    c.output().unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn json_of(o: &Output) -> Json {
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {}", text(o)))
}

/// A port free now, for a config that must name its HTTP port (the auto-online path reads it).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tools_run_online_on_a_held_data_directory_and_agree_with_the_offline_ones() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let config = CONFIG
        .replace("listen = \"127.0.0.1:0\"", &format!("listen = \"127.0.0.1:0\"\nhttp_listen = \"127.0.0.1:{port}\""))
        + "\n[actions.pause]\ndelay_ms = \"param\"\nparams = { delay_ms = \"int\" }\n";
    let server = start(dir.path(), &config).await;
    let config_path = dir.path().join("test-config.toml");
    let (data, config_arg) = (dir.path().join("data"), config_path.to_str().unwrap().to_owned());
    let data_arg = data.to_str().unwrap().to_owned();
    let url = format!("http://127.0.0.1:{port}");

    // Four finished sagas (one compensated: rows < 0 breaks the CHECK), one parked in a delay.
    let mut client = sagas(server.addr, Some(CLIENT_TOKEN)).await;
    for (n, rows) in [(0, 1), (1, 2), (2, -1), (3, 4)] {
        client.submit(saga(&format!("on-{n}"), rows)).await.unwrap();
    }
    for n in 0..4 {
        settled(&mut client, &format!("on-{n}")).await;
    }
    let parked = json!({"saga_id": "on-parked", "steps": [
        {"action": "record_execution", "params": {"run_id": "on-parked", "rows": 9}},
        {"action": "pause", "params": {"delay_ms": 600000}},
    ]});
    let response = reqwest::Client::new()
        .post(format!("{url}/v1/sagas"))
        .bearer_auth(CLIENT_TOKEN)
        .json(&parked)
        .send()
        .await
        .unwrap();
    assert!(response.status().is_success(), "{:?}", response.text().await);
    // Wait until the parked saga's delay has started (journaled with its deadline).
    let mut delayed = false;
    for _ in 0..500 {
        let s = client.get(sagalog::api::pb::GetRequest { saga_id: "on-parked".into() }).await.unwrap().into_inner();
        if s.steps.get(1).is_some_and(|step| step.deadline_ms > 0) {
            delayed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(delayed, "the parked saga's delay did not start");

    let url1 = url.clone();
    let tools = tokio::task::spawn_blocking(move || {
        let url = url1;
        // `audit --data-dir` of the held directory goes online by itself, and says so.
        let audit = sagalog(&["audit", "--data-dir", &data_arg, "--config", &config_arg], Some(ADMIN_TOKEN));
        assert!(audit.status.success(), "{}", text(&audit));
        let out = text(&audit);
        assert!(out.contains("in use by another sagalog process") && out.contains(&url), "{out}");
        assert!(out.contains("online:") && out.contains("status:   ok"), "{out}");

        let audit = sagalog(&["audit", "--http", &url, "--json"], Some(ADMIN_TOKEN));
        assert!(audit.status.success(), "{}", text(&audit));
        let report = json_of(&audit);
        assert_eq!(report["findings"], json!([]), "{report}");
        assert!(report["sagas_checked"].as_u64().unwrap() >= 4, "{report}");
        assert!(report["unfinished_skipped"].as_u64().unwrap() >= 1, "the parked saga is not judged: {report}");
        assert!(report["judged_up_to_lsn"].as_u64().is_some(), "{report}");
        assert!(report["markers"]["ledger"].as_u64().unwrap() >= 4, "{report}");

        // The recovery plan of the running server: the parked saga would wait out its delay.
        let plan = sagalog(
            &["replay", "--dry-run", "--data-dir", &data_arg, "--config", &config_arg, "--json"],
            Some(ADMIN_TOKEN),
        );
        assert!(plan.status.success(), "{}", text(&plan));
        let plan = json_of(&plan);
        assert!(plan["read_up_to_lsn"].as_u64().is_some(), "{plan}");
        let ids: Vec<&str> = plan["sagas"].as_array().unwrap().iter().map(|s| s["id"].as_str().unwrap()).collect();
        assert_eq!(ids, ["on-parked"], "{plan}");
        assert_eq!(plan["sagas"][0]["steps"][1]["forward"]["action"], "wait", "{plan}");
        let text_plan = sagalog(&["replay", "--dry-run", "--http", &url], Some(ADMIN_TOKEN));
        assert!(String::from_utf8_lossy(&text_plan.stdout).contains("what a restart at lsn"), "{}", text(&text_plan));
        // Recovery itself writes: never online.
        let refused = sagalog(&["replay", "--http", &url], Some(ADMIN_TOKEN));
        assert_eq!(refused.status.code(), Some(2), "{}", text(&refused));
        assert!(String::from_utf8_lossy(&refused.stderr).contains("only --dry-run"), "{}", text(&refused));

        // The journal, verified and dumped online: the dump has every verified record once.
        let verify = sagalog(&["wal", "verify", "--http", &url, "--json"], Some(ADMIN_TOKEN));
        assert!(verify.status.success(), "{}", text(&verify));
        let verified = json_of(&verify);
        assert_eq!(verified["status"], "ok", "{verified}");
        let dump = sagalog(&["wal", "dump", "--http", &url], Some(ADMIN_TOKEN));
        assert!(dump.status.success(), "{}", text(&dump));
        let lsns: Vec<u64> = String::from_utf8_lossy(&dump.stdout)
            .lines()
            .map(|l| serde_json::from_str::<Json>(l).unwrap()["lsn"].as_u64().unwrap())
            .collect();
        assert!(lsns.windows(2).all(|w| w[0] + 1 == w[1]), "in order, none twice or missing");
        assert_eq!(lsns.first().copied(), verified["first_lsn"].as_u64());
        assert!(lsns.len() as u64 >= verified["records"].as_u64().unwrap());

        // A client token may not run them: the server's PERMISSION_DENIED, exit 2.
        let denied = sagalog(&["audit", "--http", &url], Some(CLIENT_TOKEN));
        assert_eq!(denied.status.code(), Some(2), "{}", text(&denied));
        assert!(String::from_utf8_lossy(&denied.stderr).contains("PERMISSION_DENIED"), "{}", text(&denied));
        report
    })
    .await
    .unwrap();

    // Damage under the running server: a completed saga's marker deleted. The online audit
    // finds it (exit 1), by saga, step and participant.
    let ledger = rusqlite::Connection::open(data.join("ledger.sqlite")).unwrap();
    let deleted = ledger
        .execute("DELETE FROM sagalog_markers WHERE (saga_id = 'on-0' OR saga_id LIKE 'on-0 %') AND step = 0 AND direction = 'forward'", [])
        .unwrap();
    assert_eq!(deleted, 1);
    drop(ledger);
    let url2 = url.clone();
    let damaged =
        tokio::task::spawn_blocking(move || sagalog(&["audit", "--http", &url2, "--json"], Some(ADMIN_TOKEN)))
            .await
            .unwrap();
    assert_eq!(damaged.status.code(), Some(1), "{}", text(&damaged));
    let findings = json_of(&damaged)["findings"].clone();
    assert_eq!(findings.as_array().unwrap().len(), 1, "{findings}");
    assert_eq!(
        (
            findings[0]["kind"].as_str(),
            findings[0]["saga"].as_str(),
            findings[0]["step"].as_u64(),
            findings[0]["participant"].as_str()
        ),
        (Some("missing_marker"), Some("on-0"), Some(0), Some("ledger")),
        "{findings}"
    );

    #[cfg(feature = "duckdb")]
    {
        let target = dir.path().join("online.duckdb"); // named like the alias once was: DuckDB calls it `online`
        let (url3, target_arg) = (url.clone(), target.to_str().unwrap().to_owned());
        let export = tokio::task::spawn_blocking(move || {
            sagalog(&["export", "--http", &url3, "--duckdb", &target_arg], Some(ADMIN_TOKEN))
        })
        .await
        .unwrap();
        assert!(export.status.success(), "{}", text(&export));
        let conn = duckdb::Connection::open(&target).unwrap();
        let sagas: i64 = conn.query_row("SELECT count(*) FROM sagas", [], |r| r.get(0)).unwrap();
        assert!(sagas >= 5, "{sagas} sagas exported");
        let parked: String =
            conn.query_row("SELECT status FROM sagas WHERE saga_id = 'on-parked'", [], |r| r.get(0)).unwrap();
        assert_eq!(parked, "RUNNING");
    }

    // Stopped: the offline audit agrees with the online one about what both judged.
    server.shutdown().await.unwrap();
    let (data_arg, config_arg) = (data.to_str().unwrap().to_owned(), config_path.to_str().unwrap().to_owned());
    let offline = sagalog(&["audit", "--data-dir", &data_arg, "--config", &config_arg, "--json"], None);
    let offline_report = json_of(&offline);
    assert_eq!(offline.status.code(), Some(1), "only the deleted marker: {}", text(&offline));
    assert_eq!(offline_report["findings"], findings);
    assert_eq!(offline_report["markers"]["artifacts"], tools["markers"]["artifacts"]);
}

/// Sagas completed by `clients` closed-loop clients (Submit, then Watch until the end), counted
/// in `done`, until `stop` is set. Each saga runs on SQLite and the file participant.
fn load(
    addr: std::net::SocketAddr,
    clients: usize,
    done: std::sync::Arc<std::sync::atomic::AtomicU64>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> Vec<tokio::task::JoinHandle<()>> {
    use std::sync::atomic::Ordering;
    (0..clients)
        .map(|c| {
            let (done, stop) = (done.clone(), stop.clone());
            tokio::spawn(async move {
                let mut client = sagas(addr, Some(CLIENT_TOKEN)).await;
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let id = format!("load-{c}-{n}");
                    n += 1;
                    client.submit(saga(&id, 1)).await.unwrap();
                    let request = sagalog::api::pb::WatchRequest { saga_id: id.clone(), after_version: 0 };
                    let mut states = client.watch(request).await.unwrap().into_inner();
                    while let Some(state) = tokio_stream::StreamExt::next(&mut states).await {
                        if status(&state.unwrap()) == sagalog::api::pb::SagaStatus::Completed {
                            done.fetch_add(1, Ordering::Relaxed);
                            break;
                        }
                    }
                }
            })
        })
        .collect()
}

/// The online tools do not disturb a loaded server (issue 14, "online tools against a server
/// under load"): with 16 clients keeping it busy, windows in which `audit`, `export` (DuckDB
/// builds) and `wal verify` run back to back through the CLI alternate with windows in which
/// nothing else runs, and the sagas completed in the first stay above half of those completed
/// in the second. Alternating windows (three of each) keeps a neighbour test's load from
/// landing on one side only; it is a ratio within one run, not a speed. What keeps the server
/// fast is the tools' reader thread at niceness 10 and one tool read at a time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_loaded_server_keeps_over_half_its_throughput_while_the_tools_run() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    let dir = tempfile::tempdir().unwrap();
    let config = CONFIG.replace("listen = \"127.0.0.1:0\"", "listen = \"127.0.0.1:0\"\nhttp_listen = \"127.0.0.1:0\"");
    let server = start(dir.path(), &config).await;
    let url = format!("http://{}", server.metrics_addr.unwrap());
    let (done, stop) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicBool::new(false)));
    let clients = load(server.addr, 16, done.clone(), stop.clone());
    tokio::time::sleep(Duration::from_secs(2)).await; // warm up: a history for the tools to read

    const WINDOW: Duration = Duration::from_millis(2500);
    let (mut quiet, mut busy, mut tool_runs) = (0u64, 0u64, 0u32);
    for round in 0..3 {
        let before = done.load(Ordering::Relaxed);
        tokio::time::sleep(WINDOW).await;
        quiet += done.load(Ordering::Relaxed) - before;

        let before = done.load(Ordering::Relaxed);
        let until = std::time::Instant::now() + WINDOW;
        let (url, target) = (url.clone(), dir.path().join(format!("export-{round}.duckdb")));
        let runs = tokio::task::spawn_blocking(move || {
            let mut runs = 0;
            while std::time::Instant::now() < until {
                let target = target.to_str().unwrap().to_owned();
                let tools: [&[&str]; 3] = [
                    &["audit", "--http", &url, "--json"],
                    &["export", "--http", &url, "--duckdb", &target],
                    &["wal", "verify", "--http", &url, "--json"],
                ];
                for args in tools {
                    if cfg!(not(feature = "duckdb")) && args[0] == "export" {
                        continue; // a build without DuckDB cannot write the file
                    }
                    let out = sagalog(args, Some(ADMIN_TOKEN));
                    assert!(out.status.success(), "{args:?}: {}", text(&out));
                    runs += 1;
                }
            }
            runs
        })
        .await
        .unwrap();
        busy += done.load(Ordering::Relaxed) - before;
        tool_runs += runs;
    }
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.await.unwrap();
    }
    eprintln!("completed: {quiet} in the quiet windows, {busy} while {tool_runs} tool runs ran");
    assert!(tool_runs >= 6, "the tools ran {tool_runs} times");
    assert!(quiet > 100, "too little load to compare: {quiet} sagas in the quiet windows");
    assert!(
        busy * 2 > quiet,
        "throughput while the tools ran ({busy} sagas) fell below half of the quiet windows' ({quiet})"
    );

    // After the stop, the offline audit agrees: nothing the load did is inconsistent.
    server.shutdown().await.unwrap();
    let data = dir.path().join("data");
    let config_path = dir.path().join("test-config.toml");
    let offline = sagalog(
        &["audit", "--data-dir", data.to_str().unwrap(), "--config", config_path.to_str().unwrap(), "--json"],
        None,
    );
    assert!(offline.status.success(), "{}", text(&offline));
}
