//! Who may do what: the admin token (compared in constant time) and the refusal of a
//! browser's write from another origin.

use hyper::header::AUTHORIZATION;
use hyper::{HeaderMap, StatusCode};

use crate::error::ApiError;
use crate::routes::Route;

/// Checks the admin token `token`, when one is configured, against the request's
/// `Authorization` (for the routes that [`crate::routes::Matched::needs_admin`]).
pub(crate) fn check_admin(
    headers: &HeaderMap,
    token: Option<&str>,
    route: Route,
) -> Result<(), ApiError> {
    let Some(token) = token else {
        return Ok(());
    };
    let given = headers
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    match given {
        Some(given) if constant_time_eq(given.as_bytes(), token.as_bytes()) => Ok(()),
        Some(_) => Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "the bearer token does not match the admin token",
        )),
        None if route == Route::PutDefinition => Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "registering a definition needs an Authorization: Bearer <admin token> header \
             (a definition decides which commands go to which topic)",
        )),
        None => Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "/internal/ routes need an Authorization: Bearer <admin token> header",
        )),
    }
}

/// A write a browser sends from another origin is refused (`403 cross_origin`): a page
/// elsewhere must not start, reply to, or act on sagas through an operator's browser
/// (a server without an admin token takes any `/internal/` call). Browsers say where
/// the sending page is: `Sec-Fetch-Site` (decisive when present: `same-origin` and
/// `none` pass, `same-site` and `cross-site` do not), else `Origin`, which must name
/// the `Host` asked for (default ports aside) — a proxy that rewrites `Host` is then
/// still right, since the browser's `Sec-Fetch-Site` decides. Clients that are not
/// browsers send neither and are not affected. The console, served by this server, is
/// of the same origin.
pub(crate) fn same_origin(headers: &HeaderMap) -> Result<(), ApiError> {
    let refuse = |why: String| Err(ApiError::new(StatusCode::FORBIDDEN, "cross_origin", why));
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    match header("sec-fetch-site") {
        Some("same-origin" | "none") => return Ok(()),
        Some(site) => {
            return refuse(format!(
                "a write from another site's page is refused (Sec-Fetch-Site: {site})"
            ))
        }
        None => {}
    }
    let Some(origin) = header("origin") else {
        return Ok(());
    };
    let host = header("host").unwrap_or_default();
    let authority = |scheme: &str, default_port: &str| {
        origin
            .strip_prefix(scheme)
            .map(|a| a.strip_suffix(default_port).unwrap_or(a))
    };
    let host_without = |default_port: &str| host.strip_suffix(default_port).unwrap_or(host);
    let ours = match (authority("http://", ":80"), authority("https://", ":443")) {
        (Some(a), _) => a.eq_ignore_ascii_case(host_without(":80")),
        (_, Some(a)) => a.eq_ignore_ascii_case(host_without(":443")),
        _ => false,
    };
    if ours && !host.is_empty() {
        Ok(())
    } else {
        refuse(format!(
            "a write from a page of {origin:?} is refused: only this server's own pages ({host}) may write through a browser"
        ))
    }
}

/// Whether `a` and `b` are equal, in a time that depends on their lengths only.
pub(crate) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
