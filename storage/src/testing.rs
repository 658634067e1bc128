//! Test support shared by this crate's tests and the binary's: a real size-limited
//! filesystem (a tmpfs the test mounts, which needs root), a filler that takes its
//! space, and a listing of every file's bytes. Not for production use.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

/// A tmpfs mounted on a directory, unmounted when dropped.
pub struct Tmpfs(PathBuf);

impl Tmpfs {
    /// Whether this process may mount one (it is root).
    pub fn can_mount() -> bool {
        Command::new("id")
            .arg("-u")
            .output()
            .is_ok_and(|out| String::from_utf8_lossy(&out.stdout).trim() == "0")
    }

    /// Whether a test that needs one runs: true when this process may mount one;
    /// otherwise the test says it skipped and returns, except in CI (`CI=true`), where
    /// it fails instead of passing unrun.
    pub fn available_or_skip() -> bool {
        if Tmpfs::can_mount() {
            return true;
        }
        let in_ci = std::env::var("CI").is_ok_and(|v| v.eq_ignore_ascii_case("true"));
        assert!(
            !in_ci,
            "CI=true, and mounting a size-limited tmpfs needs root: this test would pass without running"
        );
        eprintln!("skipped: mounting a size-limited tmpfs needs root");
        false
    }

    /// Mounts a tmpfs of `bytes` on `dir`.
    pub fn mount(dir: &Path, bytes: u64) -> Tmpfs {
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={bytes}"), "tmpfs"])
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

    /// Gives the filesystem `bytes` in all (more room, as an operator growing a volume).
    pub fn resize(&self, bytes: u64) {
        let status = Command::new("mount")
            .args(["-o", &format!("remount,size={bytes}")])
            .arg(&self.0)
            .status()
            .expect("run mount");
        assert!(status.success(), "remounting {} failed", self.0.display());
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

/// Fills the filesystem of `path` with that one file, leaving `room` bytes free (0:
/// full), and makes it durable.
pub fn fill_leaving(path: &Path, room: u64) {
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
    assert!(
        written >= room,
        "the filler found only {written} bytes free"
    );
    filler.set_len(written - room).unwrap();
    filler.sync_all().unwrap();
}

/// Every file under `dir` with its bytes, sorted by path: to check that a command
/// changed not one byte.
pub fn tree(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else {
                let bytes = std::fs::read(&path).unwrap();
                out.push((path, bytes));
            }
        }
    }
    out.sort();
    out
}
