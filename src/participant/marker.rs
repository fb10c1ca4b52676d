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

/// One row of a marker listing as the embedded SQL kinds (SQLite, DuckDB) read it:
/// `(stored saga id, step, direction, applied_at_ms)`.
pub(crate) type ListedRow = (String, i64, String, i64);

/// The statement that lists every marker of `markers_table`, in key order, as [`ListedRow`]s
/// (SQLite and DuckDB spell it alike).
pub(crate) fn list_all_sql(markers_table: &str) -> String {
    format!("SELECT saga_id, step, direction, applied_at_ms FROM {markers_table} ORDER BY saga_id, step, direction")
}

/// The statement that lists `(step, direction)` of one saga's markers, scoped or not: `p` is
/// the dialect's first placeholder (`?1` for SQLite, `$1` for DuckDB), bound to the saga id.
/// A scoped marker stores `"<id> <scope>"`, and a valid id has no space.
pub(crate) fn list_saga_sql(markers_table: &str, p: &str) -> String {
    format!(
        "SELECT step, direction FROM {markers_table} WHERE saga_id = {p} OR substr(saga_id, 1, length({p}) + 1) = {p} || ' '"
    )
}

/// The marker entries of listed rows, sorted by key; a row sagalog did not write is a
/// permanent error naming what is wrong with it.
pub(crate) fn entries(name: &str, rows: Vec<ListedRow>) -> Result<Vec<super::MarkerEntry>, Error> {
    let mut markers = Vec::with_capacity(rows.len());
    for (stored, step, direction, at) in rows {
        let (step, direction) = parse_marker(name, step, &direction)?;
        let (saga_id, scope) = super::StepKey::split_marker_id(&stored);
        let key = super::StepKey { saga_id, step, direction, scope };
        markers.push(super::MarkerEntry { key, applied_at_ms: u64::try_from(at).ok() });
    }
    markers.sort();
    Ok(markers)
}

/// One saga's `(step, direction)` markers from listed rows, sorted.
pub(crate) fn steps(name: &str, rows: Vec<(i64, String)>) -> Result<Vec<(u32, Direction)>, Error> {
    let mut markers =
        rows.into_iter().map(|(step, dir)| parse_marker(name, step, &dir)).collect::<Result<Vec<_>, _>>()?;
    markers.sort();
    Ok(markers)
}
