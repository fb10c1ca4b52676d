//! What every participant kind shares about its markers: how a stored `(step, direction)`
//! reads back, and the informational commit time. Never opens a store.

use super::{Direction, Error};

/// Turns a stored `(step, direction)` back into its typed form; anything else in the marker
/// table was not written by sagalog.
pub(crate) fn parse_marker(name: &str, step: i64, direction: &str) -> Result<(u32, Direction), Error> {
    let step = u32::try_from(step)
        .map_err(|_| Error::permanent(name, format!("marker table holds an invalid step number {step}")))?;
    let direction = match direction {
        "forward" => Direction::Forward,
        "compensate" => Direction::Compensate,
        other => return Err(Error::permanent(name, format!("marker table holds an unknown direction {other:?}"))),
    };
    Ok((step, direction))
}

/// Milliseconds since the Unix epoch, for the marker's `applied_at_ms` (informational only).
pub(crate) fn now_ms() -> i64 {
    i64::try_from(crate::clock::now_ms()).unwrap_or(i64::MAX)
}

/// The names of a SQL participant's marker and fence tables (config keys `marker_table` and
/// `fence_table`), checked by the catalog to be plain identifiers before they reach a
/// statement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tables {
    pub markers: String,
    pub fences: String,
}

impl Default for Tables {
    fn default() -> Tables {
        Tables { markers: super::MARKER_TABLE.to_owned(), fences: super::FENCE_TABLE.to_owned() }
    }
}

impl Tables {
    /// The tables `config` names.
    pub fn of(config: &crate::config::ParticipantConfig) -> Tables {
        Tables { markers: config.marker_table().to_owned(), fences: config.fence_table().to_owned() }
    }
}

/// The bytes a marker row stores for a step's outputs (MessagePack, field names kept), or
/// `None` (SQL NULL) for a step that returned nothing.
pub(crate) fn encode_outputs(outputs: &super::Outputs) -> Option<Vec<u8>> {
    if outputs.is_empty() {
        return None;
    }
    rmp_serde::to_vec_named(outputs).ok()
}

/// The outputs a marker row stores; NULL (or a table from before outputs) is none. Bytes that
/// do not decode are a permanent error: the marker exists, but what it returned is unknown.
pub(crate) fn decode_outputs(name: &str, bytes: Option<&[u8]>) -> Result<super::Outputs, Error> {
    match bytes {
        None => Ok(super::Outputs::new()),
        Some(bytes) => rmp_serde::from_slice(bytes)
            .map_err(|e| Error::permanent(name, format!("marker table holds outputs that do not decode: {e}"))),
    }
}
