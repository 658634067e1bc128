//! The HTTP/1.1 server: an accept loop bounded by a connection limit, one hyper
//! connection task per client (keep-alive), and a graceful stop — stop accepting, let
//! requests in flight finish (bounded by [`SHUTDOWN_GRACE`]), then return so the caller
//! can close the engine.
//!
//! Past the limit no client waits in silence. A connection over `max_connections` goes
//! to a small *overflow lane* ([`OVERFLOW_CONNECTIONS`]): it is served one request with
//! a short header deadline — `/healthz` and `/readyz` are answered as usual, anything
//! else gets `503` with `Retry-After` — and closed. When even the lane is full the
//! connection is closed at once. So a flood of idle connections costs a probe at most
//! a short wait; a deployment can also give its probes a listener of their own
//! ([`serve_probes`], `--probe-listen`), which a flood of the API port never reaches.
//!
//! Answers hyper makes by itself for a request it cannot parse (`400`, `414`, `431`)
//! get the API's JSON error body, and a client that reads none of an answer for the
//! write timeout is closed ([`ClientStream`]).

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

use crate::app::{App, SHUTDOWN_GRACE};
use crate::error::ApiError;
use crate::respond::error_response;

/// Connections past the limit served one probe (or one `503`) each, at once.
pub const OVERFLOW_CONNECTIONS: usize = 64;
/// Longest an overflow connection may take to send its request's headers.
const OVERFLOW_HEADER_TIMEOUT: Duration = Duration::from_secs(2);
/// The pause after a failed accept (out of file descriptors and the like).
const ACCEPT_RETRY: Duration = Duration::from_millis(50);
/// At a stop: how long connections between requests get to see it, then how often the
/// requests still in flight are counted.
const DRAIN_SETTLE: Duration = Duration::from_millis(50);
const DRAIN_POLL: Duration = Duration::from_millis(20);
/// Connections a probe listener serves at once (kubelet and Prometheus need a few).
pub const PROBE_CONNECTIONS: usize = 32;

/// How the server treats its connections.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Connections served at once; past it, the overflow lane.
    pub max_connections: usize,
    /// Longest a client may take to send a request's headers (also how long a
    /// keep-alive connection may sit idle between requests).
    pub header_timeout: Duration,
    /// Longest a write of an answer may wait for room in the socket (a client that
    /// reads nothing, or too slowly to free room); then
    /// the connection is closed (a client that never reads cannot hold its slot).
    pub write_timeout: Duration,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            max_connections: 1024,
            header_timeout: Duration::from_secs(30),
            write_timeout: Duration::from_secs(30),
        }
    }
}

/// Serves `app` on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    app: Arc<App>,
    config: ServerConfig,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let permits = Arc::new(Semaphore::new(config.max_connections.max(1)));
    let overflow = Arc::new(Semaphore::new(OVERFLOW_CONNECTIONS));
    let graceful = GracefulShutdown::new();
    let in_flight = Arc::new(AtomicUsize::new(0));
    let sampler = tokio::spawn(
        app.activity
            .clone()
            .run(app.partitions.clone(), app.clock.clone()),
    );
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = accept(&listener) => match accepted {
                Some(accepted) => accepted,
                None => continue,
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let lane = match permits.clone().try_acquire_owned() {
            Ok(permit) => Lane::Main(permit),
            Err(_) => match overflow.clone().try_acquire_owned() {
                Ok(permit) => {
                    refused(&app, "over_limit");
                    Lane::Overflow(permit)
                }
                Err(_) => {
                    refused(&app, "lane_full");
                    drop(stream);
                    continue;
                }
            },
        };
        let connection = Connection {
            app: app.clone(),
            in_flight: in_flight.clone(),
            config: config.clone(),
            peer,
        };
        match lane {
            Lane::Main(permit) => connection.spawn_main(stream, permit, &graceful),
            Lane::Overflow(permit) => connection.spawn_overflow(stream, permit, &graceful),
        }
    }
    drop(listener);
    sampler.abort();
    drain(graceful, &in_flight).await;
    Ok(())
}

/// Serves only `GET /healthz`, `/readyz` and `/metrics` on `listener` (at most
/// [`PROBE_CONNECTIONS`] at once) until `shutdown` resolves: the probes' own port.
pub async fn serve_probes(
    listener: TcpListener,
    app: Arc<App>,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let permits = Arc::new(Semaphore::new(PROBE_CONNECTIONS));
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = accept(&listener) => match accepted {
                Some(accepted) => accepted,
                None => continue,
            },
            () = &mut shutdown => return Ok(()),
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            drop(stream);
            continue;
        };
        let app = app.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
                let app = app.clone();
                async move {
                    let allowed = request.method() == Method::GET
                        && matches!(request.uri().path(), "/healthz" | "/readyz" | "/metrics");
                    let response = if allowed {
                        app.handle(request).await
                    } else {
                        error_response(&ApiError::not_found(
                            "not_found",
                            "the probe listener serves GET /healthz, /readyz and /metrics only",
                        ))
                    };
                    Ok::<_, std::convert::Infallible>(response)
                }
            });
            let served = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(OVERFLOW_HEADER_TIMEOUT)
                .serve_connection(client_io(stream, OVERFLOW_HEADER_TIMEOUT), service);
            if let Err(e) = served.await {
                log_connection_error(peer, &e);
            }
            drop(permit);
        });
    }
}

/// The next connection; `None` after a failed accept (out of file descriptors and the
/// like), once a short pause has passed, so the loop never spins.
async fn accept(listener: &TcpListener) -> Option<(TcpStream, SocketAddr)> {
    match listener.accept().await {
        Ok(accepted) => Some(accepted),
        Err(e) => {
            tracing::warn!(error = %e, "accept failed");
            tokio::time::sleep(ACCEPT_RETRY).await;
            None
        }
    }
}

enum Lane {
    Main(tokio::sync::OwnedSemaphorePermit),
    Overflow(tokio::sync::OwnedSemaphorePermit),
}

fn refused(app: &App, reason: &str) {
    app.metrics
        .service
        .connections_refused
        .with_label_values(&[reason])
        .inc();
}

fn spawn_connection<F>(
    app: &Arc<App>,
    served: F,
    permit: tokio::sync::OwnedSemaphorePermit,
    peer: SocketAddr,
) where
    F: Future<Output = hyper::Result<()>> + Send + 'static,
{
    let gauge = app.metrics.service.connections.clone();
    gauge.inc();
    tokio::spawn(async move {
        if let Err(e) = served.await {
            log_connection_error(peer, &e);
        }
        gauge.dec();
        drop(permit);
    });
}

/// One accepted client and what serving it needs.
struct Connection {
    app: Arc<App>,
    in_flight: Arc<AtomicUsize>,
    config: ServerConfig,
    peer: SocketAddr,
}

impl Connection {
    /// A connection within the limit: keep-alive, every route.
    fn spawn_main(
        self,
        stream: TcpStream,
        permit: tokio::sync::OwnedSemaphorePermit,
        graceful: &GracefulShutdown,
    ) {
        let (app, in_flight) = (self.app.clone(), self.in_flight);
        let service = service_fn(move |request| {
            let (app, in_flight) = (app.clone(), in_flight.clone());
            async move {
                let _counted = InFlight::enter(&in_flight);
                Ok::<_, std::convert::Infallible>(app.handle(request).await)
            }
        });
        let served = http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(self.config.header_timeout)
            .serve_connection(client_io(stream, self.config.write_timeout), service);
        spawn_connection(&self.app, graceful.watch(served), permit, self.peer);
    }

    /// A connection over the limit: one request, probes answered, the rest `503`.
    fn spawn_overflow(
        self,
        stream: TcpStream,
        permit: tokio::sync::OwnedSemaphorePermit,
        graceful: &GracefulShutdown,
    ) {
        let (app, in_flight) = (self.app.clone(), self.in_flight);
        let limit = self.config.max_connections;
        let service = service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
            let (app, in_flight) = (app.clone(), in_flight.clone());
            async move {
                let probe = request.method() == Method::GET
                    && matches!(request.uri().path(), "/healthz" | "/readyz");
                if probe {
                    let _counted = InFlight::enter(&in_flight);
                    return Ok::<_, std::convert::Infallible>(app.handle(request).await);
                }
                app.metrics
                    .service
                    .refused
                    .with_label_values(&["connections"])
                    .inc();
                let mut response = error_response(&ApiError::refused(
                    "connections",
                    format!(
                        "the server has its limit of {limit} connections open \
                         (--max-connections); retry later"
                    ),
                ));
                response.headers_mut().insert(
                    hyper::header::CONNECTION,
                    hyper::header::HeaderValue::from_static("close"),
                );
                Ok(response)
            }
        });
        let served = http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(OVERFLOW_HEADER_TIMEOUT)
            .keep_alive(false)
            .serve_connection(client_io(stream, OVERFLOW_HEADER_TIMEOUT), service);
        spawn_connection(&self.app, graceful.watch(served), permit, self.peer);
    }
}

/// Counts a request being handled while it lives.
struct InFlight(Arc<AtomicUsize>);

impl InFlight {
    fn enter(count: &Arc<AtomicUsize>) -> InFlight {
        count.fetch_add(1, Ordering::SeqCst);
        InFlight(count.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The graceful stop: connections close once idle; the stop ends as soon as no
/// request is being handled (a connection still sending headers, or sitting idle, has
/// nothing to finish), or after [`SHUTDOWN_GRACE`].
async fn drain(graceful: GracefulShutdown, in_flight: &AtomicUsize) {
    let requests_done = async {
        // Let connections that were between requests see the stop first.
        tokio::time::sleep(DRAIN_SETTLE).await;
        while in_flight.load(Ordering::SeqCst) > 0 {
            tokio::time::sleep(DRAIN_POLL).await;
        }
    };
    tokio::select! {
        () = graceful.shutdown() => tracing::info!("every connection closed"),
        () = requests_done => tracing::info!("every request answered; closing the connections left"),
        () = tokio::time::sleep(SHUTDOWN_GRACE) => {
            tracing::warn!(grace_s = SHUTDOWN_GRACE.as_secs(), "requests still in flight after the grace period; closing")
        }
    }
}

fn log_connection_error(peer: SocketAddr, e: &hyper::Error) {
    if e.is_incomplete_message() || e.is_closed() || e.is_timeout() {
        tracing::debug!(%peer, error = %e, "client went away");
    } else {
        tracing::debug!(%peer, error = %e, "connection error");
    }
}

/// The socket of a connection as hyper serves it:
/// - the answers hyper writes by itself for a request it cannot parse (`400`, `414`,
///   `431`, with an empty body) get the API's JSON error body (the API's own answers
///   always have a body, so a head of status 4xx with `content-length: 0` is hyper's);
/// - a write that has waited `write_timeout` for room (a client that reads nothing, or
///   too slowly for the kernel to report room) fails with
///   `TimedOut`, closing the connection (each write that goes through starts the wait
///   afresh).
pub struct ClientStream<S> {
    inner: S,
    /// The rewritten answer, still to be written.
    pending: Option<(Vec<u8>, usize)>,
    write_timeout: Duration,
    /// Armed while a write waits on the client.
    waiting: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl<S> ClientStream<S> {
    pub fn new(inner: S, write_timeout: Duration) -> ClientStream<S> {
        ClientStream {
            inner,
            pending: None,
            write_timeout,
            waiting: None,
        }
    }

    /// What a write's poll gave: progress disarms the wait, waiting arms it, and a wait
    /// past the timeout fails.
    fn within<T>(
        &mut self,
        cx: &mut Context<'_>,
        polled: Poll<std::io::Result<T>>,
    ) -> Poll<std::io::Result<T>> {
        if polled.is_ready() {
            self.waiting = None;
            return polled;
        }
        let timeout = self.write_timeout;
        let waiting = self
            .waiting
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
        match waiting.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("the client read nothing of the answer for {timeout:?}"),
            ))),
            Poll::Pending => Poll::Pending,
        }
    }
}

/// hyper's own answer, rewritten with a JSON body; `None` for any other write.
fn rewrite_automatic_answer(buf: &[u8]) -> Option<Vec<u8>> {
    let head_end = buf.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    if head_end != buf.len() {
        return None;
    }
    let head = std::str::from_utf8(buf).ok()?;
    let status: u16 = head.strip_prefix("HTTP/1.1 ")?.get(..3)?.parse().ok()?;
    let (code, message) = match status {
        400 => (
            "invalid_request",
            "the request could not be parsed (a malformed request line or header, or a bad Content-Length)",
        ),
        414 => ("uri_too_long", "the request URI is too long"),
        431 => (
            "headers_too_large",
            "the request's headers are larger than the server takes",
        ),
        _ => return None,
    };
    let lower = head.to_ascii_lowercase();
    let at = lower.find("\r\ncontent-length: 0\r\n")?;
    let body = ApiError::new(StatusCode::from_u16(status).ok()?, code, message).body();
    let mut out = Vec::with_capacity(buf.len() + body.len() + 64);
    out.extend_from_slice(&buf[..at]);
    out.extend_from_slice(
        format!(
            "\r\ncontent-type: application/json\r\ncontent-length: {}",
            body.len()
        )
        .as_bytes(),
    );
    out.extend_from_slice(&buf[at + "\r\ncontent-length: 0".len()..]);
    out.extend_from_slice(body.as_bytes());
    Some(out)
}

impl<S: AsyncWrite + Unpin> ClientStream<S> {
    /// Writes what is left of a rewritten answer.
    fn poll_pending(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        while let Some((bytes, written)) = &mut self.pending {
            let n =
                std::task::ready!(Pin::new(&mut self.inner).poll_write(cx, &bytes[*written..]))?;
            if n == 0 {
                return Poll::Ready(Err(std::io::ErrorKind::WriteZero.into()));
            }
            *written += n;
            if *written == bytes.len() {
                self.pending = None;
            }
        }
        Poll::Ready(Ok(()))
    }

    fn write_now(&mut self, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        std::task::ready!(self.poll_pending(cx))?;
        if buf.starts_with(b"HTTP/1.1 4") {
            if let Some(rewritten) = rewrite_automatic_answer(buf) {
                self.pending = Some((rewritten, 0));
                // The caller's bytes are taken; the rewritten ones go out from here.
                let _ = self.poll_pending(cx)?;
                return Poll::Ready(Ok(buf.len()));
            }
        }
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn flush_now(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        std::task::ready!(self.poll_pending(cx))?;
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn shutdown_now(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        std::task::ready!(self.poll_pending(cx))?;
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for ClientStream<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for ClientStream<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let polled = self.write_now(cx, buf);
        self.within(cx, polled)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let polled = self.flush_now(cx);
        self.within(cx, polled)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let polled = self.shutdown_now(cx);
        self.within(cx, polled)
    }
}

/// A client's stream as hyper serves it (see [`ClientStream`]).
fn client_io(stream: TcpStream, write_timeout: Duration) -> TokioIo<ClientStream<TcpStream>> {
    TokioIo::new(ClientStream::new(stream, write_timeout))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hypers_own_answers_get_a_json_body_and_the_apis_are_left_alone() {
        let head = b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 0\r\ndate: Tue, 01 Dec 2026 10:00:00 GMT\r\n\r\n";
        let out = String::from_utf8(rewrite_automatic_answer(head).unwrap()).unwrap();
        let (head, body) = out.split_once("\r\n\r\n").unwrap();
        assert!(head.contains("content-type: application/json"), "{head}");
        assert!(
            head.contains(&format!("content-length: {}", body.len())),
            "{head}"
        );
        assert!(head.contains("date: "), "{head}");
        let json: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(json["error"]["code"], "headers_too_large");
        // An answer with a body, or not a 4xx of hyper's, passes untouched.
        assert!(rewrite_automatic_answer(
            b"HTTP/1.1 400 Bad Request\r\ncontent-length: 12\r\n\r\n"
        )
        .is_none());
        assert!(
            rewrite_automatic_answer(b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n")
                .is_none()
        );
        assert!(rewrite_automatic_answer(
            b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n{\"partial"
        )
        .is_none());
    }
}
