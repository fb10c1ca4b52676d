//! The gRPC server: `sagalog.v1.Sagas`, `sagalog.v1.Admin`, `sagalog.v1.Workers`,
//! `grpc.health.v1.Health` and server reflection (v1 and v1alpha) on one port, and the
//! Prometheus endpoint on another.

pub mod auth;
pub mod config;
mod convert;
pub mod demo_notifier;
mod error;
pub mod http_api;
mod metrics_http;
mod online_tools;
pub mod participant_health;
mod request_metrics;
mod run;
mod service;
pub mod workers;

pub use error::Error;
pub use run::{Running, start, start_http};
pub use service::{PAGE_SIZE_DEFAULT, PAGE_SIZE_MAX};
