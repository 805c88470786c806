//! tita-train: the reward model's training — preference data, pair synthesis from the target,
//! DPO and SFT trainers with AdamW, and checkpoints in the Hugging Face layout that resume.

pub mod data;
pub mod objective;
pub mod optim;
pub mod pairs;
pub mod report;
pub mod speed;
pub mod trainer;

pub use data::{Dataset, Example, PreferencePair, SftRecord};
pub use objective::{dpo_loss, response_logps, DpoTerms, Sequence};
pub use pairs::{synthesize, PairsConfig, PairsSummary, Question, SynthesizedPair};
pub use trainer::{
    train, Objective, RunOptions, StepMetrics, TrainConfig, TrainPaths, TrainSummary,
};
