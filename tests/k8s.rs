//! The configuration `k8s/` ships works with the real binary: `sagalog serve` on the
//! ConfigMap's `sagalog.toml` and its definitions (the paths the pod mounts replaced by
//! this test's), with the data directory, address and broker overridden on the command
//! line as flags take precedence over the file. It starts, is live and ready, and
//! serves the shipped definitions.

mod common;

use std::path::Path;

use common::{data_dir, get, serve};

const REPO: &str = env!("CARGO_MANIFEST_DIR");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_starts_on_the_shipped_configmap() {
    let root = tempfile::tempdir().unwrap();
    let k8s = Path::new(REPO).join("k8s/base/config");
    let config = k8s.join("sagalog.toml");
    let text = std::fs::read_to_string(&config).unwrap();
    for key in [
        "data_dir = \"/var/lib/sagalog/data\"",
        "definitions = \"/etc/sagalog/definitions\"",
        "listen = \"0.0.0.0:8080\"",
        "probe_listen = \"0.0.0.0:8081\"",
    ] {
        assert!(text.contains(key), "the pod's paths are in the file: {key}");
    }
    // A broker nobody listens on: the relay waits for it, and serving goes on.
    let server = serve(
        &data_dir(&root),
        &[
            "--config",
            config.to_str().unwrap(),
            "--definitions",
            k8s.join("definitions").to_str().unwrap(),
            "--kafka-brokers",
            "127.0.0.1:9",
            "--probe-listen",
            "127.0.0.1:0",
        ],
    );
    let mut c = common::client(&server).await;
    assert_eq!(get(&mut c, "/healthz").await.status, 200);
    let ready = get(&mut c, "/readyz").await;
    assert_eq!(ready.status, 200, "{}", ready.text());
    let definitions = get(&mut c, "/api/v1/definitions").await.json();
    let shipped: Vec<String> = std::fs::read_dir(k8s.join("definitions"))
        .unwrap()
        .map(|e| {
            let v: serde_json::Value =
                serde_json::from_slice(&std::fs::read(e.unwrap().path()).unwrap()).unwrap();
            v["name"].as_str().unwrap().to_string()
        })
        .collect();
    for name in &shipped {
        assert!(
            definitions["items"]
                .as_array()
                .unwrap()
                .iter()
                .any(|d| d["name"] == name.as_str()),
            "{name} is registered: {definitions}"
        );
    }
    let metrics = get(&mut c, "/metrics").await.text();
    assert_eq!(
        common::gauge(&metrics, "sagalog_snapshot_every_records"),
        500_000.0,
        "the file's settings apply (the default is 1000000)"
    );
}
