//! HTTP request bodies through the real handlers over a real engine.
#![no_main]

use std::sync::{Arc, OnceLock};

use libfuzzer_sys::fuzz_target;
use sagalog_http::App;

struct Fixture {
    runtime: tokio::runtime::Runtime,
    app: Arc<App>,
    _dir: tempfile::TempDir,
}

static FIXTURE: OnceLock<Fixture> = OnceLock::new();

fuzz_target!(|data: &[u8]| {
    let fixture = FIXTURE.get_or_init(|| {
        let dir = tempfile::tempdir().expect("a scratch directory");
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("a runtime");
        let app = runtime.block_on(sagalog_http::fuzzing::app(dir.path()));
        Fixture {
            runtime,
            app,
            _dir: dir,
        }
    });
    fixture
        .runtime
        .block_on(sagalog_http::fuzzing::bodies(&fixture.app, data));
});
