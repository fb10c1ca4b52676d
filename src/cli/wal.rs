//! `sagalog wal verify | dump | repair --data-dir D`: the log itself, offline.
//!
//! `verify` and `dump` hold the data directory's shared lock; while a server holds it (or with
//! `--http URL`) they ask the server, which reads the durable prefix of its journal
//! (`cli/online.rs`). `repair` holds the exclusive lock: offline only. Exit codes: 0 the log opens (a torn tail is only a
//! warning, since opening repairs it), 1 the log is corrupt, 2 usage or I/O error.

use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use crate::journal::{self, LogSummary, RepairMode, Severity};
use anyhow::Context;
use clap::{Args, Subcommand};

use super::EXIT_CORRUPT;
use super::online::{self, Online, OnlineArgs};
use crate::data_dir::{Access, DataDir};

#[derive(Debug, Subcommand)]
pub enum WalCommand {
    /// Check every segment and checksum; report segments, records, LSN range and the first problem.
    Verify {
        /// The data directory (the journal is in its `journal/` folder; a running server's is
        /// verified online, through it).
        #[arg(long, value_name = "D", required_unless_present = "http")]
        data_dir: Option<PathBuf>,
        /// Print the report as one JSON object.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        online: OnlineArgs,
    },
    /// Print every record as a JSON line: lsn, kind, segment, offset and the decoded payload.
    Dump {
        /// The data directory (a running server's is dumped online, through it).
        #[arg(long, value_name = "D", required_unless_present = "http")]
        data_dir: Option<PathBuf>,
        /// Start at this LSN.
        #[arg(long, default_value_t = 1)]
        from: u64,
        #[command(flatten)]
        online: OnlineArgs,
    },
    /// Truncate a torn tail; with --truncate-corrupt, cut the log at the first corruption.
    Repair {
        #[command(flatten)]
        dir: DirArg,
        /// Cut the log at the first corruption. The damaged segment is first copied to
        /// D/wal-backup/ and later segments are moved there; records from the cut on leave the log.
        #[arg(long)]
        truncate_corrupt: bool,
    },
}

#[derive(Debug, Args)]
pub struct DirArg {
    /// The data directory (the journal is in its `journal/` folder).
    #[arg(long, value_name = "D")]
    data_dir: PathBuf,
}

/// The server to ask, when the data directory is held by one (or `--http` names it).
fn go_online(args: &OnlineArgs, data_dir: Option<&Path>) -> anyhow::Result<Option<Online>> {
    Ok(online::choose(args, data_dir, None)?)
}

impl DirArg {
    fn of(data_dir: Option<PathBuf>) -> anyhow::Result<DirArg> {
        data_dir.map(|data_dir| DirArg { data_dir }).context("give --data-dir D or --http URL")
    }

    /// Locks the data directory, refusing to create one that does not exist.
    fn open(&self, access: Access) -> anyhow::Result<DataDir> {
        let journal = self.data_dir.join(crate::data_dir::JOURNAL_DIR);
        if !journal.is_dir() {
            anyhow::bail!("{} has no journal folder: is it a sagalog data directory?", self.data_dir.display());
        }
        Ok(DataDir::open(&self.data_dir, access)?)
    }
}

pub fn run(cmd: WalCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        WalCommand::Verify { data_dir, json, online } => match go_online(&online, data_dir.as_deref())? {
            Some(server) => verify_online(&server, json),
            None => verify(&DirArg::of(data_dir)?, json),
        },
        WalCommand::Dump { data_dir, from, online } => match go_online(&online, data_dir.as_deref())? {
            Some(server) => dump_online(&server, from),
            None => dump(&DirArg::of(data_dir)?, from),
        },
        WalCommand::Repair { dir, truncate_corrupt } => repair(&dir, truncate_corrupt),
    }
}

fn exit_for(summary: &LogSummary) -> ExitCode {
    if summary.is_corrupt() { ExitCode::from(EXIT_CORRUPT) } else { ExitCode::SUCCESS }
}

fn verify(dir: &DirArg, json: bool) -> anyhow::Result<ExitCode> {
    let data_dir = dir.open(Access::Shared)?;
    let started = Instant::now();
    let summary = journal::verify(&data_dir.journal_dir())?;
    let seconds = started.elapsed().as_secs_f64();
    if json {
        println!("{}", serde_json::to_string(&verify_json(&summary, seconds))?);
    } else {
        print_verify(&data_dir.journal_dir(), &summary, seconds);
    }
    Ok(exit_for(&summary))
}

use crate::api::json::verify_json;

fn print_verify(journal_dir: &Path, summary: &LogSummary, seconds: f64) {
    println!("journal:   {}", journal_dir.display());
    match (summary.segments.first(), summary.segments.last()) {
        (Some(first), Some(last)) => println!("segments:  {} (ids {}..={})", summary.segments.len(), first.id, last.id),
        _ => println!("segments:  0"),
    }
    match (summary.first_lsn, summary.last_lsn) {
        (Some(a), Some(b)) => println!("records:   {} (lsn {a}..={b})", summary.records),
        _ => println!("records:   0"),
    }
    println!("verified:  {} in {seconds:.3} s", human_bytes(summary.verified_bytes));
    for stray in &summary.strays {
        println!("warning:   {} is not a segment file (ignored)", stray.display());
    }
    match &summary.problem {
        None => println!("status:    ok"),
        Some(p) if p.severity == Severity::Warning => {
            println!("status:    ok, with a warning");
            println!("warning:   {p}");
        }
        Some(p) => {
            println!("status:    CORRUPT (the journal will not open)");
            println!("problem:   {p}");
            println!(
                "next step: `sagalog wal repair --data-dir D --truncate-corrupt` cuts the log there after backing it up"
            );
        }
    }
}

/// `wal verify` of a running server: `GET /v1/admin/journal/verify`, the same report.
fn verify_online(server: &Online, json: bool) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let report: serde_json::Value = runtime.block_on(server.json("/v1/admin/journal/verify"))?;
    if json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        let n = |key: &str| report[key].as_u64().map_or("-".to_owned(), |v| v.to_string());
        println!("journal:   the running server's, read up to lsn {} (its acknowledged records)", n("read_up_to_lsn"));
        println!("segments:  {}", n("segments"));
        println!("records:   {} (lsn {}..={})", n("records"), n("first_lsn"), n("last_lsn"));
        let seconds = report["seconds"].as_f64().unwrap_or(0.0);
        println!("verified:  {} in {seconds:.3} s", human_bytes(report["verified_bytes"].as_u64().unwrap_or(0)));
        match report["status"].as_str() {
            Some("corrupt") => {
                println!("status:    CORRUPT");
                println!("problem:   {}", report["problem"]["message"].as_str().unwrap_or("?"));
            }
            Some(status) => println!("status:    {status}"),
            None => println!("status:    ?"),
        }
    }
    Ok(if report["status"] == "corrupt" { ExitCode::from(EXIT_CORRUPT) } else { ExitCode::SUCCESS })
}

/// `wal dump` of a running server: `GET /v1/admin/journal/records`, page after page, one
/// record per line as the offline dump prints them.
fn dump_online(server: &Online, from: u64) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let stdout = std::io::stdout();
    let mut out = BufWriter::new(stdout.lock());
    let mut next = Some(from);
    while let Some(from) = next {
        let page: serde_json::Value =
            runtime.block_on(server.json(&format!("/v1/admin/journal/records?from={from}")))?;
        for record in page["records"].as_array().into_iter().flatten() {
            let written = serde_json::to_writer(&mut out, record)
                .map_err(std::io::Error::from)
                .and_then(|()| out.write_all(b"\n"));
            match written {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => return Ok(ExitCode::SUCCESS),
                Err(e) => return Err(e).context("writing the dump"),
            }
        }
        next = page["next_from"].as_u64();
    }
    if let Err(e) = out.flush()
        && e.kind() != std::io::ErrorKind::BrokenPipe
    {
        return Err(e).context("writing the dump");
    }
    Ok(ExitCode::SUCCESS)
}

fn human_bytes(bytes: u64) -> String {
    match bytes {
        b if b < 1024 => format!("{b} bytes"),
        b if b < 1024 * 1024 => format!("{:.1} KiB", b as f64 / 1024.0),
        b if b < 1024 * 1024 * 1024 => format!("{:.1} MiB", b as f64 / (1024.0 * 1024.0)),
        b => format!("{:.2} GiB", b as f64 / (1024.0 * 1024.0 * 1024.0)),
    }
}

fn dump(dir: &DirArg, from: u64) -> anyhow::Result<ExitCode> {
    let data_dir = dir.open(Access::Shared)?;
    let stdout = std::io::stdout();
    let mut out = BufWriter::new(stdout.lock());
    let mut write_error = None;
    let summary = journal::scan_from(&data_dir.journal_dir(), from, |record, segment, offset| {
        if write_error.is_some() {
            return;
        }
        let mut line = crate::api::json::record_json(record.lsn, record.kind.name(), record.payload);
        line["segment"] = segment.into();
        line["offset"] = offset.into();
        if let Err(e) =
            serde_json::to_writer(&mut out, &line).map_err(std::io::Error::from).and_then(|()| out.write_all(b"\n"))
        {
            write_error = Some(e);
        }
    })?;
    if let Some(e) = write_error {
        // A closed pipe (`| head`) is not a failure of the dump.
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            return Ok(ExitCode::SUCCESS);
        }
        return Err(e).context("writing the dump");
    }
    if let Err(e) = out.flush()
        && e.kind() != std::io::ErrorKind::BrokenPipe
    {
        return Err(e).context("writing the dump");
    }
    if let Some(problem) = &summary.problem {
        eprintln!("{}: {problem}", if problem.severity == Severity::Corrupt { "error" } else { "warning" });
    }
    Ok(exit_for(&summary))
}

fn repair(dir: &DirArg, truncate_corrupt: bool) -> anyhow::Result<ExitCode> {
    // Check the directory exists before locking (repair locks it exclusively itself).
    drop(dir.open(Access::Shared)?);
    let mode = if truncate_corrupt { RepairMode::TruncateCorrupt } else { RepairMode::TornTail };
    let report = match journal::repair(&dir.data_dir, mode) {
        Ok(report) => report,
        Err(journal::Error::Corrupt { path, source }) => {
            println!("the journal is corrupt in {}: {source}", path.display());
            println!("nothing was changed. To cut the log at that point (records from there on leave the log,");
            println!("the damaged segment is backed up first), run again with --truncate-corrupt.");
            return Ok(ExitCode::from(EXIT_CORRUPT));
        }
        Err(e @ journal::Error::BelowCheckpoint { .. }) => {
            println!("{e}");
            return Ok(ExitCode::from(EXIT_CORRUPT));
        }
        Err(e) => return Err(e.into()),
    };
    if report.nothing_to_do {
        println!("the journal is clean ({} records); nothing to repair", report.before.records);
        return Ok(ExitCode::SUCCESS);
    }
    for backup in &report.backups {
        println!("backed up: {}", backup.display());
    }
    if let Some((path, offset, bytes)) = &report.truncated {
        println!("truncated: {} at offset {offset} ({bytes} bytes removed)", path.display());
    }
    if let Some((was, now)) = report.checkpoint_end_lowered {
        println!(
            "warning:   acknowledged records LSN {now}..{} were cut; the checkpoint now records the journal ending \
             at LSN {now} (it recorded {was})",
            was - 1
        );
    }
    let after = journal::verify(&dir.data_dir.join(crate::data_dir::JOURNAL_DIR))?;
    println!(
        "the journal now holds {} records{}",
        after.records,
        match after.last_lsn {
            Some(l) => format!(" (last lsn {l})"),
            None => String::new(),
        }
    );
    if after.is_corrupt() {
        println!("still corrupt: {}", after.problem.map(|p| p.to_string()).unwrap_or_default());
        return Ok(ExitCode::from(EXIT_CORRUPT));
    }
    Ok(ExitCode::SUCCESS)
}
