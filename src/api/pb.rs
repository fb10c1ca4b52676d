//! The generated protobuf types and tonic stubs of `proto/sagalog/v1/sagalog.proto`.
#![allow(clippy::all, missing_docs)]

tonic::include_proto!("sagalog.v1");

/// The encoded file descriptor set of the API, served by the reflection service.
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/sagalog_descriptor.bin"));
