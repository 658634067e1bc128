//! What a request carries besides its route: its body, read within its limits of size,
//! time and rate, and its W3C trace context.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::header::CONTENT_LENGTH;
use hyper::{Request, StatusCode};
use sagalog_engine::Shutdown;

use crate::config::ApiConfig;
use crate::error::ApiError;

/// The trace id of a W3C `traceparent` (`00-<32 hex>-<16 hex>-<2 hex>`); an invalid
/// header is ignored, as the W3C spec asks, and the saga gets a new trace id.
pub(crate) fn trace_id_of(traceparent: &str) -> Option<String> {
    let parts: Vec<&str> = traceparent.trim().split('-').collect();
    let hex = |s: &str, len: usize| {
        s.len() == len
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    match parts.as_slice() {
        [version, trace, parent, flags]
            if hex(version, 2)
                && *version != "ff"
                && sagalog_engine::is_valid_trace_id(trace)
                && hex(parent, 16)
                && hex(flags, 2) =>
        {
            Some(trace.to_string())
        }
        _ => None,
    }
}

/// The first part of a body, which may arrive at any rate (the body deadline still
/// holds); after it the average rate counts.
pub const BODY_RATE_GRACE: Duration = Duration::from_secs(2);
/// Bytes of an oversized body read (and dropped) before the `413` is sent, so that a
/// client that sends its whole body before reading the answer gets to read it.
pub const MAX_DRAIN_BYTES: u64 = 16 << 20;
/// Longest an oversized body is drained before the `413` is sent anyway.
const DRAIN_TIME: Duration = Duration::from_secs(2);

/// Reads the body, bounded in size (`413 payload_too_large`, after draining what the
/// client sends up to [`MAX_DRAIN_BYTES`]), in time (`408 body_timeout`: all of it
/// within `body_timeout`, and at least `body_min_bytes_per_sec` on average after
/// [`BODY_RATE_GRACE`]) and by the stop (`503`: a stopping server does not wait for a
/// slow body).
pub(crate) async fn read_body(
    request: Request<Incoming>,
    config: &ApiConfig,
    mut stopping: Shutdown,
) -> Result<Bytes, ApiError> {
    let max_bytes = config.max_body_bytes;
    let declared = request
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let mut body = request.into_body();
    // Closed after the answer unless the whole body was drained.
    let too_large = |drained: bool| {
        let mut e = ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!("the body is over the limit of {max_bytes} bytes (--max-body-bytes)"),
        );
        e.close = !drained;
        e
    };
    if declared.is_some_and(|n| n > max_bytes as u64) {
        let drained = declared.is_some_and(|n| n <= MAX_DRAIN_BYTES) && drain(&mut body).await;
        return Err(too_large(drained));
    }
    let started = tokio::time::Instant::now();
    // Grown as bytes arrive: a declared length alone reserves no more than this.
    const FIRST_CAPACITY: u64 = 64 * 1024;
    let mut received = Vec::with_capacity(declared.map_or(0, |n| n.min(FIRST_CAPACITY) as usize));
    loop {
        let by = body_deadline(started, received.len() as u64, config);
        let frame = tokio::select! {
            biased;
            frame = tokio::time::timeout_at(by, body.frame()) => frame,
            () = stopping.wait() => {
                return Err(ApiError::refused("shutting_down", "the server is stopping; retry on another instance"));
            }
        };
        let frame = match frame {
            Err(_) => return Err(body_too_slow(started, received.len(), config)),
            Ok(None) => break,
            Ok(Some(Err(e))) => {
                return Err(ApiError::bad_request(
                    "invalid_request",
                    format!("reading the body failed: {e}"),
                ))
            }
            Ok(Some(Ok(frame))) => frame,
        };
        if let Ok(data) = frame.into_data() {
            if received.len() + data.len() > max_bytes {
                let drained = drain(&mut body).await;
                return Err(too_large(drained));
            }
            received.extend_from_slice(&data);
        }
    }
    Ok(Bytes::from(received))
}

/// When the next part of a body must have come, having `received` bytes so far.
fn body_deadline(
    started: tokio::time::Instant,
    received: u64,
    config: &ApiConfig,
) -> tokio::time::Instant {
    let total = started + config.body_timeout;
    if config.body_min_bytes_per_sec == 0 {
        return total;
    }
    let allowed =
        Duration::from_secs_f64((received + 1) as f64 / config.body_min_bytes_per_sec as f64);
    total.min(started + BODY_RATE_GRACE + allowed)
}

fn body_too_slow(started: tokio::time::Instant, received: usize, config: &ApiConfig) -> ApiError {
    let mut e = ApiError::new(
        StatusCode::REQUEST_TIMEOUT,
        "body_timeout",
        format!(
            "the body did not arrive in time: {received} bytes in {:.1} s (it must come \
             within {} ms, --body-timeout-ms, at {} bytes/s or faster after the first {} s, \
             --body-min-bytes-per-sec)",
            started.elapsed().as_secs_f64(),
            config.body_timeout.as_millis(),
            config.body_min_bytes_per_sec,
            BODY_RATE_GRACE.as_secs()
        ),
    );
    e.close = true;
    e
}

/// Reads and drops the rest of a body, up to [`MAX_DRAIN_BYTES`] and [`DRAIN_TIME`];
/// true when it reached the body's end (the connection can then go on).
async fn drain(body: &mut Incoming) -> bool {
    let mut drained = 0u64;
    let until = tokio::time::Instant::now() + DRAIN_TIME;
    while drained < MAX_DRAIN_BYTES {
        match tokio::time::timeout_at(until, body.frame()).await {
            Ok(Some(Ok(frame))) => {
                drained += frame.data_ref().map_or(0, |d| d.len() as u64);
            }
            Ok(None) => return true,
            _ => return false,
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparent_gives_its_trace_id_and_invalid_ones_are_ignored() {
        let id = "4bf92f3577b34da6a3ce929d0e0e4736";
        assert_eq!(
            trace_id_of(&format!("00-{id}-00f067aa0ba902b7-01")).as_deref(),
            Some(id)
        );
        assert_eq!(
            trace_id_of("00-00000000000000000000000000000000-00f067aa0ba902b7-01"),
            None
        );
        assert_eq!(trace_id_of("00-XYZ-00f067aa0ba902b7-01"), None);
        assert_eq!(trace_id_of(&format!("ff-{id}-00f067aa0ba902b7-01")), None);
    }
}
