//! A checkpoint directory made ready to use: model, tokenizer and image processor, plus
//! turning a (prompt, image) request into model inputs.

use std::path::{Path, PathBuf};

use burn::tensor::backend::Backend;
use tita_core::image::{ImageProcessor, PixelValues};
use tita_core::tokenizer::llava_prompt;
use tita_core::{Error, Result, Tokenizer};
use tita_models::Vlm;

/// Model, tokenizer and image processor of one checkpoint directory.
pub struct Pipeline<B: Backend> {
    pub model: Vlm<B>,
    pub tokenizer: Tokenizer,
    /// `None` for a text-only checkpoint.
    pub processor: Option<ImageProcessor>,
    pub device: B::Device,
    pub dir: PathBuf,
}

/// Model inputs for one request: token ids (with `<image>` expanded) and preprocessed pixels.
#[derive(Debug, Clone)]
pub struct Prompt {
    pub ids: Vec<u32>,
    pub pixels: Option<PixelValues>,
}

impl<B: Backend> Pipeline<B> {
    /// Loads `config.json`, the safetensors weights, `tokenizer.json` and (for LLaVA)
    /// `preprocessor_config.json` from `dir`.
    pub fn load(dir: &Path, device: &B::Device) -> Result<Self> {
        let model = Vlm::load(dir, device)?;
        let tokenizer = Tokenizer::from_file(dir)?;
        let processor = match model.llava_config() {
            Some(_) => Some(ImageProcessor::from_file(dir)?),
            None => None,
        };
        Ok(Pipeline {
            model,
            tokenizer,
            processor,
            device: device.clone(),
            dir: dir.to_path_buf(),
        })
    }

    /// The ids of a request. With an image the prompt goes through the LLaVA-1.5 template
    /// (unless it already holds `<image>`); text-only prompts are tokenised as given.
    pub fn prompt(&self, text: &str, image: Option<&Path>, pad: bool) -> Result<Prompt> {
        match image {
            None => {
                if self.model.llava_config().is_some()
                    && text.contains(tita_core::tokenizer::IMAGE_PLACEHOLDER)
                {
                    return Err(Error::argument(
                        "image",
                        "the prompt holds `<image>` but no image was given",
                    ));
                }
                Ok(Prompt {
                    ids: self.tokenizer.encode(text, true)?,
                    pixels: None,
                })
            }
            Some(path) => {
                let processor = self.processor.as_ref().ok_or_else(|| {
                    Error::argument(
                        "image",
                        format!(
                            "{} is a text-only model; it takes no image",
                            self.dir.display()
                        ),
                    )
                })?;
                let pixels = processor.preprocess_file(path, pad)?;
                self.prompt_with_pixels(text, pixels)
            }
        }
    }

    /// As [`Pipeline::prompt`] with an already preprocessed image.
    pub fn prompt_with_pixels(&self, text: &str, pixels: PixelValues) -> Result<Prompt> {
        Ok(Prompt {
            ids: self.image_prompt_ids(text)?,
            pixels: Some(pixels),
        })
    }

    /// The ids of a prompt about one image: the LLaVA-1.5 template (unless `text` already
    /// holds `<image>`) with `<image>` expanded to one id per image feature.
    pub fn image_prompt_ids(&self, text: &str) -> Result<Vec<u32>> {
        let c = self.model.llava_config().ok_or_else(|| {
            Error::argument("image", "this is a text-only model; it takes no image")
        })?;
        let templated = if text.contains(tita_core::tokenizer::IMAGE_PLACEHOLDER) {
            text.to_string()
        } else {
            llava_prompt(text)
        };
        self.tokenizer
            .encode_with_image(&templated, c.image_token_id, c.image_tokens())
    }
}
