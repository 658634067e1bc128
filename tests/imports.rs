//! The modules of each crate name each other without a circle (ARCHITECTURE.md): a
//! module that uses another is above it, and nothing below reaches back up. Read from
//! the sources: every `crate::…` path outside comments and test modules.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The source folders of the workspace's crates.
const CRATES: &[&str] = &[
    "storage/src",
    "engine/src",
    "http/src",
    "relay/src",
    "client/src",
    "benches/src",
    "testkit/src",
    "src",
];

#[test]
fn no_crate_has_an_import_circle() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut circles = Vec::new();
    for dir in CRATES {
        let src = root.join(dir);
        assert!(
            src.join("lib.rs").is_file() || src.join("main.rs").is_file(),
            "{dir}: not a crate's sources"
        );
        let modules = modules(&src);
        let graph = uses(&modules);
        if let Some(circle) = circle(&graph) {
            circles.push(format!("{dir}: {}", circle.join(" -> ")));
        }
    }
    assert!(
        circles.is_empty(),
        "import circles:\n{}",
        circles.join("\n")
    );
}

#[test]
fn a_circle_is_found() {
    let graph: BTreeMap<String, BTreeSet<String>> = [
        ("a", &["b"][..]),
        ("b", &["c"][..]),
        ("c", &["a"][..]),
        ("d", &["a"][..]),
    ]
    .into_iter()
    .map(|(m, to)| (m.to_string(), to.iter().map(|t| t.to_string()).collect()))
    .collect();
    let found = circle(&graph).expect("a -> b -> c -> a");
    assert_eq!(found.first(), found.last());
    assert_eq!(found.len(), 4, "{found:?}");
    let modules = BTreeMap::from([
        (
            "x".to_string(),
            code_of("use crate::y::{Z, W};\n// crate::z\n"),
        ),
        ("y".to_string(), "fn f() { crate::x::g() }".to_string()),
        ("z".to_string(), String::new()),
    ]);
    let graph = uses(&modules);
    assert_eq!(
        graph["x"],
        BTreeSet::from(["y".to_string()]),
        "comments do not count"
    );
    assert!(circle(&graph).is_some());
}

/// Every module of the crate under `src` (`a::b` for `a/b.rs` or `a/b/mod.rs`), with
/// its source, less comment lines and what follows `#[cfg(test)]`.
fn modules(src: &Path) -> BTreeMap<String, String> {
    let mut files = Vec::new();
    collect(src, &mut files);
    files
        .into_iter()
        .filter_map(|path| {
            let relative = path.strip_prefix(src).unwrap().with_extension("");
            let mut name = relative.to_string_lossy().replace('/', "::");
            if let Some(parent) = name.strip_suffix("::mod") {
                name = parent.to_string();
            }
            if ["lib", "main"].contains(&name.as_str()) || name.starts_with("bin::") {
                return None;
            }
            Some((name, code_of(&std::fs::read_to_string(&path).unwrap())))
        })
        .collect()
}

/// `text` less its comment lines and what follows `#[cfg(test)]`.
fn code_of(text: &str) -> String {
    let code = text.split("#[cfg(test)]").next().unwrap_or_default();
    let lines: Vec<&str> = code
        .lines()
        .filter(|line| !line.trim_start().starts_with("//"))
        .collect();
    lines.join("\n")
}

fn collect(dir: &Path, files: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            collect(&path, files);
        } else if path.extension().is_some_and(|e| e == "rs") {
            files.push(path);
        }
    }
}

/// Which modules each one names: the longest module a `crate::` path starts with
/// (other than itself and the modules it is inside), and each item of a
/// `use crate::{…}` group.
fn uses(modules: &BTreeMap<String, String>) -> BTreeMap<String, BTreeSet<String>> {
    let known = |path: &str, from: &str| -> Option<String> {
        let parts: Vec<&str> = path.split("::").collect();
        (1..=parts.len()).rev().find_map(|n| {
            let candidate = parts[..n].join("::");
            let outer = from.starts_with(&format!("{candidate}::"));
            (modules.contains_key(&candidate) && candidate != from && !outer).then_some(candidate)
        })
    };
    let mut graph = BTreeMap::new();
    for (name, code) in modules {
        let mut named = BTreeSet::new();
        for (at, _) in code.match_indices("crate::") {
            let rest = &code[at + "crate::".len()..];
            if let Some(group) = rest.strip_prefix('{') {
                let group = &group[..group.find("};").unwrap_or(group.len())];
                for item in group.split(',') {
                    let item = item.trim().trim_start_matches('{');
                    if let Some(m) = known(&path_of(item), name) {
                        named.insert(m);
                    }
                }
            } else if let Some(m) = known(&path_of(rest), name) {
                named.insert(m);
            }
        }
        graph.insert(name.clone(), named);
    }
    graph
}

/// The leading `a::b::c` of `text`.
fn path_of(text: &str) -> String {
    let end = text
        .find(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':'))
        .unwrap_or(text.len());
    text[..end].trim_end_matches(':').to_string()
}

/// A circle of `graph` (its first module repeated at its end), if it has one.
fn circle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        Open,
        Done,
    }
    fn visit(
        at: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        marks: &mut BTreeMap<String, Mark>,
        path: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        marks.insert(at.to_string(), Mark::Open);
        path.push(at.to_string());
        for next in graph.get(at).into_iter().flatten() {
            match marks.get(next.as_str()) {
                Some(Mark::Open) => {
                    let from = path.iter().position(|m| m == next).unwrap();
                    let mut found = path[from..].to_vec();
                    found.push(next.clone());
                    return Some(found);
                }
                Some(Mark::Done) => {}
                None => {
                    if let Some(found) = visit(next, graph, marks, path) {
                        return Some(found);
                    }
                }
            }
        }
        path.pop();
        marks.insert(at.to_string(), Mark::Done);
        None
    }
    let mut marks = BTreeMap::new();
    for start in graph.keys() {
        if !marks.contains_key(start) {
            if let Some(found) = visit(start, graph, &mut marks, &mut Vec::new()) {
                return Some(found);
            }
        }
    }
    None
}
