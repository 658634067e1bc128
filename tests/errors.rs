//! Every error code of http/openapi.yaml from the real binary, with the one error body shape, and
//! `/metrics` checked by Prometheus's own `promtool check metrics`.

mod common;

use common::{data_dir, expect_error, get, post, serve};
use hyper::Method;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_its_status_code_and_changes_nothing() {
    let root = tempfile::tempdir().unwrap();
    let server = serve(&data_dir(&root), &["--max-body-bytes", "2048"]);
    let mut c = common::client(&server).await;
    let start = json!({"type": "order", "saga_id": "e-1"});
    assert_eq!(
        post(&mut c, "/api/v1/sagas", start.clone()).await.status,
        201
    );
    let head = || async {
        let metrics = get(&mut common::client(&server).await, "/metrics")
            .await
            .text();
        common::samples(&metrics, &["sagalog_log_head_offset"])
    };
    let head_before = head().await;

    // 400: malformed JSON, a missing field, a bad id, a bad query.
    let addr = server.addr;
    let raw = |body: &'static str| async move {
        let mut c = sagalog_testkit::client::Client::connect(addr)
            .await
            .unwrap();
        c.send(Method::POST, "/api/v1/sagas", &[], Some(body.as_bytes()))
            .await
            .unwrap()
    };
    expect_error(&raw("{\"type\": ").await, 400, "invalid_json");
    let m = expect_error(&raw("{\"saga_id\": \"x\"}").await, 400, "invalid_request");
    assert!(m.contains("type"), "{m}");
    let deep = format!(
        "{{\"type\": \"order\", \"payload\": {}{}}}",
        "[".repeat(40),
        "]".repeat(40)
    );
    let answer = c
        .send(Method::POST, "/api/v1/sagas", &[], Some(deep.as_bytes()))
        .await
        .unwrap();
    expect_error(&answer, 400, "invalid_json");
    let bad_id = post(
        &mut c,
        "/api/v1/sagas",
        json!({"type": "order", "saga_id": "no spaces"}),
    )
    .await;
    expect_error(&bad_id, 400, "invalid_saga_id");
    expect_error(
        &get(&mut c, "/api/v1/sagas/bad%20id").await,
        400,
        "invalid_saga_id",
    );
    expect_error(
        &get(&mut c, "/api/v1/sagas?limit=1001").await,
        400,
        "invalid_request",
    );
    expect_error(
        &get(&mut c, "/api/v1/sagas?status=DONE").await,
        400,
        "invalid_request",
    );
    expect_error(
        &get(&mut c, "/api/v1/sagas?fromDate=yesterday").await,
        400,
        "invalid_request",
    );
    expect_error(
        &get(&mut c, "/api/v1/sagas?colour=red").await,
        400,
        "invalid_request",
    );
    let bad_def = c
        .send(
            Method::PUT,
            "/api/v1/definitions/broken",
            &[],
            Some(br#"{"name": "broken", "version": 1, "steps": []}"#),
        )
        .await
        .unwrap();
    let m = expect_error(&bad_def, 400, "invalid_definition");
    assert!(m.contains("steps"), "names the field: {m}");

    // 404: unknown saga, definition, route.
    expect_error(
        &get(&mut c, "/api/v1/sagas/nobody").await,
        404,
        "saga_not_found",
    );
    let reply =
        json!({"event_id": "r", "step": "reserve_inventory", "outcome": "succeeded", "attempt": 1});
    expect_error(
        &post(&mut c, "/api/v1/sagas/nobody/events", reply.clone()).await,
        404,
        "saga_not_found",
    );
    expect_error(
        &post(&mut c, "/api/v1/sagas", json!({"type": "lunch"})).await,
        404,
        "definition_not_found",
    );
    // A step the saga does not have: the saga exists, the reply does not fit it.
    let unknown_step =
        json!({"event_id": "r", "step": "dance", "outcome": "succeeded", "attempt": 1});
    expect_error(
        &post(&mut c, "/api/v1/sagas/e-1/events", unknown_step).await,
        409,
        "conflict",
    );
    expect_error(&get(&mut c, "/api/v1/nothing").await, 404, "not_found");
    expect_error(
        &c.send(Method::DELETE, "/api/v1/sagas", &[], None)
            .await
            .unwrap(),
        405,
        "method_not_allowed",
    );

    // 409: a reply that does not fit, naming what the saga expects; a start conflict.
    let wrong_step =
        json!({"event_id": "w", "step": "charge_payment", "outcome": "succeeded", "attempt": 1});
    let m = expect_error(
        &post(&mut c, "/api/v1/sagas/e-1/events", wrong_step).await,
        409,
        "conflict",
    );
    assert!(
        m.contains("reserve_inventory"),
        "names the expected step: {m}"
    );
    let stale =
        json!({"event_id": "s", "step": "reserve_inventory", "outcome": "succeeded", "attempt": 7});
    let m = expect_error(
        &post(&mut c, "/api/v1/sagas/e-1/events", stale).await,
        409,
        "conflict",
    );
    assert!(m.contains('1'), "names the expected attempt: {m}");
    let other = json!({"type": "order", "saga_id": "e-1", "payload": {"different": true}});
    expect_error(
        &post(&mut c, "/api/v1/sagas", other).await,
        409,
        "start_conflict",
    );
    // 413: a body over the limit.
    let big = json!({"type": "order", "payload": {"blob": "x".repeat(4096)}});
    expect_error(
        &post(&mut c, "/api/v1/sagas", big).await,
        413,
        "payload_too_large",
    );

    assert_eq!(
        head().await,
        head_before,
        "no refused request appended anything"
    );
    let saga = get(&mut c, "/api/v1/sagas/e-1").await.json();
    assert_eq!(saga["status"], "STARTED");

    // A reused event_id: the same body is the first answer again (200), another body
    // is 409 and records nothing.
    let first = json!({"event_id": "inv-1", "step": "reserve_inventory", "outcome": "succeeded",
                       "attempt": 1, "data": {"reservation": "r-9"}});
    let recorded = post(&mut c, "/api/v1/sagas/e-1/events", first.clone()).await;
    assert_eq!(recorded.status, 202, "{}", recorded.text());
    let again = post(&mut c, "/api/v1/sagas/e-1/events", first).await;
    assert_eq!(again.status, 200, "{}", again.text());
    assert_eq!(again.json()["offset"], recorded.json()["offset"]);
    let history = get(&mut c, "/api/v1/sagas/e-1/history").await.json();
    let reused = json!({"event_id": "inv-1", "step": "reserve_inventory", "outcome": "succeeded",
                        "attempt": 1, "data": {"reservation": "r-10"}});
    let m = expect_error(
        &post(&mut c, "/api/v1/sagas/e-1/events", reused).await,
        409,
        "event_id_conflict",
    );
    assert!(m.contains("inv-1") && m.contains("event_id"), "{m}");
    assert_eq!(
        get(&mut c, "/api/v1/sagas/e-1/history").await.json(),
        history,
        "a refused reply records nothing"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_start_past_the_active_saga_limit_is_503_and_reads_go_on() {
    let root = tempfile::tempdir().unwrap();
    let server = serve(&data_dir(&root), &["--max-active-sagas", "1"]);
    let mut c = common::client(&server).await;
    let first = post(
        &mut c,
        "/api/v1/sagas",
        json!({"type": "order", "saga_id": "one"}),
    )
    .await;
    assert_eq!(first.status, 201);
    let second = post(
        &mut c,
        "/api/v1/sagas",
        json!({"type": "order", "saga_id": "two"}),
    )
    .await;
    let message = expect_error(&second, 503, "unavailable");
    assert!(message.contains("limit"), "{message}");
    expect_error(
        &get(&mut c, "/api/v1/sagas/two").await,
        404,
        "saga_not_found",
    );
    assert_eq!(get(&mut c, "/api/v1/sagas/one").await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_have_every_spec_name_and_pass_promtool() {
    let root = tempfile::tempdir().unwrap();
    let server = serve(&data_dir(&root), &["--demo"]);
    let mut c = common::client(&server).await;
    // Let the demo move some sagas so the label sets are filled in.
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    get(&mut c, "/api/v1/sagas/nobody").await;
    let metrics = get(&mut c, "/metrics").await.text();
    for name in [
        "saga_executions_total",
        "saga_duration_seconds",
        "saga_status_gauge",
        "saga_active_total",
        "saga_failed_total",
        "saga_compensated_total",
        "saga_compensation_duration_seconds",
        "saga_step_executions_total",
        "saga_compensations_total",
        "saga_events_processed_total",
        "saga_oldest_active_seconds",
        "saga_last_failed_timestamp",
        "saga_storage_errors_total",
        "saga_tracker_api_latency_seconds",
        "saga_tracker_db_query_seconds",
        "saga_tracker_consumer_lag",
        "outbox_pending_events_total",
        "outbox_published_events_total",
        "outbox_failed_events_total",
        "outbox_dead_letter_events_total",
        "outbox_publish_duration_seconds",
        "outbox_retry_attempts_total",
        "sagalog_log_head_offset",
        "sagalog_log_bytes",
        "sagalog_log_segments",
        "sagalog_snapshot_offset",
        "sagalog_replay_records_total",
        // Beyond the documented set, for the dashboards and alerts (monitoring/).
        "saga_step_duration_seconds",
        "sagalog_snapshot_timestamp_seconds",
        "sagalog_snapshot_every_records",
        "sagalog_disk_free_bytes",
        "sagalog_disk_watermark_bytes",
        "sagalog_kafka_topics_missing",
    ] {
        assert!(
            metrics.contains(&format!("# HELP {name} ")),
            "{name} is exported with HELP"
        );
    }
    assert!(
        metrics.contains("endpoint=\"/api/v1/sagas/{id}\""),
        "endpoint labels are route patterns"
    );
    assert!(!metrics.contains("nobody"), "no raw id in a label");

    let mut promtool = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool is installed (scripts/test installs the Debian package prometheus)");
    use std::io::Write;
    promtool
        .stdin
        .take()
        .unwrap()
        .write_all(metrics.as_bytes())
        .unwrap();
    let out = promtool.wait_with_output().unwrap();
    let findings = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // The metric names fix three gauge names promtool's lint dislikes (two end in _total, one
    // says gauge); it must flag exactly those and nothing else.
    let mut flagged: Vec<&str> = findings.lines().filter(|l| !l.trim().is_empty()).collect();
    flagged.sort();
    assert_eq!(
        flagged,
        [
            "outbox_pending_events_total non-counter metrics should not have \"_total\" suffix",
            "saga_active_total non-counter metrics should not have \"_total\" suffix",
            "saga_status_gauge metric name should not include type 'gauge'",
        ],
        "promtool check metrics found:\n{findings}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_are_strict_paths_are_percent_decoded_and_405_says_what_is_allowed() {
    let root = tempfile::tempdir().unwrap();
    let server = serve(&data_dir(&root), &[]);
    let mut c = common::client(&server).await;
    // A typo is refused naming it and the known fields: no saga under a random id.
    let typo = post(
        &mut c,
        "/api/v1/sagas",
        json!({"type": "order", "sagaId": "s-1", "payload": {}}),
    )
    .await;
    let m = expect_error(&typo, 400, "invalid_request");
    assert!(m.contains("sagaId") && m.contains("saga_id"), "{m}");
    for body in [
        json!({"type": "order", "payload": null}),
        json!({"type": "order", "payload": [1, 2]}),
        json!({"type": "order", "saga_id": null}),
    ] {
        expect_error(
            &post(&mut c, "/api/v1/sagas", body).await,
            400,
            "invalid_request",
        );
    }
    let listed = get(&mut c, "/api/v1/sagas").await.json();
    assert_eq!(listed["items"], json!([]), "nothing was started");
    // An id with `:` sent percent-encoded is the same saga.
    let started = post(
        &mut c,
        "/api/v1/sagas",
        json!({"type": "order", "saga_id": "ord:1", "payload": {}}),
    )
    .await;
    assert_eq!(started.status, 201, "{}", started.text());
    let saga = get(&mut c, "/api/v1/sagas/ord%3A1").await;
    assert_eq!(saga.status, 200, "{}", saga.text());
    assert_eq!(saga.json()["saga_id"], "ord:1");
    // A reply with `error` for `reason` is refused naming the fields there are.
    let misnamed = json!({"event_id": "e", "step": "reserve_inventory", "outcome": "failed",
                          "attempt": 1, "error": "out of stock"});
    let m = expect_error(
        &post(&mut c, "/api/v1/sagas/ord:1/events", misnamed).await,
        400,
        "invalid_request",
    );
    assert!(m.contains("error") && m.contains("reason"), "{m}");
    // A step the saga does not have does not fit it: 409 naming what it expects.
    let unknown =
        json!({"event_id": "e", "step": "gift_wrap", "outcome": "succeeded", "attempt": 1});
    let m = expect_error(
        &post(&mut c, "/api/v1/sagas/ord:1/events", unknown).await,
        409,
        "conflict",
    );
    assert!(m.contains("reserve_inventory"), "{m}");
    // 405 carries Allow.
    let wrong = c
        .send(Method::DELETE, "/api/v1/sagas/ord:1", &[], None)
        .await
        .unwrap();
    expect_error(&wrong, 405, "method_not_allowed");
    assert_eq!(wrong.headers["allow"], "GET");
    // An empty date and a date before 1970 are what the OpenAPI file says.
    expect_error(
        &get(&mut c, "/api/v1/sagas?toDate=").await,
        400,
        "invalid_request",
    );
    let old = get(&mut c, "/api/v1/sagas?fromDate=0999-01-01T00:00:00Z").await;
    assert_eq!(old.status, 200, "{}", old.text());
    let reversed = get(
        &mut c,
        "/api/v1/sagas?fromDate=2030-01-01T00:00:00Z&toDate=2020-01-01T00:00:00Z",
    )
    .await;
    assert_eq!(reversed.json()["items"], json!([]));
}
