//! The cursors the API hands out and takes back, each written and read in one place:
//! the outbox's (`c.` and each partition's offset or `n`), a partitioned server's dead
//! letters' (`PARTITION.OFFSET`) and the definitions' (`name/version`). A list of
//! sagas' cursor is the engine's (`sagalog_engine::ListPage`).

use crate::error::ApiError;

/// A partitioned outbox's cursor: after these offsets, by partition.
pub fn encode_outbox(positions: &[Option<u64>]) -> String {
    let mut out = String::from("c");
    for position in positions {
        out.push('.');
        match position {
            Some(offset) => out.push_str(&offset.to_string()),
            None => out.push('n'),
        }
    }
    out
}

pub fn parse_outbox(value: &str) -> Option<Vec<Option<u64>>> {
    let rest = value.strip_prefix("c.")?;
    rest.split('.')
        .map(|part| match part {
            "n" => Some(None),
            offset => offset.parse().ok().map(Some),
        })
        .collect()
}

/// The dead letters' cursor of a partitioned server: after `offset` of partition `p`.
pub fn encode_dead_letter(p: u32, offset: u64) -> String {
    format!("{p}.{offset}")
}

/// A dead-letter cursor of a partitioned server: `PARTITION.OFFSET`.
pub fn parse_dead_letter(value: &str) -> Result<(u32, u64), ApiError> {
    let bad = || {
        ApiError::bad_request(
            "invalid_request",
            format!("after: {value:?} is not PARTITION.OFFSET (a next_after this server returned)"),
        )
    };
    let (p, offset) = value.split_once('.').ok_or_else(bad)?;
    Ok((
        p.parse().map_err(|_| bad())?,
        offset.parse().map_err(|_| bad())?,
    ))
}

/// The definitions' cursor: after version `version` of `name`.
pub fn encode_definition(name: &str, version: u32) -> String {
    format!("{name}/{version}")
}

/// A definitions cursor, `name/version`.
pub fn parse_definition(value: &str) -> Result<(String, u32), ApiError> {
    value
        .split_once('/')
        .and_then(|(name, version)| Some((name.to_string(), version.parse().ok()?)))
        .filter(|(name, _)| sagalog_engine::definition::is_valid_name(name))
        .ok_or_else(|| {
            ApiError::bad_request(
                "invalid_request",
                format!("cursor: {value:?} is not a cursor this server returned"),
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_cursor_reads_back_what_it_wrote_and_refuses_others() {
        let positions = vec![Some(12), None, Some(0), Some(99)];
        let cursor = encode_outbox(&positions);
        assert_eq!(cursor, "c.12.n.0.99");
        assert_eq!(parse_outbox(&cursor), Some(positions));
        for bad in ["c.", "c.x", "c.1..2", "12", "c.-1"] {
            assert_eq!(parse_outbox(bad), None, "{bad}");
        }
        assert_eq!(
            parse_dead_letter(&encode_dead_letter(3, 17)).unwrap(),
            (3, 17)
        );
        assert!(parse_dead_letter("3-17").is_err());
        assert_eq!(
            parse_definition(&encode_definition("order", 2)).unwrap(),
            ("order".to_string(), 2)
        );
        assert!(parse_definition("order/two").is_err());
    }
}
