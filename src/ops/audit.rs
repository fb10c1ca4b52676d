//! `sagalog audit`: the journal and the index side by side with every participant's markers.
//!
//! For every finished saga (in the journal or archived in the index) the audit knows, step by
//! step, whether the forward action applied and whether it was compensated, and so which
//! markers must exist on the step's participant:
//!
//! | saga        | step                              | forward marker | compensation marker |
//! |-------------|-----------------------------------|----------------|---------------------|
//! | COMPLETED   | every step                        | present        | absent              |
//! | COMPENSATED | applied (and so compensated)      | present        | present             |
//! | COMPENSATED | never applied                     | absent         | absent              |
//! | COMPENSATED | compensation marked by an operator| not checked    | not checked         |
//!
//! Any other marker is reported: a marker of an unknown saga (an orphan; markers older than
//! the index retention belong to purged sagas and are only counted), a marker on another
//! participant than the step's, a marker of a step the saga does not have. For file
//! participants the effect itself is checked too (the file a `put` wrote must exist after a
//! completed saga and be gone otherwise), which finds an effect without a marker, and so are
//! the leftovers of interrupted file writes: temporary files (`*.sagalog-tmp-*`) and intents
//! not yet turned into markers, each named by its path. Unfinished sagas are left to recovery
//! (`sagalog replay --dry-run`). A participant without markers (`http`, `worker`) has nothing
//! to compare: it is named in a note and skipped.
//!
//! Never does: write. The data directory is held under its shared lock, participants are
//! opened read-only, and the index (sled has no read-only mode) is read from a copy.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use super::Error;
use super::history::{self, ConfigSource};
use crate::catalog::Catalog;
use crate::data_dir::Access;
use crate::engine::{Saga, Status, StepCall};
use crate::index::{Index, ListFilter, SagaRecord};
use crate::participant::{Direction, Kind, MarkerEntry, Operation, Participant, StepKey};

/// What kind of disagreement a finding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FindingKind {
    /// The journal says the step (or its compensation) applied; its marker is not there.
    MissingMarker,
    /// A marker the journal does not explain: the step never applied, or a compensation
    /// marker on a completed saga.
    UnexpectedMarker,
    /// A compensation marker without the forward marker it undoes.
    UnpairedCompensation,
    /// A marker of a saga neither the journal nor the index knows.
    Orphan,
    /// A marker on another participant than the one the step runs on.
    WrongParticipant,
    /// A marker of a step number the saga does not have.
    UnknownStep,
    /// A file effect that should exist is missing.
    EffectMissing,
    /// A file effect exists where the journal and the markers say none should.
    EffectWithoutMarker,
    /// A file participant's temporary file (`*.sagalog-tmp-*`) that an interrupted write left
    /// and no intent needs (the next `sagalog serve` start removes it).
    TempFile,
    /// A file participant's intent not yet turned into a marker: the step is committed, its
    /// effect may still be pending (the next marker lookup or apply completes it).
    UnfinishedIntent,
    /// The participant could not be read; nothing about it was checked.
    Unreadable,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Finding {
    pub kind: FindingKind,
    pub saga: String,
    pub step: Option<u32>,
    #[serde(serialize_with = "direction_name", deserialize_with = "direction_of_name")]
    pub direction: Option<Direction>,
    pub participant: String,
    pub detail: String,
}

/// `forward` / `compensate`, as the marker tables spell them.
fn direction_name<S: serde::Serializer>(direction: &Option<Direction>, s: S) -> Result<S::Ok, S::Error> {
    match direction {
        Some(d) => s.serialize_str(d.as_str()),
        None => s.serialize_none(),
    }
}

/// The inverse of [`direction_name`] (an online audit's report is read back by the CLI).
fn direction_of_name<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Direction>, D::Error> {
    match Option::<String>::deserialize(d)?.as_deref() {
        None => Ok(None),
        Some("forward") => Ok(Some(Direction::Forward)),
        Some("compensate") => Ok(Some(Direction::Compensate)),
        Some(other) => Err(serde::de::Error::custom(format!("direction {other:?}: forward or compensate"))),
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AuditReport {
    pub data_dir: PathBuf,
    pub config: ConfigSource,
    /// Finished sagas checked (from the journal and the index).
    pub sagas_checked: usize,
    /// Unfinished sagas, left to recovery.
    pub unfinished_skipped: usize,
    /// Markers read, per participant.
    pub markers: BTreeMap<String, usize>,
    /// Markers of unknown sagas older than the index retention (purged sagas), and markers of
    /// earlier incarnations of a known saga id (an id reused once the index forgot it); not
    /// findings.
    pub purged_markers: usize,
    /// Markers another sagalog instance (another data directory's id in the marker scope)
    /// wrote into a participant database this one shares; not this audit's to judge.
    pub other_instance_markers: usize,
    /// File effects checked.
    pub effects_checked: usize,
    pub notes: Vec<String>,
    pub findings: Vec<Finding>,
    /// Nothing was there to check: no finished saga, no file effect, no marker in any
    /// participant. Not a pass (a wrong `--data-dir`, or participants pointed elsewhere, look
    /// exactly like this); `sagalog audit` exits 3.
    pub checked_nothing: bool,
    /// Online (the server runs): sagas finished after this LSN (the acknowledged LSN when the
    /// markers began to be read) were skipped like unfinished ones.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub judged_up_to_lsn: Option<u64>,
}

impl AuditReport {
    pub fn agrees(&self) -> bool {
        self.findings.is_empty()
    }

    fn nothing_checked(&self) -> bool {
        self.sagas_checked == 0
            && self.effects_checked == 0
            && self.unfinished_skipped == 0
            && self.markers.values().all(|n| *n == 0)
    }
}

/// One step of a finished saga, as the audit needs it.
#[derive(Debug, Clone)]
struct StepFacts {
    participant: Option<String>,
    /// A delay step: no participant, no marker, nothing to check.
    delay: bool,
    applied: bool,
    compensated: bool,
    /// The compensation was recorded by an operator's `MarkCompensated`, not by a marker.
    by_operator: bool,
    call: Option<StepCall>,
}

#[derive(Debug, Clone)]
struct SagaFacts {
    status: Status,
    steps: Vec<StepFacts>,
    /// The marker scope its markers carry.
    scope: Option<String>,
}

const MARKED_BY_OPERATOR: &str = "marked compensated by ";

fn from_saga(saga: &Saga, catalog: &Catalog) -> SagaFacts {
    let steps = saga
        .steps
        .iter()
        .map(|s| StepFacts {
            participant: catalog.action(&s.call.action).map(|a| a.participant.clone()),
            delay: s.is_delay()
                || saga
                    .actions
                    .get(&s.call.action)
                    .or_else(|| catalog.action(&s.call.action))
                    .is_some_and(|a| a.is_delay()),
            applied: s.forward.done,
            compensated: s.compensate.done,
            by_operator: s.compensate.last_error.as_deref().is_some_and(|e| e.starts_with(MARKED_BY_OPERATOR)),
            call: Some(s.call.clone()),
        })
        .collect();
    SagaFacts { status: saga.status(), steps, scope: saga.scope.clone() }
}

fn from_record(record: &SagaRecord, catalog: &Catalog) -> SagaFacts {
    let status = if record.status == Status::Completed.as_str() { Status::Completed } else { Status::Compensated };
    let steps = record
        .steps
        .iter()
        .map(|s| StepFacts {
            participant: catalog.action(&s.action).map(|a| a.participant.clone()),
            delay: catalog.action(&s.action).is_some_and(|a| a.is_delay()),
            applied: s.forward_done,
            compensated: s.compensated,
            by_operator: s.last_error.as_deref().is_some_and(|e| e.starts_with(MARKED_BY_OPERATOR)),
            call: None,
        })
        .collect();
    SagaFacts { status, steps, scope: record.scope.clone() }
}

/// A copy of the data directory's index, opened from a temporary directory that is removed
/// again on drop: sled has no read-only mode, and opening the live index may write to it.
pub struct IndexCopy {
    dir: PathBuf,
    index: Index,
}

impl IndexCopy {
    pub fn index(&self) -> &Index {
        &self.index
    }
}

impl Drop for IndexCopy {
    fn drop(&mut self) {
        // Best effort: a leftover copy in the temporary directory harms nothing.
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Opens a copy of `D/index` (an empty index if the data directory has none yet).
pub fn open_index_copy(data_dir: &Path) -> Result<IndexCopy, Error> {
    let source = data_dir.join(crate::node::INDEX_DIR);
    let dir =
        std::env::temp_dir().join(format!("sagalog-index-copy-{}-{:016x}", std::process::id(), rand::random::<u64>()));
    let io = |what: &str, path: &Path, e: std::io::Error| Error::Usage(format!("{what} {}: {e}", path.display()));
    std::fs::create_dir_all(&dir).map_err(|e| io("create", &dir, e))?;
    if source.is_dir() {
        copy_tree(&source, &dir).map_err(|e| io("copy the index from", &source, e))?;
    }
    let index = match Index::open(dir.join("db")) {
        Ok(index) => index,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&dir);
            return Err(e.into());
        }
    };
    Ok(IndexCopy { dir, index })
}

fn copy_tree(from: &Path, to: &Path) -> std::io::Result<()> {
    let target = to.join("db");
    std::fs::create_dir_all(&target)?;
    let mut stack = vec![(from.to_path_buf(), target)];
    while let Some((src, dst)) = stack.pop() {
        for entry in std::fs::read_dir(&src)? {
            let entry = entry?;
            let path = entry.path();
            let out = dst.join(entry.file_name());
            if entry.file_type()?.is_dir() {
                std::fs::create_dir_all(&out)?;
                stack.push((path, out));
            } else {
                std::fs::copy(&path, &out)?;
            }
        }
    }
    Ok(())
}

/// Every archived saga in the index.
pub fn archived(index: &Index) -> Result<Vec<SagaRecord>, Error> {
    let mut out = Vec::new();
    let mut token: Option<String> = None;
    loop {
        let (page, next) = index.list(&ListFilter::default(), token.as_deref(), crate::index::LIST_LIMIT_MAX)?;
        out.extend(page);
        match next {
            Some(t) => token = Some(t),
            None => return Ok(out),
        }
    }
}

/// What an audit reads besides the participants' markers: the journal and the index. The
/// offline audit reads them from a stopped data directory ([`Offline`]); the online one
/// (`GET /v1/admin/audit`) from the running server, which implements this over its own index
/// and the durable prefix of its journal.
pub trait Sources: Send + Sync + 'static {
    /// Every archived saga in the index.
    fn archived(&self) -> Result<Vec<SagaRecord>, Error>;
    /// The acknowledged LSN now; `None` for a journal no one writes.
    fn acked_lsn(&self) -> Option<u64>;
    /// Every saga in the journal, reading up to `upto` (`None`: everything).
    fn journal(&self, upto: Option<u64>) -> Result<history::Everything, Error>;
    /// One archived saga, looked up when a marker's saga is known to neither the journal nor
    /// the index listing (online, it may have been archived and its records reclaimed while
    /// the markers were read). Offline nothing changes between the reads: `None`.
    fn archived_one(&self, id: &str) -> Result<Option<SagaRecord>, Error> {
        let _ = id;
        Ok(None)
    }
    /// The latest finish time of a saga purged from the index (`Index::purged_through_ms`):
    /// a marker of an unknown saga applied no later than this is a purged saga's.
    fn purged_through_ms(&self) -> Result<Option<u64>, Error>;
    /// Whether the server runs while the audit reads: file participants then have writes in
    /// flight, whose temporary files are not leftovers.
    fn online(&self) -> bool {
        false
    }
}

/// What the audit checks against the sources: the configuration and the participants.
pub struct Setup {
    pub data_dir: PathBuf,
    pub config: ConfigSource,
    pub catalog: Arc<Catalog>,
    pub participants: BTreeMap<String, Arc<dyn Participant>>,
    /// Said about the participants while opening them (a database file that does not exist).
    pub notes: Vec<String>,
}

/// A stopped data directory's journal and a copy of its index.
struct Offline {
    journal_dir: PathBuf,
    index: IndexCopy,
}

impl Sources for Offline {
    fn archived(&self) -> Result<Vec<SagaRecord>, Error> {
        archived(self.index.index())
    }
    fn acked_lsn(&self) -> Option<u64> {
        None
    }
    fn purged_through_ms(&self) -> Result<Option<u64>, Error> {
        Ok(self.index.index().purged_through_ms()?)
    }
    fn journal(&self, upto: Option<u64>) -> Result<history::Everything, Error> {
        history::everything_upto(&self.journal_dir, crate::wal_format::FIRST_LSN, upto)
    }
}

/// Audits the data directory `data_dir` of a stopped server (see the module doc).
pub async fn audit(data_dir: &Path, config: Option<&Path>) -> Result<AuditReport, Error> {
    let (root, config_path) = (data_dir.to_path_buf(), config.map(Path::to_path_buf));
    let loaded = tokio::task::spawn_blocking(move || -> Result<_, Error> {
        let dir = history::open_data_dir(&root, Access::Shared)?;
        let (catalog, source) = history::load_catalog(dir.root(), config_path.as_deref())?;
        let index = open_index_copy(dir.root())?;
        let participants = crate::participant::open_all_read_only(&catalog.config.participants, dir.root())?;
        Ok((dir, catalog, source, index, participants))
    })
    .await
    .map_err(|e| Error::Usage(format!("the audit reader stopped: {e}")))??;
    let (dir, catalog, source, index, participants) = loaded;
    let setup = Setup {
        data_dir: data_dir.to_path_buf(),
        config: source,
        catalog: Arc::new(catalog),
        participants: participants.participants,
        notes: participants.notes,
    };
    let sources = Arc::new(Offline { journal_dir: dir.journal_dir(), index });
    let report = audit_with(setup, sources).await;
    // The participants' read-only connections are closed in `audit_with`, before the lock
    // is released here.
    drop(dir);
    report
}

/// Audits `setup` against `sources`.
///
/// Order of the reads, which makes an online audit exact while sagas run: the index listing
/// first; then the acknowledged LSN `L0`; then every participant's markers; then the journal
/// up to the acknowledged LSN after that. A saga is judged only if it finished at or before
/// `L0` (so every marker it will ever have was written before the markers were read); one
/// finished later is skipped like an unfinished one. Every marker's saga was journaled before
/// its step ran, so the journal read afterwards knows it (or the index does, when its records
/// were reclaimed meanwhile: [`Sources::archived_one`]).
pub async fn audit_with(setup: Setup, sources: Arc<dyn Sources>) -> Result<AuditReport, Error> {
    let Setup { data_dir, config, catalog, participants, notes } = setup;
    let blocking = |what: &'static str| move |e: tokio::task::JoinError| Error::Usage(format!("{what} stopped: {e}"));
    let s = sources.clone();
    let records = tokio::task::spawn_blocking(move || s.archived()).await.map_err(blocking("the index reader"))??;
    let judged_upto = sources.acked_lsn();

    let mut report = AuditReport {
        data_dir,
        config,
        sagas_checked: 0,
        unfinished_skipped: 0,
        markers: BTreeMap::new(),
        purged_markers: 0,
        other_instance_markers: 0,
        effects_checked: 0,
        notes,
        findings: Vec::new(),
        checked_nothing: false,
        judged_up_to_lsn: judged_upto,
    };
    let (entries, unreadable) = read_markers(&participants, &mut report).await;

    let s = sources.clone();
    let upto = sources.acked_lsn();
    let journal =
        tokio::task::spawn_blocking(move || s.journal(upto)).await.map_err(blocking("the journal reader"))??;

    // Every saga the audit judges: the journal's view wins over the index (it is newer).
    let mut finished: BTreeMap<String, SagaFacts> = BTreeMap::new();
    // Every saga id the audit knows, with the marker scope of its incarnation.
    let mut known: BTreeMap<String, Option<String>> = BTreeMap::new();
    for (id, saga) in &journal.sagas {
        known.insert(id.clone(), saga.scope.clone());
        let settled = match judged_upto {
            Some(l0) => journal.finished_lsn.get(id).is_some_and(|lsn| *lsn <= l0),
            None => true,
        };
        if saga.is_finished() && settled {
            finished.insert(id.clone(), from_saga(saga, &catalog));
        } else {
            report.unfinished_skipped += 1;
        }
    }
    for record in &records {
        if known.contains_key(&record.id) {
            continue;
        }
        known.insert(record.id.clone(), record.scope.clone());
        finished.insert(record.id.clone(), from_record(record, &catalog));
    }
    report.sagas_checked = finished.len();
    if sources.online() {
        // Sagas archived after the index listing whose records a checkpoint reclaimed before
        // the journal read: known (not orphans), not judged.
        let strangers: BTreeSet<String> =
            entries.values().flatten().map(|e| e.key.saga_id.clone()).filter(|id| !known.contains_key(id)).collect();
        for id in strangers {
            let s = sources.clone();
            let found = tokio::task::spawn_blocking(move || s.archived_one(&id))
                .await
                .map_err(blocking("the index reader"))??;
            if let Some(record) = found {
                known.insert(record.id.clone(), record.scope.clone());
            }
        }
    }

    let retention_hours = catalog.config.index.retention_hours;
    let instance = std::fs::read_to_string(report.data_dir.join(crate::node::INSTANCE_FILE)).ok();
    let instance = instance.as_deref().map(|text| text.trim_end_matches('\n'));
    let purged_through_ms = sources.purged_through_ms()?;
    let markers = classify_markers(entries, &known, instance, retention_hours, purged_through_ms, &mut report);
    let root = report.data_dir.clone();
    let in_flight = sources.online().then_some(&finished);
    fs_leftovers(&catalog, &root, &unreadable, in_flight, &mut report);
    let checker = Checker { catalog: &catalog, markers: &markers, unreadable: &unreadable, root: &root };
    for (id, facts) in &finished {
        checker.saga(id, facts, &mut report);
    }
    sql_effects(&catalog, &participants, &finished, &markers, &unreadable, &mut report).await;
    // Markers of known sagas that no step explains (wrong participant, unknown step).
    for (name, set) in &markers {
        for key in set {
            let Some(facts) = finished.get(&key.saga_id) else { continue };
            match facts.steps.get(key.step as usize) {
                None => report.findings.push(finding(
                    FindingKind::UnknownStep,
                    key,
                    name,
                    format!("the saga has {} steps", facts.steps.len()),
                )),
                Some(step) if step.participant.as_deref().is_some_and(|p| p != name) => {
                    report.findings.push(finding(
                        FindingKind::WrongParticipant,
                        key,
                        name,
                        format!("the step runs on participant {}", step.participant.as_deref().unwrap_or("?")),
                    ));
                }
                Some(_) => {}
            }
        }
    }
    drop(participants);
    report.findings.sort();
    report.checked_nothing = report.nothing_checked();
    Ok(report)
}

/// For file participants: every temporary file an interrupted write left and every intent
/// not yet turned into a marker, each named by its path (read-only: nothing is removed or
/// completed here).
///
/// Online (`judged` is the set of sagas judged), writes are in flight: a temporary file is
/// not a leftover (only counted in a note), and an intent counts only for a judged saga.
fn fs_leftovers(
    catalog: &Catalog,
    data_dir: &Path,
    unreadable: &BTreeSet<String>,
    judged: Option<&BTreeMap<String, SagaFacts>>,
    report: &mut AuditReport,
) {
    for (name, config) in &catalog.config.participants {
        if config.kind != Kind::Fs || unreadable.contains(name) {
            continue;
        }
        let root = data_dir.join(config.path.as_deref().unwrap_or_default());
        let found = match crate::participant::fs::leftovers(&root) {
            Ok(found) => found,
            Err(e) => {
                report.findings.push(Finding {
                    kind: FindingKind::Unreadable,
                    saga: String::new(),
                    step: None,
                    direction: None,
                    participant: name.clone(),
                    detail: format!("cannot look for temporary files under {}: {e}", root.display()),
                });
                continue;
            }
        };
        if found.truncated {
            report.notes.push(format!(
                "participant {name}: the scan for temporary files stopped after {} entries of {}",
                crate::participant::fs::LEFTOVER_SCAN_MAX,
                root.display()
            ));
        }
        if judged.is_some() && !found.stale_temp_files.is_empty() {
            report.notes.push(format!(
                "participant {name}: {} temporary files under {} not judged (the server runs: writes are in flight)",
                found.stale_temp_files.len(),
                root.display()
            ));
        }
        let temp_files = if judged.is_some() { Vec::new() } else { found.stale_temp_files };
        for path in temp_files {
            report.findings.push(Finding {
                kind: FindingKind::TempFile,
                saga: String::new(),
                step: None,
                direction: None,
                participant: name.clone(),
                detail: format!(
                    "{} was left by an interrupted write; the next `sagalog serve` start removes it",
                    root.join(path).display()
                ),
            });
        }
        for intent in found.intents {
            let of_judged = intent.key.as_ref().is_some_and(|k| judged.is_none_or(|j| j.contains_key(&k.saga_id)));
            if judged.is_some() && !of_judged {
                continue;
            }
            report.findings.push(Finding {
                kind: FindingKind::UnfinishedIntent,
                saga: intent.key.as_ref().map(|k| k.saga_id.clone()).unwrap_or_default(),
                step: intent.key.as_ref().map(|k| k.step),
                direction: intent.key.as_ref().map(|k| k.direction),
                participant: name.clone(),
                detail: format!(
                    "{} ({}) was never turned into a marker: the step counts as applied, and its next marker lookup or apply completes it",
                    root.join(&intent.path).display(),
                    intent.detail
                ),
            });
        }
    }
}

/// For SQL steps whose action declares an effect `check`: the count must be positive after a
/// completed saga and zero after a compensated one (or a step that never applied).
async fn sql_effects(
    catalog: &Catalog,
    participants: &BTreeMap<String, Arc<dyn Participant>>,
    finished: &BTreeMap<String, SagaFacts>,
    markers: &BTreeMap<String, BTreeSet<StepKey>>,
    unreadable: &BTreeSet<String>,
    report: &mut AuditReport,
) {
    for (id, facts) in finished {
        for (i, step) in facts.steps.iter().enumerate() {
            let Some(call) = &step.call else { continue };
            let Some((name, sql, args)) = catalog.check(call) else { continue };
            let Some(p) = participants.get(&name).filter(|_| !unreadable.contains(&name)) else { continue };
            let should_exist = match facts.status {
                Status::Completed => true,
                _ if step.by_operator => continue,
                _ => false,
            };
            let key = StepKey {
                saga_id: id.clone(),
                step: i as u32,
                direction: Direction::Forward,
                scope: facts.scope.clone(),
            };
            report.effects_checked += 1;
            let count = match p.count(&sql, &args).await {
                Ok(count) => count,
                Err(e) => {
                    report.findings.push(finding(
                        FindingKind::Unreadable,
                        &key,
                        &name,
                        format!("effect check failed: {e}"),
                    ));
                    continue;
                }
            };
            let forward_marker = markers.get(&name).is_some_and(|set| set.contains(&key));
            match (should_exist, count > 0) {
                (true, false) => report.findings.push(finding(
                    FindingKind::EffectMissing,
                    &key,
                    &name,
                    "the saga COMPLETED but its effect check counts 0".to_owned(),
                )),
                (false, true) => {
                    let why = if forward_marker { "and it was never compensated" } else { "without a marker" };
                    report.findings.push(finding(
                        FindingKind::EffectWithoutMarker,
                        &key,
                        &name,
                        format!("the effect check counts {count} although the saga is {} {why}", facts.status.as_str()),
                    ));
                }
                _ => {}
            }
        }
    }
}

/// Every participant's markers of known sagas, by participant; orphans and unreadable
/// participants go straight into the report.
/// Every participant's markers, as listed (read-only). A participant without markers, or one
/// that cannot list them, is left out with a note or an `unreadable` finding.
async fn read_markers(
    participants: &BTreeMap<String, Arc<dyn Participant>>,
    report: &mut AuditReport,
) -> (BTreeMap<String, Vec<MarkerEntry>>, BTreeSet<String>) {
    let mut listed = BTreeMap::new();
    let mut unreadable = BTreeSet::new();
    for (name, p) in participants {
        // Nothing to compare: its steps are left out, like an unreadable participant's, with a
        // note, not a finding.
        if !p.has_markers() {
            unreadable.insert(name.clone());
            report.notes.push(format!(
                "participant {name} ({}) keeps no markers: its steps are at-least-once, deduplicated by the \
                 receiver's idempotency key; not checked",
                p.kind().as_str()
            ));
            continue;
        }
        match p.all_markers().await {
            Ok(entries) => {
                report.markers.insert(name.clone(), entries.len());
                listed.insert(name.clone(), entries);
            }
            Err(e) => {
                unreadable.insert(name.clone());
                report.findings.push(Finding {
                    kind: FindingKind::Unreadable,
                    saga: String::new(),
                    step: None,
                    direction: None,
                    participant: name.clone(),
                    detail: format!("cannot list markers: {e}"),
                });
            }
        }
    }
    (listed, unreadable)
}

/// Sorts the markers read into those of known sagas (returned, by participant) and the rest:
/// another instance's, purged sagas' and earlier incarnations' (counted), orphans (findings).
fn classify_markers(
    listed: BTreeMap<String, Vec<MarkerEntry>>,
    known: &BTreeMap<String, Option<String>>,
    instance: Option<&str>,
    retention_hours: u64,
    purged_through_ms: Option<u64>,
    report: &mut AuditReport,
) -> BTreeMap<String, BTreeSet<StepKey>> {
    let mut markers: BTreeMap<String, BTreeSet<StepKey>> = BTreeMap::new();
    let now_ms = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
    // Markers older than the retention, or applied no later than the last purged saga
    // finished (`retention_sagas_max` purges by count), belong to sagas the index has purged.
    let by_age = (retention_hours > 0).then(|| now_ms.saturating_sub(retention_hours * 3_600_000));
    let purge_cutoff_ms = by_age.max(purged_through_ms.map(|through| through.saturating_add(1)));
    for (name, entries) in listed {
        let set = markers.entry(name.clone()).or_default();
        for MarkerEntry { key, applied_at_ms } in entries {
            if known.get(&key.saga_id).is_some_and(|scope| *scope == key.scope) {
                set.insert(key);
                continue;
            }
            let written_by = key.scope.as_deref().and_then(|scope| scope.split_once('.')).map(|(i, _)| i);
            // A scope names the instance that submitted the saga; a data directory without an
            // instance id never submitted a scoped saga.
            if written_by.is_some_and(|by| instance != Some(by)) {
                report.other_instance_markers += 1;
                continue;
            }
            let purged = matches!((purge_cutoff_ms, applied_at_ms), (Some(cut), Some(at)) if at < cut);
            let earlier_incarnation = known.contains_key(&key.saga_id);
            if purged || earlier_incarnation {
                report.purged_markers += 1;
            } else {
                let detail = "marker of a saga neither the journal nor the index knows".to_owned();
                report.findings.push(finding(FindingKind::Orphan, &key, &name, detail));
            }
        }
    }
    markers
}

fn finding(kind: FindingKind, key: &StepKey, participant: &str, detail: String) -> Finding {
    Finding {
        kind,
        saga: key.saga_id.clone(),
        step: Some(key.step),
        direction: Some(key.direction),
        participant: participant.to_owned(),
        detail,
    }
}

struct Checker<'a> {
    catalog: &'a Catalog,
    markers: &'a BTreeMap<String, BTreeSet<StepKey>>,
    unreadable: &'a BTreeSet<String>,
    root: &'a Path,
}

impl Checker<'_> {
    fn saga(&self, id: &str, facts: &SagaFacts, report: &mut AuditReport) {
        for (i, step) in facts.steps.iter().enumerate() {
            if step.delay {
                continue; // a delay writes no marker anywhere
            }
            let Some(participant) = step.participant.as_deref() else {
                report.notes.push(format!("saga {id} step {i}: its action is no longer declared; not checked"));
                continue;
            };
            if self.unreadable.contains(participant) {
                continue;
            }
            let key =
                |direction| StepKey { saga_id: id.to_owned(), step: i as u32, direction, scope: facts.scope.clone() };
            let has = |direction| self.markers.get(participant).is_some_and(|set| set.contains(&key(direction)));
            let (forward, compensate) = (has(Direction::Forward), has(Direction::Compensate));
            let mut push = |kind, direction, detail: &str| {
                report.findings.push(finding(kind, &key(direction), participant, detail.to_owned()));
            };
            match facts.status {
                Status::Completed => {
                    if !forward {
                        push(
                            FindingKind::MissingMarker,
                            Direction::Forward,
                            "the saga COMPLETED but the step's marker is missing",
                        );
                    }
                    if compensate {
                        push(
                            FindingKind::UnexpectedMarker,
                            Direction::Compensate,
                            "a compensation marker on a COMPLETED saga",
                        );
                    }
                }
                _ if step.by_operator => {}
                _ if step.applied => {
                    if !forward {
                        push(
                            FindingKind::MissingMarker,
                            Direction::Forward,
                            "the journal says the step applied but its marker is missing",
                        );
                    }
                    if !compensate && step.compensated {
                        push(
                            FindingKind::MissingMarker,
                            Direction::Compensate,
                            "the saga was COMPENSATED but the compensation marker is missing",
                        );
                    }
                }
                _ => {
                    if forward {
                        push(
                            FindingKind::UnexpectedMarker,
                            Direction::Forward,
                            "the marker says the step applied, but the journal says it never did: its effect was never compensated",
                        );
                    }
                    if compensate {
                        push(
                            FindingKind::UnpairedCompensation,
                            Direction::Compensate,
                            "a compensation marker for a step that never applied",
                        );
                    }
                }
            }
            if facts.status == Status::Completed && compensate && !forward {
                push(
                    FindingKind::UnpairedCompensation,
                    Direction::Compensate,
                    "a compensation marker without its forward marker",
                );
            }
            self.effect(id, i as u32, step, facts.status, forward, report);
        }
    }

    /// For file participants: the file a step's `put` (or `copy`) writes must exist after a
    /// completed saga and be gone after a compensated one (when the compensation deletes it).
    fn effect(
        &self,
        id: &str,
        step: u32,
        facts: &StepFacts,
        status: Status,
        forward_marker: bool,
        report: &mut AuditReport,
    ) {
        let (Some(call), Some(name)) = (&facts.call, &facts.participant) else { return };
        let Some(config) = self.catalog.config.participants.get(name) else { return };
        if config.kind != Kind::Fs {
            return;
        }
        let Ok((_, forward)) = self.catalog.operation(call, Direction::Forward) else { return };
        let path = match forward {
            Operation::FilePut { path, .. } => path,
            Operation::FileCopy { to, .. } => to,
            _ => return,
        };
        let undone = matches!(self.catalog.operation(call, Direction::Compensate), Ok((_, Operation::FileDelete { path: p })) if p == path);
        let should_exist = match status {
            Status::Completed => true,
            _ if facts.by_operator => return,
            _ if facts.applied => {
                if !undone {
                    return;
                }
                false
            }
            _ => false,
        };
        let file = self.root.join(config.path.as_deref().unwrap_or_default()).join(&path);
        report.effects_checked += 1;
        let key = StepKey { saga_id: id.to_owned(), step, direction: Direction::Forward, scope: None };
        match (should_exist, file.exists()) {
            (true, false) => report.findings.push(finding(
                FindingKind::EffectMissing,
                &key,
                name,
                format!("the saga COMPLETED but {} does not exist", file.display()),
            )),
            (false, true) => {
                let why = if forward_marker { "and it was never compensated" } else { "without a marker" };
                report.findings.push(finding(
                    FindingKind::EffectWithoutMarker,
                    &key,
                    name,
                    format!("{} exists although the saga is {} {why}", file.display(), status.as_str()),
                ));
            }
            _ => {}
        }
    }
}
