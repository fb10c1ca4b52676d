//! `sagalog replay --data-dir D [--dry-run] [--compensate-since LSN|TIME [--yes]]`: recovery,
//! offline. See `sagalog::ops` for what each mode does and never does.
//!
//! `--dry-run` of a data directory a running server holds (or with `--http URL`) asks the
//! server for the plan a restart would follow now (`cli/online.rs`); the other modes write and
//! run offline only.
//!
//! Exit codes: 0 done (or planned), 1 a problem remains (a corrupt log, STUCK sagas, sagas
//! still running at the deadline, compensations that could not be selected), 2 usage or I/O
//! error (a server holds the data directory, a bad argument, no confirmation).

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant, SystemTime};

use clap::Args;

use super::online::{self, OnlineArgs};
use super::{EXIT_CORRUPT, EXIT_USAGE_OR_IO};
use crate::ops::plan::{Action, DirectionPlan, DryRun, Expected, Journaled, MarkerAnswer, SagaPlan};
use crate::ops::replay::{self, Offline, Selection, Summary};
use crate::ops::{self, history};

#[derive(Debug, Args)]
pub struct ReplayArgs {
    /// The data directory to recover (a running server's is planned online with --dry-run).
    #[arg(long, value_name = "D", required_unless_present = "http")]
    data_dir: Option<PathBuf>,
    /// Configuration file (default: D/sagalog.toml, else the embedded default; never written).
    #[arg(long, value_name = "F")]
    config: Option<PathBuf>,
    /// Print the recovery plan, saga by saga and step by step, and change nothing.
    #[arg(long)]
    dry_run: bool,
    /// Print JSON (the plan, or the summary) instead of tables.
    #[arg(long)]
    json: bool,
    /// Compensate every saga that COMPLETED after this point: an LSN, an RFC 3339 time
    /// (2026-11-24T03:00:00Z) or a duration back from now (2h). Needs --yes.
    #[arg(long, value_name = "LSN|TIME")]
    compensate_since: Option<String>,
    /// Confirm --compensate-since; without it the command only prints what it would undo.
    #[arg(long)]
    yes: bool,
    /// Give up waiting for sagas to settle after this many seconds (they stay safe in the
    /// journal; the next start continues them).
    #[arg(long, value_name = "SECS", default_value_t = 600)]
    timeout_secs: u64,
    #[command(flatten)]
    online: OnlineArgs,
}

impl ReplayArgs {
    /// The data directory of the offline modes (recovery and compensation write: never online).
    fn offline_dir(&self) -> Result<&std::path::Path, ops::Error> {
        match (self.data_dir.as_deref(), &self.online.http) {
            (Some(dir), None) => Ok(dir),
            _ => Err(ops::Error::Usage(
                "only --dry-run runs against a running server (--http); recovery and --compensate-since write, \
                 and run on a stopped server's --data-dir (a running server recovers by itself: \
                 `sagalog admin recover`)"
                    .into(),
            )),
        }
    }
}

pub fn run(args: ReplayArgs) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let result = runtime.block_on(async {
        match (&args.compensate_since, args.dry_run) {
            (Some(since), _) => compensate_since(&args, since).await,
            (None, true) => dry_run(&args).await,
            (None, false) => replay(&args).await,
        }
    });
    match result {
        Ok(code) => Ok(code),
        Err(e) => {
            eprintln!("error: {e}");
            Ok(ExitCode::from(if e.is_corrupt() { EXIT_CORRUPT } else { EXIT_USAGE_OR_IO }))
        }
    }
}

async fn dry_run(args: &ReplayArgs) -> Result<ExitCode, ops::Error> {
    let report = match online::choose(&args.online, args.data_dir.as_deref(), args.config.as_deref())? {
        Some(server) => server.json::<DryRun>("/v1/admin/recovery-plan").await?,
        None => ops::plan::dry_run(args.offline_dir()?, args.config.as_deref()).await?,
    };
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    // Streamed, not built as one string: a plan of 100,000 sagas is a large document.
    let written = if args.json {
        serde_json::to_writer_pretty(&mut out, &report).map_err(std::io::Error::from).and_then(|()| writeln!(out))
    } else {
        write_plan(&mut out, &report)
    };
    match written.and_then(|()| out.flush()) {
        Ok(()) => {}
        // A closed pipe (`| head`) is not a failure of the dry run.
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {}
        Err(e) => return Err(ops::Error::Usage(format!("writing the plan: {e}"))),
    }
    Ok(ExitCode::SUCCESS)
}

fn write_plan(out: &mut impl Write, r: &DryRun) -> std::io::Result<()> {
    writeln!(out, "recovery plan for {} (dry run: nothing was changed)", r.data_dir.display())?;
    if let Some(lsn) = r.read_up_to_lsn {
        writeln!(
            out,
            "online:    the server runs these sagas meanwhile; this is what a restart at lsn {lsn} would do"
        )?;
    }
    writeln!(out, "config:    {}", r.config)?;
    let range = match (r.log.first_lsn, r.log.last_lsn) {
        (Some(a), Some(b)) => format!("lsn {a}..={b}"),
        _ => "empty".into(),
    };
    writeln!(
        out,
        "journal:   {range}, verified; recovery replays from lsn {} ({} records, read in {} ms)",
        r.replay_from_lsn, r.log.records, r.read_ms
    )?;
    if let Some(torn) = &r.log.torn_tail {
        writeln!(out, "warning:   {torn}")?;
    }
    for note in &r.notes {
        writeln!(out, "note:      {note}")?;
    }
    let t = &r.totals;
    writeln!(
        out,
        "sagas:     {} unfinished: {} will complete, {} will compensate, {} stuck, {} blocked; {} finished will be archived",
        t.unfinished, t.will_complete, t.will_compensate, t.stuck, t.blocked, r.finished_to_archive
    )?;
    writeln!(
        out,
        "steps:     {} in doubt, {} settled by marker, {} re-run, {} run for the first time",
        t.in_doubt, t.settled_by_marker, t.to_rerun, t.to_run
    )?;
    for saga in &r.sagas {
        write_saga(out, saga)?;
    }
    Ok(())
}

fn write_saga(out: &mut impl Write, s: &SagaPlan) -> std::io::Result<()> {
    let expected = match &s.expected {
        Expected::Completed => "will COMPLETE".to_owned(),
        Expected::Compensated => "will be COMPENSATED".to_owned(),
        Expected::Stuck { step, error } => {
            format!("stays STUCK at step {step} ({}): resolve it by hand", error.as_deref().unwrap_or("no error"))
        }
        Expected::Blocked { step, error } => format!("blocked at step {step}: {error}"),
    };
    writeln!(out)?;
    writeln!(
        out,
        "saga {}  {}  recoveries {}  submitted at lsn {}  → {expected}",
        s.id, s.status, s.recoveries, s.first_lsn
    )?;
    if let Some(reason) = &s.compensation_reason {
        writeln!(out, "  compensating because: {reason}")?;
    }
    writeln!(
        out,
        "  {:<4} {:<10} {:<20} {:<14} {:<28} {:<16} plan",
        "step", "direction", "action", "participant", "journal", "marker"
    )?;
    for step in &s.steps {
        let participant = match (&step.participant, step.delay) {
            (_, true) => "(delay)",
            (Some(name), false) => name.as_str(),
            (None, false) => "(undeclared)",
        };
        for (direction, d) in [("forward", &step.forward), ("compensate", &step.compensate)] {
            if direction == "compensate" && d.journaled == Journaled::NotStarted && d.action == Action::Nothing {
                continue;
            }
            writeln!(
                out,
                "  {:<4} {:<10} {:<20} {:<14} {:<28} {:<16} {}",
                step.step,
                direction,
                step.action,
                participant,
                journal_text(d),
                marker_text(d),
                action_text(d.action, direction)
            )?;
        }
    }
    Ok(())
}

fn journal_text(d: &DirectionPlan) -> String {
    match d.journaled {
        Journaled::NotStarted => "not started".into(),
        Journaled::Done { by_marker: false } if d.attempts <= 1 => "done".into(),
        Journaled::Done { by_marker: false } => format!("done after {} attempts", d.attempts),
        Journaled::Done { by_marker: true } => "done (by marker)".into(),
        Journaled::InDoubt => format!("IN DOUBT (attempt {})", d.attempts),
        Journaled::Waiting { until_ms } => {
            format!("waits until {}", crate::client::rfc3339_ms(until_ms).unwrap_or_else(|| until_ms.to_string()))
        }
        Journaled::Failed { retryable: false, .. } => format!("failed permanently ({})", d.attempts),
        Journaled::Failed { maybe_applied: true, .. } => format!("failed, maybe applied ({})", d.attempts),
        Journaled::Failed { .. } => format!("failed, retryable ({})", d.attempts),
    }
}

fn marker_text(d: &DirectionPlan) -> String {
    match &d.marker {
        None => "-".into(),
        Some(MarkerAnswer::Present) => "present".into(),
        Some(MarkerAnswer::Absent) => "absent".into(),
        Some(MarkerAnswer::Unknown { .. }) => "UNKNOWN".into(),
        Some(MarkerAnswer::NoMarkers) => "none kept (re-sent by key)".into(),
    }
}

fn action_text(action: Action, direction: &str) -> &'static str {
    match (action, direction) {
        (Action::Nothing, _) => "-",
        (Action::RecordByMarker, _) => "record as done, not re-run",
        (Action::RecordNotApplied, "forward") => "record as not applied",
        (Action::RecordNotApplied, _) => "record as not applied",
        (Action::Run, "forward") => "run",
        (Action::Run, _) => "compensate",
        (Action::Rerun, "forward") => "RE-RUN",
        (Action::Rerun, _) => "compensate again",
        (Action::Stuck, _) => "STUCK: wait for an operator",
        (Action::Blocked, _) => "wait for the participant",
        (Action::Wait, _) => "wait out the rest of the delay, then done",
    }
}

/// A progress bar on stderr, hidden when stderr is not a terminal (scripts, CI, pipes).
fn progress_bar(total: u64) -> indicatif::ProgressBar {
    let target = if std::io::stderr().is_terminal() {
        indicatif::ProgressDrawTarget::stderr()
    } else {
        indicatif::ProgressDrawTarget::hidden()
    };
    let bar = indicatif::ProgressBar::with_draw_target(Some(total), target);
    if let Ok(style) =
        indicatif::ProgressStyle::with_template("{spinner} {msg} [{bar:40}] {pos}/{len} sagas settled ({elapsed})")
    {
        bar.set_style(style.progress_chars("=> "));
    }
    bar
}

/// The embedded default's demo saga calls a notifier the server serves on its HTTP port
/// (`[server] demo_notifier`); an offline replay finishing those sagas serves it too, for as
/// long as it runs. A failure to serve it is reported and the replay goes on (the notifier's
/// steps then retry, as against any service that is down).
async fn serve_demo_notifier(offline: &Offline, data_dir: &std::path::Path) -> Option<tokio::task::JoinHandle<()>> {
    let config = &offline.catalog.config.server;
    if config.demo_notifier.is_empty() {
        return None;
    }
    match crate::server::start_http(&offline.executor, data_dir, config, None).await {
        Ok(served) => served.map(|(_, task)| task),
        Err(e) => {
            eprintln!("sagalog: cannot serve the demo notifier ({e}); its steps retry until it answers");
            None
        }
    }
}

/// Runs recovery (reading and replaying the whole journal) behind a spinner on a terminal.
async fn recover_with_spinner(offline: &Offline) -> Result<crate::recovery::Report, ops::Error> {
    let spinner = progress_bar(0);
    if let Ok(style) = indicatif::ProgressStyle::with_template("{spinner} {msg} ({elapsed})") {
        spinner.set_style(style);
    }
    spinner.set_message(format!("replaying the journal from lsn {}", offline.replay_from_lsn));
    spinner.enable_steady_tick(Duration::from_millis(100));
    let report = replay::recover(offline, offline.replay_from_lsn).await;
    spinner.finish_and_clear();
    report
}

/// Waits for sagas to settle with a progress bar; Ctrl-C stops waiting (the journal keeps
/// everything; a rerun continues).
async fn settle(offline: &Offline, total: usize, timeout: Duration) -> Vec<(String, Option<String>)> {
    let bar = progress_bar(total as u64);
    bar.set_message("recovering");
    let interrupted = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let running = offline
        .wait_settled(timeout, |running| bar.set_position(total.saturating_sub(running) as u64), interrupted)
        .await;
    bar.finish_and_clear();
    running
}

async fn replay(args: &ReplayArgs) -> Result<ExitCode, ops::Error> {
    let started = Instant::now();
    let data_dir = args.offline_dir()?;
    let offline = Offline::open(data_dir, args.config.as_deref())?;
    let _http = serve_demo_notifier(&offline, data_dir).await;
    let report = recover_with_spinner(&offline).await?;
    let running = settle(&offline, report.unfinished, Duration::from_secs(args.timeout_secs)).await;
    finish(args, offline, report, running, started, None).await
}

async fn finish(
    args: &ReplayArgs,
    offline: Offline,
    report: crate::recovery::Report,
    running: Vec<(String, Option<String>)>,
    started: Instant,
    reopened: Option<usize>,
) -> Result<ExitCode, ops::Error> {
    let mut summary = Summary {
        records_replayed: report.records,
        sagas_found: report.sagas,
        unfinished: report.unfinished,
        in_doubt: report.in_doubt,
        stuck: replay::stuck(&offline.executor),
        still_running: running,
        ..Summary::default()
    };
    // Counted before closing: the checkpoint written on close may delete the segments that
    // hold this run's first records.
    replay::count_work(offline.journal.dir(), offline.start_lsn, &mut summary)?;
    if summary.still_running.is_empty() {
        offline.close().await?;
    } else {
        offline.abandon().await?;
    }
    summary.duration_ms = started.elapsed().as_millis() as u64;
    if args.json {
        let mut value = serde_json::to_value(&summary).map_err(|e| ops::Error::Usage(e.to_string()))?;
        if let Some(n) = reopened {
            value["reopened"] = n.into();
        }
        println!("{}", serde_json::to_string_pretty(&value).map_err(|e| ops::Error::Usage(e.to_string()))?);
    } else {
        print_summary(&summary, reopened);
    }
    let problem = !summary.stuck.is_empty() || !summary.still_running.is_empty();
    Ok(if problem { ExitCode::from(EXIT_CORRUPT) } else { ExitCode::SUCCESS })
}

fn print_summary(s: &Summary, reopened: Option<usize>) {
    println!(
        "replayed {} journal records: {} sagas, {} unfinished ({} steps in doubt)",
        s.records_replayed, s.sagas_found, s.unfinished, s.in_doubt
    );
    if let Some(n) = reopened {
        println!("reopened {n} completed sagas for compensation");
    }
    println!("completed:   {}", s.completed);
    println!("compensated: {}", s.compensated);
    println!("stuck:       {}{}", s.stuck.len(), list(&s.stuck));
    println!(
        "steps:       {} attempts run ({} re-runs, {} compensations), {} in-doubt steps settled by marker",
        s.steps_run, s.steps_rerun, s.compensations_run, s.settled_by_marker
    );
    println!("time:        {:.3} s", s.duration_ms as f64 / 1000.0);
    if !s.still_running.is_empty() {
        let ids: Vec<String> = s
            .still_running
            .iter()
            .map(|(id, parked)| match parked {
                Some(p) => format!("{id} (waiting for participant {p})"),
                None => id.clone(),
            })
            .collect();
        println!("NOT FINISHED: {} sagas still running:{}", ids.len(), list(&ids));
        println!("they are safe in the journal; run `sagalog replay` again (or start `sagalog serve`) to continue");
    }
    if !s.stuck.is_empty() {
        println!("STUCK sagas wait for an operator: `sagalog status ID`, then resolve (docs/operations.md)");
    }
}

fn list(ids: &[String]) -> String {
    const SHOWN: usize = 20;
    if ids.is_empty() {
        return String::new();
    }
    let mut text = format!(" ({}", ids.iter().take(SHOWN).cloned().collect::<Vec<_>>().join(", "));
    if ids.len() > SHOWN {
        text.push_str(&format!(", … {} more", ids.len() - SHOWN));
    }
    text.push(')');
    text
}

async fn compensate_since(args: &ReplayArgs, since_text: &str) -> Result<ExitCode, ops::Error> {
    let since = replay::parse_since(since_text, SystemTime::now())?;
    if !args.yes || args.dry_run {
        // Preview under the shared lock: nothing is written.
        let dir = history::open_data_dir(args.offline_dir()?, crate::data_dir::Access::Shared)?;
        let index = ops::audit::open_index_copy(dir.root())?;
        let selection = replay::select(&dir.journal_dir(), index.index(), since)?;
        print_selection(args, &selection)?;
        // An asked-for preview (--dry-run) succeeded; a missing confirmation is a usage error.
        if args.dry_run || (selection.compensable.is_empty() && selection.archived_only.is_empty()) {
            return Ok(ExitCode::SUCCESS);
        }
        eprintln!("refusing to compensate without --yes (nothing was changed)");
        return Ok(ExitCode::from(EXIT_USAGE_OR_IO));
    }
    let started = Instant::now();
    let data_dir = args.offline_dir()?;
    let offline = Offline::open(data_dir, args.config.as_deref())?;
    let _http = serve_demo_notifier(&offline, data_dir).await;
    let selection = replay::select(offline.journal.dir(), &offline.index, since)?;
    if !args.json {
        print_selection(args, &selection)?;
    }
    let report = recover_with_spinner(&offline).await?;
    let by = format!("sagalog replay --compensate-since {since_text}");
    let reopened = replay::reopen(&offline, &selection.compensable, &by).await?;
    let total = report.unfinished + reopened;
    let running = settle(&offline, total, Duration::from_secs(args.timeout_secs)).await;
    let code = finish(args, offline, report, running, started, Some(reopened)).await?;
    if !selection.archived_only.is_empty() {
        eprintln!(
            "{} completed sagas after the point are only in the index and were NOT compensated (see above)",
            selection.archived_only.len()
        );
        return Ok(ExitCode::from(EXIT_CORRUPT));
    }
    Ok(code)
}

fn print_selection(args: &ReplayArgs, s: &Selection) -> Result<(), ops::Error> {
    if args.json {
        println!("{}", serde_json::to_string_pretty(s).map_err(|e| ops::Error::Usage(e.to_string()))?);
        return Ok(());
    }
    println!("{} completed sagas will be compensated:", s.compensable.len());
    for c in &s.compensable {
        println!("  {}  finished at lsn {} ({})", c.id, c.finished_lsn, time_text(c.finished_at_ms));
    }
    if !s.archived_only.is_empty() {
        println!(
            "{} completed sagas after the point CANNOT be compensated: their journal segments were deleted after a \
             checkpoint, and the index does not keep step parameters; undo them by hand:",
            s.archived_only.len()
        );
        for (id, at) in &s.archived_only {
            println!("  {id}  finished {}", time_text(*at));
        }
    }
    if let Some(note) = &s.note {
        println!("note: {note}");
    }
    Ok(())
}

fn time_text(ms: u64) -> String {
    humantime::format_rfc3339_millis(std::time::UNIX_EPOCH + Duration::from_millis(ms)).to_string()
}
