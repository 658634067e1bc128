//! librdkafka's reports, logged without flooding. While a broker is down every client
//! (producer, reply consumer, topic checks) reports the same global error many times a
//! second — about 35 lines a second with rdkafka's default context. [`KafkaContext`]
//! logs each kind of error at most once per [`REPEAT_EVERY`], with the count held back
//! since; the outage itself shows in the metrics (`outbox_pending_events_total`,
//! `saga_kafka_consumer_lag`) and their alerts. librdkafka's own warnings and errors
//! (a failed connection, a topic missing from its metadata) are throttled the same way,
//! by facility and severity.

use std::sync::LazyLock;
use std::time::{Duration, Instant};

use rdkafka::client::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::ConsumerContext;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use sagalog_engine::throttle::Throttle;

/// Shortest time between two log lines about one kind of Kafka error.
pub const REPEAT_EVERY: Duration = Duration::from_secs(60);
/// One throttle for every client of the process: a broker outage is one story however
/// many clients tell it.
static THROTTLE: LazyLock<Throttle> = LazyLock::new(|| Throttle::new(REPEAT_EVERY));

/// Logs `message` about `error` (warn when the broker cannot be reached, which the
/// relay waits out, error otherwise) unless one of its kind was logged within
/// [`REPEAT_EVERY`].
pub(crate) fn kafka_problem(source: &'static str, error: &KafkaError, message: &str) {
    let code = error.rdkafka_error_code();
    let kind = format!("{source}:{code:?}");
    let Some(held_back) = THROTTLE.admit(&kind, Instant::now()) else {
        return;
    };
    if code.is_some_and(is_unreachable) {
        tracing::warn!(source, error = %error, held_back, "{message}");
    } else {
        tracing::error!(source, error = %error, held_back, "{message}");
    }
}

/// The broker is down, unknown or not answering: nothing to do but wait for it.
fn is_unreachable(code: RDKafkaErrorCode) -> bool {
    matches!(
        code,
        RDKafkaErrorCode::AllBrokersDown
            | RDKafkaErrorCode::BrokerTransportFailure
            | RDKafkaErrorCode::Resolve
            | RDKafkaErrorCode::OperationTimedOut
            | RDKafkaErrorCode::RequestTimedOut
            | RDKafkaErrorCode::MessageTimedOut
            | RDKafkaErrorCode::NetworkException
            | RDKafkaErrorCode::BrokerNotAvailable
    )
}

/// The context of every Kafka client sagalog makes: librdkafka's global errors, and its
/// log lines of warning level and above, go through the throttle.
#[derive(Clone, Copy, Default)]
pub struct KafkaContext;

impl ClientContext for KafkaContext {
    fn error(&self, error: KafkaError, reason: &str) {
        kafka_problem("librdkafka", &error, reason);
    }

    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        let severe = match level {
            RDKafkaLogLevel::Emerg
            | RDKafkaLogLevel::Alert
            | RDKafkaLogLevel::Critical
            | RDKafkaLogLevel::Error => true,
            RDKafkaLogLevel::Warning => false,
            RDKafkaLogLevel::Notice | RDKafkaLogLevel::Info => {
                tracing::info!(target: "librdkafka", "librdkafka: {fac} {message}");
                return;
            }
            RDKafkaLogLevel::Debug => {
                tracing::debug!(target: "librdkafka", "librdkafka: {fac} {message}");
                return;
            }
        };
        // By facility and severity: a flood of warnings does not hide an error.
        let kind = format!("log:{fac}:{}", if severe { "error" } else { "warning" });
        let Some(held_back) = THROTTLE.admit(&kind, Instant::now()) else {
            return;
        };
        if severe {
            tracing::error!(target: "librdkafka", held_back, "librdkafka: {fac} {message}");
        } else {
            tracing::warn!(target: "librdkafka", held_back, "librdkafka: {fac} {message}");
        }
    }
}

impl ConsumerContext for KafkaContext {}
