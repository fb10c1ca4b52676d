//! End to end through gRPC only: a real server on a loopback port, driven by generated
//! clients. Submit, Get, Watch, List, Cancel, the Admin calls, every error code with a request
//! that triggers it, auth, Watch resuming after a reconnect, graceful shutdown, and metrics.

use crate::api_support;

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::time::Duration;

use api_support::{ADMIN_TOKEN, CLIENT_TOKEN, CONFIG, admin, saga, sagas, settled, start, status, text};
use sagalog::api::pb;
use tokio_stream::StreamExt;
use tonic::Code;

fn code<T: std::fmt::Debug>(r: Result<T, tonic::Status>) -> (Code, String) {
    let e = r.expect_err("the call should fail");
    (e.code(), e.message().to_owned())
}

/// Holds the ledger database's write lock (as a backup tool would), so steps on it wait.
fn lock_ledger(dir: &std::path::Path) -> rusqlite::Connection {
    let conn = rusqlite::Connection::open(dir.join("data/ledger.sqlite")).unwrap();
    conn.execute_batch("BEGIN EXCLUSIVE").unwrap();
    conn
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submit_get_watch_list_cancel_and_idempotent_resubmit() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path(), CONFIG).await;
    let mut client = sagas(server.addr, Some(CLIENT_TOKEN)).await;

    let reply = client.submit(saga("ok-1", 5)).await.unwrap().into_inner();
    assert!(reply.created);
    let submitted = reply.saga.unwrap();
    assert_eq!(submitted.saga_id, "ok-1");
    assert_eq!(submitted.steps.len(), 2);
    assert_eq!(submitted.steps[0].participant, "ledger");

    // Watch from the start: versions grow, the stream ends at the terminal state.
    let mut stream =
        client.watch(pb::WatchRequest { saga_id: "ok-1".into(), after_version: 0 }).await.unwrap().into_inner();
    let mut versions = Vec::new();
    let mut last = None;
    while let Some(item) = stream.next().await {
        let s = item.unwrap();
        versions.push(s.version);
        last = Some(s);
    }
    let last = last.expect("at least one state");
    assert_eq!(status(&last), pb::SagaStatus::Completed);
    assert!(versions.windows(2).all(|w| w[0] < w[1]), "versions only grow: {versions:?}");
    assert!(last.steps.iter().all(|s| s.state == pb::StepState::StepApplied as i32 && s.attempts == 1));
    assert!(dir.path().join("data/artifacts/runs/ok-1.json").exists());

    // Get after the end, and an idempotent resubmit that runs nothing again.
    let got = client.get(pb::GetRequest { saga_id: "ok-1".into() }).await.unwrap().into_inner();
    assert_eq!(status(&got), pb::SagaStatus::Completed);
    let again = client.submit(saga("ok-1", 5)).await.unwrap().into_inner();
    assert!(!again.created);
    assert_eq!(status(again.saga.as_ref().unwrap()), pb::SagaStatus::Completed);
    assert_eq!(again.saga.unwrap().steps[0].attempts, 1, "a resubmit runs nothing again");

    // A saga that fails at step 0 for good is compensated; nothing to undo there.
    client.submit(saga("bad-1", -1)).await.unwrap();
    let bad = settled(&mut client, "bad-1").await;
    assert_eq!(status(&bad), pb::SagaStatus::Compensated);
    assert_eq!(bad.steps[0].state, pb::StepState::StepFailed as i32);
    assert!(bad.steps[0].last_error.contains("CHECK"), "{}", bad.steps[0].last_error);
    assert!(bad.compensation_reason.contains("step 0"), "{}", bad.compensation_reason);

    // Cancel while a step waits on a locked database: the saga ends COMPENSATED.
    let blocker = lock_ledger(dir.path());
    client.submit(saga("cancel-1", 1)).await.unwrap();
    let cancelled = client.cancel(pb::CancelRequest { saga_id: "cancel-1".into() }).await.unwrap().into_inner();
    assert_eq!(cancelled.saga_id, "cancel-1");
    drop(blocker);
    let cancelled = settled(&mut client, "cancel-1").await;
    assert_eq!(status(&cancelled), pb::SagaStatus::Compensated);
    assert_eq!(cancelled.compensation_reason, "cancelled");
    assert!(!dir.path().join("data/artifacts/runs/cancel-1.json").exists());

    // List: everything, by status, and page by page without repeats.
    for n in 0..5 {
        client.submit(saga(&format!("page-{n}"), n)).await.unwrap();
    }
    for n in 0..5 {
        settled(&mut client, &format!("page-{n}")).await;
    }
    let all = client.list(pb::ListRequest::default()).await.unwrap().into_inner();
    let ids: BTreeSet<_> = all.sagas.iter().map(|s| s.saga_id.clone()).collect();
    assert_eq!(ids.len(), 8, "{ids:?}");
    assert!(all.next_page_token.is_empty());
    let compensated = client
        .list(pb::ListRequest { status: vec![pb::SagaStatus::Compensated as i32], ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    let ids: BTreeSet<_> = compensated.sagas.iter().map(|s| s.saga_id.as_str()).collect();
    assert_eq!(ids, BTreeSet::from(["bad-1", "cancel-1"]));
    let mut paged = Vec::new();
    let mut token = String::new();
    loop {
        let page = client
            .list(pb::ListRequest { page_size: 3, page_token: token.clone(), ..Default::default() })
            .await
            .unwrap()
            .into_inner();
        assert!(page.sagas.len() <= 3);
        paged.extend(page.sagas.into_iter().map(|s| s.saga_id));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    let unique: BTreeSet<_> = paged.iter().cloned().collect();
    assert_eq!((paged.len(), unique.len()), (8, 8), "{paged:?}");

    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_error_code_has_a_request_that_triggers_it() {
    let dir = tempfile::tempdir().unwrap();
    let config = CONFIG.replace("shutdown_grace_ms = 3000", "shutdown_grace_ms = 3000\nmax_message_bytes = 65536");
    let server = start(dir.path(), &config).await;
    let mut client = sagas(server.addr, Some(CLIENT_TOKEN)).await;

    // INVALID_ARGUMENT names the step and the parameter.
    let mut unknown = saga("inv-1", 1);
    unknown.steps[1].action = "launch_rockets".into();
    let (c, m) = code(client.submit(unknown).await);
    assert_eq!(c, Code::InvalidArgument);
    assert!(m.contains("step 1") && m.contains("launch_rockets"), "{m}");
    let mut mistyped = saga("inv-2", 1);
    mistyped.steps[0].params.insert("rows".into(), text("many"));
    let (c, m) = code(client.submit(mistyped).await);
    assert_eq!(c, Code::InvalidArgument);
    assert!(m.contains("step 0") && m.contains("\"rows\"") && m.contains("int"), "{m}");
    let mut untyped = saga("inv-3", 1);
    untyped.steps[0].params.insert("rows".into(), pb::Value { kind: None });
    let (c, m) = code(client.submit(untyped).await);
    assert_eq!(c, Code::InvalidArgument);
    assert!(m.contains("step 0") && m.contains("\"rows\""), "{m}");
    let mut extra = saga("inv-4", 1);
    extra.steps[0].params.insert("color".into(), text("red"));
    assert!(code(client.submit(extra).await).1.contains("\"color\""));
    assert_eq!(code(client.submit(saga("", 1)).await).0, Code::InvalidArgument);
    assert_eq!(
        code(client.submit(pb::SubmitRequest { saga_id: "no-steps".into(), steps: vec![] }).await).0,
        Code::InvalidArgument
    );
    assert_eq!(code(client.get(pb::GetRequest { saga_id: String::new() }).await).0, Code::InvalidArgument);
    let (c, m) = code(client.list(pb::ListRequest { page_size: 5000, ..Default::default() }).await);
    assert!(c == Code::InvalidArgument && m.contains("page_size"), "{m}");
    let (c, _) = code(client.list(pb::ListRequest { page_token: "forged".into(), ..Default::default() }).await);
    assert_eq!(c, Code::InvalidArgument);
    let (c, _) = code(client.list(pb::ListRequest { page_token: "done:zz".into(), ..Default::default() }).await);
    assert_eq!(c, Code::InvalidArgument);
    let (c, _) = code(client.list(pb::ListRequest { status: vec![42], ..Default::default() }).await);
    assert_eq!(c, Code::InvalidArgument);

    // ALREADY_EXISTS: same id, different definition.
    client.submit(saga("dup", 1)).await.unwrap();
    let (c, m) = code(client.submit(saga("dup", 2)).await);
    assert!(c == Code::AlreadyExists && m.contains("dup"), "{m}");

    // NOT_FOUND.
    assert_eq!(code(client.get(pb::GetRequest { saga_id: "nope".into() }).await).0, Code::NotFound);
    assert_eq!(code(client.cancel(pb::CancelRequest { saga_id: "nope".into() }).await).0, Code::NotFound);
    let mut ops = admin(server.addr, Some(ADMIN_TOKEN)).await;
    let (c, m) = code(ops.reset_breaker(pb::ResetBreakerRequest { participant: "mainframe".into() }).await);
    assert!(c == Code::NotFound && m.contains("mainframe"), "{m}");

    // FAILED_PRECONDITION: cancel or resolve a finished saga.
    settled(&mut client, "dup").await;
    let (c, m) = code(client.cancel(pb::CancelRequest { saga_id: "dup".into() }).await);
    assert!(c == Code::FailedPrecondition && m.contains("COMPLETED"), "{m}");
    let resolve = pb::ResolveRequest {
        saga_id: "dup".into(),
        decision: pb::ResolveDecision::RetryCompensation as i32,
        operator: String::new(),
    };
    assert_eq!(code(ops.resolve(resolve).await).0, Code::FailedPrecondition);
    let no_decision = pb::ResolveRequest { saga_id: "dup".into(), decision: 0, operator: String::new() };
    assert_eq!(code(ops.resolve(no_decision).await).0, Code::InvalidArgument);

    // UNAUTHENTICATED and PERMISSION_DENIED.
    let mut anonymous = sagas(server.addr, None).await;
    let (c, m) = code(anonymous.get(pb::GetRequest { saga_id: "dup".into() }).await);
    assert!(c == Code::Unauthenticated && m.contains("token"), "{m}");
    let mut wrong = sagas(server.addr, Some("not-a-known-token-at-all")).await;
    assert_eq!(code(wrong.get(pb::GetRequest { saga_id: "dup".into() }).await).0, Code::Unauthenticated);
    let mut client_on_admin = admin(server.addr, Some(CLIENT_TOKEN)).await;
    let (c, m) = code(client_on_admin.stats(pb::StatsRequest {}).await);
    assert!(c == Code::PermissionDenied && m.contains("admin"), "{m}");
    // The admin token may use the Sagas service too.
    let mut admin_on_sagas = sagas(server.addr, Some(ADMIN_TOKEN)).await;
    admin_on_sagas.get(pb::GetRequest { saga_id: "dup".into() }).await.unwrap();

    // OUT_OF_RANGE: a message over the size limit.
    let mut huge = saga("huge", 1);
    huge.steps[1].params.insert("report".into(), text(&"x".repeat(100_000)));
    let (c, m) = code(client.submit(huge).await);
    assert!(c == Code::OutOfRange && m.contains("65536"), "{c:?} {m}");
    // RESOURCE_EXHAUSTED: more submits at once than the server journals concurrently.
    server.shutdown().await.unwrap();
    let config = config.replace("max_message_bytes = 65536", "max_message_bytes = 65536\nmax_pending_submits = 1");
    let server = start(dir.path(), &config).await;
    let client = sagas(server.addr, Some(CLIENT_TOKEN)).await;
    let mut calls = Vec::new();
    for n in 0..200 {
        let mut c = client.clone();
        calls.push(tokio::spawn(async move { c.submit(saga(&format!("burst-{n}"), n)).await }));
    }
    let (mut accepted, mut exhausted) = (Vec::new(), 0);
    for (n, call) in calls.into_iter().enumerate() {
        match call.await.unwrap() {
            Ok(_) => accepted.push(format!("burst-{n}")),
            Err(e) if e.code() == Code::ResourceExhausted => {
                assert!(e.message().contains("retry"), "{}", e.message());
                exhausted += 1
            }
            Err(e) => panic!("unexpected {e:?}"),
        }
    }
    assert!(exhausted > 0, "200 concurrent submits against max_pending_submits = 1 were all accepted");
    let mut client = client;
    for id in &accepted {
        assert_eq!(status(&settled(&mut client, id).await), pb::SagaStatus::Completed, "{id}");
    }

    // UNAVAILABLE: submits while the server shuts down (a step holds the drain open).
    let blocker = lock_ledger(dir.path());
    client.submit(saga("during-shutdown", 1)).await.unwrap();
    let mut watch = client
        .watch(pb::WatchRequest { saga_id: "during-shutdown".into(), after_version: 0 })
        .await
        .unwrap()
        .into_inner();
    watch.next().await.unwrap().unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let stopping = tokio::spawn(server.shutdown());
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (c, m) = code(client.submit(saga("too-late", 1)).await);
    assert!(c == Code::Unavailable && m.contains("shutting down"), "{c:?} {m}");
    let mut ended = None;
    while let Some(item) = watch.next().await {
        if let Err(e) = item {
            ended = Some(e);
        }
    }
    let ended = ended.expect("the watch stream ends with an error");
    assert_eq!(ended.code(), Code::Unavailable);
    assert!(ended.message().contains("after_version"), "{}", ended.message());
    drop(blocker);
    stopping.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_resumes_after_a_reconnect_without_missing_a_change() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path(), CONFIG).await;
    let mut client = sagas(server.addr, Some(CLIENT_TOKEN)).await;
    let blocker = lock_ledger(dir.path());
    client.submit(saga("w-1", 3)).await.unwrap();
    let mut first =
        client.watch(pb::WatchRequest { saga_id: "w-1".into(), after_version: 0 }).await.unwrap().into_inner();
    let seen = first.next().await.unwrap().unwrap();
    assert!(!matches!(status(&seen), pb::SagaStatus::Completed | pb::SagaStatus::Compensated));
    drop(first); // the client loses its connection

    drop(blocker);
    tokio::time::sleep(Duration::from_millis(50)).await;
    let mut resumed = client
        .watch(pb::WatchRequest { saga_id: "w-1".into(), after_version: seen.version })
        .await
        .unwrap()
        .into_inner();
    let mut states = Vec::new();
    while let Some(item) = resumed.next().await {
        states.push(item.unwrap());
    }
    assert!(!states.is_empty());
    assert!(states.iter().all(|s| s.version > seen.version), "nothing at or before the resume point");
    assert!(states.windows(2).all(|w| w[0].version < w[1].version));
    let last = states.last().unwrap();
    assert_eq!(status(last), pb::SagaStatus::Completed);

    // Resuming from the final version of a finished saga sends nothing and ends.
    let mut after_end = client
        .watch(pb::WatchRequest { saga_id: "w-1".into(), after_version: last.version })
        .await
        .unwrap()
        .into_inner();
    assert!(after_end.next().await.is_none());
    // A watcher that starts after the saga finished gets its final state.
    let mut late =
        client.watch(pb::WatchRequest { saga_id: "w-1".into(), after_version: 0 }).await.unwrap().into_inner();
    assert_eq!(late.next().await.unwrap().unwrap().version, last.version);
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_calls_report_participants_stats_and_recover() {
    let dir = tempfile::tempdir().unwrap();
    let config =
        CONFIG.replace("listen = \"127.0.0.1:0\"", "listen = \"127.0.0.1:0\"\nmetrics_listen = \"127.0.0.1:0\"");
    let server = start(dir.path(), &config).await;
    let mut client = sagas(server.addr, Some(CLIENT_TOKEN)).await;
    let mut ops = admin(server.addr, Some(ADMIN_TOKEN)).await;
    for n in 0..3 {
        client.submit(saga(&format!("a-{n}"), n)).await.unwrap();
    }
    client.submit(saga("a-bad", -5)).await.unwrap();
    for id in ["a-0", "a-1", "a-2", "a-bad"] {
        settled(&mut client, id).await;
    }

    let participants = ops.participants(pb::ParticipantsRequest {}).await.unwrap().into_inner().participants;
    let names: Vec<_> = participants.iter().map(|p| (p.name.as_str(), p.kind.as_str(), p.healthy)).collect();
    assert_eq!(names, vec![("artifacts", "fs", true), ("ledger", "sqlite", true)]);
    let ledger = participants.iter().find(|p| p.name == "ledger").unwrap();
    assert_eq!(ledger.breaker_state, "closed");
    assert!(ledger.calls_succeeded >= 3 && ledger.calls_failed >= 1, "{ledger:?}");

    let stats = ops.stats(pb::StatsRequest {}).await.unwrap().into_inner();
    assert_eq!(stats.sagas_by_status.get("COMPLETED"), Some(&3), "{:?}", stats.sagas_by_status);
    assert_eq!(stats.sagas_by_status.get("COMPENSATED"), Some(&1));
    assert!(stats.journal_lsn > 0 && stats.journal_bytes > 0);
    assert!(stats.recoveries >= 1);
    assert!(stats.step_latency.iter().any(|l| l.participant == "ledger" && l.calls >= 4 && l.p50_ms > 0.0));
    assert_eq!(stats.limits.unwrap().max_pending_submits, 1024);

    let reset = ops.reset_breaker(pb::ResetBreakerRequest { participant: "ledger".into() }).await.unwrap();
    assert_eq!(reset.into_inner().previous_state, "closed");
    let recovered = ops.recover(pb::RecoverRequest {}).await.unwrap().into_inner();
    assert_eq!(recovered.restarted, 0, "every unfinished saga already has a task");

    // Prometheus text exposition.
    let addr = server.metrics_addr.expect("metrics address");
    let body = tokio::task::spawn_blocking(move || {
        let mut conn = std::net::TcpStream::connect(addr).unwrap();
        conn.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").unwrap();
        let mut body = String::new();
        conn.read_to_string(&mut body).unwrap();
        body
    })
    .await
    .unwrap();
    assert!(body.starts_with("HTTP/1.1 200"), "{body}");
    for family in [
        "sagalog_step_duration_seconds_bucket{",
        "sagalog_step_attempts_total{participant=\"ledger\",direction=\"forward\",result=\"permanent\"}",
        "sagalog_journal_fsync_seconds_count",
        "sagalog_journal_batch_records_count",
        "sagalog_breaker_state{participant=\"ledger\"} 0",
        "sagalog_sagas{status=\"RUNNING\"}",
        "sagalog_recovery_duration_seconds",
        // Finished sagas count, archived or not (it read 0 once they left memory).
        "sagalog_sagas{status=\"COMPLETED\"} 3",
        "sagalog_sagas{status=\"COMPENSATED\"} 1",
    ] {
        assert!(body.contains(family), "missing {family}");
    }
    server.shutdown().await.unwrap();
}

/// One client, one one-step saga at a time: Submit, then Watch until COMPLETED, 50 times. Without
/// `TCP_NODELAY` on the server's accepted sockets, Nagle's algorithm holds each response's
/// last small write until the client's delayed ACK (~40 ms on Linux), so every sample pays
/// the stall; with it the round trip is a few milliseconds. The journal runs `sync = "never"`
/// and the participant is in memory so that the figure is the transport's, not the disk's.
/// A correctness check (the stall is in every sample), not a benchmark.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sequential_submit_and_watch_round_trips_take_no_nagle_stall() {
    const NOOP: &str = r#"
[journal]
sync = "never"

[server]
listen = "127.0.0.1:0"
anonymous = "client"

[participants.mem]
kind = "memory"

[actions.noop]
participant = "mem"
params = { n = "int" }
forward = { sql = "do", args = ["n"] }
compensate = { sql = "undo", args = ["n"] }
"#;
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path(), NOOP).await;
    let mut client = sagas(server.addr, None).await;
    let step = |n: i64| pb::Step { action: "noop".into(), params: [("n".to_owned(), api_support::int(n))].into() };
    let mut samples = Vec::new();
    for round in 0..50 {
        let started = std::time::Instant::now();
        let id = format!("rt-{round}");
        client.submit(pb::SubmitRequest { saga_id: id.clone(), steps: vec![step(round)] }).await.unwrap();
        let mut stream = client.watch(pb::WatchRequest { saga_id: id, after_version: 0 }).await.unwrap().into_inner();
        let mut last = None;
        while let Some(item) = stream.next().await {
            last = Some(item.unwrap());
        }
        assert_eq!(status(&last.expect("a state")), pb::SagaStatus::Completed);
        samples.push(started.elapsed());
    }
    samples.sort();
    let p50 = samples[samples.len() / 2];
    // The stall's signature: before the fix 21–25 of 50 samples took 40–56 ms, the rest
    // 3–13 ms (debug build, 2 busy cores); after it 0 reach 35 ms on an idle machine and up to
    // 5 under a load average of 9 (CPU starvation, not Nagle). The p50 bound is loose because a
    // debug build sharing 2 cores with the other tests gives a p50 of 3–7 ms.
    let stalled = samples.iter().filter(|s| **s >= Duration::from_millis(35)).count();
    assert!(stalled < 15, "{stalled} of 50 round trips took >= 35 ms (Nagle + delayed ACK): {samples:?}");
    assert!(p50 < Duration::from_millis(20), "p50 {p50:?}: {samples:?}");
    server.shutdown().await.unwrap();
}

/// Issue 11 item 1 through gRPC: a step's `from` value takes an earlier step's output, `Get`
/// shows each step's outputs, and a reference that does not resolve answers INVALID_ARGUMENT
/// naming the step and the parameter, before anything is journaled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outputs_flow_between_steps_and_bad_references_are_invalid_arguments() {
    let dir = tempfile::tempdir().unwrap();
    let config = CONFIG.to_owned()
        + r#"
[actions.open_batch]
participant = "ledger"
params = { run_id = "text" }
returns = { batch = "int" }
forward = { sql = "INSERT INTO executions (run_id, rows) VALUES (?1, 0) RETURNING rowid AS batch", args = ["run_id"] }
compensate = { sql = "DELETE FROM executions WHERE rowid = ?1", args = ["output.batch"] }
"#;
    let running = start(dir.path(), &config).await;
    let mut client = sagas(running.addr, Some("client-token-for-tests-0001")).await;
    let from = |reference: &str| pb::Value { kind: Some(pb::value::Kind::From(reference.to_owned())) };
    let open = pb::Step { action: "open_batch".into(), params: [("run_id".to_owned(), text("outputs-1"))].into() };
    let record = |rows: pb::Value| pb::Step {
        action: "record_execution".into(),
        params: [("run_id".to_owned(), text("outputs-1-rec")), ("rows".to_owned(), rows)].into(),
    };
    let request =
        pb::SubmitRequest { saga_id: "outputs-1".into(), steps: vec![open.clone(), record(from("steps.0.batch"))] };
    client.submit(request).await.unwrap();
    let saga = settled(&mut client, "outputs-1").await;
    assert_eq!(status(&saga), pb::SagaStatus::Completed, "{saga:?}");
    let batch = saga.steps[0].outputs.get("batch").cloned().unwrap_or_else(|| panic!("no outputs: {saga:?}"));
    assert!(matches!(batch.kind, Some(pb::value::Kind::Int(n)) if n > 0), "{batch:?}");
    assert!(saga.steps[1].outputs.is_empty());

    for (reference, expected) in [
        (
            "steps.0.nope",
            "step 1 (record_execution): parameter \"rows\" takes \"steps.0.nope\": step 0 (open_batch) returns no output \"nope\"",
        ),
        ("steps.1.batch", "step 1 is not an earlier step"),
        ("batch", "a reference has the form steps.N.name"),
    ] {
        let request =
            pb::SubmitRequest { saga_id: "outputs-2".into(), steps: vec![open.clone(), record(from(reference))] };
        let (code, message) = code(client.submit(request).await);
        assert_eq!(code, Code::InvalidArgument, "{reference}: {message}");
        assert!(message.contains(expected), "{reference}: {message}");
    }
    let missing = client.get(pb::GetRequest { saga_id: "outputs-2".into() }).await;
    assert_eq!(missing.unwrap_err().code(), Code::NotFound, "a refused submit journals nothing");
    running.shutdown().await.unwrap();
}

/// Issue 11 item 6 through gRPC: `ListActions` returns the catalog (participant, parameter and
/// output types); a submit with a typo'd action or parameter answers INVALID_ARGUMENT with
/// the closest known name, and every problem of the saga in one answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_actions_and_did_you_mean_through_the_server() {
    let dir = tempfile::tempdir().unwrap();
    let running = start(dir.path(), CONFIG).await;
    let mut client = sagas(running.addr, Some(CLIENT_TOKEN)).await;
    let actions = client.list_actions(pb::ListActionsRequest {}).await.unwrap().into_inner().actions;
    let names: Vec<&str> = actions.iter().map(|a| a.name.as_str()).collect();
    assert_eq!(names, ["record_execution", "write_artifact"]);
    let record = &actions[0];
    assert_eq!((record.participant.as_str(), record.participant_kind.as_str()), ("ledger", "sqlite"));
    assert_eq!(record.params.get("rows").map(String::as_str), Some("int"));
    assert_eq!(record.params.get("run_id").map(String::as_str), Some("text"));

    let mut bad = saga("typos", 1);
    bad.steps[0].action = "record_executon".into();
    let report = bad.steps[1].params.remove("report").unwrap();
    bad.steps[1].params.insert("reprot".into(), report);
    let (code, message) = code(client.submit(bad).await);
    assert_eq!(code, Code::InvalidArgument, "{message}");
    assert!(message.starts_with("3 problems: "), "{message}");
    for expected in [
        "step 0: unknown action \"record_executon\" (did you mean \"record_execution\"?)",
        "step 1 (write_artifact): missing parameter \"report\" (text)",
        "step 1 (write_artifact): unexpected parameter \"reprot\" (did you mean \"report\"?)",
    ] {
        assert!(message.contains(expected), "{expected:?} not in {message}");
    }
    running.shutdown().await.unwrap();
}

/// A participant that cannot be reached makes the server degraded, not down: its health
/// service `sagalog.participant.<name>` answers NOT_SERVING within moments of the start while
/// the server (`""`) and the reachable participants stay SERVING, and a saga on the reachable
/// participants still completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_participant_is_reported_degraded_in_health() {
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

    let dir = tempfile::tempdir().unwrap();
    // Port 1 on loopback: nothing listens there, so every connection is refused.
    let config = format!(
        "{CONFIG}\n[participants.payments]\nkind = \"postgres\"\nurl = \"host=127.0.0.1 port=1 user=postgres dbname=test connect_timeout=2\"\n"
    );
    let server = start(dir.path(), &config).await;
    let mut health = HealthClient::new(api_support::channel(server.addr).await);
    let mut check = async |service: &str| {
        let request = HealthCheckRequest { service: service.into() };
        health.check(request).await.map(|r| r.into_inner().status)
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let payments = check("sagalog.participant.payments").await;
        if payments.as_ref().is_ok_and(|s| *s == ServingStatus::NotServing as i32) {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "payments never reported NOT_SERVING: {payments:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for service in ["", "sagalog.participant.ledger", "sagalog.participant.artifacts"] {
        assert_eq!(check(service).await.unwrap(), ServingStatus::Serving as i32, "{service:?}");
    }
    let mut client = sagas(server.addr, Some(CLIENT_TOKEN)).await;
    client.submit(saga("degraded-1", 3)).await.unwrap();
    assert_eq!(status(&settled(&mut client, "degraded-1").await), pb::SagaStatus::Completed);
    server.shutdown().await.unwrap();
}
