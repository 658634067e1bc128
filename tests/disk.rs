//! `sagalog serve` on a small filesystem the test mounts (a size-limited tmpfs; the test
//! runner is root, elsewhere the test says it skipped): below the free-space watermark
//! writes answer 503 and `/readyz` fails, reads go on, and it resumes by itself once
//! space returns; with the watermark off, a really full disk answers 503 too and heals.
//! No acknowledged write is lost, across a SIGKILL as well. A disk that fills while
//! the log rolls segments, under 16 clients, costs no acknowledged saga and needs no
//! repair afterwards, even with the server's own log on the full disk.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{get, post, serve};
use hyper::StatusCode;
use sagalog_storage::testing::{fill_leaving, Tmpfs};
use sagalog_testkit::{wait_until, wait_until_blocking};
use serde_json::json;

const FS_BYTES: u64 = 64 << 20;

/// A size-limited tmpfs mounted on a new temporary directory, or `None` when the test
/// cannot mount one and says it skipped (see [`Tmpfs::available_or_skip`]). (Bound in
/// this order, the filesystem is unmounted before the directory goes.)
fn small_disk() -> Option<(tempfile::TempDir, Tmpfs)> {
    if !Tmpfs::available_or_skip() {
        return None;
    }
    let root = tempfile::tempdir().unwrap();
    let fs = Tmpfs::mount(root.path(), FS_BYTES);
    Some((root, fs))
}

/// Starts saga `id`: true when acknowledged (201), false on 503 (with its message
/// checked by `expect`); any other answer fails the test.
async fn try_start(c: &mut sagalog_testkit::client::Client, id: &str, expect: &str) -> bool {
    let answer = post(
        c,
        "/api/v1/sagas",
        json!({"type": "order", "saga_id": id, "payload": {"id": id}}),
    )
    .await;
    match answer.status {
        StatusCode::CREATED => true,
        StatusCode::SERVICE_UNAVAILABLE => {
            assert!(answer.text().contains(expect), "{}", answer.text());
            false
        }
        other => panic!("{id}: {other} {}", answer.text()),
    }
}

/// Tries starts `{prefix}-N` every 100 ms until one is taken (within 10 s, or the test
/// fails), each refusal's message holding `expect`; returns the id taken.
async fn taken_again(
    c: &mut sagalog_testkit::client::Client,
    prefix: &str,
    expect: &str,
) -> String {
    let mut n = 0;
    wait_until(
        "writes taken once space returned",
        Duration::from_secs(10),
        async || {
            let id = format!("{prefix}-{n}");
            n += 1;
            if try_start(c, &id, expect).await {
                Ok(id)
            } else {
                Err(format!("{id} refused"))
            }
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn below_the_watermark_writes_wait_and_a_full_disk_loses_nothing() {
    let Some((root, _fs)) = small_disk() else {
        return;
    };
    let dir = root.path().join("data");
    let filler = root.path().join("filler");
    let watermark = [
        "--segment-bytes",
        "262144",
        "--min-free-bytes",
        "16777216",
        "--min-free-percent",
        "100",
    ];
    let server = serve(&dir, &watermark);
    let mut c = common::client(&server).await;
    let mut acked = Vec::new();
    for i in 0..20 {
        let id = format!("a-{i}");
        assert!(try_start(&mut c, &id, "").await);
        acked.push(id);
    }
    assert_eq!(get(&mut c, "/readyz").await.status, StatusCode::OK);

    // Below the watermark: 503 naming it, /readyz fails, reads go on.
    fill_leaving(&filler, 8 << 20);
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut n = 0;
    loop {
        let id = format!("w-{n}");
        n += 1;
        if !try_start(&mut c, &id, "watermark").await {
            break;
        }
        acked.push(id);
        assert!(
            Instant::now() < deadline,
            "writes still taken 10 s below the watermark"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let ready = get(&mut c, "/readyz").await;
    assert_eq!(ready.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(
        ready.text().contains("below the watermark"),
        "{}",
        ready.text()
    );
    assert_eq!(
        get(&mut c, "/api/v1/sagas/a-0").await.status,
        StatusCode::OK
    );
    let metrics = get(&mut c, "/metrics").await.text();
    let free = common::samples(&metrics, &["sagalog_disk_free_bytes"]);
    assert!(!free.is_empty(), "{metrics}");

    // Space returns: writes and readiness come back by themselves.
    std::fs::remove_file(&filler).unwrap();
    acked.push(taken_again(&mut c, "back", "watermark").await);
    assert_eq!(get(&mut c, "/readyz").await.status, StatusCode::OK);
    drop(c);
    let status = tokio::task::spawn_blocking(move || server.terminate().unwrap())
        .await
        .unwrap();
    assert!(status.success());

    // With the watermark off, a really full disk: writes fail with 503 once the
    // segment's room is used, and nothing acknowledged is lost.
    let off = ["--segment-bytes", "262144", "--min-free-bytes", "0"];
    let server = serve(&dir, &off);
    let mut c = common::client(&server).await;
    fill_leaving(&filler, 0);
    let mut refused = false;
    for i in 0..20_000 {
        let id = format!("f-{i}");
        if try_start(&mut c, &id, "").await {
            acked.push(id);
        } else {
            refused = true;
            break;
        }
    }
    assert!(refused, "a full disk must refuse writes");
    assert_eq!(
        get(&mut c, "/api/v1/sagas/a-1").await.status,
        StatusCode::OK
    );
    std::fs::remove_file(&filler).unwrap();
    acked.push(taken_again(&mut c, "healed", "").await);

    // SIGKILL, restart: every acknowledged start is there, and the directory verifies.
    drop(c);
    drop(server);
    let server = serve(&dir, &off);
    let mut c = common::client(&server).await;
    for id in &acked {
        assert_eq!(
            get(&mut c, &format!("/api/v1/sagas/{id}")).await.status,
            StatusCode::OK,
            "{id} lost"
        );
    }
    drop(c);
    drop(server);
    let verify = Command::new(env!("CARGO_BIN_EXE_sagalog"))
        .args(["verify", "--data-dir", dir.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        verify.status.success(),
        "{}",
        String::from_utf8_lossy(&verify.stdout)
    );
}

/// Free bytes of the filesystem at `path`.
fn free_bytes(path: &Path) -> u64 {
    sagalog_storage::disk_space(path).unwrap().0
}

/// `sagalog serve` with its log going to `log_file` (on the filesystem under test), on
/// a free loopback port; waits until it answers `/healthz`.
fn serve_logging_to(
    dir: &Path,
    log_file: &Path,
    extra: &[&str],
) -> (std::process::Child, std::net::SocketAddr) {
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .unwrap();
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log_file)
        .unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_sagalog"))
        .arg("serve")
        .arg("--data-dir")
        .arg(dir)
        .args(["--listen", &addr.to_string()])
        .args(extra)
        .env_remove("SAGALOG_ADMIN_TOKEN")
        .stdout(std::process::Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    wait_until_blocking("serve listening", Duration::from_secs(60), || {
        std::net::TcpStream::connect(addr).map(drop)
    });
    (child, addr)
}

/// One start with a 200-byte payload; its status (201 or 503, anything else fails the
/// test), which must come within 15 s: a full disk is answered, never silence.
async fn start_answered(c: &mut sagalog_testkit::client::Client, id: &str) -> StatusCode {
    let body = json!({"type": "order", "saga_id": id, "payload": {"pad": "x".repeat(200)}});
    let answer = tokio::time::timeout(Duration::from_secs(15), post(c, "/api/v1/sagas", body))
        .await
        .unwrap_or_else(|_| panic!("start {id}: no answer within 15 s"));
    assert!(
        matches!(
            answer.status,
            StatusCode::CREATED | StatusCode::SERVICE_UNAVAILABLE
        ),
        "start {id}: {} {}",
        answer.status,
        answer.text()
    );
    if answer.status == StatusCode::SERVICE_UNAVAILABLE {
        assert!(
            answer.headers.contains_key("retry-after"),
            "a 503 says when to retry"
        );
    }
    answer.status
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disk_filling_during_segment_rolls_loses_no_acknowledged_saga_and_needs_no_repair() {
    let Some((root, fs)) = small_disk() else {
        return;
    };
    let dir = root.path().join("data");
    // The server's own log on the disk that fills: a log line it cannot write must not
    // take a thread down.
    let log_file = root.path().join("serve.log");
    let options = ["--segment-bytes", "4194304", "--min-free-bytes", "0"];
    let (mut child, addr) = serve_logging_to(&dir, &log_file, &options);
    let acked = std::sync::Arc::new(parking_lot::Mutex::new(Vec::<String>::new()));
    let refused = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut clients = tokio::task::JoinSet::new();
    for worker in 0..16 {
        let (acked, refused, mount) = (acked.clone(), refused.clone(), root.path().to_path_buf());
        clients.spawn(async move {
            let mut c = sagalog_testkit::client::Client::connect(addr)
                .await
                .unwrap();
            let deadline = Instant::now() + Duration::from_secs(180);
            for n in 0.. {
                let id = format!("s{worker}-{n}");
                match start_answered(&mut c, &id).await {
                    StatusCode::CREATED => acked.lock().push(id),
                    _ => {
                        let seen = refused.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        if seen > 200 && free_bytes(&mount) < 1 << 20 {
                            return;
                        }
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                }
                assert!(Instant::now() < deadline, "the disk never filled");
            }
        });
    }
    while let Some(done) = clients.join_next().await {
        done.unwrap();
    }
    let mut c = sagalog_testkit::client::Client::connect(addr)
        .await
        .unwrap();
    // The disk watch looks every second.
    let deadline = Instant::now() + Duration::from_secs(5);
    let ready = loop {
        let ready = get(&mut c, "/readyz").await;
        if ready.status != StatusCode::OK || Instant::now() > deadline {
            break ready;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let last = post(
        &mut c,
        "/api/v1/sagas",
        json!({"type": "order", "payload": {}}),
    )
    .await;
    assert_eq!(
        ready.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "not ready while writes fail ({}): {}",
        last.text(),
        ready.text()
    );
    assert!(ready.text().contains("disk is full"), "{}", ready.text());

    // More room: service returns by itself.
    fs.resize(FS_BYTES * 2);
    let ready = "ready again once space returned";
    wait_until(ready, Duration::from_secs(15), async || {
        let ready = get(&mut c, "/readyz").await;
        (ready.status == StatusCode::OK)
            .then_some(())
            .ok_or_else(|| ready.text())
    })
    .await;
    for n in 0..100 {
        let id = format!("after-{n}");
        assert_eq!(
            start_answered(&mut c, &id).await,
            StatusCode::CREATED,
            "{id}"
        );
        acked.lock().push(id);
    }
    drop(c);
    let pid = child.id().to_string();
    Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    assert!(child.wait().unwrap().success(), "serve stops cleanly");

    // A full disk is told once, not once per refused request (it was 55,000 lines).
    let lines = std::fs::read_to_string(&log_file).unwrap().lines().count();
    assert!(lines < 300, "the server logged {lines} lines");

    // The directory needs no repair: it verifies clean and opens with every saga.
    let verify = Command::new(env!("CARGO_BIN_EXE_sagalog"))
        .args(["verify", "--data-dir", dir.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        verify.status.success(),
        "{}",
        String::from_utf8_lossy(&verify.stdout)
    );
    let server = serve(&dir, &options);
    let mut c = common::client(&server).await;
    let acked = acked.lock().clone();
    assert!(acked.len() > 1000, "only {} starts were taken", acked.len());
    for id in &acked {
        assert_eq!(
            get(&mut c, &format!("/api/v1/sagas/{id}")).await.status,
            StatusCode::OK,
            "acknowledged saga {id} lost"
        );
    }
}

/// Starts order saga `id` and answers its three steps, so it completes.
async fn complete(c: &mut sagalog_testkit::client::Client, id: &str) {
    let started = post(c, "/api/v1/sagas", json!({"type": "order", "saga_id": id})).await;
    assert_eq!(started.status, StatusCode::CREATED, "{}", started.text());
    for step in ["reserve_inventory", "charge_payment", "ship_order"] {
        let reply = json!({"event_id": format!("{id}/{step}"), "step": step,
                           "outcome": "succeeded", "attempt": 1});
        let answer = post(c, &format!("/api/v1/sagas/{id}/events"), reply).await;
        assert_eq!(answer.status, StatusCode::ACCEPTED, "{}", answer.text());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_stopped_on_a_full_disk_starts_serves_reads_and_takes_writes_once_space_returns() {
    let Some((root, _fs)) = small_disk() else {
        return;
    };
    let dir = root.path().join("data");
    let filler = root.path().join("filler");
    let options = ["--min-free-bytes", "0"];
    let server = serve(&dir, &options);
    let mut c = common::client(&server).await;
    complete(&mut c, "done-1").await;
    assert!(try_start(&mut c, "open-1", "").await);
    // The disk watch keeps the reserve once it runs.
    let reserve = dir.join("reserve");
    wait_until("the reserve kept", Duration::from_secs(10), async || {
        reserve.exists().then_some(()).ok_or("no reserve file")
    })
    .await;
    drop(c);
    let status = tokio::task::spawn_blocking(move || server.terminate().unwrap())
        .await
        .unwrap();
    assert!(status.success());

    // Not one byte free: it starts all the same, serves reads and says why it takes
    // no writes.
    fill_leaving(&filler, 0);
    let server = serve(&dir, &options);
    let mut c = common::client(&server).await;
    let ready = get(&mut c, "/readyz").await;
    assert_eq!(
        ready.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        ready.text()
    );
    assert!(ready.text().contains("disk was full"), "{}", ready.text());
    for id in ["done-1", "open-1"] {
        let saga = get(&mut c, &format!("/api/v1/sagas/{id}")).await;
        assert_eq!(saga.status, StatusCode::OK, "{id}: {}", saga.text());
    }
    assert!(!try_start(&mut c, "refused-1", "--reserve-bytes").await);

    // Space returns: writes and readiness come back by themselves.
    std::fs::remove_file(&filler).unwrap();
    let taken = taken_again(&mut c, "back", "").await;
    assert_eq!(get(&mut c, "/readyz").await.status, StatusCode::OK);
    assert_eq!(
        get(&mut c, &format!("/api/v1/sagas/{taken}")).await.status,
        StatusCode::OK
    );
    assert!(dir.join("reserve").exists(), "the reserve is kept again");
}
