//! The offline commands (docs/recovery.md) run as an operator would run them, on data
//! directories the real `sagalog serve` wrote: verify and recover a flipped byte,
//! refuse a directory a server holds, backup under load and restore, replay and
//! inspect agreeing with the server, and a deleted index rebuilt.

mod common;

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use common::{data_dir, get, post, sagalog, serve, status_gauge};
use hyper::StatusCode;
use sagalog_storage::testing::tree;
use serde_json::{json, Value};

fn text(output: &Output) -> String {
    format!(
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        output.status.code(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

fn json_of(output: &Output) -> Value {
    serde_json::from_slice(&output.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(output)))
}

fn arg(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// Starts `count` order sagas named `{prefix}-{i}` and answers the first step of each:
/// every third with a failure when `fail` (its retry then waits on a timer).
async fn sagas_failing(
    c: &mut sagalog_testkit::client::Client,
    prefix: &str,
    count: usize,
    fail: bool,
) {
    for i in 0..count {
        let id = format!("{prefix}-{i}");
        let started = post(
            c,
            "/api/v1/sagas",
            json!({"type": "order", "saga_id": id, "payload": {"i": i}}),
        )
        .await;
        assert_eq!(started.status, StatusCode::CREATED, "{}", started.text());
        let reply = json!({"event_id": format!("{id}-r"), "step": "reserve_inventory",
                           "outcome": if fail && i % 3 == 0 { "failed" } else { "succeeded" }, "attempt": 1});
        let answered = post(c, &format!("/api/v1/sagas/{id}/events"), reply).await;
        assert_eq!(answered.status, StatusCode::ACCEPTED, "{}", answered.text());
    }
}

/// Answers every outstanding command of saga `id` with success until it completes.
async fn sagas(c: &mut sagalog_testkit::client::Client, prefix: &str, count: usize) {
    sagas_failing(c, prefix, count, true).await;
}

async fn complete(c: &mut sagalog_testkit::client::Client, id: &str) {
    for _ in 0..8 {
        let saga = get(c, &format!("/api/v1/sagas/{id}")).await.json();
        if saga["status"] == "COMPLETED" {
            return;
        }
        let step = saga["current_step"]
            .as_str()
            .expect("a command is outstanding")
            .to_string();
        let attempt = saga["steps"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["name"] == step)
            .unwrap()["attempts"]
            .clone();
        let reply = json!({"event_id": format!("{id}-{step}-{attempt}"), "step": step, "outcome": "succeeded", "attempt": attempt});
        let answered = post(c, &format!("/api/v1/sagas/{id}/events"), reply).await;
        assert_eq!(answered.status, StatusCode::ACCEPTED, "{}", answered.text());
    }
    panic!("{id} did not complete");
}

async fn stop(server: sagalog_testkit::process::Server) {
    let status = tokio::task::spawn_blocking(move || server.terminate().unwrap())
        .await
        .unwrap();
    assert!(status.success(), "{status}");
}

fn segments(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir.join("log"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .collect();
    files.sort();
    files
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flipped_byte_stops_serve_verify_names_it_and_recover_fixes_it() {
    let root = tempfile::tempdir().unwrap();
    let dir = data_dir(&root);
    let server = serve(&dir, &["--segment-bytes", "4096"]);
    let mut c = common::client(&server).await;
    sagas(&mut c, "s", 40).await;
    drop(c);
    stop(server).await;
    let files = segments(&dir);
    assert!(files.len() >= 3, "{files:?}");
    let victim = &files[1];
    let base: u64 = victim
        .file_stem()
        .unwrap()
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(victim)
        .unwrap();
    let mut byte = [0u8];
    file.read_exact_at(&mut byte, 24 + 8 + 3).unwrap();
    file.write_all_at(&[byte[0] ^ 0x20], 24 + 8 + 3).unwrap();
    drop(file);
    let name = victim.file_name().unwrap().to_str().unwrap().to_string();

    // serve refuses, naming segment and offset.
    let refused = sagalog_testkit::process::Server::start(
        Path::new(env!("CARGO_BIN_EXE_sagalog")),
        &dir,
        &["--segment-bytes", "4096"],
    )
    .err()
    .expect("serve refuses a corrupt log");
    assert!(
        refused.contains(&name) && refused.contains(&format!("offset {base}")),
        "{refused}"
    );
    assert!(refused.contains("sagalog recover"), "{refused}");

    let verify = sagalog(&["verify", "--data-dir", arg(&dir)]);
    assert_eq!(verify.status.code(), Some(1), "{}", text(&verify));
    let out = String::from_utf8_lossy(&verify.stdout);
    assert!(
        out.contains("corrupt in segment")
            && out.contains(&name)
            && out.contains(&format!("at offset {base}")),
        "{out}"
    );
    let report = json_of(&sagalog(&["verify", "--data-dir", arg(&dir), "--json"]));
    assert_eq!(report["log"]["problems"][0]["offset"], base);
    assert_eq!(report["log"]["problems"][0]["kind"], "corrupt");

    let recover = sagalog(&["recover", "--data-dir", arg(&dir)]);
    assert_eq!(recover.status.code(), Some(0), "{}", text(&recover));
    let out = String::from_utf8_lossy(&recover.stdout);
    assert!(
        out.contains(&format!("cut the log at offset {base}")) && out.ends_with("clean\n"),
        "{out}"
    );
    let aside: Vec<PathBuf> = std::fs::read_dir(dir.join("recovered"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(aside.len(), 1);
    let note = std::fs::read_to_string(aside[0].join("NOTE.txt")).unwrap();
    assert!(note.contains(&name), "{note}");
    assert!(aside[0].join(format!("{name}.from-byte-24")).exists());

    let verify = sagalog(&["verify", "--data-dir", arg(&dir)]);
    assert_eq!(verify.status.code(), Some(0), "{}", text(&verify));
    let server = serve(&dir, &["--segment-bytes", "4096"]);
    let mut c = common::client(&server).await;
    assert_eq!(
        get(&mut c, "/api/v1/sagas/s-0").await.json()["saga_id"],
        "s-0"
    );
    assert_eq!(
        get(&mut c, "/api/v1/sagas/s-39").await.status,
        StatusCode::NOT_FOUND,
        "cut away"
    );
    sagas(&mut c, "after", 3).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_commands_refuse_a_directory_a_server_holds_but_backup_reads_beside_it() {
    let root = tempfile::tempdir().unwrap();
    let dir = data_dir(&root);
    let server = serve(&dir, &[]);
    let mut c = common::client(&server).await;
    sagas(&mut c, "h", 5).await;
    for command in [
        vec!["verify"],
        vec!["recover"],
        vec!["snapshot"],
        vec!["replay"],
        vec!["reindex"],
        vec!["inspect"],
    ] {
        let mut args = command.clone();
        args.extend(["--data-dir", arg(&dir)]);
        let out = sagalog(&args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{command:?}: {}", text(&out));
        assert!(
            err.contains(arg(&dir)) && err.contains("in use by another process (pid"),
            "{command:?}: {err}"
        );
    }
    let not_empty = sagalog(&[
        "restore",
        "--from",
        arg(&root.path().join("b")),
        "--data-dir",
        arg(&dir),
    ]);
    assert_eq!(not_empty.status.code(), Some(2), "{}", text(&not_empty));
    let backup = sagalog(&[
        "backup",
        "--data-dir",
        arg(&dir),
        "--out",
        arg(&root.path().join("b")),
    ]);
    assert_eq!(backup.status.code(), Some(0), "{}", text(&backup));
    let missing = sagalog(&["verify", "--data-dir", arg(&root.path().join("nothing"))]);
    assert_eq!(missing.status.code(), Some(2), "{}", text(&missing));
    assert!(
        !root.path().join("nothing").exists(),
        "an offline command makes no directory"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_taken_under_load_restores_to_the_same_sagas_and_gauges() {
    let root = tempfile::tempdir().unwrap();
    let dir = data_dir(&root);
    let options = ["--segment-bytes", "8192", "--snapshot-every-records", "150"];
    let server = serve(&dir, &options);
    let addr = server.addr;
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop_load = done.clone();
    let load = tokio::spawn(async move {
        let mut c = sagalog_testkit::client::Client::connect(addr)
            .await
            .unwrap();
        let mut round = 0;
        while !stop_load.load(std::sync::atomic::Ordering::SeqCst) || round < 3 {
            // No failures: no timer fires, so the restored server stays as restored.
            sagas_failing(&mut c, &format!("load{round}"), 10, false).await;
            for i in [1, 2, 4] {
                complete(&mut c, &format!("load{round}-{i}")).await;
            }
            round += 1;
        }
        round
    });
    tokio::time::sleep(Duration::from_millis(700)).await;
    let backup_dir = root.path().join("backup");
    let (d, b) = (dir.clone(), backup_dir.clone());
    let backup = tokio::task::spawn_blocking(move || {
        sagalog(&["backup", "--data-dir", arg(&d), "--out", arg(&b), "--json"])
    })
    .await
    .unwrap();
    assert_eq!(backup.status.code(), Some(0), "{}", text(&backup));
    let manifest = json_of(&backup);
    let offset = manifest["offset"].as_u64().unwrap();
    assert!(!load.is_finished(), "the backup ran under load");
    done.store(true, std::sync::atomic::Ordering::SeqCst);
    let rounds = load.await.unwrap();
    assert!(rounds > 3, "{rounds}");
    stop(server).await;
    assert!(offset > 0);

    let restored = root.path().join("restored");
    let restore = sagalog(&[
        "restore",
        "--from",
        arg(&backup_dir),
        "--data-dir",
        arg(&restored),
    ]);
    assert_eq!(restore.status.code(), Some(0), "{}", text(&restore));
    // The restored directory holds exactly the source's state at the backup's offset.
    let at_offset = json_of(&sagalog(&[
        "replay",
        "--data-dir",
        arg(&dir),
        "--from-snapshot",
        "none",
        "--to-offset",
        &offset.to_string(),
        "--json",
    ]));
    let from_backup = json_of(&sagalog(&[
        "replay",
        "--data-dir",
        arg(&restored),
        "--json",
    ]));
    assert_eq!(from_backup["status_counts"], at_offset["status_counts"]);

    let source = serve(&dir, &options);
    let copy = serve(&restored, &options);
    let (mut s, mut r) = (common::client(&source).await, common::client(&copy).await);
    let gauges = status_gauge(&get(&mut r, "/metrics").await.text());
    assert_eq!(gauges, at_offset["status_counts"], "gauges after restore");
    let listed = get(&mut r, "/api/v1/sagas?limit=1000").await.json();
    let items = listed["items"].as_array().unwrap();
    assert!(!items.is_empty());
    let mut whole = 0;
    for item in items {
        let id = item["saga_id"].as_str().unwrap();
        let mine = get(&mut r, &format!("/api/v1/sagas/{id}/history"))
            .await
            .json();
        let theirs = get(&mut s, &format!("/api/v1/sagas/{id}/history"))
            .await
            .json();
        let (mine, theirs) = (
            mine["items"].as_array().unwrap(),
            theirs["items"].as_array().unwrap(),
        );
        assert_eq!(
            mine[..],
            theirs[..mine.len()],
            "{id}: the backup holds a prefix of its history"
        );
        assert!(mine.iter().all(|h| h["offset"].as_u64().unwrap() < offset));
        if mine.len() == theirs.len() {
            whole += 1;
            assert_eq!(
                get(&mut r, &format!("/api/v1/sagas/{id}")).await.json(),
                get(&mut s, &format!("/api/v1/sagas/{id}")).await.json(),
                "{id}"
            );
        }
    }
    assert!(whole > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_inspect_and_reindex_agree_with_the_server() {
    let root = tempfile::tempdir().unwrap();
    let dir = data_dir(&root);
    let server = serve(&dir, &["--snapshot-every-records", "40"]);
    let mut c = common::client(&server).await;
    // No failures: a retry's timer would move the state on between the scrape and the
    // stop, and the gauges are compared with a replay of the log at the stop.
    sagas_failing(&mut c, "r", 30, false).await;
    for i in (0..30).filter(|i| i % 2 == 0 && i % 3 != 0) {
        complete(&mut c, &format!("r-{i}")).await;
    }
    let gauges = status_gauge(&get(&mut c, "/metrics").await.text());
    let history = get(&mut c, "/api/v1/sagas/r-3/history").await.json();
    drop(c);
    stop(server).await;

    let latest = json_of(&sagalog(&["replay", "--data-dir", arg(&dir), "--json"]));
    let none = json_of(&sagalog(&[
        "replay",
        "--data-dir",
        arg(&dir),
        "--from-snapshot",
        "none",
        "--json",
    ]));
    assert!(latest["snapshot_offset"].as_u64().unwrap() > 0, "{latest}");
    assert_eq!(none["snapshot_offset"], 0);
    assert_eq!(latest["status_counts"], none["status_counts"]);
    assert_eq!(latest["status_counts"], gauges);

    let inspect = sagalog(&[
        "inspect",
        "--data-dir",
        arg(&dir),
        "--saga",
        "r-3",
        "--limit",
        "1000",
    ]);
    assert_eq!(inspect.status.code(), Some(0), "{}", text(&inspect));
    let lines: Vec<Value> = String::from_utf8_lossy(&inspect.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let offsets = |items: &[Value]| {
        items
            .iter()
            .map(|i| i["offset"].clone())
            .collect::<Vec<_>>()
    };
    assert_eq!(
        offsets(&lines),
        offsets(history["items"].as_array().unwrap())
    );
    assert!(lines.iter().all(|l| l["saga_id"] == "r-3"));
    let page = sagalog(&[
        "inspect",
        "--data-dir",
        arg(&dir),
        "--from",
        "5",
        "--limit",
        "3",
    ]);
    let page: Vec<Value> = String::from_utf8_lossy(&page.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(offsets(&page), [json!(5), json!(6), json!(7)]);

    // A deleted index is rebuilt by reindex (and by serve on its own).
    std::fs::remove_dir_all(dir.join("index")).unwrap();
    let reindex = sagalog(&["reindex", "--data-dir", arg(&dir)]);
    assert_eq!(reindex.status.code(), Some(0), "{}", text(&reindex));
    let verify = sagalog(&["verify", "--data-dir", arg(&dir)]);
    assert_eq!(verify.status.code(), Some(0), "{}", text(&verify));
    let snapshot = json_of(&sagalog(&["snapshot", "--data-dir", arg(&dir), "--json"]));
    assert!(Path::new(snapshot["path"].as_str().unwrap()).exists());
    std::fs::remove_dir_all(dir.join("index")).unwrap();
    let server = serve(&dir, &[]);
    let mut c = common::client(&server).await;
    let finished = get(&mut c, "/api/v1/sagas?status=COMPLETED&limit=1000")
        .await
        .json();
    assert_eq!(
        finished["items"].as_array().unwrap().len(),
        10,
        "{finished}"
    );
    let history = get(&mut c, "/api/v1/sagas/r-4/history").await.json();
    assert_eq!(history["items"].as_array().unwrap().len(), 8, "{history}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_cuts_a_torn_tail_rewrites_a_partial_header_and_skips_a_corrupt_snapshot() {
    let root = tempfile::tempdir().unwrap();
    let dir = data_dir(&root);
    let options = ["--segment-bytes", "8192"];
    let server = serve(&dir, &options);
    let mut c = common::client(&server).await;
    for part in 0..2 {
        sagas_failing(&mut c, &format!("t{part}"), 15, false).await;
        let taken = post(&mut c, "/internal/v1/snapshots", json!({})).await;
        assert_eq!(taken.status, StatusCode::CREATED, "{}", taken.text());
    }
    let gauges = status_gauge(&get(&mut c, "/metrics").await.text());
    drop(c);
    stop(server).await;

    // A torn tail: half a record after the last whole one (as a crash mid-write leaves).
    let last = segments(&dir).pop().unwrap();
    let bytes = std::fs::read(&last).unwrap();
    // Walk the frames (length | crc | payload) past the 24-byte header to the first
    // zero length: where the records end.
    let mut end = 24usize;
    loop {
        let len = u32::from_le_bytes(bytes[end..end + 4].try_into().unwrap()) as usize;
        if len == 0 {
            break;
        }
        end += 8 + len;
    }
    let end = end as u64;
    let file = std::fs::OpenOptions::new().write(true).open(&last).unwrap();
    file.write_all_at(&[40, 0, 0, 0, 0xde, 0xad, 0xbe, 0xef, 1, 2, 3], end)
        .unwrap();
    drop(file);
    // The newest snapshot is damaged.
    let mut snapshots: Vec<PathBuf> = std::fs::read_dir(dir.join("snapshots"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    snapshots.sort();
    assert!(snapshots.len() >= 2, "{snapshots:?}");
    let newest = snapshots.pop().unwrap();
    let mut damaged = std::fs::read(&newest).unwrap();
    let middle = damaged.len() / 2;
    damaged[middle] ^= 0xff;
    std::fs::write(&newest, damaged).unwrap();

    let server = serve(&dir, &options);
    let mut c = common::client(&server).await;
    assert_eq!(status_gauge(&get(&mut c, "/metrics").await.text()), gauges);
    for i in 0..15 {
        for part in 0..2 {
            let id = format!("t{part}-{i}");
            assert_eq!(
                get(&mut c, &format!("/api/v1/sagas/{id}")).await.status,
                StatusCode::OK
            );
        }
    }
    let log = server.log_text();
    assert!(log.contains("cut a torn tail"), "{log}");
    assert!(
        log.contains("unusable snapshot") || log.contains("corrupt"),
        "{log}"
    );
    sagas(&mut c, "after", 2).await;
    drop(c);
    stop(server).await;

    // A partial header of a next segment (a roll cut short).
    let next_base: u64 = {
        let report = json_of(&sagalog(&["verify", "--data-dir", arg(&dir), "--json"]));
        report["log"]["next_offset"].as_u64().unwrap()
    };
    std::fs::write(
        dir.join("log").join(format!("{next_base:020}.log")),
        b"SGLG",
    )
    .unwrap();
    let server = serve(&dir, &options);
    assert!(
        server.log_text().contains("cut a torn tail"),
        "{}",
        server.log_text()
    );
    let mut c = common::client(&server).await;
    sagas(&mut c, "later", 2).await;
    assert_eq!(
        get(&mut c, "/api/v1/sagas/t0-0").await.status,
        StatusCode::OK
    );
    drop(c);
    stop(server).await;
    // verify names the damaged snapshot; recover moves it aside.
    let verify = sagalog(&["verify", "--data-dir", arg(&dir)]);
    assert_eq!(verify.status.code(), Some(1), "{}", text(&verify));
    let name = newest.file_name().unwrap().to_str().unwrap();
    assert!(
        String::from_utf8_lossy(&verify.stdout).contains(name),
        "{}",
        text(&verify)
    );
    let recover = sagalog(&["recover", "--data-dir", arg(&dir)]);
    assert_eq!(recover.status.code(), Some(0), "{}", text(&recover));
    assert!(String::from_utf8_lossy(&recover.stdout).contains("moved aside snapshot"));
    assert!(!newest.exists());
    let verify = sagalog(&["verify", "--data-dir", arg(&dir)]);
    assert_eq!(verify.status.code(), Some(0), "{}", text(&verify));
}

/// The "find stuck sagas" and "correct a saga's state" procedures of
/// monitoring/RUNBOOKS.md, step by step, against a real server with an admin token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stuck_saga_procedure_runs_as_written() {
    let root = tempfile::tempdir().unwrap();
    let server = serve(&data_dir(&root), &["--admin-token", common::TOKEN]);
    let mut c = common::client(&server).await;
    sagas(&mut c, "stuck", 2).await;
    // 1. Sagas in progress since before now (the runbook puts a date an hour back).
    let before = sagalog_http::json::rfc3339(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64
            + 1000,
    );
    let listed = get(
        &mut c,
        &format!("/api/v1/sagas?status=IN_PROGRESS&toDate={before}&limit=100"),
    )
    .await;
    assert_eq!(listed.status, StatusCode::OK, "{}", listed.text());
    let ids: Vec<String> = listed.json()["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["saga_id"].as_str().unwrap().to_string())
        .collect();
    assert!(ids.contains(&"stuck-1".to_string()), "{ids:?}");
    // 2. Its history.
    let history = get(&mut c, "/api/v1/sagas/stuck-1/history").await;
    assert_eq!(history.status, StatusCode::OK);
    // 3. Re-issue its pending command with a fresh attempt budget.
    let retry = common::admin(
        &mut c,
        hyper::Method::POST,
        "/internal/v1/sagas/stuck-1/retry",
        None,
    )
    .await;
    assert_eq!(retry.status, StatusCode::ACCEPTED, "{}", retry.text());
    // 4. Or set its state by hand, with the reason recorded.
    let body = json!({"status": "COMPENSATED", "reason": "Manual compensation"});
    let patched = common::admin(
        &mut c,
        hyper::Method::PATCH,
        "/internal/v1/sagas/stuck-1/status",
        Some(body),
    )
    .await;
    assert_eq!(patched.status, StatusCode::OK, "{}", patched.text());
    assert_eq!(patched.json()["status"], "COMPENSATED");
    let history = get(&mut c, "/api/v1/sagas/stuck-1/history").await.json();
    let last = history["items"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(
        (last["kind"].as_str(), last["reason"].as_str()),
        (Some("status_overridden"), Some("Manual compensation"))
    );
}

#[test]
fn offline_commands_find_the_data_directory_as_serve_does() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("from-config");
    std::fs::create_dir_all(dir.join("log")).unwrap();
    let config = root.path().join("sagalog.toml");
    std::fs::write(&config, format!("data_dir = {:?}\n", dir.to_str().unwrap())).unwrap();
    // From the config file.
    let out = sagalog(&["verify", "--config", arg(&config), "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(json_of(&out)["data_dir"], dir.to_str().unwrap());
    // The environment wins over the file, as for serve.
    let other = root.path().join("from-env");
    std::fs::create_dir_all(other.join("log")).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_sagalog"))
        .args(["verify", "--config", arg(&config)])
        .env("SAGALOG_DATA_DIR", &other)
        .env("SAGALOG_JSON", "true")
        .output()
        .unwrap();
    assert_eq!(
        json_of(&out)["data_dir"],
        other.to_str().unwrap(),
        "{}",
        text(&out)
    );
    // A config file that does not parse is refused, naming it.
    std::fs::write(&config, "data_dri = 1\n").unwrap();
    let out = sagalog(&["verify", "--config", arg(&config)]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("data_dri"),
        "{}",
        text(&out)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_inspect_and_replay_change_nothing_in_the_data_directory() {
    let root = tempfile::tempdir().unwrap();
    let dir = data_dir(&root);
    let server = serve(&dir, &["--segment-bytes", "8192"]);
    let mut c = common::client(&server).await;
    sagas(&mut c, "w", 6).await;
    complete(&mut c, "w-1").await;
    let taken = post(&mut c, "/internal/v1/snapshots", json!({})).await;
    assert_eq!(taken.status, StatusCode::CREATED, "{}", taken.text());
    drop(c);
    stop(server).await;
    // A torn tail, which serve would cut: inspection must leave it.
    let last = segments(&dir).pop().unwrap();
    let bytes = std::fs::read(&last).unwrap();
    let end = bytes.iter().rposition(|b| *b != 0).unwrap() as u64 + 1;
    let file = std::fs::OpenOptions::new().write(true).open(&last).unwrap();
    file.write_all_at(&[7, 0, 0, 0, 1, 2], end).unwrap();
    drop(file);
    let before = tree(&dir);
    for args in [
        vec!["verify", "--json"],
        vec!["inspect"],
        vec!["inspect", "--saga", "w-1"],
        vec!["replay", "--json"],
        vec!["replay", "--from-snapshot", "none", "--json"],
    ] {
        let mut args = args;
        args.extend(["--data-dir", arg(&dir)]);
        let out = sagalog(&args);
        assert!(
            out.status.code().is_some_and(|code| code <= 1),
            "{args:?}: {}",
            text(&out)
        );
        let after = tree(&dir);
        let changed: Vec<&PathBuf> = after
            .iter()
            .zip(&before)
            .filter(|(a, b)| a != b)
            .map(|(a, _)| &a.0)
            .collect();
        assert!(
            after.len() == before.len() && changed.is_empty(),
            "{args:?} changed the data directory: {changed:?} ({} files before, {} after)",
            before.len(),
            after.len()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_offline_snapshot_fires_no_overdue_timer() {
    let root = tempfile::tempdir().unwrap();
    let dir = data_dir(&root);
    let server = serve(&dir, &[]);
    let mut c = common::client(&server).await;
    let quick = json!({"name": "quick", "version": 1, "steps": [
        {"name": "only", "topic": "quick.commands", "compensable": false,
         "timeout_ms": 2000, "max_attempts": 3, "backoff_ms": 100}]});
    common::put_definition(&mut c, &quick).await;
    let started = post(
        &mut c,
        "/api/v1/sagas",
        json!({"type": "quick", "saga_id": "late", "payload": {}}),
    )
    .await;
    assert_eq!(started.status, StatusCode::CREATED, "{}", started.text());
    drop(c);
    stop(server).await;
    // The step's timeout passes while no server runs: a server would fire it now.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    // The segments, byte for byte (the pre-written next segment beside them is scratch
    // space any writable open may remake).
    let log_files = |dir: &Path| {
        let log = dir.join("log");
        tree(dir)
            .into_iter()
            .filter(|(path, _)| {
                path.starts_with(&log) && path.extension().is_some_and(|e| e == "log")
            })
            .collect::<Vec<_>>()
    };
    let before = log_files(&dir);
    let out = sagalog(&["snapshot", "--data-dir", arg(&dir), "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(
        json_of(&out)["offset"],
        json!(3),
        "the snapshot is of the log as it was: the definition, the start and its command"
    );
    assert!(
        log_files(&dir) == before,
        "the offline snapshot changed the log"
    );
    let inspect = sagalog(&["inspect", "--data-dir", arg(&dir), "--saga", "late"]);
    let kinds: Vec<String> = String::from_utf8_lossy(&inspect.stdout)
        .lines()
        .map(|line| serde_json::from_str::<Value>(line).unwrap()["kind"].to_string())
        .collect();
    assert!(
        !kinds.iter().any(|k| k.contains("timed_out")),
        "no timeout was recorded offline: {kinds:?}"
    );
}
