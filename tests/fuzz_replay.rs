//! Replays every fuzz target's saved inputs through its property, on stable and without
//! libFuzzer: the minimised corpus (`fuzz/corpus/<target>/`) and the inputs that once failed
//! (`fuzz/artifacts/<target>/`, kept after their fix). See `docs/FUZZING.md`.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

use mob::fuzzing::TARGETS;

/// The files of `dir`, sorted; none when it does not exist.
fn inputs(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .map(|e| e.expect("a directory entry").path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    files
}

#[test]
fn every_fuzz_target_holds_over_its_corpus_and_past_failures() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let mut failed = Vec::new();
    for (target, property) in TARGETS {
        let corpus = inputs(&root.join("corpus").join(target));
        assert!(!corpus.is_empty(), "no corpus for the fuzz target {target}");
        let artifacts = inputs(&root.join("artifacts").join(target));
        for file in corpus.iter().chain(&artifacts) {
            let data = std::fs::read(file).expect("a readable input");
            if catch_unwind(AssertUnwindSafe(|| property(&data))).is_err() {
                failed.push(file.display().to_string());
            }
        }
    }
    assert!(failed.is_empty(), "properties fail on {failed:#?}");
}

#[test]
fn every_fuzz_binary_is_a_replayed_target() {
    let targets = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/fuzz_targets");
    for file in inputs(&targets) {
        let name = file.file_stem().and_then(|s| s.to_str()).expect("a name");
        assert!(
            TARGETS.iter().any(|(target, _)| *target == name),
            "{} is not in mob::fuzzing::TARGETS, so its corpus is not replayed",
            file.display()
        );
    }
}

#[test]
fn every_fuzz_target_has_a_binary() {
    let targets = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/fuzz_targets");
    for (target, _) in TARGETS {
        let file = targets.join(format!("{target}.rs"));
        let source = std::fs::read_to_string(&file).expect("the target's file");
        assert!(
            source.contains(&format!("mob::fuzzing::{target}(")),
            "{} does not run mob::fuzzing::{target}",
            file.display()
        );
    }
}
