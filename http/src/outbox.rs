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

use std::sync::Arc;

use sagalog_engine::{Command, CommandFilter, Engine, Partitions, Shutdown};

use crate::cursor::{encode_outbox, parse_outbox};
use crate::error::ApiError;
use crate::query::{parse_limit, parse_u64, DEFAULT_LIMIT};

/// Longest `wait_ms` a call may ask for; the server waits at most its own
/// `max_outbox_wait_ms` of it.
pub const MAX_WAIT_MS: u64 = 30_000;
/// Most log records one outbox call reads.
pub const MAX_SCANNED_RECORDS: usize = 10_000;
/// Most bytes one read of the tail takes.
const READ_BYTES: usize = 4 << 20;
/// About the most bytes of commands one page holds (their payloads and results, which
/// a later command carries for every step before it); past it the page ends early, at
/// its last command. A single larger command comes alone.
pub const MAX_PAGE_BYTES: usize = 16 << 20;

/// About how many bytes `command` takes in a page.
fn command_bytes(command: &Command) -> usize {
    const FIXED_BYTES: usize = 512;
    let undone = command
        .undo
        .as_ref()
        .and_then(|u| u.result.as_ref())
        .map_or(0, |r| r.len());
    FIXED_BYTES + command.payload.len() + command.results.bytes() + undone
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxQuery {
    pub after: After,
    pub limit: usize,
    pub wait_ms: u64,
    pub filter: CommandFilter,
}

/// Where a call starts reading.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum After {
    /// From the log's start (`after` omitted).
    Start,
    /// After this offset (`next_after` of the previous call).
    Offset(u64),
    /// From the log's end: what is appended from now on (`after=latest`).
    Latest,
    /// With more than one partition: after a position in each (the `next_after` of the
    /// call before), `c.` and each partition's offset or `n` (none yet), by `.`.
    Cursor(Vec<Option<u64>>),
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
                "after" if value.starts_with("c.") => {
                    out.after = After::Cursor(parse_outbox(&value).ok_or_else(|| {
                        bad(format!(
                            "after: {value:?} is not a cursor this server returned"
                        ))
                    })?)
                }
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
struct Page<'a, A> {
    items: &'a [Command],
    next_after: A,
}

/// One outbox page: `{"items": [commands], "next_after": ...}`, as JSON. With one
/// partition `next_after` is an offset (or null); with more, a cursor over every
/// partition ([`After::Cursor`]): the commands of each partition come in its log order,
/// one partition's after another's, and a long poll answers with the first partition
/// that has some.
///
/// `peer`: the call is a pod's of the same deployment, whose page also says where it
/// started (`from_after`).
pub async fn poll(
    partitions: &Partitions,
    query: &OutboxQuery,
    stopping: Shutdown,
    peer: bool,
) -> Result<Vec<u8>, ApiError> {
    let count = partitions.count() as usize;
    let bad = |message: String| ApiError::bad_request("invalid_request", message);
    if count == 1 {
        let engine = partitions.first();
        let (_, end) = engine.log_bounds();
        let after = match &query.after {
            After::Start => None,
            After::Offset(after) => Some(*after),
            After::Latest => end.checked_sub(1),
            After::Cursor(_) => {
                return Err(bad(
                    "after: this server has one partition; after is an offset".into(),
                ))
            }
        };
        let (items, next_after) = poll_one(
            engine.clone(),
            after,
            query.filter.clone(),
            query.limit,
            query.wait_ms,
            stopping,
        )
        .await?;
        let page = Page {
            items: &items,
            next_after,
        };
        return Ok(serde_json::to_vec(&page).expect("a page serializes"));
    }
    let from = resolve(partitions, &query.after)?;
    let (items, next) = poll_several(partitions, from.clone(), query, stopping).await?;
    let page = SeveralPage {
        items: &items,
        next_after: encode_outbox(&next),
        // Where the page started, for the pod that asked (it keeps these positions of
        // a page it does not use).
        from_after: peer.then(|| encode_outbox(&from)),
    };
    Ok(serde_json::to_vec(&page).expect("a page serializes"))
}

#[derive(serde::Serialize)]
struct SeveralPage<'a> {
    items: &'a [Command],
    next_after: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    from_after: Option<String>,
}

/// Where a call of a server with several partitions starts: a position in each
/// (those of partitions held elsewhere as the cursor gave them, `None` otherwise).
pub fn resolve(partitions: &Partitions, after: &After) -> Result<Vec<Option<u64>>, ApiError> {
    let count = partitions.count() as usize;
    let bad = |message: String| ApiError::bad_request("invalid_request", message);
    match after {
        After::Start => Ok(vec![None; count]),
        After::Latest => Ok((0..count as u32)
            .map(|p| partitions.get(p).and_then(|e| e.log_bounds().1.checked_sub(1)))
            .collect()),
        After::Cursor(positions) if positions.len() == count => Ok(positions.clone()),
        After::Cursor(positions) => Err(bad(format!(
            "after: the cursor covers {} partitions, this server has {count}; it is not one this server returned",
            positions.len()
        ))),
        After::Offset(_) => Err(bad(format!(
            "after: with {count} partitions, after is the cursor a call's next_after gave (or latest), not an offset"
        ))),
    }
}

/// The commands of the local partitions after `positions` (see [`poll`]), and the
/// positions after them.
pub async fn poll_several(
    partitions: &Partitions,
    mut positions: Vec<Option<u64>>,
    query: &OutboxQuery,
    stopping: Shutdown,
) -> Result<(Vec<Command>, Vec<Option<u64>>), ApiError> {
    // What every partition has now, one after the other, without waiting.
    let mut items = Vec::new();
    for (p, engine) in partitions.local() {
        if items.len() == query.limit {
            break;
        }
        let (found, next) = poll_one(
            engine.clone(),
            positions[p as usize],
            query.filter.clone(),
            query.limit - items.len(),
            0,
            stopping.clone(),
        )
        .await
        .map_err(|e| in_partition(e, p))?;
        positions[p as usize] = next;
        items.extend(found);
    }
    if items.is_empty() && query.wait_ms > 0 {
        // Nothing yet: wait on every partition at once, and answer with the first that
        // finds some (the others' waits are dropped; their positions stay).
        let mut waits = tokio::task::JoinSet::new();
        for (p, engine) in partitions.local() {
            let wait = poll_one(
                engine.clone(),
                positions[p as usize],
                query.filter.clone(),
                query.limit,
                query.wait_ms,
                stopping.clone(),
            );
            waits.spawn(async move { (p, wait.await) });
        }
        while let Some(joined) = waits.join_next().await {
            let (p, result) = joined.map_err(|e| {
                ApiError::new(
                    hyper::StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    format!("an outbox wait failed: {e}"),
                )
            })?;
            let (found, next) = result.map_err(|e| in_partition(e, p))?;
            positions[p as usize] = next;
            if !found.is_empty() {
                items = found;
                break;
            }
        }
    }
    Ok((items, positions))
}

/// Names the partition in an error of its log.
fn in_partition(mut e: ApiError, p: u32) -> ApiError {
    e.message = format!("partition {p}: {}", e.message);
    e
}

/// The commands of one partition after `after` (from its log's start when `None`),
/// waiting up to `wait_ms` for some; and the offset of the last record looked at.
async fn poll_one(
    engine: Arc<Engine>,
    after: Option<u64>,
    filter: CommandFilter,
    limit: usize,
    wait_ms: u64,
    mut stopping: Shutdown,
) -> Result<(Vec<Command>, Option<u64>), ApiError> {
    let (start, _) = engine.log_bounds();
    let (from, mut next_after) = match after {
        None => (start, None),
        Some(after) => (after.saturating_add(1), Some(after)),
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
    let mut feed = engine.command_feed(from).filtered(filter).holding();
    let mut delivery = engine.delivery_changes();
    let deadline = tokio::time::Instant::now() + Duration::from_millis(wait_ms);
    let mut items = Vec::new();
    let (mut scanned, mut bytes) = (0, 0);
    while items.len() < limit && scanned < MAX_SCANNED_RECORDS {
        if !feed.ready() && (!items.is_empty() || tokio::time::Instant::now() >= deadline) {
            break;
        }
        let want = (limit - items.len()).min(MAX_SCANNED_RECORDS - scanned);
        delivery.mark_unchanged();
        let batch = tokio::select! {
            batch = feed.next(want, READ_BYTES) => batch?,
            _ = tokio::time::sleep_until(deadline) => break,
            () = stopping.wait() => break,
        };
        scanned += batch.records;
        let mut full = false;
        for command in batch.commands {
            let size = command_bytes(&command);
            if !items.is_empty() && bytes + size > MAX_PAGE_BYTES {
                full = true;
                break;
            }
            bytes += size;
            items.push(command);
        }
        if full {
            // Full by size: the next page starts after the last command given (the
            // records after it are read again).
            next_after = items.last().map(|c| c.feed_offset).or(next_after);
            break;
        }
        next_after = batch.last_offset.or(next_after);
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
    Ok((items, next_after))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_partitioned_cursor_is_taken_as_after_and_a_bad_one_refused() {
        let query = OutboxQuery::parse("after=c.3.n", 1000).unwrap();
        assert_eq!(query.after, After::Cursor(vec![Some(3), None]));
        assert!(OutboxQuery::parse("after=c.3.q", 1000).is_err());
    }
}
