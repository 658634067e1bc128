//! `GET /api/v1/outbox`: the commands of the log in order, for participants when no
//! Kafka is configured. Fed by the log's tail subscription: a long poll waits on the
//! writer's publication of new records, never on a timer.
//!
//! `next_after` is the offset of the last record looked at (command or not, wanted by
//! the call's filter or not), so a participant passing it back never rescans records
//! that hold none of its commands. A call looks at most [`MAX_SCANNED_RECORDS`] records,
//! then answers with what it found; a long poll's wakes read only the records appended
//! since the last one.
//!
//! The filter: `topic` (repeatable) keeps the commands to those topics; `members=K` and
//! `member=I` keep the sagas of member `I` of `K` (a hash of the saga id, as Kafka's
//! default partitioner). `after=latest` starts at the log's end.
//!
//! A command whose topic is paused (`POST /internal/v1/pause`) is held: a call stops
//! before it, `next_after` stays before it, and a long poll waits for the resume. A
//! reader of one topic is held only by its own topic's pause; one reading several is
//! held at the first paused command among them.

use std::time::Duration;

use sagalog_engine::{CommandFilter, Engine, Shutdown};

use crate::error::ApiError;
use crate::query::{parse_limit, parse_u64, DEFAULT_LIMIT};

/// Longest `wait_ms` a call may ask for; the server waits at most its own
/// `max_outbox_wait_ms` of it.
pub const MAX_WAIT_MS: u64 = 30_000;
/// Most log records one outbox call reads.
pub const MAX_SCANNED_RECORDS: usize = 10_000;
/// Most bytes one read of the tail takes.
const READ_BYTES: usize = 4 << 20;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxQuery {
    pub after: After,
    pub limit: usize,
    pub wait_ms: u64,
    pub filter: CommandFilter,
}

/// Where a call starts reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum After {
    /// From the log's start (`after` omitted).
    Start,
    /// After this offset (`next_after` of the previous call).
    Offset(u64),
    /// From the log's end: what is appended from now on (`after=latest`).
    Latest,
}

impl OutboxQuery {
    pub fn parse(query: &str, max_wait_ms: u64) -> Result<OutboxQuery, ApiError> {
        let mut out = OutboxQuery {
            after: After::Start,
            limit: DEFAULT_LIMIT,
            wait_ms: 0,
            filter: CommandFilter::all(),
        };
        let bad = |message: String| ApiError::bad_request("invalid_request", message);
        let (mut topics, mut members, mut member) = (Vec::new(), None, None);
        for (key, value) in form_urlencoded::parse(query.as_bytes()) {
            match key.as_ref() {
                "after" if value == "latest" => out.after = After::Latest,
                "after" => out.after = After::Offset(parse_u64("after", &value)?),
                "limit" => out.limit = parse_limit(&value)?,
                "wait_ms" => {
                    let wait_ms = parse_u64("wait_ms", &value)?;
                    if wait_ms > MAX_WAIT_MS {
                        return Err(bad(format!("wait_ms: at most {MAX_WAIT_MS}")));
                    }
                    out.wait_ms = wait_ms.min(max_wait_ms);
                }
                "topic" => topics.push(value.into_owned()),
                "members" => members = Some(parse_u32("members", &value)?),
                "member" => member = Some(parse_u32("member", &value)?),
                other => {
                    return Err(bad(format!(
                        "unknown query parameter {other:?}; known: after, limit, wait_ms, \
                         topic, members, member"
                    )))
                }
            }
        }
        let share = match (members, member) {
            (None, None) => None,
            (Some(members), Some(member)) => Some((members, member)),
            _ => {
                return Err(bad(
                    "members and member go together: member I of K replicas is \
                     members=K&member=I"
                        .into(),
                ))
            }
        };
        out.filter = CommandFilter::new(topics, share).map_err(|e| bad(e.to_string()))?;
        Ok(out)
    }
}

fn parse_u32(name: &str, value: &str) -> Result<u32, ApiError> {
    let n = parse_u64(name, value)?;
    u32::try_from(n)
        .map_err(|_| ApiError::bad_request("invalid_request", format!("{name}: {n} is too large")))
}

#[derive(serde::Serialize)]
struct Page<'a> {
    items: &'a [sagalog_engine::Command],
    next_after: Option<u64>,
}

/// One outbox page: `{"items": [commands], "next_after": offset or null}`, as JSON.
pub async fn poll(
    engine: &Engine,
    query: &OutboxQuery,
    mut stopping: Shutdown,
) -> Result<Vec<u8>, ApiError> {
    let (start, end) = engine.log_bounds();
    let (from, mut next_after) = match query.after {
        After::Start => (start, None),
        After::Offset(after) => (after.saturating_add(1), Some(after)),
        After::Latest => (end, end.checked_sub(1)),
    };
    if from < start {
        // The commands in between are gone: say so rather than skip them silently.
        return Err(ApiError::new(
            hyper::StatusCode::GONE,
            "removed_by_retention",
            format!(
                "commands after offset {} were removed by retention (the log now starts at \
                 offset {start}); they belonged to finished sagas. Resume with after={}",
                from - 1,
                start - 1
            ),
        ));
    }
    let mut feed = engine
        .command_feed(from)
        .filtered(query.filter.clone())
        .holding();
    let mut delivery = engine.delivery_changes();
    let deadline = tokio::time::Instant::now() + Duration::from_millis(query.wait_ms);
    let mut items = Vec::new();
    let mut scanned = 0;
    while items.len() < query.limit && scanned < MAX_SCANNED_RECORDS {
        if !feed.ready() && (!items.is_empty() || tokio::time::Instant::now() >= deadline) {
            break;
        }
        let want = (query.limit - items.len()).min(MAX_SCANNED_RECORDS - scanned);
        delivery.mark_unchanged();
        let batch = tokio::select! {
            batch = feed.next(want, READ_BYTES) => batch?,
            _ = tokio::time::sleep_until(deadline) => break,
            () = stopping.wait() => break,
        };
        scanned += batch.records;
        next_after = batch.last_offset.or(next_after);
        items.extend(batch.commands);
        if batch.held {
            // The next command's topic is paused: nothing after it is handed out (the
            // cursor cannot pass it). A long poll with nothing yet waits for a resume,
            // not for appends, which would only find the same command held again.
            if !items.is_empty() {
                break;
            }
            tokio::select! {
                changed = delivery.changed() => if changed.is_err() { break },
                _ = tokio::time::sleep_until(deadline) => break,
                () = stopping.wait() => break,
            }
        }
    }
    let page = Page {
        items: &items,
        next_after,
    };
    Ok(serde_json::to_vec(&page).expect("a page serializes"))
}
