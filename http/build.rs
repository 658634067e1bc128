//! Embeds the console (`console/`: HTML, CSS, ES modules) in the crate: writes
//! `$OUT_DIR/console_assets.rs`, a table of every file's path under `console/` and its
//! bytes (`include_bytes!`), so the binary serves it with nothing on disk and cargo
//! rebuilds when a file changes, appears or goes.

use std::path::{Path, PathBuf};

fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("console");
    println!("cargo:rerun-if-changed={}", root.display());
    let mut files = Vec::new();
    if root.is_dir() {
        walk(&root, &mut files);
    }
    files.sort();
    let mut table = String::from("&[\n");
    for file in &files {
        println!("cargo:rerun-if-changed={}", file.display());
        let relative = file
            .strip_prefix(&root)
            .expect("under the console directory");
        let name = relative
            .components()
            .map(|c| {
                c.as_os_str()
                    .to_str()
                    .expect("console file names are UTF-8")
            })
            .collect::<Vec<_>>()
            .join("/");
        table.push_str(&format!(
            "    ({name:?}, include_bytes!({path:?}) as &[u8]),\n",
            path = file.display().to_string()
        ));
    }
    table.push_str("]\n");
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    std::fs::write(out.join("console_assets.rs"), table).expect("OUT_DIR is writable");
}

fn walk(dir: &Path, files: &mut Vec<PathBuf>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .expect("the console directory is readable")
        .map(|e| e.expect("a console directory entry").path())
        .collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            walk(&path, files);
        } else if !path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with('.'))
        {
            files.push(path);
        }
    }
}
