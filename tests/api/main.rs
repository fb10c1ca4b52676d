//! The gRPC API and its command-line client, end to end against real servers on loopback ports.
//!
//! One test binary for the area (each file is a module), so the suite links a few binaries
//! instead of one per file.

mod api_support;
mod cli_client;
mod console;
mod first_boot;
mod grpc_api;
mod grpc_reflection;
mod grpc_restart;
mod grpc_tls;
mod http_api;
mod journal_poisoned;
mod online_tools;
mod readme;
mod workers;
