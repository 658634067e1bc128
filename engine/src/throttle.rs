//! Logging without flooding: when one failure repeats many times a second (a broker
//! down, a full disk refusing every write), one line per kind and interval says it,
//! with the count held back since.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

/// Kinds of error remembered at most; past it the memory starts over (so a kind may
/// then be logged once more early).
const MAX_KINDS: usize = 64;

/// Admits the first report of a kind, then one per interval, counting the others.
pub struct Throttle {
    every: Duration,
    seen: Mutex<HashMap<String, Seen>>,
}

struct Seen {
    logged_at: Instant,
    held_back: u64,
}

impl Throttle {
    pub fn new(every: Duration) -> Throttle {
        Throttle {
            every,
            seen: Mutex::new(HashMap::new()),
        }
    }

    /// `Some(n)` when this report is to be logged, `n` being how many of its kind were
    /// held back since the last one logged; `None` when it is held back.
    pub fn admit(&self, kind: &str, now: Instant) -> Option<u64> {
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
