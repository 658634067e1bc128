//! The `record` and `decider` fuzz targets' corpora (seeds, and every crash found, kept
//! in `fuzz/corpus/`) as ordinary tests.

fn corpus(target: &str) -> Vec<Vec<u8>> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus")
        .join(target);
    let inputs: Vec<Vec<u8>> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|entry| std::fs::read(entry.unwrap().path()).unwrap())
        .collect();
    assert!(
        inputs.len() >= 3,
        "the corpus at {} has {} inputs",
        dir.display(),
        inputs.len()
    );
    inputs
}

#[test]
fn every_record_corpus_input_keeps_the_invariants() {
    for input in corpus("record") {
        sagalog_engine::fuzzing::record(&input);
    }
}

#[test]
fn every_decider_corpus_input_keeps_the_invariants() {
    for input in corpus("decider") {
        sagalog_engine::fuzzing::decider(&input);
    }
}
