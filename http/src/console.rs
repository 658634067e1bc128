//! The operator console under `/console/`: static files embedded at build time (see
//! `build.rs`), a single page that talks only to the public JSON API.
//!
//! Every answer under `/console` carries the same security headers: a
//! Content-Security-Policy that allows only the console's own scripts, styles and API
//! (no inline script or style, no framing, no other origin), `X-Content-Type-Options:
//! nosniff`, `X-Frame-Options: DENY` and `Referrer-Policy: no-referrer`. Files are
//! revalidated on each load (`Cache-Control: no-cache`) against an `ETag` of their
//! bytes, so an upgraded server never serves a stale mix.

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{
    HeaderValue, ALLOW, CACHE_CONTROL, CONTENT_SECURITY_POLICY, CONTENT_TYPE, ETAG, IF_NONE_MATCH,
    LOCATION, REFERRER_POLICY, X_CONTENT_TYPE_OPTIONS, X_FRAME_OPTIONS,
};
use hyper::{HeaderMap, Method, Response, StatusCode};

/// Every file of the console: its path under `/console/` and its bytes.
pub static ASSETS: &[(&str, &[u8])] = include!(concat!(env!("OUT_DIR"), "/console_assets.rs"));

/// The console's Content-Security-Policy.
pub const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
connect-src 'self'; font-src 'self'; object-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'";

/// The console's path prefix: `/console` itself is redirected to `/console/`.
pub const PREFIX: &str = "/console";

/// Whether `path` is the console's.
pub fn is_console(path: &str) -> bool {
    path == PREFIX || path.starts_with("/console/")
}

/// The answer to `method path` under [`PREFIX`].
pub fn respond(method: &Method, path: &str, headers: &HeaderMap) -> Response<Full<Bytes>> {
    if method != Method::GET && method != Method::HEAD {
        let mut response = text(
            StatusCode::METHOD_NOT_ALLOWED,
            format!("{path} takes GET, not {method}"),
        );
        response
            .headers_mut()
            .insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
        return response;
    }
    if path == PREFIX {
        let mut response = text(
            StatusCode::PERMANENT_REDIRECT,
            "the console is at /console/".into(),
        );
        response
            .headers_mut()
            .insert(LOCATION, HeaderValue::from_static("/console/"));
        return response;
    }
    let name = match &path[PREFIX.len() + 1..] {
        "" => "index.html",
        name => name,
    };
    let Some(&(_, bytes)) = ASSETS.iter().find(|(asset, _)| *asset == name) else {
        return text(
            StatusCode::NOT_FOUND,
            format!("no console file {path}; the console starts at /console/"),
        );
    };
    let etag = format!("\"{:016x}\"", fnv1a(bytes));
    let fresh = headers
        .get(IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|tags| tags.split(',').any(|t| t.trim() == etag));
    let body = if fresh || method == Method::HEAD {
        Bytes::new()
    } else {
        Bytes::from_static(bytes)
    };
    let mut response = secured(Response::new(Full::new(body)));
    if fresh {
        *response.status_mut() = StatusCode::NOT_MODIFIED;
    }
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type(name)));
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert(
        ETAG,
        HeaderValue::from_str(&etag).expect("hex is a header value"),
    );
    response
}

/// A plain-text answer (an error or a redirect), with the security headers.
fn text(status: StatusCode, message: String) -> Response<Full<Bytes>> {
    let mut response = secured(Response::new(Full::new(Bytes::from(message))));
    *response.status_mut() = status;
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

fn secured(mut response: Response<Full<Bytes>>) -> Response<Full<Bytes>> {
    let headers = response.headers_mut();
    headers.insert(CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    headers.insert(X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    response
}

fn content_type(name: &str) -> &'static str {
    match name.rsplit_once('.').map(|(_, ext)| ext) {
        Some("html") => "text/html; charset=utf-8",
        Some("js" | "mjs") => "text/javascript; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        Some("svg") => "image/svg+xml",
        Some("png") => "image/png",
        Some("ico") => "image/x-icon",
        Some("json") => "application/json",
        _ => "text/plain; charset=utf-8",
    }
}

/// 64-bit FNV-1a: an ETag needs only to change when the bytes do.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, &b| {
        (hash ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_console_is_embedded_with_its_page_and_modules() {
        assert!(ASSETS.iter().any(|(name, _)| *name == "index.html"));
        assert!(ASSETS.iter().any(|(name, _)| name.ends_with(".js")));
        let page = respond(&Method::GET, "/console/", &HeaderMap::new());
        assert_eq!(page.status(), StatusCode::OK);
        let headers = page.headers();
        assert_eq!(headers[CONTENT_TYPE], "text/html; charset=utf-8");
        assert_eq!(headers[CONTENT_SECURITY_POLICY], CSP);
        assert!(!CSP.contains("unsafe"), "no inline script or style");
        assert_eq!(headers[X_CONTENT_TYPE_OPTIONS], "nosniff");
        assert_eq!(headers[X_FRAME_OPTIONS], "DENY");
        // Revalidation answers 304 with the same ETag.
        let mut conditional = HeaderMap::new();
        conditional.insert(IF_NONE_MATCH, headers[ETAG].clone());
        let again = respond(&Method::GET, "/console/", &conditional);
        assert_eq!(again.status(), StatusCode::NOT_MODIFIED);
    }

    #[test]
    fn unknown_files_other_methods_and_the_bare_prefix_get_their_answers_with_the_headers() {
        let missing = respond(&Method::GET, "/console/nope.js", &HeaderMap::new());
        assert_eq!(missing.status(), StatusCode::NOT_FOUND);
        assert_eq!(missing.headers()[CONTENT_SECURITY_POLICY], CSP);
        let post = respond(&Method::POST, "/console/", &HeaderMap::new());
        assert_eq!(post.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(post.headers()[ALLOW], "GET, HEAD");
        let bare = respond(&Method::GET, "/console", &HeaderMap::new());
        assert_eq!(bare.status(), StatusCode::PERMANENT_REDIRECT);
        assert_eq!(bare.headers()[LOCATION], "/console/");
        assert!(is_console("/console") && is_console("/console/js/app.js"));
        assert!(!is_console("/consoles"));
    }
}
