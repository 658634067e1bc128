//! One server with 4 partitions behaves as one with a single log: sagas complete and
//! compensate through the outbox (read by its cursor over every partition), starts and
//! replies are idempotent, lists page newest first with no gap or repeat, definitions
//! reach every partition, the gauges survive a restart, the count is fixed, and every
//! offline command works on each partition. (The SIGKILL rounds with 4 partitions are in
//! `tests/crash.rs`.)

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use common::{data_dir, get, post, sagalog, serve, status_gauge};
use hyper::StatusCode;
use sagalog_testkit::client::Client;
use serde_json::{json, Value};

const PARTITIONS: &[&str] = &["--partitions", "4"];

fn definition() -> Value {
    let step = |name: &str, compensable: bool| {
        json!({"name": name, "topic": format!("quad.{name}"), "compensable": compensable,
               "timeout_ms": 3_600_000, "max_attempts": 1, "backoff_ms": 1000})
    };
    json!({"name": "quad", "version": 1,
           "steps": [step("reserve", true), step("charge", true), step("ship", false)]})
}

/// The sagas that fail their charge (and are compensated).
fn fails(id: &str) -> bool {
    id.bytes().map(u32::from).sum::<u32>() % 3 == 0
}

/// Answers every command the outbox hands out, following its cursor, until `sagas`
/// have all ended; asserts no command is handed out twice.
async fn participate(c: &mut Client, sagas: &BTreeSet<String>) {
    let mut after: Option<String> = None;
    let mut seen = BTreeSet::new();
    for _ in 0..200 {
        let path = match &after {
            Some(cursor) => format!("/api/v1/outbox?limit=50&wait_ms=200&after={cursor}"),
            None => "/api/v1/outbox?limit=50&wait_ms=200".to_string(),
        };
        let page = get(c, &path).await;
        assert_eq!(page.status, StatusCode::OK, "{}", page.text());
        let page = page.json();
        let next = page["next_after"].as_str().expect("a cursor").to_string();
        assert!(next.starts_with("c."), "{next}");
        after = Some(next);
        for command in page["items"].as_array().unwrap() {
            let event_id = command["event_id"].as_str().unwrap().to_string();
            assert!(seen.insert(event_id.clone()), "{event_id} handed out twice");
            let id = command["saga_id"].as_str().unwrap();
            let step = command["step"].as_str().unwrap();
            let outcome = match (command["action"].as_str().unwrap(), step) {
                ("compensate", _) => "compensated",
                ("execute", "charge") if fails(id) => "failed",
                _ => "succeeded",
            };
            let reply = json!({"event_id": format!("r-{event_id}"), "step": step,
                               "outcome": outcome, "attempt": command["attempt"]});
            let path = format!("/api/v1/sagas/{id}/events");
            let answer = post(c, &path, reply.clone()).await;
            assert_eq!(answer.status, StatusCode::ACCEPTED, "{}", answer.text());
            // The same reply again is answered as before, and changes nothing.
            let again = post(c, &path, reply).await;
            assert_eq!(again.status, StatusCode::OK, "{}", again.text());
        }
        let ended = list_all(c, "status=COMPLETED").await.len()
            + list_all(c, "status=COMPENSATED").await.len();
        if ended == sagas.len() {
            return;
        }
    }
    panic!("the sagas did not all end");
}

/// Every saga a list query gives, following `next_cursor` with pages of 7; asserts the
/// order is newest first and no saga comes twice.
async fn list_all(c: &mut Client, query: &str) -> Vec<String> {
    let mut ids = Vec::new();
    let mut cursor: Option<String> = None;
    let mut last: Option<(String, String)> = None;
    for _ in 0..1000 {
        let path = match &cursor {
            Some(cursor) => format!("/api/v1/sagas?limit=7&{query}&cursor={cursor}"),
            None => format!("/api/v1/sagas?limit=7&{query}"),
        };
        let page = get(c, &path).await;
        assert_eq!(page.status, StatusCode::OK, "{}", page.text());
        let page = page.json();
        for saga in page["items"].as_array().unwrap() {
            let id = saga["saga_id"].as_str().unwrap().to_string();
            let at = saga["updated_at"].as_str().unwrap().to_string();
            if let Some(before) = &last {
                assert!(
                    (at.clone(), id.clone()) < *before,
                    "{id} at {at} after {before:?}"
                );
            }
            assert!(!ids.contains(&id), "{id} listed twice");
            last = Some((at, id.clone()));
            ids.push(id);
        }
        match page["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_string()),
            None => return ids,
        }
    }
    panic!("the list did not end");
}

fn partition_samples(metrics: &str, name: &str) -> BTreeMap<String, f64> {
    common::samples(metrics, &[name])
        .iter()
        .map(|line| {
            let label = line
                .split("partition=\"")
                .nth(1)
                .and_then(|rest| rest.split('"').next())
                .unwrap_or_else(|| panic!("{line} has a partition label"))
                .to_string();
            (label, line.rsplit(' ').next().unwrap().parse().unwrap())
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_partitions_serve_one_api_and_keep_their_count() {
    let root = tempfile::tempdir().unwrap();
    let dir = data_dir(&root);
    let dir_arg = dir.to_str().unwrap().to_string();
    let server = serve(&dir, PARTITIONS);
    let mut c = common::client(&server).await;
    common::put_definition(&mut c, &definition()).await;

    // Starts with an id and without; repeats.
    let mut sagas = BTreeSet::new();
    for n in 0..40 {
        // Payloads of different sizes: pages cut by size hold more or fewer sagas.
        let pad = "x".repeat((n % 5) * 400);
        let body =
            json!({"type": "quad", "saga_id": format!("p-{n}"), "payload": {"n": n, "pad": pad}});
        let answer = post(&mut c, "/api/v1/sagas", body.clone()).await;
        assert_eq!(answer.status, StatusCode::CREATED, "{}", answer.text());
        sagas.insert(format!("p-{n}"));
    }
    for n in 0..20 {
        let answer = post(
            &mut c,
            "/api/v1/sagas",
            json!({"type": "quad", "payload": {"fresh": n}}),
        )
        .await;
        assert_eq!(answer.status, StatusCode::CREATED, "{}", answer.text());
        sagas.insert(answer.json()["saga_id"].as_str().unwrap().to_string());
    }
    let pad = "x".repeat(3 * 400);
    let repeat = json!({"type": "quad", "saga_id": "p-3", "payload": {"n": 3, "pad": pad}});
    assert_eq!(
        post(&mut c, "/api/v1/sagas", repeat).await.status,
        StatusCode::OK
    );
    let conflict = json!({"type": "quad", "saga_id": "p-3", "payload": {"n": 4}});
    assert_eq!(
        post(&mut c, "/api/v1/sagas", conflict).await.status,
        StatusCode::CONFLICT
    );

    // Positions of one partition's kind are refused with a 400 saying which this
    // server takes.
    for path in [
        "/api/v1/outbox?after=5",
        "/api/v1/outbox?after=c.1.2",
        "/internal/v1/outbox/dead-letters?after=5",
    ] {
        common::expect_error(&get(&mut c, path).await, 400, "invalid_request");
    }
    let replay = common::admin(
        &mut c,
        hyper::Method::POST,
        "/internal/v1/outbox/dead-letters/1/replay",
        None,
    )
    .await;
    let message = common::expect_error(&replay, 400, "invalid_request");
    assert!(
        message.contains("partition: required with 4 partitions"),
        "{message}"
    );
    let letters = get(&mut c, "/internal/v1/outbox/dead-letters?after=3.0").await;
    assert_eq!(letters.status, StatusCode::OK, "{}", letters.text());

    participate(&mut c, &sagas).await;

    let listed: BTreeSet<String> = list_all(&mut c, "").await.into_iter().collect();
    assert_eq!(listed, sagas, "every saga listed once");
    let compensated: BTreeSet<String> = list_all(&mut c, "status=COMPENSATED")
        .await
        .into_iter()
        .collect();
    let failing: BTreeSet<String> = sagas.iter().filter(|id| fails(id)).cloned().collect();
    assert_eq!(compensated, failing);
    for id in &sagas {
        let saga = get(&mut c, &format!("/api/v1/sagas/{id}")).await.json();
        let want = if fails(id) {
            "COMPENSATED"
        } else {
            "COMPLETED"
        };
        assert_eq!(saga["status"], want, "{saga}");
    }

    let metrics = get(&mut c, "/metrics").await.text();
    let gauges = status_gauge(&metrics);
    assert_eq!(gauges["COMPENSATED"], json!(failing.len() as u64));
    assert_eq!(
        gauges["COMPLETED"],
        json!((sagas.len() - failing.len()) as u64)
    );
    let heads = partition_samples(&metrics, "sagalog_log_head_offset");
    assert_eq!(
        heads.keys().map(String::as_str).collect::<Vec<_>>(),
        ["0", "1", "2", "3"]
    );
    assert!(
        heads.values().all(|&head| head > 0.0),
        "every partition has sagas: {heads:?}"
    );
    let snapshot = common::admin(&mut c, hyper::Method::POST, "/internal/v1/snapshots", None).await;
    assert_eq!(snapshot.status, StatusCode::CREATED, "{}", snapshot.text());
    assert_eq!(snapshot.json()["partitions"].as_array().unwrap().len(), 4);
    let stats = get(&mut c, "/api/v1/stats").await.json();
    assert_eq!(stats["partitions"], 4);
    assert_eq!(stats["statuses"]["COMPLETED"], gauges["COMPLETED"]);
    drop(c);
    let status = tokio::task::spawn_blocking(move || server.terminate().unwrap())
        .await
        .unwrap();
    assert!(status.success());

    // A different count is refused; none given opens the 4 recorded.
    let refused = sagalog_testkit::process::Server::start(
        Path::new(env!("CARGO_BIN_EXE_sagalog")),
        &dir,
        &["--partitions", "2"],
    )
    .err()
    .expect("a changed partition count is refused");
    assert!(refused.contains("holds 4 partitions, not 2"), "{refused}");
    // Small pages by size: each partition's page ends early, and the merged page must
    // stop where the earliest of them did, or sagas would be skipped.
    let server = serve(&dir, &["--max-list-bytes", "2048"]);
    let mut c = common::client(&server).await;
    let metrics = get(&mut c, "/metrics").await.text();
    assert_eq!(status_gauge(&metrics), gauges, "the gauges after a restart");
    let listed: BTreeSet<String> = list_all(&mut c, "").await.into_iter().collect();
    assert_eq!(listed, sagas, "every saga listed once in pages cut by size");
    // Every partition knows the definition: fresh sagas go to each in turn.
    for n in 0..8 {
        let answer = post(
            &mut c,
            "/api/v1/sagas",
            json!({"type": "quad", "payload": {"after_restart": n}}),
        )
        .await;
        assert_eq!(answer.status, StatusCode::CREATED, "{}", answer.text());
    }
    let heads_after = partition_samples(
        &get(&mut c, "/metrics").await.text(),
        "sagalog_log_head_offset",
    );
    for (p, head) in &heads {
        assert!(heads_after[p] > *head, "partition {p} took a fresh saga");
    }
    drop(c);
    let status = tokio::task::spawn_blocking(move || server.terminate().unwrap())
        .await
        .unwrap();
    assert!(status.success());

    // Offline: every partition, or one.
    let verify = sagalog(&["verify", "--data-dir", &dir_arg, "--json"]);
    assert!(
        verify.status.success(),
        "{}",
        String::from_utf8_lossy(&verify.stdout)
    );
    let verify: Value = serde_json::from_slice(&verify.stdout).unwrap();
    assert_eq!(verify["partitions"].as_array().unwrap().len(), 4);
    let one = sagalog(&[
        "verify",
        "--data-dir",
        &dir_arg,
        "--partition",
        "2",
        "--json",
    ]);
    assert!(one.status.success());
    let one: Value = serde_json::from_slice(&one.stdout).unwrap();
    assert_eq!(one["partitions"][0]["partition"], 2);
    assert_eq!(one["partitions"].as_array().unwrap().len(), 1);
    let beyond = sagalog(&["verify", "--data-dir", &dir_arg, "--partition", "4"]);
    assert_eq!(beyond.status.code(), Some(2));
    let replay = sagalog(&[
        "replay",
        "--data-dir",
        &dir_arg,
        "--from-snapshot",
        "none",
        "--json",
    ]);
    assert!(replay.status.success());
    let replay: Value = serde_json::from_slice(&replay.stdout).unwrap();
    let mut want = gauges.clone();
    want["STARTED"] = json!(8);
    assert_eq!(replay["status_counts"], want);
    // A saga's records are in its own partition only.
    let id = "p-7";
    let found: Vec<usize> = (0..4)
        .map(|p| {
            let out = sagalog(&[
                "inspect",
                "--data-dir",
                &dir_arg,
                "--partition",
                &p.to_string(),
                "--saga",
                id,
                "--json",
            ]);
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            let out: Value = serde_json::from_slice(&out.stdout).unwrap();
            out["partitions"][0]["result"].as_array().unwrap().len()
        })
        .collect();
    assert_eq!(found.iter().filter(|&&n| n > 0).count(), 1, "{found:?}");
    assert_eq!(
        found.iter().position(|&n| n > 0).unwrap() as u32,
        sagalog_engine::partition_of(id, 4)
    );
    for command in ["snapshot", "reindex"] {
        let out = sagalog(&[command, "--data-dir", &dir_arg]);
        assert!(
            out.status.success(),
            "{command}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let backup = root.path().join("backup");
    let restored = root.path().join("restored");
    let out = sagalog(&[
        "backup",
        "--data-dir",
        &dir_arg,
        "--out",
        backup.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = sagalog(&[
        "restore",
        "--from",
        backup.to_str().unwrap(),
        "--data-dir",
        restored.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let server = serve(&restored, &[]);
    let mut c = common::client(&server).await;
    let listed: BTreeSet<String> = list_all(&mut c, "type=quad").await.into_iter().collect();
    assert!(
        listed.is_superset(&sagas),
        "the restored copy has every saga"
    );
    assert_eq!(listed.len(), sagas.len() + 8);
}

/// A data directory written with one partition (the layout from before partitions)
/// opens as partition 0 of 1, with or without `--partitions 1`, and refuses another
/// count.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_single_log_directory_is_partition_zero_of_one() {
    let root = tempfile::tempdir().unwrap();
    let dir = data_dir(&root);
    let server = serve(&dir, &[]);
    let mut c = common::client(&server).await;
    let answer = post(
        &mut c,
        "/api/v1/sagas",
        json!({"type": "order", "saga_id": "old-1", "payload": {}}),
    )
    .await;
    assert_eq!(answer.status, StatusCode::CREATED);
    drop(c);
    drop(server);
    assert!(dir.join("log").is_dir());
    assert!(!dir.join("partitions").exists());
    let refused = sagalog_testkit::process::Server::start(
        Path::new(env!("CARGO_BIN_EXE_sagalog")),
        &dir,
        PARTITIONS,
    )
    .err()
    .expect("a changed partition count is refused");
    assert!(refused.contains("holds 1 partition, not 4"), "{refused}");
    let server = serve(&dir, &["--partitions", "1"]);
    let mut c = common::client(&server).await;
    let saga = get(&mut c, "/api/v1/sagas/old-1").await;
    assert_eq!(saga.status, StatusCode::OK);
    let outbox = get(&mut c, "/api/v1/outbox").await.json();
    assert!(outbox["next_after"].is_u64(), "{outbox}");
    for path in [
        "/api/v1/outbox?after=c.1",
        "/internal/v1/outbox/dead-letters?after=0.1",
    ] {
        common::expect_error(&get(&mut c, path).await, 400, "invalid_request");
    }
    let replay = common::admin(
        &mut c,
        hyper::Method::POST,
        "/internal/v1/outbox/dead-letters/1/replay?partition=1",
        None,
    )
    .await;
    common::expect_error(&replay, 400, "invalid_request");
}
