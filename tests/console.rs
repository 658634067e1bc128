//! The operator console and the API under it, against the real binary:
//! - the API the console needs (`GET /api/v1/stats`, list by id prefix and payload
//!   field, bulk retry and override) over HTTP;
//! - the console itself in headless Chromium (Debian `chromium`, installed by
//!   `scripts/test`), driven by puppeteer-core (pinned in `monitoring/tools`) from
//!   `monitoring/tools/console-test.mjs`, against a server holding sagas in every
//!   status and a dead letter (a command too large for Kafka, on a real broker). The
//!   script saves a screenshot of each page under `target/tmp/console-screenshots/`.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::{admin, get, post, TOKEN};
use hyper::Method;
use sagalog_testkit::client::Client;
use sagalog_testkit::process::Tansu;
use sagalog_testkit::wait_until;
use serde_json::{json, Value};

/// A definition of three quick steps, each with one attempt: a reply decides a step.
fn shop(name: &str) -> Value {
    let step = |step: &str, compensable: bool| {
        json!({"name": step, "topic": format!("{name}.{step}"), "compensable": compensable,
               "timeout_ms": 3_600_000, "max_attempts": 1, "backoff_ms": 100})
    };
    json!({"name": name, "version": 1, "steps": [
        step("reserve", true), step("charge", true), step("ship", false)]})
}

async fn start(c: &mut Client, saga_type: &str, id: &str, payload: Value) {
    let body = json!({"type": saga_type, "saga_id": id, "payload": payload});
    let answer = post(c, "/api/v1/sagas", body).await;
    assert_eq!(answer.status, 201, "{id}: {}", answer.text());
}

async fn reply(c: &mut Client, id: &str, step: &str, outcome: &str, reason: &str) {
    let body = json!({"event_id": format!("{id}-{step}-{outcome}"), "step": step,
                      "outcome": outcome, "attempt": 1, "reason": reason,
                      "data": {"by": "tests/console.rs"}});
    let answer = post(c, &format!("/api/v1/sagas/{id}/events"), body).await;
    assert_eq!(
        answer.status,
        202,
        "{id} {step} {outcome}: {}",
        answer.text()
    );
}

/// Takes a started saga of a [`shop`] definition to `status` by replying for its
/// participants.
async fn drive(c: &mut Client, id: &str, status: &str) {
    let reason = "tests/console.rs said so";
    match status {
        "STARTED" => {}
        "IN_PROGRESS" => reply(c, id, "reserve", "succeeded", reason).await,
        "COMPLETED" => {
            for step in ["reserve", "charge", "ship"] {
                reply(c, id, step, "succeeded", reason).await;
            }
        }
        // Charged, then the charge's participant declined: compensating `reserve`.
        "FAILED" => {
            reply(c, id, "reserve", "succeeded", reason).await;
            reply(c, id, "charge", "failed", "card declined").await;
        }
        "COMPENSATED" => {
            Box::pin(drive(c, id, "FAILED")).await;
            reply(c, id, "reserve", "compensated", reason).await;
        }
        "COMPENSATION_FAILED" => {
            Box::pin(drive(c, id, "FAILED")).await;
            reply(
                c,
                id,
                "reserve",
                "compensation_failed",
                "warehouse unreachable",
            )
            .await;
        }
        other => panic!("no way to {other}"),
    }
    let saga = get(c, &format!("/api/v1/sagas/{id}")).await.json();
    assert_eq!(saga["status"], status, "{saga}");
}

/// Now, as a bulk action's `toDate`, once it is past (the server refuses the present).
async fn moment() -> String {
    let now = humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string();
    tokio::time::sleep(Duration::from_millis(2)).await;
    now
}

async fn bulk(
    c: &mut Client,
    action: &str,
    query: &str,
    body: Value,
) -> sagalog_testkit::client::Answer {
    let path = format!("/internal/v1/sagas/bulk/{action}?{query}");
    admin(c, Method::POST, &path, Some(body)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bulk_actions_page_through_a_filter_act_once_and_refuse_what_does_not_fit() {
    let root = tempfile::tempdir().unwrap();
    let server = common::serve(&common::data_dir(&root), &["--admin-token", TOKEN]);
    let mut c = common::client(&server).await;
    common::put_definition(&mut c, &shop("shop")).await;
    for i in 0..23 {
        let id = format!("cf-{i:02}");
        start(
            &mut c,
            "shop",
            &id,
            json!({"order_id": format!("ORD-{i}"), "batch": i % 2}),
        )
        .await;
        drive(&mut c, &id, "COMPENSATION_FAILED").await;
    }
    start(
        &mut c,
        "shop",
        "done-1",
        json!({"order_id": "ORD-done", "batch": 0}),
    )
    .await;
    drive(&mut c, "done-1", "COMPLETED").await;

    // Refused, changing nothing: no toDate, a future one, a limit over 100, a bad
    // body, no token.
    let as_of = moment().await;
    let future =
        humantime::format_rfc3339_millis(std::time::SystemTime::now() + Duration::from_secs(3600));
    for (query, body, says) in [
        (
            "status=COMPENSATION_FAILED".to_string(),
            json!({}),
            "toDate: required",
        ),
        (
            format!("status=COMPENSATION_FAILED&toDate={future}"),
            json!({}),
            "not in the past",
        ),
        (
            format!("toDate={as_of}&limit=101"),
            json!({}),
            "at most 100",
        ),
        (format!("toDate={as_of}"), json!({"force": true}), "force"),
    ] {
        let answer = bulk(&mut c, "retry", &query, body).await;
        let message = common::expect_error(&answer, 400, "invalid_request");
        assert!(message.contains(says), "{query}: {message}");
    }
    let anonymous = post(
        &mut c,
        &format!("/internal/v1/sagas/bulk/retry?toDate={as_of}"),
        json!({}),
    )
    .await;
    assert_eq!(anonymous.status, 401);
    let listed = get(&mut c, "/api/v1/sagas?status=COMPENSATION_FAILED&limit=100")
        .await
        .json();
    assert_eq!(
        listed["items"].as_array().unwrap().len(),
        23,
        "nothing changed"
    );

    // Retry every COMPENSATION_FAILED saga of batch 1, 4 a page, following the cursor.
    let query = format!("status=COMPENSATION_FAILED&payload.batch=1&toDate={as_of}&limit=4");
    let (mut retried, mut cursor, mut calls) = (Vec::new(), None::<String>, 0);
    let mut queries = Vec::new();
    loop {
        let page_query = match &cursor {
            Some(cursor) => format!("{query}&cursor={cursor}"),
            None => query.clone(),
        };
        let answer = bulk(&mut c, "retry", &page_query, json!({})).await;
        assert_eq!(answer.status, 200, "{}", answer.text());
        let page = answer.json();
        assert_eq!(page["as_of"].as_str().unwrap()[..19], as_of[..19]);
        for item in page["items"].as_array().unwrap() {
            assert_eq!(
                (item["outcome"].as_str(), item["status"].as_str()),
                (Some("retried"), Some("FAILED")),
                "{item}"
            );
            assert_eq!(item["error"], Value::Null);
            retried.push(item["saga_id"].as_str().unwrap().to_string());
        }
        calls += 1;
        queries.push(page_query);
        match page["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_string()),
            None => break,
        }
        assert!(calls < 20, "the bulk retry never ended");
    }
    let mut expected: Vec<String> = (0..23)
        .filter(|i| i % 2 == 1)
        .map(|i| format!("cf-{i:02}"))
        .collect();
    expected.reverse();
    assert_eq!(retried, expected, "each matching saga once, newest first");
    assert!(calls >= 3, "paged: {calls} calls");
    // Every call again acts on nothing: the sagas it matched were updated past toDate.
    // (A repeat in the middle of a run acts only on matching sagas not acted on yet,
    // so a run repeated from any point still retries each saga once.)
    for query in &queries {
        let again = bulk(&mut c, "retry", query, json!({})).await.json();
        assert_eq!(again["items"], json!([]), "{query} acted again: {again}");
    }
    for id in &retried {
        let saga = get(&mut c, &format!("/api/v1/sagas/{id}")).await.json();
        assert_eq!(saga["status"], "FAILED", "{saga}");
        let history = get(&mut c, &format!("/api/v1/sagas/{id}/history"))
            .await
            .json();
        let retries = history["items"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| r["kind"] == "retry_requested")
            .count();
        assert_eq!(retries, 1, "{id} retried once");
    }

    // Two identical calls at once (a client retrying while its first call still runs,
    // two operators): each saga is retried by one of them, the other skips it.
    for i in 0..10 {
        let id = format!("race-{i}");
        start(&mut c, "shop", &id, json!({"order_id": id, "batch": 2})).await;
        drive(&mut c, &id, "COMPENSATION_FAILED").await;
    }
    let query = format!("payload.batch=2&toDate={}", moment().await);
    let mut other = common::client(&server).await;
    let (first, second) = tokio::join!(
        bulk(&mut c, "retry", &query, json!({})),
        bulk(&mut other, "retry", &query, json!({}))
    );
    let mut retried_by = std::collections::BTreeMap::<String, usize>::new();
    for answer in [first, second] {
        assert_eq!(answer.status, 200, "{}", answer.text());
        for item in answer.json()["items"].as_array().unwrap() {
            let outcome = item["outcome"].as_str().unwrap();
            assert!(matches!(outcome, "retried" | "skipped"), "{item}");
            if outcome == "retried" {
                *retried_by
                    .entry(item["saga_id"].as_str().unwrap().to_string())
                    .or_default() += 1;
            }
        }
    }
    assert_eq!(retried_by.len(), 10, "every saga retried: {retried_by:?}");
    assert!(
        retried_by.values().all(|n| *n == 1),
        "none twice: {retried_by:?}"
    );

    // Override the rest (batch 0) and a saga the override does not fit (COMPLETED):
    // rejected with the single route's error, the others overridden.
    let as_of = moment().await;
    let answer = bulk(
        &mut c,
        "override",
        &format!("toDate={as_of}&payload.batch=0"),
        json!({"status": "COMPENSATED", "reason": "refunded by hand"}),
    )
    .await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    let page = answer.json();
    let outcomes: Vec<(String, String)> = page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            (
                i["saga_id"].as_str().unwrap().to_string(),
                i["outcome"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(outcomes.len(), 12 + 1, "{page}");
    assert!(
        outcomes.contains(&("done-1".into(), "rejected".into())),
        "{page}"
    );
    let rejected = page["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["saga_id"] == "done-1")
        .unwrap();
    assert_eq!(rejected["status"], "COMPLETED");
    assert!(rejected["error"]["code"].is_string(), "{rejected}");
    assert_eq!(
        outcomes.iter().filter(|(_, o)| o == "overridden").count(),
        12
    );
    assert_eq!(page["next_cursor"], Value::Null);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_and_list_filters_answer_what_the_console_shows() {
    let root = tempfile::tempdir().unwrap();
    let server = common::serve(&common::data_dir(&root), &[]);
    let mut c = common::client(&server).await;
    common::put_definition(&mut c, &shop("shop")).await;
    for (i, status) in [
        "STARTED",
        "IN_PROGRESS",
        "COMPLETED",
        "COMPLETED",
        "COMPENSATED",
        "COMPENSATION_FAILED",
    ]
    .into_iter()
    .enumerate()
    {
        let id = format!("s-{i}");
        let payload =
            json!({"order_id": format!("ORD-{i}"), "customer": {"id": format!("C-{}", i % 2)}});
        start(&mut c, "shop", &id, payload).await;
        drive(&mut c, &id, status).await;
    }
    let stats = get(&mut c, "/api/v1/stats").await.json();
    assert_eq!(stats["statuses"]["COMPLETED"], 2, "{stats}");
    assert_eq!(stats["statuses"]["COMPENSATED"], 1);
    assert_eq!(stats["statuses"]["COMPENSATION_FAILED"], 1);
    assert_eq!(
        stats["active"], 3,
        "STARTED, IN_PROGRESS, COMPENSATION_FAILED"
    );
    // s-0 has waited longest since its last record.
    assert_eq!(stats["oldest_active"]["saga_id"], "s-0", "{stats}");
    assert_eq!(stats["dead_letters"]["total"], 0);
    assert!(stats["log"]["head"].as_u64().unwrap() > 20);
    assert_eq!(stats["admin_token_required"], false);
    let buckets = stats["rates"]["buckets"].as_array().unwrap();
    let started: u64 = buckets.iter().map(|b| b["started"].as_u64().unwrap()).sum();
    assert_eq!(
        started, 6,
        "every start since the server sampled at its start: {stats}"
    );

    let ids = |page: Value| -> Vec<String> {
        page["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["saga_id"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(
        ids(get(&mut c, "/api/v1/sagas?payload.order_id=ORD-4")
            .await
            .json()),
        ["s-4"]
    );
    assert_eq!(
        ids(get(
            &mut c,
            "/api/v1/sagas?payload.customer.id=C-1&status=COMPLETED"
        )
        .await
        .json()),
        ["s-3"]
    );
    assert_eq!(
        ids(get(&mut c, "/api/v1/sagas?id_prefix=s-5").await.json()),
        ["s-5"]
    );
    // A browser page of another origin cannot act through the operator's browser,
    // even on a server without an admin token; the server's own pages can.
    let retry = "/internal/v1/sagas/s-5/retry";
    for (name, value) in [
        ("origin", "http://evil.example"),
        ("origin", "null"),
        ("sec-fetch-site", "cross-site"),
    ] {
        let answer = c
            .send(Method::POST, retry, &[(name, value)], None)
            .await
            .unwrap();
        let message = common::expect_error(&answer, 403, "cross_origin");
        assert!(message.contains("refused"), "{message}");
    }
    let saga = get(&mut c, "/api/v1/sagas/s-5").await.json();
    assert_eq!(saga["status"], "COMPENSATION_FAILED", "nothing changed");
    // Behind a proxy that rewrites Host, the browser's Sec-Fetch-Site decides.
    let proxied = [
        ("origin", "https://sagalog.example"),
        ("sec-fetch-site", "same-origin"),
    ];
    let answer = c.send(Method::POST, retry, &proxied, None).await.unwrap();
    assert_eq!(answer.status, 202, "{}", answer.text());
    let own = format!("http://{}", server.addr);
    let answer = c
        .send(Method::POST, retry, &[("origin", own.as_str())], None)
        .await
        .unwrap();
    assert_eq!(answer.status, 202, "{}", answer.text());

    for (query, says) in [
        ("payload.=x", "payload"),
        ("payload.a..b=x", "dots"),
        ("id_prefix=%3Cb%3E", "id_prefix"),
        (
            "payload.a=1&payload.b=1&payload.c=1&payload.d=1&payload.e=1",
            "at most 4",
        ),
    ] {
        let answer = get(&mut c, &format!("/api/v1/sagas?{query}")).await;
        let message = common::expect_error(&answer, 400, "invalid_request");
        assert!(message.contains(says), "{query}: {message}");
    }
}

/// Chromium: `$SAGALOG_CHROMIUM`, else Debian's.
fn chromium() -> PathBuf {
    std::env::var_os("SAGALOG_CHROMIUM")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/chromium"))
}

fn tools() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/monitoring/tools"))
}

/// Sagas in every status, one whose payload and failure reason hold markup, 50
/// COMPENSATION_FAILED sagas of their own type for the bulk retry, and a dead letter.
async fn fixture(c: &mut Client) -> Value {
    let statuses = [
        "STARTED",
        "IN_PROGRESS",
        "COMPLETED",
        "FAILED",
        "COMPENSATED",
        "COMPENSATION_FAILED",
    ];
    let mut counts = serde_json::Map::new();
    for (i, status) in statuses.iter().cycle().take(18).enumerate() {
        let id = format!("shop-{i:02}");
        start(
            c,
            "shop",
            &id,
            json!({"order_id": format!("ORD-{i:02}"), "amount_cents": 100 + i}),
        )
        .await;
        drive(c, &id, status).await;
        *counts.entry(status.to_string()).or_insert(json!(0)) =
            json!(counts.get(*status).and_then(Value::as_u64).unwrap_or(0) + 1);
    }
    for i in 0..50 {
        let id = format!("bulk-{i:02}");
        start(
            c,
            "bulkshop",
            &id,
            json!({"order_id": format!("BULK-{i:02}")}),
        )
        .await;
        drive(c, &id, "COMPENSATION_FAILED").await;
    }
    let xss = "<script>window.__xss = 1</script><img src=x onerror=\"window.__xss = 2\">";
    start(
        c,
        "shop",
        "xss-1",
        json!({"order_id": "ORD-XSS", "note": xss}),
    )
    .await;
    reply(c, "xss-1", "reserve", "failed", xss).await;
    // A command over the broker's message limit: the relay dead-letters it.
    start(
        c,
        "shop",
        "big-1",
        json!({"order_id": "ORD-BIG", "blob": "x".repeat(10_000)}),
    )
    .await;
    let dead_letter = wait_until("a dead letter", Duration::from_secs(60), async || {
        let page = admin(c, Method::GET, "/internal/v1/outbox/dead-letters", None)
            .await
            .json();
        let first = page["items"].as_array().and_then(|i| i.first()).cloned();
        first.ok_or(page)
    })
    .await;
    json!({
        "counts": counts,
        "completed": "shop-02",
        "compensation_failed": "shop-05",
        "order_id": "ORD-07",
        "order_saga": "shop-07",
        "xss": "xss-1",
        "xss_text": xss,
        "dead_letter_offset": dead_letter["offset"],
        "bulk_type": "bulkshop",
        "bulk_count": 50,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_works_in_headless_chromium() {
    let browser = chromium();
    assert!(
        browser.exists(),
        "Chromium is not at {}: run scripts/test, which installs Debian's chromium",
        browser.display()
    );
    assert!(
        tools().join("node_modules/puppeteer-core").exists(),
        "puppeteer-core is not installed in monitoring/tools: run scripts/test"
    );
    let tansu = Tansu::start();
    let root = tempfile::tempdir().unwrap();
    let brokers = tansu.brokers();
    // Registered at start, so that the relay's first topic check creates their topics.
    let definitions = root.path().join("definitions");
    std::fs::create_dir(&definitions).unwrap();
    for name in ["shop", "bulkshop"] {
        let file = definitions.join(format!("{name}.json"));
        std::fs::write(file, shop(name).to_string()).unwrap();
    }
    let server = common::serve(
        &common::data_dir(&root),
        &[
            "--admin-token",
            TOKEN,
            "--kafka-brokers",
            &brokers,
            "--kafka-max-message-bytes",
            "4096",
            "--definitions",
            definitions.to_str().unwrap(),
        ],
    );
    let mut c = common::client(&server).await;
    let fixture = fixture(&mut c).await;
    let screenshots = Path::new(env!("CARGO_TARGET_TMPDIR")).join("console-screenshots");
    std::fs::create_dir_all(&screenshots).unwrap();
    let output = Command::new("node")
        .arg(tools().join("console-test.mjs"))
        .env("SAGALOG_URL", format!("http://{}", server.addr))
        .env("SAGALOG_TOKEN", TOKEN)
        .env("SAGALOG_CHROMIUM", &browser)
        .env("SAGALOG_SCREENSHOTS", &screenshots)
        .env("SAGALOG_FIXTURE", fixture.to_string())
        .output()
        .expect("node runs (scripts/test installs it)");
    let log = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    eprintln!("{log}");
    assert!(output.status.success(), "the browser checks failed:\n{log}");

    // What the console did is in the API too.
    let retried = get(&mut c, "/api/v1/sagas/shop-05").await.json();
    assert_eq!(
        retried["status"], "FAILED",
        "the console's retry re-issued the compensation: {retried}"
    );
    let bulk = get(
        &mut c,
        "/api/v1/sagas?type=bulkshop&status=FAILED&limit=100",
    )
    .await
    .json();
    assert_eq!(
        bulk["items"].as_array().unwrap().len(),
        50,
        "the bulk retry retried all 50"
    );
    let letters = admin(
        &mut c,
        Method::GET,
        "/internal/v1/outbox/dead-letters",
        None,
    )
    .await
    .json();
    assert!(
        letters["items"][0]["replayed_at_offset"].is_u64(),
        "the console replayed the dead letter: {letters}"
    );
    for page in [
        "overview",
        "sagas",
        "saga",
        "timeline-filtered",
        "xss",
        "dead-letters",
        "definitions",
        "bulk",
        "phone-overview",
        "phone-sagas",
        "phone-saga",
        "phone-bulk",
        "phone-definitions",
    ] {
        let shot = screenshots.join(format!("{page}.png"));
        assert!(
            shot.metadata().is_ok_and(|m| m.len() > 1000),
            "no screenshot {}",
            shot.display()
        );
    }
}
