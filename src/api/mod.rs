//! The API's messages: `sagalog.v1.Sagas`, `Admin` and `Workers` (see `proto/sagalog/v1/`), their
//! one JSON dialect (`json.rs`, shared by the HTTP API and the CLI's `--json`), and the saga-file
//! format (`saga_file.rs`, read by `sagalog submit` and `POST /v1/sagas`).

pub mod convert;
pub mod json;
pub mod pb;
pub mod saga_file;

use crate::engine::Status;

/// The engine's status as the API spells it.
pub fn status_to_pb(status: Status) -> pb::SagaStatus {
    match status {
        Status::Pending => pb::SagaStatus::Pending,
        Status::Running => pb::SagaStatus::Running,
        Status::Completed => pb::SagaStatus::Completed,
        Status::Compensating => pb::SagaStatus::Compensating,
        Status::Compensated => pb::SagaStatus::Compensated,
        Status::Stuck => pb::SagaStatus::Stuck,
    }
}

/// The API's status as the engine's; `None` for UNSPECIFIED.
pub fn status_from_pb(status: pb::SagaStatus) -> Option<Status> {
    Some(match status {
        pb::SagaStatus::Unspecified => return None,
        pb::SagaStatus::Pending => Status::Pending,
        pb::SagaStatus::Running => Status::Running,
        pb::SagaStatus::Completed => Status::Completed,
        pb::SagaStatus::Compensating => Status::Compensating,
        pb::SagaStatus::Compensated => Status::Compensated,
        pb::SagaStatus::Stuck => Status::Stuck,
    })
}
