//! The route table (http/openapi.yaml): one list of (method, pattern) that the router matches,
//! the metrics label (`endpoint` is the pattern, never a raw id) and the OpenAPI test
//! checks against `openapi.yaml`.

use hyper::Method;

use crate::error::ApiError;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    StartSaga,
    Reply,
    GetSaga,
    History,
    ListSagas,
    Stats,
    Outbox,
    PutDefinition,
    ListDefinitions,
    OverrideStatus,
    Retry,
    BulkRetry,
    BulkOverride,
    DeadLetters,
    ReplayDeadLetter,
    Snapshot,
    Delivery,
    Pause,
    Resume,
    Metrics,
    Healthz,
    Readyz,
}

/// Every route: method, pattern, route. Path parameters are `{name}` segments.
pub const ROUTES: &[(&str, &str, Route)] = &[
    ("POST", "/api/v1/sagas", Route::StartSaga),
    ("GET", "/api/v1/sagas", Route::ListSagas),
    ("GET", "/api/v1/sagas/{id}", Route::GetSaga),
    ("POST", "/api/v1/sagas/{id}/events", Route::Reply),
    ("GET", "/api/v1/sagas/{id}/history", Route::History),
    ("GET", "/api/v1/stats", Route::Stats),
    ("GET", "/api/v1/outbox", Route::Outbox),
    ("GET", "/api/v1/definitions", Route::ListDefinitions),
    ("PUT", "/api/v1/definitions/{name}", Route::PutDefinition),
    // Before `{id}/retry`, which the same path would match with the id `bulk` (a saga
    // of that id is retried at `…/sagas/%62ulk/retry`: routes match the raw path).
    ("POST", "/internal/v1/sagas/bulk/retry", Route::BulkRetry),
    (
        "POST",
        "/internal/v1/sagas/bulk/override",
        Route::BulkOverride,
    ),
    (
        "PATCH",
        "/internal/v1/sagas/{id}/status",
        Route::OverrideStatus,
    ),
    ("POST", "/internal/v1/sagas/{id}/retry", Route::Retry),
    (
        "GET",
        "/internal/v1/outbox/dead-letters",
        Route::DeadLetters,
    ),
    (
        "POST",
        "/internal/v1/outbox/dead-letters/{offset}/replay",
        Route::ReplayDeadLetter,
    ),
    ("POST", "/internal/v1/snapshots", Route::Snapshot),
    ("GET", "/internal/v1/pause", Route::Delivery),
    ("POST", "/internal/v1/pause", Route::Pause),
    ("POST", "/internal/v1/resume", Route::Resume),
    ("GET", "/metrics", Route::Metrics),
    ("GET", "/healthz", Route::Healthz),
    ("GET", "/readyz", Route::Readyz),
];

/// A matched request: the route, its pattern, and the path parameter (if any).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Matched<'a> {
    pub route: Route,
    pub pattern: &'static str,
    pub param: Option<&'a str>,
}

impl Matched<'_> {
    pub fn is_internal(&self) -> bool {
        self.pattern.starts_with("/internal/")
    }

    /// Whether the route needs the admin token when one is configured: the `/internal/`
    /// routes, and registering a definition (a definition decides which commands go to
    /// which topic).
    pub fn needs_admin(&self) -> bool {
        self.is_internal() || self.route == Route::PutDefinition
    }
}

/// Matches `path` against `pattern`, giving the `{…}` segment's value.
fn match_pattern<'a>(pattern: &str, path: &'a str) -> Option<Option<&'a str>> {
    let mut param = None;
    let mut path_segments = path.split('/');
    for expected in pattern.split('/') {
        let got = path_segments.next()?;
        if expected.starts_with('{') {
            if got.is_empty() {
                return None;
            }
            param = Some(got);
        } else if expected != got {
            return None;
        }
    }
    path_segments.next().is_none().then_some(param)
}

/// The route for `method` and `path`: `404 not_found` for an unknown path, `405
/// method_not_allowed` (naming the allowed methods) for a known path.
pub fn route<'a>(method: &Method, path: &'a str) -> Result<Matched<'a>, ApiError> {
    let mut allowed = Vec::new();
    for &(m, pattern, route) in ROUTES {
        if let Some(param) = match_pattern(pattern, path) {
            if m == method.as_str() {
                return Ok(Matched {
                    route,
                    pattern,
                    param,
                });
            }
            if !allowed.contains(&m) {
                allowed.push(m);
            }
        }
    }
    if allowed.is_empty() {
        Err(ApiError::not_found(
            "not_found",
            format!("no route {path}; the API is described in openapi.yaml"),
        ))
    } else {
        Err(ApiError {
            allow: Some(allowed.join(", ")),
            ..ApiError::new(
                hyper::StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                format!("{path} takes {}, not {method}", allowed.join(", ")),
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_match_patterns_and_give_the_parameter() {
        let m = route(&Method::POST, "/api/v1/sagas/o-1/events").unwrap();
        assert_eq!((m.route, m.param), (Route::Reply, Some("o-1")));
        assert_eq!(m.pattern, "/api/v1/sagas/{id}/events");
        let m = route(&Method::GET, "/api/v1/sagas").unwrap();
        assert_eq!((m.route, m.param), (Route::ListSagas, None));
        assert!(route(&Method::PATCH, "/internal/v1/sagas/x/status")
            .unwrap()
            .is_internal());
    }

    #[test]
    fn unknown_paths_are_404_and_wrong_methods_405() {
        assert_eq!(
            route(&Method::GET, "/api/v1/nope").unwrap_err().code,
            "not_found"
        );
        assert_eq!(
            route(&Method::GET, "/api/v1/sagas/").unwrap_err().code,
            "not_found"
        );
        assert_eq!(
            route(&Method::GET, "/api/v1/sagas/a/b/c").unwrap_err().code,
            "not_found"
        );
        let e = route(&Method::DELETE, "/api/v1/sagas").unwrap_err();
        assert_eq!(e.status, hyper::StatusCode::METHOD_NOT_ALLOWED);
        assert!(e.message.contains("POST, GET"), "{}", e.message);
        assert_eq!(e.allow.as_deref(), Some("POST, GET"));
    }
}
