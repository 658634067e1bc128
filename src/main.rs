//! The `sagalog` binary: wires the engine, the HTTP API and (with `--demo`) the demo
//! participants together. The crates do the work; this file only starts and stops them.

mod demo;
mod disk;
mod error;
mod offline;
mod options;

use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};
use sagalog_engine::{
    Clock, Definition, Engine, EngineConfig, Partitions, Placement, Shutdown, SystemClock,
};
use sagalog_http::{ApiConfig, App, Metrics, Readiness};
use sagalog_relay::{
    Relay, RelayConfig, RelayObserver, ReplyConsumer, ReplyObserver, TopicObserver, TopicWatch,
};

use error::{Doing, ServeError};
use options::{LogFormat, Serve, ServeArgs};

#[derive(Parser)]
#[command(
    name = "sagalog",
    version,
    about = "An event-sourced saga orchestrator on its own log"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the engine and its HTTP API
    Serve(Box<ServeArgs>),
    #[command(flatten)]
    Offline(offline::Offline),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Offline(command) => {
            // Warnings (a torn tail cut, a snapshot skipped) go to stderr.
            init_logging(LogFormat::Human, "warn");
            offline::run(command)
        }
        Command::Serve(args) => {
            let serve = match args.resolve().and_then(|s| s.check_exposure().map(|()| s)) {
                Ok(serve) => serve,
                Err(e) => {
                    eprintln!("sagalog serve: {e}");
                    return ExitCode::from(2);
                }
            };
            init_logging(serve.log_format, "info");
            match run(serve) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!("{e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

fn init_logging(format: LogFormat, default_filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("SAGALOG_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_filter));
    // A log line that cannot be written (stderr on a full disk) is dropped: by default
    // the subscriber reports the failure with `eprintln!`, which panics the thread that
    // logged — the log writer among them.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .log_internal_errors(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    match format {
        LogFormat::Human => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn run(serve: Serve) -> Result<(), ServeError> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("sagalog-worker")
        .build()
        .doing(|| "starting the runtime".into())?;
    let metrics = Metrics::new();
    metrics.set_cgroup_root(&serve.cgroup_root);
    let mut config = EngineConfig {
        snapshot_every_records: serve.snapshot_every_records,
        max_active_sagas: serve.max_active_sagas,
        max_payload_bytes: serve.max_payload_bytes,
        max_step_data_bytes: serve.max_step_data_bytes,
        max_saga_data_bytes: serve.max_saga_data_bytes,
        // A server given its own definitions does not offer the example one, unless
        // the demo (whose sagas are `order`s) runs beside them.
        builtin_definitions: serve.definitions.is_none() || serve.demo,
        max_list_bytes: serve.max_list_bytes,
        max_definition_versions: serve.max_definition_versions,
        observer: Some(metrics.clone()),
        ..EngineConfig::default()
    };
    config.log.fsync = serve.fsync;
    config.log.segment_bytes = serve.segment_bytes;
    config.log.observer = Some(metrics.clone());
    std::fs::create_dir_all(&serve.data_dir)
        .doing(|| format!("creating {}", serve.data_dir.display()))?;
    let count = sagalog_engine::partitions::settle(&serve.data_dir, serve.partitions)
        .doing(|| format!("opening {}", serve.data_dir.display()))?;
    // With other pods, this one holds the partitions the placement gives it.
    let (node, nodes) = serve
        .cluster
        .as_ref()
        .map_or((0, 1), |c| (c.node_id, c.nodes));
    let placement = Placement::new(count, nodes, node)
        .map_err(|e| ServeError::Options(format!("--nodes {nodes} with --node-id {node}: {e}")))?;
    // The limits a whole server has are shared out among the partitions it holds.
    let local = placement.local().count() as u32;
    config.reserve_bytes = disk::reserve_bytes(&serve.data_dir, serve.reserve_bytes, local);
    // Every partition counts its active sagas into one count, which the limit bounds.
    config.active_sagas = Some(Arc::default());
    let started = std::time::Instant::now();
    let partitions = Arc::new(
        Partitions::open(&serve.data_dir, placement, |_| config.clone())
            .doing(|| format!("opening {}", serve.data_dir.display()))?,
    );
    let stats = partitions.stats();
    tracing::info!(
        data_dir = %serve.data_dir.display(),
        partitions = count,
        replayed_records = stats.replayed_records,
        head = stats.log_next_offset,
        took_ms = started.elapsed().as_millis() as u64,
        "engine open"
    );
    let result = runtime.block_on(serve_until_signal(&serve, partitions.clone(), metrics));
    drop(runtime);
    // The log acknowledged every write after its fsync; closing joins the engines'
    // threads (indexer, timer) so the indexes are flushed too.
    match Arc::try_unwrap(partitions) {
        Ok(partitions) => drop(partitions),
        Err(_) => tracing::warn!("the engine is still referenced at exit"),
    }
    tracing::info!("stopped");
    result
}

async fn serve_until_signal(
    serve: &Serve,
    partitions: Arc<Partitions>,
    metrics: Arc<Metrics>,
) -> Result<(), ServeError> {
    // A registration that a stop cut short reached some partitions only: finish it.
    let aligned = partitions
        .align_definitions()
        .await
        .doing(|| "registering definitions in every partition".into())?;
    if aligned > 0 {
        tracing::info!(
            registrations = aligned,
            "definitions some partitions lacked are registered in them"
        );
    }
    if let Some(dir) = &serve.definitions {
        load_definitions(&partitions, dir).await?;
    }
    let listening = || format!("listening on {}", serve.listen);
    let listener = tokio::net::TcpListener::bind(serve.listen)
        .await
        .doing(listening)?;
    let address = listener.local_addr().doing(listening)?;
    let (stop, stopping) = Shutdown::new();
    let app = Arc::new(App {
        partitions: partitions.clone(),
        cluster: serve.cluster.clone().map(|c| {
            Arc::new(sagalog_http::cluster::Cluster::new(
                c,
                *partitions.placement(),
            ))
        }),
        metrics: metrics.clone(),
        config: ApiConfig {
            admin_token: serve.admin_token.clone(),
            max_body_bytes: serve.max_body_bytes,
            body_timeout: serve.body_timeout,
            body_min_bytes_per_sec: serve.body_min_bytes_per_sec,
            max_outbox_wait_ms: serve.max_outbox_wait_ms,
        },
        clock: Arc::new(SystemClock) as Arc<dyn Clock>,
        stopping: stopping.clone(),
        readiness: Readiness::default(),
        activity: Default::default(),
    });
    let kafka = start_kafka(serve, &partitions, &metrics, &app).await?;
    let tasks = Tasks {
        demo: serve
            .demo
            .then(|| demo::spawn(partitions.clone(), address, stopping.clone())),
        disk: start_disk_watch(serve, &partitions, &metrics, &app.readiness, &stopping),
        retention: serve.log_retention.map_or_else(Vec::new, |min_age| {
            partitions
                .local()
                .enumerate()
                .map(|(i, (_, engine))| {
                    let hold = kafka
                        .as_ref()
                        .map(|kafka| kafka.relays[i].position_reader());
                    tokio::spawn(run_retention(
                        engine.clone(),
                        min_age,
                        hold,
                        stopping.clone(),
                    ))
                })
                .collect()
        }),
        probes: start_probes(serve, &app, &stopping).await?,
        peers: app
            .cluster
            .clone()
            .map(|cluster| tokio::spawn(cluster.watch(metrics.clone(), stopping.clone()))),
        kafka,
    };
    let console = format!("http://{address}/console/");
    tracing::info!(%address, demo = serve.demo, %console, "listening");
    if serve.demo {
        // The demo is for looking at: say where to look, beside the log lines.
        eprintln!("sagalog demo: sagas are starting; watch them in the console at {console}");
    }
    let shutdown = async move {
        wait_for_signal().await;
        tracing::info!("stop signal: finishing requests in flight");
        stop.stop();
    };
    let server = sagalog_http::ServerConfig {
        max_connections: serve.max_connections,
        header_timeout: serve.header_timeout,
        write_timeout: serve.write_timeout,
    };
    sagalog_http::serve(listener, app, server, shutdown)
        .await
        .doing(|| "serving".into())?;
    tasks.stop().await
}

/// What runs beside the HTTP server until the stop.
struct Tasks {
    probes: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
    /// The peers' health checks, with other pods.
    peers: Option<tokio::task::JoinHandle<()>>,
    demo: Option<demo::Demo>,
    /// One per partition.
    retention: Vec<tokio::task::JoinHandle<()>>,
    disk: tokio::task::JoinHandle<()>,
    kafka: Option<Kafka>,
}

impl Tasks {
    /// Waits for each to end (they watch the stop signal), the relay last: it
    /// publishes what the log holds up to the stop.
    async fn stop(self) -> Result<(), ServeError> {
        if let Some(probes) = self.probes {
            let _ = probes.await;
        }
        if let Some(peers) = self.peers {
            let _ = peers.await;
        }
        if let Some(demo) = self.demo {
            demo.stop().await;
        }
        for retention in self.retention {
            let _ = retention.await;
        }
        let _ = self.disk.await;
        if let Some(kafka) = self.kafka {
            kafka.replies.stop().await;
            for relay in kafka.relays {
                relay
                    .stop()
                    .await
                    .doing(|| "stopping the Kafka relay".into())?;
            }
            kafka.topics.stop().await;
        }
        Ok(())
    }
}

/// What runs with `--kafka-brokers`.
struct Kafka {
    /// A relay per partition, in the order of [`Partitions::local`].
    relays: Vec<Relay>,
    replies: ReplyConsumer,
    /// The one watcher of the topics they use.
    topics: TopicWatch,
}

/// The Kafka relays (one per partition), the reply consumer and their topic watcher,
/// when `--kafka-brokers` is given.
async fn start_kafka(
    serve: &Serve,
    partitions: &Arc<Partitions>,
    metrics: &Arc<Metrics>,
    app: &App,
) -> Result<Option<Kafka>, ServeError> {
    let readiness = &app.readiness;
    let Some(brokers) = &serve.kafka_brokers else {
        return Ok(None);
    };
    let config = RelayConfig {
        create_topics: serve.kafka_create_topics,
        max_message_bytes: serve.kafka_max_message_bytes,
        reply_topic_partitions: partitions.count() as i32,
        ..RelayConfig::new(brokers.clone())
    };
    let observer = Arc::new(RelayMetrics::new(metrics, readiness, 0));
    let engines = partitions.local().map(|(_, e)| e.clone()).collect();
    let topics = TopicWatch::start(engines, config.clone(), observer.clone());
    let mut relays = Vec::new();
    for (p, engine) in partitions.local() {
        let observer = Arc::new(RelayMetrics::new(metrics, readiness, p));
        let relay = Relay::start(engine.clone(), config.clone(), topics.topics(), observer)
            .await
            .doing(|| format!("starting the Kafka relay of partition {p} ({brokers})"))?;
        relays.push(relay);
    }
    let forwarder = app.cluster.as_ref().map(|cluster| {
        Arc::new(ForwardReplies(cluster.clone())) as Arc<dyn sagalog_relay::ReplyForwarder>
    });
    let replies = ReplyConsumer::start(
        partitions.clone(),
        &config,
        observer,
        topics.topics(),
        forwarder,
    )
    .doing(|| format!("starting the Kafka reply consumer ({brokers})"))?;
    Ok(Some(Kafka {
        relays,
        replies,
        topics,
    }))
}

/// Checks the disk once now, then every second in a task until the stop.
fn start_disk_watch(
    serve: &Serve,
    partitions: &Arc<Partitions>,
    metrics: &Arc<Metrics>,
    readiness: &Readiness,
    stopping: &Shutdown,
) -> tokio::task::JoinHandle<()> {
    let disk = Arc::new(disk::DiskWatch::new(serve, partitions));
    disk.check(partitions, metrics, readiness);
    tokio::spawn(disk.run(
        partitions.clone(),
        metrics.clone(),
        readiness.clone(),
        stopping.clone(),
    ))
}

/// The probe listener, when `--probe-listen` is given.
async fn start_probes(
    serve: &Serve,
    app: &Arc<App>,
    stopping: &Shutdown,
) -> Result<Option<tokio::task::JoinHandle<std::io::Result<()>>>, ServeError> {
    let Some(addr) = serve.probe_listen else {
        return Ok(None);
    };
    let listening = || format!("listening for probes on {addr}");
    let probe_listener = tokio::net::TcpListener::bind(addr).await.doing(listening)?;
    let bound = probe_listener.local_addr().doing(listening)?;
    let mut stopped = stopping.clone();
    let stop = async move { stopped.wait().await };
    tracing::info!(address = %bound, "probes listening");
    Ok(Some(tokio::spawn(sagalog_http::serve_probes(
        probe_listener,
        app.clone(),
        stop,
    ))))
}

/// Deletes the log segments nothing needs any more, now and then, until the stop.
async fn run_retention(
    engine: Arc<Engine>,
    min_age: std::time::Duration,
    hold: Option<impl Fn() -> u64 + Send + Sync + 'static>,
    mut stopping: Shutdown,
) {
    // Often enough that the log stays near its retention, rarely enough to cost nothing.
    let every = (min_age / 10).clamp(
        std::time::Duration::from_secs(1),
        std::time::Duration::from_secs(60),
    );
    let hold = hold.map(Arc::new);
    tracing::info!(min_age = ?min_age, every = ?every, "log retention on");
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            () = stopping.wait() => return,
        }
        let (engine, hold) = (engine.clone(), hold.clone());
        let pass = tokio::task::spawn_blocking(move || {
            engine.apply_retention(min_age, hold.map(|position| position()))
        })
        .await;
        match pass {
            Ok(Ok(report)) if report.incomplete => tracing::info!(
                "retention waits: the relay is too far behind to check what it still needs"
            ),
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::error!(error = %e, "a retention pass failed"),
            Err(e) => tracing::error!(error = %e, "a retention pass panicked"),
        }
    }
}

/// The relay's and the reply consumer's reports, as the metrics of docs/server.md (and missing
/// topics on `/readyz`); a relay's figures are its partition's.
struct RelayMetrics(Arc<Metrics>, Readiness, String);

impl RelayMetrics {
    fn new(metrics: &Arc<Metrics>, readiness: &Readiness, partition: u32) -> RelayMetrics {
        RelayMetrics(metrics.clone(), readiness.clone(), partition.to_string())
    }
}

impl TopicObserver for RelayMetrics {
    fn topics_missing(&self, missing: &[String], reason: Option<&str>) {
        self.0.outbox.topics_missing.set(missing.len() as i64);
        // Missing and being created: a note; missing for good: not ready.
        let creating = (reason.is_none() && !missing.is_empty()).then(|| {
            format!("topics {missing:?} are missing; creating them (their commands wait)")
        });
        self.1.note("kafka_topics", creating);
        self.1.set("kafka topics", reason.map(str::to_string));
    }

    fn topics_unchecked(&self, waiting: Option<&str>) {
        self.1.note("kafka", waiting.map(str::to_string));
    }
}

impl RelayObserver for RelayMetrics {
    fn published(&self, append_to_ack: std::time::Duration) {
        self.0.outbox.published.inc();
        self.0
            .outbox
            .publish_duration
            .observe(append_to_ack.as_secs_f64());
    }

    fn failed(&self) {
        self.0.outbox.failed.inc();
    }

    fn first_attempt(&self, delivered: bool) {
        let outcome = if delivered { "succeeded" } else { "failed" };
        self.0
            .outbox
            .optimistic_send
            .with_label_values(&[outcome])
            .inc();
    }

    fn batch(&self, commands: usize) {
        self.0.outbox.publish_batch.observe(commands as f64);
    }

    fn retried(&self) {
        self.0.outbox.retry_attempts.inc();
    }

    fn dead_lettered(&self) {
        self.0.outbox.dead_letter.inc();
    }

    fn pending(&self, records: u64) {
        self.0
            .outbox
            .pending
            .with_label_values(&[self.2.as_str()])
            .set(records as i64);
    }

    fn held(&self, commands: usize) {
        self.0
            .outbox
            .held
            .with_label_values(&[self.2.as_str()])
            .set(commands as i64);
    }
}

impl ReplyObserver for RelayMetrics {
    fn reply(&self, step: &str, status: &str) {
        self.0.event(step, status);
    }

    fn invalid(&self) {
        self.0.event("", "invalid");
    }

    fn lag(&self, messages: i64) {
        self.0.outbox.consumer_lag.set(messages);
    }

    fn forwarded(&self) {
        self.0.outbox.replies_forwarded.inc();
    }
}

/// Hands a reply of another pod's saga to that pod, over the pods' own client.
struct ForwardReplies(Arc<sagalog_http::cluster::Cluster>);

impl sagalog_relay::ReplyForwarder for ForwardReplies {
    fn forward(
        &self,
        partition: u32,
        saga_id: String,
        reply: Vec<u8>,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), String>> + Send>> {
        let cluster = self.0.clone();
        Box::pin(async move { cluster.forward_reply(partition, &saga_id, reply).await })
    }
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot listen for SIGTERM/SIGINT; stop with SIGKILL");
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}

/// Registers every `*.json` definition in `dir` (an unchanged one is a no-op).
async fn load_definitions(partitions: &Partitions, dir: &Path) -> Result<(), ServeError> {
    let entries = std::fs::read_dir(dir).doing(|| format!("definitions {}", dir.display()))?;
    let mut paths: Vec<_> = entries
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|path| path.extension().is_some_and(|ext| ext == "json"))
        .collect();
    paths.sort();
    for path in paths {
        let named = || format!("definition {}", path.display());
        let text = std::fs::read_to_string(&path).doing(named)?;
        let definition = Definition::from_json(&text).map_err(|source| ServeError::Definition {
            path: path.clone(),
            source,
        })?;
        let (name, version) = (definition.name.clone(), definition.version);
        partitions
            .register_definition(definition)
            .await
            .doing(named)?;
        tracing::info!(file = %path.display(), name, version, "definition loaded");
    }
    Ok(())
}
