//! The world's splits on disk (images, captions, question files) and the ground-truth
//! preference pairs.

use super::*;

/// Writes the splits and the training files into `data`: `target-align.jsonl` (training
/// captions), `target-sft.jsonl` (the captions, yes/no answers with random negatives as
/// instruction data asks them, counting and colour questions; both models learn from these
/// two), `preference-prompts.jsonl` (prompts the target answers for the self-pairs) and
/// `pairs-ground-truth.jsonl`.
pub fn write_data(data: &Path, world: &World, config: &DemoConfig) -> Result<()> {
    for (name, _) in SPLITS {
        world::write_split(data, name, &world.scenes[name], &world.stats, config.seed)?;
    }
    let mut rng = StdRng::seed_from_u64(config.seed ^ 0x7a11);
    let train = &world.scenes["train"];
    let example = |k: usize, prompt: &str, response: &str| serde_json::json!({"image": image_file("train", k), "prompt": prompt, "response": response});
    let captions: Vec<serde_json::Value> = train
        .iter()
        .enumerate()
        .map(|(k, s)| example(k, CAPTION_PROMPT, &s.caption()))
        .collect();
    jsonl::write_atomic(
        &data.join("target-align.jsonl"),
        lines(&captions).as_bytes(),
    )?;
    let mut sft = captions;
    for q in world::questions(train, &world.stats, Sampler::Random, &mut rng) {
        sft.push(example(
            q.image,
            &question_text(q.category),
            yes_no(q.label),
        ));
    }
    for (k, s) in train.iter().enumerate() {
        for (prompt, response) in world::instructions(s) {
            sft.push(example(k, &prompt, &response));
        }
    }
    jsonl::write_atomic(&data.join("target-sft.jsonl"), lines(&sft).as_bytes())?;

    // Prompts answered by the target: captions and the POPE questions of a split.
    let prompts = |split: &str, count: usize, sampler: Sampler, rng: &mut StdRng| {
        let scenes = &world.scenes[split][..count.min(world.scenes[split].len())];
        let mut out: Vec<serde_json::Value> = Vec::new();
        for k in 0..scenes.len() {
            out.push(serde_json::json!({"image": image_file(split, k), "prompt": CAPTION_PROMPT}));
        }
        for q in world::questions(scenes, &world.stats, sampler, rng) {
            out.push(serde_json::json!({"image": image_file(split, q.image), "prompt": question_text(q.category)}));
        }
        out
    };
    let pref = prompts("preference", usize::MAX, Sampler::Adversarial, &mut rng);
    jsonl::write_atomic(
        &data.join("preference-prompts.jsonl"),
        lines(&pref).as_bytes(),
    )?;

    let truth = ground_truth_pairs(&world.scenes["preference"], &world.stats, &mut rng);
    jsonl::write_atomic(
        &data.join("pairs-ground-truth.jsonl"),
        lines(&truth).as_bytes(),
    )
}

/// Ground-truth pairs of the preference split: for every image the true caption against the
/// same caption with one object (drawn with `rng`) swapped for the absent category that
/// co-occurs most with the present ones; for every POPE question (adversarial negatives) the
/// true answer against the other. Both captions of a pair name as many objects: with an
/// added object instead, DPO learns that shorter captions win and captions collapse to ".".
pub fn ground_truth_pairs(
    scenes: &[Scene],
    stats: &Statistics,
    rng: &mut StdRng,
) -> Vec<serde_json::Value> {
    let mut out = Vec::new();
    for (k, s) in scenes.iter().enumerate() {
        let present = s.present();
        let top = stats.ranked_negatives(&present, Sampler::Adversarial);
        if let (Some(&extra), false) = (top.first(), s.objects.is_empty()) {
            let mut hallucinated = s.clone();
            let swapped = rng.random_range(0..s.objects.len());
            hallucinated.objects[swapped].category = extra;
            out.push(
                serde_json::json!({"image": image_file("preference", k), "prompt": CAPTION_PROMPT,
                "chosen": s.caption(), "rejected": hallucinated.caption()}),
            );
        }
    }
    for q in world::questions(scenes, stats, Sampler::Adversarial, rng) {
        out.push(serde_json::json!({"image": image_file("preference", q.image), "prompt": question_text(q.category),
            "chosen": yes_no(q.label), "rejected": yes_no(!q.label)}));
    }
    out
}
