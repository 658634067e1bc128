//! How the API is set up: its limits and its admin token.

use std::time::Duration;

#[derive(Debug, Clone)]
pub struct ApiConfig {
    /// `/internal/` routes need `Authorization: Bearer <token>` when set.
    pub admin_token: Option<String>,
    /// Largest request body (413 beyond it).
    pub max_body_bytes: usize,
    /// Longest an outbox long poll waits (`wait_ms` is capped at it).
    pub max_outbox_wait_ms: u64,
    /// Longest a request's body may take to arrive in full (`408` beyond it).
    pub body_timeout: Duration,
    /// Slowest a body may arrive, on average after its first `BODY_RATE_GRACE` (2 s)
    /// (`408` below it); 0 turns the check off.
    pub body_min_bytes_per_sec: u64,
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            admin_token: None,
            max_body_bytes: 1024 * 1024,
            max_outbox_wait_ms: 30_000,
            body_timeout: Duration::from_secs(30),
            body_min_bytes_per_sec: 1024,
        }
    }
}
