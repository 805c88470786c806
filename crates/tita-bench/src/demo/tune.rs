//! Each method's knob chosen on a validation split of the world (images of its own: neither
//! training, preference nor test), so that no method is tuned on the test: TITA's λ, VCD's α,
//! and the learning rate and steps of the target's DPO, each by pooled POPE accuracy.

use super::*;

/// One value tried and its pooled POPE accuracy on the validation split.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Tried<T> {
    pub value: T,
    pub accuracy: f64,
}

/// What the validation split chose, and everything that was tried (`models/tuning.json`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Tuning {
    pub lambda: f32,
    pub vcd_alpha: f32,
    pub target_dpo: Stage,
    pub tita: Vec<Tried<f32>>,
    pub vcd: Vec<Tried<f32>>,
    pub dpo: Vec<Tried<Stage>>,
}

/// The file next to the models that holds their [`Tuning`].
pub const TUNING_FILE: &str = "tuning.json";

impl Tuning {
    pub fn read(models: &Path) -> Result<Self> {
        read_json_as(&models.join(TUNING_FILE))
    }
}

/// Index of the first value with the highest accuracy (the config lists values from the
/// mildest).
fn best<T>(tried: &[Tried<T>]) -> Option<usize> {
    (0..tried.len()).fold(None, |b, i| match b {
        Some(b) if tried[b].accuracy >= tried[i].accuracy => Some(b),
        _ => Some(i),
    })
}

/// The DPO-tuned target candidate `k` of [`DemoConfig::target_dpo`].
pub(super) fn dpo_candidate(k: usize) -> String {
    format!("{TARGET_DPO}-{k}")
}

/// Pooled POPE accuracy of the answers of `method` in `dir` to the question sets.
fn pooled_accuracy(dir: &Path, method: &Method, sets: &[QuestionSet]) -> Result<f64> {
    let mut pairs = Vec::new();
    for set in sets {
        pairs.extend(judge(
            &set.questions,
            &answers_path(dir, method, &set.name),
        )?);
    }
    Ok(YesNoMetrics::from_pairs(pairs).accuracy)
}

/// Chooses λ, α and the DPO candidate on the validation split, moves the chosen candidate to
/// `models/target-dpo` and writes `models/tuning.json` (skipped when it is there).
pub(super) fn tune<B: Backend>(
    out: &Path,
    world: &World,
    config: &DemoConfig,
    progress: bool,
    device: &B::Device,
) -> Result<Tuning> {
    let models = out.join("models");
    if models.join(TUNING_FILE).is_file() {
        return Tuning::read(&models);
    }
    let data = out.join("data");
    world::write_split(
        &data,
        "validation",
        &world.scenes["validation"],
        &world.stats,
        config.seed,
    )?;
    let sets = SAMPLERS
        .iter()
        .map(|s| QuestionSet::read(&data.join(format!("validation-{s}.jsonl")), None, None))
        .collect::<Result<Vec<_>>>()?;
    let eval = out.join("tune").join("eval");
    let target = Pipeline::<B>::load(&models.join("target"), device)?;
    let reward = Pipeline::<B>::load(&models.join("reward"), device)?;
    let tita: Vec<Method> = config
        .lambdas
        .iter()
        .map(|&lambda| Method::tita(lambda))
        .collect();
    let vcd: Vec<Method> = config
        .vcd_alphas
        .iter()
        .map(|&alpha| Method::vcd(alpha, config.seed))
        .collect();
    if progress {
        eprintln!("validation: TITA λ and VCD α");
    }
    answer_all(
        &Models {
            target: &target,
            reward: Some(&reward),
            reference: None,
        },
        &sets,
        &eval,
        &pope_config(tita.iter().chain(&vcd).cloned().collect()),
        progress,
    )?;
    let tried = |methods: &[Method], knobs: &[f32]| -> Result<Vec<Tried<f32>>> {
        methods
            .iter()
            .zip(knobs)
            .map(|(m, &value)| {
                Ok(Tried {
                    value,
                    accuracy: pooled_accuracy(&eval, m, &sets)?,
                })
            })
            .collect()
    };
    let (tita, vcd) = (
        tried(&tita, &config.lambdas)?,
        tried(&vcd, &config.vcd_alphas)?,
    );

    if progress {
        eprintln!("validation: the DPO-tuned target's schedules");
    }
    let mut dpo = Vec::new();
    for (k, stage) in config.target_dpo.iter().enumerate() {
        let name = dpo_candidate(k);
        let candidate = Pipeline::<B>::load(&out.join("tune").join("models").join(&name), device)?;
        let dir = eval.join(&name);
        answer_all(
            &Models {
                target: &candidate,
                reward: None,
                reference: None,
            },
            &sets,
            &dir,
            &pope_config(vec![Method::Greedy]),
            progress,
        )?;
        dpo.push(Tried {
            value: *stage,
            accuracy: pooled_accuracy(&dir, &Method::Greedy, &sets)?,
        });
    }
    let none = |what: &str| Error::argument("demo", format!("no {what} to choose from"));
    let chosen = best(&dpo).ok_or_else(|| none("DPO schedule"))?;
    let tuning = Tuning {
        lambda: tita[best(&tita).ok_or_else(|| none("λ"))?].value,
        vcd_alpha: vcd[best(&vcd).ok_or_else(|| none("VCD α"))?].value,
        target_dpo: dpo[chosen].value,
        tita,
        vcd,
        dpo,
    };
    // The chosen candidate becomes `models/target-dpo` (copied whole, then renamed into place).
    let from = out.join("tune").join("models").join(dpo_candidate(chosen));
    let to = models.join(TARGET_DPO);
    let tmp = models.join(format!("{TARGET_DPO}.partial"));
    copy_dir(&from, &tmp)?;
    if to.exists() {
        std::fs::remove_dir_all(&to).map_err(|e| Error::io(&to, e))?;
    }
    std::fs::rename(&tmp, &to).map_err(|e| Error::io(&to, e))?;
    let json = serde_json::to_string_pretty(&tuning).expect("plain data");
    jsonl::write_atomic(&models.join(TUNING_FILE), json.as_bytes())?;
    Ok(tuning)
}

/// Copies the files of `from` into a fresh `to` (emptied first when it exists).
pub(super) fn copy_dir(from: &Path, to: &Path) -> Result<()> {
    if to.exists() {
        std::fs::remove_dir_all(to).map_err(|e| Error::io(to, e))?;
    }
    std::fs::create_dir_all(to).map_err(|e| Error::io(to, e))?;
    for entry in std::fs::read_dir(from).map_err(|e| Error::io(from, e))? {
        let path = entry.map_err(|e| Error::io(from, e))?.path();
        if path.is_file() {
            let dest = to.join(path.file_name().expect("a file name"));
            std::fs::copy(&path, &dest).map_err(|e| Error::io(&dest, e))?;
        }
    }
    Ok(())
}
