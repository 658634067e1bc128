//! Runs the real `sagalog serve` binary on a free loopback port (`--listen
//! 127.0.0.1:0`, JSON logs) and learns its address from the `listening` log line. The
//! integration tests and the load generator both start servers this way. [`Tansu`]
//! runs the real Kafka-protocol broker the Kafka tests use.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

/// Longest a server may take to open its data directory and listen.
const START_TIMEOUT: Duration = Duration::from_secs(120);
/// Longest a server may take to stop after SIGTERM.
const STOP_TIMEOUT: Duration = Duration::from_secs(30);

pub struct Server {
    pub child: Child,
    pub addr: SocketAddr,
    /// Every log line the server wrote so far (JSON lines).
    pub log: Arc<Mutex<Vec<String>>>,
}

impl Server {
    /// Starts `binary serve --data-dir DIR --listen 127.0.0.1:0 --log-format json EXTRA…`
    /// with no admin token from the environment; returns once it listens.
    pub fn start(binary: &Path, data_dir: &Path, extra: &[&str]) -> Result<Server, String> {
        Server::start_on(binary, data_dir, "127.0.0.1:0", extra)
    }

    /// [`Server::start`] listening on `listen`.
    pub fn start_on(
        binary: &Path,
        data_dir: &Path,
        listen: &str,
        extra: &[&str],
    ) -> Result<Server, String> {
        let mut child = Command::new(binary)
            .arg("serve")
            .arg("--data-dir")
            .arg(data_dir)
            .args(["--listen", listen, "--log-format", "json"])
            .args(extra)
            .env_remove("SAGALOG_ADMIN_TOKEN")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("starting {}: {e}", binary.display()))?;
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
                lines.lock().expect("log lock").push(line);
            }
        });
        let address = rx.recv_timeout(START_TIMEOUT).ok().flatten();
        let Some(addr) = address.and_then(|a| a.parse().ok()) else {
            let _ = child.kill();
            let _ = child.wait();
            let log = log.lock().expect("log lock").join("\n");
            return Err(format!(
                "sagalog did not log the address it listens on; its log:\n{log}"
            ));
        };
        Ok(Server { child, addr, log })
    }

    /// SIGTERM, then the exit status.
    pub fn terminate(mut self) -> Result<ExitStatus, String> {
        let pid = self.child.id().to_string();
        let sent = Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .map_err(|e| format!("kill -TERM {pid}: {e}"))?;
        if !sent.success() {
            return Err(format!("kill -TERM {pid} failed"));
        }
        let deadline = Instant::now() + STOP_TIMEOUT;
        loop {
            if let Some(status) = self.child.try_wait().map_err(|e| e.to_string())? {
                return Ok(status);
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "sagalog did not stop within {STOP_TIMEOUT:?} of SIGTERM"
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn log_text(&self) -> String {
        self.log.lock().expect("log lock").join("\n")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if std::thread::panicking() {
            // A failing test shows what the server said (the harness prints it).
            let log = self.log.lock().map(|l| l.clone()).unwrap_or_default();
            let tail = &log[log.len().saturating_sub(SHOWN_ON_FAILURE)..];
            eprintln!(
                "--- the server's last {} log lines ---\n{}",
                tail.len(),
                tail.join("\n")
            );
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Log lines a failing test shows of its server.
const SHOWN_ON_FAILURE: usize = 300;

pub struct Tansu {
    child: Child,
    pub port: u16,
}

/// `~/.cargo/bin/tansu`, or `tansu` on the PATH (`scripts/test` installs it).
fn tansu_binary() -> PathBuf {
    let cargo_bin = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cargo")))
        .map(|home| home.join("bin").join("tansu"));
    cargo_bin
        .filter(|path| path.exists())
        .unwrap_or_else(|| PathBuf::from("tansu"))
}

impl Tansu {
    pub fn start() -> Tansu {
        Tansu::start_on(crate::free_port())
    }

    /// On a given port: a broker started again where its clients expect it.
    pub fn start_on(port: u16) -> Tansu {
        let url = format!("tcp://127.0.0.1:{port}");
        let child = Command::new(tansu_binary())
            .args(["broker", "--listener-url", &url, "--advertised-listener-url", &url])
            .args(["--storage-engine", "memory://tansu/"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("tansu starts (scripts/test installs it with cargo install tansu --features dynostore)");
        let tansu = Tansu { child, port };
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "tansu did not listen on port {port} within 30 s"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        tansu
    }

    pub fn brokers(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// An admin client of this broker (to delete and make topics as an operator would).
    pub fn admin(&self) -> rdkafka::admin::AdminClient<rdkafka::client::DefaultClientContext> {
        rdkafka::ClientConfig::new()
            .set("bootstrap.servers", self.brokers())
            .create()
            .expect("an admin client")
    }

    /// A producer of this broker with librdkafka's defaults (as a participant's).
    pub fn producer(&self) -> rdkafka::producer::FutureProducer {
        rdkafka::ClientConfig::new()
            .set("bootstrap.servers", self.brokers())
            .create()
            .expect("a producer")
    }

    /// A consumer in `group` assigned partitions `0..partitions` of each of `topics`,
    /// reading from the beginning (as a participant that must see every command).
    pub fn consumer_from_start(
        &self,
        group: &str,
        topics: &[&str],
        partitions: i32,
    ) -> rdkafka::consumer::StreamConsumer {
        use rdkafka::consumer::Consumer;
        let consumer: rdkafka::consumer::StreamConsumer = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", self.brokers())
            .set("group.id", group)
            .set("enable.auto.commit", "false")
            // An empty metadata cache: librdkafka 2.12 crashes on tansu's answer to a
            // fetch of a deleted topic when its cache holds a topic (see the relay's
            // reply consumer), and tests delete and recreate topics.
            .set("metadata.max.age.ms", "1")
            .create()
            .expect("a consumer");
        let mut assignment = rdkafka::TopicPartitionList::new();
        for topic in topics {
            for partition in 0..partitions {
                assignment
                    .add_partition_offset(topic, partition, rdkafka::Offset::Beginning)
                    .expect("a partition");
            }
        }
        consumer.assign(&assignment).expect("assigned");
        consumer
    }
}

/// The next message `consumer` hands over before `deadline`, waiting out the errors a
/// test's broker gives meanwhile (a topic not made yet or being made again, a broker
/// coming back); `None` once the deadline has passed.
pub async fn next_message(
    consumer: &rdkafka::consumer::StreamConsumer,
    deadline: Instant,
) -> Option<rdkafka::message::BorrowedMessage<'_>> {
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, consumer.recv()).await {
            Ok(Ok(message)) => return Some(message),
            Ok(Err(_)) => tokio::time::sleep(Duration::from_millis(100)).await,
            Err(_) => return None,
        }
    }
}

impl Drop for Tansu {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
