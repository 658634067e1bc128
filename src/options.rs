//! `sagalog serve`'s options (docs/server.md): each from the command line, else its
//! `SAGALOG_<NAME>` environment variable (clap reads both), else the TOML file given by
//! `--config` (keys are the option names with `_`, e.g. `data_dir = "/var/lib/sagalog"`),
//! else the default.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use clap::{Args, ValueEnum};
use serde::Deserialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Human,
    Json,
}

/// Every `serve` option, each optional so that the file and defaults can fill it in.
#[derive(Debug, Default, Args, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServeArgs {
    /// Data directory: log/, index/, snapshots/ [default: ./data]
    #[arg(long, env = "SAGALOG_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Address to listen on, HOST:PORT (a bare PORT is 127.0.0.1:PORT) [default:
    /// 127.0.0.1:8080]
    #[arg(long, env = "SAGALOG_LISTEN", value_parser = listen_address)]
    #[serde(default, deserialize_with = "listen_in_file")]
    pub listen: Option<SocketAddr>,
    /// Directory of saga definitions (every *.json file) [default: the built-in `order`]
    #[arg(long, env = "SAGALOG_DEFINITIONS")]
    pub definitions: Option<PathBuf>,
    /// Kafka bootstrap servers, comma-separated [default: none, the HTTP outbox only]
    #[arg(long, env = "SAGALOG_KAFKA_BROKERS")]
    pub kafka_brokers: Option<String>,
    /// Create missing Kafka topics at start [default: true]
    #[arg(long, env = "SAGALOG_KAFKA_CREATE_TOPICS")]
    pub kafka_create_topics: Option<bool>,
    /// Largest Kafka message the relay sends; a command over it is dead-lettered
    /// [default: 1000000]
    #[arg(long, env = "SAGALOG_KAFKA_MAX_MESSAGE_BYTES")]
    pub kafka_max_message_bytes: Option<usize>,
    /// Bearer token the /internal/ routes require
    #[arg(long, env = "SAGALOG_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,
    /// TOML file with any of these options (keys with `_`)
    #[arg(long, env = "SAGALOG_CONFIG")]
    #[serde(skip)]
    pub config: Option<PathBuf>,
    /// Listen on a non-loopback address without an admin token
    #[arg(long, env = "SAGALOG_INSECURE")]
    #[serde(default)]
    pub insecure: bool,
    /// Also run built-in participants for `order` that reply, some failing and slow
    #[arg(long, env = "SAGALOG_DEMO")]
    #[serde(default)]
    pub demo: bool,
    /// Log format [default: human]
    #[arg(long, env = "SAGALOG_LOG_FORMAT", value_enum)]
    pub log_format: Option<LogFormat>,
    /// Largest request body in bytes (413 beyond) [default: 1048576]
    #[arg(long, env = "SAGALOG_MAX_BODY_BYTES")]
    pub max_body_bytes: Option<usize>,
    /// Largest start payload, as JSON, in bytes (413 beyond) [default: 524288]
    #[arg(long, env = "SAGALOG_MAX_PAYLOAD_BYTES")]
    pub max_payload_bytes: Option<usize>,
    /// Largest `data` of one step's reply, as JSON, in bytes (413 beyond): later
    /// commands carry it as `results` [default: 65536]
    #[arg(long, env = "SAGALOG_MAX_STEP_DATA_BYTES")]
    pub max_step_data_bytes: Option<usize>,
    /// Most bytes of `data` one saga's steps hold together (413 for the reply that
    /// would pass it) [default: 1048576]
    #[arg(long, env = "SAGALOG_MAX_SAGA_DATA_BYTES")]
    pub max_saga_data_bytes: Option<usize>,
    /// Most client connections served at once; past it a connection is answered 503
    /// (probes are served) or closed [default: 1024]
    #[arg(long, env = "SAGALOG_MAX_CONNECTIONS")]
    pub max_connections: Option<usize>,
    /// Longest a client may take to send a request's headers, and to sit idle on a
    /// keep-alive connection, in ms [default: 30000]
    #[arg(long, env = "SAGALOG_HEADER_TIMEOUT_MS")]
    pub header_timeout_ms: Option<u64>,
    /// Longest an answer's write may wait for room in the socket buffer (a client that
    /// reads nothing, or too slowly), in ms; then the connection is closed
    /// [default: 30000]
    #[arg(long, env = "SAGALOG_WRITE_TIMEOUT_MS")]
    pub write_timeout_ms: Option<u64>,
    /// Longest a request's body may take to arrive in full, in ms (408 beyond)
    /// [default: 30000]
    #[arg(long, env = "SAGALOG_BODY_TIMEOUT_MS")]
    pub body_timeout_ms: Option<u64>,
    /// Slowest a request's body may arrive after its first 2 s, in bytes/s (408 below;
    /// 0 turns it off) [default: 1024]
    #[arg(long, env = "SAGALOG_BODY_MIN_BYTES_PER_SEC")]
    pub body_min_bytes_per_sec: Option<u64>,
    /// Longest an outbox long poll waits, in ms, whatever its wait_ms asks (at most
    /// 30000) [default: 30000]
    #[arg(long, env = "SAGALOG_MAX_OUTBOX_WAIT_MS")]
    pub max_outbox_wait_ms: Option<u64>,
    /// A second address serving only GET /healthz, /readyz and /metrics, for probes
    /// and scrapes that a flood of the API's port must not reach [default: none]
    #[arg(long, env = "SAGALOG_PROBE_LISTEN", value_parser = listen_address)]
    #[serde(default, deserialize_with = "listen_in_file")]
    pub probe_listen: Option<SocketAddr>,
    /// Bytes of sagas one list page holds at most (payloads and the rest); a page past
    /// it ends early with a cursor [default: 8388608]
    #[arg(long, env = "SAGALOG_MAX_LIST_BYTES")]
    pub max_list_bytes: Option<usize>,
    /// Definition versions registered at most, all names together; a registration
    /// past it gets 409 [default: 10000]
    #[arg(long, env = "SAGALOG_MAX_DEFINITION_VERSIONS")]
    pub max_definition_versions: Option<usize>,
    /// Most sagas active at once; a start beyond it gets 503 [default: 10000000]
    #[arg(long, env = "SAGALOG_MAX_ACTIVE_SAGAS")]
    pub max_active_sagas: Option<usize>,
    /// When the log fsyncs: always, never, or interval_ms=N [default: always]
    #[arg(long, env = "SAGALOG_FSYNC")]
    pub fsync: Option<String>,
    /// Take a snapshot every this many log records (0: only on demand) [default: 1000000]
    #[arg(long, env = "SAGALOG_SNAPSHOT_EVERY_RECORDS")]
    pub snapshot_every_records: Option<u64>,
    /// Writes are refused (503, /readyz fails) while the data directory's filesystem has
    /// less free space than the smaller of this and --min-free-percent; 0 turns it off
    /// [default: 1073741824]
    #[arg(long, env = "SAGALOG_MIN_FREE_BYTES")]
    pub min_free_bytes: Option<u64>,
    /// A file of zeros kept in the data directory (at most 1% of its filesystem), given
    /// back to open on a full disk; writes are then refused until it can be kept again.
    /// 0 keeps none [default: 33554432]
    #[arg(long, env = "SAGALOG_RESERVE_BYTES")]
    pub reserve_bytes: Option<u64>,
    /// See --min-free-bytes [default: 5]
    #[arg(long, env = "SAGALOG_MIN_FREE_PERCENT")]
    pub min_free_percent: Option<u8>,
    /// Bytes after which the log starts a new segment [default: 67108864]
    #[arg(long, env = "SAGALOG_SEGMENT_BYTES")]
    pub segment_bytes: Option<u64>,
    /// Delete log segments older than this (e.g. `7d`) once nothing needs them: below
    /// the oldest snapshot, the Kafka relay's position and every active saga. Finished
    /// sagas in them are removed. `off` keeps everything [default: off]
    #[arg(long, env = "SAGALOG_LOG_RETENTION")]
    pub log_retention: Option<String>,
    /// Where the cgroup filesystem is mounted, for the CPU and memory limits /metrics
    /// exports (sagalog_cgroup_*) [default: /sys/fs/cgroup]
    #[arg(long, env = "SAGALOG_CGROUP_ROOT")]
    pub cgroup_root: Option<PathBuf>,
    /// Partitions the sagas are split into, each with its own log, indexes and snapshots
    /// (a saga's partition is Kafka's murmur2 of its id modulo this). Fixed when the data
    /// directory is made; later it may be left out, or must be the same [default: what
    /// the data directory holds, 1 for a new one]
    #[arg(long, env = "SAGALOG_PARTITIONS", value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub partitions: Option<u32>,
    /// Pods of the deployment sharing the partitions: pod I holds partition p when
    /// p % R == I, and forwards what is another pod's [default: 1]
    #[arg(long, env = "SAGALOG_NODES", value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub nodes: Option<u32>,
    /// This pod's ordinal, 0 to --nodes minus 1 [default: the number at the end of the
    /// host name, as a StatefulSet's pod `sagalog-2` has]
    #[arg(long, env = "SAGALOG_NODE_ID")]
    pub node_id: Option<u32>,
    /// A pod's base URL, `{i}` standing for its ordinal
    /// (`http://sagalog-{i}.sagalog-headless:8080`); needed with --nodes over 1
    #[arg(long, env = "SAGALOG_PEER_URL_TEMPLATE")]
    pub peer_url_template: Option<String>,
    /// The secret the pods' requests to each other carry; needed with --nodes over 1
    #[arg(long, env = "SAGALOG_CLUSTER_SECRET", hide_env_values = true)]
    pub cluster_secret: Option<String>,
}

/// The options with every default filled in.
#[derive(Debug, Clone)]
pub struct Serve {
    pub data_dir: PathBuf,
    pub listen: SocketAddr,
    pub definitions: Option<PathBuf>,
    pub kafka_brokers: Option<String>,
    pub kafka_create_topics: bool,
    pub kafka_max_message_bytes: usize,
    pub admin_token: Option<String>,
    pub insecure: bool,
    pub demo: bool,
    pub log_format: LogFormat,
    pub max_body_bytes: usize,
    pub max_payload_bytes: usize,
    pub max_step_data_bytes: usize,
    pub max_saga_data_bytes: usize,
    pub max_connections: usize,
    pub header_timeout: std::time::Duration,
    pub write_timeout: std::time::Duration,
    pub body_timeout: std::time::Duration,
    pub body_min_bytes_per_sec: u64,
    pub probe_listen: Option<SocketAddr>,
    pub max_outbox_wait_ms: u64,
    pub max_active_sagas: usize,
    pub max_list_bytes: usize,
    pub max_definition_versions: usize,
    pub fsync: sagalog_storage::FsyncPolicy,
    pub snapshot_every_records: u64,
    pub segment_bytes: u64,
    pub min_free_bytes: u64,
    pub min_free_percent: u8,
    pub reserve_bytes: u64,
    /// `None`: keep every segment.
    pub log_retention: Option<std::time::Duration>,
    pub cgroup_root: PathBuf,
    /// `None`: as the data directory holds (1 for a new one).
    pub partitions: Option<u32>,
    /// The other pods, with `--nodes` over 1.
    pub cluster: Option<sagalog_http::cluster::ClusterConfig>,
}

/// `--min-free-bytes` when not given: writes stop below 1 GiB free (or the percentage).
const DEFAULT_MIN_FREE_BYTES: u64 = 1 << 30;
/// `--min-free-percent` when not given.
const DEFAULT_MIN_FREE_PERCENT: u8 = 5;
/// `--reserve-bytes` when not given: the space kept back for a restart on a full disk.
const DEFAULT_RESERVE_BYTES: u64 = 32 << 20;
/// The longest an outbox long poll may be allowed to wait (`--max-outbox-wait-ms`).
const MAX_OUTBOX_WAIT_MS: u64 = 30_000;

/// The largest `max_payload_bytes`: a start's record (payload, id, trace and the rest)
/// must fit the log's largest record, 4 MiB.
const MAX_PAYLOAD_BYTES: usize = 3 << 20;

/// A `serve` option that cannot be used, and why; `serve` exits with status 2.
#[derive(Debug, thiserror::Error)]
pub enum OptionsError {
    #[error("{option}: {reason}")]
    Invalid {
        option: &'static str,
        reason: String,
    },
    #[error("config file {}: {reason}", path.display())]
    ConfigFile { path: PathBuf, reason: String },
    #[error(
        "refusing to listen on {listen} with no admin token: the /internal/ routes would be \
         open to the network. Set --admin-token (SAGALOG_ADMIN_TOKEN), or pass \
         --insecure if something else guards them"
    )]
    Exposed { listen: SocketAddr },
}

fn invalid(option: &'static str, reason: impl Into<String>) -> OptionsError {
    OptionsError::Invalid {
        option,
        reason: reason.into(),
    }
}

/// An address to listen on: `HOST:PORT`, or a bare `PORT` for this machine only
/// (`127.0.0.1`). `:PORT` is refused with both forms it could mean, since tools differ
/// on whether it is every interface.
pub fn listen_address(text: &str) -> Result<SocketAddr, String> {
    let text = text.trim();
    if let Ok(addr) = text.parse::<SocketAddr>() {
        return Ok(addr);
    }
    if let Ok(port) = text.parse::<u16>() {
        return Ok(SocketAddr::from(([127, 0, 0, 1], port)));
    }
    match text.strip_prefix(':').map(str::parse::<u16>) {
        Some(Ok(port)) => Err(format!(
            "{text:?} names no host: write 127.0.0.1:{port} for this machine only, or \
             0.0.0.0:{port} for every interface"
        )),
        _ => Err(format!(
            "{text:?} is not HOST:PORT (e.g. 127.0.0.1:8080, 0.0.0.0:8080 or [::1]:8080) \
             nor a bare PORT (e.g. 8080)"
        )),
    }
}

/// [`listen_address`] for the config file's `listen` and `probe_listen`.
fn listen_in_file<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<SocketAddr>, D::Error> {
    let text = <Option<String>>::deserialize(deserializer)?;
    text.map(|t| listen_address(&t).map_err(serde::de::Error::custom))
        .transpose()
}

/// `value`, else `default`; refused when 0.
/// The pods, with `--nodes` over 1: this one's ordinal (by default from the host
/// name), the peers' URL template and the secret, each checked.
fn cluster(
    nodes: Option<u32>,
    node_id: Option<u32>,
    template: Option<String>,
    secret: Option<String>,
) -> Result<Option<sagalog_http::cluster::ClusterConfig>, OptionsError> {
    let nodes = nodes.unwrap_or(1);
    if nodes == 0 || nodes > 1024 {
        return Err(invalid("nodes", format!("{nodes} is not in 1..=1024")));
    }
    if nodes == 1 {
        return match node_id {
            Some(id) if id > 0 => Err(invalid(
                "node_id",
                format!("{id}: with one node (--nodes 1) the only node is 0"),
            )),
            _ => Ok(None),
        };
    }
    let node_id = match node_id {
        Some(id) => id,
        None => ordinal_of_host().ok_or_else(|| {
            invalid(
                "node_id",
                "not given, and the host name does not end in a number (as a StatefulSet's pod sagalog-2 does)",
            )
        })?,
    };
    if node_id >= nodes {
        return Err(invalid(
            "node_id",
            format!("{node_id} is not a node of {nodes} (0 to {})", nodes - 1),
        ));
    }
    let template = template.ok_or_else(|| {
        invalid(
            "peer_url_template",
            "needed with --nodes over 1: how to reach pod {i}, e.g. http://sagalog-{i}.sagalog-headless:8080",
        )
    })?;
    if !template.contains("{i}") || !template.starts_with("http://") {
        return Err(invalid(
            "peer_url_template",
            format!(
                "{template:?} must be an http:// URL with {{i}} for the pod's ordinal (the pods talk plain HTTP inside the cluster)"
            ),
        ));
    }
    let secret = secret.filter(|s| !s.is_empty()).ok_or_else(|| {
        invalid(
            "cluster_secret",
            "needed with --nodes over 1: the pods' requests to each other carry it",
        )
    })?;
    if !secret.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(invalid(
            "cluster_secret",
            "printable ASCII without spaces only (it travels in a header)",
        ));
    }
    Ok(Some(sagalog_http::cluster::ClusterConfig {
        node_id,
        nodes,
        peer_url_template: template,
        secret,
    }))
}

/// The number at the end of the host name (`sagalog-2` → 2).
fn ordinal_of_host() -> Option<u32> {
    let host = std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())?;
    let host = host.trim();
    let digits = host.len() - host.trim_end_matches(|c: char| c.is_ascii_digit()).len();
    host[host.len() - digits..].parse().ok()
}

fn positive<T: Default + PartialEq>(
    option: &'static str,
    value: Option<T>,
    default: T,
) -> Result<T, OptionsError> {
    match value.unwrap_or(default) {
        n if n == T::default() => Err(invalid(option, "must be at least 1")),
        n => Ok(n),
    }
}

/// A limit on a part of one log record (`what`, a start's payload or a reply's data),
/// else `default`: at least 1 and at most [`MAX_PAYLOAD_BYTES`].
fn record_part(
    option: &'static str,
    value: Option<usize>,
    default: usize,
    what: &str,
) -> Result<usize, OptionsError> {
    match value.unwrap_or(default) {
        n @ 1..=MAX_PAYLOAD_BYTES => Ok(n),
        n => Err(invalid(
            option,
            format!(
                "{n} is not in 1..={MAX_PAYLOAD_BYTES} \
                 (a log record holds at most 4 MiB, the {what} and the rest of it)"
            ),
        )),
    }
}

/// Milliseconds, else `default`; refused when 0.
fn millis(
    option: &'static str,
    value: Option<u64>,
    default: u64,
) -> Result<std::time::Duration, OptionsError> {
    positive(option, value, default).map(std::time::Duration::from_millis)
}

/// `off`, or a duration such as `36h` or `7d`.
fn parse_retention(text: &str) -> Result<Option<std::time::Duration>, OptionsError> {
    if text.trim() == "off" {
        return Ok(None);
    }
    humantime::parse_duration(text.trim())
        .map(Some)
        .map_err(|e| {
            invalid(
                "log_retention",
                format!("{text:?} is neither `off` nor a duration like `7d`: {e}"),
            )
        })
}

impl ServeArgs {
    /// Fills what the command line and environment left unset from the config file,
    /// then the defaults; checks the values.
    pub fn resolve(self) -> Result<Serve, OptionsError> {
        let file = match &self.config {
            Some(path) => read_config(path)?,
            None => ServeArgs::default(),
        };
        self.or(file).into_serve()
    }

    /// Each option as given here, else as `file` gives it.
    fn or(self, file: ServeArgs) -> ServeArgs {
        ServeArgs {
            data_dir: self.data_dir.or(file.data_dir),
            listen: self.listen.or(file.listen),
            definitions: self.definitions.or(file.definitions),
            kafka_brokers: self.kafka_brokers.or(file.kafka_brokers),
            kafka_create_topics: self.kafka_create_topics.or(file.kafka_create_topics),
            kafka_max_message_bytes: self
                .kafka_max_message_bytes
                .or(file.kafka_max_message_bytes),
            admin_token: self.admin_token.or(file.admin_token),
            config: self.config,
            insecure: self.insecure || file.insecure,
            demo: self.demo || file.demo,
            log_format: self.log_format.or(file.log_format),
            max_body_bytes: self.max_body_bytes.or(file.max_body_bytes),
            max_payload_bytes: self.max_payload_bytes.or(file.max_payload_bytes),
            max_step_data_bytes: self.max_step_data_bytes.or(file.max_step_data_bytes),
            max_saga_data_bytes: self.max_saga_data_bytes.or(file.max_saga_data_bytes),
            max_connections: self.max_connections.or(file.max_connections),
            header_timeout_ms: self.header_timeout_ms.or(file.header_timeout_ms),
            write_timeout_ms: self.write_timeout_ms.or(file.write_timeout_ms),
            body_timeout_ms: self.body_timeout_ms.or(file.body_timeout_ms),
            body_min_bytes_per_sec: self.body_min_bytes_per_sec.or(file.body_min_bytes_per_sec),
            max_outbox_wait_ms: self.max_outbox_wait_ms.or(file.max_outbox_wait_ms),
            probe_listen: self.probe_listen.or(file.probe_listen),
            max_list_bytes: self.max_list_bytes.or(file.max_list_bytes),
            max_definition_versions: self
                .max_definition_versions
                .or(file.max_definition_versions),
            max_active_sagas: self.max_active_sagas.or(file.max_active_sagas),
            fsync: self.fsync.or(file.fsync),
            snapshot_every_records: self.snapshot_every_records.or(file.snapshot_every_records),
            min_free_bytes: self.min_free_bytes.or(file.min_free_bytes),
            cgroup_root: self.cgroup_root.or(file.cgroup_root),
            reserve_bytes: self.reserve_bytes.or(file.reserve_bytes),
            min_free_percent: self.min_free_percent.or(file.min_free_percent),
            segment_bytes: self.segment_bytes.or(file.segment_bytes),
            log_retention: self.log_retention.or(file.log_retention),
            partitions: self.partitions.or(file.partitions),
            nodes: self.nodes.or(file.nodes),
            node_id: self.node_id.or(file.node_id),
            peer_url_template: self.peer_url_template.or(file.peer_url_template),
            cluster_secret: self.cluster_secret.or(file.cluster_secret),
        }
    }

    /// The options with the defaults filled in, each checked.
    fn into_serve(self) -> Result<Serve, OptionsError> {
        // The defaults are the libraries' own, from one source: their configs' defaults.
        let engine = sagalog_engine::EngineConfig::default();
        let api = sagalog_http::ApiConfig::default();
        let server = sagalog_http::ServerConfig::default();
        let relay = sagalog_relay::RelayConfig::new("");
        let ms = |d: std::time::Duration| d.as_millis() as u64;
        // Checked in this order: with several bad options, the first is the one named.
        let fsync = match &self.fsync {
            Some(text) => text.parse().map_err(|e| invalid("fsync", format!("{e}")))?,
            None => engine.log.fsync,
        };
        let max_body_bytes = positive("max_body_bytes", self.max_body_bytes, api.max_body_bytes)?;
        let max_payload_bytes = record_part(
            "max_payload_bytes",
            self.max_payload_bytes,
            engine.max_payload_bytes,
            "payload",
        )?;
        let max_step_data_bytes = record_part(
            "max_step_data_bytes",
            self.max_step_data_bytes,
            engine.max_step_data_bytes,
            "data",
        )?;
        let max_saga_data_bytes = positive(
            "max_saga_data_bytes",
            self.max_saga_data_bytes,
            engine.max_saga_data_bytes,
        )?;
        let max_connections = positive(
            "max_connections",
            self.max_connections,
            server.max_connections,
        )?;
        let header_timeout = millis(
            "header_timeout_ms",
            self.header_timeout_ms,
            ms(server.header_timeout),
        )?;
        let write_timeout = millis(
            "write_timeout_ms",
            self.write_timeout_ms,
            ms(server.write_timeout),
        )?;
        let body_timeout = millis(
            "body_timeout_ms",
            self.body_timeout_ms,
            ms(api.body_timeout),
        )?;
        let log_retention = match &self.log_retention {
            Some(text) => parse_retention(text)?,
            None => None,
        };
        let cluster = cluster(
            self.nodes,
            self.node_id,
            self.peer_url_template.clone(),
            self.cluster_secret.clone(),
        )?;
        let segment_bytes = self.segment_bytes.unwrap_or(engine.log.segment_bytes);
        if segment_bytes < 4096 {
            return Err(invalid(
                "segment_bytes",
                format!("{segment_bytes} is below 4096"),
            ));
        }
        let min_free_percent = self.min_free_percent.unwrap_or(DEFAULT_MIN_FREE_PERCENT);
        if min_free_percent > 100 {
            return Err(invalid(
                "min_free_percent",
                format!("{min_free_percent} is over 100"),
            ));
        }
        if self.admin_token.as_deref().is_some_and(str::is_empty) {
            return Err(invalid("admin_token", "must not be empty"));
        }
        if let Some(dir) = self.definitions.as_ref().filter(|d| !d.is_dir()) {
            let reason = match std::fs::metadata(dir) {
                Ok(_) => "is not a directory (give the directory that holds the *.json files)",
                Err(_) => "does not exist",
            };
            return Err(invalid(
                "definitions",
                format!("{} {reason}", dir.display()),
            ));
        }
        Ok(Serve {
            data_dir: self.data_dir.unwrap_or_else(|| PathBuf::from("data")),
            listen: (self.listen).unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 8080))),
            definitions: self.definitions,
            kafka_brokers: self.kafka_brokers,
            kafka_create_topics: self.kafka_create_topics.unwrap_or(true),
            kafka_max_message_bytes: self
                .kafka_max_message_bytes
                .unwrap_or(relay.max_message_bytes),
            admin_token: self.admin_token,
            insecure: self.insecure,
            demo: self.demo,
            log_format: self.log_format.unwrap_or(LogFormat::Human),
            max_body_bytes,
            max_payload_bytes,
            max_step_data_bytes,
            max_saga_data_bytes,
            max_connections,
            header_timeout,
            write_timeout,
            body_timeout,
            body_min_bytes_per_sec: self
                .body_min_bytes_per_sec
                .unwrap_or(api.body_min_bytes_per_sec),
            probe_listen: self.probe_listen,
            max_outbox_wait_ms: self
                .max_outbox_wait_ms
                .unwrap_or(api.max_outbox_wait_ms)
                .min(MAX_OUTBOX_WAIT_MS),
            max_active_sagas: self.max_active_sagas.unwrap_or(engine.max_active_sagas),
            max_list_bytes: positive("max_list_bytes", self.max_list_bytes, engine.max_list_bytes)?,
            max_definition_versions: positive(
                "max_definition_versions",
                self.max_definition_versions,
                engine.max_definition_versions,
            )?,
            fsync,
            snapshot_every_records: self
                .snapshot_every_records
                .unwrap_or(engine.snapshot_every_records),
            segment_bytes,
            min_free_bytes: self.min_free_bytes.unwrap_or(DEFAULT_MIN_FREE_BYTES),
            min_free_percent,
            reserve_bytes: self.reserve_bytes.unwrap_or(DEFAULT_RESERVE_BYTES),
            log_retention,
            cgroup_root: self
                .cgroup_root
                .unwrap_or_else(|| sagalog_http::cgroup::DEFAULT_ROOT.into()),
            partitions: self.partitions,
            cluster,
        })
    }
}

pub(crate) fn read_config(path: &Path) -> Result<ServeArgs, OptionsError> {
    let failed = |reason: String| OptionsError::ConfigFile {
        path: path.to_path_buf(),
        reason,
    };
    let text = std::fs::read_to_string(path).map_err(|e| failed(e.to_string()))?;
    toml::from_str(&text).map_err(|e| failed(e.to_string()))
}

impl Serve {
    /// `serve` refuses a non-loopback address with no admin token unless `--insecure`.
    pub fn check_exposure(&self) -> Result<(), OptionsError> {
        if self.listen.ip().is_loopback() || self.admin_token.is_some() || self.insecure {
            Ok(())
        } else {
            Err(OptionsError::Exposed {
                listen: self.listen,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every option whose help gives a number as its default shows the value the server
    /// takes when it is not given — the libraries' own config defaults.
    #[test]
    fn the_documented_defaults_are_the_ones_taken() {
        let serve = ServeArgs::default().resolve().unwrap();
        let ms = |d: std::time::Duration| d.as_millis().to_string();
        let engine = sagalog_engine::EngineConfig::default();
        let taken: Vec<(&str, String)> = vec![
            (
                "kafka_max_message_bytes",
                serve.kafka_max_message_bytes.to_string(),
            ),
            ("max_body_bytes", serve.max_body_bytes.to_string()),
            ("max_payload_bytes", serve.max_payload_bytes.to_string()),
            ("max_step_data_bytes", serve.max_step_data_bytes.to_string()),
            ("max_saga_data_bytes", serve.max_saga_data_bytes.to_string()),
            ("max_connections", serve.max_connections.to_string()),
            ("header_timeout_ms", ms(serve.header_timeout)),
            ("write_timeout_ms", ms(serve.write_timeout)),
            ("body_timeout_ms", ms(serve.body_timeout)),
            (
                "body_min_bytes_per_sec",
                serve.body_min_bytes_per_sec.to_string(),
            ),
            ("max_outbox_wait_ms", serve.max_outbox_wait_ms.to_string()),
            ("max_list_bytes", serve.max_list_bytes.to_string()),
            (
                "max_definition_versions",
                serve.max_definition_versions.to_string(),
            ),
            ("max_active_sagas", serve.max_active_sagas.to_string()),
            (
                "snapshot_every_records",
                serve.snapshot_every_records.to_string(),
            ),
            ("min_free_bytes", serve.min_free_bytes.to_string()),
            ("reserve_bytes", serve.reserve_bytes.to_string()),
            ("min_free_percent", serve.min_free_percent.to_string()),
            ("segment_bytes", serve.segment_bytes.to_string()),
            ("nodes", "1".to_string()),
        ];
        let command = <ServeArgs as clap::Args>::augment_args(clap::Command::new("serve"));
        let mut documented = 0;
        for arg in command.get_arguments() {
            let help = arg.get_help().map(|h| h.to_string()).unwrap_or_default();
            let Some(default) = help
                .rsplit_once("[default: ")
                .and_then(|(_, rest)| rest.strip_suffix(']'))
                .filter(|d| d.bytes().all(|b| b.is_ascii_digit()))
            else {
                continue;
            };
            let id = arg.get_id().as_str();
            let (_, value) = taken.iter().find(|(k, _)| *k == id).unwrap_or_else(|| {
                panic!("--{id} documents [default: {default}]: add what it takes to this test")
            });
            assert_eq!(
                default, value,
                "--{id}: the help says one default, the server takes another"
            );
            documented += 1;
        }
        assert_eq!(
            documented,
            taken.len(),
            "every option listed documents its default"
        );
        // And those are the libraries' own.
        assert_eq!(serve.max_payload_bytes, engine.max_payload_bytes);
        assert_eq!(serve.segment_bytes, engine.log.segment_bytes);
        assert_eq!(serve.fsync, engine.log.fsync);
        assert_eq!(
            serve.body_timeout,
            sagalog_http::ApiConfig::default().body_timeout
        );
        assert_eq!(
            serve.header_timeout,
            sagalog_http::ServerConfig::default().header_timeout
        );
    }

    #[test]
    fn the_command_line_wins_over_the_file_and_the_file_over_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("sagalog.toml");
        std::fs::write(
            &file,
            "data_dir = \"/from/file\"\nlisten = \"127.0.0.1:9999\"\nmax_connections = 7\n",
        )
        .unwrap();
        let args = ServeArgs {
            data_dir: Some("/from/cli".into()),
            config: Some(file),
            ..ServeArgs::default()
        };
        let serve = args.resolve().unwrap();
        assert_eq!(serve.data_dir, PathBuf::from("/from/cli"));
        assert_eq!(serve.listen, "127.0.0.1:9999".parse().unwrap());
        assert_eq!(serve.max_connections, 7);
        assert_eq!(serve.max_body_bytes, 1 << 20);
    }

    #[test]
    fn a_config_file_with_an_unknown_key_is_refused_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("sagalog.toml");
        std::fs::write(&file, "data_dri = \"x\"\n").unwrap();
        let e = ServeArgs {
            config: Some(file),
            ..ServeArgs::default()
        }
        .resolve()
        .unwrap_err();
        assert!(e.to_string().contains("data_dri"), "{e}");
    }

    #[test]
    fn retention_is_off_or_a_duration() {
        let resolve = |text: &str| {
            ServeArgs {
                log_retention: Some(text.into()),
                ..ServeArgs::default()
            }
            .resolve()
        };
        assert_eq!(resolve("off").unwrap().log_retention, None);
        assert_eq!(
            resolve("7d").unwrap().log_retention,
            Some(std::time::Duration::from_secs(7 * 86_400))
        );
        assert!(resolve("weekly")
            .unwrap_err()
            .to_string()
            .contains("log_retention"));
        assert_eq!(ServeArgs::default().resolve().unwrap().log_retention, None);
    }

    #[test]
    fn listen_takes_host_and_port_or_a_bare_port_and_says_the_forms_otherwise() {
        let loopback = |port| SocketAddr::from(([127, 0, 0, 1], port));
        assert_eq!(
            listen_address("0.0.0.0:9000"),
            Ok("0.0.0.0:9000".parse().unwrap())
        );
        assert_eq!(
            listen_address("[::1]:9000"),
            Ok("[::1]:9000".parse().unwrap())
        );
        assert_eq!(listen_address("9000"), Ok(loopback(9000)));
        let colon = listen_address(":9000").unwrap_err();
        assert!(
            colon.contains("127.0.0.1:9000") && colon.contains("0.0.0.0:9000"),
            "{colon}"
        );
        let junk = listen_address("localhost").unwrap_err();
        assert!(
            junk.contains("HOST:PORT") && junk.contains("8080"),
            "{junk}"
        );
        assert!(listen_address("70000").is_err());
        // The config file reads it the same way.
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("sagalog.toml");
        std::fs::write(
            &file,
            "listen = \"9001\"\nprobe_listen = \"127.0.0.1:9002\"\n",
        )
        .unwrap();
        let serve = ServeArgs {
            config: Some(file.clone()),
            ..ServeArgs::default()
        }
        .resolve()
        .unwrap();
        assert_eq!(serve.listen, loopback(9001));
        assert_eq!(serve.probe_listen, Some(loopback(9002)));
        std::fs::write(&file, "listen = \":9001\"\n").unwrap();
        let e = ServeArgs {
            config: Some(file),
            ..ServeArgs::default()
        }
        .resolve()
        .unwrap_err()
        .to_string();
        assert!(e.contains("0.0.0.0:9001"), "{e}");
    }

    #[test]
    fn a_missing_definitions_directory_is_named_before_anything_opens() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("no-such-dir");
        let resolve = |path: &Path| {
            ServeArgs {
                definitions: Some(path.to_path_buf()),
                ..ServeArgs::default()
            }
            .resolve()
        };
        let e = resolve(&missing).unwrap_err().to_string();
        assert!(
            e.starts_with("definitions: ")
                && e.contains("no-such-dir")
                && e.contains("does not exist"),
            "{e}"
        );
        let file = dir.path().join("order.json");
        std::fs::write(&file, "{}").unwrap();
        let e = resolve(&file).unwrap_err().to_string();
        assert!(e.contains("is not a directory"), "{e}");
        assert!(resolve(dir.path()).is_ok());
    }

    #[test]
    fn a_public_address_needs_a_token_or_insecure() {
        let mut serve = ServeArgs {
            listen: Some("0.0.0.0:8080".parse().unwrap()),
            ..ServeArgs::default()
        }
        .resolve()
        .unwrap();
        assert!(serve
            .check_exposure()
            .unwrap_err()
            .to_string()
            .contains("0.0.0.0:8080"));
        serve.admin_token = Some("t".into());
        assert!(serve.check_exposure().is_ok());
    }
}
