//! `sagalog audit --data-dir D [--config F] [--json]`: the journal and the index against every
//! participant's markers (see `sagalog::ops::audit`). Read-only.
//!
//! While a server holds the data directory (or with `--http URL`) the audit runs online, in
//! the server, over the durable prefix of its journal (`cli/online.rs`).
//!
//! Exit codes: 0 everything agrees, 1 inconsistencies found (each printed with saga, step and
//! participant), 2 usage or I/O error, 3 nothing was there to check.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;

use super::online::{self, OnlineArgs};
use super::{EXIT_CORRUPT, EXIT_USAGE_OR_IO};

/// `sagalog audit` found nothing to check: not a pass.
pub const EXIT_CHECKED_NOTHING: u8 = 3;
use crate::ops;
use crate::ops::audit::AuditReport;

#[derive(Debug, Args)]
pub struct AuditArgs {
    /// The data directory to audit (a running server's is audited online, through it).
    #[arg(long, value_name = "D", required_unless_present = "http")]
    data_dir: Option<PathBuf>,
    /// Configuration file (default: D/sagalog.toml, else the embedded default).
    #[arg(long, value_name = "F")]
    config: Option<PathBuf>,
    /// Print the report as one JSON object.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    online: OnlineArgs,
}

pub fn run(args: AuditArgs) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let audited = runtime.block_on(async {
        match online::choose(&args.online, args.data_dir.as_deref(), args.config.as_deref())? {
            Some(server) => server.json::<AuditReport>("/v1/admin/audit").await,
            None => match args.data_dir.as_deref() {
                Some(dir) => ops::audit::audit(dir, args.config.as_deref()).await,
                None => Err(ops::Error::Usage("give --data-dir D or --http URL".into())),
            },
        }
    });
    let report = match audited {
        Ok(report) => report,
        Err(e) => {
            eprintln!("error: {e}");
            return Ok(ExitCode::from(if e.is_corrupt() { EXIT_CORRUPT } else { EXIT_USAGE_OR_IO }));
        }
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_report(&report);
    }
    Ok(if !report.agrees() {
        ExitCode::from(EXIT_CORRUPT)
    } else if report.checked_nothing {
        ExitCode::from(EXIT_CHECKED_NOTHING)
    } else {
        ExitCode::SUCCESS
    })
}

fn print_report(r: &AuditReport) {
    println!("audit of {} (config {})", r.data_dir.display(), r.config);
    if let Some(lsn) = r.judged_up_to_lsn {
        println!(
            "online:   the server runs; sagas that finished after lsn {lsn} (when the markers were read) are left \
             for a later audit"
        );
    }
    let markers: Vec<String> = r.markers.iter().map(|(p, n)| format!("{p}: {n}")).collect();
    println!(
        "checked:  {} finished sagas, {} file effects; markers read: {}",
        r.sagas_checked,
        r.effects_checked,
        if markers.is_empty() { "none".into() } else { markers.join(", ") }
    );
    if r.unfinished_skipped > 0 {
        println!("skipped:  {} unfinished sagas (see `sagalog replay --dry-run`)", r.unfinished_skipped);
    }
    if r.purged_markers > 0 {
        println!(
            "purged:   {} markers of sagas past the index retention or of earlier incarnations of a reused id (not checked)",
            r.purged_markers
        );
    }
    if r.other_instance_markers > 0 {
        println!("others:   {} markers another sagalog instance wrote (not checked)", r.other_instance_markers);
    }
    for note in &r.notes {
        println!("note:     {note}");
    }
    if r.agrees() && r.checked_nothing {
        println!(
            "status:   checked nothing: no finished saga in the journal or the index, no marker in any participant; \
             check --data-dir and --config (exit 3)"
        );
        return;
    }
    if r.agrees() {
        println!("status:   ok, the journal, the index and every participant agree");
        return;
    }
    println!("status:   {} INCONSISTENCIES", r.findings.len());
    println!("{:<22} {:<28} {:<5} {:<10} {:<14} detail", "kind", "saga", "step", "direction", "participant");
    for f in &r.findings {
        let kind = serde_json::to_value(f.kind).ok().and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default();
        println!(
            "{:<22} {:<28} {:<5} {:<10} {:<14} {}",
            kind,
            f.saga,
            f.step.map_or("-".into(), |s| s.to_string()),
            f.direction.map_or("-", |d| d.as_str()),
            f.participant,
            f.detail
        );
    }
}
