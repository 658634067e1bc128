//! The validators of query strings and path parameters, shared by the handlers and the
//! outbox: each names the parameter in its `400` and changes nothing.

use sagalog_engine::is_valid_saga_id;

use crate::error::ApiError;

/// Largest `limit` of a list or outbox call.
pub const MAX_LIMIT: usize = sagalog_engine::MAX_LIST_LIMIT;
/// `limit` when a list or outbox call gives none.
pub const DEFAULT_LIMIT: usize = 100;

/// A non-negative integer (an offset, a wait), named `field` in the error.
pub fn parse_u64(field: &str, value: &str) -> Result<u64, ApiError> {
    value.parse().map_err(|_| {
        ApiError::bad_request(
            "invalid_request",
            format!("{field}: {value:?} is not a non-negative integer"),
        )
    })
}

/// A path parameter, percent-decoded (`a%3Ab` is `a:b`).
pub fn path_segment(raw: &str) -> Result<String, ApiError> {
    percent_encoding::percent_decode_str(raw)
        .decode_utf8()
        .map(|s| s.into_owned())
        .map_err(|_| {
            ApiError::bad_request(
                "invalid_request",
                format!("the path segment {raw:?} is not percent-encoded UTF-8"),
            )
        })
}

/// A definitions cursor, `name/version`.
pub fn parse_definition_cursor(value: &str) -> Result<(String, u32), ApiError> {
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

/// `limit`: 1 to [`MAX_LIMIT`].
pub fn parse_limit(value: &str) -> Result<usize, ApiError> {
    match value.parse::<usize>() {
        Ok(limit) if (1..=MAX_LIMIT).contains(&limit) => Ok(limit),
        _ => Err(ApiError::bad_request(
            "invalid_request",
            format!("limit: {value:?} is not a number from 1 to {MAX_LIMIT}"),
        )),
    }
}

/// A saga id from the path.
pub fn saga_id(id: &str) -> Result<&str, ApiError> {
    if is_valid_saga_id(id) {
        Ok(id)
    } else {
        Err(ApiError::bad_request(
            "invalid_saga_id",
            format!("saga id {id:?} must match [A-Za-z0-9._:-]{{1,128}}"),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_are_one_to_a_thousand() {
        assert_eq!(parse_limit("1000").unwrap(), 1000);
        assert!(parse_limit("1001").is_err());
        assert!(parse_limit("0").is_err());
        assert!(parse_limit("ten").is_err());
    }
}
