//! Golden payload vectors of the journal records (`src/engine/vectors/`): the MessagePack
//! bytes version 1 writes for each record kind, and the later versions that added a field:
//! `SagaSubmitted` 2 (action definitions), 3 (marker scope), 4 (step outputs: `returns` and
//! `from`), 5 (delay actions), `StepSucceeded` 2 (outputs), `StepStarted` 2 (a delay step's
//! deadline). Committed
//! once and never edited.
//!
//! For every vector: its length and CRC32 match the fingerprint below (an accidental edit fails
//! before anything is decoded), it decodes to exactly the value below, field by field, today's
//! encoder writes it byte for byte, and a payload with one more (unknown) field still decodes
//! to the same value, which is what lets a later version add fields. The vectors are written
//! by the ignored `generate_vectors` test, by hand only, and it never overwrites a file:
//! `cargo test --no-default-features --lib engine::golden -- --ignored generate`.

use std::collections::BTreeMap;
use std::path::PathBuf;

use super::model::{StepCall, StepPolicy};
use super::record::{
    CancelRequested, Failed, Finished, Outcome, Record, RecoveryStarted, ResolveDecision, Resolved, Snapshotted,
    Started, Submitted, Succeeded,
};
use super::value::Value;
use crate::config::{ActionConfig, CheckConfig, DelayMs, OperationConfig, ParamType, RetryConfig};
use crate::engine::Direction;
use crate::wal_format::RecordKind;

pub(crate) fn vectors_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("src/engine/vectors")
}

const SAGA: &str = "order-7";
const AT_MS: u64 = 1_700_000_000_123;

/// Every vector: file name, length, CRC32 of the bytes, and the record it holds.
pub(crate) fn vectors() -> Vec<(&'static str, usize, u32, Record)> {
    let saga = || SAGA.to_owned();
    let resolved = |decision| Record::Resolved(Resolved { saga: saga(), decision, by: "alice".into(), at_ms: AT_MS });
    vec![
        ("v1-saga-submitted.msgpack", 275, 0x5769_eed2, v1_submitted()),
        ("v2-saga-submitted-actions.msgpack", 1341, 0x3c7b_f422, v2_submitted()),
        ("v3-saga-submitted-scope.msgpack", 1382, 0xdbbc_403b, v3_submitted()),
        ("v4-saga-submitted-outputs.msgpack", 1421, 0xc702_b9f5, v4_submitted()),
        ("v5-saga-submitted-delays.msgpack", 1505, 0x05c9_9e71, v5_submitted()),
        ("v2-step-succeeded-outputs.msgpack", 105, 0x7f6d_99d5, v2_succeeded()),
        ("v2-step-started-deadline.msgpack", 83, 0xd792_d2a5, v2_started()),
        (
            "v1-step-started.msgpack",
            62,
            0x3029_2eb3,
            Record::StepStarted(Started {
                saga: saga(),
                step: 1,
                direction: Direction::Forward,
                attempt: 2,
                at_ms: AT_MS,
                deadline_ms: None,
            }),
        ),
        (
            "v1-step-succeeded.msgpack",
            76,
            0x1b81_d840,
            Record::StepSucceeded(Succeeded {
                saga: saga(),
                step: 1,
                direction: Direction::Compensate,
                attempt: 1,
                by_marker: true,
                at_ms: AT_MS,
                outputs: Default::default(),
            }),
        ),
        (
            "v1-step-failed.msgpack",
            117,
            0xb421_6806,
            Record::StepFailed(Failed {
                saga: saga(),
                step: 0,
                direction: Direction::Forward,
                attempt: 3,
                error: "timed out after 500 ms".into(),
                retryable: true,
                maybe_applied: true,
                at_ms: AT_MS,
            }),
        ),
        (
            "v1-saga-finished.msgpack",
            49,
            0xb10c_1912,
            Record::SagaFinished(Finished { saga: saga(), outcome: Outcome::Compensated, at_ms: AT_MS }),
        ),
        (
            "v1-saga-finished-completed.msgpack",
            47,
            0xbace_c0de,
            Record::SagaFinished(Finished { saga: saga(), outcome: Outcome::Completed, at_ms: AT_MS }),
        ),
        (
            "v1-cancel-requested.msgpack",
            29,
            0x3b25_2985,
            Record::CancelRequested(CancelRequested { saga: saga(), at_ms: AT_MS }),
        ),
        ("v1-resolved.msgpack", 63, 0x6134_babd, resolved(ResolveDecision::MarkCompensated)),
        ("v1-resolved-retry-compensation.msgpack", 65, 0x1170_2bcc, resolved(ResolveDecision::RetryCompensation)),
        ("v1-resolved-compensate-completed.msgpack", 67, 0x080c_a82b, resolved(ResolveDecision::CompensateCompleted)),
        (
            "v1-checkpoint.msgpack",
            44,
            0xe7a8_95f2,
            Record::RecoveryStarted(RecoveryStarted { reason: "recovery".into(), unfinished: 3, at_ms: AT_MS }),
        ),
        (
            "v2-saga-snapshot.msgpack",
            2218,
            0x2ce6_d2a5,
            Record::SagaSnapshot(Snapshotted { saga: Box::new(snapshot_saga()), at_ms: AT_MS }),
        ),
    ]
}

/// The saga of the v2 `SagaSnapshot` vector: the v2 `SagaSubmitted`, step 0 done, step 1
/// failed for good (so compensating), step 0's compensation in flight, after a recovery.
fn snapshot_saga() -> super::saga::Saga {
    let Record::SagaSubmitted(submitted) = v2_submitted() else { unreachable!() };
    let mut saga = super::saga::Saga::submitted(&submitted);
    let at_ms = AT_MS;
    let started = |step, direction, attempt| {
        Record::StepStarted(Started { saga: SAGA.into(), step, direction, attempt, at_ms, deadline_ms: None })
    };
    for record in [
        started(0, Direction::Forward, 1),
        Record::StepSucceeded(Succeeded {
            saga: SAGA.into(),
            step: 0,
            direction: Direction::Forward,
            attempt: 1,
            by_marker: true,
            at_ms,
            outputs: Default::default(),
        }),
        started(1, Direction::Forward, 1),
        Record::StepFailed(Failed {
            saga: SAGA.into(),
            step: 1,
            direction: Direction::Forward,
            attempt: 1,
            error: "declined".into(),
            retryable: false,
            maybe_applied: false,
            at_ms,
        }),
        started(0, Direction::Compensate, 1),
    ] {
        saga.apply(&record);
    }
    saga.note_recovery();
    saga
}

/// The v1 `SagaSubmitted` vector's record: every `Value` variant, two steps with their policies.
fn v1_submitted() -> Record {
    Record::SagaSubmitted(Submitted {
        saga: SAGA.to_owned(),
        steps: vec![
            StepCall {
                action: "reserve".into(),
                params: BTreeMap::from([
                    ("blob".to_owned(), Value::Bytes(vec![0x00, 0x01, 0xfe, 0xff])),
                    ("express".to_owned(), Value::Bool(true)),
                    ("note".to_owned(), Value::Null),
                    ("qty".to_owned(), Value::Int(-42)),
                    ("ratio".to_owned(), Value::Float(0.5)),
                    ("sku".to_owned(), Value::Text("A-1".into())),
                ]),
                from: Default::default(),
            },
            StepCall { action: "charge".into(), params: BTreeMap::new(), from: Default::default() },
        ],
        policies: vec![
            StepPolicy { max_attempts: 3, compensate_max_attempts: 5 },
            StepPolicy { max_attempts: 1, compensate_max_attempts: 2 },
        ],
        digest: 0x1234_abcd,
        at_ms: AT_MS,
        actions: Default::default(),
        scope: None,
    })
}

/// The v2 `SagaSubmitted` vector's record: the v1 fields, with action definitions.
fn v2_submitted() -> Record {
    let Record::SagaSubmitted(submitted) = v1_submitted() else { unreachable!("v1_submitted builds a SagaSubmitted") };
    Record::SagaSubmitted(Submitted { actions: v2_actions(), ..submitted })
}

/// The v3 `SagaSubmitted` vector's record: the v2 fields, with the marker scope.
fn v3_submitted() -> Record {
    let Record::SagaSubmitted(submitted) = v2_submitted() else { unreachable!("v2_submitted builds a SagaSubmitted") };
    Record::SagaSubmitted(Submitted { scope: Some(V3_SCOPE.to_owned()), ..submitted })
}

const V3_SCOPE: &str = "0123456789abcdef.fedcba9876543210";

/// The v4 `SagaSubmitted` vector's record: the v3 fields, with step outputs: the `reserve`
/// action returns `id`, and step 1 takes it as `from = "steps.0.id"`.
fn v4_submitted() -> Record {
    let Record::SagaSubmitted(mut submitted) = v3_submitted() else { unreachable!("v3_submitted builds one") };
    submitted.steps[1].from = BTreeMap::from([("order".to_owned(), "steps.0.id".to_owned())]);
    submitted.actions = v4_actions();
    Record::SagaSubmitted(submitted)
}

/// The v5 `SagaSubmitted` vector's record: the v4 payload with two delay actions among the
/// definitions, a fixed one (`delay_ms = 60000`) and one that takes the step's `delay_ms`
/// parameter (`delay_ms = "param"`).
fn v5_submitted() -> Record {
    let Record::SagaSubmitted(mut submitted) = v4_submitted() else { unreachable!("v4_submitted builds one") };
    submitted.actions = v5_actions();
    Record::SagaSubmitted(submitted)
}

fn v5_actions() -> BTreeMap<String, ActionConfig> {
    let mut actions = v4_actions();
    actions.insert("wait_for_settlement".into(), ActionConfig::delay(DelayMs::Fixed(60_000), BTreeMap::new()));
    let params = BTreeMap::from([("delay_ms".to_owned(), ParamType::Int)]);
    actions.insert("pause".into(), ActionConfig::delay(DelayMs::Param, params));
    actions
}

fn v4_actions() -> BTreeMap<String, ActionConfig> {
    let mut actions = v2_actions();
    for action in actions.values_mut().filter(|a| matches!(a.forward, OperationConfig::Sql { .. })) {
        action.returns = BTreeMap::from([("id".to_owned(), ParamType::Int)]);
    }
    actions
}

/// The v2 `StepStarted` vector's record: the v1 fields (step 1 forward, attempt 2) with the
/// deadline of a delay step, one minute after `at_ms`.
fn v2_started() -> Record {
    Record::StepStarted(Started {
        saga: SAGA.to_owned(),
        step: 1,
        direction: Direction::Forward,
        attempt: 2,
        at_ms: AT_MS,
        deadline_ms: Some(V2_DEADLINE_MS),
    })
}

const V2_DEADLINE_MS: u64 = AT_MS + 60_000;

/// The v2 `StepSucceeded` vector's record: the v1 fields (a forward success by marker) with
/// the outputs it returned.
fn v2_succeeded() -> Record {
    Record::StepSucceeded(Succeeded {
        saga: SAGA.to_owned(),
        step: 1,
        direction: Direction::Forward,
        attempt: 1,
        by_marker: true,
        at_ms: AT_MS,
        outputs: BTreeMap::from([("id".to_owned(), Value::Int(42)), ("label".to_owned(), Value::Text("x".into()))]),
    })
}

/// The action definitions of the v2 `SagaSubmitted` vector: one SQL action with an effect
/// check and every retry field, one file action, and every `OperationConfig` shape.
fn v2_actions() -> BTreeMap<String, ActionConfig> {
    let retry = |max_attempts| RetryConfig { max_attempts, initial_backoff_ms: 25, max_backoff_ms: 4000, jitter: 0.25 };
    BTreeMap::from([
        (
            "charge".to_owned(),
            ActionConfig {
                participant: "ledger".into(),
                params: BTreeMap::from([("amount".to_owned(), ParamType::Int), ("id".to_owned(), ParamType::Text)]),
                forward: OperationConfig::Sql {
                    sql: "UPDATE accounts SET balance = balance - ?1 WHERE id = ?2".into(),
                    args: vec!["amount".into(), "id".into()],
                    rows: None,
                },
                compensate: OperationConfig::Sql {
                    sql: "UPDATE accounts SET balance = balance + ?1 WHERE id = ?2".into(),
                    args: vec!["amount".into(), "id".into()],
                    rows: None,
                },
                retry: retry(3),
                compensate_retry: retry(5),
                timeout_ms: 1500,
                check: Some(CheckConfig {
                    sql: "SELECT count(*) FROM accounts WHERE id = ?1".into(),
                    args: vec!["id".into()],
                }),
                returns: Default::default(),
                delay_ms: None,
            },
        ),
        (
            "reserve".to_owned(),
            ActionConfig {
                participant: "files".into(),
                params: BTreeMap::from([
                    ("blob".to_owned(), ParamType::Bytes),
                    ("express".to_owned(), ParamType::Bool),
                    ("ratio".to_owned(), ParamType::Float),
                    ("sku".to_owned(), ParamType::Text),
                ]),
                forward: OperationConfig::Put { put: "stock/{sku}".into(), contents: "blob".into() },
                compensate: OperationConfig::Delete { delete: "stock/{sku}".into() },
                retry: retry(1),
                compensate_retry: retry(2),
                timeout_ms: 30_000,
                check: None,
                returns: Default::default(),
                delay_ms: None,
            },
        ),
        (
            "archive".to_owned(),
            ActionConfig {
                participant: "files".into(),
                params: BTreeMap::new(),
                forward: OperationConfig::Copy { copy: "a".into(), to: "b".into() },
                compensate: OperationConfig::Noop { noop: true },
                retry: retry(1),
                compensate_retry: retry(1),
                timeout_ms: 10,
                check: None,
                returns: Default::default(),
                delay_ms: None,
            },
        ),
    ])
}

fn read(name: &str) -> Vec<u8> {
    let path = vectors_dir().join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("golden vector {} is missing: {e}", path.display()))
}

/// The decoded vector, checked field by field. Every pattern names every field, so a new field
/// does not compile here until its golden value is decided (in a new vector file).
fn assert_fields(name: &str, decoded: &Record) {
    match decoded {
        Record::SagaSubmitted(Submitted { saga, steps, policies, digest, at_ms, actions, scope }) => {
            assert_eq!((saga.as_str(), *digest, *at_ms), (SAGA, 0x1234_abcd, AT_MS), "{name}");
            assert_eq!(steps.len(), 2, "{name}");
            let StepCall { action, params, .. } = &steps[0];
            assert_eq!(action, "reserve");
            let keys: Vec<&str> = params.keys().map(String::as_str).collect();
            assert_eq!(keys, ["blob", "express", "note", "qty", "ratio", "sku"]);
            assert_eq!(params["blob"], Value::Bytes(vec![0x00, 0x01, 0xfe, 0xff]));
            assert_eq!(params["express"], Value::Bool(true));
            assert_eq!(params["note"], Value::Null);
            assert_eq!(params["qty"], Value::Int(-42));
            assert_eq!(params["ratio"], Value::Float(0.5));
            assert_eq!(params["sku"], Value::Text("A-1".into()));
            let StepCall { action, params, .. } = &steps[1];
            assert_eq!((action.as_str(), params.len()), ("charge", 0));
            let [
                StepPolicy { max_attempts: m0, compensate_max_attempts: c0 },
                StepPolicy { max_attempts: m1, compensate_max_attempts: c1 },
            ] = policies[..]
            else {
                panic!("{name}: expected 2 policies, got {policies:?}");
            };
            assert_eq!((m0, c0, m1, c1), (3, 5, 1, 2), "{name}");
            let expected = match &name[..3] {
                "v1-" => BTreeMap::new(),
                "v4-" => v4_actions(),
                "v5-" => v5_actions(),
                _ => v2_actions(),
            };
            assert_eq!(actions, &expected, "{name}");
            if name.starts_with("v5-") {
                let delays: Vec<_> = actions.iter().filter_map(|(k, a)| Some((k.as_str(), a.delay_ms?))).collect();
                assert_eq!(delays, [("pause", DelayMs::Param), ("wait_for_settlement", DelayMs::Fixed(60_000))]);
            }
            let expected = ["v3-", "v4-", "v5-"].contains(&&name[..3]).then(|| V3_SCOPE.to_owned());
            assert_eq!(scope, &expected, "{name}");
            let from: Vec<_> = steps.iter().map(|s| s.from.clone()).collect();
            let expected = if name.starts_with("v4-") || name.starts_with("v5-") {
                vec![BTreeMap::new(), BTreeMap::from([("order".to_owned(), "steps.0.id".to_owned())])]
            } else {
                vec![BTreeMap::new(), BTreeMap::new()]
            };
            assert_eq!(from, expected, "{name}");
        }
        Record::StepStarted(Started { saga, step, direction, attempt, at_ms, deadline_ms }) => {
            assert_eq!((saga.as_str(), *step, *direction, *attempt, *at_ms), (SAGA, 1, Direction::Forward, 2, AT_MS));
            let expected = name.starts_with("v2-").then_some(V2_DEADLINE_MS);
            assert_eq!(*deadline_ms, expected, "{name}");
        }
        Record::StepSucceeded(Succeeded { saga, step, direction, attempt, by_marker, at_ms, outputs }) => {
            let expected_direction = if name.starts_with("v2-") { Direction::Forward } else { Direction::Compensate };
            assert_eq!(
                (saga.as_str(), *step, *direction, *attempt, *by_marker, *at_ms),
                (SAGA, 1, expected_direction, 1, true, AT_MS)
            );
            let Record::StepSucceeded(v2) = v2_succeeded() else { unreachable!() };
            let expected = if name.starts_with("v2-") { v2.outputs } else { BTreeMap::new() };
            assert_eq!(outputs, &expected, "{name}");
        }
        Record::StepFailed(Failed { saga, step, direction, attempt, error, retryable, maybe_applied, at_ms }) => {
            assert_eq!((saga.as_str(), *step, *direction, *attempt), (SAGA, 0, Direction::Forward, 3));
            assert_eq!(
                (error.as_str(), *retryable, *maybe_applied, *at_ms),
                ("timed out after 500 ms", true, true, AT_MS)
            );
        }
        Record::SagaFinished(Finished { saga, outcome, at_ms }) => {
            let expected = if name.ends_with("-completed.msgpack") { Outcome::Completed } else { Outcome::Compensated };
            assert_eq!((saga.as_str(), *outcome, *at_ms), (SAGA, expected, AT_MS), "{name}");
        }
        Record::CancelRequested(CancelRequested { saga, at_ms }) => {
            assert_eq!((saga.as_str(), *at_ms), (SAGA, AT_MS));
        }
        Record::Resolved(Resolved { saga, decision, by, at_ms }) => {
            let expected = match name {
                "v1-resolved.msgpack" => ResolveDecision::MarkCompensated,
                "v1-resolved-retry-compensation.msgpack" => ResolveDecision::RetryCompensation,
                "v1-resolved-compensate-completed.msgpack" => ResolveDecision::CompensateCompleted,
                _ => panic!("no decision recorded for {name}"),
            };
            assert_eq!((saga.as_str(), *decision, by.as_str(), *at_ms), (SAGA, expected, "alice", AT_MS), "{name}");
        }
        Record::RecoveryStarted(RecoveryStarted { reason, unfinished, at_ms }) => {
            assert_eq!((reason.as_str(), *unfinished, *at_ms), ("recovery", 3, AT_MS));
        }
        Record::SagaSnapshot(Snapshotted { saga, at_ms }) => {
            assert_eq!(*at_ms, AT_MS);
            assert_eq!((saga.id.as_str(), saga.digest, saga.version, saga.recoveries), (SAGA, 0x1234_abcd, 6, 1));
            assert_eq!(saga.status(), super::saga::Status::Compensating);
            assert_eq!(saga.compensation_reason.as_deref(), Some("step 1 failed: declined"));
            assert_eq!(saga.steps.len(), 2);
            let (f0, c0, f1) = (&saga.steps[0].forward, &saga.steps[0].compensate, &saga.steps[1].forward);
            assert_eq!(
                (f0.done, f0.by_marker, f0.total_attempts, f0.first_started_at_ms),
                (true, true, 1, Some(AT_MS))
            );
            assert_eq!((c0.in_flight, c0.attempts), (true, 1));
            assert_eq!((f1.failed_permanently, f1.last_error.as_deref()), (true, Some("declined")));
            assert_eq!(*saga.actions, v2_actions());
            assert_eq!(saga.steps[0].policy, StepPolicy { max_attempts: 3, compensate_max_attempts: 5 });
        }
    }
}

#[test]
fn every_record_kind_has_a_vector() {
    let kinds: Vec<RecordKind> = vectors().iter().map(|(_, _, _, r)| r.kind()).collect();
    for kind in RecordKind::ALL {
        assert!(kinds.contains(&kind), "no golden vector for {kind:?}");
    }
}

#[test]
fn vectors_are_unchanged() {
    for (name, len, crc, _) in vectors() {
        let bytes = read(name);
        assert_eq!((bytes.len(), crc32fast::hash(&bytes)), (len, crc), "{name} was edited: vectors are never edited");
    }
}

#[test]
fn vectors_decode_field_by_field() {
    for (name, _, _, record) in vectors() {
        let decoded = Record::decode(record.kind(), &read(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_fields(name, &decoded);
        assert_eq!(decoded, record, "{name}");
    }
}

#[test]
fn todays_encoder_writes_the_vectors_byte_for_byte() {
    for (name, _, _, record) in vectors() {
        assert_eq!(record.encode(), read(name), "{name}: the encoder changed the v1 payload");
    }
}

/// A payload written by a later version with one more field decodes to the same value.
#[test]
fn vectors_with_an_unknown_field_still_decode() {
    for (name, _, _, record) in vectors() {
        let mut bytes = read(name);
        assert!((0x80..0x8f).contains(&bytes[0]), "{name} does not start with a fixmap");
        bytes[0] += 1;
        bytes.extend_from_slice(b"\xa9new_field\x92\xc3\xa1x");
        let decoded = Record::decode(record.kind(), &bytes).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(decoded, record, "{name}");
    }
}

/// A payload of one kind does not decode as another kind whose required fields it lacks.
#[test]
fn vectors_do_not_decode_as_kinds_with_other_fields() {
    for (name, _, _, record) in vectors() {
        let bytes = read(name);
        for kind in RecordKind::ALL {
            let decodes = Record::decode(kind, &bytes).is_ok();
            // Unknown fields are ignored, so a payload may decode as a kind whose fields are a
            // subset of its own (any kind as CancelRequested); the tag is what tells them apart.
            // But no payload has the fields only these three kinds carry.
            if kind == record.kind() {
                assert!(decodes, "{name} as {kind:?}");
            } else if matches!(kind, RecordKind::SagaSubmitted | RecordKind::StepFailed | RecordKind::Checkpoint) {
                assert!(!decodes, "{name} decoded as {kind:?}");
            }
        }
    }
}

/// Writes the vectors that are missing. Never overwrites: an existing file with other bytes
/// fails the run (the encoder changed, which is a new version, not an edit).
#[test]
#[ignore = "writes src/engine/vectors/; run by hand"]
fn generate_vectors() {
    let dir = vectors_dir();
    std::fs::create_dir_all(&dir).unwrap();
    for (name, _, _, record) in vectors() {
        let path = dir.join(name);
        let bytes = record.encode();
        match std::fs::read(&path) {
            Ok(existing) => assert_eq!(existing, bytes, "{name} exists with other bytes; not overwritten"),
            Err(_) => std::fs::write(&path, &bytes).unwrap(),
        }
        println!("{name}: {} bytes, crc32 {:#010x}", bytes.len(), crc32fast::hash(&bytes));
    }
}
