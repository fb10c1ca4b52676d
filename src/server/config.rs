//! The `[server]` block, re-exported from [`crate::config::server`] where it now lives (the
//! configuration is a leaf module that imports no other part of the crate).

pub use crate::config::server::*;
