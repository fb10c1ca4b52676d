//! The HTTP/JSON API on the server's HTTP port, end to end: every route, the error bodies with
//! their gRPC code names and HTTP statuses, the roles, Server-Sent Events resumed with
//! `Last-Event-ID`, the probes, the OpenAPI document, and `/metrics` in both formats checked
//! by `promtool` (issue 14 items 1 and 5).

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value as Json, json};

use super::api_support::*;
use sagalog::api::pb;

/// The test config with the HTTP port on, and a delay action for sagas that take a while.
fn config() -> String {
    CONFIG.replace("listen = \"127.0.0.1:0\"", "listen = \"127.0.0.1:0\"\nmetrics_listen = \"127.0.0.1:0\"")
        + "\n[actions.pause]\ndelay_ms = \"param\"\nparams = { delay_ms = \"int\" }\n"
}

fn saga_body(run_id: &str, rows: i64) -> Json {
    json!({"steps": [
        {"action": "record_execution", "params": {"run_id": run_id, "rows": rows}},
        {"action": "write_artifact", "params": {"run_id": run_id, "report": "{}"}},
    ]})
}

struct Http {
    base: String,
    client: reqwest::Client,
}

impl Http {
    fn new(addr: std::net::SocketAddr) -> Http {
        Http { base: format!("http://{addr}"), client: reqwest::Client::new() }
    }

    async fn call(&self, method: &str, path: &str, token: Option<&str>, body: Option<&Json>) -> (StatusCode, Json) {
        let (status, _, text) = self.raw(method, path, token, body.map(|b| b.to_string()), &[]).await;
        let json = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{method} {path}: not JSON ({e}): {text}"));
        (status, json)
    }

    async fn raw(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<String>,
        headers: &[(&str, &str)],
    ) -> (StatusCode, reqwest::header::HeaderMap, String) {
        let mut request = self.client.request(method.parse().unwrap(), format!("{}{path}", self.base));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.header("content-type", "application/json").body(body);
        }
        for (k, v) in headers {
            request = request.header(*k, *v);
        }
        let response = request.send().await.unwrap();
        let (status, headers) = (response.status(), response.headers().clone());
        (status, headers, response.text().await.unwrap())
    }

    async fn settled(&self, id: &str) -> Json {
        for _ in 0..500 {
            let (status, saga) = self.call("GET", &format!("/v1/sagas/{id}"), Some(CLIENT_TOKEN), None).await;
            assert_eq!(status, StatusCode::OK, "{saga}");
            if ["COMPLETED", "COMPENSATED", "STUCK"].contains(&saga["status"].as_str().unwrap()) {
                return saga;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("saga {id} did not settle");
    }
}

/// An error answer: the HTTP status, and the body naming the gRPC code.
fn assert_error(answer: &(StatusCode, Json), http: StatusCode, code: &str) -> String {
    let (status, body) = answer;
    assert_eq!(*status, http, "{body}");
    assert_eq!(body["error"]["status"], code, "{body}");
    assert_eq!(body["error"]["code"], http.as_u16(), "{body}");
    body["error"]["message"].as_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_answers_json_with_grpc_codes_and_roles() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path(), &config()).await;
    let http = Http::new(server.metrics_addr.expect("the HTTP port"));
    let mut grpc = sagas(server.addr, Some(CLIENT_TOKEN)).await;

    // Submit: the Idempotency-Key is the id; 201 with Location, then 200 for the same saga.
    let body = saga_body("h-1", 3).to_string();
    let key = [("idempotency-key", "h-1")];
    let (status, headers, text) = http.raw("POST", "/v1/sagas", Some(CLIENT_TOKEN), Some(body.clone()), &key).await;
    assert_eq!(status, StatusCode::CREATED, "{text}");
    assert_eq!(headers["location"], "/v1/sagas/h-1");
    let created: Json = serde_json::from_str(&text).unwrap();
    assert_eq!((created["saga_id"].as_str(), created["created"].as_bool()), (Some("h-1"), Some(true)));
    let (status, _, text) = http.raw("POST", "/v1/sagas", Some(CLIENT_TOKEN), Some(body), &key).await;
    assert_eq!(status, StatusCode::OK, "{text}");
    assert_eq!(serde_json::from_str::<Json>(&text).unwrap()["created"], false);
    // The same id for a different saga: ALREADY_EXISTS, 409.
    let other = saga_body("h-other", 1).to_string();
    let answer = http.raw("POST", "/v1/sagas", Some(CLIENT_TOKEN), Some(other), &key).await;
    assert_error(&(answer.0, serde_json::from_str(&answer.2).unwrap()), StatusCode::CONFLICT, "ALREADY_EXISTS");
    // The id from the body's saga_id; a key that disagrees is refused.
    let mut with_id = saga_body("h-2", 2);
    with_id["saga_id"] = "h-2".into();
    let (status, saga) = http.call("POST", "/v1/sagas", Some(CLIENT_TOKEN), Some(&with_id)).await;
    assert_eq!((status, saga["saga_id"].as_str()), (StatusCode::CREATED, Some("h-2")));
    let answer = http.raw("POST", "/v1/sagas", Some(CLIENT_TOKEN), Some(with_id.to_string()), &key).await;
    let message = assert_error(
        &(answer.0, serde_json::from_str(&answer.2).unwrap()),
        StatusCode::BAD_REQUEST,
        "INVALID_ARGUMENT",
    );
    assert!(message.contains("Idempotency-Key") && message.contains("differ"), "{message}");
    // Neither: an id is generated.
    let (status, saga) = http.call("POST", "/v1/sagas", Some(CLIENT_TOKEN), Some(&saga_body("h-3", 1))).await;
    assert_eq!(status, StatusCode::CREATED);
    assert!(saga["saga_id"].as_str().unwrap().starts_with("saga-"), "{saga}");
    // Bad bodies name what is wrong and where.
    let answer = http.raw("POST", "/v1/sagas", Some(CLIENT_TOKEN), Some("{\"steps\": [".into()), &[]).await;
    let message = assert_error(
        &(answer.0, serde_json::from_str(&answer.2).unwrap()),
        StatusCode::BAD_REQUEST,
        "INVALID_ARGUMENT",
    );
    assert!(message.starts_with("request body: invalid JSON at line 1"), "{message}");
    let bad_param = json!({"saga_id": "h-bad", "steps": [{"action": "record_execution", "params": {"run_id": 5}}]});
    let message = assert_error(
        &http.call("POST", "/v1/sagas", Some(CLIENT_TOKEN), Some(&bad_param)).await,
        StatusCode::BAD_REQUEST,
        "INVALID_ARGUMENT",
    );
    assert!(message.contains("run_id"), "{message}");

    // Get, and the same messages as gRPC for the same mistakes.
    let done = http.settled("h-1").await;
    assert_eq!(done["status"], "COMPLETED");
    assert_eq!(done["steps"][0]["state"], "APPLIED");
    assert_eq!(done["steps"].as_array().unwrap().len(), 2);
    let missing = assert_error(
        &http.call("GET", "/v1/sagas/nope", Some(CLIENT_TOKEN), None).await,
        StatusCode::NOT_FOUND,
        "NOT_FOUND",
    );
    let grpc_missing = grpc.get(pb::GetRequest { saga_id: "nope".into() }).await.unwrap_err();
    assert_eq!(missing, grpc_missing.message());
    assert_error(
        &http.call("GET", "/v1/sagas/%20bad%20id", Some(CLIENT_TOKEN), None).await,
        StatusCode::BAD_REQUEST,
        "INVALID_ARGUMENT",
    );
    let message = assert_error(
        &http.call("POST", "/v1/sagas/h-1/cancel", Some(CLIENT_TOKEN), None).await,
        StatusCode::BAD_REQUEST,
        "FAILED_PRECONDITION",
    );
    let grpc_cancel = grpc.cancel(pb::CancelRequest { saga_id: "h-1".into() }).await.unwrap_err();
    assert_eq!(message, grpc_cancel.message());

    // Roles: no token, an unknown token, a client token on an admin route.
    let (status, headers, _) = http.raw("GET", "/v1/sagas/h-1", None, None, &[]).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(headers["www-authenticate"], "Bearer");
    assert_error(&http.call("GET", "/v1/sagas/h-1", None, None).await, StatusCode::UNAUTHORIZED, "UNAUTHENTICATED");
    assert_error(
        &http.call("GET", "/v1/sagas/h-1", Some("wrong-token-000000000000"), None).await,
        StatusCode::UNAUTHORIZED,
        "UNAUTHENTICATED",
    );
    for (method, path) in [
        ("GET", "/v1/admin/stats"),
        ("GET", "/v1/admin/participants"),
        ("GET", "/v1/admin/queues"),
        ("POST", "/v1/admin/recover"),
        ("POST", "/v1/admin/participants/ledger/reset-breaker"),
    ] {
        let message = assert_error(
            &http.call(method, path, Some(CLIENT_TOKEN), None).await,
            StatusCode::FORBIDDEN,
            "PERMISSION_DENIED",
        );
        assert!(message.contains("needs role admin"), "{message}");
    }
    let resolve = json!({"decision": "MARK_COMPENSATED"});
    assert_error(
        &http.call("POST", "/v1/sagas/h-1/resolve", Some(CLIENT_TOKEN), Some(&resolve)).await,
        StatusCode::FORBIDDEN,
        "PERMISSION_DENIED",
    );
    // An admin token may call the client routes.
    assert_eq!(http.call("GET", "/v1/sagas/h-1", Some(ADMIN_TOKEN), None).await.0, StatusCode::OK);

    // List: filters, pages, bad filters.
    http.settled("h-2").await;
    let (status, page) = http.call("GET", "/v1/sagas?status=COMPLETED", Some(CLIENT_TOKEN), None).await;
    assert_eq!(status, StatusCode::OK);
    let ids: Vec<&str> = page["sagas"].as_array().unwrap().iter().map(|s| s["saga_id"].as_str().unwrap()).collect();
    assert!(ids.contains(&"h-1") && ids.contains(&"h-2"), "{ids:?}");
    let (_, first) = http.call("GET", "/v1/sagas?status=COMPLETED&page_size=1", Some(CLIENT_TOKEN), None).await;
    assert_eq!(first["sagas"].as_array().unwrap().len(), 1);
    let token = first["next_page_token"].as_str().expect("a next page").to_owned();
    let (status, second) = http
        .call("GET", &format!("/v1/sagas?status=COMPLETED&page_size=1&page_token={token}"), Some(CLIENT_TOKEN), None)
        .await;
    assert_eq!(status, StatusCode::OK, "{second}");
    assert_ne!(first["sagas"][0]["saga_id"], second["sagas"][0]["saga_id"]);
    let (_, none) = http.call("GET", "/v1/sagas?status=STUCK", Some(CLIENT_TOKEN), None).await;
    assert_eq!(none["sagas"], json!([]));
    // `since` takes what `sagalog list --since` takes: a duration ago too.
    let (_, recent) = http.call("GET", "/v1/sagas?since=1h", Some(CLIENT_TOKEN), None).await;
    assert!(recent["sagas"].as_array().unwrap().iter().any(|s| s["saga_id"] == "h-1"), "{recent}");
    let (_, later) = http.call("GET", "/v1/sagas?since=2999-01-01T00:00:00Z", Some(CLIENT_TOKEN), None).await;
    assert_eq!(later["sagas"], json!([]));
    for bad in
        ["/v1/sagas?status=DONE", "/v1/sagas?since=yesterday", "/v1/sagas?colour=red", "/v1/sagas?page_size=5000"]
    {
        let message = assert_error(
            &http.call("GET", bad, Some(CLIENT_TOKEN), None).await,
            StatusCode::BAD_REQUEST,
            "INVALID_ARGUMENT",
        );
        assert!(!message.is_empty());
    }

    // History: the saga's own journal records, in LSN order.
    let (status, history) = http.call("GET", "/v1/sagas/h-1/history", Some(CLIENT_TOKEN), None).await;
    assert_eq!(status, StatusCode::OK, "{history}");
    let records = history["records"].as_array().unwrap();
    let kinds: Vec<&str> = records.iter().map(|r| r["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds.first(), Some(&"SagaSubmitted"), "{kinds:?}");
    assert_eq!(kinds.last(), Some(&"SagaFinished"), "{kinds:?}");
    assert!(records.windows(2).all(|w| w[0]["lsn"].as_u64() < w[1]["lsn"].as_u64()));
    assert!(!history.to_string().contains("h-2"), "another saga's records: {history}");
    assert_error(
        &http.call("GET", "/v1/sagas/nope/history", Some(CLIENT_TOKEN), None).await,
        StatusCode::NOT_FOUND,
        "NOT_FOUND",
    );

    // Admin routes.
    let (_, stats) = http.call("GET", "/v1/admin/stats", Some(ADMIN_TOKEN), None).await;
    assert!(stats["sagas_by_status"]["COMPLETED"].as_u64().unwrap() >= 2, "{stats}");
    let (_, participants) = http.call("GET", "/v1/admin/participants", Some(ADMIN_TOKEN), None).await;
    let names: Vec<&str> =
        participants["participants"].as_array().unwrap().iter().map(|p| p["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["artifacts", "ledger"]);
    let (status, reset) =
        http.call("POST", "/v1/admin/participants/ledger/reset-breaker", Some(ADMIN_TOKEN), None).await;
    assert_eq!((status, reset["previous_state"].as_str()), (StatusCode::OK, Some("closed")));
    assert_error(
        &http.call("POST", "/v1/admin/participants/nope/reset-breaker", Some(ADMIN_TOKEN), None).await,
        StatusCode::NOT_FOUND,
        "NOT_FOUND",
    );
    let (_, queues) = http.call("GET", "/v1/admin/queues", Some(ADMIN_TOKEN), None).await;
    assert_eq!(queues["queues"], json!([]));
    let (status, recovered) = http.call("POST", "/v1/admin/recover", Some(ADMIN_TOKEN), None).await;
    assert_eq!((status, recovered["restarted"].as_u64()), (StatusCode::OK, Some(0)));
    let (_, actions) = http.call("GET", "/v1/actions", Some(CLIENT_TOKEN), None).await;
    assert!(actions["actions"].as_array().unwrap().iter().any(|a| a["name"] == "record_execution"));
    // Resolve answers as gRPC does: a COMPLETED saga is not STUCK.
    let message = assert_error(
        &http.call("POST", "/v1/sagas/h-1/resolve", Some(ADMIN_TOKEN), Some(&resolve)).await,
        StatusCode::BAD_REQUEST,
        "FAILED_PRECONDITION",
    );
    assert!(message.contains("COMPLETED"), "{message}");
    assert_error(
        &http.call("POST", "/v1/sagas/h-1/resolve", Some(ADMIN_TOKEN), Some(&json!({"decision": "maybe"}))).await,
        StatusCode::BAD_REQUEST,
        "INVALID_ARGUMENT",
    );

    // Probes and unknown routes.
    let (status, live) = http.call("GET", "/healthz", None, None).await;
    assert_eq!((status, live["status"].as_str()), (StatusCode::OK, Some("live")));
    let mut ready = http.call("GET", "/readyz", None, None).await;
    for _ in 0..100 {
        if ready.0 == StatusCode::OK {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        ready = http.call("GET", "/readyz", None, None).await;
    }
    assert_eq!(ready.0, StatusCode::OK, "{}", ready.1);
    assert_eq!(ready.1["participants"], json!({"artifacts": "reachable", "ledger": "reachable"}));
    assert_error(&http.call("GET", "/v1/nothing", None, None).await, StatusCode::NOT_FOUND, "NOT_FOUND");

    server.shutdown().await.unwrap();
}

/// The journal is checked and dumped while the server runs, over its durable prefix, and the
/// online check agrees with the offline one after the stop (issue 14 item 3, the journal part).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_journal_is_verified_and_dumped_online() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path(), &config()).await;
    let http = Http::new(server.metrics_addr.unwrap());
    for n in 0..5 {
        let mut body = saga_body(&format!("j-{n}"), n);
        body["saga_id"] = format!("j-{n}").into();
        http.call("POST", "/v1/sagas", Some(CLIENT_TOKEN), Some(&body)).await;
    }
    for n in 0..5 {
        http.settled(&format!("j-{n}")).await;
    }
    assert_error(
        &http.call("GET", "/v1/admin/journal/verify", Some(CLIENT_TOKEN), None).await,
        StatusCode::FORBIDDEN,
        "PERMISSION_DENIED",
    );
    let (status, online) = http.call("GET", "/v1/admin/journal/verify", Some(ADMIN_TOKEN), None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!((online["status"].as_str(), online["online"].as_bool()), (Some("ok"), Some(true)), "{online}");
    let records = online["records"].as_u64().unwrap();
    assert!(records >= 5 * 6, "{online}");
    assert_eq!(online["last_lsn"], online["read_up_to_lsn"], "the durable prefix is read to its end");

    // The dump, a page at a time, covers the same records.
    let mut from = 0u64;
    let mut dumped = Vec::new();
    loop {
        let path = format!("/v1/admin/journal/records?from={from}&limit=7");
        let (status, page) = http.call("GET", &path, Some(ADMIN_TOKEN), None).await;
        assert_eq!(status, StatusCode::OK, "{page}");
        let lsns: Vec<u64> = page["records"].as_array().unwrap().iter().map(|r| r["lsn"].as_u64().unwrap()).collect();
        assert!(lsns.len() <= 7);
        dumped.extend(lsns);
        match page["next_from"].as_u64() {
            Some(next) => from = next,
            None => break,
        }
    }
    assert!(dumped.len() as u64 >= records, "{} dumped, {records} verified", dumped.len());
    assert!(dumped.windows(2).all(|w| w[0] + 1 == w[1]), "LSNs in order, none twice or missing");
    assert_error(
        &http.call("GET", "/v1/admin/journal/records?limit=0", Some(ADMIN_TOKEN), None).await,
        StatusCode::BAD_REQUEST,
        "INVALID_ARGUMENT",
    );

    server.shutdown().await.unwrap();
    let offline = sagalog::journal::verify(&dir.path().join("data").join("journal")).unwrap();
    assert!(offline.problem.is_none());
    assert!(offline.records >= records, "offline {} < online {records}", offline.records);
    assert_eq!(offline.first_lsn, online["first_lsn"].as_u64());
}

/// Every route the server serves is in the OpenAPI document, and the document is valid
/// OpenAPI 3.1 (checked with `openapi-spec-validator` when Python has it; CI installs it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openapi_document_describes_every_route_and_validates() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path(), &config()).await;
    let http = Http::new(server.metrics_addr.unwrap());
    let (status, doc) = http.call("GET", "/v1/openapi.json", None, None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(doc["openapi"], "3.1.0");
    let routes = [
        ("get", "/healthz"),
        ("get", "/readyz"),
        ("get", "/metrics"),
        ("get", "/v1/openapi.json"),
        ("get", "/v1/actions"),
        ("post", "/v1/sagas"),
        ("get", "/v1/sagas"),
        ("get", "/v1/sagas/{id}"),
        ("post", "/v1/sagas/{id}/cancel"),
        ("get", "/v1/sagas/{id}/events"),
        ("get", "/v1/sagas/{id}/history"),
        ("post", "/v1/sagas/{id}/resolve"),
        ("get", "/v1/admin/participants"),
        ("post", "/v1/admin/participants/{name}/reset-breaker"),
        ("get", "/v1/admin/queues"),
        ("get", "/v1/admin/stats"),
        ("post", "/v1/admin/recover"),
        ("get", "/v1/admin/journal/verify"),
        ("get", "/v1/admin/journal/records"),
        ("get", "/v1/admin/audit"),
        ("get", "/v1/admin/recovery-plan"),
        ("get", "/v1/admin/export"),
    ];
    let documented: usize = doc["paths"].as_object().unwrap().values().map(|p| p.as_object().unwrap().len()).sum();
    assert_eq!(documented, routes.len(), "the document lists routes the test does not know");
    for (method, path) in routes {
        assert!(doc["paths"][path][method].is_object(), "{method} {path} is not documented");
        // Each one answers something other than the fallback's "no route".
        let concrete = path.replace("{id}", "x-1").replace("{name}", "ledger");
        let (_, _, text) = http.raw(&method.to_uppercase(), &concrete, Some(ADMIN_TOKEN), Some("{}".into()), &[]).await;
        assert!(!text.contains("no route"), "{method} {path}: {text}");
    }
    server.shutdown().await.unwrap();

    let python = std::env::var("SAGALOG_PYTHON").unwrap_or_else(|_| "python3".into());
    let path = dir.path().join("openapi.json");
    std::fs::write(&path, doc.to_string()).unwrap();
    let validated = std::process::Command::new(&python)
        .args(["-c", "import sys, json; from openapi_spec_validator import validate; validate(json.load(open(sys.argv[1]))); print('valid')"])
        .arg(&path)
        .output();
    match validated {
        Ok(out) if out.status.success() => assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "valid"),
        Ok(out) if String::from_utf8_lossy(&out.stderr).contains("No module named 'openapi_spec_validator'") => {
            skip_or_fail(
                "openapi-spec-validator is not installed for $SAGALOG_PYTHON (pip install openapi-spec-validator)",
            )
        }
        Ok(out) => panic!("the OpenAPI document is not valid: {}", String::from_utf8_lossy(&out.stderr)),
        Err(e) => skip_or_fail(&format!("cannot run {python}: {e}")),
    }
}

/// One parsed Server-Sent Event.
#[derive(Debug, Default)]
struct SseEvent {
    event: String,
    id: Option<u64>,
    data: String,
}

/// Reads events from `response` until `stop` says so or the stream ends.
async fn read_events(response: &mut reqwest::Response, mut stop: impl FnMut(&SseEvent) -> bool) -> Vec<SseEvent> {
    let mut events = Vec::new();
    let mut buffer = String::new();
    loop {
        while let Some(end) = buffer.find("\n\n") {
            let block: String = buffer.drain(..end + 2).collect();
            let mut event = SseEvent { event: "message".into(), ..SseEvent::default() };
            for line in block.lines() {
                if let Some(v) = line.strip_prefix("event:") {
                    event.event = v.trim().to_owned();
                } else if let Some(v) = line.strip_prefix("id:") {
                    event.id = v.trim().parse().ok();
                } else if let Some(v) = line.strip_prefix("data:") {
                    event.data.push_str(v.trim_start());
                }
            }
            if block.lines().all(|l| l.starts_with(':')) {
                continue; // a keep-alive comment
            }
            let done = stop(&event);
            events.push(event);
            if done {
                return events;
            }
        }
        match tokio::time::timeout(Duration::from_secs(20), response.chunk()).await {
            Ok(Ok(Some(chunk))) => buffer.push_str(std::str::from_utf8(&chunk).unwrap()),
            Ok(Ok(None)) => return events,
            Ok(Err(e)) => panic!("reading events: {e}"),
            Err(_) => panic!("no event within 20 s; so far {events:?}"),
        }
    }
}

/// The event stream sends each new state once, with its version as the event id; a client
/// that reconnects with `Last-Event-ID` gets only later states, and the stream closes with an
/// `end` event (also for a client that resumes after the last state).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_stream_each_state_and_resume_after_last_event_id() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path(), &config()).await;
    let http = Http::new(server.metrics_addr.unwrap());
    let body = json!({"saga_id": "ev-1", "steps": [
        {"action": "record_execution", "params": {"run_id": "ev-1", "rows": 1}},
        {"action": "pause", "params": {"delay_ms": 1500}},
        {"action": "write_artifact", "params": {"run_id": "ev-1", "report": "{}"}},
    ]});
    assert_eq!(http.call("POST", "/v1/sagas", Some(CLIENT_TOKEN), Some(&body)).await.0, StatusCode::CREATED);

    let url = format!("{}/v1/sagas/ev-1/events", http.base);
    let mut first = http.client.get(&url).bearer_auth(CLIENT_TOKEN).send().await.unwrap();
    assert_eq!(first.status(), StatusCode::OK);
    assert!(first.headers()["content-type"].to_str().unwrap().starts_with("text/event-stream"));
    // Up to the state where the pause is running, then go away.
    let seen = read_events(&mut first, |e| {
        let saga: Json = serde_json::from_str(&e.data).unwrap();
        saga["steps"][1]["state"] == "JOURNALED"
    })
    .await;
    drop(first);
    assert!(seen.iter().all(|e| e.event == "saga"), "{seen:?}");
    let last = seen.last().unwrap().id.expect("events carry the version as id");
    let versions: Vec<u64> = seen.iter().map(|e| e.id.unwrap()).collect();
    assert!(versions.windows(2).all(|w| w[0] < w[1]), "{versions:?}");

    let mut resumed =
        http.client.get(&url).bearer_auth(CLIENT_TOKEN).header("Last-Event-ID", last.to_string()).send().await.unwrap();
    let rest = read_events(&mut resumed, |e| e.event == "end").await;
    let (ends, states): (Vec<_>, Vec<_>) = rest.iter().partition(|e| e.event == "end");
    assert_eq!(ends.len(), 1, "{rest:?}");
    assert!(states.iter().all(|e| e.id.unwrap() > last), "a state at or before {last} again: {rest:?}");
    let final_state: Json = serde_json::from_str(&states.last().unwrap().data).unwrap();
    assert_eq!(final_state["status"], "COMPLETED");
    let end: Json = serde_json::from_str(&ends[0].data).unwrap();
    assert_eq!((end["status"].as_str(), end["version"].as_u64()), (Some("COMPLETED"), states.last().unwrap().id));
    assert_eq!(resumed.chunk().await.unwrap(), None, "the stream closes after `end`");

    // Resuming after the last state: no state, just the end.
    let mut after_end = http
        .client
        .get(&url)
        .bearer_auth(CLIENT_TOKEN)
        .header("Last-Event-ID", end["version"].to_string())
        .send()
        .await
        .unwrap();
    let only = read_events(&mut after_end, |e| e.event == "end").await;
    assert_eq!(only.iter().map(|e| e.event.as_str()).collect::<Vec<_>>(), ["end"]);
    // A Last-Event-ID that is not a version, and a saga that does not exist.
    let bad = http.client.get(&url).bearer_auth(CLIENT_TOKEN).header("Last-Event-ID", "x").send().await.unwrap();
    assert_eq!(bad.status(), StatusCode::BAD_REQUEST);
    let missing = http.client.get(format!("{}/v1/sagas/nope/events", http.base)).bearer_auth(CLIENT_TOKEN);
    assert_eq!(missing.send().await.unwrap().status(), StatusCode::NOT_FOUND);
    server.shutdown().await.unwrap();
}

/// `/metrics` serves the Prometheus text format 0.0.4 unless the scraper asks for OpenMetrics;
/// the text passes `promtool check metrics` and the OpenMetrics the Python client's parser (CI
/// installs both), and both carry the process,
/// build and per-state breaker families.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_come_in_both_formats_and_pass_promtool() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path(), &config()).await;
    let http = Http::new(server.metrics_addr.unwrap());
    let mut body = saga_body("m-1", 1);
    body["saga_id"] = "m-1".into();
    assert_eq!(http.call("POST", "/v1/sagas", Some(CLIENT_TOKEN), Some(&body)).await.0, StatusCode::CREATED);
    let mut grpc = sagas(server.addr, Some(CLIENT_TOKEN)).await;
    assert!(grpc.get(pb::GetRequest { saga_id: "m-none".into() }).await.is_err());
    grpc.get(pb::GetRequest { saga_id: "m-1".into() }).await.unwrap();
    assert_eq!(http.settled("m-1").await["status"], "COMPLETED");
    let (status, headers, text) = http.raw("GET", "/metrics", None, None, &[]).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers["content-type"], "text/plain; version=0.0.4; charset=utf-8");
    for family in [
        "# TYPE sagalog_sagas_submitted_total counter",
        "process_cpu_seconds_total ",
        "process_resident_memory_bytes ",
        "process_open_fds ",
        "process_start_time_seconds ",
        "sagalog_build_info{version=\"",
        "sagalog_circuit_breaker_state{participant=\"ledger\",state=\"closed\"} 1",
        "sagalog_circuit_breaker_state{participant=\"ledger\",state=\"open\"} 0",
        "sagalog_journal_poisoned 0",
        // Requests by method and code (the registry is the process's: other tests add to it).
        "sagalog_grpc_requests_total{method=\"/sagalog.v1.Sagas/Get\",code=\"NOT_FOUND\"} ",
        "sagalog_grpc_requests_total{method=\"/sagalog.v1.Sagas/Get\",code=\"OK\"} ",
        "sagalog_grpc_request_duration_seconds_count{method=\"/sagalog.v1.Sagas/Get\"} ",
        "sagalog_http_requests_total{route=\"/v1/sagas\",method=\"POST\",code=\"201\"} ",
        "sagalog_http_request_duration_seconds_count{route=\"/v1/sagas\",method=\"POST\"} ",
    ] {
        assert!(text.contains(family), "missing {family:?} in\n{text}");
    }
    // The SQLite participant's group commits: m-1's step on it ran in one.
    let value = |name: &str| -> u64 {
        let line = text.lines().find(|l| l.starts_with(name)).unwrap_or_else(|| panic!("missing {name} in\n{text}"));
        line[name.len()..].trim().parse().unwrap()
    };
    let commits = value("sagalog_participant_group_commits_total{participant=\"ledger\"}");
    let steps = value("sagalog_participant_group_commit_steps_total{participant=\"ledger\"}");
    assert!(commits >= 1 && steps >= commits, "ledger: {steps} steps in {commits} group commits");
    assert!(!text.contains("# EOF") && !text.contains("# UNIT"), "OpenMetrics syntax in text 0.0.4");
    let accept = [("accept", "application/openmetrics-text; version=1.0.0")];
    let (_, headers, open) = http.raw("GET", "/metrics", None, None, &accept).await;
    assert!(headers["content-type"].to_str().unwrap().starts_with("application/openmetrics-text"));
    assert!(open.ends_with("# EOF\n"), "{open}");
    assert!(open.contains("# TYPE process_cpu_seconds counter"));
    server.shutdown().await.unwrap();

    let promtool = std::process::Command::new("promtool").arg("--version").output();
    if promtool.is_err() {
        return skip_or_fail("promtool is not installed (apt-get install prometheus)");
    }
    // promtool reads the text format 0.0.4 only.
    let mut child = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // OpenMetrics through the reference parser of the Python client (strict: `# EOF`, names,
    // types, suffixes).
    let python = std::env::var("SAGALOG_PYTHON").unwrap_or_else(|_| "python3".into());
    let path = dir.path().join("openmetrics.txt");
    std::fs::write(&path, &open).unwrap();
    let parsed = std::process::Command::new(&python)
        .args([
            "-c",
            "import sys; from prometheus_client.openmetrics.parser import text_string_to_metric_families as p; \
             print(len(list(p(open(sys.argv[1]).read()))))",
        ])
        .arg(&path)
        .output();
    match parsed {
        Ok(out) if out.status.success() => {
            assert!(String::from_utf8_lossy(&out.stdout).trim().parse::<u32>().unwrap() > 10)
        }
        Ok(out) if String::from_utf8_lossy(&out.stderr).contains("No module named 'prometheus_client'") => {
            skip_or_fail("prometheus-client is not installed for $SAGALOG_PYTHON (pip install prometheus-client)")
        }
        Ok(out) => panic!("the OpenMetrics exposition does not parse: {}", String::from_utf8_lossy(&out.stderr)),
        Err(e) => skip_or_fail(&format!("cannot run {python}: {e}")),
    }
}

/// A client that leaves an event stream releases the server's watch at once, not at the saga's
/// next change: a saga parked in a ten-minute delay does not change, and before the stream's
/// task noticed the closed connection it held its watch (and a task) until then, or forever
/// for a STUCK saga. Counted with `Executor::watchers`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_stream_whose_client_left_releases_its_watch() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path(), &config()).await;
    let http = Http::new(server.metrics_addr.unwrap());
    let body = json!({"saga_id": "parked", "steps": [{"action": "pause", "params": {"delay_ms": 600000}}]});
    let (status, _) = http.call("POST", "/v1/sagas", Some(CLIENT_TOKEN), Some(&body)).await;
    assert_eq!(status, StatusCode::CREATED);
    let exec = &server.node().executor;
    let mut started = false;
    for _ in 0..500 {
        if exec.get("parked").is_some_and(|s| s.saga.steps[0].forward.total_attempts >= 1) {
            started = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(started, "the delay did not start");
    let before = exec.watchers("parked").unwrap();

    for round in 0..3 {
        let mut response = http
            .client
            .get(format!("{}/v1/sagas/parked/events", http.base))
            .bearer_auth(CLIENT_TOKEN)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        let events = read_events(&mut response, |e| e.event == "saga").await;
        assert_eq!(events.last().map(|e| e.event.as_str()), Some("saga"));
        assert_eq!(exec.watchers("parked"), Some(before + 1), "round {round}: the stream watches the saga");
        drop(response); // the client goes away; the saga does not change
        let mut released = false;
        for _ in 0..250 {
            if exec.watchers("parked") == Some(before) {
                released = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(released, "round {round}: the watch of a stream whose client left is still held");
    }
    server.shutdown().await.unwrap();
}

/// `POST /v1/sagas/{id}/resolve` (and `Admin.Resolve`) answers the saga with the decision
/// applied (COMPENSATING on its way, or COMPENSATED), never the STUCK of a moment before the
/// saga's task took the journaled decision: the console, which waits from the answer for a
/// settled state, once showed "resolved: now STUCK". Eight sagas, so the race had eight chances.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resolve_answers_the_saga_with_the_decision_applied() {
    let dir = tempfile::tempdir().unwrap();
    let config = config() + BAD_UNDO_ACTION;
    let server = start(dir.path(), &config).await;
    let http = Http::new(server.metrics_addr.unwrap());
    let ids: Vec<String> = (0..8).map(|n| format!("r-{n}")).collect();
    for id in &ids {
        let body = json!({"saga_id": id, "steps": [
            {"action": "bad_undo", "params": {"run_id": id}},
            {"action": "record_execution", "params": {"run_id": format!("{id}x"), "rows": -1}},
        ]});
        let (status, answer) = http.call("POST", "/v1/sagas", Some(CLIENT_TOKEN), Some(&body)).await;
        assert_eq!(status, StatusCode::CREATED, "{answer}");
    }
    for id in &ids {
        assert_eq!(http.settled(id).await["status"], "STUCK");
    }
    for id in &ids {
        let resolve = json!({"decision": "MARK_COMPENSATED", "operator": "test"});
        let path = format!("/v1/sagas/{id}/resolve");
        let (status, saga) = http.call("POST", &path, Some(ADMIN_TOKEN), Some(&resolve)).await;
        assert_eq!(status, StatusCode::OK, "{saga}");
        let applied = ["COMPENSATING", "COMPENSATED"].contains(&saga["status"].as_str().unwrap());
        assert!(applied, "{id}: the answer predates the decision: {saga}");
        assert_eq!(http.settled(id).await["status"], "COMPENSATED");
    }
    server.shutdown().await.unwrap();
}
