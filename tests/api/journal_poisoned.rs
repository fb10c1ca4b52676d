//! A poisoned journal is visible and ends the server: after a write or fsync failure, health
//! turns NOT_SERVING within a second, `sagalog_journal_poisoned` is 1, watch streams end with
//! UNAVAILABLE naming the poisoning, `sync` and `shutdown` report it, and `sagalog serve`
//! exits non-zero at once (a restart recovers from disk). Owns the in-process check (injected
//! fsync failure) and the real full-disk check (a size-limited tmpfs under the journal, as
//! root; skipped loudly elsewhere). Never leaves a mount behind: a guard unmounts on every path.

use crate::api_support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use api_support::{CLIENT_TOKEN, CONFIG, saga, write_config};
use sagalog::api::pb;
use sagalog::journal::{Error as JournalError, IoFaults};
use sagalog::node::Node;
use tonic::Code;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::{HealthCheckRequest, health_check_response::ServingStatus};

async fn health(addr: std::net::SocketAddr) -> ServingStatus {
    let mut client = HealthClient::new(api_support::channel(addr).await);
    let response = client.check(HealthCheckRequest { service: String::new() }).await.unwrap().into_inner();
    ServingStatus::try_from(response.status).unwrap()
}

/// An injected fsync failure: health NOT_SERVING within 1 s, the gauge set, a watch on a live
/// saga ends UNAVAILABLE naming the poisoning, `sync` and the server's shutdown report it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poisoned_journal_is_not_serving_sets_the_gauge_ends_watches_and_fails_shutdown() {
    let dir = tempfile::tempdir().unwrap();
    let with_http =
        CONFIG.replace("listen = \"127.0.0.1:0\"", "listen = \"127.0.0.1:0\"\nmetrics_listen = \"127.0.0.1:0\"");
    let config = write_config(dir.path(), &with_http);
    let faults = Arc::new(IoFaults::new());
    let data = dir.path().join("data");
    let node = Node::start_with_faults(&data, Some(&config), Some(faults.clone())).await.unwrap();
    let server_config = node.catalog.config.server.clone();
    let running = sagalog::server::start(node, &data, server_config).await.unwrap();
    let mut client = api_support::sagas(running.addr, Some(CLIENT_TOKEN)).await;
    assert_eq!(health(running.addr).await, ServingStatus::Serving);

    // A live saga: step 0 waits for the ledger's write lock.
    let blocker = rusqlite::Connection::open(data.join("ledger.sqlite")).unwrap();
    blocker.execute_batch("BEGIN EXCLUSIVE").unwrap();
    client.submit(saga("watched", 1)).await.unwrap();
    let mut watch =
        client.watch(pb::WatchRequest { saga_id: "watched".into(), after_version: 0 }).await.unwrap().into_inner();
    watch.message().await.unwrap().expect("the first state");

    faults.fail_sync_in(1);
    let refused = client.submit(saga("trigger", 1)).await.unwrap_err();
    let poisoned_at = Instant::now();
    assert_eq!(refused.code(), Code::Unavailable, "{refused:?}");
    assert!(refused.message().contains("poisoned"), "{refused:?}");

    while health(running.addr).await != ServingStatus::NotServing {
        assert!(poisoned_at.elapsed() < Duration::from_secs(1), "health still SERVING 1 s after the poisoning");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let metrics = sagalog::metrics::get().encode();
    assert!(metrics.contains("sagalog_journal_poisoned 1"), "{metrics}");
    // The Kubernetes probes say so too: liveness and readiness both 503, naming the poisoning.
    let http = format!("http://{}", running.metrics_addr.expect("the HTTP port"));
    for probe in ["/healthz", "/readyz"] {
        let answer = reqwest::get(format!("{http}{probe}")).await.unwrap();
        assert_eq!(answer.status(), reqwest::StatusCode::SERVICE_UNAVAILABLE, "{probe}");
        let body = answer.text().await.unwrap();
        assert!(body.contains("poisoned"), "{probe}: {body}");
    }

    let ended = tokio::time::timeout(Duration::from_secs(3), async {
        loop {
            match watch.message().await {
                Ok(Some(_)) => continue,
                other => return other,
            }
        }
    })
    .await
    .expect("the watch of a live saga ends after the poisoning (it used to hang)");
    let status = ended.expect_err("the watch ends with an error");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(status.message().contains("poisoned"), "{status:?}");

    let synced = running.node().journal.sync().await;
    assert!(matches!(synced, Err(JournalError::Poisoned { .. })), "sync reports the poisoning: {synced:?}");
    blocker.execute_batch("ROLLBACK").unwrap();
    let stopped = running.shutdown().await;
    let message = stopped.expect_err("shutdown reports the poisoning").to_string();
    assert!(message.contains("poisoned"), "{message}");
}

/// Unmounts on drop (lazily if the mount is still busy), so no path leaves a mount behind.
struct Mount(PathBuf);

impl Drop for Mount {
    fn drop(&mut self) {
        let ok = Command::new("umount").arg(&self.0).status().is_ok_and(|s| s.success());
        if !ok {
            let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        }
    }
}

/// Kills the server on drop if a failed assertion left it running.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn mount_small_tmpfs(at: &Path) -> Result<Mount, String> {
    let uid = Command::new("id").arg("-u").output().map_err(|e| format!("cannot run id: {e}"))?;
    if String::from_utf8_lossy(&uid.stdout).trim() != "0" {
        return Err("not running as root".into());
    }
    let out = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=1m", "sagalog-full-disk"])
        .arg(at)
        .output()
        .map_err(|e| format!("cannot run mount: {e}"))?;
    if !out.status.success() {
        return Err(format!("mount failed: {}", String::from_utf8_lossy(&out.stderr).trim()));
    }
    Ok(Mount(at.to_path_buf()))
}

/// A real full disk: the journal lives on a 1 MiB tmpfs; submits fill it until a write fails
/// with ENOSPC. The `sagalog serve` process then exits non-zero within seconds with a message
/// naming the poisoning, instead of refusing every submit while looking alive; and the next
/// start on a disk with room recovers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_disk_makes_serve_exit_non_zero_naming_the_poisoning() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let journal = data.join("journal");
    std::fs::create_dir_all(&journal).unwrap();
    let mount = match mount_small_tmpfs(&journal) {
        Ok(mount) => mount,
        Err(why) => {
            api_support::skip_or_fail(&format!("full_disk_makes_serve_exit_non_zero_naming_the_poisoning: {why}"));
            return;
        }
    };
    let config = write_config(dir.path(), CONFIG);
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let stderr_path = dir.path().join("serve.stderr");
    let mut server = Server(
        Command::new(env!("CARGO_BIN_EXE_sagalog"))
            .args(["serve", "--data-dir"])
            .arg(&data)
            .arg("--config")
            .arg(&config)
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&stderr_path).unwrap())
            .spawn()
            .expect("spawn sagalog serve"),
    );
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(addr).is_err() {
        assert!(server.0.try_wait().unwrap().is_none(), "serve exited before listening");
        assert!(Instant::now() < deadline, "serve did not listen within 30 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut client = api_support::sagas(addr, Some(CLIENT_TOKEN)).await;

    let big = "x".repeat(64 * 1024);
    let mut first_refusal = None;
    for i in 0..200 {
        let mut request = saga(&format!("fill-{i}"), 1);
        request.steps[1].params.insert("report".into(), api_support::text(&big));
        match client.submit(request).await {
            Ok(_) => {}
            Err(status) => {
                first_refusal = Some((Instant::now(), status));
                break;
            }
        }
    }
    let (refused_at, status) = first_refusal.expect("a 1 MiB journal fills up within 200 sagas of 64 KiB");
    assert!(
        matches!(status.code(), Code::Unavailable | Code::Unknown | Code::Cancelled),
        "a full disk refuses the submit: {status:?}"
    );
    let exit = loop {
        if let Some(exit) = server.0.try_wait().unwrap() {
            break exit;
        }
        assert!(
            refused_at.elapsed() < Duration::from_secs(5),
            "serve still running 5 s after the disk filled (it must exit so a supervisor restarts it)"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let stderr = std::fs::read_to_string(&stderr_path).unwrap();
    assert_eq!(exit.code(), Some(2), "a poisoned journal exits 2 (an I/O error)\n{stderr}");
    assert!(stderr.contains("poisoned"), "the exit message names the poisoning:\n{stderr}");
    assert!(stderr.contains("No space left on device"), "and its cause:\n{stderr}");

    // Recovery from disk is the cure: copy the journal off the full disk and start again.
    drop(server);
    let segments: Vec<_> = std::fs::read_dir(&journal).unwrap().map(|e| e.unwrap().path()).collect();
    let copies: Vec<_> =
        segments.iter().map(|p| (p.file_name().unwrap().to_owned(), std::fs::read(p).unwrap())).collect();
    drop(mount);
    for (name, bytes) in copies {
        std::fs::write(journal.join(name), bytes).unwrap();
    }
    let node = Node::start(&data, Some(&config)).await.expect("the next start recovers from disk");
    assert!(node.recovery.sagas > 0, "the sagas journaled before the disk filled are recovered");
    let mut node = node;
    node.shutdown().await.unwrap();
}
