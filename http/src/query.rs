//! The validators of query strings and path parameters, shared by the handlers and the
//! outbox: each names the parameter in its `400` and changes nothing.

use sagalog_engine::{is_valid_saga_id, ListQuery, PayloadMatch, MAX_PAYLOAD_FILTERS};

use crate::error::ApiError;
use crate::json;

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

/// The list's query string (`GET /api/v1/sagas`, and the bulk actions on a list):
/// `status`, `type`, `fromDate`, `toDate`, `id_prefix`, `payload.FIELD`, `limit`,
/// `cursor`; `limit` is `default_limit` when absent.
pub fn list_query(query: &str, default_limit: usize) -> Result<ListQuery, ApiError> {
    let mut list = ListQuery {
        limit: default_limit,
        ..ListQuery::default()
    };
    let invalid = |message: String| ApiError::bad_request("invalid_request", message);
    for (key, value) in form_urlencoded::parse(query.as_bytes()) {
        match key.as_ref() {
            "status" => {
                list.status = Some(value.parse().map_err(|e: String| invalid(format!("status: {e}")))?)
            }
            "type" if !value.is_empty() => list.saga_type = Some(value.into_owned()),
            "type" => {}
            "fromDate" => list.from_ms = Some(json::parse_rfc3339("fromDate", &value)?),
            "toDate" => list.to_ms = Some(json::parse_rfc3339("toDate", &value)?),
            "limit" => list.limit = parse_limit(&value)?,
            "cursor" => list.cursor = Some(value.into_owned()),
            "id_prefix" if !value.is_empty() => {
                if !is_valid_saga_id(&value) {
                    return Err(invalid(format!(
                        "id_prefix: {value:?} must match [A-Za-z0-9._:-]{{1,128}}, as saga ids do"
                    )));
                }
                list.id_prefix = Some(value.into_owned());
            }
            "id_prefix" => {}
            key if key.starts_with("payload.") => {
                if list.payload.len() == MAX_PAYLOAD_FILTERS {
                    return Err(invalid(format!(
                        "payload: at most {MAX_PAYLOAD_FILTERS} payload fields per list"
                    )));
                }
                let field = PayloadMatch::parse(&key["payload.".len()..], &value)
                    .map_err(|e| invalid(e.to_string()))?;
                list.payload.push(field);
            }
            other => {
                return Err(invalid(format!(
                    "unknown query parameter {other:?}; known: status, type, fromDate, toDate, id_prefix, payload.FIELD, limit, cursor"
                )))
            }
        }
    }
    Ok(list)
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
