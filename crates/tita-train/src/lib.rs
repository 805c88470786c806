//! tita-train: preference data, pair synthesis, SFT and DPO training of the reward VLM.
//! Not built yet: this is the next issue (DPO training); the crate holds its place in the
//! dependency order (core <- models <- decode <- train).
