//! The CPU and memory limits of the cgroup the process runs in — a pod's container
//! limits on Kubernetes — read from the cgroup filesystem at each scrape, so that
//! dashboards and alerts can set `process_cpu_seconds_total` and
//! `process_resident_memory_bytes` against them without kube-state-metrics.
//!
//! Both cgroup versions: v2's `cpu.max` (`"<quota> <period>"` or `"max <period>"`) and
//! `memory.max` (bytes or `"max"`), v1's `cpu.cfs_quota_us`/`cpu.cfs_period_us` (`-1`:
//! none) and `memory.limit_in_bytes` (a value near `i64::MAX`: none). The process's own
//! cgroup is named in `/proc/self/cgroup`; a limit set on any cgroup above it applies
//! too, so the effective limit is the smallest found from the process's cgroup up to
//! the root of the mount. In a container whose cgroup namespace hides the path, that
//! root is the container's own cgroup. A limit that is not set is `None`, and its
//! metric is absent rather than a made-up number.

use std::path::{Path, PathBuf};

/// Where the cgroup filesystem is mounted, unless configured otherwise.
pub const DEFAULT_ROOT: &str = "/sys/fs/cgroup";

/// v1 reports "no memory limit" as a page-rounded `i64::MAX`; anything above this is
/// no limit.
const V1_UNLIMITED_ABOVE: u64 = 1 << 62;

/// The limits found, `None` where there is none.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Limits {
    /// CPU time per second the cgroup may use, in cores (quota / period).
    pub cpu_cores: Option<f64>,
    pub memory_bytes: Option<u64>,
}

/// The cgroups of a process, as `/proc/<pid>/cgroup` lists them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Membership {
    /// The v2 (unified) cgroup path (`0::/path`).
    unified: Option<String>,
    /// The v1 paths by controller (`4:memory:/path`, `2:cpu,cpuacct:/path`).
    v1: Vec<(String, String)>,
}

impl Membership {
    fn parse(text: &str) -> Membership {
        let mut out = Membership::default();
        for line in text.lines() {
            let mut parts = line.splitn(3, ':');
            let (Some(_id), Some(controllers), Some(path)) =
                (parts.next(), parts.next(), parts.next())
            else {
                continue;
            };
            if controllers.is_empty() {
                out.unified = Some(path.to_string());
            } else {
                for controller in controllers.split(',') {
                    out.v1.push((controller.to_string(), path.to_string()));
                }
            }
        }
        out
    }

    fn v1_path(&self, controller: &str) -> Option<&str> {
        self.v1
            .iter()
            .find(|(c, _)| c == controller)
            .map(|(_, path)| path.as_str())
    }
}

/// Reads the limits of this process's cgroups under `root` (the cgroup mount).
pub fn read(root: &Path) -> Limits {
    let membership = std::fs::read_to_string("/proc/self/cgroup")
        .map(|text| Membership::parse(&text))
        .unwrap_or_default();
    read_for(root, &membership)
}

fn read_for(root: &Path, membership: &Membership) -> Limits {
    let mut limits = Limits::default();
    // v2: the unified hierarchy at the root (a hybrid host mounts it at `unified/`,
    // where no controller is enabled and these files do not exist).
    let unified = membership.unified.as_deref().unwrap_or("/");
    for dir in up_from(root, unified) {
        if let Some(cores) = read_file(&dir, "cpu.max").and_then(|t| parse_cpu_max(&t)) {
            limits.cpu_cores = smaller(limits.cpu_cores, cores);
        }
        if let Some(bytes) = read_file(&dir, "memory.max").and_then(|t| parse_memory_max(&t)) {
            limits.memory_bytes = smaller(limits.memory_bytes, bytes);
        }
    }
    // v1: one mount per controller (`cpu` is often a link to `cpu,cpuacct`).
    let cpu_path = membership.v1_path("cpu").unwrap_or("/");
    for dir in up_from(&root.join("cpu"), cpu_path) {
        let quota = read_file(&dir, "cpu.cfs_quota_us").and_then(|t| t.trim().parse::<i64>().ok());
        let period =
            read_file(&dir, "cpu.cfs_period_us").and_then(|t| t.trim().parse::<u64>().ok());
        if let (Some(quota), Some(period)) = (quota, period) {
            if quota > 0 && period > 0 {
                limits.cpu_cores = smaller(limits.cpu_cores, quota as f64 / period as f64);
            }
        }
    }
    let memory_path = membership.v1_path("memory").unwrap_or("/");
    for dir in up_from(&root.join("memory"), memory_path) {
        let bytes = read_file(&dir, "memory.limit_in_bytes")
            .and_then(|t| t.trim().parse::<u64>().ok())
            .filter(|&b| b > 0 && b < V1_UNLIMITED_ABOVE);
        if let Some(bytes) = bytes {
            limits.memory_bytes = smaller(limits.memory_bytes, bytes);
        }
    }
    limits
}

/// The directories from `mount/path` up to `mount`, the deepest first. A path that
/// does not exist under the mount (a cgroup namespace shows the host's path while the
/// mount is the container's own cgroup) is skipped to the part that does.
fn up_from(mount: &Path, path: &str) -> Vec<PathBuf> {
    let parts: Vec<&str> = path
        .split('/')
        .filter(|p| !p.is_empty() && *p != "." && *p != "..")
        .collect();
    (0..=parts.len())
        .rev()
        .map(|n| {
            parts[..n]
                .iter()
                .fold(mount.to_path_buf(), |dir, p| dir.join(p))
        })
        .filter(|dir| dir.is_dir())
        .collect()
}

fn read_file(dir: &Path, name: &str) -> Option<String> {
    std::fs::read_to_string(dir.join(name)).ok()
}

/// `cpu.max`: `"<quota> <period>"` in microseconds, or `"max <period>"` for none.
fn parse_cpu_max(text: &str) -> Option<f64> {
    let mut parts = text.split_whitespace();
    let quota = parts.next()?.parse::<u64>().ok()?;
    let period = parts
        .next()
        .map_or(Some(100_000), |p| p.parse::<u64>().ok())?;
    (quota > 0 && period > 0).then(|| quota as f64 / period as f64)
}

/// `memory.max`: bytes, or `"max"` for none.
fn parse_memory_max(text: &str) -> Option<u64> {
    text.trim().parse::<u64>().ok().filter(|&b| b > 0)
}

fn smaller<T: PartialOrd>(current: Option<T>, found: T) -> Option<T> {
    match current {
        Some(current) if current <= found => Some(current),
        _ => Some(found),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) {
        std::fs::create_dir_all(dir).unwrap();
        std::fs::write(dir.join(name), text).unwrap();
    }

    #[test]
    fn reads_membership_of_both_versions() {
        let m = Membership::parse(
            "12:memory:/kubepods/pod1/c1\n4:cpu,cpuacct:/kubepods/pod1/c1\n0::/kubepods/pod1/c1\n",
        );
        assert_eq!(m.unified.as_deref(), Some("/kubepods/pod1/c1"));
        assert_eq!(m.v1_path("memory"), Some("/kubepods/pod1/c1"));
        assert_eq!(m.v1_path("cpu"), Some("/kubepods/pod1/c1"));
        assert_eq!(m.v1_path("cpuacct"), Some("/kubepods/pod1/c1"));
        assert_eq!(m.v1_path("pids"), None);
    }

    #[test]
    fn v2_limits_are_the_smallest_from_the_process_cgroup_up() {
        let root = tempfile::tempdir().unwrap();
        let pod = root.path().join("kubepods/pod1");
        let container = pod.join("c1");
        write(root.path(), "cpu.max", "max 100000\n");
        write(root.path(), "memory.max", "max\n");
        write(&pod, "cpu.max", "150000 100000\n");
        write(&pod, "memory.max", "536870912\n");
        write(&container, "cpu.max", "200000 100000\n");
        write(&container, "memory.max", "max\n");
        let membership = Membership::parse("0::/kubepods/pod1/c1\n");
        let limits = read_for(root.path(), &membership);
        assert_eq!(limits.cpu_cores, Some(1.5));
        assert_eq!(limits.memory_bytes, Some(536_870_912));
    }

    #[test]
    fn v2_without_limits_has_none() {
        let root = tempfile::tempdir().unwrap();
        write(root.path(), "cpu.max", "max 100000\n");
        write(root.path(), "memory.max", "max\n");
        let limits = read_for(root.path(), &Membership::parse("0::/\n"));
        assert_eq!(limits, Limits::default());
    }

    #[test]
    fn a_namespaced_path_falls_back_to_the_mount_root() {
        // The host's path is listed, but the mount is the container's own cgroup.
        let root = tempfile::tempdir().unwrap();
        write(root.path(), "cpu.max", "50000 100000\n");
        write(root.path(), "memory.max", "268435456\n");
        let limits = read_for(root.path(), &Membership::parse("0::/docker/abc\n"));
        assert_eq!(limits.cpu_cores, Some(0.5));
        assert_eq!(limits.memory_bytes, Some(268_435_456));
    }

    #[test]
    fn v1_limits_and_v1_unlimited() {
        let root = tempfile::tempdir().unwrap();
        let cpu = root.path().join("cpu/kubepods/pod1");
        let memory = root.path().join("memory/kubepods/pod1");
        write(&root.path().join("cpu"), "cpu.cfs_quota_us", "-1\n");
        write(&root.path().join("cpu"), "cpu.cfs_period_us", "100000\n");
        write(&cpu, "cpu.cfs_quota_us", "300000\n");
        write(&cpu, "cpu.cfs_period_us", "100000\n");
        write(
            &root.path().join("memory"),
            "memory.limit_in_bytes",
            "9223372036854771712\n",
        );
        write(&memory, "memory.limit_in_bytes", "1073741824\n");
        let membership =
            Membership::parse("5:memory:/kubepods/pod1\n3:cpu,cpuacct:/kubepods/pod1\n");
        let limits = read_for(root.path(), &membership);
        assert_eq!(limits.cpu_cores, Some(3.0));
        assert_eq!(limits.memory_bytes, Some(1_073_741_824));

        // The same hierarchy without the pod's limits: none.
        std::fs::remove_dir_all(root.path().join("cpu/kubepods")).unwrap();
        std::fs::remove_dir_all(root.path().join("memory/kubepods")).unwrap();
        assert_eq!(read_for(root.path(), &membership), Limits::default());
    }
}
