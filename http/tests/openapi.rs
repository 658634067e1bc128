//! `openapi.yaml` and the router describe the same routes: a route in one and not the
//! other fails this test.

use std::collections::BTreeSet;

use sagalog_http::routes::ROUTES;

/// (METHOD, path) of every operation under `paths:` (two-space path keys, four-space
/// method keys: the layout the file keeps).
fn documented() -> BTreeSet<(String, String)> {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/openapi.yaml"))
        .expect("http/openapi.yaml exists");
    let mut in_paths = false;
    let mut path = None;
    let mut out = BTreeSet::new();
    for line in text.lines() {
        if !line.starts_with(' ') && !line.is_empty() {
            in_paths = line == "paths:";
            continue;
        }
        if !in_paths {
            continue;
        }
        if let Some(key) = line.strip_prefix("  ").filter(|l| l.starts_with('/')) {
            path = Some(key.trim_end_matches(':').to_string());
        } else if let Some(key) = line.strip_prefix("    ").filter(|l| !l.starts_with(' ')) {
            let method = key.trim_end_matches(':');
            if ["get", "post", "put", "patch", "delete"].contains(&method) {
                let path = path.clone().expect("a method under a path");
                out.insert((method.to_uppercase(), path));
            }
        }
    }
    out
}

#[test]
fn every_route_is_documented_and_every_documented_route_exists() {
    let routed: BTreeSet<(String, String)> = ROUTES
        .iter()
        .map(|(method, pattern, _, _)| (method.to_string(), pattern.to_string()))
        .collect();
    let documented = documented();
    let undocumented: Vec<_> = routed.difference(&documented).collect();
    let unrouted: Vec<_> = documented.difference(&routed).collect();
    assert!(
        undocumented.is_empty() && unrouted.is_empty(),
        "in the router but not openapi.yaml: {undocumented:?}; in openapi.yaml but not the router: {unrouted:?}"
    );
}
