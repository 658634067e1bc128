//! The route table (http/openapi.yaml): one list of (method, pattern, route, scope)
//! that the router matches, the metrics label (`endpoint` is the pattern, never a raw
//! id) and the OpenAPI test checks against `openapi.yaml`. The scope says where a
//! route is answered on a server with other pods (see `fanout.rs`): forwarding
//! is read from the table, so a new route cannot be left unforwarded by omission.

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

/// Where a route is answered when the deployment has other pods.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// By the pod that was asked, from what it holds or is alone: its probes and
    /// metrics, its figures, its snapshots, its bulk runs, the definitions (alike on
    /// every pod).
    Pod,
    /// By the pod that holds the saga the path names.
    Saga,
    /// By the pod that holds the saga the body names; a saga without an id starts on
    /// the pod asked.
    Start,
    /// By the pod that holds the partition the query names (`?partition=`).
    Partition,
    /// By every pod, their answers merged.
    Merged(Merge),
    /// By every pod, each doing the same (a definition, a delivery pause).
    Everywhere,
}

/// How the answers of every pod make one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Merge {
    /// A page of sagas, newest first.
    Sagas,
    /// An outbox page, with a cursor over every partition.
    Outbox,
    /// A page of dead letters.
    DeadLetters,
}

/// Every route: method, pattern, route, scope. Path parameters are `{name}` segments.
pub const ROUTES: &[(&str, &str, Route, Scope)] = &[
    ("POST", "/api/v1/sagas", Route::StartSaga, Scope::Start),
    (
        "GET",
        "/api/v1/sagas",
        Route::ListSagas,
        Scope::Merged(Merge::Sagas),
    ),
    ("GET", "/api/v1/sagas/{id}", Route::GetSaga, Scope::Saga),
    (
        "POST",
        "/api/v1/sagas/{id}/events",
        Route::Reply,
        Scope::Saga,
    ),
    (
        "GET",
        "/api/v1/sagas/{id}/history",
        Route::History,
        Scope::Saga,
    ),
    ("GET", "/api/v1/stats", Route::Stats, Scope::Pod),
    (
        "GET",
        "/api/v1/outbox",
        Route::Outbox,
        Scope::Merged(Merge::Outbox),
    ),
    (
        "GET",
        "/api/v1/definitions",
        Route::ListDefinitions,
        Scope::Pod,
    ),
    (
        "PUT",
        "/api/v1/definitions/{name}",
        Route::PutDefinition,
        Scope::Everywhere,
    ),
    // Before `{id}/retry`, which the same path would match with the id `bulk` (a saga
    // of that id is retried at `…/sagas/%62ulk/retry`: routes match the raw path).
    (
        "POST",
        "/internal/v1/sagas/bulk/retry",
        Route::BulkRetry,
        Scope::Pod,
    ),
    (
        "POST",
        "/internal/v1/sagas/bulk/override",
        Route::BulkOverride,
        Scope::Pod,
    ),
    (
        "PATCH",
        "/internal/v1/sagas/{id}/status",
        Route::OverrideStatus,
        Scope::Saga,
    ),
    (
        "POST",
        "/internal/v1/sagas/{id}/retry",
        Route::Retry,
        Scope::Saga,
    ),
    (
        "GET",
        "/internal/v1/outbox/dead-letters",
        Route::DeadLetters,
        Scope::Merged(Merge::DeadLetters),
    ),
    (
        "POST",
        "/internal/v1/outbox/dead-letters/{offset}/replay",
        Route::ReplayDeadLetter,
        Scope::Partition,
    ),
    (
        "POST",
        "/internal/v1/snapshots",
        Route::Snapshot,
        Scope::Pod,
    ),
    ("GET", "/internal/v1/pause", Route::Delivery, Scope::Pod),
    (
        "POST",
        "/internal/v1/pause",
        Route::Pause,
        Scope::Everywhere,
    ),
    (
        "POST",
        "/internal/v1/resume",
        Route::Resume,
        Scope::Everywhere,
    ),
    ("GET", "/metrics", Route::Metrics, Scope::Pod),
    ("GET", "/healthz", Route::Healthz, Scope::Pod),
    ("GET", "/readyz", Route::Readyz, Scope::Pod),
];

/// A matched request: the route, its pattern, and the path parameter (if any).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Matched<'a> {
    pub route: Route,
    pub scope: Scope,
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
    for &(m, pattern, route, scope) in ROUTES {
        if let Some(param) = match_pattern(pattern, path) {
            if m == method.as_str() {
                return Ok(Matched {
                    route,
                    scope,
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
            crate::error::code::NOT_FOUND,
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

    /// Every route, named in a `match` without a wildcard: a new route does not compile
    /// here until it is listed, and then fails below until the table gives it a scope.
    fn every_route() -> Vec<Route> {
        let all = [
            Route::StartSaga,
            Route::Reply,
            Route::GetSaga,
            Route::History,
            Route::ListSagas,
            Route::Stats,
            Route::Outbox,
            Route::PutDefinition,
            Route::ListDefinitions,
            Route::OverrideStatus,
            Route::Retry,
            Route::BulkRetry,
            Route::BulkOverride,
            Route::DeadLetters,
            Route::ReplayDeadLetter,
            Route::Snapshot,
            Route::Delivery,
            Route::Pause,
            Route::Resume,
            Route::Metrics,
            Route::Healthz,
            Route::Readyz,
        ];
        for route in all {
            match route {
                Route::StartSaga
                | Route::Reply
                | Route::GetSaga
                | Route::History
                | Route::ListSagas
                | Route::Stats
                | Route::Outbox
                | Route::PutDefinition
                | Route::ListDefinitions
                | Route::OverrideStatus
                | Route::Retry
                | Route::BulkRetry
                | Route::BulkOverride
                | Route::DeadLetters
                | Route::ReplayDeadLetter
                | Route::Snapshot
                | Route::Delivery
                | Route::Pause
                | Route::Resume
                | Route::Metrics
                | Route::Healthz
                | Route::Readyz => {}
            }
        }
        all.to_vec()
    }

    #[test]
    fn every_route_has_one_row_and_a_scope_that_fits_it() {
        for route in every_route() {
            let rows: Vec<_> = ROUTES.iter().filter(|row| row.2 == route).collect();
            assert_eq!(
                rows.len(),
                1,
                "{route:?} must have one row in ROUTES: {rows:?}"
            );
            let &(method, pattern, _, scope) = rows[0];
            match scope {
                Scope::Saga => assert!(
                    pattern.contains("/sagas/{id}"),
                    "{route:?} is forwarded to the pod of the saga its path names, but {pattern} names none"
                ),
                Scope::Merged(_) => assert_eq!(method, "GET", "{route:?}: only reads are merged"),
                Scope::Everywhere | Scope::Start | Scope::Partition => {
                    assert_ne!(method, "GET", "{route:?}: a read is not sent to every pod")
                }
                Scope::Pod => {}
            }
        }
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
