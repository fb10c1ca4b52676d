//! The gRPC API: `sagalog.v1.Sagas` and `sagalog.v1.Admin` (see `proto/sagalog/v1/`).

pub mod pb;
