//! The emergency stop over HTTP: `POST /internal/v1/pause` holds a topic's commands in
//! the log while the API, replies and reads go on; the outbox hands none of them out and
//! its long poll waits for the resume; `/readyz` stays ready and says what is paused;
//! the metric shows it; the pause survives a restart; bad requests change nothing.

mod common;

use std::time::{Duration, Instant};

use common::{admin, data_dir, get, post, serve, TOKEN};
use hyper::Method;
use serde_json::{json, Value};

const INVENTORY: &str = "inventory.commands";

/// The commands `GET /api/v1/outbox` hands out for `query`, and its `next_after`.
async fn outbox(c: &mut sagalog_testkit::client::Client, query: &str) -> (Vec<String>, Value) {
    let page = get(c, &format!("/api/v1/outbox?{query}")).await;
    assert_eq!(page.status, 200, "{}", page.text());
    let page = page.json();
    let ids = page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            format!(
                "{}:{}",
                c["saga_id"].as_str().unwrap(),
                c["step"].as_str().unwrap()
            )
        })
        .collect();
    (ids, page["next_after"].clone())
}

/// An outbox long poll in a task of its own: its page, and how long it took.
fn long_poll(
    addr: std::net::SocketAddr,
    query: &'static str,
) -> tokio::task::JoinHandle<((Vec<String>, Value), Duration)> {
    tokio::spawn(async move {
        let mut c = sagalog_testkit::client::Client::connect(addr)
            .await
            .unwrap();
        let started = Instant::now();
        let page = outbox(&mut c, query).await;
        (page, started.elapsed())
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_topic_is_held_in_the_log_while_the_api_goes_on() {
    let root = tempfile::tempdir().unwrap();
    let dir = data_dir(&root);
    let server = serve(&dir, &["--admin-token", TOKEN]);
    let mut c = common::client(&server).await;
    post(
        &mut c,
        "/api/v1/sagas",
        json!({"type": "order", "saga_id": "early"}),
    )
    .await;

    // The token is needed, and bad requests change nothing.
    let body = json!({"topics": [INVENTORY], "reason": "double charges"}).to_string();
    let denied = c
        .send(
            Method::POST,
            "/internal/v1/pause",
            &[],
            Some(body.as_bytes()),
        )
        .await
        .unwrap();
    common::expect_error(&denied, 401, "unauthorized");
    for (bad, says) in [
        (json!({"topics": [], "reason": "x"}), "at least one topic"),
        (json!({"topics": null, "reason": "x"}), "topics"),
        (
            json!({"topics": ["inventory.comands"], "reason": "x"}),
            INVENTORY,
        ),
        (json!({"topics": [INVENTORY]}), "reason"),
        (json!({"topic": [INVENTORY], "reason": "x"}), "topic"),
    ] {
        let answer = admin(
            &mut c,
            Method::POST,
            "/internal/v1/pause",
            Some(bad.clone()),
        )
        .await;
        let message = common::expect_error(&answer, 400, "invalid_request");
        assert!(message.contains(says), "{bad}: {message}");
    }
    let state = admin(&mut c, Method::GET, "/internal/v1/pause", None)
        .await
        .json();
    assert_eq!(state["paused_topics"], json!([]), "{state}");

    // Pause the inventory service's commands.
    let paused = admin(
        &mut c,
        Method::POST,
        "/internal/v1/pause",
        Some(json!({"topics": [INVENTORY], "reason": "double charges"})),
    )
    .await;
    assert_eq!(paused.status, 200, "{}", paused.text());
    let paused = paused.json();
    assert!(paused["offset"].is_u64(), "{paused}");
    assert_eq!(paused["paused_topics"], json!([INVENTORY]));

    // The API goes on: starts, reads, and a reply to a step of another topic.
    let started = post(
        &mut c,
        "/api/v1/sagas",
        json!({"type": "order", "saga_id": "held"}),
    )
    .await;
    assert_eq!(started.status, 201, "{}", started.text());
    assert_eq!(get(&mut c, "/api/v1/sagas/held").await.status, 200);
    let ready = get(&mut c, "/readyz").await;
    assert_eq!(ready.status, 200, "the pod stays ready: {}", ready.text());
    let notes = ready.json();
    assert!(
        notes["notes"]["delivery"]
            .as_str()
            .is_some_and(|n| n.contains(INVENTORY)),
        "{notes}"
    );
    let metrics = get(&mut c, "/metrics").await.text();
    assert_eq!(
        common::samples(&metrics, &["sagalog_delivery_paused"]),
        [
            r#"sagalog_delivery_paused{topic="inventory.commands"} 1"#,
            r#"sagalog_delivery_paused{topic="payment.commands"} 0"#,
            r#"sagalog_delivery_paused{topic="shipping.commands"} 0"#,
        ]
    );

    // The outbox holds both inventory commands, even the one issued before the pause;
    // the cursor stays before the first (offset 1, after the first saga's start).
    let (items, next) = outbox(&mut c, "topic=inventory.commands").await;
    assert_eq!((items, next), (vec![], json!(0)));
    let (items, _) = outbox(&mut c, "topic=payment.commands").await;
    assert!(items.is_empty());

    // A long poll waits for the resume (not for its whole wait_ms), then gets both.
    let poll = long_poll(server.addr, "topic=inventory.commands&wait_ms=20000");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!poll.is_finished(), "the long poll waits while paused");

    // Restart: the pause is in the log.
    let mut server = server;
    drop(c);
    poll.abort();
    assert!(server.terminate().unwrap().success());
    server = serve(&dir, &["--admin-token", TOKEN]);
    let mut c = common::client(&server).await;
    let state = admin(&mut c, Method::GET, "/internal/v1/pause", None)
        .await
        .json();
    assert_eq!(state["paused_topics"], json!([INVENTORY]), "{state}");
    assert_eq!(state["offset"], Value::Null);
    let (items, _) = outbox(&mut c, "topic=inventory.commands").await;
    assert!(items.is_empty());

    let poll = long_poll(server.addr, "topic=inventory.commands&wait_ms=20000");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let resumed = admin(
        &mut c,
        Method::POST,
        "/internal/v1/resume",
        Some(json!({"topics": [INVENTORY]})),
    )
    .await;
    assert_eq!(resumed.status, 200, "{}", resumed.text());
    assert_eq!(resumed.json()["paused_topics"], json!([]));
    let ((items, _), waited) = poll.await.unwrap();
    assert_eq!(
        items,
        ["early:reserve_inventory", "held:reserve_inventory"],
        "both, in log order"
    );
    assert!(
        waited < Duration::from_secs(15),
        "woken by the resume: {waited:?}"
    );
    let ready = get(&mut c, "/readyz").await.json();
    assert_eq!(ready, json!({"status": "ready"}));
    // Resuming again records nothing.
    let again = admin(&mut c, Method::POST, "/internal/v1/resume", Some(json!({}))).await;
    assert_eq!(again.json()["offset"], Value::Null);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn everything_paused_resumes_topic_by_topic() {
    let root = tempfile::tempdir().unwrap();
    let server = serve(&data_dir(&root), &[]);
    let mut c = common::client(&server).await;
    let paused = admin(
        &mut c,
        Method::POST,
        "/internal/v1/pause",
        Some(json!({"reason": "emergency stop"})),
    )
    .await
    .json();
    assert_eq!(paused["all"], true);
    assert_eq!(
        paused["paused_topics"],
        json!([
            "inventory.commands",
            "payment.commands",
            "shipping.commands"
        ])
    );
    post(
        &mut c,
        "/api/v1/sagas",
        json!({"type": "order", "saga_id": "s"}),
    )
    .await;
    // A reader of every topic is held at the first paused command.
    assert!(outbox(&mut c, "").await.0.is_empty());
    let resumed = admin(
        &mut c,
        Method::POST,
        "/internal/v1/resume",
        Some(json!({"topics": [INVENTORY]})),
    )
    .await
    .json();
    assert_eq!(resumed["except"], json!([INVENTORY]));
    assert_eq!(
        resumed["paused_topics"],
        json!(["payment.commands", "shipping.commands"])
    );
    assert_eq!(outbox(&mut c, "").await.0, ["s:reserve_inventory"]);
    let all = admin(&mut c, Method::POST, "/internal/v1/resume", Some(json!({})))
        .await
        .json();
    assert_eq!(all["all"], false);
    assert_eq!(all["paused_topics"], json!([]));
}
