//! The offline commands (docs/recovery.md): verify, recover, snapshot, replay, reindex, inspect,
//! backup and restore. The engine's `offline` module does the work; this prints it for
//! a person (with progress bars on a terminal) or as JSON (`--json`), and turns the
//! outcome into an exit code a script can trust:
//!
//! - 0: done (and for `verify`, clean);
//! - 1: problems found (`verify`, or `recover` that could not make the directory clean),
//!   or the command failed;
//! - 2: it could not start: bad arguments, not a data directory, or the directory is
//!   held by a running server.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, Subcommand, ValueEnum};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use sagalog_engine::offline::{self, Progress};
use sagalog_engine::partitions;
use sagalog_engine::{Engine, EngineConfig, EngineError, Entry, HistoryItem, Inconsistency};
use sagalog_storage::StorageError;
use serde_json::{json, Value};

#[derive(Debug, Args)]
pub struct DirArgs {
    /// The data directory [default: the --config file's data_dir, else ./data]
    #[arg(long, env = "SAGALOG_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// The TOML file `serve` reads: its data_dir is used when --data-dir is not given
    #[arg(long, env = "SAGALOG_CONFIG")]
    pub config: Option<PathBuf>,
    /// Print one JSON document instead of text (and no progress bars)
    #[arg(long, env = "SAGALOG_JSON")]
    pub json: bool,
    /// Only this partition of a partitioned data directory [default: every partition]
    #[arg(long, env = "SAGALOG_PARTITION")]
    pub partition: Option<u32>,
}

impl DirArgs {
    /// The data directory: the command line or environment, else the config file's,
    /// else `./data` (as `serve` resolves it).
    fn resolve(&self) -> Result<PathBuf, crate::options::OptionsError> {
        if let Some(dir) = &self.data_dir {
            return Ok(dir.clone());
        }
        let from_file = match &self.config {
            Some(path) => crate::options::read_config(path)?.data_dir,
            None => None,
        };
        Ok(from_file.unwrap_or_else(|| PathBuf::from("data")))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum FromSnapshot {
    Latest,
    None,
}

#[derive(Debug, Args)]
pub struct ReplayArgs {
    #[command(flatten)]
    pub dir: DirArgs,
    /// Start from the newest usable snapshot, or from the start of the log
    #[arg(
        long,
        env = "SAGALOG_FROM_SNAPSHOT",
        value_enum,
        default_value = "latest"
    )]
    pub from_snapshot: FromSnapshot,
    /// Stop before this log offset
    #[arg(long, env = "SAGALOG_TO_OFFSET")]
    pub to_offset: Option<u64>,
}

#[derive(Debug, Args)]
pub struct InspectArgs {
    #[command(flatten)]
    pub dir: DirArgs,
    /// Only this saga's records
    #[arg(long, env = "SAGALOG_SAGA")]
    pub saga: Option<String>,
    /// First log offset to read
    #[arg(long, env = "SAGALOG_FROM", default_value_t = 0)]
    pub from: u64,
    /// Most records to print
    #[arg(long, env = "SAGALOG_LIMIT", default_value_t = 100)]
    pub limit: usize,
}

#[derive(Debug, Args)]
pub struct BackupArgs {
    #[command(flatten)]
    pub dir: DirArgs,
    /// Directory to write the backup to (new or empty)
    #[arg(long, env = "SAGALOG_OUT")]
    pub out: PathBuf,
}

#[derive(Debug, Args)]
pub struct RestoreArgs {
    /// The backup directory (`sagalog backup --out`)
    #[arg(long, env = "SAGALOG_FROM")]
    pub from: PathBuf,
    #[command(flatten)]
    pub dir: DirArgs,
}

#[derive(Debug, Subcommand)]
pub enum Offline {
    /// Check every record's CRC, the snapshots and the index against the log
    Verify(DirArgs),
    /// Cut a torn tail or a corrupt range (moved aside under DIR/recovered/, never
    /// deleted), then rebuild the indexes and verify
    Recover(DirArgs),
    /// Write a snapshot now
    Snapshot(DirArgs),
    /// Rebuild the projections from snapshot plus log and print the status counts
    Replay(ReplayArgs),
    /// Rebuild the indexes from the log
    Reindex(DirArgs),
    /// Print records as JSON lines
    Inspect(InspectArgs),
    /// Copy the data directory consistently, also while `serve` runs
    Backup(BackupArgs),
    /// Make a new data directory from a backup
    Restore(RestoreArgs),
}

impl Offline {
    fn dir(&self) -> &DirArgs {
        match self {
            Offline::Verify(d)
            | Offline::Recover(d)
            | Offline::Snapshot(d)
            | Offline::Reindex(d) => d,
            Offline::Replay(a) => &a.dir,
            Offline::Inspect(a) => &a.dir,
            Offline::Backup(a) => &a.dir,
            Offline::Restore(a) => &a.dir,
        }
    }

    fn name(&self) -> &'static str {
        match self {
            Offline::Verify(_) => "verify",
            Offline::Recover(_) => "recover",
            Offline::Snapshot(_) => "snapshot",
            Offline::Replay(_) => "replay",
            Offline::Reindex(_) => "reindex",
            Offline::Inspect(_) => "inspect",
            Offline::Backup(_) => "backup",
            Offline::Restore(_) => "restore",
        }
    }
}

/// Progress bars on stderr, drawn only on a terminal.
struct Bars {
    bar: parking_lot::Mutex<Option<ProgressBar>>,
    visible: bool,
}

impl Bars {
    fn new(json: bool) -> Bars {
        Bars {
            bar: parking_lot::Mutex::new(None),
            visible: !json && std::io::stderr().is_terminal(),
        }
    }
}

impl Progress for Bars {
    fn begin(&self, step: &str, total: u64) {
        let bar = if !self.visible {
            ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::hidden())
        } else if total == 0 {
            // A step of unknown length: a spinner that turns by itself while it runs.
            let bar = ProgressBar::new_spinner();
            bar.set_style(
                ProgressStyle::with_template("{spinner} {msg} {pos} {elapsed}")
                    .expect("a valid template"),
            );
            bar.enable_steady_tick(std::time::Duration::from_millis(120));
            bar
        } else {
            let bar = ProgressBar::new(total);
            bar.set_style(
                ProgressStyle::with_template("{msg:24} {wide_bar} {pos}/{len} {elapsed}")
                    .expect("a valid template"),
            );
            bar
        };
        bar.set_message(step.to_string());
        *self.bar.lock() = Some(bar);
    }

    fn advance(&self, units: u64) {
        if let Some(bar) = &*self.bar.lock() {
            bar.inc(units);
        }
    }

    fn end(&self) {
        if let Some(bar) = self.bar.lock().take() {
            bar.finish_and_clear();
        }
    }
}

/// What a command printed, and whether it found problems.
struct Outcome {
    text: String,
    json: Value,
    problems: bool,
}

pub fn run(command: Offline) -> ExitCode {
    let (name, json) = (command.name(), command.dir().json);
    let dir = match command.dir().resolve() {
        Ok(dir) => dir,
        Err(e) => {
            eprintln!("sagalog {name}: {e}");
            return ExitCode::from(2);
        }
    };
    // No timer fires offline: only recover, restore and reindex change the data
    // directory, and none of them the log's records.
    let config = EngineConfig {
        timers: false,
        ..EngineConfig::default()
    };
    let bars = Bars::new(json);
    match execute_partitions(&command, &dir, &config, &bars) {
        Ok(outcome) => {
            if json {
                println!("{}", outcome.json);
            } else {
                print!("{}", outcome.text);
            }
            if outcome.problems {
                ExitCode::from(1)
            } else {
                ExitCode::SUCCESS
            }
        }
        Err(e) => {
            let refused = matches!(
                e,
                EngineError::InvalidRequest { .. }
                    | EngineError::Partitions(_)
                    | EngineError::Storage(StorageError::Locked { .. })
            );
            if json {
                println!("{}", json!({"error": e.to_string()}));
            }
            eprintln!("sagalog {name}: {e}");
            ExitCode::from(if refused { 2 } else { 1 })
        }
    }
}

/// Runs the command on each partition it is for: the data directory's own when it has
/// one (printed as before), else every partition — or `--partition N` — each under its
/// number, its problems counting for the whole.
fn execute_partitions(
    command: &Offline,
    dir: &Path,
    config: &EngineConfig,
    bars: &Bars,
) -> Result<Outcome, EngineError> {
    // What the command reads: a restore reads the backup.
    let source = match command {
        Offline::Restore(a) => a.from.as_path(),
        _ => dir,
    };
    let count = partitions::recorded(source)?.unwrap_or(1);
    let only = command.dir().partition;
    if let Some(p) = only.filter(|&p| p >= count) {
        return Err(EngineError::Partitions(format!(
            "--partition {p}: {} holds {count} partition{} (0..{count})",
            source.display(),
            if count == 1 { "" } else { "s" }
        )));
    }
    if count == 1 {
        return execute(command, dir, config, bars, None);
    }
    match command {
        // The copy records its count, as the data directory does.
        Offline::Backup(a) => {
            let empty = std::fs::read_dir(&a.out).map_or(true, |mut d| d.next().is_none());
            if !empty {
                return Err(EngineError::InvalidRequest {
                    field: "out",
                    message: format!(
                        "{} is not empty; give a new or empty directory",
                        a.out.display()
                    ),
                });
            }
            partitions::settle(&a.out, Some(count))?;
        }
        Offline::Restore(_) => {
            partitions::settle(dir, Some(count))?;
        }
        _ => {}
    }
    let mut text = String::new();
    let mut items = Vec::new();
    let mut problems = false;
    // A pod's data directory holds its own partitions only: the others are not there.
    let present = |p: u32| only.is_some() || partitions::partition_dir(source, count, p).is_dir();
    let chosen: Vec<u32> = (0..count)
        .filter(|&p| only.is_none_or(|only| only == p) && present(p))
        .collect();
    if chosen.is_empty() {
        return Err(EngineError::Partitions(format!(
            "{} records {count} partitions and holds none of them",
            source.display()
        )));
    }
    for p in chosen {
        let outcome = execute(command, dir, config, bars, Some((count, p)))
            .map_err(|e| EngineError::Partitions(format!("partition {p}: {e}")))?;
        text.push_str(&format!("partition {p}:\n"));
        for line in outcome.text.lines() {
            text.push_str(&format!("  {line}\n"));
        }
        problems |= outcome.problems;
        items.push(json!({"partition": p, "result": outcome.json}));
    }
    let mut json = json!({"partitions": items});
    if let Offline::Replay(_) = command {
        // The counts of the whole deployment, as the server's gauges show them.
        let mut total = serde_json::Map::new();
        for item in &items {
            let counts = item["result"]["status_counts"]
                .as_object()
                .into_iter()
                .flatten();
            for (status, count) in counts {
                let sum = total.get(status).and_then(Value::as_u64).unwrap_or(0);
                total.insert(status.clone(), json!(sum + count.as_u64().unwrap_or(0)));
            }
        }
        text.push_str("every partition:\n");
        for (status, count) in &total {
            text.push_str(&format!("  {status:<20} {count}\n"));
        }
        json["status_counts"] = Value::Object(total);
    }
    Ok(Outcome {
        text,
        json,
        problems,
    })
}

/// The command on the data directory `dir`, or on partition `p` of `count` in it.
fn execute(
    command: &Offline,
    dir: &Path,
    config: &EngineConfig,
    bars: &Bars,
    partition: Option<(u32, u32)>,
) -> Result<Outcome, EngineError> {
    let at = |dir: &Path| match partition {
        Some((count, p)) => partitions::partition_dir(dir, count, p),
        None => dir.to_path_buf(),
    };
    let dir = &at(dir);
    match command {
        Offline::Verify(_) => verify_outcome(dir, config, bars),
        Offline::Recover(_) => recover_outcome(dir, config, bars),
        Offline::Snapshot(_) => snapshot_outcome(dir, config, bars),
        Offline::Replay(a) => replay_outcome(a, dir, config, bars),
        Offline::Reindex(_) => reindex_outcome(dir, config, bars),
        Offline::Inspect(a) => inspect_outcome(a, dir, config),
        Offline::Backup(a) => backup_outcome(&a.out, dir, config, bars, at(&a.out)),
        Offline::Restore(a) => restore_outcome(&at(&a.from), dir, config, bars),
    }
}

/// `verify`: checks, changing nothing.
fn verify_outcome(dir: &Path, config: &EngineConfig, bars: &Bars) -> Result<Outcome, EngineError> {
    let report = offline::verify(dir, config, bars)?;
    Ok(Outcome {
        text: verify_text(&report),
        problems: !report.is_clean(),
        json: serde_json::to_value(&report).expect("serializes"),
    })
}

/// `recover`: cuts the damage, rebuilds the indexes, verifies.
fn recover_outcome(dir: &Path, config: &EngineConfig, bars: &Bars) -> Result<Outcome, EngineError> {
    let report = offline::recover(dir, config, bars)?;
    let mut text = match &report.cut {
        Some(cut) => format!(
            "cut the log at offset {} ({}): {} bytes and {} whole segments moved to {}\n",
            cut.next_offset,
            cut.problem,
            cut.moved_bytes,
            cut.moved_segments,
            cut.aside.display()
        ),
        None => "nothing to cut: the log is whole\n".to_string(),
    };
    for path in &report.snapshots_moved {
        text.push_str(&format!(
            "moved aside snapshot {} (unusable or past the new head)\n",
            path.display()
        ));
    }
    text.push_str(&format!(
        "rebuilt the indexes from {} records\n",
        report.reindexed_records
    ));
    Ok(verified(text, &report.verify, &report))
}

/// `snapshot`: opens the engine (replaying the log) and writes a snapshot.
fn snapshot_outcome(
    dir: &Path,
    config: &EngineConfig,
    bars: &Bars,
) -> Result<Outcome, EngineError> {
    offline::require_data_dir(dir)?;
    bars.begin("replaying the log", 0);
    let engine = Engine::open(dir, config.clone());
    bars.end();
    let engine = engine?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| {
            EngineError::from(Inconsistency::TaskFailed {
                what: "starting a runtime",
                reason: e.to_string(),
            })
        })?;
    let info = runtime.block_on(engine.snapshot())?;
    Ok(Outcome {
        text: format!(
            "snapshot at offset {} written to {} ({} bytes)\n",
            info.offset,
            info.path.display(),
            info.bytes
        ),
        json: json!({"offset": info.offset, "path": info.path, "bytes": info.bytes}),
        problems: false,
    })
}

/// `replay`: the status counts a replay gives.
fn replay_outcome(
    a: &ReplayArgs,
    dir: &Path,
    config: &EngineConfig,
    bars: &Bars,
) -> Result<Outcome, EngineError> {
    bars.begin("replaying the log", 0);
    let summary = offline::replay(
        dir,
        config,
        a.from_snapshot == FromSnapshot::Latest,
        a.to_offset,
    );
    bars.end();
    let summary = summary?;
    let mut text = format!(
        "replayed {} records from offset {} to {}\n",
        summary.replayed, summary.snapshot_offset, summary.to_offset
    );
    for (status, count) in &summary.status_counts {
        text.push_str(&format!("{status:<20} {count}\n"));
    }
    Ok(Outcome {
        text,
        json: serde_json::to_value(&summary).expect("serializes"),
        problems: false,
    })
}

/// `reindex`: rebuilds the indexes from the log.
fn reindex_outcome(dir: &Path, config: &EngineConfig, bars: &Bars) -> Result<Outcome, EngineError> {
    offline::require_data_dir(dir)?;
    bars.begin("rebuilding the indexes", 0);
    let records = Engine::reindex(dir, config);
    bars.end();
    let records = records?;
    Ok(Outcome {
        text: format!("rebuilt the indexes from {records} records\n"),
        json: json!({"records": records}),
        problems: false,
    })
}

/// `inspect`: records as JSON lines.
fn inspect_outcome(
    a: &InspectArgs,
    dir: &Path,
    config: &EngineConfig,
) -> Result<Outcome, EngineError> {
    let records = offline::inspect(dir, config, a.saga.as_deref(), a.from, a.limit)?;
    let lines: Vec<Value> = records.into_iter().map(|(o, e)| entry_json(o, e)).collect();
    let text = lines.iter().map(|l| format!("{l}\n")).collect();
    Ok(Outcome {
        text,
        json: Value::Array(lines),
        problems: false,
    })
}

/// `backup`: a consistent copy.
fn backup_outcome(
    named: &Path,
    dir: &Path,
    config: &EngineConfig,
    bars: &Bars,
    out: PathBuf,
) -> Result<Outcome, EngineError> {
    let manifest = offline::backup(dir, &out, config, bars)?;
    Ok(Outcome {
        text: format!(
            "backup of the log below offset {} ({} segments, {} bytes, snapshot at {}) in {}\n",
            manifest.offset,
            manifest.segments,
            manifest.bytes,
            manifest
                .snapshot_offset
                .map_or_else(|| "none".to_string(), |o| o.to_string()),
            named.display()
        ),
        json: serde_json::to_value(&manifest).expect("serializes"),
        problems: false,
    })
}

/// `restore`: a backup put back, then verified.
fn restore_outcome(
    from: &Path,
    dir: &Path,
    config: &EngineConfig,
    bars: &Bars,
) -> Result<Outcome, EngineError> {
    let report = offline::restore(from, dir, config, bars)?;
    let text = format!(
        "restored the log below offset {} into {}; rebuilt the indexes from {} records\n",
        report.manifest.offset,
        dir.display(),
        report.reindexed_records
    );
    Ok(verified(text, &report.verify, &report))
}

/// The outcome of a command that ends by verifying: its text then the verify report's,
/// with problems when the directory is not clean.
fn verified(
    mut text: String,
    verify: &offline::VerifyReport,
    report: &impl serde::Serialize,
) -> Outcome {
    text.push_str(&verify_text(verify));
    Outcome {
        text,
        problems: !verify.is_clean(),
        json: serde_json::to_value(report).expect("serializes"),
    }
}

fn verify_text(report: &offline::VerifyReport) -> String {
    let log = &report.log;
    let mut text = format!(
        "log: {} segments, {} records, offsets {}..{}, {} bytes\n",
        log.segments, log.records, log.start_offset, log.next_offset, log.bytes
    );
    text.push_str(&format!("snapshots: {}\n", report.snapshots.len()));
    match &report.index.skipped {
        Some(why) => text.push_str(&format!("index: not checked: {why}\n")),
        None => text.push_str(&format!(
            "index: watermark {}, {} finished sagas, {} dead letters checked\n",
            report.index.watermark, report.index.sagas, report.index.dead_letters
        )),
    }
    let problems = report.problems();
    if problems.is_empty() {
        text.push_str("clean\n");
    } else {
        text.push_str(&format!("{} problems:\n", problems.len()));
        for problem in problems {
            text.push_str(&format!("  {problem}\n"));
        }
    }
    text
}

/// One record as `sagalog inspect` prints it.
fn entry_json(offset: u64, entry: Entry) -> Value {
    match entry {
        Entry::Saga { record, .. } => {
            let saga_id = record.saga_id.to_string();
            let mut item = sagalog_http::json::history_item(&HistoryItem { offset, record }, None);
            item["saga_id"] = json!(saga_id);
            item
        }
        Entry::DefinitionRegistered { json } => json!({
            "offset": offset, "kind": "definition_registered",
            "definition": serde_json::from_str::<Value>(&json).unwrap_or(Value::String(json)),
        }),
        Entry::DeadLettered {
            saga_id,
            command_offset,
            reason,
        } => json!({"offset": offset, "kind": "dead_lettered", "saga_id": saga_id,
                    "command_offset": command_offset, "reason": reason}),
        Entry::DeadLetterReplayed {
            dead_letter_offset,
            command_offset,
        } => json!({"offset": offset, "kind": "dead_letter_replayed",
                    "dead_letter_offset": dead_letter_offset, "command_offset": command_offset}),
        Entry::DeliveryPaused {
            topics,
            reason,
            at_ms,
        } => {
            json!({"offset": offset, "kind": "delivery_paused", "at": sagalog_http::json::rfc3339(at_ms),
                    "topics": topics, "all": topics.is_empty(), "reason": reason})
        }
        Entry::DeliveryResumed { topics, at_ms } => {
            json!({"offset": offset, "kind": "delivery_resumed", "at": sagalog_http::json::rfc3339(at_ms),
                   "topics": topics, "all": topics.is_empty()})
        }
    }
}
