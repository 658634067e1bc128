//! `sagalog serve` on a small filesystem the test mounts (a size-limited tmpfs; the test
//! runner is root, elsewhere the test says it skipped): below the free-space watermark
//! writes answer 503 and `/readyz` fails, reads go on, and it resumes by itself once
//! space returns; with the watermark off, a really full disk answers 503 too and heals.
//! No acknowledged write is lost, across a SIGKILL as well.

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::{get, post, serve};
use hyper::StatusCode;
use serde_json::json;

const FS_BYTES: u64 = 64 << 20;

struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: &Path) -> Tmpfs {
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={FS_BYTES}"), "tmpfs"])
            .arg(dir)
            .status()
            .expect("run mount");
        assert!(
            status.success(),
            "mounting a tmpfs at {} failed as root",
            dir.display()
        );
        Tmpfs(dir.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|out| String::from_utf8_lossy(&out.stdout).trim() == "0")
}

/// Fills the filesystem with one file, leaving `room` bytes free (0: full).
fn fill_leaving(path: &Path, room: u64) {
    let mut filler = std::fs::File::create(path).unwrap();
    let chunk = vec![0xeeu8; 64 * 1024];
    let mut written = 0u64;
    loop {
        match filler.write(&chunk) {
            Ok(n) => written += n as u64,
            Err(e) if e.raw_os_error() == Some(28) => break, // ENOSPC
            Err(e) => panic!("filling the test filesystem: {e}"),
        }
    }
    filler.set_len(written.saturating_sub(room)).unwrap();
    filler.sync_all().unwrap();
}

/// Starts saga `id`: true when acknowledged (201), false on 503 (with its message
/// checked by `expect`); any other answer fails the test.
async fn try_start(c: &mut sagalog_http::client::Client, id: &str, expect: &str) -> bool {
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
async fn taken_again(c: &mut sagalog_http::client::Client, prefix: &str, expect: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    for n in 0.. {
        let id = format!("{prefix}-{n}");
        if try_start(c, &id, expect).await {
            return id;
        }
        assert!(
            Instant::now() < deadline,
            "writes still refused 10 s after space returned"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    unreachable!("the loop returns or fails")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn below_the_watermark_writes_wait_and_a_full_disk_loses_nothing() {
    if !is_root() {
        eprintln!("skipped: mounting a size-limited tmpfs needs root");
        return;
    }
    let root = tempfile::tempdir().unwrap();
    let _fs = Tmpfs::mount(root.path());
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
