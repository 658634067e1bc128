//! SIGKILL of `sagalog serve` at varying moments under HTTP load, 20 rounds on one data
//! directory: after each restart every acknowledged start and reply is there, every
//! saga reads in a legal state, the gauges equal a full replay's, and `verify` passes.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use common::{data_dir, get, sagalog, serve, status_gauge};
use hyper::StatusCode;
use parking_lot::Mutex;
use sagalog_testkit::client::Client;
use serde_json::{json, Value};

const ROUNDS: usize = 20;
const CLIENTS: usize = 4;
const OPTIONS: &[&str] = &[
    "--segment-bytes",
    "65536",
    "--snapshot-every-records",
    "700",
];

/// The sagas' definition: one attempt per step, and timeouts and backoff of an hour, so
/// no timer fires during the test and the state at a scrape is the state at the stop.
fn definition() -> Value {
    let step = |name: &str| {
        json!({"name": name, "topic": format!("{name}.commands"), "compensable": true,
               "timeout_ms": 3_600_000, "max_attempts": 1, "backoff_ms": 3_600_000})
    };
    json!({"name": "crashy", "version": 1,
           "steps": [step("reserve_inventory"), step("charge_payment"), step("ship_order")]})
}

/// What the server acknowledged: saga id → the event ids of its acknowledged replies.
type Acked = Arc<Mutex<BTreeMap<String, Vec<String>>>>;

/// Runs sagas one after another until the server goes away, recording each
/// acknowledgement only once it arrived.
async fn drive(addr: std::net::SocketAddr, prefix: String, acked: Acked) {
    let Ok(mut c) = Client::connect(addr).await else {
        return;
    };
    for n in 0.. {
        let id = format!("{prefix}-{n}");
        let body = json!({"type": "crashy", "saga_id": id, "payload": {"n": n}});
        match c.post_json("/api/v1/sagas", &body).await {
            Ok(answer) if answer.status == StatusCode::CREATED => {
                acked.lock().insert(id.clone(), Vec::new());
            }
            Ok(answer) => panic!("{id}: {} {}", answer.status, answer.text()),
            Err(_) => return,
        }
        // Every fourth saga fails its payment, and its reservation is compensated.
        let replies: &[(&str, &str)] = if n % 4 == 0 {
            &[
                ("reserve_inventory", "succeeded"),
                ("charge_payment", "failed"),
                ("reserve_inventory", "compensated"),
            ]
        } else {
            &[
                ("reserve_inventory", "succeeded"),
                ("charge_payment", "succeeded"),
                ("ship_order", "succeeded"),
            ]
        };
        for &(step, outcome) in replies {
            let event_id = format!("{id}/{step}/{outcome}");
            let reply =
                json!({"event_id": event_id, "step": step, "outcome": outcome, "attempt": 1});
            match c
                .post_json(&format!("/api/v1/sagas/{id}/events"), &reply)
                .await
            {
                Ok(answer) if answer.status == StatusCode::ACCEPTED => {
                    acked.lock().get_mut(&id).expect("started").push(event_id);
                }
                Ok(answer) => panic!("{id}: {} {}", answer.status, answer.text()),
                Err(_) => return,
            }
        }
    }
}

const LEGAL: &[&str] = &[
    "STARTED",
    "IN_PROGRESS",
    "COMPLETED",
    "FAILED",
    "COMPENSATING",
    "COMPENSATED",
    "COMPENSATION_FAILED",
];

async fn check(c: &mut Client, acked: &BTreeMap<String, Vec<String>>, round: usize) {
    for (id, events) in acked {
        let history = get(c, &format!("/api/v1/sagas/{id}/history")).await;
        assert_eq!(
            history.status,
            StatusCode::OK,
            "round {round}: acknowledged {id} lost"
        );
        let history = history.json();
        let recorded: Vec<&str> = history["items"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|item| item["event_id"].as_str())
            .collect();
        for event in events {
            assert!(
                recorded.contains(&event.as_str()),
                "round {round}: {id} lost reply {event}"
            );
        }
        let saga = get(c, &format!("/api/v1/sagas/{id}")).await.json();
        let status = saga["status"].as_str().unwrap();
        assert!(LEGAL.contains(&status), "round {round}: {id} is {status}");
        let running = saga["steps"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|s| s["status"] == "running")
            .count();
        assert!(
            running <= 1,
            "round {round}: {id} runs {running} steps: {saga}"
        );
        if status == "COMPLETED" {
            assert!(
                saga["steps"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .all(|s| s["status"] == "succeeded"),
                "{saga}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_under_load_loses_no_acknowledged_write_in_twenty_rounds() {
    let root = tempfile::tempdir().unwrap();
    let dir = data_dir(&root);
    sigkill_rounds(&dir, ROUNDS, OPTIONS).await;
    assert!(
        Path::new(&dir)
            .join("snapshots")
            .read_dir()
            .unwrap()
            .count()
            > 0,
        "snapshots were taken"
    );
}

/// The same with the sagas split into 4 partitions, each its own log: a kill cuts each
/// log at its own point, and every partition comes back whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_under_load_with_four_partitions_loses_no_acknowledged_write() {
    let root = tempfile::tempdir().unwrap();
    let dir = data_dir(&root);
    let options: Vec<&str> = OPTIONS
        .iter()
        .copied()
        .chain(["--partitions", "4"])
        .collect();
    sigkill_rounds(&dir, ROUNDS / 2, &options).await;
    for p in 0..4 {
        let partition = dir.join("partitions").join(format!("{p:04}"));
        assert!(
            partition.join("log").read_dir().unwrap().count() > 0,
            "partition {p} has a log"
        );
        assert!(
            partition.join("snapshots").read_dir().unwrap().count() > 0,
            "partition {p} took snapshots"
        );
    }
}

/// `rounds` of load, a SIGKILL at a varying moment, and a restart that must find every
/// acknowledged write, gauges equal to a full replay's, and a clean `verify`.
async fn sigkill_rounds(dir: &Path, rounds: usize, options: &[&str]) {
    let acked: Acked = Arc::default();
    let dir_arg = dir.to_str().unwrap().to_string();
    for round in 0..rounds {
        let server = serve(dir, options);
        if round == 0 {
            let mut c = common::client(&server).await;
            common::put_definition(&mut c, &definition()).await;
        }
        let load: Vec<_> = (0..CLIENTS)
            .map(|k| tokio::spawn(drive(server.addr, format!("r{round}c{k}"), acked.clone())))
            .collect();
        // A varying moment: 150..=750 ms into the load.
        tokio::time::sleep(Duration::from_millis(150 + (round as u64 * 137) % 600)).await;
        drop(server); // SIGKILL
        for task in load {
            task.await.unwrap();
        }
        let server = serve(dir, options);
        let mut c = common::client(&server).await;
        let snapshot = acked.lock().clone();
        check(&mut c, &snapshot, round).await;
        let gauges = status_gauge(&get(&mut c, "/metrics").await.text());
        drop(c);
        let status = tokio::task::spawn_blocking(move || server.terminate().unwrap())
            .await
            .unwrap();
        assert!(status.success(), "round {round}: {status}");
        let replay = sagalog(&[
            "replay",
            "--data-dir",
            &dir_arg,
            "--from-snapshot",
            "none",
            "--json",
        ]);
        let replay: Value = serde_json::from_slice(&replay.stdout).unwrap();
        assert_eq!(
            gauges, replay["status_counts"],
            "round {round}: gauges against a full replay"
        );
        let verify = sagalog(&["verify", "--data-dir", &dir_arg]);
        assert!(
            verify.status.success(),
            "round {round}: {}",
            String::from_utf8_lossy(&verify.stdout)
        );
    }
    let total: usize = acked.lock().len();
    assert!(
        total > rounds * CLIENTS,
        "the load got through: {total} sagas"
    );
}
