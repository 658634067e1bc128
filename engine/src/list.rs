//! Listing sagas newest first (by `updated_at`), filtered by status, type and date,
//! paged by an opaque cursor. Active sagas are listed from memory; finished ones from
//! the `finished` index (a finished saga may briefly be in both until the indexer
//! lets it leave memory; it is listed once).

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::ops::Bound;
use std::sync::Arc;

use crate::engine::{Inner, ListPage, ListQuery, MAX_LIST_SCAN};
use crate::error::{EngineError, Result};
use crate::indexing::{finished_key, parse_finished_key, read_saga_record, SagaMeta};
use crate::record::{Kind, Status};

/// Most items one page may hold.
pub const MAX_LIST_LIMIT: usize = 1000;

type Position = (u64, Arc<str>);

/// `{updated_at_ms}_{saga_id}` (saga ids never contain `_`).
fn encode_cursor(position: &Position) -> String {
    format!("{}_{}", position.0, position.1)
}

fn parse_cursor(cursor: &str) -> Result<Position> {
    let bad = || EngineError::InvalidRequest {
        field: "cursor",
        message: format!("{cursor:?} is not a cursor this server returned"),
    };
    let (at, id) = cursor.split_once('_').ok_or_else(bad)?;
    let at = at.parse::<u64>().map_err(|_| bad())?;
    if !crate::engine::is_valid_saga_id(id) {
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
        return Err(EngineError::InvalidRequest {
            field: "fromDate",
            message: "fromDate is after toDate".into(),
        });
    }
    let statuses: Vec<Status> = match query.status {
        Some(status) => vec![status],
        None => Status::ALL.to_vec(),
    };
    let want = query.limit;
    let mut scanned = 0usize;
    let mut candidates: Vec<Position> = Vec::new();
    let mut cut_short = false;
    for &status in &statuses {
        candidates.extend(from_memory(
            inner,
            status,
            cursor.as_ref(),
            from_ms,
            to_ms,
            query,
        ));
        if status.is_terminal() {
            let (found, short) = from_index(
                inner,
                status,
                cursor.as_ref(),
                from_ms,
                to_ms,
                query,
                &mut scanned,
            )?;
            candidates.extend(found);
            cut_short |= short;
        }
    }
    candidates.sort_by(|a, b| b.cmp(a));
    candidates.dedup_by(|a, b| a.1 == b.1);
    candidates.truncate(want);
    let mut items = Vec::with_capacity(candidates.len());
    for (_, id) in &candidates {
        match inner_get(inner, id) {
            Ok(view) => items.push(view),
            // Gone between listing and reading (cannot happen today: sagas are never
            // deleted); skip rather than fail the page.
            Err(EngineError::SagaNotFound { .. }) => {}
            Err(e) => return Err(e),
        }
    }
    let next_cursor = (candidates.len() == want || cut_short)
        .then(|| candidates.last().map(encode_cursor))
        .flatten();
    Ok(ListPage { items, next_cursor })
}

fn inner_get(inner: &Inner, id: &str) -> Result<crate::view::SagaView> {
    inner.get_view(id)
}

fn type_matches(inner: &Inner, id: &str, want: Option<&str>) -> Result<bool> {
    let Some(want) = want else { return Ok(true) };
    if let Some(saga_type) = inner.saga_type_in_memory(id) {
        return Ok(saga_type == want);
    }
    // A finished saga: its type is in its first record.
    let Some(meta) = inner
        .index
        .get(&inner.keys.saga, id.as_bytes())?
        .and_then(|value| SagaMeta::decode(&value))
    else {
        return Ok(false);
    };
    match read_saga_record(&inner.log, meta.first_offset)?.1.kind {
        Kind::SagaStarted { saga_type, .. } => Ok(saga_type == want),
        _ => Ok(false),
    }
}

/// The newest `query.limit` in-memory sagas of `status` below the cursor: one pass
/// over the sagas in memory keeping the best ones in a bounded heap.
fn from_memory(
    inner: &Inner,
    status: Status,
    cursor: Option<&Position>,
    from_ms: u64,
    to_ms: u64,
    query: &ListQuery,
) -> Vec<Position> {
    let mut best: BinaryHeap<Reverse<Position>> = BinaryHeap::with_capacity(query.limit + 1);
    for shard in inner.shards.iter() {
        let sagas = shard.sagas.lock();
        for slot in sagas.values() {
            let state = &slot.state;
            let at = state.updated_at_ms;
            if state.status != Some(status) || at < from_ms || at > to_ms {
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
            let better = best.len() < query.limit
                || best
                    .peek()
                    .is_some_and(|Reverse((b_at, b_id))| (at, &*state.saga_id) > (*b_at, &**b_id));
            if better {
                best.push(Reverse((at, state.saga_id.clone())));
                if best.len() > query.limit {
                    best.pop();
                }
            }
        }
    }
    best.into_iter().map(|Reverse(p)| p).collect()
}

fn from_index(
    inner: &Inner,
    status: Status,
    cursor: Option<&Position>,
    from_ms: u64,
    to_ms: u64,
    query: &ListQuery,
    scanned: &mut usize,
) -> Result<(Vec<Position>, bool)> {
    let lower = finished_key(status, from_ms, "");
    let past_to = match to_ms.checked_add(1) {
        Some(ms) => finished_key(status, ms, ""),
        None => vec![status.index() as u8 + 1],
    };
    let upper = match cursor {
        Some((at, id)) => finished_key(status, *at, id).min(past_to),
        None => past_to,
    };
    let mut found = Vec::new();
    if lower >= upper {
        return Ok((found, false));
    }
    let range = (
        Bound::Included(lower.as_slice()),
        Bound::Excluded(upper.as_slice()),
    );
    for entry in inner.index.range(&inner.keys.finished, range).rev() {
        let (key, _) = entry?;
        let (_, at, id) = parse_finished_key(&key).ok_or_else(|| {
            EngineError::Inconsistent(format!("unreadable finished-index key {key:?}"))
        })?;
        *scanned += 1;
        if type_matches(inner, &id, query.saga_type.as_deref())? {
            found.push((at, Arc::from(id.as_str())));
            if found.len() == query.limit {
                return Ok((found, false));
            }
        }
        if *scanned >= MAX_LIST_SCAN {
            return Ok((found, true));
        }
    }
    Ok((found, false))
}
