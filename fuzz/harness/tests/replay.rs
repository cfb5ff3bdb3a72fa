//! Replays every committed fuzz corpus and crash artifact (`fuzz/corpus/TARGET/*`,
//! `fuzz/artifacts/TARGET/*`) through its harness: the bugs fuzzing found stay fixed, and every
//! target has a corpus.

use std::path::PathBuf;

fn fuzz_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn files(dir: &PathBuf) -> Vec<PathBuf> {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut v: Vec<PathBuf> = rd
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.is_file())
        .collect();
    v.sort();
    v
}

#[test]
fn every_target_has_a_corpus_and_a_cargo_fuzz_target() {
    for (name, _) in custody_fuzz::TARGETS {
        let corpus = fuzz_dir().join("corpus").join(name);
        assert!(
            !files(&corpus).is_empty(),
            "no corpus for {name} in {}",
            corpus.display()
        );
        let target = fuzz_dir()
            .join("targets/fuzz_targets")
            .join(format!("{name}.rs"));
        assert!(
            target.is_file(),
            "no cargo-fuzz target {}",
            target.display()
        );
    }
}

#[test]
fn corpora_and_artifacts_replay_without_a_failure() {
    let mut n = 0;
    for (name, harness) in custody_fuzz::TARGETS {
        for sub in ["corpus", "artifacts"] {
            for f in files(&fuzz_dir().join(sub).join(name)) {
                let data = std::fs::read(&f).unwrap();
                let r = std::panic::catch_unwind(|| harness(&data));
                assert!(r.is_ok(), "{name}: {} fails", f.display());
                n += 1;
            }
        }
    }
    assert!(n > 0);
    eprintln!("replayed {n} inputs");
}
