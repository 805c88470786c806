//! Pair synthesis on the fixture target: clean vs noised answers, identical pairs dropped, and
//! a resumed run asks nothing twice.

use std::path::PathBuf;

use burn::backend::Flex;
use tita_core::output::Reuse;
use tita_decode::{GenerationConfig, Generator, Pipeline};
use tita_train::{synthesize, PairsConfig, SynthesizedPair};

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fixtures")
}

fn read(p: &std::path::Path) -> Vec<SynthesizedPair> {
    std::fs::read_to_string(p)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn pairs_from_clean_and_noised_images_resume_without_repeats() {
    let target =
        Pipeline::<Flex>::load(&fixtures().join("llava-target"), &Default::default()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let questions = dir.path().join("questions.jsonl");
    let q = [
        r#"{"image": "images/square56.png", "prompt": "Is there a cat in the image?"}"#,
        r#"{"image": "images/chelsea.png", "prompt": "Describe the image in detail."}"#,
        r#"{"image": "images/astronaut.png", "prompt": "What is in the picture?"}"#,
    ];
    std::fs::write(&questions, q[..2].join("\n")).unwrap();
    let out = dir.path().join("pairs.jsonl");
    let config = PairsConfig {
        max_new_tokens: 8,
        ..PairsConfig::default()
    };
    let run = |config: &PairsConfig, reuse| {
        synthesize(
            &target,
            &questions,
            Some(&fixtures()),
            &out,
            config,
            reuse,
            false,
        )
    };
    let s1 = run(&config, Reuse::Fresh).unwrap();
    assert_eq!((s1.questions, s1.resumed_after), (2, 0));
    assert_eq!(s1.written + s1.dropped_identical, 2);
    // Pairs must actually come out of it: clean and noised answers differ on these images.
    assert!(s1.written >= 1, "no pair written: {s1:?}");
    let first = read(&out);
    assert_eq!(first.len(), s1.written);

    // chosen is the target's greedy answer on the clean image.
    let gen = Generator::new(
        &target,
        GenerationConfig {
            max_new_tokens: 8,
            ..Default::default()
        },
    );
    for p in &first {
        let prompt = target
            .prompt(&p.prompt, Some(&fixtures().join(&p.image)), false)
            .unwrap();
        assert_eq!(gen.generate(&prompt).unwrap().text.trim(), p.chosen);
        assert_ne!(p.chosen, p.rejected);
    }

    // A third question arrives; the rerun only answers it.
    std::fs::write(&questions, q.join("\n")).unwrap();
    // Not asked to resume: the existing pairs file is another run's and is left alone.
    let err = run(&config, Reuse::Fresh).unwrap_err().to_string();
    assert!(
        err.contains("pairs.jsonl: exists") && err.contains("--resume"),
        "{err}"
    );
    // Resumed with other settings: refused, nothing written.
    let other = PairsConfig {
        seed: 7,
        ..config.clone()
    };
    let err = run(&other, Reuse::Resume).unwrap_err().to_string();
    assert!(err.contains("other settings"), "{err}");
    assert_eq!(read(&out), first);
    let s2 = run(&config, Reuse::Resume).unwrap();
    assert_eq!((s2.questions, s2.resumed_after), (3, 2));
    assert_eq!(s2.written + s2.dropped_identical, 1);
    assert_eq!(read(&out).len(), s1.written + s2.written);
    let all = read(&out);
    assert_eq!(&all[..first.len()], &first[..]);
    let lines: Vec<usize> = all.iter().map(|p| p.question_line).collect();
    let mut dedup = lines.clone();
    dedup.dedup();
    assert_eq!(lines, dedup, "a question was written twice");

    // Nothing left: a third run writes nothing.
    let s3 = run(&config, Reuse::Resume).unwrap();
    assert_eq!(
        (s3.resumed_after, s3.written, s3.dropped_identical),
        (3, 0, 0)
    );
}
