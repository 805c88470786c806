//! Training data: preference pairs `{"image", "prompt", "chosen", "rejected"}` for DPO and
//! `{"image", "prompt", "response"}` for SFT, one JSON object per line. Every line is checked
//! (fields, image, context length) before training starts, and errors name the line.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use burn::tensor::backend::Backend;
use serde::{Deserialize, Serialize};
use tita_core::image::PixelValues;
use tita_core::{jsonl, Error, Result};
use tita_decode::Pipeline;

/// One line of a preference file (DESIGN's stable interface).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PreferencePair {
    pub image: String,
    pub prompt: String,
    pub chosen: String,
    pub rejected: String,
}

/// One line of an SFT file.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SftRecord {
    pub image: String,
    pub prompt: String,
    pub response: String,
}

/// A tokenised training example: the templated prompt (image expanded) and one response
/// (SFT) or two (DPO: chosen, rejected), each ending with EOS.
#[derive(Debug, Clone)]
pub struct Example {
    /// Line of the data file it came from.
    pub line: usize,
    /// Index into [`Dataset::images`].
    pub image: usize,
    pub prompt: Vec<u32>,
    pub responses: Vec<Vec<u32>>,
}

/// Examples plus their preprocessed images (each distinct image once).
pub struct Dataset {
    pub path: PathBuf,
    pub examples: Vec<Example>,
    pub images: Vec<PixelValues>,
    /// Lines of pairs whose chosen and rejected answers are the same, left out.
    pub dropped: Vec<usize>,
}

/// The fields of a line that are not the image: (name, value) pairs, prompt first.
trait Record {
    fn image(&self) -> &str;
    fn texts(&self) -> Vec<(&'static str, &str)>;
    /// A pair that teaches nothing (DPO's loss is ln 2 and its gradient zero): dropped and
    /// counted, as the pairs tool does.
    fn is_void(&self) -> bool {
        false
    }
}

impl Record for PreferencePair {
    fn image(&self) -> &str {
        &self.image
    }
    fn texts(&self) -> Vec<(&'static str, &str)> {
        vec![
            ("prompt", &self.prompt),
            ("chosen", &self.chosen),
            ("rejected", &self.rejected),
        ]
    }
    fn is_void(&self) -> bool {
        self.chosen.trim() == self.rejected.trim()
    }
}

impl Record for SftRecord {
    fn image(&self) -> &str {
        &self.image
    }
    fn texts(&self) -> Vec<(&'static str, &str)> {
        vec![("prompt", &self.prompt), ("response", &self.response)]
    }
}

/// Token ids of a response as it follows the generation prompt in the chat (a leading space
/// after LLaVA's `ASSISTANT:`, none after ChatML's `assistant\n` or DeepSeek-VL2's
/// `<|Assistant|>:`), no BOS, EOS appended (how
/// transformers-based trainers tokenise the answer).
/// `separator` is [`Pipeline::answer_separator`].
pub fn response_ids<B: Backend>(
    pipeline: &Pipeline<B>,
    separator: &str,
    text: &str,
) -> Result<Vec<u32>> {
    let mut ids = pipeline
        .tokenizer
        .encode(&format!("{separator}{text}"), false)?;
    ids.push(pipeline.model.config.text().eos_token_ids[0]);
    Ok(ids)
}

impl Dataset {
    /// Reads and tokenises a preference file for `pipeline`'s model.
    pub fn preference<B: Backend>(
        path: &Path,
        images: Option<&Path>,
        pipeline: &Pipeline<B>,
        pad: bool,
    ) -> Result<Self> {
        Self::load::<B, PreferencePair>(path, images, pipeline, pad)
    }

    /// Reads and tokenises an SFT file for `pipeline`'s model.
    pub fn sft<B: Backend>(
        path: &Path,
        images: Option<&Path>,
        pipeline: &Pipeline<B>,
        pad: bool,
    ) -> Result<Self> {
        Self::load::<B, SftRecord>(path, images, pipeline, pad)
    }

    fn load<B: Backend, R: Record + serde::de::DeserializeOwned>(
        path: &Path,
        images_dir: Option<&Path>,
        pipeline: &Pipeline<B>,
        pad: bool,
    ) -> Result<Self> {
        let records = jsonl::read::<R>(path)?;
        if records.is_empty() {
            return Err(Error::data(path, 1, "the file holds no examples"));
        }
        let processor = pipeline.processor.as_ref().ok_or_else(|| {
            Error::argument(
                "model",
                format!(
                    "{} is a text-only model; training needs a VLM",
                    pipeline.dir.display()
                ),
            )
        })?;
        let context = pipeline.model.config.text().max_position_embeddings;
        let separator = pipeline.answer_separator()?;
        let mut images = Vec::new();
        let mut image_index: HashMap<PathBuf, usize> = HashMap::new();
        let mut examples = Vec::with_capacity(records.len());
        let mut dropped = Vec::new();
        for (line, record) in records {
            if record.is_void() {
                dropped.push(line);
                continue;
            }
            let texts = record.texts();
            for (field, value) in &texts {
                if value.trim().is_empty() {
                    return Err(Error::data(path, line, format!("field `{field}` is empty")));
                }
            }
            let image_path = jsonl::resolve_image(path, line, record.image(), images_dir)?;
            let image = match image_index.get(&image_path) {
                Some(&i) => i,
                None => {
                    let pixels = processor
                        .preprocess_file(&image_path, pad)
                        .map_err(|e| Error::data(path, line, e.to_string()))?;
                    images.push(pixels);
                    image_index.insert(image_path, images.len() - 1);
                    images.len() - 1
                }
            };
            let prompt = pipeline.image_prompt_ids(texts[0].1, &images[image])?;
            let mut responses = Vec::new();
            for (field, text) in &texts[1..] {
                let ids = response_ids(pipeline, &separator, text)?;
                if prompt.len() + ids.len() > context {
                    return Err(Error::data(
                        path,
                        line,
                        format!(
                            "prompt ({} tokens with the image) and `{field}` ({} tokens) exceed the model's context of {context} positions",
                            prompt.len(),
                            ids.len()
                        ),
                    ));
                }
                responses.push(ids);
            }
            examples.push(Example {
                line,
                image,
                prompt,
                responses,
            });
        }
        if examples.is_empty() {
            return Err(Error::data(
                path,
                1,
                "every pair's chosen answer equals its rejected one: nothing to learn from",
            ));
        }
        Ok(Dataset {
            path: path.to_path_buf(),
            examples,
            images,
            dropped,
        })
    }

    pub fn len(&self) -> usize {
        self.examples.len()
    }

    pub fn is_empty(&self) -> bool {
        self.examples.is_empty()
    }
}
