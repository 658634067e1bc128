//! Listing sagas newest first (by `updated_at`), filtered by status, type and date,
//! paged by an opaque cursor. Active sagas are listed from memory; finished ones from
//! the `finished` index (a finished saga may briefly be in both until the indexer
//! lets it leave memory; it is listed once).

use std::ops::Bound;
use std::sync::Arc;

use crate::engine::{Inner, ListPage, ListQuery, MAX_LIST_SCAN};
use crate::error::{EngineError, Result};
use crate::indexing::{finished_key, parse_finished_key, SagaMeta};
use crate::record::Status;

/// Most items one page may hold.
pub const MAX_LIST_LIMIT: usize = 1000;
/// In-memory entries copied per lock hold while listing.
const CHUNK: usize = 1024;

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
        let (found, short) = from_memory(
            inner,
            status,
            cursor.clone(),
            from_ms,
            to_ms,
            query,
            &mut scanned,
        );
        candidates.extend(found);
        cut_short |= short;
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
    let meta = inner.index.get(&inner.keys.saga, id.as_bytes())?;
    Ok(meta
        .and_then(|value| SagaMeta::decode(&value))
        .is_some_and(|meta| meta.saga_type == want))
}

/// Up to `query.limit` in-memory sagas of `status` below the cursor; and whether the
/// scan stopped at its bound before the sagas ran out.
fn from_memory(
    inner: &Inner,
    status: Status,
    mut position: Option<Position>,
    from_ms: u64,
    to_ms: u64,
    query: &ListQuery,
    scanned: &mut usize,
) -> (Vec<Position>, bool) {
    let mut found = Vec::new();
    loop {
        let chunk: Vec<Position> = inner
            .projections
            .lock()
            .newest(status, position.as_ref(), from_ms, to_ms)
            .take(CHUNK)
            .cloned()
            .collect();
        let Some(last) = chunk.last().cloned() else {
            return (found, false);
        };
        for entry in chunk {
            *scanned += 1;
            if type_matches(inner, &entry.1, query.saga_type.as_deref()).unwrap_or(false) {
                found.push(entry);
                if found.len() == query.limit {
                    return (found, false);
                }
            }
        }
        if *scanned >= MAX_LIST_SCAN {
            return (found, true);
        }
        position = Some(last);
    }
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
