//! Every method's answers on the test split (POPE and captions) and their scores (yes/no
//! metrics, CHAIR).

use super::report::write_report;
use super::*;

/// CHAIR (Rohrbach et al., 2018) on captions, exact here because the ground truth is known.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq)]
pub struct ChairMetrics {
    /// Share of mentioned objects that are not in the image (CHAIR_i).
    pub chair_i: f64,
    /// Share of captions with at least one such object (CHAIR_s).
    pub chair_s: f64,
    /// Share of present objects the captions mention (what a silent model gives up).
    pub recall: f64,
    /// Mean number of objects a caption mentions.
    pub objects_per_caption: f64,
    pub captions: usize,
}

/// The categories a caption mentions: every colour word directly followed by a shape word.
pub fn mentioned(caption: &str) -> BTreeSet<Category> {
    let words: Vec<&str> = caption.split_whitespace().collect();
    words
        .windows(2)
        .filter_map(|w| {
            let color = COLORS.iter().position(|c| c.0 == w[0])?;
            let shape = SHAPES.iter().position(|s| *s == w[1])?;
            Some(Category { color, shape })
        })
        .collect()
}

impl ChairMetrics {
    /// From (caption, objects present) pairs.
    pub fn of<'a>(items: impl IntoIterator<Item = (&'a str, BTreeSet<Category>)>) -> Self {
        let (mut mentions, mut wrong, mut bad_captions, mut present, mut found, mut n) =
            (0usize, 0usize, 0usize, 0usize, 0usize, 0usize);
        for (caption, truth) in items {
            let said = mentioned(caption);
            let hallucinated = said.difference(&truth).count();
            mentions += said.len();
            wrong += hallucinated;
            bad_captions += usize::from(hallucinated > 0);
            present += truth.len();
            found += said.intersection(&truth).count();
            n += 1;
        }
        let ratio = |a: usize, b: usize| if b == 0 { 0.0 } else { a as f64 / b as f64 };
        ChairMetrics {
            chair_i: ratio(wrong, mentions),
            chair_s: ratio(bad_captions, n),
            recall: ratio(found, present),
            objects_per_caption: ratio(mentions, n),
            captions: n,
        }
    }
}

/// The demo's results: POPE per split (and pooled) and CHAIR, per method.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DemoResults {
    pub config: DemoConfig,
    /// pope[split][method]
    pub pope: BTreeMap<String, BTreeMap<String, YesNoMetrics>>,
    pub pope_overall: BTreeMap<String, YesNoMetrics>,
    pub chair: BTreeMap<String, ChairMetrics>,
    /// The knobs the validation split chose (`models/tuning.json`).
    pub tuning: Tuning,
    /// Seconds this invocation spent answering, per method (0 when all answers were there).
    pub seconds: BTreeMap<String, f64>,
}

/// Evaluates the models in `models` (the directories of [`MODELS`]) on the test split of
/// `config`'s world, writing answers, `results.json`, `report.md` and plots into `out`.
pub fn evaluate<B: Backend>(
    models: &Path,
    out: &Path,
    config: &DemoConfig,
    progress: bool,
    device: &B::Device,
) -> Result<DemoResults> {
    let world = World::new(config);
    let data = out.join("data");
    let test = &world.scenes["test"];
    world::write_split(&data, "test", test, &world.stats, config.seed)?;
    let load = |name: &str| {
        let dir = models.join(name);
        if !dir.join("config.json").is_file() {
            return Err(Error::argument(
                "models",
                format!(
                    "{} is not a model directory (expected {} under {})",
                    dir.display(),
                    MODELS.join(", "),
                    models.display()
                ),
            ));
        }
        Pipeline::<B>::load(&dir, device)
    };
    let target = load("target")?;
    let reward = load("reward")?;
    let reference = load("reward-sft")?;
    let target_dpo = load(TARGET_DPO)?;
    let tuning = Tuning::read(models)?;
    claim_answers(models, out, config)?;

    let sets = SAMPLERS
        .iter()
        .map(|s| QuestionSet::read(&data.join(format!("test-{s}.jsonl")), None, None))
        .collect::<Result<Vec<_>>>()?;
    let captions = QuestionSet {
        name: "captions".into(),
        questions: (0..test.len())
            .map(|k| Question {
                question_id: Some(k as u64 + 1),
                image: image_file("test", k),
                text: CAPTION_PROMPT.into(),
                label: "yes".into(),
            })
            .collect(),
        images: (0..test.len())
            .map(|k| data.join(image_file("test", k)))
            .collect(),
    };
    // Each test image's true objects, by file name: MARINE's detections, as an oracle.
    let truth = ObjectList::by_image(test.iter().enumerate().map(|(k, scene)| {
        let file = data.join(image_file("test", k));
        let name = file
            .file_name()
            .map_or(String::new(), |n| n.to_string_lossy().into_owned());
        (name, scene.present().iter().map(|c| c.name()).collect())
    }));
    let pope_config = pope_config(config.methods(&tuning, &truth));
    // MARINE's official pipeline guides captions with its general templates, POPE with its own.
    let caption_methods = (pope_config.methods.iter())
        .map(|m| match m {
            Method::Guided(Fusion::Marine(marine)) => Method::Guided(
                Marine {
                    templates: TemplateSet::General,
                    ..marine.clone()
                }
                .into(),
            ),
            m => m.clone(),
        })
        .collect();
    let caption_config = EvalConfig {
        methods: caption_methods,
        suffix: String::new(),
        max_new_tokens: config.caption_tokens,
        ..pope_config.clone()
    };
    let greedy_only = |c: &EvalConfig| EvalConfig {
        methods: vec![Method::Greedy],
        ..c.clone()
    };
    let eval = out.join("eval");
    let all = Models {
        target: &target,
        reward: Some(&reward),
        reference: Some(&reference),
    };
    // Models answering greedily on their own: the DPO-tuned target, and the reward model, to
    // show what it sees by itself.
    let alone: Vec<(&str, PathBuf, Models<'_, B>)> =
        [(TARGET_DPO, &target_dpo), (REWARD_ALONE, &reward)]
            .into_iter()
            .map(|(name, target)| {
                (
                    name,
                    eval.join(name),
                    Models {
                        target,
                        reward: None,
                        reference: None,
                    },
                )
            })
            .collect();
    let mut seconds: BTreeMap<String, f64> = BTreeMap::new();
    let mut add = |speed: BTreeMap<String, crate::eval::MethodSpeed>, rename: Option<&str>| {
        for (name, s) in speed {
            *seconds
                .entry(rename.map_or(name, str::to_string))
                .or_default() += s.seconds;
        }
    };
    let caption_sets = std::slice::from_ref(&captions);
    add(
        answer_all(&all, &sets, &eval, &pope_config, progress)?,
        None,
    );
    add(
        answer_all(&all, caption_sets, &eval, &caption_config, progress)?,
        None,
    );
    for (name, dir, models) in &alone {
        add(
            answer_all(models, &sets, dir, &greedy_only(&pope_config), progress)?,
            Some(name),
        );
        add(
            answer_all(
                models,
                caption_sets,
                dir,
                &greedy_only(&caption_config),
                progress,
            )?,
            Some(name),
        );
    }

    // Where each method's answers are: (name, directory, method as written).
    let mut sources: Vec<(String, &Path, Method)> = config
        .methods(&tuning, &truth)
        .into_iter()
        .map(|m| (m.name(), eval.as_path(), m))
        .collect();
    for (name, dir, _) in &alone {
        sources.push((name.to_string(), dir.as_path(), Method::Greedy));
    }
    let mut pope: BTreeMap<String, BTreeMap<String, YesNoMetrics>> = BTreeMap::new();
    let mut pooled: BTreeMap<String, Vec<(bool, bool)>> = BTreeMap::new();
    let mut chair = BTreeMap::new();
    let mut captions: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (name, dir, method) in &sources {
        for set in &sets {
            let pairs = judge(&set.questions, &answers_path(dir, method, &set.name))?;
            pope.entry(set.name.clone()).or_default().insert(
                name.clone(),
                YesNoMetrics::from_pairs(pairs.iter().copied()),
            );
            pooled.entry(name.clone()).or_default().extend(pairs);
        }
        let texts = caption_texts(&answers_path(dir, method, "captions"), test.len())?;
        let m = ChairMetrics::of(
            texts
                .iter()
                .zip(test)
                .map(|(t, s)| (t.as_str(), s.present())),
        );
        chair.insert(name.clone(), m);
        captions.insert(name.clone(), texts);
    }
    let results = DemoResults {
        config: config.clone(),
        pope,
        pope_overall: pooled
            .into_iter()
            .map(|(k, v)| (k, YesNoMetrics::from_pairs(v)))
            .collect(),
        chair,
        tuning,
        seconds,
    };
    write_report(out, &results, test, &captions)?;
    Ok(results)
}

/// How the demo asks its POPE questions, with `methods`.
pub(super) fn pope_config(methods: Vec<Method>) -> EvalConfig {
    EvalConfig {
        methods,
        // POPE's question as such, as in training: LLaVA's short-answer suffix would put ten
        // more tokens between the object asked about and the answer, which a model this small
        // learns to bridge much later.
        suffix: String::new(),
        max_new_tokens: 4,
        pad: false,
        shortcut: true,
        ..EvalConfig::default()
    }
}

/// Answers under `out/eval` resume a run only if they came from the same models and settings:
/// a fingerprint of both is kept next to them, and answers of anything else are cleared.
fn claim_answers(models: &Path, out: &Path, config: &DemoConfig) -> Result<()> {
    let mut hash = 0xcbf2_9ce4_8422_2325u64; // FNV-1a
    let mut eat = |bytes: &[u8]| {
        for &b in bytes {
            hash = (hash ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3);
        }
    };
    eat(serde_json::to_string(config)
        .expect("plain data")
        .as_bytes());
    let tuning = models.join(TUNING_FILE);
    eat(&std::fs::read(&tuning).map_err(|e| Error::io(&tuning, e))?);
    for m in MODELS {
        for file in ["config.json", "model.safetensors"] {
            let path = models.join(m).join(file);
            eat(&std::fs::read(&path).map_err(|e| Error::io(&path, e))?);
        }
    }
    let stamp = format!("{hash:016x}");
    let eval = out.join("eval");
    let path = eval.join("fingerprint");
    if path.is_file() && read_text(&path)?.trim() == stamp {
        return Ok(());
    }
    if eval.exists() {
        std::fs::remove_dir_all(&eval).map_err(|e| Error::io(&eval, e))?;
    }
    std::fs::create_dir_all(&eval).map_err(|e| Error::io(&eval, e))?;
    jsonl::write_atomic(&path, stamp.as_bytes())
}

/// The caption of each test image (question id k+1), in image order.
fn caption_texts(path: &Path, n: usize) -> Result<Vec<String>> {
    let mut texts = vec![None; n];
    for (line, a) in jsonl::read::<Answer>(path)? {
        let slot = (a.question_id as usize)
            .checked_sub(1)
            .and_then(|k| texts.get_mut(k))
            .ok_or_else(|| Error::data(path, line, format!("no test image {}", a.question_id)))?;
        *slot = Some(a.text);
    }
    texts
        .into_iter()
        .enumerate()
        .map(|(k, t)| {
            t.ok_or_else(|| Error::data(path, 0, format!("no caption of image {}", k + 1)))
        })
        .collect()
}
