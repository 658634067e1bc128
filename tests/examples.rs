//! The example participants in `examples/` (Python and Node, standard library only)
//! drive 100 sagas against a real server: completions, a shipping failure that refunds
//! the charge by the id its charge returned, and a charge that times out and is
//! compensated `after_timeout`. Each language runs one of two replicas of each service,
//! so both must do their share for every saga to end.

mod common;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use sagalog_client::{Client, Handled, Participant, StartSaga};
use serde_json::{json, Value};

/// A child process killed when the test ends, however it ends.
struct Running(Child, &'static str);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn example(program: &'static str, script: &str, args: &[String]) -> Running {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let child = Command::new(program)
        .arg(root.join(script))
        .args(args)
        .stdin(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("running {program} {script}: {e} (scripts/test installs it)"));
    Running(child, program)
}

fn shop() -> Value {
    json!({"name": "shop", "version": 1, "steps": [
        {"name": "reserve_inventory", "topic": "inventory.commands", "compensable": true,
         "timeout_ms": 10000, "max_attempts": 2, "backoff_ms": 10},
        {"name": "charge_payment", "topic": "payment.commands", "compensable": true,
         "timeout_ms": 700, "max_attempts": 2, "backoff_ms": 10},
        {"name": "ship_order", "topic": "shipping.commands", "compensable": false,
         "timeout_ms": 10000, "max_attempts": 2, "backoff_ms": 10}]})
}

/// What saga `i` of the run does.
fn fate(i: usize) -> &'static str {
    match i % 10 {
        3 => "ship_fails",
        7 => "charge_hangs",
        _ => "completes",
    }
}

/// The `data` of the saga's `step_compensated` record for `step`.
async fn compensation_data(client: &Client, saga_id: &str, step: &str) -> Value {
    let history = client.history(saga_id).await.unwrap();
    history
        .iter()
        .find(|r| r["kind"] == "step_compensated" && r["step"] == step)
        .map(|r| r["data"].clone())
        .unwrap_or_else(|| panic!("{saga_id}: no compensation of {step}: {history:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_and_node_participants_drive_a_hundred_sagas_to_their_end() {
    let root = tempfile::tempdir().unwrap();
    let server = common::serve(&common::data_dir(&root), &[]);
    let client = Client::new(server.addr);
    client.put_definition(&shop()).await.unwrap();

    let mut children = Vec::new();
    for (program, script, member) in [
        ("python3", "examples/python/participant.py", 0),
        ("node", "examples/node/participant.js", 1),
    ] {
        for service in ["inventory", "payment"] {
            let position = root.path().join(format!("{service}-{program}.position"));
            let args: Vec<String> = [
                "--service",
                service,
                "--server",
                &server.addr.to_string(),
                "--member",
                &member.to_string(),
                "--members",
                "2",
                "--position-file",
                &position.display().to_string(),
                "--from-start",
            ]
            .map(str::to_string)
            .into();
            children.push(example(program, script, &args));
        }
    }
    // Shipping is played here, with the client crate.
    let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
    let shipping = Participant::new(client.clone(), "shipping", "shipping.commands")
        .poll_wait(Duration::from_millis(500));
    let shipping = tokio::spawn(shipping.run(
        |c| async move {
            if c.payload["fate"] == "ship_fails" {
                Handled::Failed("no courier".into())
            } else {
                assert!(
                    c.results["charge_payment"]["charge_id"].is_string(),
                    "{c:?}"
                );
                Handled::Done(Some(json!({"tracking": format!("tr-{}", c.saga_id)})))
            }
        },
        async move {
            let _ = stop_rx.wait_for(|s| *s).await;
        },
    ));

    for i in 0..100 {
        let start = StartSaga {
            saga_type: "shop".into(),
            saga_id: Some(format!("shop-{i}")),
            payload: json!({"fate": fate(i), "pay": if fate(i) == "charge_hangs" { "hang" } else { "now" },
                            "amount_cents": 100 + i}),
        };
        client.start(&start).await.unwrap();
    }

    let deadline = Instant::now() + Duration::from_secs(120);
    for i in 0..100 {
        let id = format!("shop-{i}");
        let saga = loop {
            let saga = client.get(&id).await.unwrap();
            if saga.is_finished() {
                break saga;
            }
            for child in &mut children {
                if let Some(status) = child.0.try_wait().unwrap() {
                    panic!(
                        "{} exited with {status} while {id} is {}",
                        child.1, saga.status
                    );
                }
            }
            assert!(Instant::now() < deadline, "{id} never ended: {saga:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let reservation = json!({"reservation_id": format!("res-{id}")});
        assert_eq!(
            saga.step("reserve_inventory").unwrap().result,
            Some(reservation)
        );
        match fate(i) {
            "completes" => {
                assert_eq!(saga.status, "COMPLETED", "{saga:?}");
                let charge = &saga.step("charge_payment").unwrap().result;
                assert_eq!(charge.as_ref().unwrap()["amount_cents"], 100 + i);
            }
            "ship_fails" => {
                assert_eq!(saga.status, "COMPENSATED", "{saga:?}");
                // The refund found the charge id in `result`.
                let refund = compensation_data(&client, &id, "charge_payment").await;
                assert_eq!(refund["refunded"], format!("ch-{id}"), "{refund}");
                assert_eq!(refund["after_timeout"], false);
                let release = compensation_data(&client, &id, "reserve_inventory").await;
                assert_eq!(release["released"], format!("res-{id}"));
            }
            _ => {
                assert_eq!(saga.status, "COMPENSATED", "{saga:?}");
                assert_eq!(saga.step("charge_payment").unwrap().result, None);
                // The timed-out charge was compensated first, knowing it timed out.
                let refund = compensation_data(&client, &id, "charge_payment").await;
                assert_eq!(refund["after_timeout"], true, "{refund}");
                assert_eq!(refund["refunded"], Value::Null);
                let release = compensation_data(&client, &id, "reserve_inventory").await;
                assert_eq!(release["released"], format!("res-{id}"));
            }
        }
    }
    stop_tx.send(true).unwrap();
    let stats = shipping.await.unwrap().unwrap();
    // 90 sagas reach shipping; the 10 that fail there are tried twice.
    assert_eq!(stats.handled, 100);
}
