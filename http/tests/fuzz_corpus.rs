//! The `http_bodies` fuzz target's corpus (seeds, and every crash found, kept in
//! `fuzz/corpus/http_bodies/`) as an ordinary test, through the real handlers.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_body_corpus_input_gets_a_success_or_a_4xx() {
    let corpus =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/http_bodies");
    let scratch = tempfile::tempdir().unwrap();
    let app = sagalog_http::fuzzing::app(scratch.path()).await;
    let mut inputs = 0;
    for entry in std::fs::read_dir(&corpus).unwrap() {
        let input = std::fs::read(entry.unwrap().path()).unwrap();
        sagalog_http::fuzzing::bodies(&app, &input).await;
        inputs += 1;
    }
    assert!(
        inputs >= 4,
        "the corpus at {} has {inputs} inputs",
        corpus.display()
    );
}
