//! Waiting for a condition the way a test should: polled at a short interval, bounded
//! by a deadline, and failing with a message that says what was awaited and what was
//! seen last.

use std::time::{Duration, Instant};

/// How often a condition is tried again.
pub const POLL_EVERY: Duration = Duration::from_millis(100);

/// Tries `check` until it gives `Ok(value)` (returned) or `within` has passed, and then
/// panics naming `what` and the last `Err` it gave (what was seen instead). `check` is
/// an async closure, so it may use a client it borrows mutably on every try.
pub async fn wait_until<T, E: std::fmt::Display>(
    what: &str,
    within: Duration,
    mut check: impl AsyncFnMut() -> Result<T, E>,
) -> T {
    let deadline = Instant::now() + within;
    loop {
        match check().await {
            Ok(value) => return value,
            Err(seen) if Instant::now() >= deadline => {
                panic!("{what}: not within {within:?}; last seen: {seen}")
            }
            Err(_) => tokio::time::sleep(POLL_EVERY).await,
        }
    }
}

/// [`wait_until`] for a check that does not wait itself (a file, a process's log).
pub fn wait_until_blocking<T, E: std::fmt::Display>(
    what: &str,
    within: Duration,
    mut check: impl FnMut() -> Result<T, E>,
) -> T {
    let deadline = Instant::now() + within;
    loop {
        match check() {
            Ok(value) => return value,
            Err(seen) if Instant::now() >= deadline => {
                panic!("{what}: not within {within:?}; last seen: {seen}")
            }
            Err(_) => std::thread::sleep(POLL_EVERY),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn it_returns_once_the_condition_holds() {
        let mut tries = 0;
        let value = wait_until("the third try", Duration::from_secs(5), || {
            tries += 1;
            let now = tries;
            async move {
                if now >= 3 {
                    Ok(now)
                } else {
                    Err(format!("try {now}"))
                }
            }
        })
        .await;
        assert_eq!(value, 3);
    }

    #[test]
    #[should_panic(expected = "the impossible: not within 200ms; last seen: still no")]
    fn it_fails_naming_what_and_the_last_seen() {
        wait_until_blocking("the impossible", Duration::from_millis(200), || {
            Err::<(), _>("still no")
        });
    }
}
