//! Memory per active saga: heap bytes the engine holds for 100,000 order sagas waiting
//! on their first step, counted by a global allocator that tracks live bytes; then for
//! 100,000 more whose first step succeeded with 200 bytes of `data` (their results),
//! waiting on the second. Payloads and results stay in the log and are not counted
//! because they are not held.
//!
//! `cargo bench -p sagalog-benches --bench engine_memory` prints both figures (targets:
//! at most 300 bytes per active saga, and at most 300 plus the results' 200 with them).

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};
use std::sync::Arc;

use sagalog_benches::{engine_in_tempdir, start_order};
use sagalog_engine::{Engine, Outcome, Reply};

struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_add(
            new_size as isize - layout.size() as isize,
            Ordering::Relaxed,
        );
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

const SAGAS: usize = 100_000;

fn main() {
    let (runtime, dir, config) = engine_in_tempdir();
    let engine = Arc::new(Engine::open(dir.path(), config).unwrap());
    // Starts sagas `first..first + count`; with `data`, their first step succeeds with it.
    let start = |first: usize, count: usize, data: Option<String>| {
        let engine = engine.clone();
        runtime.block_on(async move {
            let tasks: Vec<_> = (0..256)
                .map(|t| {
                    let (engine, data) = (engine.clone(), data.clone());
                    tokio::spawn(async move {
                        for i in (first + t..first + count).step_by(256) {
                            let id = format!("m-{i:08}");
                            start_order(&engine, id.clone()).await;
                            if let Some(data) = &data {
                                let reply = Reply {
                                    event_id: format!("{id}/r"),
                                    step: "reserve_inventory".into(),
                                    outcome: Outcome::Succeeded,
                                    attempt: 1,
                                    data: data.clone(),
                                    reason: String::new(),
                                };
                                engine.reply(&id, reply).await.unwrap();
                            }
                        }
                    })
                })
                .collect();
            for task in tasks {
                task.await.unwrap();
            }
            engine.wait_indexed().await.unwrap();
        })
    };
    // Warm up so that buffers and caches that do not grow per saga are allocated.
    start(0, 10_000, None);
    let before = LIVE.load(Ordering::Relaxed);
    start(10_000, SAGAS, None);
    let after = LIVE.load(Ordering::Relaxed);
    let per_saga = (after - before) as f64 / SAGAS as f64;
    let active = engine.stats().active_by_status.iter().sum::<usize>();
    assert_eq!(active, SAGAS + 10_000);
    println!(
        "engine_memory: {per_saga:.0} bytes of heap per active saga ({SAGAS} sagas; target <= 300)"
    );
    // 200 bytes of data as JSON: `{"reservation":"…"}` around the padding.
    let data = format!(r#"{{"reservation":"{}"}}"#, "r".repeat(200 - 18));
    assert_eq!(data.len(), 200);
    let before = LIVE.load(Ordering::Relaxed);
    start(10_000 + SAGAS, SAGAS, Some(data));
    let after = LIVE.load(Ordering::Relaxed);
    let per_saga = (after - before) as f64 / SAGAS as f64;
    println!(
        "engine_memory: {per_saga:.0} bytes of heap per active saga with 200 bytes of results \
         ({SAGAS} sagas; target <= 300 + 200)"
    );
}
