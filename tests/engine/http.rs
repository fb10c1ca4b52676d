//! The HTTP participant (issue 11 item 4) through the real executor and recovery, against a
//! local test service on 127.0.0.1 that counts requests by `Idempotency-Key` and applies each
//! key's effect once (answering a repeated key with its first answer): retries on 503 with
//! `Retry-After`, a 4xx that compensates, a 503 storm behind the breaker, in-doubt steps after
//! a crash re-sent by key (never settled by a lookup), compensation of a step that may have
//! been sent, outputs read by JSON Pointer, and the config errors.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response};
use sagalog::catalog::Catalog;
use sagalog::engine::record::{CancelRequested, Started, Submitted};
use sagalog::engine::{Direction, Record, SagaDefinition, Scope, Status, StepCall, StepKey, Value};
use sagalog::executor::{Executor, Snapshot};
use sagalog::journal::{Journal, Options, SyncPolicy};

/// One request the service saw.
#[derive(Debug, Clone)]
struct Seen {
    method: String,
    path: String,
    key: String,
    body: serde_json::Value,
}

/// What the test service does, and what it saw.
#[derive(Default)]
struct State {
    requests: Vec<Seen>,
    /// The first answer to each key: a repeated key gets it again, nothing is applied twice.
    answers: BTreeMap<String, (u16, String)>,
    /// Effects applied, one per key: (key, method, path).
    effects: Vec<(String, String, String)>,
    charges: u32,
    refunded: Vec<String>,
    /// The next this many requests answer 503 (not applied); the first with `Retry-After`.
    unavailable: u32,
    retry_after_s: Option<u64>,
    /// Every request (health included) answers 503 while set.
    storm: bool,
    /// Requests whose path starts with this answer this status and body (and apply nothing).
    reject: Option<(String, u16, String)>,
    /// A charge answers without its `id`.
    omit_id: bool,
    /// The first charge is applied, then answered this late.
    delay_first_ms: u64,
}

#[derive(Clone)]
struct Service {
    state: Arc<Mutex<State>>,
    base_url: String,
}

impl Service {
    async fn start() -> Service {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base_url = format!("http://{}", listener.local_addr().unwrap());
        let state = Arc::new(Mutex::new(State::default()));
        let shared = state.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let state = shared.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req| handle(state.clone(), req));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Service { state, base_url }
    }

    fn with<T>(&self, f: impl FnOnce(&mut State) -> T) -> T {
        f(&mut self.state.lock().unwrap())
    }

    /// The requests that carried `key`.
    fn requests_with(&self, key: &str) -> Vec<Seen> {
        self.with(|s| s.requests.iter().filter(|r| r.key == key).cloned().collect())
    }

    /// Effects applied under `key`.
    fn effects_of(&self, key: &str) -> usize {
        self.with(|s| s.effects.iter().filter(|(k, _, _)| k == key).count())
    }
}

fn answer(status: u16, body: &str, retry_after_s: Option<u64>) -> Response<Full<Bytes>> {
    let mut response = Response::builder().status(status).header("content-type", "application/json");
    if let Some(s) = retry_after_s {
        response = response.header("retry-after", s.to_string());
    }
    response.body(Full::new(Bytes::from(body.to_owned()))).unwrap()
}

async fn handle(state: Arc<Mutex<State>>, req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let (method, path) = (req.method().to_string(), req.uri().path().to_owned());
    let key = req.headers().get("idempotency-key").and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
    let bytes = req.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
    let body: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null);
    let (status, text, retry_after, delay_ms) = {
        let mut s = state.lock().unwrap();
        if path == "/healthz" {
            return Ok(answer(if s.storm { 503 } else { 200 }, "{}", None));
        }
        s.requests.push(Seen { method: method.clone(), path: path.clone(), key: key.clone(), body: body.clone() });
        if s.storm {
            return Ok(answer(503, "storm", None));
        }
        if s.unavailable > 0 {
            s.unavailable -= 1;
            let retry_after = s.retry_after_s.take();
            return Ok(answer(503, "busy", retry_after));
        }
        if let Some((status, text)) = s.answers.get(&key).cloned() {
            return Ok(answer(status, &text, None));
        }
        let (status, text) = match &s.reject {
            Some((prefix, status, text)) if path.starts_with(prefix.as_str()) => (*status, text.clone()),
            _ => {
                s.effects.push((key.clone(), method.clone(), path.clone()));
                if method == "POST" && path == "/charges" {
                    s.charges += 1;
                    let id = format!("ch_{}", s.charges);
                    let text = if s.omit_id {
                        serde_json::json!({ "charge": id })
                    } else {
                        serde_json::json!({ "id": id, "amount": body["amount"] })
                    };
                    (201, text.to_string())
                } else if let Some(id) = path.strip_prefix("/charges/").and_then(|p| p.strip_suffix("/refund")) {
                    s.refunded.push(id.to_owned());
                    (200, serde_json::json!({ "refunded": id }).to_string())
                } else {
                    (200, "{\"ok\": true}".to_owned())
                }
            }
        };
        s.answers.insert(key.clone(), (status, text.clone()));
        (status, text, None, std::mem::take(&mut s.delay_first_ms))
    };
    if delay_ms > 0 {
        tokio::time::sleep(Duration::from_millis(delay_ms)).await;
    }
    Ok(answer(status, &text, retry_after))
}

/// The test config: `charge` (with its refund) and `ship` on the service, every budget small.
fn config(base_url: &str, charge_attempts: u32) -> String {
    format!(
        r#"
[journal]
sync = "never"

[executor]
breaker_failures = 3
breaker_cooldown_ms = 300
breaker_successes = 1

[participants.billing]
kind = "http"
base_url = "{base_url}"
headers = {{ x-tenant = "acme" }}
timeout_ms = 2000
health = "GET /healthz"

[actions.charge]
participant = "billing"
params = {{ order_id = "text", amount_cents = "int" }}
returns = {{ charge_id = "text" }}
forward = {{ http = "POST /charges", json = {{ order = "{{order_id}}", amount = "{{amount_cents}}" }}, output = {{ charge_id = "/id" }} }}
compensate = {{ http = "POST /charges/{{output.charge_id}}/refund" }}
retry = {{ max_attempts = {charge_attempts}, initial_backoff_ms = 5, max_backoff_ms = 20, jitter = 0.0 }}
compensate_retry = {{ max_attempts = 2, initial_backoff_ms = 5, max_backoff_ms = 20, jitter = 0.0 }}
timeout_ms = 300

[actions.ship]
participant = "billing"
params = {{ order_id = "text", charge_id = "text" }}
forward = {{ http = "PUT /shipments/{{order_id}}", json = {{ charge = "{{charge_id}}", note = "order {{order_id}}" }} }}
compensate = {{ http = "DELETE /shipments/{{order_id}}" }}
retry = {{ max_attempts = 3, initial_backoff_ms = 5, max_backoff_ms = 20, jitter = 0.0 }}
"#
    )
}

fn executor(dir: &Path, config: &str) -> Executor {
    let options = Options { sync: SyncPolicy::Never, ..Options::default() };
    let journal = Journal::open_dir(dir.join("journal"), options).unwrap().journal;
    let catalog = Catalog::parse(config).unwrap();
    let participants = sagalog::participant::open_all(&catalog.config.participants, dir).unwrap();
    Executor::new(journal, Arc::new(catalog), participants)
}

fn charge(order: &str) -> StepCall {
    StepCall {
        action: "charge".into(),
        params: BTreeMap::from([
            ("order_id".into(), Value::Text(order.into())),
            ("amount_cents".into(), Value::Int(250)),
        ]),
        from: BTreeMap::new(),
    }
}

fn ship(order: &str) -> StepCall {
    StepCall {
        action: "ship".into(),
        params: BTreeMap::from([("order_id".into(), Value::Text(order.into()))]),
        from: BTreeMap::from([("charge_id".into(), "steps.0.charge_id".into())]),
    }
}

fn saga(id: &str, steps: Vec<StepCall>) -> SagaDefinition {
    SagaDefinition { id: id.into(), steps }
}

async fn settled(exec: &Executor, id: &str) -> Snapshot {
    let mut rx = exec.watch(id).unwrap();
    tokio::time::timeout(Duration::from_secs(30), rx.wait_for(|s| s.status.is_terminal() || s.status == Status::Stuck))
        .await
        .unwrap_or_else(|_| panic!("saga {id} did not settle"))
        .unwrap()
        .clone()
}

/// A crashed executor's journal: `def` submitted, step 0's forward started (attempt 1), and
/// `more` after it.
async fn crashed_journal(dir: &Path, config: &str, def: &SagaDefinition, more: &[Record]) {
    let catalog = Catalog::parse(config).unwrap();
    let mut records = vec![
        Record::SagaSubmitted(Submitted {
            saga: def.id.clone(),
            digest: def.digest(),
            steps: def.steps.clone(),
            policies: catalog.validate(def).unwrap(),
            at_ms: 1,
            actions: catalog.resolved_actions(def),
            scope: Some(Scope::draw(&Scope::draw_instance())),
        }),
        Record::StepStarted(Started {
            saga: def.id.clone(),
            step: 0,
            direction: Direction::Forward,
            attempt: 1,
            at_ms: 2,
            deadline_ms: None,
        }),
    ];
    records.extend_from_slice(more);
    let opened =
        Journal::open_dir(dir.join("journal"), Options { sync: SyncPolicy::Never, ..Options::default() }).unwrap();
    for r in &records {
        opened.journal.append(r.kind(), r.encode()).await.unwrap();
    }
    opened.journal.shutdown().await.unwrap();
}

/// The crashed process's request: it reached the service (applied), its reply was lost.
async fn sent_before_crash(dir: &Path, config: &str, def: &SagaDefinition) -> String {
    let catalog = Catalog::parse(config).unwrap();
    let participants = sagalog::participant::open_all(&catalog.config.participants, dir).unwrap();
    let (_, op) = sagalog::catalog::bind(&catalog.config.actions["charge"], &def.steps[0], Direction::Forward).unwrap();
    let key = StepKey::new(def.id.clone(), 0, Direction::Forward);
    let (_, outputs) = participants["billing"].apply_with_outputs(&key, 1, &op).await.unwrap();
    let Some(Value::Text(id)) = outputs.get("charge_id").cloned() else { panic!("{outputs:?}") };
    id
}

/// Two 503s (the first with `Retry-After: 1`), then success: one effect, three requests
/// with the same key, and the retry waited at least the second the service asked for
/// (the configured back-off alone is 5 ms).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_503_is_retried_with_the_same_key_after_retry_after_and_applied_once() {
    let service = Service::start().await;
    service.with(|s| {
        s.unavailable = 2;
        s.retry_after_s = Some(1);
    });
    let dir = tempfile::tempdir().unwrap();
    let exec = executor(dir.path(), &config(&service.base_url, 5));
    let began = Instant::now();
    exec.submit(saga("retry", vec![charge("o1")])).await.unwrap();
    let snap = settled(&exec, "retry").await;
    let elapsed = began.elapsed();
    assert_eq!(snap.status, Status::Completed, "{:?}", snap.saga);
    assert_eq!(snap.saga.steps[0].forward.total_attempts, 3);
    let requests = service.requests_with("retry/0/forward");
    assert_eq!(requests.len(), 3, "{requests:?}");
    assert_eq!(service.effects_of("retry/0/forward"), 1);
    assert_eq!(requests[0].body, serde_json::json!({ "order": "o1", "amount": 250 }), "the int stays an int");
    assert!(elapsed >= Duration::from_secs(1), "Retry-After: 1 was not honoured: {elapsed:?}");
    assert!(elapsed < Duration::from_secs(10), "{elapsed:?}");
}

/// A 4xx is permanent: the saga ends COMPENSATED with the status and the first KiB of the
/// body in its reason, the earlier step is refunded by the id it returned, and the refused
/// step (never applied) is not compensated.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_4xx_compensates_with_the_status_and_body_prefix_in_the_error() {
    let service = Service::start().await;
    let body = format!("address not deliverable: {}", "x".repeat(3000));
    service.with(|s| s.reject = Some(("/shipments/".into(), 422, body.clone())));
    let dir = tempfile::tempdir().unwrap();
    let exec = executor(dir.path(), &config(&service.base_url, 3));
    exec.submit(saga("refused", vec![charge("o2"), ship("o2")])).await.unwrap();
    let snap = settled(&exec, "refused").await;
    assert_eq!(snap.status, Status::Compensated, "{:?}", snap.saga);
    let reason = snap.saga.compensation_reason.clone().unwrap();
    assert!(reason.contains("HTTP 422 Unprocessable Entity: address not deliverable: xxx"), "{reason}");
    assert!(reason.len() < 1400, "the body is cut to its first KiB: {} bytes", reason.len());
    assert_eq!(service.requests_with("refused/1/forward").len(), 1, "a 4xx is not retried");
    assert!(snap.saga.steps[0].compensate.done && !snap.saga.steps[1].compensate.done);
    assert_eq!(service.with(|s| s.refunded.clone()), vec!["ch_1".to_owned()]);
    assert_eq!(service.requests_with("refused/1/compensate").len(), 0, "nothing to undo for the refused step");
}

/// Outputs read by JSON Pointer are journaled with the step, flow to a later step
/// (`from = steps.0.charge_id`) and to the step's own compensation (`{output.charge_id}`);
/// mixed template text stays a string.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outputs_flow_to_a_later_step_and_to_the_compensation() {
    let service = Service::start().await;
    let dir = tempfile::tempdir().unwrap();
    let exec = executor(dir.path(), &config(&service.base_url, 3));
    exec.submit(saga("flow", vec![charge("o 3"), ship("o 3")])).await.unwrap();
    let snap = settled(&exec, "flow").await;
    assert_eq!(snap.status, Status::Completed, "{:?}", snap.saga);
    assert_eq!(snap.saga.steps[0].forward.outputs.get("charge_id"), Some(&Value::Text("ch_1".into())));
    let shipped = service.requests_with("flow/1/forward");
    assert_eq!(shipped[0].path, "/shipments/o%203", "a path value is percent-encoded");
    assert_eq!(shipped[0].body, serde_json::json!({ "charge": "ch_1", "note": "order o 3" }));

    exec.cancel("flow").await.ok(); // finished: refused, changes nothing
    exec.submit(saga("flow-undo", vec![charge("o4")])).await.unwrap();
    assert_eq!(settled(&exec, "flow-undo").await.status, Status::Completed);
    // A saga that fails after the charge: the refund names the charge's own id.
    service.with(|s| s.reject = Some(("/shipments/".into(), 409, "no".into())));
    exec.submit(saga("flow-fail", vec![charge("o5"), ship("o5")])).await.unwrap();
    let snap = settled(&exec, "flow-fail").await;
    assert_eq!(snap.status, Status::Compensated, "{:?}", snap.saga);
    let refund = service.requests_with("flow-fail/0/compensate");
    assert_eq!(refund.len(), 1);
    assert_eq!((refund[0].method.as_str(), refund[0].path.as_str()), ("POST", "/charges/ch_3/refund"));
}

/// A 2xx without the declared output fails the step permanently naming the JSON Pointer.
/// The charge exists (the service answered 2xx), so the step stays uncertain: it is re-sent
/// (answered the same, by key) instead of skipped, and the saga waits STUCK for an operator
/// with the error, since the refund needs the id the answer lacks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_output_pointer_fails_permanently_naming_it_and_is_never_skipped() {
    let service = Service::start().await;
    service.with(|s| s.omit_id = true);
    let dir = tempfile::tempdir().unwrap();
    let exec = executor(dir.path(), &config(&service.base_url, 3));
    exec.submit(saga("no-id", vec![charge("o6")])).await.unwrap();
    let snap = settled(&exec, "no-id").await;
    assert_eq!(snap.status, Status::Stuck, "{:?}", snap.saga);
    let error = snap.saga.steps[0].forward.last_error.clone().unwrap();
    assert!(error.contains("no value at JSON pointer \"/id\" for output \"charge_id\""), "{error}");
    let reason = snap.saga.compensation_reason.clone().unwrap();
    assert!(reason.contains("JSON pointer \"/id\""), "{reason}");
    assert_eq!(service.effects_of("no-id/0/forward"), 1, "applied once, however often it was sent");
    assert!(service.requests_with("no-id/0/forward").len() >= 2, "re-sent to settle it, not skipped");
}

/// A 503 storm opens the breaker: sagas park (and spend no attempts while parked); once the
/// service recovers, the probe closes the breaker and every saga completes, each charge
/// applied once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_503_storm_parks_sagas_behind_the_breaker_and_recovery_completes_them_all() {
    let service = Service::start().await;
    service.with(|s| s.storm = true);
    let dir = tempfile::tempdir().unwrap();
    let exec = executor(dir.path(), &config(&service.base_url, 20));
    let ids: Vec<String> = (0..6).map(|i| format!("storm-{i}")).collect();
    for id in &ids {
        exec.submit(saga(id, vec![charge(id)])).await.unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while !ids.iter().any(|id| exec.get(id).is_some_and(|s| s.parked_on.is_some())) {
        assert!(Instant::now() < deadline, "no saga parked behind the breaker");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(Duration::from_millis(700)).await;
    for id in &ids {
        let snap = exec.get(id).unwrap();
        assert!(!snap.status.is_terminal(), "{id} ended during the storm: {:?}", snap.status);
    }
    let during = service.with(|s| s.requests.len());
    assert!(during < 6 * 20, "parked sagas kept sending: {during} requests");
    service.with(|s| s.storm = false);
    for id in &ids {
        let snap = settled(&exec, id).await;
        assert_eq!(snap.status, Status::Completed, "{id}: {:?}", snap.saga);
        assert_eq!(service.effects_of(&format!("{id}/0/forward")), 1, "{id}");
    }
    assert_eq!(service.with(|s| s.charges), 6, "no saga lost, none charged twice");
}

/// A crash after the request reached the service and before its outcome was journaled: on
/// restart the step is re-sent with the same key (never settled by a lookup, there is no
/// marker), the service answers it as the first time, the effect exists once and the
/// outputs are the first answer's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_in_doubt_step_is_re_sent_with_the_same_key_and_applied_once() {
    let service = Service::start().await;
    let config = config(&service.base_url, 3);
    let dir = tempfile::tempdir().unwrap();
    let def = saga("crashed", vec![charge("o7")]);
    crashed_journal(dir.path(), &config, &def, &[]).await;
    let charged = sent_before_crash(dir.path(), &config, &def).await;

    let exec = executor(dir.path(), &config);
    sagalog::recovery::recover(&exec, 1).await.unwrap();
    let snap = settled(&exec, "crashed").await;
    assert_eq!(snap.status, Status::Completed, "{:?}", snap.saga);
    let forward = &snap.saga.steps[0].forward;
    assert!(!forward.by_marker, "settled by re-sending, not by a marker");
    assert_eq!(forward.total_attempts, 2, "the in-doubt attempt and its re-send");
    assert_eq!(forward.outputs.get("charge_id"), Some(&Value::Text(charged)));
    assert_eq!(service.requests_with("crashed/0/forward").len(), 2, "re-sent once, same key");
    assert_eq!(service.effects_of("crashed/0/forward"), 1);
    assert_eq!(service.with(|s| s.charges), 1);
}

/// A crash with the forward step in doubt and a cancel journaled: the step is re-sent (the
/// service dedups it), then compensated with the id of that answer: the compensation is
/// sent, not skipped, and carries its own key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_compensation_after_an_in_doubt_step_is_sent_not_skipped() {
    let service = Service::start().await;
    let config = config(&service.base_url, 3);
    let dir = tempfile::tempdir().unwrap();
    let def = saga("undo", vec![charge("o8")]);
    let cancel = Record::CancelRequested(CancelRequested { saga: "undo".into(), at_ms: 3 });
    crashed_journal(dir.path(), &config, &def, &[cancel]).await;
    let charged = sent_before_crash(dir.path(), &config, &def).await;

    let exec = executor(dir.path(), &config);
    sagalog::recovery::recover(&exec, 1).await.unwrap();
    let snap = settled(&exec, "undo").await;
    assert_eq!(snap.status, Status::Compensated, "{:?}", snap.saga);
    assert!(snap.saga.steps[0].compensate.done);
    let refund = service.requests_with("undo/0/compensate");
    assert_eq!(refund.len(), 1, "{refund:?}");
    assert_eq!(refund[0].path, format!("/charges/{charged}/refund"));
    assert_eq!(service.with(|s| s.refunded.clone()), vec![charged]);
    assert_eq!(service.effects_of("undo/0/forward"), 1);
}

/// A step that timed out (the service applied it and answered too late) with no attempt
/// left: the saga compensates, and the step that may have been sent is re-sent by key and
/// refunded, never skipped as "not applied".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timed_out_step_out_of_attempts_is_compensated_not_skipped() {
    let service = Service::start().await;
    service.with(|s| s.delay_first_ms = 1000);
    let dir = tempfile::tempdir().unwrap();
    let exec = executor(dir.path(), &config(&service.base_url, 1));
    exec.submit(saga("late", vec![charge("o9")])).await.unwrap();
    let snap = settled(&exec, "late").await;
    assert_eq!(snap.status, Status::Compensated, "{:?}", snap.saga);
    assert!(snap.saga.compensation_reason.clone().unwrap().contains("timed out"), "{:?}", snap.saga);
    assert_eq!(service.effects_of("late/0/forward"), 1);
    assert_eq!(service.with(|s| s.refunded.clone()), vec!["ch_1".to_owned()]);
}

/// Opening names the participant and the variable when an `env:` header's variable is
/// missing; a bad method and an unknown template parameter are refused at load naming the
/// action and the key.
#[test]
fn config_errors_name_the_participant_action_and_key() {
    let base = config("http://127.0.0.1:9", 3);
    let text = base.replace("x-tenant = \"acme\"", "authorization = \"env:SAGALOG_HTTP_TEST_UNSET_TOKEN\"");
    let catalog = Catalog::parse(&text).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let err = sagalog::participant::open_all(&catalog.config.participants, dir.path()).err().unwrap().to_string();
    assert!(err.starts_with("billing: header \"authorization\" takes env:SAGALOG_HTTP_TEST_UNSET_TOKEN"), "{err}");
    assert!(err.contains("SAGALOG_HTTP_TEST_UNSET_TOKEN is not set"), "{err}");
    let read_only = sagalog::participant::open_all_read_only(&catalog.config.participants, dir.path()).unwrap();
    assert!(read_only.notes.iter().any(|n| n.contains("SAGALOG_HTTP_TEST_UNSET_TOKEN")), "{:?}", read_only.notes);

    let err = Catalog::parse(&base.replace("PUT /shipments", "SEND /shipments")).err().unwrap().to_string();
    assert!(err.contains("action \"ship\": forward: `http`: unknown method \"SEND\""), "{err}");
    let err = Catalog::parse(&base.replace("note = \"order {order_id}\"", "note = \"{order}\"")).err().unwrap();
    assert!(
        err.to_string()
            .contains("action \"ship\": forward: `json` at \"/note\": template {order} names an undeclared parameter"),
        "{err}"
    );
}
