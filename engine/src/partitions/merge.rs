//! The merge of list pages from several partitions (or pods) into one, with a cursor
//! that neither skips nor repeats.

use crate::api::ListPage;
use crate::error::Result;
use crate::render::view::SagaView;

/// One page newest first out of pages of the same query from several partitions, so
/// that following `next_cursor` lists every saga once, with no gap.
///
/// Each page holds every saga of its partition from the query's cursor down to its own
/// `next_cursor` (its last saga, or the floor where its scan stopped), or all the rest
/// when it has none. Below the highest of those stops some partition has not been read,
/// so the page keeps only what lies at or above it; at most `limit` sagas and about
/// `max_bytes`, its cursor then going on from its last saga.
pub fn merge_pages(pages: Vec<ListPage>, limit: usize, max_bytes: usize) -> Result<ListPage> {
    let pages = pages
        .into_iter()
        .map(|page| (page.items, page.next_cursor))
        .collect();
    let (items, next_cursor) = merge_by(
        pages,
        limit,
        max_bytes,
        |v: &SagaView| (v.updated_at_ms, v.saga_id.clone()),
        crate::service::list::listed_bytes,
    )?;
    Ok(ListPage { items, next_cursor })
}

/// [`merge_pages`] over pages of anything with a list position (`updated_at` in unix
/// ms, saga id) and a size: the pages of partitions, or of pods.
pub fn merge_by<T>(
    pages: Vec<(Vec<T>, Option<String>)>,
    limit: usize,
    max_bytes: usize,
    position: impl Fn(&T) -> (u64, String),
    size: impl Fn(&T) -> usize,
) -> Result<(Vec<T>, Option<String>)> {
    use crate::service::list::{encode_cursor, parse_cursor};
    let mut stop: Option<(u64, String)> = None;
    for (_, cursor) in &pages {
        if let Some(cursor) = cursor {
            let (at, id) = parse_cursor(cursor)?;
            stop = stop.max(Some((at, id.to_string())));
        }
    }
    let mut items: Vec<T> = pages
        .into_iter()
        .flat_map(|(items, _)| items)
        .filter(|v| stop.as_ref().is_none_or(|s| position(v) >= *s))
        .collect();
    items.sort_by_key(|v| std::cmp::Reverse(position(v)));
    let mut bytes = 0;
    let mut keep = 0;
    for item in &items {
        bytes += size(item);
        if keep == limit || (bytes > max_bytes && keep > 0) {
            break;
        }
        keep += 1;
    }
    let cut = keep < items.len();
    items.truncate(keep);
    let encode = |(at, id): &(u64, String)| encode_cursor((*at, id));
    let next_cursor = if cut {
        items.last().map(|v| encode(&position(v)))
    } else {
        stop.as_ref().map(encode)
    };
    Ok((items, next_cursor))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(id: &str, at: u64) -> SagaView {
        SagaView {
            saga_id: id.into(),
            saga_type: "t".into(),
            definition_version: 1,
            status: crate::Status::Completed,
            current_step: None,
            steps: Vec::new(),
            created_at_ms: at,
            updated_at_ms: at,
            failure_reason: None,
            trace_id: String::new(),
            payload: "{}".into(),
            failed_step: None,
            failed_at_ms: None,
        }
    }

    #[test]
    fn merged_pages_keep_the_order_and_stop_where_a_partition_stopped() {
        // Partition A gave 3 of more (down to 70); B stopped its scan at the floor 60
        // with one saga; C is exhausted.
        let a = ListPage {
            items: vec![view("a1", 90), view("a2", 80), view("a3", 70)],
            next_cursor: Some("70_a3".into()),
        };
        let b = ListPage {
            items: vec![view("b1", 85)],
            next_cursor: Some("60_floor".into()),
        };
        let c = ListPage {
            items: vec![view("c1", 95), view("c2", 65), view("c3", 10)],
            next_cursor: None,
        };
        let page = merge_pages(vec![a.clone(), b.clone(), c.clone()], 10, usize::MAX).unwrap();
        let ids: Vec<&str> = page.items.iter().map(|v| v.saga_id.as_str()).collect();
        // Below 70, A was not read: c2 and c3 wait for the next page.
        assert_eq!(ids, ["c1", "a1", "b1", "a2", "a3"]);
        assert_eq!(page.next_cursor.as_deref(), Some("70_a3"));
        // A limit cuts the page at its last saga.
        let page = merge_pages(vec![a, b, c], 2, usize::MAX).unwrap();
        let ids: Vec<&str> = page.items.iter().map(|v| v.saga_id.as_str()).collect();
        assert_eq!(ids, ["c1", "a1"]);
        assert_eq!(page.next_cursor.as_deref(), Some("90_a1"));
        // Every partition exhausted: the last page.
        let page = merge_pages(
            vec![ListPage {
                items: vec![view("x", 5)],
                next_cursor: None,
            }],
            10,
            usize::MAX,
        )
        .unwrap();
        assert_eq!(page.next_cursor, None);
    }
}
