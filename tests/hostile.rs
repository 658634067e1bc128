//! Clients that do not play by the rules, against the real binary over raw sockets: a
//! body that stalls gets `408` within its deadline; past `--max-connections` a client
//! gets a quick `503` (probes are answered) or a closed connection, never silence; a
//! stop is not held by stalled bodies; a client that sends a whole oversized body
//! before reading still reads its `413`; the answers hyper makes itself have the JSON
//! error shape; refusals carry `Retry-After` and are counted; a client that reads none
//! of its answers is closed after the write timeout.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use common::serve;
use sagalog_testkit::wait_until_blocking;

/// A raw connection with a read timeout.
fn connect(addr: SocketAddr) -> TcpStream {
    let stream = TcpStream::connect(addr).expect("connects");
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    stream
}

/// Reads one whole answer (headers, then a body of its Content-Length): status,
/// lower-cased head, body.
fn read_answer(stream: &mut TcpStream) -> (u16, String, String) {
    let mut bytes = Vec::new();
    let mut buf = [0u8; 8192];
    let head_end = loop {
        if let Some(end) = bytes.windows(4).position(|w| w == b"\r\n\r\n") {
            break end + 4;
        }
        let n = stream.read(&mut buf).expect("an answer, not silence");
        assert!(n > 0, "the connection closed without an answer");
        bytes.extend_from_slice(&buf[..n]);
    };
    let head = String::from_utf8_lossy(&bytes[..head_end]).to_ascii_lowercase();
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length: "))
        .map_or(0, |n| n.trim().parse().unwrap());
    while bytes.len() < head_end + length {
        let n = stream.read(&mut buf).expect("the body");
        assert!(n > 0, "the body was cut short");
        bytes.extend_from_slice(&buf[..n]);
    }
    let status = head[9..12].parse().unwrap();
    let body = String::from_utf8_lossy(&bytes[head_end..head_end + length]).into_owned();
    (status, head, body)
}

fn error_code(body: &str) -> String {
    let json: serde_json::Value =
        serde_json::from_str(body).unwrap_or_else(|_| panic!("JSON: {body:?}"));
    json["error"]["code"]
        .as_str()
        .expect("an error code")
        .to_string()
}

fn get(addr: SocketAddr, path: &str) -> (u16, String, String) {
    let mut stream = connect(addr);
    write!(stream, "GET {path} HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
    read_answer(&mut stream)
}

const START: &str = "POST /api/v1/sagas HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n";

#[test]
fn a_body_that_stalls_is_answered_408_within_its_deadline() {
    let root = tempfile::tempdir().unwrap();
    let server = serve(
        &common::data_dir(&root),
        &[
            "--body-timeout-ms",
            "4000",
            "--body-min-bytes-per-sec",
            "1024",
        ],
    );
    // A Content-Length that is never sent in full, and a chunked body that stops.
    let stalls = [
        format!("{START}Content-Length: 1000\r\n\r\n{{\"type\": \""),
        format!("{START}Transfer-Encoding: chunked\r\n\r\n5\r\n{{\"typ\r\n"),
    ];
    for stall in stalls {
        let mut stream = connect(server.addr);
        let sent = Instant::now();
        stream.write_all(stall.as_bytes()).unwrap();
        let (status, head, body) = read_answer(&mut stream);
        let waited = sent.elapsed();
        assert_eq!(status, 408, "{body}");
        assert_eq!(error_code(&body), "body_timeout");
        assert!(head.contains("connection: close"), "{head}");
        // Ten bytes at 1 KiB/s are due within the 2 s grace, long before the 4 s bound.
        assert!(waited < Duration::from_secs(4), "waited {waited:?}");
        // And the connection is closed.
        let mut rest = Vec::new();
        assert_eq!(
            stream
                .read_to_end(&mut rest)
                .map(|_| rest.len())
                .unwrap_or(0),
            0
        );
    }
    let metrics = common::samples(
        &get(server.addr, "/metrics").2,
        &["sagalog_http_body_timeouts_total"],
    );
    assert_eq!(metrics, ["sagalog_http_body_timeouts_total 2"]);
}

#[test]
fn past_max_connections_a_client_gets_503_or_a_closed_socket_and_probes_still_answer() {
    let root = tempfile::tempdir().unwrap();
    let probe_listen = free_loopback().to_string();
    let server = serve(
        &common::data_dir(&root),
        &["--max-connections", "8", "--probe-listen", &probe_listen],
    );
    // Eight idle connections hold every slot.
    let idle: Vec<TcpStream> = (0..8).map(|_| connect(server.addr)).collect();
    std::thread::sleep(Duration::from_millis(200));
    let asked = Instant::now();
    let (status, head, body) = get(server.addr, "/api/v1/sagas");
    assert_eq!(status, 503, "{body}");
    assert!(head.contains("retry-after: 1"), "{head}");
    assert!(body.contains("--max-connections"), "{body}");
    let (status, _, body) = get(server.addr, "/readyz");
    assert_eq!(status, 200, "a probe past the limit is answered: {body}");
    assert!(
        asked.elapsed() < Duration::from_secs(2),
        "{:?}",
        asked.elapsed()
    );

    // Idle connections fill the overflow lane too: the next is closed at once.
    let lane: Vec<TcpStream> = (0..sagalog_http::server::OVERFLOW_CONNECTIONS)
        .map(|_| connect(server.addr))
        .collect();
    let probe: SocketAddr = probe_listen.parse().unwrap();
    let full = format!(
        "sagalog_http_connections {}",
        8 + sagalog_http::server::OVERFLOW_CONNECTIONS
    );
    let held = format!("the server holding {full}");
    wait_until_blocking(&held, Duration::from_secs(10), || {
        let seen = common::samples(&get(probe, "/metrics").2, &["sagalog_http_connections"]);
        (seen == [full.clone()])
            .then_some(())
            .ok_or(format!("{seen:?}"))
    });
    let mut closed = connect(server.addr);
    let asked = Instant::now();
    let mut byte = [0u8; 1];
    let got = closed.read(&mut byte);
    assert!(
        matches!(got, Ok(0) | Err(_)),
        "closed at once, not left waiting: {got:?}"
    );
    assert!(asked.elapsed() < Duration::from_secs(2));
    // The probes' own listener answers whatever the API's port goes through.
    assert_eq!(get(probe, "/readyz").0, 200);
    assert_eq!(get(probe, "/healthz").0, 200);
    let (status, _, body) = get(probe, "/api/v1/sagas");
    assert_eq!((status, error_code(&body).as_str()), (404, "not_found"));
    let metrics = get(probe, "/metrics").2;
    let refused = common::samples(&metrics, &["sagalog_http_connections_refused_total"]);
    assert!(
        refused
            .iter()
            .any(|l| l.contains("lane_full") && !l.ends_with(" 0")),
        "{refused:?}"
    );
    // The lane's idle connections are dropped after its short header deadline; then
    // the API's port answers probes again.
    drop(lane);
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(get(server.addr, "/healthz").0, 200);
    drop(idle);
}

#[test]
fn a_client_that_reads_none_of_its_answers_is_closed_after_the_write_timeout() {
    let root = tempfile::tempdir().unwrap();
    let probe: SocketAddr = free_loopback();
    let server = serve(
        &common::data_dir(&root),
        &[
            "--write-timeout-ms",
            "500",
            "--probe-listen",
            &probe.to_string(),
        ],
    );
    // Pipelined requests whose answers come to far more than the sockets' buffers,
    // from a client that reads nothing.
    let mut stalled = connect(server.addr);
    let requests = "GET /metrics HTTP/1.1\r\nHost: t\r\n\r\n".repeat(3000);
    stalled.write_all(requests.as_bytes()).unwrap();
    let connections = |want: &str| {
        let deadline = Instant::now() + Duration::from_secs(15);
        let want = format!("sagalog_http_connections {want}");
        while common::samples(&get(probe, "/metrics").2, &["sagalog_http_connections"])
            != [want.clone()]
        {
            assert!(Instant::now() < deadline, "the server never had {want}");
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    connections("1");
    // The server's writes wait on the client, then the connection is closed.
    connections("0");
    // What the sockets held arrives, then the end: far fewer answers than requests.
    let mut rest = Vec::new();
    let _ = stalled.read_to_end(&mut rest);
    let answers = rest.windows(12).filter(|w| w == b"HTTP/1.1 200").count();
    assert!(
        answers < 3000,
        "{answers} answers: the connection was not closed"
    );
}

/// A free loopback address.
fn free_loopback() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

#[test]
fn a_stop_is_not_held_by_stalled_bodies() {
    let root = tempfile::tempdir().unwrap();
    // Bodies that would be waited for a whole minute.
    let server = serve(
        &common::data_dir(&root),
        &[
            "--body-timeout-ms",
            "60000",
            "--body-min-bytes-per-sec",
            "0",
        ],
    );
    let mut stalled: Vec<TcpStream> = (0..50)
        .map(|_| {
            let mut stream = connect(server.addr);
            write!(stream, "{START}Content-Length: 1000\r\n\r\n{{\"type\"").unwrap();
            stream
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    let asked = Instant::now();
    let status = server.terminate().unwrap();
    assert!(status.success());
    assert!(
        asked.elapsed() < Duration::from_secs(5),
        "the stop took {:?}",
        asked.elapsed()
    );
    let (status, _, body) = read_answer(&mut stalled[0]);
    assert_eq!(status, 503, "{body}");
}

#[test]
fn a_client_that_sends_a_whole_oversized_body_before_reading_gets_its_413() {
    let root = tempfile::tempdir().unwrap();
    let server = serve(&common::data_dir(&root), &[]);
    let body = format!(
        "{{\"type\": \"order\", \"payload\": {{\"pad\": \"{}\"}}}}",
        "x".repeat(2 << 20)
    );
    let declared = format!("{START}Content-Length: {}\r\n\r\n{body}", body.len());
    let chunked = format!(
        "{START}Transfer-Encoding: chunked\r\n\r\n{:x}\r\n{body}\r\n0\r\n\r\n",
        body.len()
    );
    for request in [declared, chunked] {
        let mut stream = connect(server.addr);
        stream
            .write_all(request.as_bytes())
            .expect("the whole body is taken, not refused mid-way");
        let (status, _, answer) = read_answer(&mut stream);
        assert_eq!(status, 413, "{answer}");
        assert_eq!(error_code(&answer), "payload_too_large");
    }
}

#[test]
fn answers_hyper_makes_itself_have_the_json_error_shape() {
    let root = tempfile::tempdir().unwrap();
    let server = serve(&common::data_dir(&root), &[]);
    let cases = [
        (
            format!(
                "GET /healthz HTTP/1.1\r\nHost: t\r\nX-Big: {}\r\n\r\n",
                "a".repeat(600 << 10)
            ),
            431,
            "headers_too_large",
        ),
        (
            format!("{START}Content-Length: ten\r\n\r\n"),
            400,
            "invalid_request",
        ),
        (
            "GET /healthz HTTP/1.1\r\nHost: t\r\nBad Header\r\n\r\n".to_string(),
            400,
            "invalid_request",
        ),
    ];
    for (request, status, code) in cases {
        let mut stream = connect(server.addr);
        let _ = stream.write_all(request.as_bytes());
        let (got, head, body) = read_answer(&mut stream);
        assert_eq!(got, status, "{body}");
        assert!(head.contains("content-type: application/json"), "{head}");
        assert_eq!(error_code(&body), code);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_carry_retry_after_and_are_counted_and_big_payloads_are_413() {
    let root = tempfile::tempdir().unwrap();
    let server = serve(
        &common::data_dir(&root),
        &["--max-active-sagas", "2", "--max-payload-bytes", "1000"],
    );
    let mut c = common::client(&server).await;
    for id in ["a-1", "a-2"] {
        let answer = common::post(
            &mut c,
            "/api/v1/sagas",
            serde_json::json!({"type": "order", "saga_id": id, "payload": {}}),
        )
        .await;
        assert_eq!(answer.status, 201, "{}", answer.text());
    }
    let answer = common::post(
        &mut c,
        "/api/v1/sagas",
        serde_json::json!({"type": "order", "saga_id": "a-3", "payload": {}}),
    )
    .await;
    let message = common::expect_error(&answer, 503, "unavailable");
    assert!(message.contains("active sagas"), "{message}");
    assert_eq!(answer.headers["retry-after"], "1");
    let big = common::post(
        &mut c,
        "/api/v1/sagas",
        serde_json::json!({"type": "order", "payload": {"pad": "x".repeat(2000)}}),
    )
    .await;
    let message = common::expect_error(&big, 413, "payload_too_large");
    assert!(message.contains("--max-payload-bytes"), "{message}");
    let metrics = common::get(&mut c, "/metrics").await.text();
    let refused = common::samples(&metrics, &["sagalog_requests_refused_total"]);
    assert!(
        refused
            .contains(&"sagalog_requests_refused_total{reason=\"max_active_sagas\"} 1".to_string()),
        "{refused:?}"
    );
}
