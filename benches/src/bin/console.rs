//! How the console holds up with a large server: fills a server with `--sagas` finished
//! order sagas (the `load` generator, 10 % compensated) and `--active` waiting ones,
//! then times each call a console page makes, and — when node, puppeteer-core
//! (`monitoring/tools`) and Chromium are there — each page in headless Chromium, from
//! navigation until the page says it is ready.
//!
//! ```sh
//! cargo build --release --bin sagalog -p sagalog && cargo build --release -p sagalog-benches --bin load --bin console
//! target/release/console --sagas 100000
//! ```

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use clap::Parser;
use sagalog_testkit::client::Client;
use sagalog_testkit::process::Server;

#[derive(Parser, Debug)]
#[command(about = "Time the console's pages and API calls against a server holding many sagas")]
struct Args {
    /// Finished sagas to fill the server with
    #[arg(long, default_value_t = 100_000)]
    sagas: u64,
    /// Sagas started and left waiting for their first step
    #[arg(long, default_value_t = 2_000)]
    active: u64,
    /// Timed runs of each call and page
    #[arg(long, default_value_t = 10)]
    runs: usize,
}

fn main() -> Result<(), String> {
    let args = Args::parse();
    let here = std::env::current_exe().map_err(|e| e.to_string())?;
    let (sagalog, load) = (here.with_file_name("sagalog"), here.with_file_name("load"));
    for binary in [&sagalog, &load] {
        if !binary.exists() {
            return Err(format!(
                "{} not found: build it first (see the doc comment)",
                binary.display()
            ));
        }
    }
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let server = Server::start(&sagalog, &dir.path().join("data"), &[])?;
    let addr = server.addr;
    let filled = Instant::now();
    let status = Command::new(&load)
        .args([
            "--target",
            &addr.to_string(),
            "--sagas",
            &args.sagas.to_string(),
        ])
        .args(["--in-flight", "2048", "--timeout-s", "1200"])
        .status()
        .map_err(|e| format!("running {}: {e}", load.display()))?;
    if !status.success() {
        return Err(format!("the load generator failed: {status}"));
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    runtime.block_on(async {
        let mut client = Client::connect(addr).await.map_err(|e| e.to_string())?;
        for n in 0..args.active {
            let body = format!(
                r#"{{"type":"order","saga_id":"waiting-{n}","payload":{{"order_id":"W-{n}"}}}}"#
            );
            let answer = client
                .send(
                    hyper::Method::POST,
                    "/api/v1/sagas",
                    &[],
                    Some(body.as_bytes()),
                )
                .await
                .map_err(|e| e.to_string())?;
            if answer.status != 201 {
                return Err(format!("starting waiting-{n}: {}", answer.text()));
            }
        }
        println!(
            "filled in {:.0} s: {} finished and {} waiting sagas",
            filled.elapsed().as_secs_f64(),
            args.sagas,
            args.active
        );
        let stats = client
            .get("/api/v1/stats")
            .await
            .map_err(|e| e.to_string())?
            .json();
        println!("the server says: {}", stats["statuses"]);
        let some = client
            .get("/api/v1/sagas?status=COMPENSATED&limit=1")
            .await
            .map_err(|e| e.to_string())?
            .json();
        let id = some["items"][0]["saga_id"]
            .as_str()
            .unwrap_or("waiting-0")
            .to_string();
        let order = some["items"][0]["payload"]["order"].to_string();
        println!(
            "\nAPI calls of the console's pages (ms over {} runs: median, slowest):",
            args.runs
        );
        let calls = [
            ("overview: stats", "/api/v1/stats".to_string()),
            ("sagas: first page", "/api/v1/sagas?limit=100".to_string()),
            (
                "sagas: COMPLETED",
                "/api/v1/sagas?status=COMPLETED&limit=100".to_string(),
            ),
            (
                "sagas: payload field",
                format!("/api/v1/sagas?payload.order={order}&limit=100"),
            ),
            (
                "sagas: id prefix",
                "/api/v1/sagas?id_prefix=waiting-1&limit=100".to_string(),
            ),
            ("saga: state", format!("/api/v1/sagas/{id}")),
            ("saga: history", format!("/api/v1/sagas/{id}/history")),
            ("definitions", "/api/v1/definitions?limit=100".to_string()),
            (
                "dead letters",
                "/internal/v1/outbox/dead-letters?limit=100".to_string(),
            ),
        ];
        for (name, path) in &calls {
            let mut took = Vec::with_capacity(args.runs);
            let mut items = 0;
            for _ in 0..args.runs {
                let started = Instant::now();
                let answer = client.get(path).await.map_err(|e| e.to_string())?;
                took.push(started.elapsed());
                if answer.status != 200 {
                    return Err(format!("{path}: {} {}", answer.status, answer.text()));
                }
                items = answer.json()["items"].as_array().map_or(0, Vec::len);
            }
            let (median, slowest) = spread(&mut took);
            println!("  {name:<22} {median:>7.1} {slowest:>7.1}   ({items} items) {path}");
        }
        Ok::<_, String>(browser(addr, &id, args.runs))
    })??;
    let status = server.terminate()?;
    if !status.success() {
        return Err(format!("the server exited with {status}"));
    }
    Ok(())
}

fn spread(took: &mut [Duration]) -> (f64, f64) {
    took.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    (ms(took[took.len() / 2]), ms(took[took.len() - 1]))
}

/// Each page in headless Chromium, when the tools are there.
fn browser(addr: std::net::SocketAddr, saga: &str, runs: usize) -> Result<(), String> {
    let tools = Path::new(env!("CARGO_MANIFEST_DIR")).join("../monitoring/tools");
    let chromium = std::env::var_os("SAGALOG_CHROMIUM")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/chromium"));
    if !chromium.exists() || !tools.join("node_modules/puppeteer-core").exists() {
        println!("\n(no Chromium or puppeteer-core: run scripts/test once to time the pages in a browser)");
        return Ok(());
    }
    println!("\npages in headless Chromium (ms from navigation to ready over {runs} runs: median, slowest):");
    let status = Command::new("node")
        .arg(tools.join("console-timing.mjs"))
        .env("SAGALOG_URL", format!("http://{addr}"))
        .env("SAGALOG_CHROMIUM", &chromium)
        .env("SAGALOG_SAGA", saga)
        .env("SAGALOG_RUNS", runs.to_string())
        .status()
        .map_err(|e| format!("running node: {e}"))?;
    if !status.success() {
        return Err(format!("timing the pages failed: {status}"));
    }
    Ok(())
}
