//! `/metrics` (docs/server.md#metrics): every name with its labels, types and HELP text.
//!
//! Two sources: the histograms and event counters are observed as things happen (the
//! engine's [`EngineObserver`], the log's [`LogObserver`], the API's own timing), and
//! the gauges and saga counters are read from [`Engine::stats`] at each scrape. The
//! latter come from the projections, which snapshots and replay keep across a restart,
//! so they have the same values after a restart as before the stop.
//!
//! Two of the fixed names end in `_total` but are gauges by meaning, since they go down:
//! `saga_active_total` and `outbox_pending_events_total`. They are exported as gauges
//! (a counter that drops would be reported as a reset by Prometheus). `promtool check
//! metrics` flags their suffix, and `saga_status_gauge` for naming its type; the names
//! are the contract's, so the test accepts exactly those three findings.

use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use prometheus::{
    Encoder, Gauge, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec,
    IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};
use sagalog_engine::{Action, Engine, EngineObserver, LogObserver, Partitions, Status};

/// Buckets for request and storage latencies, in seconds (50 µs to 10 s).
/// The label of a figure kept per partition.
const PARTITION: &[&str] = &["partition"];

const LATENCY_BUCKETS: &[f64] = &[
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5, 10.0,
];
/// Buckets for commands per publish batch (the relay reads up to 1024 records at once).
const BATCH_BUCKETS: &[f64] = &[
    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 4096.0,
];
/// Buckets for saga and compensation durations, in seconds (10 ms to 1 day).
const DURATION_BUCKETS: &[f64] = &[
    0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0, 21600.0,
    86400.0,
];

pub struct Metrics {
    registry: Registry,
    /// Observed as sagas move: durations and outcomes of sagas, steps and replies.
    steps: StepMetrics,
    /// Observed per call: API latency, storage operations and their failures.
    calls: CallMetrics,
    /// Read from the engine's projections at each scrape.
    state: StateMetrics,
    /// Read from the log and the snapshots at each scrape.
    store: StoreMetrics,
    /// The relay's metrics (the `outbox_*` set); without Kafka nothing is published,
    /// and they stay at zero.
    pub outbox: OutboxMetrics,
    /// Free bytes of the data directory's filesystem, and the watermark below which
    /// writes are refused (set by `serve`'s disk watcher).
    pub disk_free: IntGauge,
    pub disk_watermark: IntGauge,
    /// Refusals, connections and the log's health.
    pub service: ServiceMetrics,
    /// The cgroup limits, read at each scrape and exported only where one is set.
    limits: LimitMetrics,
    /// One scrape at a time: counters read from the engine move by their difference.
    scrape: Mutex<()>,
}

/// `sagalog_cgroup_cpu_limit_cores` and `sagalog_cgroup_memory_limit_bytes`: not in the
/// registry, since each is exported only while its limit exists.
struct LimitMetrics {
    /// Where the cgroup filesystem is mounted.
    root: Mutex<std::path::PathBuf>,
    cpu_cores: Gauge,
    memory_bytes: Gauge,
}

impl LimitMetrics {
    fn new() -> LimitMetrics {
        let gauge = |name: &str, help: &str| Gauge::new(name, help).expect("valid metric");
        LimitMetrics {
            root: Mutex::new(crate::cgroup::DEFAULT_ROOT.into()),
            cpu_cores: gauge(
                "sagalog_cgroup_cpu_limit_cores",
                "The CPU limit of the process's cgroup (a pod's container limit), in cores; absent when there is none.",
            ),
            memory_bytes: gauge(
                "sagalog_cgroup_memory_limit_bytes",
                "The memory limit of the process's cgroup (a pod's container limit), in bytes; absent when there is none.",
            ),
        }
    }

    /// The families of the limits set now.
    fn families(&self) -> Vec<prometheus::proto::MetricFamily> {
        use prometheus::core::Collector;
        let limits = crate::cgroup::read(&self.root.lock());
        let mut out = Vec::new();
        if let Some(cores) = limits.cpu_cores {
            self.cpu_cores.set(cores);
            out.extend(self.cpu_cores.collect());
        }
        if let Some(bytes) = limits.memory_bytes {
            self.memory_bytes.set(bytes as f64);
            out.extend(self.memory_bytes.collect());
        }
        out
    }
}

pub struct OutboxMetrics {
    /// By `partition`.
    pub pending: IntGaugeVec,
    pub published: IntCounter,
    pub failed: IntCounter,
    pub dead_letter: IntCounter,
    pub publish_duration: Histogram,
    pub retry_attempts: IntCounter,
    /// First publish attempts (the send right after the fsync) by outcome.
    pub optimistic_send: IntCounterVec,
    /// Commands handed to the producer per read of the log tail.
    pub publish_batch: Histogram,
    /// Commands the relay read and holds back because their topic is paused.
    /// By `partition`.
    pub held: IntGaugeVec,
    pub consumer_lag: IntGauge,
    /// Replies read from this pod's partitions of the reply topic for sagas of another
    /// pod's partitions, and handed to that pod.
    pub replies_forwarded: IntCounter,
    /// Topics the relay needs that the broker lacks (and could not create).
    pub topics_missing: IntGauge,
}

/// The `reason`s of `sagalog_requests_refused_total`, declared at zero.
const REFUSAL_REASONS: [&str; 7] = [
    "max_active_sagas",
    "indexer_backlog",
    "disk_watermark",
    "write_failed",
    "log_unwritable",
    "shutting_down",
    "connections",
];

/// How the server holds up: what it refuses and why, its connections, and whether the
/// log takes writes.
pub struct ServiceMetrics {
    /// Requests answered `503` because a write cannot be taken now, by reason.
    pub refused: IntCounterVec,
    /// Connections open now.
    pub connections: IntGauge,
    /// Connections closed at once or answered `503` without being served, by reason.
    pub connections_refused: IntCounterVec,
    /// Requests whose body did not arrive in time (`408`).
    pub body_timeouts: IntCounter,
    log_writable: IntGaugeVec,
    log_heals: IntCounterVec,
    /// 1 for each step topic whose commands are held back (delivery paused), else 0.
    delivery_paused: IntGaugeVec,
    /// 1 for each other pod that answers its health check, else 0.
    pub peer_up: IntGaugeVec,
}

impl ServiceMetrics {
    fn new(m: &Make) -> ServiceMetrics {
        ServiceMetrics {
            refused: m.counter_vec(
                "sagalog_requests_refused_total",
                "Requests answered 503 because a write cannot be taken now (with Retry-After), by reason.",
                &["reason"],
            ),
            connections: m.gauge("sagalog_http_connections", "Client connections open now."),
            connections_refused: m.counter_vec(
                "sagalog_http_connections_refused_total",
                "Connections past --max-connections: answered 503 (probes are served) or closed at once when even that lane is full.",
                &["reason"],
            ),
            body_timeouts: m.counter(
                "sagalog_http_body_timeouts_total",
                "Requests answered 408 because their body did not arrive within the deadline or at the minimum rate.",
            ),
            log_writable: m.gauge_vec(
                "sagalog_log_writable",
                "1 while the log takes writes; 0 while it is poisoned, read-only, refusing (disk watermark) or its writes fail.",
                PARTITION,
            ),
            log_heals: m.counter_vec(
                "sagalog_log_heals_total",
                "Attempts of a poisoned or read-only log to reopen itself for writing, by outcome (healed, failed).",
                &["outcome"],
            ),
            peer_up: m.gauge_vec(
                "sagalog_peer_up",
                "With other pods (--nodes): 1 for each peer that answered its last health check (every 5 s), 0 while it does not; its partitions are unavailable then.",
                &["node"],
            ),
            delivery_paused: m.gauge_vec(
                "sagalog_delivery_paused",
                "1 for each step topic whose commands are held in the log because delivery is paused (POST /internal/v1/pause), else 0.",
                &["topic"],
            ),
        }
    }
}

/// Makes metrics registered in one registry (each name once: a second is a bug).
struct Make<'r>(&'r Registry);

impl Make<'_> {
    fn registered<C: prometheus::core::Collector + Clone + 'static>(&self, c: C) -> C {
        self.0
            .register(Box::new(c.clone()))
            .expect("metric names are unique");
        c
    }

    fn counter(&self, name: &str, help: &str) -> IntCounter {
        self.registered(IntCounter::new(name, help).expect("valid metric"))
    }

    fn counter_vec(&self, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
        self.registered(IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric"))
    }

    fn gauge(&self, name: &str, help: &str) -> IntGauge {
        self.registered(IntGauge::new(name, help).expect("valid metric"))
    }

    fn gauge_vec(&self, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
        self.registered(IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric"))
    }

    /// A gauge of seconds or ages: a float.
    fn float_gauge(&self, name: &str, help: &str) -> Gauge {
        self.registered(Gauge::new(name, help).expect("valid metric"))
    }

    fn float_gauge_vec(&self, name: &str, help: &str, labels: &[&str]) -> GaugeVec {
        self.registered(GaugeVec::new(Opts::new(name, help), labels).expect("valid metric"))
    }

    fn histogram(&self, name: &str, help: &str, buckets: &[f64]) -> Histogram {
        let opts = HistogramOpts::new(name, help).buckets(buckets.to_vec());
        self.registered(Histogram::with_opts(opts).expect("valid metric"))
    }

    fn histogram_vec(
        &self,
        name: &str,
        help: &str,
        labels: &[&str],
        buckets: &[f64],
    ) -> HistogramVec {
        let opts = HistogramOpts::new(name, help).buckets(buckets.to_vec());
        self.registered(HistogramVec::new(opts, labels).expect("valid metric"))
    }
}

/// Observed as sagas move: durations and outcomes of sagas, steps and replies.
struct StepMetrics {
    saga_duration: HistogramVec,
    compensation_duration: Histogram,
    step_executions: IntCounterVec,
    step_duration: HistogramVec,
    compensations: IntCounterVec,
    events_processed: IntCounterVec,
}

impl StepMetrics {
    fn new(m: &Make) -> StepMetrics {
        StepMetrics {
            saga_duration: m.histogram_vec(
                "saga_duration_seconds",
                "From a saga's start to its end (COMPLETED or COMPENSATED).",
                &["saga_type"],
                DURATION_BUCKETS,
            ),
            compensation_duration: m.histogram(
                "saga_compensation_duration_seconds",
                "From a compensation command's issue to its outcome.",
                DURATION_BUCKETS,
            ),
            step_executions: m.counter_vec(
                "saga_step_executions_total",
                "Step attempts by outcome (succeeded, failed, timed_out).",
                &["saga_type", "step", "status"],
            ),
            step_duration: m.histogram_vec(
                "saga_step_duration_seconds",
                "From a step command's issue to its outcome (succeeded, failed or timed out).",
                &["saga_type", "step"],
                DURATION_BUCKETS,
            ),
            compensations: m.counter_vec(
                "saga_compensations_total",
                "Compensation attempts by outcome (compensated, compensation_failed, timed_out).",
                &["saga_type", "step", "status"],
            ),
            events_processed: m.counter_vec(
                "saga_events_processed_total",
                "Participant replies by outcome; status rejected when the reply did not fit the saga, invalid (step empty) for a Kafka message that is not a reply.",
                &["step", "status"],
            ),
        }
    }
}

/// Observed per call: API latency, storage operations and their failures.
struct CallMetrics {
    storage_errors: IntCounter,
    api_latency: HistogramVec,
    db_query: HistogramVec,
}

impl CallMetrics {
    fn new(m: &Make) -> CallMetrics {
        CallMetrics {
            storage_errors: m.counter(
                "saga_storage_errors_total",
                "Requests that failed because the log or the indexes could not be read or written.",
            ),
            api_latency: m.histogram_vec(
                "saga_tracker_api_latency_seconds",
                "HTTP request latency by route pattern and method.",
                &["endpoint", "method"],
                LATENCY_BUCKETS,
            ),
            db_query: m.histogram_vec(
                "saga_tracker_db_query_seconds",
                "Storage operations: log writes (log_write), fsyncs (fsync), and index reads (get, list, history).",
                &["query"],
                LATENCY_BUCKETS,
            ),
        }
    }
}

/// Read from the engine's projections at each scrape.
struct StateMetrics {
    executions: IntCounterVec,
    status_gauge: IntGaugeVec,
    active: IntGaugeVec,
    failed: IntCounter,
    compensated: IntCounter,
    oldest_active: GaugeVec,
    last_failed: Gauge,
}

impl StateMetrics {
    fn new(m: &Make) -> StateMetrics {
        StateMetrics {
            executions: m.counter_vec(
                "saga_executions_total",
                "Sagas that entered each status, by saga type.",
                &["saga_type", "status"],
            ),
            status_gauge: m.gauge_vec(
                "saga_status_gauge",
                "Sagas per status: active ones for active statuses, every saga that ended there for terminal ones.",
                &["status"],
            ),
            active: m.gauge_vec(
                "saga_active_total",
                "Sagas now active (not completed or compensated) per status.",
                &["status"],
            ),
            failed: m.counter("saga_failed_total", "Sagas that entered FAILED."),
            compensated: m.counter("saga_compensated_total", "Sagas that entered COMPENSATED."),
            oldest_active: m.float_gauge_vec(
                "saga_oldest_active_seconds",
                "Age of the least recently updated active saga per status (0 when none).",
                &["status"],
            ),
            last_failed: m.float_gauge(
                "saga_last_failed_timestamp",
                "Unix seconds of the latest saga failure (0 when none).",
            ),
        }
    }
}

/// Read from the log and the snapshots at each scrape.
/// Each by `partition`.
struct StoreMetrics {
    log_head: IntGaugeVec,
    log_bytes: IntGaugeVec,
    log_segments: IntGaugeVec,
    snapshot_offset: IntGaugeVec,
    snapshot_timestamp: GaugeVec,
    snapshot_every: IntGauge,
    replay_records: IntCounterVec,
}

impl StoreMetrics {
    fn new(m: &Make) -> StoreMetrics {
        StoreMetrics {
            log_head: m.gauge_vec(
                "sagalog_log_head_offset",
                "The offset the next log record gets.",
                PARTITION,
            ),
            log_bytes: m.gauge_vec("sagalog_log_bytes", "Bytes held in log segments.", PARTITION),
            log_segments: m.gauge_vec("sagalog_log_segments", "Log segment files.", PARTITION),
            snapshot_offset: m.gauge_vec(
                "sagalog_snapshot_offset",
                "Log offset of the newest snapshot (0 when none).",
                PARTITION,
            ),
            snapshot_timestamp: m.float_gauge_vec(
                "sagalog_snapshot_timestamp_seconds",
                "Unix seconds when the newest snapshot was written (0 when none).",
                PARTITION,
            ),
            snapshot_every: m.gauge(
                "sagalog_snapshot_every_records",
                "The snapshot interval in log records: a snapshot is due when the head is this far past the newest one.",
            ),
            replay_records: m.counter_vec(
                "sagalog_replay_records_total",
                "Log records replayed on start after the snapshot.",
                PARTITION,
            ),
        }
    }
}

impl OutboxMetrics {
    fn new(m: &Make) -> OutboxMetrics {
        OutboxMetrics {
            pending: m.gauge_vec(
                "outbox_pending_events_total",
                "Commands in the log the relay has not published yet (log head minus relay position).",
                PARTITION,
            ),
            published: m.counter(
                "outbox_published_events_total",
                "Commands published to Kafka and acknowledged by the broker.",
            ),
            failed: m.counter(
                "outbox_failed_events_total",
                "Publish attempts the broker refused or that timed out.",
            ),
            dead_letter: m.counter(
                "outbox_dead_letter_events_total",
                "Commands set aside after their publish retries were spent.",
            ),
            publish_duration: m.histogram(
                "outbox_publish_duration_seconds",
                "From a command's append to the log to the broker's acknowledgement.",
                LATENCY_BUCKETS,
            ),
            retry_attempts: m.counter(
                "outbox_retry_attempts_total",
                "Publish attempts beyond the first.",
            ),
            optimistic_send: m.counter_vec(
                "outbox_optimistic_send_total",
                "First publish attempts of commands, made as soon as their records are durable, by outcome (succeeded, failed); a failed one is retried.",
                &["outcome"],
            ),
            held: m.gauge_vec(
                "sagalog_delivery_held_commands",
                "Commands the Kafka relay has read and holds back because their topic's delivery is paused; they are published on its resume.",
                PARTITION,
            ),
            publish_batch: m.histogram(
                "outbox_publish_batch_size",
                "Commands the relay handed to the producer per read of the log tail (the count of observations is the batches).",
                BATCH_BUCKETS,
            ),
            replies_forwarded: m.counter(
                "sagalog_replies_forwarded_total",
                "Replies read on this pod's partitions of the reply topic for sagas of another pod (a producer that hashes keys differently), handed to that pod.",
            ),
            consumer_lag: m.gauge(
                "saga_tracker_consumer_lag",
                "Replies on the Kafka reply topic not yet consumed.",
            ),
            topics_missing: m.gauge(
                "sagalog_kafka_topics_missing",
                "Kafka topics the relay needs that do not exist and could not be created (their commands wait).",
            ),
        }
    }
}

impl Metrics {
    pub fn new() -> Arc<Metrics> {
        let r = Registry::new();
        // process_cpu_seconds_total, process_resident_memory_bytes, process_open_fds,
        // process_max_fds and the rest, read from /proc at each scrape.
        r.register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ))
        .expect("the process metrics are registered once");
        let m = Make(&r);
        Arc::new(Metrics {
            steps: StepMetrics::new(&m),
            calls: CallMetrics::new(&m),
            state: StateMetrics::new(&m),
            store: StoreMetrics::new(&m),
            outbox: OutboxMetrics::new(&m),
            disk_free: m.gauge(
                "sagalog_disk_free_bytes",
                "Free bytes of the filesystem holding the data directory.",
            ),
            disk_watermark: m.gauge(
                "sagalog_disk_watermark_bytes",
                "Free bytes below which writes are refused (503) until space returns.",
            ),
            service: ServiceMetrics::new(&m),
            limits: LimitMetrics::new(),
            scrape: Mutex::new(()),
            registry: r,
        })
    }

    /// Reads the cgroup limits under `root` instead of `/sys/fs/cgroup`.
    pub fn set_cgroup_root(&self, root: impl Into<std::path::PathBuf>) {
        *self.limits.root.lock() = root.into();
    }

    pub fn api_request(&self, endpoint: &str, method: &str, took: Duration) {
        self.calls
            .api_latency
            .with_label_values(&[endpoint, method])
            .observe(took.as_secs_f64());
    }

    pub fn query(&self, query: &str, took: Duration) {
        self.calls
            .db_query
            .with_label_values(&[query])
            .observe(took.as_secs_f64());
    }

    pub fn storage_error(&self) {
        self.calls.storage_errors.inc();
    }

    /// A participant reply was processed: `status` is its outcome, or `rejected`.
    pub fn event(&self, step: &str, status: &str) {
        self.steps
            .events_processed
            .with_label_values(&[step, status])
            .inc();
    }

    /// The text exposition, with the engine-derived values read now.
    pub fn render(&self, partitions: &Partitions, now_ms: u64) -> String {
        let _one_scrape = self.scrape.lock();
        self.refresh(partitions, now_ms);
        let mut families = self.registry.gather();
        families.extend(self.limits.families());
        let mut out = Vec::with_capacity(16 * 1024);
        TextEncoder::new()
            .encode(&families, &mut out)
            .expect("text encoding into a Vec cannot fail");
        String::from_utf8(out).expect("the text format is UTF-8")
    }

    fn refresh(&self, partitions: &Partitions, now_ms: u64) {
        self.declare_series(partitions.first());
        let stats = partitions.stats();
        let counters = &stats.counters;
        for (saga_type, by_type) in &counters.by_type {
            for status in Status::ALL {
                let counter = self
                    .state
                    .executions
                    .with_label_values(&[saga_type.as_str(), status.as_str()]);
                raise(&counter, by_type.entered[status.index()]);
            }
        }
        let entered = |status: Status| counters.entered(status);
        raise(&self.state.failed, entered(Status::Failed));
        raise(&self.state.compensated, entered(Status::Compensated));
        for status in Status::ALL {
            let i = status.index();
            let label = [status.as_str()];
            self.state
                .status_gauge
                .with_label_values(&label)
                .set(counters.status_counts[i] as i64);
            self.state
                .active
                .with_label_values(&label)
                .set(stats.active_by_status[i] as i64);
            let age_ms = stats.oldest_updated_ms[i].map_or(0, |t| now_ms.saturating_sub(t));
            self.state
                .oldest_active
                .with_label_values(&label)
                .set(age_ms as f64 / 1000.0);
        }
        self.state
            .last_failed
            .set(counters.last_failed_at_ms as f64 / 1000.0);
        self.store
            .snapshot_every
            .set(stats.snapshot_every_records as i64);
        for (p, engine) in partitions.local() {
            let partition = [p.to_string()];
            let partition = [partition[0].as_str()];
            // The relay's figures, from the first scrape (0 without Kafka).
            self.outbox.pending.with_label_values(&partition);
            self.outbox.held.with_label_values(&partition);
            let log = engine.log_stats();
            let failing = engine.log_health().write_failure.is_some();
            self.service
                .log_writable
                .with_label_values(&partition)
                .set(i64::from(log.writable && !failing));
            let store = &self.store;
            store
                .log_head
                .with_label_values(&partition)
                .set(log.next_offset as i64);
            store
                .log_bytes
                .with_label_values(&partition)
                .set(log.bytes as i64);
            store
                .log_segments
                .with_label_values(&partition)
                .set(log.segments as i64);
            let snapshot = engine.snapshot_figures();
            store
                .snapshot_offset
                .with_label_values(&partition)
                .set(snapshot.offset as i64);
            store
                .snapshot_timestamp
                .with_label_values(&partition)
                .set(snapshot.at_ms as f64 / 1000.0);
            raise(
                &store.replay_records.with_label_values(&partition),
                snapshot.replayed_records,
            );
        }
        let engine = partitions.first();
        let delivery = engine.delivery();
        for topic in engine.step_topics() {
            self.service
                .delivery_paused
                .with_label_values(&[topic.as_str()])
                .set(i64::from(delivery.is_paused(&topic)));
        }
    }
}

impl Metrics {
    /// Makes every series of the registered definitions' steps exist from the first
    /// scrape (at zero), so that rates and alerts see a series before its first event.
    fn declare_series(&self, engine: &Engine) {
        for reason in REFUSAL_REASONS {
            self.service.refused.with_label_values(&[reason]);
        }
        for outcome in ["healed", "failed"] {
            self.service.log_heals.with_label_values(&[outcome]);
        }
        for reason in ["over_limit", "lane_full"] {
            self.service
                .connections_refused
                .with_label_values(&[reason]);
        }
        for outcome in ["succeeded", "failed"] {
            self.outbox.optimistic_send.with_label_values(&[outcome]);
        }
        for definition in engine.definitions() {
            let saga_type = definition.name.as_str();
            self.steps.saga_duration.with_label_values(&[saga_type]);
            for step in &definition.steps {
                let name = step.name.as_str();
                self.steps
                    .step_duration
                    .with_label_values(&[saga_type, name]);
                for outcome in ["succeeded", "failed", "timed_out"] {
                    self.steps
                        .step_executions
                        .with_label_values(&[saga_type, name, outcome]);
                }
                for outcome in ["succeeded", "failed", "compensated", "compensation_failed"] {
                    self.steps
                        .events_processed
                        .with_label_values(&[name, outcome]);
                }
                if step.compensable {
                    for outcome in ["compensated", "compensation_failed", "timed_out"] {
                        self.steps
                            .compensations
                            .with_label_values(&[saga_type, name, outcome]);
                    }
                }
            }
        }
    }
}

/// Moves a counter up to `value` (values read from the engine only grow).
fn raise(counter: &IntCounter, value: u64) {
    let current = counter.get();
    if value > current {
        counter.inc_by(value - current);
    }
}

impl EngineObserver for Metrics {
    fn saga_status(&self, saga_type: &str, status: Status, duration_ms: u64) {
        if !status.is_terminal() {
            return;
        }
        self.steps
            .saga_duration
            .with_label_values(&[saga_type])
            .observe(duration_ms as f64 / 1000.0);
    }

    fn step_outcome(
        &self,
        saga_type: &str,
        step: &str,
        action: Action,
        outcome: &'static str,
        duration_ms: u64,
    ) {
        let labels = [saga_type, step, outcome];
        match action {
            Action::Execute => {
                self.steps.step_executions.with_label_values(&labels).inc();
                self.steps
                    .step_duration
                    .with_label_values(&[saga_type, step])
                    .observe(duration_ms as f64 / 1000.0);
            }
            Action::Compensate => {
                self.steps.compensations.with_label_values(&labels).inc();
                self.steps
                    .compensation_duration
                    .observe(duration_ms as f64 / 1000.0);
            }
        }
    }
}

impl LogObserver for Metrics {
    fn batch_written(&self, _records: usize, _bytes: usize, elapsed: Duration) {
        self.query("log_write", elapsed);
    }

    fn synced(&self, elapsed: Duration) {
        self.query("fsync", elapsed);
    }

    fn healed(&self, healed: bool) {
        let outcome = if healed { "healed" } else { "failed" };
        self.service.log_heals.with_label_values(&[outcome]).inc();
    }
}
