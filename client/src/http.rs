//! The connections: HTTP/1.1 keep-alive over hyper, a few kept open for reuse, each
//! request with a deadline.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1;
use hyper::header::{AUTHORIZATION, CONTENT_TYPE, HOST};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use serde::de::DeserializeOwned;
use tokio::net::TcpStream;

use crate::Error;

/// Idle connections kept for reuse; more may be open at once, and are closed after use.
const MAX_IDLE: usize = 8;
/// Most bytes of an answer read (the server's largest answers are list pages).
const MAX_ANSWER_BYTES: usize = 64 << 20;

/// Where the server is and how to talk to it.
#[derive(Debug)]
pub(crate) struct Connections {
    addr: SocketAddr,
    host: String,
    token: Option<String>,
    timeout: Duration,
    idle: Mutex<Vec<http1::SendRequest<Full<Bytes>>>>,
}

/// A status and body the server answered.
pub(crate) struct Answer {
    pub status: StatusCode,
    pub body: Bytes,
    pub retry_after: Option<Duration>,
}

impl Connections {
    pub fn new(addr: SocketAddr, token: Option<String>, timeout: Duration) -> Arc<Connections> {
        Arc::new(Connections {
            addr,
            host: addr.to_string(),
            token,
            timeout,
            idle: Mutex::new(Vec::new()),
        })
    }

    async fn connect(&self) -> Result<http1::SendRequest<Full<Bytes>>, Error> {
        let stream = TcpStream::connect(self.addr)
            .await
            .map_err(|source| Error::Connect {
                addr: self.addr,
                source,
            })?;
        let _ = stream.set_nodelay(true);
        let (sender, connection) = http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| Error::Transport(e.to_string()))?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok(sender)
    }

    /// Sends one request (JSON `body` when given) and reads the answer, within the
    /// deadline plus `extra` (a long poll's wait).
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
        extra: Duration,
    ) -> Result<Answer, Error> {
        let deadline = self.timeout + extra;
        match tokio::time::timeout(deadline, self.send_now(method, path, body)).await {
            Ok(answer) => answer,
            Err(_) => Err(Error::Timeout(deadline)),
        }
    }

    async fn send_now(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<Answer, Error> {
        let reused = self.idle.lock().expect("not poisoned").pop();
        let mut sender = match reused {
            Some(sender) if !sender.is_closed() => sender,
            _ => self.connect().await?,
        };
        sender
            .ready()
            .await
            .map_err(|e| Error::Transport(e.to_string()))?;
        let mut request = Request::builder()
            .method(method)
            .uri(path)
            .header(HOST, &self.host);
        if let Some(token) = &self.token {
            request = request.header(AUTHORIZATION, format!("Bearer {token}"));
        }
        if body.is_some() {
            request = request.header(CONTENT_TYPE, "application/json");
        }
        let request = request
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|e| Error::Transport(e.to_string()))?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| Error::Transport(e.to_string()))?;
        let status = response.status();
        let retry_after = response
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok())
            .map(Duration::from_secs);
        let limited = http_body_util::Limited::new(response.into_body(), MAX_ANSWER_BYTES);
        let body = limited
            .collect()
            .await
            .map_err(|e| Error::Transport(e.to_string()))?
            .to_bytes();
        let mut idle = self.idle.lock().expect("not poisoned");
        if idle.len() < MAX_IDLE && !sender.is_closed() {
            idle.push(sender);
        }
        Ok(Answer {
            status,
            body,
            retry_after,
        })
    }
}

impl Answer {
    /// The body as `T` when the status is `want`; else the server's error.
    pub fn into_json<T: DeserializeOwned>(self, want: &[StatusCode]) -> Result<T, Error> {
        if !want.contains(&self.status) {
            return Err(Error::from_answer(self));
        }
        serde_json::from_slice(&self.body).map_err(|e| Error::Decode(e.to_string()))
    }
}
