//! The built-in demo: the whole TITA recipe in the synthetic [`world`](crate::world), where
//! the ground truth of every image is known, with nothing downloaded.
//!
//! 1. world splits (train / preference / validation / test) with captions and POPE question
//!    files;
//! 2. both CLIP towers pretrained before their VLMs exist, by multi-label classification of the
//!    20 categories on images of their own ([`pretrain`](self::pretrain_tower));
//! 3. the target LLaVA trained by LLaVA's two stages: captions (alignment), then the
//!    instruction mix of captions, yes/no, counting and colour questions; the reward LLaVA, at
//!    most a quarter of the target's parameters, by the same two stages (`reward-sft`, also
//!    TITA's reference model);
//! 4. preference pairs on the preference split: the paper's self-pairs (the target's answer on
//!    the clean vs. the diffusion-noised image) and/or ground-truth pairs (true answer vs. the
//!    hallucination the priors suggest);
//! 5. DPO of the reward model on those pairs (`reward`), and, as the costly alternative TITA
//!    avoids, DPO of the target itself on the same pairs at several schedules;
//! 6. TITA's λ, VCD's α and the target-DPO schedule chosen on the validation split;
//! 7. evaluation on the test split: POPE (random / popular / adversarial) and CHAIR on captions
//!    for greedy, TITA at a λ sweep, TITA's reference mode, VCD, the DPO-tuned target and the
//!    reward model alone;
//! 8. all of it for each of several seeds, summarised as mean ± sd and paired differences.
//!
//! Training keeps the vision towers frozen after their pretraining, as LLaVA does. Every stage
//! leaves its result in the output directory and is skipped when that result is already
//! there; training runs checkpoint and resume; answers are appended as they come and reused
//! only for the same models.
//!
//! Modules: this file holds the configuration and the world's splits; [`data`] writes the
//! splits' files and the ground-truth pairs, [`pretrain`] pretrains a tower, [`stages`] trains
//! the models in order, [`tune`] chooses the knobs, [`evaluate`] answers the test questions with
//! every method and scores them, [`report`] writes a seed's report and its plots, [`seeds`]
//! runs and summarises the seeds.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::backend::Autodiff;
use burn::tensor::backend::Backend;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use tita_core::error::read_json_as;
use tita_core::output::{claim_dir, Reuse};
use tita_core::plot::{bar_chart, line_panels, Panel, Series};
use tita_core::{jsonl, Error, Result};
use tita_decode::guidance::{M3id, Marine, ObjectList, TemplateSet};
use tita_decode::{Fusion, Pipeline};
use tita_train::optim::AdamWConfig;
use tita_train::pairs::{synthesize, PairsConfig};
use tita_train::trainer::{train, Objective, RunOptions, TrainConfig, TrainPaths};

use crate::eval::{answer_all, answers_path, EvalConfig, Method, Models, QuestionSet};
use crate::pope::{judge, Answer, Question, YesNoMetrics};
use crate::world::{
    self, question_text, Category, Sampler, Scene, Statistics, CAPTION_PROMPT, COLORS, SHAPES,
};

mod data;
mod evaluate;
mod pretrain;
mod report;
mod seeds;
mod stages;
mod tune;

pub use data::*;
pub use evaluate::*;
pub use pretrain::*;
pub use report::*;
pub use seeds::*;
pub use stages::*;
pub use tune::*;

/// Width and depth of a world model (see [`world::model_config`]).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
pub struct ModelSize {
    pub hidden: usize,
    pub layers: usize,
    pub heads: usize,
    pub vision_hidden: usize,
    pub vision_layers: usize,
    /// Side of a vision patch in pixels.
    pub patch: usize,
}

impl ModelSize {
    pub fn config(&self) -> tita_models::ModelConfig {
        world::model_config(
            self.hidden,
            self.layers,
            self.heads,
            self.vision_hidden,
            self.vision_layers,
            self.patch,
        )
    }
}

/// One training stage.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
pub struct Stage {
    pub steps: usize,
    pub batch_size: usize,
    pub lr: f64,
}

/// Which preference pairs the reward model (and the DPO-tuned target) learn from.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum PairSource {
    /// The paper's: the target's answers on the clean vs. the noised image.
    Noised,
    /// True answer vs. the hallucination the co-occurrence priors suggest.
    GroundTruth,
    Both,
}

/// Everything that decides the demo's results.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct DemoConfig {
    /// The seed of one run (world, models, evaluation).
    pub seed: u64,
    /// The runs of the whole demo, each in its own folder, summarised together.
    pub seeds: Vec<u64>,
    pub train_images: usize,
    pub preference_images: usize,
    /// Images on which every method's knob is chosen (see [`tune`](self::tune)).
    pub validation_images: usize,
    pub test_images: usize,
    pub target: ModelSize,
    pub reward: ModelSize,
    /// Both towers' pretraining, before their VLMs exist.
    pub pretrain: Pretrain,
    /// LLaVA's first stage: captions only (projector and LLM; the LLM here starts untrained).
    pub target_align: Stage,
    /// LLaVA's second stage: captions, yes/no, counting and colour questions.
    pub target_sft: Stage,
    /// The reward model's own two LLaVA stages, on the target's data.
    pub reward_align: Stage,
    pub reward_sft: Stage,
    pub pairs: PairSource,
    pub dpo_beta: f64,
    pub reward_dpo: Stage,
    /// Schedules of the target's DPO tried; the validation split chooses one.
    pub target_dpo: Vec<Stage>,
    /// TITA's λ evaluated; the validation split chooses the one reported as `tita-tuned`.
    pub lambdas: Vec<f32>,
    pub reference_alpha: f32,
    /// VCD's α tried; the validation split chooses the one evaluated on the test split.
    pub vcd_alphas: Vec<f32>,
    pub caption_tokens: usize,
}

impl DemoConfig {
    /// The committed demo (`--retrain`).
    pub fn full() -> Self {
        DemoConfig {
            seed: 7,
            seeds: vec![7, 8, 9],
            train_images: 800,
            preference_images: 200,
            validation_images: 100,
            test_images: 100,
            target: ModelSize {
                hidden: 64,
                layers: 2,
                heads: 4,
                vision_hidden: 64,
                // LLaVA reads the last but one: two layers see.
                vision_layers: 3,
                patch: 16,
            },
            // At most a quarter of the target's parameters (checked by the retrain).
            reward: ModelSize {
                hidden: 32,
                layers: 2,
                heads: 4,
                vision_hidden: 24,
                vision_layers: 3,
                patch: 16,
            },
            pretrain: Pretrain {
                images: 16000,
                held_out: 500,
                stage: Stage {
                    steps: 6000,
                    batch_size: 32,
                    lr: 5e-3,
                },
            },
            target_align: Stage {
                steps: 300,
                batch_size: 16,
                lr: 3e-3,
            },
            target_sft: Stage {
                steps: 8000,
                batch_size: 32,
                lr: 3e-3,
            },
            reward_align: Stage {
                steps: 300,
                batch_size: 16,
                lr: 3e-3,
            },
            reward_sft: Stage {
                steps: 4000,
                batch_size: 32,
                lr: 3e-3,
            },
            pairs: PairSource::Both,
            dpo_beta: 0.1,
            reward_dpo: Stage {
                steps: 200,
                batch_size: 8,
                lr: 1e-4,
            },
            target_dpo: [(120, 1e-4), (120, 3e-4), (240, 3e-4), (120, 1e-3)]
                .map(|(steps, lr)| Stage {
                    steps,
                    batch_size: 8,
                    lr,
                })
                .to_vec(),
            lambdas: vec![0.2, 0.4, 0.6, 0.8],
            reference_alpha: 1.0,
            vcd_alphas: vec![0.25, 0.5, 1.0, 2.0],
            caption_tokens: 24,
        }
    }

    /// Every stage at toy scale: checks the pipeline end to end (CI), not that TITA wins.
    pub fn quick() -> Self {
        let full = Self::full();
        let stage = |steps, batch_size| Stage {
            steps,
            batch_size,
            lr: 3e-3,
        };
        DemoConfig {
            seeds: vec![7],
            train_images: 24,
            preference_images: 8,
            validation_images: 6,
            test_images: 6,
            pretrain: Pretrain {
                images: 32,
                held_out: 8,
                stage: stage(4, 8),
            },
            target_align: stage(4, 8),
            target_sft: stage(12, 8),
            reward_align: stage(4, 8),
            reward_sft: stage(6, 8),
            reward_dpo: stage(4, 4),
            target_dpo: vec![stage(4, 4), stage(2, 4)],
            vcd_alphas: vec![0.5, 1.0],
            lambdas: vec![0.5],
            caption_tokens: 12,
            ..full
        }
    }

    /// The decoding methods evaluated on the test split: VCD at the α `tuning` chose, M3ID at
    /// the defaults of its public reimplementations, MARINE given each image's true objects (so an oracle).
    fn methods(&self, tuning: &Tuning, truth: &ObjectList) -> Vec<Method> {
        let mut m = vec![Method::Greedy];
        m.extend(self.lambdas.iter().map(|&lambda| Method::tita(lambda)));
        m.push(Method::reference(self.reference_alpha));
        m.push(Method::vcd(tuning.vcd_alpha, self.seed));
        m.push(Method::Guided(M3id::default().into()));
        m.push(Method::Guided(
            Marine {
                templates: TemplateSet::Pope,
                truth: true,
                ..Marine::new(truth.clone())
            }
            .into(),
        ));
        m
    }

    /// [`DemoConfig::methods`] for their names and knobs (MARINE without its lists).
    fn method_list(&self, tuning: &Tuning) -> Vec<Method> {
        self.methods(tuning, &ObjectList::fixed(Vec::new()))
    }
}

/// The four models of the demo, as directories under `models/`.
pub const MODELS: [&str; 4] = ["target", "reward-sft", "reward", "target-dpo"];
/// Name of the DPO-tuned target among the methods of the results.
pub const TARGET_DPO: &str = "target-dpo";
/// Name of the reward model answering alone (greedy) among the methods of the results.
pub const REWARD_ALONE: &str = "reward-alone";
/// MARINE given the true objects of every image: an oracle, and labelled so.
pub const MARINE_TRUTH: &str = "MARINE-truth (oracle)";
/// The world's splits and their split numbers (3 and 4 are the towers' pretraining images).
const SPLITS: [(&str, u64); 4] = [
    ("train", 0),
    ("preference", 1),
    ("test", 2),
    ("validation", 5),
];
const SAMPLERS: [&str; 3] = ["random", "popular", "adversarial"];

/// The scenes of every split and the training statistics, regenerated from the seed.
pub struct World {
    pub scenes: BTreeMap<&'static str, Vec<Scene>>,
    pub stats: Statistics,
}

impl World {
    pub fn new(config: &DemoConfig) -> Self {
        let count = |name: &str| match name {
            "train" => config.train_images,
            "preference" => config.preference_images,
            "validation" => config.validation_images,
            _ => config.test_images,
        };
        let scenes: BTreeMap<&'static str, Vec<Scene>> = SPLITS
            .iter()
            .map(|&(name, k)| (name, world::split(config.seed, k, count(name))))
            .collect();
        let stats = Statistics::of(&scenes["train"]);
        World { scenes, stats }
    }
}

fn image_file(split: &str, k: usize) -> String {
    format!("images/{split}-{k}.png")
}

fn yes_no(label: bool) -> &'static str {
    if label {
        "Yes"
    } else {
        "No"
    }
}

fn lines<T: Serialize>(records: &[T]) -> String {
    records
        .iter()
        .map(|r| serde_json::to_string(r).expect("plain data") + "\n")
        .collect()
}

fn read_text(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).map_err(|e| Error::io(path, e))
}

/// Method names in report order: greedy, TITA by λ, reference, VCD, the DPO-tuned target,
/// the reward model alone.
pub fn method_names(config: &DemoConfig, tuning: &Tuning) -> Vec<String> {
    let mut names: Vec<String> = config
        .method_list(tuning)
        .iter()
        .map(Method::name)
        .collect();
    names.push(TARGET_DPO.into());
    names.push(REWARD_ALONE.into());
    names
}
