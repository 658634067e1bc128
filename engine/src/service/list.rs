//! Listing sagas newest first (by `updated_at`), filtered by status, type, date, id
//! prefix and start-payload fields, paged by an opaque cursor. Active sagas are listed
//! from memory; finished ones from the `finished` index (a finished saga may briefly be
//! in both until the indexer lets it leave memory; it is listed once).
//!
//! Bounds: a page holds at most `limit` sagas and stops once its sagas' payloads and
//! reasons pass `EngineConfig::max_list_bytes` (the next cursor goes on from the last
//! one given); an index scan reads at most `list_scan_limit` entries, and a payload
//! filter reads at most that many start records (each read counts as an entry); the
//! sagas in memory are read in one pass, one shard's lock at a time. `Engine::list`
//! runs it off the async runtime, a few at a time.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::ops::Bound;
use std::sync::Arc;

use crate::api::{ListPage, ListQuery, MAX_LIST_LIMIT};
use crate::error::{EngineError, Inconsistency, Result};
use crate::history::read_saga_record;
use crate::model::record::{Kind, Status};
use crate::service::indexing::{
    bucket_key_from, bucket_newest_ms, Bucket, SagaMeta, MAX_BUCKET_SPAN_MS,
};
use crate::service::inner::Inner;

type Position = (u64, Arc<str>);

/// `{updated_at_ms}_{saga_id}` (saga ids never contain `_`).
pub(crate) fn encode_cursor((at, id): (u64, &str)) -> String {
    format!("{at}_{id}")
}

fn cursor_of(position: &Position) -> String {
    encode_cursor((position.0, &position.1))
}

pub(crate) fn parse_cursor(cursor: &str) -> Result<Position> {
    let bad = || EngineError::InvalidRequest {
        field: "cursor",
        message: format!("{cursor:?} is not a cursor this server returned"),
    };
    let (at, id) = cursor.split_once('_').ok_or_else(bad)?;
    let at = at.parse::<u64>().map_err(|_| bad())?;
    if !crate::api::is_valid_saga_id(id) {
        return Err(bad());
    }
    Ok((at, Arc::from(id)))
}

pub(crate) fn list(inner: &Inner, query: &ListQuery) -> Result<ListPage> {
    if !(1..=MAX_LIST_LIMIT).contains(&query.limit) {
        return Err(EngineError::InvalidRequest {
            field: "limit",
            message: format!("{} is not in 1..={MAX_LIST_LIMIT}", query.limit),
        });
    }
    let cursor = query.cursor.as_deref().map(parse_cursor).transpose()?;
    let (from_ms, to_ms) = (query.from_ms.unwrap_or(0), query.to_ms.unwrap_or(u64::MAX));
    if from_ms > to_ms {
        // Nothing lies between: an empty page.
        return Ok(ListPage {
            items: Vec::new(),
            next_cursor: None,
        });
    }
    let window = Window {
        cursor: cursor.as_ref(),
        from_ms,
        to_ms,
    };
    let (candidates, floor) = candidates(inner, query, &window)?;
    page(inner, &candidates, floor, query.limit)
}

/// Where a page may come from: below the cursor, updated within `from_ms..=to_ms`.
struct Window<'a> {
    cursor: Option<&'a Position>,
    from_ms: u64,
    to_ms: u64,
}

/// The best `query.limit` sagas the query matches, newest first, from memory and the
/// index; and the floor below which an index scan that stopped at its bound left the
/// order undecided (the page must not go below it).
fn candidates(
    inner: &Inner,
    query: &ListQuery,
    window: &Window,
) -> Result<(Vec<Position>, Option<Position>)> {
    let statuses: Vec<Status> = match query.status {
        Some(status) => vec![status],
        None => Status::ALL.to_vec(),
    };
    let mut scanned = 0usize;
    let (mut candidates, mut floor) = from_memory(inner, &statuses, window, query, &mut scanned)?;
    for &status in statuses.iter().filter(|s| s.is_terminal()) {
        let memory_floor = floor.clone();
        let (found, reached) = from_index(
            inner,
            status,
            window,
            query,
            memory_floor.as_ref(),
            &mut scanned,
        )?;
        candidates.extend(found);
        if let Some(reached) = reached {
            floor = floor.max(Some(reached));
        }
    }
    candidates.sort_by(|a, b| b.cmp(a));
    candidates.dedup_by(|a, b| a.1 == b.1);
    if let Some(floor) = &floor {
        candidates.retain(|c| c >= floor);
    }
    candidates.truncate(query.limit);
    Ok((candidates, floor))
}

/// The page of `candidates` (at most `want`), read as views, ending early once past
/// `max_list_bytes`; its cursor goes on from the last saga given (or from `floor`).
fn page(
    inner: &Inner,
    candidates: &[Position],
    floor: Option<Position>,
    want: usize,
) -> Result<ListPage> {
    let mut items = Vec::with_capacity(candidates.len());
    let mut bytes = 0usize;
    for (taken, position) in candidates.iter().enumerate() {
        let view = match inner.get_view(&position.1) {
            Ok(view) => view,
            // Gone between listing and reading, or removed by retention: skip rather
            // than fail the page.
            Err(EngineError::SagaNotFound { .. } | EngineError::SagaRemoved { .. }) => continue,
            Err(e) => return Err(e),
        };
        bytes += listed_bytes(&view);
        if bytes > inner.config.max_list_bytes && !items.is_empty() {
            // The page is full by size: the next one starts at this saga.
            let last = &candidates[taken - 1];
            return Ok(ListPage {
                items,
                next_cursor: Some(cursor_of(last)),
            });
        }
        items.push(view);
    }
    let next_cursor = if candidates.len() == want {
        candidates.last().map(cursor_of)
    } else {
        // A short page is the last one, unless a scan stopped at its bound: then go on
        // below the position it reached.
        floor.as_ref().map(cursor_of)
    };
    Ok(ListPage { items, next_cursor })
}

/// About how many bytes a saga takes in a page: its payload and reason, and the rest.
pub(crate) fn listed_bytes(view: &crate::render::view::SagaView) -> usize {
    const FIXED_BYTES: usize = 512;
    view.payload.len()
        + view.failure_reason.as_ref().map_or(0, String::len)
        + view.steps.len() * 64
        + FIXED_BYTES
}

/// Whether the saga `id` matches the query's id prefix, type and payload fields. The
/// type of a saga in memory is known; otherwise, and for payload fields, its first
/// record is read (counted in `scanned`).
fn matches(inner: &Inner, id: &str, query: &ListQuery, scanned: &mut usize) -> Result<bool> {
    if !id_prefix_matches(id, query) {
        return Ok(false);
    }
    if query.payload.is_empty() {
        let Some(want) = query.saga_type.as_deref() else {
            return Ok(true);
        };
        if let Some(saga_type) = inner.sagas.saga_type(id) {
            return Ok(saga_type == want);
        }
    }
    *scanned += 1;
    let Some((saga_type, payload)) = started(inner, id)? else {
        return Ok(false);
    };
    if query
        .saga_type
        .as_deref()
        .is_some_and(|want| want != saga_type)
    {
        return Ok(false);
    }
    if query.payload.is_empty() {
        return Ok(true);
    }
    // A payload that is not JSON cannot be: it was parsed when the saga started.
    let payload: serde_json::Value = serde_json::from_str(&payload).unwrap_or_default();
    Ok(query.payload.iter().all(|field| field.matches(&payload)))
}

fn id_prefix_matches(id: &str, query: &ListQuery) -> bool {
    query
        .id_prefix
        .as_deref()
        .is_none_or(|prefix| id.starts_with(prefix))
}

/// The saga's type and start payload (JSON text), from its first record; `None` when
/// it is gone (removed by retention, or never indexed).
fn started(inner: &Inner, id: &str) -> Result<Option<(String, String)>> {
    let first = match inner.sagas.offsets(id) {
        Some((first, _)) => first,
        None => match inner
            .index
            .get(&inner.keys.saga, id.as_bytes())?
            .and_then(|value| SagaMeta::decode(&value))
        {
            Some(meta) => meta.first_offset,
            None => return Ok(None),
        },
    };
    match read_saga_record(&inner.log, first) {
        Ok((_, record)) => match record.kind {
            Kind::SagaStarted {
                saga_type, payload, ..
            } => Ok(Some((saga_type, payload))),
            _ => Ok(None),
        },
        Err(EngineError::Removed { .. }) => Ok(None),
        Err(e) => Err(e),
    }
}

/// The newest `query.limit` in-memory sagas of the `statuses` below the cursor: one
/// pass over the sagas in memory, one shard's lock at a time, keeping the best ones in
/// a bounded heap. With payload fields to match, the newest `list_scan_limit` sagas the
/// rest of the query keeps are the candidates, and their start records are read newest
/// first until the page is full or the scan's bound is reached (then the position
/// reached is the floor, as for an index scan).
fn from_memory(
    inner: &Inner,
    statuses: &[Status],
    window: &Window,
    query: &ListQuery,
    scanned: &mut usize,
) -> Result<(Vec<Position>, Option<Position>)> {
    let (cursor, from_ms, to_ms) = (window.cursor, window.from_ms, window.to_ms);
    // With payload fields, at most `list_scan_limit` of them can be read.
    let keep = if query.payload.is_empty() {
        query.limit
    } else {
        inner.config.list_scan_limit.max(query.limit)
    };
    let mut best: BinaryHeap<Reverse<Position>> = BinaryHeap::with_capacity(query.limit + 1);
    for shard in inner.sagas.shards() {
        let sagas = shard.lock();
        for slot in sagas.values() {
            let state = &slot.state;
            let at = state.updated_at_ms;
            let wanted = state.status.is_some_and(|s| statuses.contains(&s));
            if !wanted || at < from_ms || at > to_ms || !id_prefix_matches(&state.saga_id, query) {
                continue;
            }
            if query
                .saga_type
                .as_deref()
                .is_some_and(|t| t != state.definition.name)
            {
                continue;
            }
            let worse_than_cursor =
                cursor.is_some_and(|(c_at, c_id)| (at, &*state.saga_id) >= (*c_at, &**c_id));
            if worse_than_cursor {
                continue;
            }
            let better = best.len() < keep
                || best
                    .peek()
                    .is_some_and(|Reverse((b_at, b_id))| (at, &*state.saga_id) > (*b_at, &**b_id));
            if better {
                best.push(Reverse((at, state.saga_id.clone())));
                if best.len() > keep {
                    best.pop();
                }
            }
        }
    }
    if query.payload.is_empty() {
        return Ok((best.into_iter().map(|Reverse(p)| p).collect(), None));
    }
    // Newest first (the sorted order of `Reverse`s).
    let mut found = Vec::new();
    for Reverse(position) in best.into_sorted_vec() {
        if matches(inner, &position.1, query, scanned)? {
            found.push(position.clone());
            if found.len() == query.limit {
                break;
            }
        }
        if *scanned >= inner.config.list_scan_limit {
            // Everything down to this saga was decided; the next page goes on below it.
            return Ok((found, Some(position)));
        }
    }
    Ok((found, None))
}

/// The merge's state after reading a bucket: entries `pending` in a heap, of which
/// those newer than anything the next bucket can hold (`next_newest`) are decided.
struct Decided<'a> {
    pending: &'a mut BinaryHeap<Position>,
    next_newest: Option<u64>,
    /// The last position taken off the heap.
    reached: &'a mut Position,
    found: &'a mut Vec<Position>,
    scanned: &'a mut usize,
}

impl Decided<'_> {
    /// Moves the decided entries of the query's type into `found`; true once the page
    /// is full.
    fn take(self, inner: &Inner, query: &ListQuery) -> Result<bool> {
        while let Some(top) = self.pending.peek() {
            if self.next_newest.is_some_and(|newest| top.0 <= newest) {
                break;
            }
            let position = self.pending.pop().expect("peeked");
            *self.reached = position.clone();
            if matches(inner, &position.1, query, self.scanned)? {
                self.found.push(position);
                if self.found.len() == query.limit {
                    return Ok(true);
                }
            }
        }
        Ok(false)
    }
}

/// Up to `query.limit` finished sagas of `status` from the index, newest first, below
/// the cursor and within `[from_ms, to_ms]`; and, when the scan stopped at its bound
/// (`list_scan_limit`), the position it reached: everything at or above it was decided,
/// everything below it not.
///
/// Buckets are read newest first (by their newest entry); an entry is final once it is
/// newer than everything the next bucket can hold, so the merge keeps only the entries
/// of overlapping buckets in memory.
fn from_index(
    inner: &Inner,
    status: Status,
    window: &Window,
    query: &ListQuery,
    floor: Option<&Position>,
    scanned: &mut usize,
) -> Result<(Vec<Position>, Option<Position>)> {
    let from_ms = window.from_ms;
    // Entries at or past `below` are out: past the cursor or after `to_ms`.
    let past_to = (window.to_ms.saturating_add(1), Arc::<str>::from(""));
    let below = match window.cursor {
        Some(c) if *c < past_to => c.clone(),
        _ => past_to,
    };
    let mut found = Vec::new();
    if below <= (from_ms, Arc::from("")) {
        return Ok((found, None));
    }
    // A bucket whose newest entry is past `below.0 + span` holds only entries past it.
    let lower = bucket_key_from(status, from_ms);
    let upper = bucket_key_from(status, below.0.saturating_add(MAX_BUCKET_SPAN_MS + 1));
    let range = (
        Bound::Included(lower.as_slice()),
        Bound::Excluded(upper.as_slice()),
    );
    let mut buckets = inner
        .index
        .range(&inner.keys.finished, range)
        .rev()
        .peekable();
    let mut pending: BinaryHeap<Position> = BinaryHeap::new();
    // The last position taken off the heap (returned or filtered out), else `below`.
    let mut reached = below.clone();
    while let Some(entry) = buckets.next() {
        let (key, value) = entry?;
        let bad = || Inconsistency::BadIndexEntry {
            what: "finished",
            key: format!("{key:?}"),
        };
        for (at, id) in Bucket::decode(&value).ok_or_else(bad)?.entries {
            *scanned += 1;
            let position = (at, Arc::from(id.as_str()));
            // Every entry goes through the heap, so that the position reached (and the
            // bound) moves on even while none matches; `matches` checks the id prefix
            // before it reads anything.
            if at >= from_ms && position < below {
                pending.push(position);
            }
        }
        // What the next bucket can hold is at most its newest entry.
        let next_newest = match buckets.peek() {
            Some(Ok((next_key, _))) => bucket_newest_ms(next_key),
            _ => None,
        };
        let decided = Decided {
            pending: &mut pending,
            next_newest,
            reached: &mut reached,
            found: &mut found,
            scanned,
        };
        if decided.take(inner, query)? {
            return Ok((found, None));
        }
        // The page does not go below `floor` (where the scan of memory stopped): once the
        // next bucket holds only entries below it, the rest is the next page's.
        if floor.is_some_and(|floor| next_newest.is_some_and(|newest| newest < floor.0)) {
            return Ok((found, None));
        }
        // Stop at the bound only once something was decided, so the next page always
        // starts lower than this one.
        if *scanned >= inner.config.list_scan_limit && reached < below {
            return Ok((found, Some(reached)));
        }
    }
    Ok((found, None))
}
