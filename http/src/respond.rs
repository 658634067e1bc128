//! Responses: a JSON body with its status, an [`ApiError`] in the API's one error shape
//! with its headers (`Retry-After`, `Allow`, `Connection: close`), and reading back a
//! response made here.

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{HeaderValue, ALLOW, CONNECTION, CONTENT_TYPE, RETRY_AFTER};
use hyper::{Response, StatusCode};
use serde_json::Value;

use crate::error::ApiError;

/// The body of every response.
pub type Body = Full<Bytes>;

/// A response with `body` as JSON.
pub(crate) fn respond(status: StatusCode, body: impl serde::Serialize) -> Response<Body> {
    respond_bytes(
        status,
        serde_json::to_vec(&body).expect("response bodies serialize"),
    )
}

/// The JSON body of a response made here (`Null` when it has none).
pub(crate) async fn response_json(response: Response<Body>) -> Value {
    let bytes = http_body_util::BodyExt::collect(response.into_body())
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    serde_json::from_slice(&bytes).unwrap_or_default()
}

/// A response with a JSON body already serialized.
pub(crate) fn respond_bytes(status: StatusCode, body: Vec<u8>) -> Response<Body> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

pub(crate) fn error_response(e: &ApiError) -> Response<Body> {
    let mut response = Response::new(Full::new(Bytes::from(e.body())));
    *response.status_mut() = e.status;
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    if let Some(seconds) = e.retry_after_s() {
        headers.insert(RETRY_AFTER, HeaderValue::from(seconds));
    }
    if e.close {
        headers.insert(CONNECTION, HeaderValue::from_static("close"));
    }
    if let Some(allow) = e
        .allow
        .as_deref()
        .and_then(|a| HeaderValue::from_str(a).ok())
    {
        headers.insert(ALLOW, allow);
    }
    response
}
