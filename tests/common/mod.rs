//! Runs the real `sagalog` binary on a free loopback port with a temporary data
//! directory, and talks to it over HTTP.

#![allow(dead_code)] // each test file uses its own share of these helpers

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sagalog_http::client::{Answer, Client};
use serde_json::Value;

pub const TOKEN: &str = "test-admin-token";

pub struct Server {
    pub child: Child,
    pub addr: SocketAddr,
    /// Every log line the server wrote so far (JSON lines).
    pub log: Arc<Mutex<Vec<String>>>,
}

/// Starts `sagalog serve` on `data_dir` with `--listen 127.0.0.1:0` and `extra` options;
/// returns once it logs the address it listens on.
pub fn serve(data_dir: &Path, extra: &[&str]) -> Server {
    let mut child = Command::new(env!("CARGO_BIN_EXE_sagalog"))
        .arg("serve")
        .arg("--data-dir")
        .arg(data_dir)
        .args(["--listen", "127.0.0.1:0", "--log-format", "json"])
        .args(extra)
        .env_remove("SAGALOG_ADMIN_TOKEN")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the sagalog binary starts");
    let stderr = child.stderr.take().expect("stderr is piped");
    let log = Arc::new(Mutex::new(Vec::new()));
    let (tx, rx) = std::sync::mpsc::channel();
    let lines = log.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Ok(entry) = serde_json::from_str::<Value>(&line) {
                if entry["fields"]["message"] == "listening" {
                    let _ = tx.send(entry["fields"]["address"].as_str().map(str::to_string));
                }
            }
            lines.lock().unwrap().push(line);
        }
    });
    let addr = rx
        .recv_timeout(Duration::from_secs(60))
        .ok()
        .flatten()
        .unwrap_or_else(|| {
            let _ = child.kill();
            panic!(
                "sagalog did not log its address; log:\n{}",
                log.lock().unwrap().join("\n")
            )
        })
        .parse()
        .expect("a socket address");
    Server { child, addr, log }
}

impl Server {
    pub async fn client(&self) -> Client {
        Client::connect(self.addr).await.expect("connects")
    }

    /// SIGTERM, then the exit status (the server must stop within 30 s).
    pub fn terminate(mut self) -> ExitStatus {
        let pid = self.child.id().to_string();
        let killed = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        assert!(killed.success());
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "sagalog did not stop within 30 s of SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn log_text(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
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
