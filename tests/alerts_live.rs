//! The alert rules end to end: the real `sagalog serve`, a Prometheus server (Debian
//! `prometheus`) scraping it and evaluating `monitoring/alerts/sagalog.yaml` every
//! second, and an Alertmanager (Debian `prometheus-alertmanager`) running the shipped
//! routing example `monitoring/alertmanager/alertmanager.yml`, its chat receiver's Slack
//! webhook pointed at a listener of this test. Failures driven through the API fire
//! SagaFailureSpike at Prometheus's `/api/v1/alerts`, it reaches Alertmanager, and
//! Alertmanager delivers it to the chat receiver (a warning). Nothing else fires on the
//! healthy server. On the way, every dashboard query is evaluated by that Prometheus on
//! sagalog's real series and must return some.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{data_dir, get, post, serve};
use sagalog_testkit::client::Client;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const REPO: &str = env!("CARGO_MANIFEST_DIR");

/// A child process killed when the test ends, however it ends.
struct Daemon(Child);

impl Daemon {
    fn start(program: &str, args: &[String]) -> Daemon {
        let child = Command::new(program)
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("{program} runs (scripts/test installs it from Debian): {e}")
            });
        Daemon(child)
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], sagalog_testkit::free_port()))
}

/// GETs `path` from a server until `done` accepts the JSON answer, or panics after
/// `limit` naming `what` and the last answer.
async fn wait_for(
    addr: SocketAddr,
    path: &str,
    limit: Duration,
    what: &str,
    done: impl Fn(&Value) -> bool,
) -> Value {
    let done = &done;
    sagalog_testkit::wait_until(what, limit, || async move {
        let failed = |e: &dyn std::fmt::Display| format!("{path}: {e}");
        let mut c = Client::connect(addr).await.map_err(|e| failed(&e))?;
        let answer = c.get(path).await.map_err(|e| failed(&e))?;
        let body: Value = serde_json::from_slice(&answer.body).unwrap_or(Value::Null);
        if done(&body) {
            Ok(body)
        } else {
            Err(format!("{path} answered {body}"))
        }
    })
    .await
}

/// Accepts HTTP POSTs (the Slack webhook) and sends each body on the channel.
async fn webhook(listener: tokio::net::TcpListener, bodies: tokio::sync::mpsc::Sender<String>) {
    loop {
        let Ok((mut stream, _)) = listener.accept().await else {
            return;
        };
        let bodies = bodies.clone();
        tokio::spawn(async move {
            let mut request = Vec::new();
            let mut buf = [0u8; 8192];
            // One request: the headers, then Content-Length bytes of body.
            let body = loop {
                let Ok(n) = stream.read(&mut buf).await else {
                    return;
                };
                if n == 0 {
                    return;
                }
                request.extend_from_slice(&buf[..n]);
                let text = String::from_utf8_lossy(&request).to_string();
                if let Some(end) = text.find("\r\n\r\n") {
                    let length = text[..end]
                        .lines()
                        .find_map(|l| {
                            let (name, value) = l.split_once(':')?;
                            name.eq_ignore_ascii_case("content-length")
                                .then(|| value.trim().parse::<usize>().ok())?
                        })
                        .unwrap_or(0);
                    if request.len() >= end + 4 + length {
                        break String::from_utf8_lossy(&request[end + 4..end + 4 + length])
                            .to_string();
                    }
                }
                if request.len() > 1 << 20 {
                    return; // not a webhook of this test
                }
            };
            let _ = stream
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok")
                .await;
            let _ = bodies.send(body).await;
        });
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn driven_failures_fire_saga_failure_spike_through_prometheus_to_the_chat_receiver() {
    let root = tempfile::tempdir().unwrap();
    let work = root.path();
    // A cgroup with limits, so the CPU and memory panels' limit queries have series.
    let cgroup = common::cgroup_with_limits(work);
    let server = serve(
        &data_dir(&root),
        &["--cgroup-root", cgroup.to_str().unwrap()],
    );

    // The chat receiver's webhook.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hook = listener.local_addr().unwrap();
    let (tx, mut delivered) = tokio::sync::mpsc::channel(64);
    tokio::spawn(webhook(listener, tx));

    // Alertmanager with the shipped routing, its secrets in files of this test.
    let secrets = work.join("secrets");
    std::fs::create_dir(&secrets).unwrap();
    std::fs::write(
        secrets.join("slack-webhook-url"),
        format!("http://{hook}/slack"),
    )
    .unwrap();
    std::fs::write(secrets.join("pagerduty-routing-key"), "drill-routing-key").unwrap();
    let shipped =
        std::fs::read_to_string(Path::new(REPO).join("monitoring/alertmanager/alertmanager.yml"))
            .unwrap();
    assert!(shipped.contains("/etc/alertmanager/secrets/"));
    let am_config = work.join("alertmanager.yml");
    std::fs::write(
        &am_config,
        shipped.replace(
            "/etc/alertmanager/secrets/",
            &format!("{}/", secrets.display()),
        ),
    )
    .unwrap();
    let am = free_port();
    let _alertmanager = Daemon::start(
        "prometheus-alertmanager",
        &[
            format!("--config.file={}", am_config.display()),
            format!("--storage.path={}", work.join("am-data").display()),
            format!("--web.listen-address={am}"),
            "--cluster.listen-address=".into(),
        ],
    );

    // Prometheus: scrape and evaluate every second, alerts to that Alertmanager.
    let prom = free_port();
    let prom_config = work.join("prometheus.yml");
    std::fs::write(
        &prom_config,
        format!(
            "global: {{scrape_interval: 1s, evaluation_interval: 1s}}\n\
             rule_files: ['{rules}']\n\
             alerting: {{alertmanagers: [{{static_configs: [{{targets: ['{am}']}}]}}]}}\n\
             scrape_configs: [{{job_name: sagalog, static_configs: [{{targets: ['{target}']}}]}}]\n",
            rules = Path::new(REPO).join("monitoring/alerts/sagalog.yaml").display(),
            target = server.addr,
        ),
    )
    .unwrap();
    let _prometheus = Daemon::start(
        "prometheus",
        &[
            format!("--config.file={}", prom_config.display()),
            format!("--storage.tsdb.path={}", work.join("prom-data").display()),
            format!("--web.listen-address={prom}"),
        ],
    );

    // A definition whose only step has one attempt, registered first: its series are
    // exported at zero from the next scrape on (as for definitions loaded at start).
    let mut c = common::client(&server).await;
    let definition = json!({"name": "spike", "version": 1, "steps": [
        {"name": "reserve_inventory", "topic": "inventory.commands", "compensable": true,
         "timeout_ms": 3_600_000, "max_attempts": 1, "backoff_ms": 100}]});
    common::put_definition(&mut c, &definition).await;

    // The counters' zeros are scraped before the failures, so increase() sees them all.
    wait_for(
        prom,
        &query_path(r#"saga_step_executions_total{saga_type="spike",status="failed"}"#),
        Duration::from_secs(60),
        "Prometheus scrapes the spike definition's series",
        |v| v["data"]["result"][0]["value"][1] == "0",
    )
    .await;
    wait_for(
        prom,
        &query_path("saga_failed_total"),
        Duration::from_secs(60),
        "Prometheus scrapes sagalog",
        |v| v["data"]["result"][0]["value"][1] == "0",
    )
    .await;
    let rules = wait_for(
        prom,
        "/api/v1/rules",
        Duration::from_secs(30),
        "Prometheus loads the rules",
        |v| {
            v["data"]["groups"]
                .as_array()
                .is_some_and(|g| !g.is_empty())
        },
    )
    .await;
    let loaded: usize = rules["data"]["groups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["rules"].as_array().unwrap().len())
        .sum();
    let shipped_rules =
        std::fs::read_to_string(Path::new(REPO).join("monitoring/alerts/sagalog.yaml"))
            .unwrap()
            .matches("- alert: ")
            .count();
    assert_eq!(
        loaded, shipped_rules,
        "every rule of sagalog.yaml is loaded"
    );

    // Fifteen sagas whose only step fails for good: FAILED, then COMPENSATED.
    for i in 0..15 {
        let id = format!("spike-{i}");
        let start = post(
            &mut c,
            "/api/v1/sagas",
            json!({"type": "spike", "saga_id": id, "payload": {"order_id": format!("ORD-{i}")}}),
        )
        .await;
        assert_eq!(start.status, 201, "{}", start.text());
        let reply = json!({"event_id": format!("{id}-1"), "step": "reserve_inventory",
                           "outcome": "failed", "attempt": 1, "reason": "out of stock"});
        let r = post(&mut c, &format!("/api/v1/sagas/{id}/events"), reply).await;
        assert_eq!(r.status, 202, "{}", r.text());
    }
    // Reads of finished sagas (index gets, a list, a history) and a snapshot, so the
    // storage panels have series too.
    for path in [
        "/api/v1/sagas/spike-0",
        "/api/v1/sagas/spike-0/history",
        "/api/v1/sagas?status=COMPENSATED&limit=5",
    ] {
        assert_eq!(get(&mut c, path).await.status, 200, "{path}");
    }
    let snapshot = c
        .send(hyper::Method::POST, "/internal/v1/snapshots", &[], None)
        .await
        .unwrap();
    assert_eq!(snapshot.status, 201, "{}", snapshot.text());
    let metrics = get(&mut c, "/metrics").await.text();
    assert!(
        common::gauge(&metrics, "saga_failed_total") >= 15.0,
        "{metrics}"
    );

    // Pending, then firing after its `for: 1m`.
    let firing = |v: &Value| -> Vec<String> {
        v["data"]["alerts"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|a| a["state"] == "firing")
            .map(|a| {
                a["labels"]["alertname"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string()
            })
            .collect()
    };
    let alerts = wait_for(
        prom,
        "/api/v1/alerts",
        Duration::from_secs(150),
        "SagaFailureSpike fires at Prometheus",
        |v| firing(v).iter().any(|a| a == "SagaFailureSpike"),
    )
    .await;
    assert_eq!(
        firing(&alerts),
        ["SagaFailureSpike"],
        "only SagaFailureSpike fires on a healthy server: {alerts}"
    );

    // Every dashboard query evaluates at this Prometheus, on sagalog's real series.
    dashboard_queries_evaluate(prom).await;
    // And the recent-failures table, read from sagalog's API as its data source does.
    recent_failures_are_listed(server.addr).await;

    // At Alertmanager, routed to the chat receiver (severity warning).
    let groups = wait_for(
        am,
        "/api/v2/alerts/groups",
        Duration::from_secs(60),
        "the alert reaches Alertmanager",
        |v| v.to_string().contains("SagaFailureSpike"),
    )
    .await;
    let group = groups
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g.to_string().contains("SagaFailureSpike"))
        .unwrap();
    assert_eq!(group["receiver"]["name"], "chat", "{group}");
    let alert = &group["alerts"][0];
    assert_eq!(alert["labels"]["severity"], "warning");
    assert!(
        alert["annotations"]["runbook_url"]
            .as_str()
            .unwrap()
            .ends_with("RUNBOOKS.md#sagafailurespike"),
        "{alert}"
    );

    // And delivered: the chat receiver's webhook gets it (after group_wait, 30 s).
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let body = tokio::time::timeout(left, delivered.recv())
            .await
            .expect("Alertmanager posts to the chat webhook within 90 s")
            .expect("the webhook listener runs");
        let message: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
        if body.contains("SagaFailureSpike") {
            assert_eq!(message["channel"], "#sagalog-alerts", "{body}");
            assert!(
                body.contains("sagas failed in 5 minutes"),
                "the summary is in the chat message: {body}"
            );
            break;
        }
    }
}

/// Runs every dashboard query (Grafana's variables set to what a dashboard with "All"
/// selected sends) against the live Prometheus: none may fail, and every one returns
/// series.
async fn dashboard_queries_evaluate(prom: SocketAddr) {
    let mut c = Client::connect(prom).await.unwrap();
    let mut empty = Vec::new();
    for (place, expr) in common::dashboard_queries() {
        let expr = expr
            .replace("$__rate_interval", "1m")
            .replace("$__range", "5m")
            .replace("$namespace", ".*")
            .replace("$saga_type", ".*");
        let answer = c.get(&query_path(&expr)).await.unwrap();
        let body: Value = serde_json::from_slice(&answer.body).unwrap_or(Value::Null);
        assert_eq!(body["status"], "success", "{place}: {expr}: {body}");
        if body["data"]["result"].as_array().is_none_or(Vec::is_empty) {
            empty.push(place);
        }
    }
    assert!(
        empty.is_empty(),
        "dashboard queries with no series: {empty:#?}"
    );
}

/// Sends every Infinity request of the dashboards to the server, as the data source
/// does: each answers 200 with its rows under the root selector, every column resolves
/// in every row, and together they list the 15 failed sagas with their order ids, the
/// step that failed and when.
async fn recent_failures_are_listed(server: SocketAddr) {
    let requests = common::dashboard_api_requests();
    assert!(!requests.is_empty(), "the tracker dashboard reads the API");
    let mut c = Client::connect(server).await.unwrap();
    let mut rows = Vec::new();
    for request in &requests {
        let answer = c.get(&request.path).await.unwrap();
        assert_eq!(
            answer.status,
            200,
            "{}: {}: {}",
            request.place,
            request.path,
            answer.text()
        );
        let body: Value = serde_json::from_slice(&answer.body).unwrap();
        let items = body[&request.root]
            .as_array()
            .unwrap_or_else(|| panic!("{}: no {:?} array in {body}", request.place, request.root));
        for item in items {
            let row: Vec<Value> = request
                .columns
                .iter()
                .map(|path| path.split('.').fold(item, |v, key| &v[key]).clone())
                .collect();
            rows.push((request.columns.clone(), row));
        }
    }
    let column = |columns: &[String], row: &[Value], name: &str| -> Value {
        let at = columns
            .iter()
            .position(|c| c == name)
            .unwrap_or_else(|| panic!("no column {name}"));
        row[at].clone()
    };
    let mut orders: Vec<String> = rows
        .iter()
        .map(|(columns, row)| {
            assert_eq!(
                column(columns, row, "failed_step"),
                "reserve_inventory",
                "{row:?}"
            );
            assert!(column(columns, row, "failed_at").is_string(), "{row:?}");
            assert!(
                column(columns, row, "failure_reason").is_string(),
                "{row:?}"
            );
            column(columns, row, "payload.order_id")
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    orders.sort();
    let mut expected: Vec<String> = (0..15).map(|i| format!("ORD-{i}")).collect();
    expected.sort();
    assert_eq!(orders, expected, "the failed sagas, each once");
}

/// The path of Prometheus's instant query for `expr`.
fn query_path(expr: &str) -> String {
    let query: String = form_urlencoded::Serializer::new(String::new())
        .append_pair("query", expr)
        .finish();
    format!("/api/v1/query?{query}")
}
