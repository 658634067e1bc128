//! librdkafka's reports, logged without flooding. While a broker is down every client
//! (producer, reply consumer, topic checks) reports the same global error many times a
//! second — about 35 lines a second with rdkafka's default context. [`KafkaContext`]
//! logs each kind of error at most once per [`REPEAT_EVERY`], with the count held back
//! since; the outage itself shows in the metrics (`outbox_pending_events_total`,
//! `saga_kafka_consumer_lag`) and their alerts.

use std::collections::HashMap;
use std::sync::LazyLock;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use rdkafka::client::ClientContext;
use rdkafka::consumer::ConsumerContext;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};

/// Shortest time between two log lines about one kind of Kafka error.
pub const REPEAT_EVERY: Duration = Duration::from_secs(60);
/// Kinds of error remembered at most; past it the memory starts over (so a kind may
/// then be logged once more early).
const MAX_KINDS: usize = 64;

/// Admits the first report of a kind, then one per interval, counting the others.
pub(crate) struct Throttle {
    every: Duration,
    seen: Mutex<HashMap<String, Seen>>,
}

struct Seen {
    logged_at: Instant,
    held_back: u64,
}

impl Throttle {
    pub(crate) fn new(every: Duration) -> Throttle {
        Throttle {
            every,
            seen: Mutex::new(HashMap::new()),
        }
    }

    /// `Some(n)` when this report is to be logged, `n` being how many of its kind were
    /// held back since the last one logged; `None` when it is held back.
    pub(crate) fn admit(&self, kind: &str, now: Instant) -> Option<u64> {
        let mut seen = self.seen.lock();
        if let Some(entry) = seen.get_mut(kind) {
            if now.saturating_duration_since(entry.logged_at) < self.every {
                entry.held_back += 1;
                return None;
            }
            let held_back = std::mem::take(&mut entry.held_back);
            entry.logged_at = now;
            return Some(held_back);
        }
        if seen.len() >= MAX_KINDS {
            seen.clear();
        }
        seen.insert(
            kind.to_string(),
            Seen {
                logged_at: now,
                held_back: 0,
            },
        );
        Some(0)
    }
}

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

/// The context of every Kafka client sagalog makes: librdkafka's global errors go
/// through the throttle; its log lines keep rdkafka's default mapping.
#[derive(Clone, Copy, Default)]
pub struct KafkaContext;

impl ClientContext for KafkaContext {
    fn error(&self, error: KafkaError, reason: &str) {
        kafka_problem("librdkafka", &error, reason);
    }
}

impl ConsumerContext for KafkaContext {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_kind_is_logged_once_per_interval_with_the_count_held_back() {
        let throttle = Throttle::new(Duration::from_secs(60));
        let t0 = Instant::now();
        assert_eq!(throttle.admit("down", t0), Some(0));
        for s in 1..=59 {
            assert_eq!(throttle.admit("down", t0 + Duration::from_secs(s)), None);
        }
        // Another kind is not held back by the first.
        assert_eq!(
            throttle.admit("refused", t0 + Duration::from_secs(1)),
            Some(0)
        );
        assert_eq!(
            throttle.admit("down", t0 + Duration::from_secs(60)),
            Some(59)
        );
        assert_eq!(throttle.admit("down", t0 + Duration::from_secs(61)), None);
        assert_eq!(
            throttle.admit("down", t0 + Duration::from_secs(120)),
            Some(1)
        );
    }

    #[test]
    fn the_memory_of_kinds_is_bounded() {
        let throttle = Throttle::new(Duration::from_secs(60));
        let t0 = Instant::now();
        for n in 0..MAX_KINDS * 3 {
            assert_eq!(throttle.admit(&format!("kind-{n}"), t0), Some(0));
            assert!(throttle.seen.lock().len() <= MAX_KINDS);
        }
    }
}
