//! The real `sagalog serve` binary over HTTP: every route's success path, idempotent
//! repeats, a restart that keeps sagas, history and every gauge, SIGTERM draining a
//! long poll and exiting 0, and auth on `/internal/`.

mod common;

use std::time::{Duration, Instant};

use common::{admin, data_dir, get, post, samples, serve, TOKEN};
use hyper::{Method, StatusCode};
use sagalog_testkit::wait_until;
use serde_json::{json, Value};

/// A definition whose steps have one attempt each, so failures are immediate.
fn quick_definition() -> Value {
    json!({
        "name": "quick", "version": 1,
        "steps": [
            {"name": "a", "topic": "a.commands", "compensable": true,
             "timeout_ms": 60000, "max_attempts": 1, "backoff_ms": 10},
            {"name": "b", "topic": "b.commands", "compensable": false,
             "timeout_ms": 60000, "max_attempts": 1, "backoff_ms": 10}
        ]
    })
}

/// Registers `quick`, with the admin token (a server without one ignores it).
async fn put_quick(c: &mut sagalog_testkit::client::Client) -> sagalog_testkit::client::Answer {
    let body = quick_definition().to_string();
    let auth = format!("Bearer {TOKEN}");
    c.send(
        Method::PUT,
        "/api/v1/definitions/quick",
        &[("authorization", &auth)],
        Some(body.as_bytes()),
    )
    .await
    .unwrap()
}

fn reply(event_id: &str, step: &str, outcome: &str, attempt: u32) -> Value {
    json!({"event_id": event_id, "step": step, "outcome": outcome, "attempt": attempt,
           "data": {"note": event_id}, "reason": format!("{step} said {outcome}")})
}

const GAUGES: &[&str] = &[
    "saga_status_gauge",
    "saga_active_total",
    "saga_executions_total",
    "saga_failed_total",
    "saga_compensated_total",
    "saga_last_failed_timestamp",
    "sagalog_log_head_offset",
    "sagalog_snapshot_offset",
    "sagalog_snapshot_timestamp_seconds",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_answers_and_a_restart_keeps_sagas_history_and_gauges() {
    let root = tempfile::tempdir().unwrap();
    let dir = data_dir(&root);
    let server = serve(&dir, &["--admin-token", TOKEN]);
    let mut c = common::client(&server).await;

    // Definitions.
    let put = put_quick(&mut c).await;
    assert_eq!(put.status, StatusCode::OK, "{}", put.text());
    assert_eq!(put.json()["registered"], true);
    let defs = get(&mut c, "/api/v1/definitions").await;
    let names: Vec<_> = defs.json()["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(names, ["order", "quick"]);

    // Start, with a traceparent; a repeat answers 200 with the same saga.
    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let start = json!({"type": "order", "saga_id": "o-1", "payload": {"amount": 42}});
    let first = c
        .send(
            Method::POST,
            "/api/v1/sagas",
            &[("traceparent", &format!("00-{trace}-00f067aa0ba902b7-01"))],
            Some(start.to_string().as_bytes()),
        )
        .await
        .unwrap();
    assert_eq!(first.status, StatusCode::CREATED, "{}", first.text());
    let saga = first.json();
    assert_eq!(saga["status"], "STARTED");
    assert_eq!(saga["trace_id"], trace);
    assert_eq!(saga["current_step"], "reserve_inventory");
    assert_eq!(saga["payload"], json!({"amount": 42}));
    assert_eq!(
        saga["steps"][0],
        json!({"name": "reserve_inventory", "status": "running", "attempts": 1, "result": null})
    );
    let again = post(&mut c, "/api/v1/sagas", start.clone()).await;
    assert_eq!(again.status, StatusCode::OK);
    assert_eq!(again.json()["created_at"], saga["created_at"]);

    // Replies: 202, and a repeated event_id gives the first answer with 200.
    let r = post(
        &mut c,
        "/api/v1/sagas/o-1/events",
        reply("e1", "reserve_inventory", "succeeded", 1),
    )
    .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text());
    assert_eq!(r.json()["status"], "IN_PROGRESS");
    let offset = r.json()["offset"].clone();
    let r2 = post(
        &mut c,
        "/api/v1/sagas/o-1/events",
        reply("e1", "reserve_inventory", "succeeded", 1),
    )
    .await;
    assert_eq!(
        (r2.status, r2.json()["offset"].clone()),
        (StatusCode::OK, offset)
    );
    post(
        &mut c,
        "/api/v1/sagas/o-1/events",
        reply("e2", "charge_payment", "succeeded", 1),
    )
    .await;
    let done = post(
        &mut c,
        "/api/v1/sagas/o-1/events",
        reply("e3", "ship_order", "succeeded", 1),
    )
    .await;
    assert_eq!(done.json()["status"], "COMPLETED");

    // A saga that needs an operator: a compensation fails, retry, then compensated.
    let q = post(
        &mut c,
        "/api/v1/sagas",
        json!({"type": "quick", "saga_id": "q-1"}),
    )
    .await;
    assert_eq!(q.status, StatusCode::CREATED, "{}", q.text());
    post(
        &mut c,
        "/api/v1/sagas/q-1/events",
        reply("q1", "a", "succeeded", 1),
    )
    .await;
    let failed = post(
        &mut c,
        "/api/v1/sagas/q-1/events",
        reply("q2", "b", "failed", 1),
    )
    .await;
    assert_eq!(failed.json()["status"], "FAILED");
    let stuck = post(
        &mut c,
        "/api/v1/sagas/q-1/events",
        reply("q3", "a", "compensation_failed", 1),
    )
    .await;
    assert_eq!(stuck.json()["status"], "COMPENSATION_FAILED");
    let retry = admin(&mut c, Method::POST, "/internal/v1/sagas/q-1/retry", None).await;
    assert_eq!(retry.status, StatusCode::ACCEPTED, "{}", retry.text());
    assert_eq!(retry.json()["current_step"], "a");
    let attempts = retry.json()["steps"][0]["attempts"].as_u64().unwrap();
    let comp = post(
        &mut c,
        "/api/v1/sagas/q-1/events",
        reply("q4", "a", "compensated", attempts as u32),
    )
    .await;
    assert_eq!(comp.json()["status"], "COMPENSATED", "{}", comp.text());

    // An operator override, recorded with its reason. It must land at a later
    // millisecond than q-1's compensation so the listing below has one order to
    // expect: sagas updated in the same millisecond are listed by descending id,
    // which would put q-1 first (CI once ran both in one millisecond).
    tokio::time::sleep(Duration::from_millis(2)).await;
    post(
        &mut c,
        "/api/v1/sagas",
        json!({"type": "order", "saga_id": "o-2"}),
    )
    .await;
    let patched = admin(
        &mut c,
        Method::PATCH,
        "/internal/v1/sagas/o-2/status",
        Some(json!({"status": "COMPENSATED", "reason": "Manual compensation"})),
    )
    .await;
    assert_eq!(patched.status, StatusCode::OK, "{}", patched.text());
    assert_eq!(patched.json()["status"], "COMPENSATED");

    // Reads: get, history, list with filters, outbox.
    let got = get(&mut c, "/api/v1/sagas/o-1").await;
    assert_eq!(
        (got.status, got.json()["status"].clone()),
        (StatusCode::OK, json!("COMPLETED"))
    );
    let history = get(&mut c, "/api/v1/sagas/q-1/history").await.json();
    let kinds: Vec<_> = history["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["kind"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(kinds.first().map(String::as_str), Some("saga_started"));
    assert!(kinds.contains(&"retry_requested".to_string()), "{kinds:?}");
    assert_eq!(kinds.last().map(String::as_str), Some("saga_compensated"));
    let overridden = get(&mut c, "/api/v1/sagas/o-2/history").await.json();
    assert_eq!(
        overridden["items"].as_array().unwrap().last().unwrap()["reason"],
        "Manual compensation"
    );
    let compensated = get(&mut c, "/api/v1/sagas?status=COMPENSATED&limit=10")
        .await
        .json();
    let ids: Vec<_> = compensated["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["saga_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["o-2", "q-1"]);
    let page = get(&mut c, "/api/v1/sagas?type=order&limit=1").await.json();
    assert_eq!(page["items"].as_array().unwrap().len(), 1);
    let cursor = page["next_cursor"].as_str().expect("a second page");
    let next = get(
        &mut c,
        &format!("/api/v1/sagas?type=order&limit=1&cursor={cursor}"),
    )
    .await
    .json();
    assert_ne!(next["items"][0]["saga_id"], page["items"][0]["saga_id"]);
    let dated = get(
        &mut c,
        "/api/v1/sagas?fromDate=2000-01-01T00:00:00Z&toDate=2000-01-02T00:00:00Z",
    )
    .await
    .json();
    assert_eq!(dated["items"], json!([]));
    let outbox = get(&mut c, "/api/v1/outbox?limit=2").await.json();
    assert_eq!(outbox["items"][0]["saga_id"], "o-1");
    assert_eq!(outbox["items"][0]["step"], "reserve_inventory");
    assert_eq!(outbox["items"][0]["action"], "execute");
    let after = outbox["next_after"].as_u64().unwrap();
    let rest = get(&mut c, &format!("/api/v1/outbox?after={after}&limit=1000"))
        .await
        .json();
    assert!(rest["items"]
        .as_array()
        .unwrap()
        .iter()
        .all(|i| i["offset"].as_u64().unwrap() > after));

    // Snapshot, health, metrics.
    let snap = admin(&mut c, Method::POST, "/internal/v1/snapshots", None).await;
    assert_eq!(snap.status, StatusCode::CREATED, "{}", snap.text());
    assert!(snap.json()["offset"].as_u64().unwrap() > 0);
    assert_eq!(get(&mut c, "/healthz").await.status, StatusCode::OK);
    assert_eq!(get(&mut c, "/readyz").await.status, StatusCode::OK);
    let metrics = get(&mut c, "/metrics").await;
    assert!(metrics
        .content_type
        .as_deref()
        .unwrap()
        .starts_with("text/plain"));
    let before = samples(&metrics.text(), GAUGES);
    assert!(
        before.contains(&"saga_status_gauge{status=\"COMPENSATED\"} 2".to_string()),
        "{before:#?}"
    );
    let snapshot_at = common::gauge(&metrics.text(), "sagalog_snapshot_timestamp_seconds");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!(
        (now - 60.0..=now + 1.0).contains(&snapshot_at),
        "the snapshot was written just now: timestamp {snapshot_at}, now {now}"
    );
    let history_before = get(&mut c, "/api/v1/sagas/q-1/history").await.json();
    // One more saga after the snapshot, so the restart replays records too.
    post(
        &mut c,
        "/api/v1/sagas",
        json!({"type": "order", "saga_id": "o-3"}),
    )
    .await;
    let metrics = get(&mut c, "/metrics").await.text();
    let before = samples(&metrics, GAUGES);
    drop(c);

    let status = server.terminate().unwrap();
    assert!(status.success(), "SIGTERM exits 0, got {status}");

    let server = serve(&dir, &["--admin-token", TOKEN]);
    let mut c = common::client(&server).await;
    let after_restart = samples(&get(&mut c, "/metrics").await.text(), GAUGES);
    assert_eq!(
        after_restart, before,
        "every gauge keeps its value across a restart"
    );
    assert_eq!(
        get(&mut c, "/api/v1/sagas/q-1/history").await.json(),
        history_before
    );
    assert_eq!(
        get(&mut c, "/api/v1/sagas/o-1").await.json()["status"],
        "COMPLETED"
    );
    assert_eq!(
        get(&mut c, "/api/v1/sagas/o-3").await.json()["status"],
        "STARTED"
    );
    let repeat = post(
        &mut c,
        "/api/v1/sagas/o-1/events",
        reply("e1", "reserve_inventory", "succeeded", 1),
    )
    .await;
    assert_eq!(
        repeat.status,
        StatusCode::OK,
        "a repeated event_id is answered after a restart too"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_a_long_poll_in_flight_finish_and_exits_zero() {
    let root = tempfile::tempdir().unwrap();
    let server = serve(&data_dir(&root), &[]);
    let mut c = common::client(&server).await;
    let poll = tokio::spawn(async move {
        let started = Instant::now();
        let answer = c.get("/api/v1/outbox?wait_ms=25000").await.unwrap();
        (answer, started.elapsed())
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let status = tokio::task::spawn_blocking(move || server.terminate().unwrap())
        .await
        .unwrap();
    assert!(status.success(), "exit status {status}");
    let (answer, took) = poll.await.unwrap();
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.text());
    assert_eq!(answer.json()["items"], json!([]));
    assert!(
        took < Duration::from_secs(20),
        "the long poll ended with the stop, not its wait ({took:?})"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn internal_routes_need_the_bearer_token_when_one_is_set() {
    let root = tempfile::tempdir().unwrap();
    let server = serve(&data_dir(&root), &["--admin-token", TOKEN]);
    let mut c = common::client(&server).await;
    let none = c
        .send(Method::POST, "/internal/v1/snapshots", &[], None)
        .await
        .unwrap();
    common::expect_error(&none, 401, "unauthorized");
    let wrong = c
        .send(
            Method::POST,
            "/internal/v1/snapshots",
            &[("authorization", "Bearer nope")],
            None,
        )
        .await
        .unwrap();
    common::expect_error(&wrong, 401, "unauthorized");
    let right = admin(&mut c, Method::POST, "/internal/v1/snapshots", None).await;
    assert_eq!(right.status, StatusCode::CREATED);
    // Public routes need no token.
    assert_eq!(
        get(&mut c, "/api/v1/definitions").await.status,
        StatusCode::OK
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_reaches_completed_and_compensated_sagas() {
    let root = tempfile::tempdir().unwrap();
    let server = serve(&data_dir(&root), &["--demo"]);
    let mut c = common::client(&server).await;
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let count = |body: Value| body["items"].as_array().map_or(0, Vec::len);
        let completed = count(
            get(&mut c, "/api/v1/sagas?status=COMPLETED&limit=5")
                .await
                .json(),
        );
        let compensated = count(
            get(&mut c, "/api/v1/sagas?status=COMPENSATED&limit=5")
                .await
                .json(),
        );
        if completed > 0 && compensated > 0 {
            let metrics = get(&mut c, "/metrics").await.text();
            let failures = samples(&metrics, &["saga_step_executions_total"])
                .into_iter()
                .filter(|l| {
                    l.contains("step=\"charge_payment\"") && l.contains("status=\"failed\"")
                })
                .count();
            assert_eq!(failures, 1, "step failures show in /metrics:\n{metrics}");
            // A failed saga is logged with its trace id, the one the API shows.
            let failed_line = server
                .log_text()
                .lines()
                .filter_map(|line| serde_json::from_str::<Value>(line).ok())
                .find(|entry| entry["fields"]["message"] == "saga failed; compensating")
                .expect("a failed saga is logged");
            let saga_id = failed_line["fields"]["saga_id"].as_str().unwrap();
            let saga = get(&mut c, &format!("/api/v1/sagas/{saga_id}"))
                .await
                .json();
            assert_eq!(failed_line["fields"]["trace_id"], saga["trace_id"]);
            break;
        }
        assert!(Instant::now() < deadline, "no completed and compensated sagas after 90 s (completed {completed}, compensated {compensated})");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[test]
fn serve_refuses_a_public_address_without_a_token() {
    let root = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_sagalog"))
        .args(["serve", "--listen", "0.0.0.0:0", "--data-dir"])
        .arg(data_dir(&root))
        .env_remove("SAGALOG_ADMIN_TOKEN")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("no admin token") && stderr.contains("--insecure"),
        "{stderr}"
    );
    assert!(!data_dir(&root).exists(), "a refused start creates nothing");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_past_the_connection_limit_is_answered_at_once_and_served_once_one_closes() {
    let root = tempfile::tempdir().unwrap();
    let server = serve(&data_dir(&root), &["--max-connections", "2"]);
    let mut first = common::client(&server).await;
    let mut second = common::client(&server).await;
    assert_eq!(get(&mut first, "/healthz").await.status, StatusCode::OK);
    assert_eq!(get(&mut second, "/healthz").await.status, StatusCode::OK);
    // A third connection is not left waiting: a probe is answered, the API says 503.
    let mut third = common::client(&server).await;
    let answer = tokio::time::timeout(Duration::from_secs(5), third.get("/api/v1/sagas"))
        .await
        .expect("answered at once")
        .unwrap();
    common::expect_error(&answer, 503, "unavailable");
    let mut probe = common::client(&server).await;
    let answer = tokio::time::timeout(Duration::from_secs(5), probe.get("/readyz"))
        .await
        .expect("answered at once")
        .unwrap();
    assert_eq!(answer.status, StatusCode::OK);
    // Once a connection closes, a new one is served as usual.
    drop(first);
    let served = "a new connection served once one closed";
    wait_until(served, Duration::from_secs(10), async || {
        let mut next = common::client(&server).await;
        let answer = next.get("/api/v1/sagas").await.unwrap();
        (answer.status == StatusCode::OK)
            .then_some(())
            .ok_or_else(|| answer.text())
    })
    .await;
    // The open connection kept working meanwhile.
    assert_eq!(get(&mut second, "/healthz").await.status, StatusCode::OK);
}

/// Starts a `quick` saga and answers both steps.
async fn run_quick(c: &mut sagalog_testkit::client::Client, id: &str) {
    let started = post(
        c,
        "/api/v1/sagas",
        json!({"type": "quick", "saga_id": id, "payload": {"n": id}}),
    )
    .await;
    assert_eq!(started.status, StatusCode::CREATED, "{}", started.text());
    for step in ["a", "b"] {
        let r = post(
            c,
            &format!("/api/v1/sagas/{id}/events"),
            reply(&format!("{id}-{step}"), step, "succeeded", 1),
        )
        .await;
        assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_retention_removes_old_finished_sagas_and_says_so() {
    let root = tempfile::tempdir().unwrap();
    let dir = data_dir(&root);
    let options = [
        "--segment-bytes",
        "4096",
        "--snapshot-every-records",
        "200",
        "--log-retention",
        "0s",
    ];
    let server = serve(&dir, &options);
    let mut c = common::client(&server).await;
    let put = put_quick(&mut c).await;
    assert_eq!(put.status, StatusCode::OK);
    let open = post(
        &mut c,
        "/api/v1/sagas",
        json!({"type": "quick", "saga_id": "early-open", "payload": {}}),
    )
    .await;
    assert_eq!(open.status, StatusCode::CREATED);
    for i in 0..60 {
        run_quick(&mut c, &format!("early-{i}")).await;
    }
    // The open saga holds the log: nothing goes however long we wait for a pass.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(
        get(&mut c, "/api/v1/outbox?after=0&limit=1").await.status,
        StatusCode::OK
    );
    let r = post(
        &mut c,
        "/api/v1/sagas/early-open/events",
        reply("eo-a", "a", "succeeded", 1),
    )
    .await;
    assert_eq!(r.status, StatusCode::ACCEPTED);
    post(
        &mut c,
        "/api/v1/sagas/early-open/events",
        reply("eo-b", "b", "succeeded", 1),
    )
    .await;
    let mut late = 0;
    // Then, with snapshots taken as the log grows, a pass removes the early sagas.
    let removed = "retention removing the early sagas";
    let outbox = wait_until(removed, Duration::from_secs(60), async || {
        run_quick(&mut c, &format!("late-{late}")).await;
        late += 1;
        let outbox = get(&mut c, "/api/v1/outbox?after=0&limit=1").await;
        if outbox.status == StatusCode::GONE {
            Ok(outbox)
        } else {
            Err(format!("the outbox from 0 answers {}", outbox.status))
        }
    })
    .await;
    let message = common::expect_error(&outbox, 410, "removed_by_retention");
    assert!(message.contains("Resume with after="), "{message}");
    let gone = get(&mut c, "/api/v1/sagas/early-0").await;
    let message = common::expect_error(&gone, 404, "saga_not_found");
    assert!(message.contains("retention removed it"), "{message}");
    let metrics = get(&mut c, "/metrics").await.text();
    let segments: f64 = samples(&metrics, &["sagalog_log_segments"])[0]
        .rsplit(' ')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!(segments >= 1.0);
    // What is kept reads whole, and the list shows only kept sagas.
    let kept = format!("late-{}", late - 1);
    let history = get(&mut c, &format!("/api/v1/sagas/{kept}/history")).await;
    assert_eq!(history.status, StatusCode::OK);
    assert_eq!(history.json()["items"][0]["kind"], "saga_started");
    let listed = get(&mut c, "/api/v1/sagas?status=COMPLETED&limit=1000")
        .await
        .json();
    for item in listed["items"].as_array().unwrap() {
        let id = item["saga_id"].as_str().unwrap();
        assert_eq!(
            get(&mut c, &format!("/api/v1/sagas/{id}/history"))
                .await
                .status,
            StatusCode::OK,
            "{id}"
        );
    }
    assert!(server
        .log_text()
        .contains("retention removed the log below the start offset"));

    // A restart opens on the snapshot and the kept segments.
    drop(c);
    let status = tokio::task::spawn_blocking(move || server.terminate().unwrap())
        .await
        .unwrap();
    assert!(status.success(), "{status}");
    let server = serve(&dir, &options);
    let mut c = common::client(&server).await;
    assert_eq!(
        get(&mut c, &format!("/api/v1/sagas/{kept}")).await.json()["status"],
        "COMPLETED"
    );
    assert_eq!(
        get(&mut c, "/api/v1/sagas/early-0").await.status,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registering_a_definition_needs_the_admin_token_when_one_is_configured() {
    let root = tempfile::tempdir().unwrap();
    let server = serve(&data_dir(&root), &["--admin-token", TOKEN]);
    let mut c = common::client(&server).await;
    let body = quick_definition().to_string();
    for headers in [vec![], vec![("authorization", "Bearer not-the-token")]] {
        let refused = c
            .send(
                Method::PUT,
                "/api/v1/definitions/quick",
                &headers,
                Some(body.as_bytes()),
            )
            .await
            .unwrap();
        let message = common::expect_error(&refused, 401, "unauthorized");
        assert!(
            message.contains("admin token"),
            "{headers:?}: says what is needed: {message}"
        );
    }
    let listed = |page: Value| -> Vec<String> {
        page["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d["name"].as_str().unwrap().to_string())
            .collect()
    };
    let names = listed(get(&mut c, "/api/v1/definitions").await.json());
    assert_eq!(names, ["order"], "a refused registration changes nothing");
    let start = post(
        &mut c,
        "/api/v1/sagas",
        json!({"type": "quick", "payload": {}}),
    )
    .await;
    common::expect_error(&start, 404, "definition_not_found");
    // Reading them needs no token; registering with it works.
    let put = put_quick(&mut c).await;
    assert_eq!(put.status, StatusCode::OK, "{}", put.text());
    let names = listed(get(&mut c, "/api/v1/definitions").await.json());
    assert_eq!(names, ["order", "quick"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn definitions_are_listed_in_pages_and_their_versions_are_bounded() {
    let root = tempfile::tempdir().unwrap();
    let server = serve(&data_dir(&root), &["--max-definition-versions", "5"]);
    let mut c = common::client(&server).await;
    // The built-in `order` is one; four versions of `quick` make five.
    for version in 1..=4 {
        let mut definition = quick_definition();
        definition["version"] = json!(version);
        common::put_definition(&mut c, &definition).await;
    }
    let mut sixth = quick_definition();
    sixth["version"] = json!(5);
    let body = sixth.to_string();
    let refused = c
        .send(
            Method::PUT,
            "/api/v1/definitions/quick",
            &[],
            Some(body.as_bytes()),
        )
        .await
        .unwrap();
    let message = common::expect_error(&refused, 409, "limit_reached");
    assert!(message.contains("--max-definition-versions"), "{message}");
    // Two at a time, by name then version, each once.
    let mut seen = Vec::new();
    let mut path = "/api/v1/definitions?limit=2".to_string();
    for _ in 0..10 {
        let page = get(&mut c, &path).await.json();
        let items = page["items"].as_array().unwrap();
        assert!(items.len() <= 2, "{page}");
        seen.extend(
            items
                .iter()
                .map(|d| format!("{}/{}", d["name"].as_str().unwrap(), d["version"])),
        );
        match page["next_cursor"].as_str() {
            Some(cursor) => path = format!("/api/v1/definitions?limit=2&cursor={cursor}"),
            None => break,
        }
    }
    assert_eq!(
        seen,
        ["order/1", "quick/1", "quick/2", "quick/3", "quick/4"]
    );
    let quick = get(&mut c, "/api/v1/definitions?name=quick&limit=10")
        .await
        .json();
    assert_eq!(quick["items"].as_array().unwrap().len(), 4, "{quick}");
    assert_eq!(quick["next_cursor"], Value::Null);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_list_page_stops_at_its_byte_budget_and_pages_on_without_gaps() {
    let root = tempfile::tempdir().unwrap();
    let server = serve(&data_dir(&root), &["--max-list-bytes", "20000"]);
    let mut c = common::client(&server).await;
    let pad = "x".repeat(5000);
    for i in 0..12 {
        let answer = post(
            &mut c,
            "/api/v1/sagas",
            json!({"type": "order", "saga_id": format!("big-{i:02}"), "payload": {"pad": pad}}),
        )
        .await;
        assert_eq!(answer.status, StatusCode::CREATED);
    }
    let mut seen = Vec::new();
    let mut path = "/api/v1/sagas?limit=1000".to_string();
    for _ in 0..20 {
        let answer = get(&mut c, &path).await;
        assert!(
            answer.body.len() < 25_000,
            "a page of {} bytes",
            answer.body.len()
        );
        let page = answer.json();
        let items = page["items"].as_array().unwrap();
        assert!(!items.is_empty(), "{page}");
        seen.extend(
            items
                .iter()
                .map(|s| s["saga_id"].as_str().unwrap().to_string()),
        );
        match page["next_cursor"].as_str() {
            Some(cursor) => path = format!("/api/v1/sagas?limit=1000&cursor={cursor}"),
            None => break,
        }
    }
    let expected: Vec<String> = (0..12).rev().map(|i| format!("big-{i:02}")).collect();
    assert_eq!(seen, expected, "every saga once, newest first");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_tour_works_beside_the_demo_which_says_what_its_sagas_did() {
    let root = tempfile::tempdir().unwrap();
    let server = serve(&data_dir(&root), &["--demo"]);
    let mut c = common::client(&server).await;
    let started = post(
        &mut c,
        "/api/v1/sagas",
        json!({"type": "order", "saga_id": "order-1001", "payload": {"amount_cents": 4200}}),
    )
    .await;
    assert_eq!(started.status, StatusCode::CREATED, "{}", started.text());
    let reply = json!({"event_id": "inv-77", "step": "reserve_inventory",
                       "outcome": "succeeded", "attempt": 1});
    let answered = post(&mut c, "/api/v1/sagas/order-1001/events", reply).await;
    assert_eq!(answered.status, StatusCode::ACCEPTED, "{}", answered.text());
    // The demo's participants answer their own sagas within milliseconds; this one
    // waits for the tour's next reply.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let saga = get(&mut c, "/api/v1/sagas/order-1001").await.json();
    assert_eq!(saga["status"], "IN_PROGRESS", "{saga}");
    assert_eq!(saga["steps"][1]["status"], "running", "{saga}");
    assert_eq!(saga["steps"][1]["attempts"], 1, "{saga}");
    let deadline = Instant::now() + Duration::from_secs(15);
    let completed = loop {
        let summary = server
            .log
            .lock()
            .unwrap()
            .iter()
            .rev()
            .filter_map(|line| serde_json::from_str::<Value>(line).ok())
            .find(|entry| entry["fields"]["message"] == "demo: sagas so far");
        if let Some(completed) = summary.and_then(|e| e["fields"]["completed"].as_u64()) {
            if completed > 0 {
                break completed;
            }
        }
        assert!(
            Instant::now() < deadline,
            "no demo summary with completed sagas: {}",
            server.log_text()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(completed > 0);
}

#[test]
fn a_mistyped_command_line_is_refused_with_the_form_that_works_and_opens_nothing() {
    let root = tempfile::tempdir().unwrap();
    let dir = data_dir(&root);
    let dir_arg = dir.to_str().unwrap();
    let missing = root.path().join("no-definitions");
    let cases: [(Vec<&str>, &[&str]); 4] = [
        (vec!["serve", "--data-dri", dir_arg], &["--data-dir"]),
        (
            vec!["serve", "--data-dir", dir_arg, "--listen", ":9000"],
            &["127.0.0.1:9000", "0.0.0.0:9000"],
        ),
        (
            vec!["serve", "--data-dir", dir_arg, "--listen", "localhost"],
            &["HOST:PORT", "8080"],
        ),
        (
            vec![
                "serve",
                "--data-dir",
                dir_arg,
                "--definitions",
                missing.to_str().unwrap(),
            ],
            &["no-definitions", "does not exist"],
        ),
    ];
    for (args, says) in cases {
        let out = common::sagalog(&args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        for text in says {
            assert!(
                stderr.contains(text),
                "{args:?} should say {text:?}: {stderr}"
            );
        }
        assert!(!dir.exists(), "{args:?} opened the data directory");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_users_own_order_replaces_the_built_in_unless_sagas_already_ran_on_it() {
    let root = tempfile::tempdir().unwrap();
    let defs = root.path().join("definitions");
    std::fs::create_dir(&defs).unwrap();
    let own = |version: u32| {
        json!({"name": "order", "version": version, "steps": [
            {"name": "pack", "topic": "packing.commands", "compensable": false,
             "timeout_ms": 600000, "max_attempts": 1, "backoff_ms": 10}]})
    };
    std::fs::write(defs.join("order.json"), own(1).to_string()).unwrap();
    let defs_arg = defs.to_str().unwrap();

    // A new data directory with the user's own order v1: no collision, no example.
    let fresh = root.path().join("fresh");
    let server = common::serve(&fresh, &["--definitions", defs_arg]);
    let mut c = common::client(&server).await;
    let listed = get(&mut c, "/api/v1/definitions").await.json();
    assert_eq!(listed["items"], json!([own(1)]), "{listed}");
    let started = post(
        &mut c,
        "/api/v1/sagas",
        json!({"type": "order", "payload": {}}),
    )
    .await;
    assert_eq!(started.json()["current_step"], "pack", "{}", started.text());
    let first = started.json()["saga_id"].as_str().unwrap().to_string();
    let snapshot = post(&mut c, "/internal/v1/snapshots", json!({})).await;
    assert_eq!(snapshot.status, StatusCode::CREATED, "{}", snapshot.text());
    drop(c);
    server.terminate().unwrap();
    // It opens again on the user's order, from its snapshot and from its whole log.
    for whole_log in [false, true] {
        if whole_log {
            std::fs::remove_dir_all(fresh.join("snapshots")).unwrap();
        }
        let server = common::serve(&fresh, &["--definitions", defs_arg]);
        let mut c = common::client(&server).await;
        let saga = get(&mut c, &format!("/api/v1/sagas/{first}")).await.json();
        assert_eq!(saga["current_step"], "pack", "{saga}");
        drop(c);
        server.terminate().unwrap();
    }

    // A data directory whose sagas ran on the example keeps it: the user's own v1 is
    // refused, saying what to do, and a v2 goes beside it.
    let old = root.path().join("old");
    let server = common::serve(&old, &[]);
    let mut c = common::client(&server).await;
    let started = post(
        &mut c,
        "/api/v1/sagas",
        json!({"type": "order", "saga_id": "early", "payload": {}}),
    )
    .await;
    assert_eq!(started.status, StatusCode::CREATED);
    drop(c);
    server.terminate().unwrap();
    let out = common::sagalog(&[
        "serve",
        "--data-dir",
        old.to_str().unwrap(),
        "--listen",
        "127.0.0.1:0",
        "--definitions",
        defs_arg,
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("built-in example"), "{stderr}");
    assert!(stderr.contains("another version"), "{stderr}");
    std::fs::write(defs.join("order.json"), own(2).to_string()).unwrap();
    let server = common::serve(&old, &["--definitions", defs_arg]);
    let mut c = common::client(&server).await;
    let early = get(&mut c, "/api/v1/sagas/early").await.json();
    assert_eq!(early["current_step"], "reserve_inventory", "{early}");
    let started = post(
        &mut c,
        "/api/v1/sagas",
        json!({"type": "order", "payload": {}}),
    )
    .await;
    assert_eq!(started.json()["definition_version"], 2);
}
