//! The real `sagalog serve` process, killed with SIGKILL while a saga is mid-step and started
//! again: `Get` then reports the saga finished, with its effect applied exactly once.

use crate::api_support;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use api_support::{CLIENT_TOKEN, CONFIG, saga, settled, status, write_config};
use sagalog::api::pb;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn serve(dir: &std::path::Path, port: u16) -> Child {
    let config = write_config(dir, CONFIG);
    Command::new(env!("CARGO_BIN_EXE_sagalog"))
        .args(["serve", "--data-dir"])
        .arg(dir.join("data"))
        .arg("--config")
        .arg(config)
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn sagalog serve")
}

async fn connect(port: u16) -> api_support::Sagas {
    let addr = format!("127.0.0.1:{port}").parse().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if std::net::TcpStream::connect(addr).is_ok() {
            return api_support::sagas(addr, Some(CLIENT_TOKEN)).await;
        }
        assert!(Instant::now() < deadline, "server did not listen on {addr} within 30 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_mid_saga_and_restarted_the_saga_finishes_and_get_reports_it() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut server = serve(dir.path(), port);
    let mut client = connect(port).await;

    // Hold the ledger's write lock so step 0 is in flight (journaled, waiting) when we kill.
    let blocker = rusqlite::Connection::open(dir.path().join("data/ledger.sqlite")).unwrap();
    blocker.execute_batch("BEGIN EXCLUSIVE").unwrap();
    client.submit(saga("survivor", 3)).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let s = client.get(pb::GetRequest { saga_id: "survivor".into() }).await.unwrap().into_inner();
        if s.steps[0].attempts >= 1 {
            break;
        }
        assert!(Instant::now() < deadline, "step 0 never started");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    server.kill().unwrap(); // SIGKILL
    server.wait().unwrap();
    blocker.execute_batch("ROLLBACK").unwrap();
    drop(blocker);

    let port = free_port();
    let mut server = serve(dir.path(), port);
    let mut client = connect(port).await;
    let finished = settled(&mut client, "survivor").await;
    assert_eq!(status(&finished), pb::SagaStatus::Completed);
    assert!(finished.recovery_count >= 1, "the restart's recovery found it unfinished");
    let rows: i64 = rusqlite::Connection::open(dir.path().join("data/ledger.sqlite"))
        .unwrap()
        .query_row("SELECT count(*) FROM executions WHERE run_id = 'survivor'", [], |r| r.get(0))
        .unwrap();
    assert_eq!(rows, 1, "applied exactly once");
    assert!(dir.path().join("data/artifacts/runs/survivor.json").exists());

    // SIGTERM: a graceful stop exits 0.
    let pid = server.id().to_string();
    assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    let deadline = Instant::now() + Duration::from_secs(30);
    let exit = loop {
        if let Some(exit) = server.try_wait().unwrap() {
            break exit;
        }
        assert!(Instant::now() < deadline, "no exit within 30 s of SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(exit.success(), "graceful shutdown exits 0, got {exit:?}");
}

/// SIGTERM waits for the step in flight (up to the grace period); a second SIGTERM exits at
/// once with status 1, and the next start finishes the saga.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_sigterm_exits_at_once_and_recovery_finishes_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut server = serve(dir.path(), port);
    let mut client = connect(port).await;
    let blocker = rusqlite::Connection::open(dir.path().join("data/ledger.sqlite")).unwrap();
    blocker.execute_batch("BEGIN EXCLUSIVE").unwrap();
    client.submit(saga("interrupted", 2)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;

    let pid = server.id().to_string();
    assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(server.try_wait().unwrap().is_none(), "the first SIGTERM waits for the step in flight");
    let second = Instant::now();
    assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    let exit = loop {
        if let Some(exit) = server.try_wait().unwrap() {
            break exit;
        }
        assert!(second.elapsed() < Duration::from_secs(2), "the second SIGTERM did not exit at once");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(exit.code(), Some(1));
    blocker.execute_batch("ROLLBACK").unwrap();
    drop(blocker);

    let port = free_port();
    let mut server = serve(dir.path(), port);
    let mut client = connect(port).await;
    assert_eq!(status(&settled(&mut client, "interrupted").await), pb::SagaStatus::Completed);
    server.kill().unwrap();
    server.wait().unwrap();
}

/// Issue 11 item 7: `serve` runs `config check`'s participant checks at start without being
/// stopped by them: a statement that does not prepare is logged with its action, direction
/// and root cause, and the server serves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_statement_that_does_not_prepare_is_logged_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let broken = CONFIG.replacen("INSERT INTO executions (run_id, rows)", "INSERT INTO executons (run_id, rows)", 1);
    assert_ne!(broken, CONFIG);
    let config = write_config(dir.path(), &broken);
    let port = free_port();
    let log = dir.path().join("serve.log");
    let mut child = Command::new(env!("CARGO_BIN_EXE_sagalog"))
        .args(["serve", "--data-dir"])
        .arg(dir.path().join("data"))
        .arg("--config")
        .arg(config)
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .expect("spawn sagalog serve");
    let _client = connect(port).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    let text = loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if text.contains("statement does not prepare") || Instant::now() > deadline {
            break text;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(text.contains("statement does not prepare"), "{text}");
    assert!(
        text.contains("record_execution") && text.contains("forward") && text.contains("no such table: executons"),
        "{text}"
    );
}
