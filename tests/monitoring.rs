//! The dashboards, alert rules and runbooks of `monitoring/` against a real `/metrics`:
//! every metric name their PromQL uses is one the server exports (scraped from `serve
//! --demo` once its sagas have moved, so every labelled family has series), and every
//! alert's `runbook_url` points at a section of `monitoring/RUNBOOKS.md`.

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use common::{data_dir, get, serve};
use yaml_rust2::{Yaml, YamlLoader};

const REPO: &str = env!("CARGO_MANIFEST_DIR");
const PREFIXES: [&str; 4] = ["saga_", "outbox_", "sagalog_", "process_"];

/// The alert rules: (alert name, expression, runbook_url).
fn alerts() -> Vec<(String, String, String)> {
    let text =
        std::fs::read_to_string(Path::new(REPO).join("monitoring/alerts/sagalog.yaml")).unwrap();
    let docs = YamlLoader::load_from_str(&text).unwrap();
    let mut out = Vec::new();
    for group in docs[0]["groups"].as_vec().unwrap() {
        for rule in group["rules"].as_vec().unwrap() {
            out.push((
                rule["alert"].as_str().unwrap().to_string(),
                rule["expr"].as_str().unwrap().to_string(),
                rule["annotations"]["runbook_url"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
            ));
        }
    }
    assert!(
        !matches!(docs[0], Yaml::BadValue) && out.len() >= 20,
        "the alert rules were read"
    );
    out
}

/// The `promql` blocks of the runbooks.
fn runbook_queries() -> Vec<(String, String)> {
    let text = std::fs::read_to_string(Path::new(REPO).join("monitoring/RUNBOOKS.md")).unwrap();
    common::fenced_blocks(&text)
        .into_iter()
        .filter(|block| block.language == "promql")
        .map(|block| (format!("RUNBOOKS.md {}", block.section), block.text))
        .collect()
}

/// The metric names an expression uses: identifiers with one of sagalog's prefixes,
/// outside label matchers (`{...}`), grouping clauses (`by (...)`, `on (...)`, ...) and
/// strings.
fn metric_names(expr: &str) -> BTreeSet<String> {
    let mut plain = String::with_capacity(expr.len());
    let mut chars = expr.chars().peekable();
    let (mut braces, mut quote) = (0usize, None::<char>);
    while let Some(c) = chars.next() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), '\\') => {
                chars.next();
            }
            (Some(_), _) => {}
            (None, '"' | '\'' | '`') => quote = Some(c),
            (None, '{') => braces += 1,
            (None, '}') => braces = braces.saturating_sub(1),
            (None, c) if braces == 0 => plain.push(c),
            (None, _) => {}
        }
    }
    // Drop the label lists of grouping and matching clauses.
    let mut text = plain;
    for keyword in [
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
    ] {
        let mut rest = String::new();
        let mut tokens = text.as_str();
        while let Some(at) = find_keyword(tokens, keyword) {
            rest.push_str(&tokens[..at]);
            let after = tokens[at + keyword.len()..].trim_start();
            tokens = match after.strip_prefix('(') {
                Some(inner) => inner.split_once(')').map_or("", |(_, r)| r),
                None => after,
            };
        }
        rest.push_str(tokens);
        text = rest;
    }
    text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
        .filter(|word| PREFIXES.iter().any(|p| word.starts_with(p)))
        .map(str::to_string)
        .collect()
}

/// The byte position of `keyword` as a whole word in `text`.
fn find_keyword(text: &str, keyword: &str) -> Option<usize> {
    let word = |c: Option<char>| c.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_');
    let mut from = 0;
    while let Some(found) = text[from..].find(keyword) {
        let at = from + found;
        let before = text[..at].chars().next_back();
        let after = text[at + keyword.len()..].chars().next();
        if !word(before) && !word(after) {
            return Some(at);
        }
        from = at + keyword.len();
    }
    None
}

#[test]
fn metric_names_are_found_in_promql_but_labels_are_not() {
    let names = metric_names(
        r#"sum by (saga_type, le) (rate(saga_duration_seconds_bucket{namespace=~"$namespace", saga_type=~"x"}[5m])) / on (namespace, instance) group_left (saga_type) sagalog_log_bytes and ignoring(saga_type) outbox_x"#,
    );
    assert_eq!(
        names.into_iter().collect::<Vec<_>>(),
        [
            "outbox_x",
            "saga_duration_seconds_bucket",
            "sagalog_log_bytes"
        ]
    );
}

/// The metrics only a server with other pods (`--nodes`) exports.
const CLUSTER_ONLY: &[&str] = &["sagalog_peer_up"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_the_dashboards_alerts_and_runbooks_use_is_exported() {
    let root = tempfile::tempdir().unwrap();
    // A cgroup with limits, so that the limit gauges (absent without one) are exported.
    let cgroup = common::cgroup_with_limits(root.path());
    let server = serve(
        &data_dir(&root),
        &["--demo", "--cgroup-root", cgroup.to_str().unwrap()],
    );
    let mut c = common::client(&server).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    get(&mut c, "/api/v1/sagas?limit=1").await;
    let metrics = get(&mut c, "/metrics").await.text();
    // Sample names, and the family names of TYPE lines (a family with no series yet).
    let exported: BTreeSet<String> = metrics
        .lines()
        .filter_map(|line| match line.strip_prefix("# TYPE ") {
            Some(rest) => rest.split(' ').next(),
            None if line.starts_with('#') => None,
            None => line.split(['{', ' ']).next(),
        })
        .map(str::to_string)
        .collect();

    let mut queries = common::dashboard_queries();
    queries.extend(runbook_queries());
    queries.extend(alerts().into_iter().map(|(alert, expr, _)| (alert, expr)));
    let mut unknown = Vec::new();
    let mut used = BTreeSet::new();
    for (place, expr) in &queries {
        for name in metric_names(expr) {
            // Exported by pods of a deployment of several only: tests/cluster.rs holds
            // their /metrics to it.
            if CLUSTER_ONLY.contains(&name.as_str()) {
                used.insert(name);
                continue;
            }
            if !exported.contains(&name) {
                unknown.push(format!("{place}: {name}"));
            }
            used.insert(name);
        }
    }
    assert!(
        unknown.is_empty(),
        "names /metrics does not export:\n{}",
        unknown.join("\n")
    );
    assert!(
        used.len() >= 30,
        "the queries use {} names: {used:?}",
        used.len()
    );
    // The names the outbox dashboard and its alerts added are among those used and
    // exported; the limits carry the fixture's values.
    for name in [
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
        "sagalog_cgroup_cpu_limit_cores",
        "sagalog_cgroup_memory_limit_bytes",
        "outbox_optimistic_send_total",
        "outbox_publish_batch_size_count",
        "outbox_publish_batch_size_sum",
    ] {
        assert!(used.contains(name), "no query uses {name}");
    }
    assert!(exported.contains("process_open_fds"), "{metrics}");
    assert_eq!(
        common::gauge(&metrics, "sagalog_cgroup_cpu_limit_cores"),
        2.0
    );
    assert_eq!(
        common::gauge(&metrics, "sagalog_cgroup_memory_limit_bytes"),
        1_073_741_824.0
    );
    assert!(common::gauge(&metrics, "process_resident_memory_bytes") > 1e6);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_cgroup_limit_the_limit_gauges_are_absent() {
    let root = tempfile::tempdir().unwrap();
    // A cgroup v2 root that sets no limit ("max").
    let cgroup = root.path().join("cgroup");
    std::fs::create_dir_all(&cgroup).unwrap();
    std::fs::write(cgroup.join("cpu.max"), "max 100000\n").unwrap();
    std::fs::write(cgroup.join("memory.max"), "max\n").unwrap();
    let server = serve(
        &data_dir(&root),
        &["--cgroup-root", cgroup.to_str().unwrap()],
    );
    let mut c = common::client(&server).await;
    let metrics = get(&mut c, "/metrics").await.text();
    assert!(!metrics.contains("sagalog_cgroup_"), "{metrics}");
    assert!(metrics.contains("process_cpu_seconds_total"), "{metrics}");
}

/// GitHub's anchor for a heading: lower case, spaces to dashes, punctuation dropped.
fn anchor(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
            _ => None,
        })
        .collect()
}

#[test]
fn every_alert_has_a_runbook_section_and_every_link_lands() {
    let text = std::fs::read_to_string(Path::new(REPO).join("monitoring/RUNBOOKS.md")).unwrap();
    let anchors: BTreeSet<String> = text
        .lines()
        .filter(|l| l.starts_with('#'))
        .map(|l| anchor(l.trim_start_matches('#')))
        .collect();
    for (alert, _, url) in alerts() {
        let (base, fragment) = url
            .split_once('#')
            .unwrap_or_else(|| panic!("{alert}: runbook_url {url:?} has no section"));
        assert!(base.ends_with("/monitoring/RUNBOOKS.md"), "{alert}: {url}");
        assert_eq!(fragment, alert.to_lowercase(), "{alert}: its own section");
        assert!(
            anchors.contains(fragment),
            "{alert}: RUNBOOKS.md has no section #{fragment}"
        );
    }
    // Links inside the runbooks land too.
    for (at, _) in text.match_indices("](#") {
        let target = &text[at + 3..];
        let target = &target[..target.find(')').unwrap()];
        assert!(anchors.contains(target), "RUNBOOKS.md links to #{target}");
    }
}
