//! The runbook drill: every `bash` block of `monitoring/RUNBOOKS.md`, in order, run by
//! bash against a real `sagalog serve` (with a real Kafka broker, tansu, so that dead
//! letters exist) holding sagas in every state the runbooks handle. Blocks that read the
//! data directory offline run with the server stopped; the server is started again on
//! the same directory for the blocks after them. A block fails the test when it exits
//! non-zero (the steps use `curl -f` and `jq -e`), and the outcomes the procedures
//! promise are checked at the end.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::{admin, data_dir, get, post, serve, TOKEN};
use hyper::Method;
use sagalog_testkit::process::{Server, Tansu};
use sagalog_testkit::wait_until;
use serde_json::{json, Value};

const RUNBOOKS: &str = include_str!("../monitoring/RUNBOOKS.md");

/// A block that reads the data directory with an offline command needs the server
/// stopped (`backup` runs beside it).
fn offline(block: &str) -> bool {
    [
        "verify", "recover", "replay", "inspect", "snapshot", "reindex",
    ]
    .iter()
    .any(|command| block.contains(&format!("sagalog {command} --data-dir \"$DATA\"")))
}

fn start(dir: &Path, brokers: &str) -> Server {
    serve(
        dir,
        &[
            "--kafka-brokers",
            brokers,
            // Commands over 4 KiB are refused by the relay: the big saga's command is
            // dead-lettered, for the dead-letter procedure.
            "--kafka-max-message-bytes",
            "4096",
            "--admin-token",
            TOKEN,
        ],
    )
}

async fn reply(c: &mut sagalog_testkit::client::Client, id: &str, step: &str, outcome: &str) {
    let body = json!({"event_id": format!("{id}-{step}-{outcome}"), "step": step,
                      "outcome": outcome, "attempt": 1, "reason": format!("drill: {step} {outcome}")});
    let answer = post(c, &format!("/api/v1/sagas/{id}/events"), body).await;
    assert_eq!(
        answer.status,
        202,
        "{id} {step} {outcome}: {}",
        answer.text()
    );
}

async fn saga(c: &mut sagalog_testkit::client::Client, id: &str) -> Value {
    get(c, &format!("/api/v1/sagas/{id}")).await.json()
}

/// Sagas in every state the runbooks look for: compensated (first step failed),
/// compensating, COMPENSATION_FAILED, IN_PROGRESS, and one dead-lettered command.
async fn scenario(server: &Server) {
    let mut c = common::client(server).await;
    let step = |name: &str, compensable: bool| {
        json!({"name": name, "topic": format!("drill.{name}"), "compensable": compensable,
               "timeout_ms": 3_600_000, "max_attempts": 1, "backoff_ms": 100})
    };
    let definition = json!({"name": "drill", "version": 1,
                            "steps": [step("reserve", true), step("charge", true), step("ship", false)]});
    common::put_definition(&mut c, &definition).await;
    let start = |id: &str| json!({"type": "drill", "saga_id": id, "payload": {"order": id}});
    for id in [
        "failed-1", "failed-2", "failed-3", "comp-1", "comp-2", "run-1", "run-2",
    ] {
        assert_eq!(post(&mut c, "/api/v1/sagas", start(id)).await.status, 201);
    }
    for id in ["failed-1", "failed-2", "failed-3"] {
        reply(&mut c, id, "reserve", "failed").await;
    }
    for id in ["comp-1", "comp-2", "run-1", "run-2"] {
        reply(&mut c, id, "reserve", "succeeded").await;
    }
    for id in ["comp-1", "comp-2"] {
        reply(&mut c, id, "charge", "failed").await;
    }
    reply(&mut c, "comp-1", "reserve", "compensation_failed").await;
    assert_eq!(saga(&mut c, "failed-1").await["status"], "COMPENSATED");
    assert_eq!(
        saga(&mut c, "comp-1").await["status"],
        "COMPENSATION_FAILED"
    );
    assert_eq!(saga(&mut c, "comp-2").await["status"], "FAILED");
    assert_eq!(saga(&mut c, "run-1").await["status"], "IN_PROGRESS");

    let big = json!({"type": "drill", "saga_id": "big-1", "payload": {"blob": "x".repeat(10_000)}});
    assert_eq!(post(&mut c, "/api/v1/sagas", big).await.status, 201);
    let what = "the big command dead-lettered";
    wait_until(what, Duration::from_secs(60), async || {
        let page = dead_letters(&mut c).await;
        let listed = page["items"]
            .as_array()
            .is_some_and(|items| !items.is_empty());
        listed.then_some(()).ok_or(page)
    })
    .await;
}

async fn dead_letters(c: &mut sagalog_testkit::client::Client) -> Value {
    admin(c, Method::GET, "/internal/v1/outbox/dead-letters", None)
        .await
        .json()
}

/// Runs a block; returns the `ID` it set, which later blocks of its section use (as
/// they would in the operator's one shell).
fn run(block: &common::Block, env: &[(&str, String)]) -> Option<String> {
    let binary = Path::new(env!("CARGO_BIN_EXE_sagalog"));
    let path = format!(
        "{}:{}",
        binary.parent().unwrap().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let script = format!("{}\nprintf '\\n__ID=%s\\n' \"${{ID-}}\"\n", block.text);
    let out = Command::new("bash")
        .args(["-euo", "pipefail", "-c", &script])
        .envs(env.iter().map(|(k, v)| (k, v)))
        .env("PATH", path)
        .output()
        .expect("bash runs");
    assert!(
        out.status.success(),
        "runbook section {:?}: this block failed ({}):\n{}\nstdout:\n{}\nstderr:\n{}",
        block.section,
        out.status,
        block.text,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let id = stdout.lines().last()?.strip_prefix("__ID=")?;
    (!id.is_empty()).then(|| id.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_runbook_step_runs_against_a_real_server() {
    let all = common::fenced_blocks(RUNBOOKS);
    let runnable: Vec<&common::Block> = all.iter().filter(|b| b.language == "bash").collect();
    assert!(runnable.len() >= 20, "only {} bash blocks", runnable.len());
    for block in &all {
        assert!(
            ["bash", "sh", "promql"].contains(&block.language.as_str()),
            "section {:?}: a block in {:?} (bash, sh or promql)",
            block.section,
            block.language
        );
    }

    let tansu = Tansu::start();
    let brokers = tansu.brokers();
    let root = tempfile::tempdir().unwrap();
    let dir = data_dir(&root);
    let mut server = Some(start(&dir, &brokers));
    scenario(server.as_ref().unwrap()).await;

    // Every saga of the scenario counts as stuck: BEFORE is a minute from now.
    let before = (std::time::SystemTime::now() + Duration::from_secs(60))
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let before = Command::new("date")
        .args(["-u", "-d", &format!("@{before}"), "+%Y-%m-%dT%H:%M:%SZ"])
        .output()
        .unwrap();
    let before = String::from_utf8(before.stdout).unwrap().trim().to_string();

    let mut id: Option<(String, String)> = None; // (section, ID)
    for block in runnable {
        let needs_stop = offline(&block.text);
        if needs_stop {
            if let Some(s) = server.take() {
                assert!(s.terminate().unwrap().success());
            }
        } else if server.is_none() {
            server = Some(start(&dir, &brokers));
        }
        let url = server
            .as_ref()
            .map_or_else(String::new, |s| format!("http://{}", s.addr));
        let section_id = id
            .as_ref()
            .filter(|(section, _)| *section == block.section)
            .map(|(_, id)| id.clone());
        let mut env = vec![
            ("SAGALOG", url),
            ("TOKEN", TOKEN.to_string()),
            ("DATA", dir.display().to_string()),
            ("BACKUP", root.path().join("backup").display().to_string()),
            (
                "RESTORED",
                root.path().join("restored").display().to_string(),
            ),
            ("BEFORE", before.clone()),
            // The step topic the emergency stop and the gradual recovery name.
            ("TOPIC", "drill.charge".to_string()),
        ];
        env.extend(section_id.map(|v| ("ID", v)));
        if let Some(set) = run(block, &env) {
            id = Some((block.section.clone(), set));
        }
    }

    // What the procedures promised.
    let server = server.unwrap_or_else(|| start(&dir, &brokers));
    let mut c = common::client(&server).await;
    assert_eq!(
        saga(&mut c, "comp-1").await["status"],
        "FAILED",
        "the retry of CompensationFailures re-issued the compensation"
    );
    let letters = dead_letters(&mut c).await;
    assert!(
        letters["items"][0]["replayed_at_offset"].is_u64(),
        "the dead letter was replayed: {letters}"
    );
    let mut compensated_by_hand = 0;
    for id in ["run-1", "run-2"] {
        let state = saga(&mut c, id).await;
        if state["status"] == "COMPENSATED" {
            let history = get(&mut c, &format!("/api/v1/sagas/{id}/history"))
                .await
                .text();
            assert!(history.contains("refunded by hand"), "{history}");
            compensated_by_hand += 1;
        }
    }
    assert_eq!(compensated_by_hand, 1, "one stuck saga was overridden");
    assert!(root.path().join("backup/MANIFEST.json").exists());
    let delivery = admin(&mut c, Method::GET, "/internal/v1/pause", None)
        .await
        .json();
    assert_eq!(
        delivery["paused_topics"],
        json!([]),
        "the gradual recovery resumed everything: {delivery}"
    );
    let verify = common::sagalog(&[
        "verify",
        "--data-dir",
        root.path().join("restored").to_str().unwrap(),
    ]);
    assert!(verify.status.success(), "the restored directory verifies");
}
