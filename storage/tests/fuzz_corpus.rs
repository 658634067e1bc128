//! The `segment` fuzz target's corpus (seeds, and every crash found, kept in
//! `fuzz/corpus/segment/`) as an ordinary test.

#[test]
fn every_segment_corpus_input_keeps_the_invariants() {
    let corpus = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/segment");
    let scratch = tempfile::tempdir().unwrap();
    let mut inputs = 0;
    for entry in std::fs::read_dir(&corpus).unwrap() {
        let path = entry.unwrap().path();
        sagalog_storage::fuzzing::segment(scratch.path(), &std::fs::read(&path).unwrap());
        inputs += 1;
    }
    assert!(
        inputs >= 4,
        "the corpus at {} has {inputs} inputs",
        corpus.display()
    );
}
