//! The synthetic world: deterministic, labels agree with the pixels, and POPE's three negative
//! samplers follow their definitions.

use std::collections::BTreeSet;

use rand::SeedableRng;
use tita_bench::world::{
    categories, covers, questions, split, Category, Sampler, Statistics, COLORS,
};

#[test]
fn generator_is_deterministic_and_splits_share_no_image() {
    let (a, b) = (split(7, 0, 30), split(7, 0, 30));
    for (x, y) in a.iter().zip(&b) {
        assert_eq!(x.image, y.image);
        assert_eq!(x.objects, y.objects);
        assert_eq!(x.caption(), y.caption());
    }
    let other = split(7, 1, 30);
    for x in &a {
        assert!(other.iter().all(|y| y.image != x.image));
    }
    assert_eq!(categories().len(), 20);
}

#[test]
fn labels_agree_with_the_drawn_pixels() {
    for scene in split(3, 0, 60) {
        assert!((1..=4).contains(&scene.objects.len()));
        for (px, py, p) in scene.image.enumerate_pixels() {
            // A pixel has an object colour exactly where an object of that colour covers it.
            let covering: Vec<usize> = scene
                .objects
                .iter()
                .filter(|o| {
                    px >= o.x
                        && py >= o.y
                        && px < o.x + o.size
                        && py < o.y + o.size
                        && covers(o.category.shape, o.size, px - o.x, py - o.y)
                })
                .map(|o| o.category.color)
                .collect();
            assert!(covering.len() <= 1, "objects overlap");
            let color = COLORS.iter().position(|(_, c)| *c == p.0);
            assert_eq!(color, covering.first().copied(), "pixel ({px}, {py})");
        }
        for o in &scene.objects {
            let n = (0..o.size * o.size)
                .filter(|i| covers(o.category.shape, o.size, i % o.size, i / o.size))
                .count();
            assert!(n >= 40, "{:?} too small to see", o);
        }
        let caption = scene.caption();
        for c in categories() {
            assert_eq!(
                caption.contains(&format!("a {} ", c.name())),
                scene.present().contains(&c),
                "{caption}"
            );
        }
    }
}

#[test]
fn negative_samplers_follow_their_definitions() {
    let train = split(5, 0, 400);
    let stats = Statistics::of(&train);
    let test = split(5, 2, 40);
    let mut rng = rand::rngs::StdRng::seed_from_u64(1);
    for sampler in [Sampler::Random, Sampler::Popular, Sampler::Adversarial] {
        let qs = questions(&test, &stats, sampler, &mut rng);
        assert_eq!(
            qs.iter().filter(|q| q.label).count(),
            qs.iter().filter(|q| !q.label).count()
        );
        for (i, scene) in test.iter().enumerate() {
            let present = scene.present();
            let neg: BTreeSet<Category> = qs
                .iter()
                .filter(|q| q.image == i && !q.label)
                .map(|q| q.category)
                .collect();
            let pos: BTreeSet<Category> = qs
                .iter()
                .filter(|q| q.image == i && q.label)
                .map(|q| q.category)
                .collect();
            assert_eq!(pos, present);
            assert!(neg.is_disjoint(&present));
            let others: Vec<Category> = categories()
                .into_iter()
                .filter(|c| !present.contains(c) && !neg.contains(c))
                .collect();
            let score = |c: &Category| -> usize {
                match sampler {
                    Sampler::Random => 0,
                    Sampler::Popular => stats.frequency.get(c).copied().unwrap_or(0),
                    Sampler::Adversarial => present
                        .iter()
                        .map(|p| stats.cooccurrence.get(&(*p, *c)).copied().unwrap_or(0))
                        .sum(),
                }
            };
            let worst_chosen = neg.iter().map(score).min().unwrap();
            let best_other = others.iter().map(score).max().unwrap_or(0);
            assert!(
                worst_chosen >= best_other,
                "{sampler:?}: chose {worst_chosen} over {best_other}"
            );
        }
    }
    // The world has priors: categories of one scene co-occur far more than across scenes.
    let within: usize = stats
        .cooccurrence
        .iter()
        .filter(|((a, b), _)| tita_bench::world::scene_of(*a) == tita_bench::world::scene_of(*b))
        .map(|(_, n)| n)
        .sum();
    let total: usize = stats.cooccurrence.values().sum();
    assert!(
        within * 2 > total,
        "within-scene co-occurrence {within} of {total}"
    );
}

#[test]
fn word_tokenizer_covers_the_chat_and_round_trips_captions() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tokenizer.json");
    tita_bench::world::tokenizer()
        .unwrap()
        .save(&path, false)
        .unwrap();
    let tok = tita_core::Tokenizer::from_file(&path).unwrap();
    let image = tok.token_to_id("<image>").unwrap();
    assert_eq!(tok.token_to_id("<pad>"), Some(image + 1));
    let question = tita_bench::world::question_text(categories()[7]);
    let prompt = tita_core::tokenizer::llava_prompt(&format!(
        "{question}\n{}",
        tita_bench::eval::SHORT_ANSWER
    ));
    let ids = tok.encode_with_image(&prompt, image, 16).unwrap();
    assert_eq!(ids[0], 1);
    assert_eq!(ids.iter().filter(|&&t| t == image).count(), 16);
    assert!(!ids.contains(&0), "unknown word in {prompt:?}: {ids:?}");
    for scene in split(9, 0, 10) {
        let caption = scene.caption();
        let ids = tok.encode(&format!(" {caption}"), false).unwrap();
        assert!(!ids.contains(&0));
        assert_eq!(tok.decode(&ids, true).unwrap(), caption);
    }
}

#[test]
fn fresh_world_models_and_split_files_work_with_the_tools() {
    use burn::backend::Flex;
    let dir = tempfile::tempdir().unwrap();
    let train = split(11, 0, 40);
    let stats = Statistics::of(&train);
    let test = split(11, 2, 3);
    tita_bench::world::write_split(dir.path(), "test", &test, &stats, 0).unwrap();
    let config = tita_bench::world::model_config(32, 2, 4, 32, 2, 16);
    let model_dir = dir.path().join("model");
    tita_bench::world::init_model::<Flex>(&model_dir, &config, 0, &Default::default()).unwrap();

    let target = tita_decode::Pipeline::<Flex>::load(&model_dir, &Default::default()).unwrap();
    assert_eq!(target.model.image_tokens(), Some(16));
    let set =
        tita_bench::eval::QuestionSet::read(&dir.path().join("test-adversarial.jsonl"), None, None)
            .unwrap();
    assert_eq!(
        set.questions.len(),
        test.iter().map(|s| 2 * s.present().len()).sum::<usize>()
    );
    let models = tita_bench::eval::Models {
        target: &target,
        reward: None,
        reference: None,
    };
    let config = tita_bench::eval::EvalConfig {
        methods: vec![tita_bench::eval::Method::Greedy],
        max_new_tokens: 3,
        ..Default::default()
    };
    let out = dir.path().join("eval");
    let speed = tita_bench::eval::answer_all(&models, &[set], &out, &config, false).unwrap();
    assert!(speed["greedy"].answers > 0);
    let captions = std::fs::read_to_string(dir.path().join("test-captions.jsonl")).unwrap();
    assert_eq!(captions.lines().count(), 3);
    assert!(dir.path().join("images/test-2.png").is_file());
}
