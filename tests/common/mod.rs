//! Runs the real `sagalog` binary on a free loopback port with a temporary data
//! directory, and talks to it over HTTP.

#![allow(dead_code)] // each test file uses its own share of these helpers

pub mod pods;

use std::path::{Path, PathBuf};

use sagalog_testkit::client::{Answer, Client};
use sagalog_testkit::process::Server;
use serde_json::Value;

pub const TOKEN: &str = "test-admin-token";

/// Starts `sagalog serve` on `data_dir` on a free port with `extra` options.
pub fn serve(data_dir: &Path, extra: &[&str]) -> Server {
    Server::start(Path::new(env!("CARGO_BIN_EXE_sagalog")), data_dir, extra)
        .unwrap_or_else(|e| panic!("{e}"))
}

pub async fn client(server: &Server) -> Client {
    Client::connect(server.addr).await.expect("connects")
}

pub fn data_dir(root: &tempfile::TempDir) -> PathBuf {
    root.path().join("data")
}

pub async fn get(client: &mut Client, path: &str) -> Answer {
    client.get(path).await.expect("request")
}

pub async fn post(client: &mut Client, path: &str, body: Value) -> Answer {
    client.post_json(path, &body).await.expect("request")
}

/// `PUT /api/v1/definitions/{name}` with `definition` (and the admin token, which a
/// server without one ignores), asserting it is registered.
pub async fn put_definition(client: &mut Client, definition: &Value) {
    let name = definition["name"]
        .as_str()
        .expect("a definition has a name");
    let body = definition.to_string();
    let answer = client
        .send(
            hyper::Method::PUT,
            &format!("/api/v1/definitions/{name}"),
            &[("authorization", &format!("Bearer {TOKEN}"))],
            Some(body.as_bytes()),
        )
        .await
        .expect("request");
    assert_eq!(answer.status, 200, "registering {name}: {}", answer.text());
}

/// A request with the admin token.
pub async fn admin(
    client: &mut Client,
    method: hyper::Method,
    path: &str,
    body: Option<Value>,
) -> Answer {
    let auth = format!("Bearer {TOKEN}");
    let body = body.map(|b| b.to_string());
    client
        .send(
            method,
            path,
            &[("authorization", &auth)],
            body.as_deref().map(str::as_bytes),
        )
        .await
        .expect("request")
}

/// Asserts the status and the error body's code, returning the message.
pub fn expect_error(answer: &Answer, status: u16, code: &str) -> String {
    let body = answer.json();
    assert_eq!(
        (answer.status.as_u16(), body["error"]["code"].as_str()),
        (status, Some(code)),
        "expected {status} {code}, got {} {}",
        answer.status,
        answer.text()
    );
    body["error"]["message"]
        .as_str()
        .expect("an error message")
        .to_string()
}

/// The lines of a `/metrics` text whose name is one of `names` (samples only).
pub fn samples(metrics: &str, names: &[&str]) -> Vec<String> {
    let mut lines: Vec<String> = metrics
        .lines()
        .filter(|line| !line.starts_with('#'))
        .filter(|line| {
            let name = line.split(['{', ' ']).next().unwrap_or_default();
            names.contains(&name)
        })
        .map(str::to_string)
        .collect();
    lines.sort();
    lines
}

/// Runs an offline `sagalog` command (warnings only on stderr).
pub fn sagalog(args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_sagalog"))
        .args(args)
        .env("SAGALOG_LOG", "warn")
        .output()
        .expect("runs")
}

/// The `saga_status_gauge` samples of a `/metrics` text, as status → value (the shape
/// of `sagalog replay --json`'s `status_counts`).
/// A metric's one sample value.
pub fn gauge(metrics: &str, name: &str) -> f64 {
    samples(metrics, &[name])
        .first()
        .unwrap_or_else(|| panic!("{name} is exported"))
        .rsplit(' ')
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

pub fn status_gauge(metrics: &str) -> Value {
    let mut out = serde_json::Map::new();
    for line in samples(metrics, &["saga_status_gauge"]) {
        let status = line.split('"').nth(1).expect("a status label").to_string();
        let value: f64 = line.rsplit(' ').next().unwrap().parse().unwrap();
        out.insert(status, Value::from(value as u64));
    }
    Value::Object(out)
}

/// Every PromQL expression of the dashboards (panel targets and template queries),
/// named by where it is.
const INFINITY: &str = "yesoreyeram-infinity-datasource";

/// Every dashboard of `monitoring/dashboards`: its file name and its JSON.
fn dashboards() -> Vec<(String, Value)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("monitoring/dashboards");
    let mut out = Vec::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "json") {
            let dashboard = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
            out.push((
                path.file_name().unwrap().to_string_lossy().to_string(),
                dashboard,
            ));
        }
    }
    out
}

/// A request a dashboard's Infinity data source makes to sagalog's API.
pub struct ApiRequest {
    /// `dashboard panel "title" refId`.
    pub place: String,
    /// The path and query string, as the data source sends them.
    pub path: String,
    /// The JSON paths of its columns under the root selector (`payload.order_id`),
    /// with the dashboard's variables at their defaults.
    pub columns: Vec<String>,
    pub root: String,
}

/// Every Infinity query of the dashboards, as the request it makes.
pub fn dashboard_api_requests() -> Vec<ApiRequest> {
    let mut out = Vec::new();
    for (file, dashboard) in dashboards() {
        // Textbox variables at their defaults.
        let defaults: Vec<(String, String)> = dashboard["templating"]["list"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|v| v["type"] == "textbox")
            .map(|v| {
                let name = v["name"].as_str().unwrap();
                (
                    format!("${{{name}}}"),
                    v["query"].as_str().unwrap().to_string(),
                )
            })
            .collect();
        let fill = |text: &str| {
            defaults
                .iter()
                .fold(text.to_string(), |t, (var, value)| t.replace(var, value))
        };
        for panel in dashboard["panels"].as_array().unwrap() {
            for target in panel["targets"].as_array().unwrap() {
                if target["datasource"]["type"] != INFINITY {
                    continue;
                }
                let mut query = form_urlencoded::Serializer::new(String::new());
                for param in target["url_options"]["params"].as_array().unwrap() {
                    query.append_pair(
                        param["key"].as_str().unwrap(),
                        &fill(param["value"].as_str().unwrap()),
                    );
                }
                out.push(ApiRequest {
                    place: format!(
                        "{file} panel {:?} {}",
                        panel["title"].as_str().unwrap(),
                        target["refId"].as_str().unwrap()
                    ),
                    path: format!("{}?{}", target["url"].as_str().unwrap(), query.finish()),
                    columns: target["columns"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|c| fill(c["selector"].as_str().unwrap()))
                        .collect(),
                    root: target["root_selector"].as_str().unwrap().to_string(),
                });
            }
        }
    }
    out
}

/// A cgroup (v2) filesystem as a pod with limits has it — 2 cores, 1 GiB — for
/// `--cgroup-root`: this machine's own cgroup sets no limit, and making one needs
/// privileges a test must not assume.
pub fn cgroup_with_limits(dir: &Path) -> PathBuf {
    let root = dir.join("cgroup");
    std::fs::create_dir_all(&root).unwrap();
    std::fs::write(root.join("cpu.max"), "200000 100000\n").unwrap();
    std::fs::write(root.join("memory.max"), "1073741824\n").unwrap();
    root
}

pub fn dashboard_queries() -> Vec<(String, String)> {
    let mut out = Vec::new();
    for (file, dashboard) in dashboards() {
        for panel in dashboard["panels"].as_array().unwrap() {
            for target in panel["targets"].as_array().unwrap() {
                // Infinity targets read sagalog's API (`dashboard_api_requests`).
                if target["datasource"]["type"] == INFINITY {
                    continue;
                }
                out.push((
                    format!("{file} panel {:?}", panel["title"].as_str().unwrap()),
                    target["expr"].as_str().unwrap().to_string(),
                ));
            }
        }
        for variable in dashboard["templating"]["list"].as_array().unwrap() {
            // `label_values(SELECTOR, LABEL)`: the selector is PromQL, the label is not.
            if let Some(query) = variable["query"]["query"].as_str() {
                let selector = query
                    .strip_prefix("label_values(")
                    .and_then(|q| q.rsplit_once(','))
                    .map_or(query, |(selector, _)| selector);
                out.push((
                    format!("{file} variable {}", variable["name"]),
                    selector.into(),
                ));
            }
        }
    }
    assert!(out.len() > 40, "the dashboards' queries were found");
    out
}

/// One fenced code block of a Markdown text, with the heading it is under and its
/// language (the fence's info string).
pub struct Block {
    pub section: String,
    pub language: String,
    pub text: String,
}

pub fn fenced_blocks(markdown: &str) -> Vec<Block> {
    let mut out = Vec::new();
    let mut section = String::new();
    let mut open: Option<Block> = None;
    for line in markdown.lines() {
        match open.as_mut() {
            Some(_) if line.starts_with("```") => out.push(open.take().expect("open block")),
            Some(block) => {
                block.text.push_str(line);
                block.text.push('\n');
            }
            None if line.starts_with("```") => {
                open = Some(Block {
                    section: section.clone(),
                    language: line.trim_start_matches('`').trim().to_string(),
                    text: String::new(),
                })
            }
            None if line.starts_with('#') => section = line.trim_start_matches('#').trim().into(),
            None => {}
        }
    }
    assert!(open.is_none(), "the Markdown ends inside a code block");
    out
}
