//! The one place that maps a checkpoint's `model_type` to a family: its config parser, where
//! its tensors live (hub layout, or detected from the file), how its vision half loads and
//! takes images, and how its config is written back. A new family is a folder beside
//! `llava/`, `qwen2_5_vl/` and `deepseek_vl2/` plus one arm per `match` here.

use std::path::Path;

use burn::module::Module;
use burn::tensor::{backend::Backend, DType};
use image::RgbImage;
use serde_json::Value;
use tita_core::config::{read_config, Fields};
use tita_core::image::{load_rgb, ImageProcessor, PixelValues};
use tita_core::{Error, Result, Tokenizer};

use crate::deepseek_vl2::{self, DeepseekV2, DeepseekVision, DeepseekVl2Config};
use crate::llama::config::{parse_text, TextFamily};
use crate::llama::{Llama, LlamaConfig, LlamaKeys, MropePositions};
use crate::llava::{self, LlavaConfig, VisionPart};
use crate::qwen2_5_vl::{self, batch_positions, QwenVision, QwenVlConfig};
use crate::scope::Scope;
use crate::vlm::{ImageFeatures, PixelBatch};
use crate::weights::{TensorSource, Weights};

/// What a checkpoint directory holds, by family.
// One per model: boxing the larger variant would buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum ModelConfig {
    Llava(LlavaConfig),
    Llama(LlamaConfig),
    QwenVl(QwenVlConfig),
    DeepseekVl2(DeepseekVl2Config),
}

const SUPPORTED: &str = "`llava`, `llama`, `qwen2_5_vl` or `deepseek_vl_v2`";

impl ModelConfig {
    /// Reads and validates `config.json` (a file, or a directory that holds one).
    pub fn from_file(path: &Path) -> Result<Self> {
        let (value, path) = read_config(path)?;
        Self::from_value(&value, &path)
    }

    /// Parses an already loaded config; `path` is only used in error messages.
    pub fn from_value(value: &Value, path: &Path) -> Result<Self> {
        let root = Fields::root(value, path)?;
        match root.opt_str("model_type")?.as_deref() {
            Some("llava") => Ok(ModelConfig::Llava(llava::config::parse_llava(&root)?)),
            Some("llama") => Ok(ModelConfig::Llama(parse_text(
                &root,
                None,
                TextFamily::Llama,
            )?)),
            Some("qwen2_5_vl") => Ok(ModelConfig::QwenVl(qwen2_5_vl::config::parse_qwen_vl(
                &root,
            )?)),
            Some("deepseek_vl_v2") => Ok(ModelConfig::DeepseekVl2(DeepseekVl2Config::from_value(
                value, path,
            )?)),
            Some(other) => Err(root.err(
                "model_type",
                format!("`{other}` is not supported (expected {SUPPORTED})"),
            )),
            None => Err(root.err("model_type", format!("missing (expected {SUPPORTED})"))),
        }
    }

    /// The config as transformers writes `config.json` (every field explicit), so that a model
    /// made here (random or trained from scratch) is a checkpoint like any other.
    pub fn to_hf_json(&self) -> Value {
        match self {
            ModelConfig::Llama(c) => c.to_hf_json(),
            ModelConfig::Llava(c) => c.to_hf_json(),
            ModelConfig::QwenVl(c) => c.to_hf_json(),
            ModelConfig::DeepseekVl2(c) => c.to_hf_json(),
        }
    }

    /// The family, as `model_type` names it.
    pub fn family(&self) -> &'static str {
        match self {
            ModelConfig::Llava(_) => "llava",
            ModelConfig::Llama(_) => "llama",
            ModelConfig::QwenVl(_) => "qwen2_5_vl",
            ModelConfig::DeepseekVl2(_) => "deepseek_vl_v2",
        }
    }

    /// The language model's config (DeepSeek-V2 as a LLaMA sees it: vocabulary, context,
    /// special ids, rope).
    pub fn text(&self) -> &LlamaConfig {
        match self {
            ModelConfig::Llava(c) => &c.text,
            ModelConfig::Llama(c) => c,
            ModelConfig::QwenVl(c) => &c.text,
            ModelConfig::DeepseekVl2(c) => &c.text,
        }
    }

    /// The id that stands for image features in a prompt (None for a text-only model).
    pub fn image_token_id(&self) -> Option<u32> {
        match self {
            ModelConfig::Llava(c) => Some(c.image_token_id),
            ModelConfig::QwenVl(c) => Some(c.image_token_id),
            ModelConfig::DeepseekVl2(_) => Some(deepseek_vl2::IMAGE_TOKEN_ID),
            ModelConfig::Llama(_) => None,
        }
    }

    /// Positions `image` occupies in a prompt (None for a text-only model).
    pub fn image_tokens_for(&self, image: &PixelValues) -> Result<Option<usize>> {
        Ok(match self {
            ModelConfig::Llava(c) => Some(c.image_tokens()),
            ModelConfig::QwenVl(c) => {
                let layout = c.vision.patch_layout();
                Some(layout.tokens(layout.grid(image.height, image.width)?))
            }
            ModelConfig::DeepseekVl2(c) => Some(c.image_tokens(c.tiling_of(image)?)),
            ModelConfig::Llama(_) => None,
        })
    }

    /// Where the tensors of the family's hub checkpoints live (random models use it too).
    pub fn hub_keys(&self) -> KeyLayout {
        match self {
            ModelConfig::Llama(_) => crate::llama::hub_keys(),
            ModelConfig::Llava(_) => llava::hub_keys(),
            ModelConfig::QwenVl(_) => qwen2_5_vl::hub_keys(),
            ModelConfig::DeepseekVl2(_) => deepseek_vl2::keys(),
        }
    }

    /// Where the tensors of this checkpoint live, among the layouts the family is known in.
    pub fn detect_keys(&self, w: &Weights) -> Result<KeyLayout> {
        match self {
            ModelConfig::Llama(_) => crate::llama::detect_keys(w),
            ModelConfig::Llava(_) => llava::detect_keys(w),
            ModelConfig::QwenVl(_) => qwen2_5_vl::detect_keys(w),
            ModelConfig::DeepseekVl2(_) => deepseek_vl2::detect_keys(w),
        }
    }

    /// Explicit rotary positions of a prefill whose rows hold images, for families that turn
    /// them by image layout (Qwen2-VL's M-RoPE); None where running positions serve.
    pub fn rope_positions(
        &self,
        ids: &[Vec<u32>],
        pad_left: &[usize],
        grids: &[Vec<[usize; 3]>],
    ) -> Result<Option<MropePositions>> {
        match self {
            ModelConfig::QwenVl(c) => batch_positions(c, ids, pad_left, grids).map(Some),
            ModelConfig::Llava(_) | ModelConfig::Llama(_) | ModelConfig::DeepseekVl2(_) => Ok(None),
        }
    }

    /// How the checkpoint in `dir` turns images into pixels (None for a text-only model):
    /// its `preprocessor_config.json` (LLaVA, Qwen2-VL), or DeepSeek-VL2's tiling processor
    /// with its `processor_config.json` and `tokenizer`.
    pub fn image_preprocessor(
        &self,
        dir: &Path,
        tokenizer: &Tokenizer,
    ) -> Result<Option<ImagePreprocessor>> {
        Ok(match self {
            ModelConfig::Llama(_) => None,
            ModelConfig::Llava(_) | ModelConfig::QwenVl(_) => {
                Some(ImagePreprocessor::Resize(ImageProcessor::from_file(dir)?))
            }
            ModelConfig::DeepseekVl2(c) => Some(ImagePreprocessor::Tiles(
                deepseek_vl2::Tiler::from_dir(dir, c, tokenizer)?,
            )),
        })
    }

    /// The conversation template of a family whose checkpoints ship none (their processor
    /// formats conversations); None where the directory's own or LLaVA-1.5's serves.
    pub fn builtin_template(&self) -> Option<(&'static str, &'static str)> {
        match self {
            ModelConfig::DeepseekVl2(_) => Some(("deepseek_vl2", deepseek_vl2::CHAT_TEMPLATE)),
            ModelConfig::Llava(_) | ModelConfig::Llama(_) | ModelConfig::QwenVl(_) => None,
        }
    }
}

/// The language model, by family: LLaMA (or Qwen2 with M-RoPE), or DeepSeek-V2.
// One per model: boxing the larger variant would buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Module, Debug)]
pub enum TextModel<B: Backend> {
    Llama(Llama<B>),
    DeepseekV2(DeepseekV2<B>),
}

impl<B: Backend> TextModel<B> {
    /// The family's language model, from the tensors `keys.text` names.
    pub fn load(
        w: &mut impl TensorSource,
        config: &ModelConfig,
        keys: &KeyLayout,
        device: &B::Device,
    ) -> Result<Self> {
        Ok(match config {
            ModelConfig::Llava(_) | ModelConfig::Llama(_) | ModelConfig::QwenVl(_) => {
                TextModel::Llama(Llama::load(w, &keys.text, config.text(), device)?)
            }
            ModelConfig::DeepseekVl2(c) => {
                TextModel::DeepseekV2(DeepseekV2::load(w, &keys.text, &c.language, device)?)
            }
        })
    }
}

/// How a family's images become pixels.
pub enum ImagePreprocessor {
    /// Resize, crop and normalise (`CLIPImageProcessor`, `Qwen2VLImageProcessor`).
    Resize(ImageProcessor),
    /// DeepSeek-VL2's global view and local tiles, as one band-layout image
    /// (`deepseek_vl2::band`).
    Tiles(deepseek_vl2::Tiler),
}

impl ImagePreprocessor {
    /// One image's pixels. `pad` (LLaVA-1.5 evaluation: pad to a square first) concerns the
    /// resizing processors; DeepSeek-VL2's tiling always pads, and tiles an image of a
    /// request as the authors' processor tiles a conversation of at most two images.
    pub fn preprocess(&self, img: &RgbImage, pad: bool) -> Result<PixelValues> {
        match self {
            ImagePreprocessor::Resize(p) => p.preprocess(img, pad),
            ImagePreprocessor::Tiles(p) => p.pixels(img, true),
        }
    }

    /// [`ImagePreprocessor::preprocess`] of an image file.
    pub fn preprocess_file(&self, path: &Path, pad: bool) -> Result<PixelValues> {
        self.preprocess(&load_rgb(path)?, pad)
    }

    /// The resizing processor's settings, None for a tiling one.
    pub fn resize(&self) -> Option<&ImageProcessor> {
        match self {
            ImagePreprocessor::Resize(p) => Some(p),
            ImagePreprocessor::Tiles(_) => None,
        }
    }
}

/// Where each part's tensors live in the checkpoint, detected from the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyLayout {
    pub text: LlamaKeys,
    /// Prefix of the vision tower (LLaVA: with or without `vision_model.`).
    pub vision: Option<String>,
    /// Prefix of LLaVA's `linear_1`, `linear_2`.
    pub projector: Option<String>,
}

impl KeyLayout {
    /// A decoder under `decoder` with `lm_head.weight`, and no vision half.
    pub fn text_only(decoder: &str) -> Self {
        KeyLayout {
            text: LlamaKeys {
                decoder: decoder.into(),
                lm_head: "lm_head.weight".into(),
            },
            vision: None,
            projector: None,
        }
    }
}

/// The first of `candidates` under which the checkpoint holds `suffix`.
pub(crate) fn first_present(w: &Weights, candidates: &[&str], suffix: &str) -> Option<String> {
    candidates
        .iter()
        .find(|p| w.contains(&format!("{p}{suffix}")))
        .map(|p| p.to_string())
}

/// `what` is under none of the prefixes `tried`.
pub(crate) fn not_found(w: &Weights, what: &str, tried: &[&str], suffix: &str) -> Error {
    let tried: Vec<String> = tried.iter().map(|p| format!("`{p}{suffix}`")).collect();
    Error::tensor(
        w.source(),
        suffix,
        format!("{what} not found; tried {}", tried.join(", ")),
    )
}

/// The vision half of a VLM, by family.
// One per model: boxing the larger variant would buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Module, Debug)]
pub enum Vision<B: Backend> {
    Llava(VisionPart<B>),
    Qwen(QwenVision<B>),
    DeepseekVl2(DeepseekVision<B>),
}

impl<B: Backend> Vision<B> {
    /// The family's vision half, if it has one.
    pub fn load(
        w: &mut impl TensorSource,
        config: &ModelConfig,
        keys: &KeyLayout,
        device: &B::Device,
    ) -> Result<Option<Self>> {
        let prefix = keys.vision.as_deref().unwrap_or_default();
        Ok(match config {
            ModelConfig::Llama(_) => None,
            ModelConfig::Llava(c) => Some(Vision::Llava(VisionPart::load(w, keys, c, device)?)),
            ModelConfig::QwenVl(c) => Some(Vision::Qwen(QwenVision::load(
                Scope::new(w, prefix),
                &c.vision,
                device,
            )?)),
            ModelConfig::DeepseekVl2(c) => {
                Some(Vision::DeepseekVl2(DeepseekVision::load(w, c, device)?))
            }
        })
    }

    /// Preprocessed images in the tower's input form, checked against its config.
    pub fn pixels(
        &self,
        images: &[&PixelValues],
        dtype: DType,
        device: &B::Device,
    ) -> Result<PixelBatch<B>> {
        Ok(match self {
            Vision::Llava(v) => PixelBatch::Square(v.pixels(images, dtype, device)?),
            Vision::Qwen(v) => {
                let (rows, grids) = v.pixels(images, dtype, device)?;
                PixelBatch::Patches { rows, grids }
            }
            Vision::DeepseekVl2(v) => {
                let (tiles, crops) = v.pixels(images, dtype, device)?;
                PixelBatch::Tiles { tiles, crops }
            }
        })
    }

    /// Image features in the text model's width, one run of rows per image.
    pub fn encode(&self, pixels: PixelBatch<B>) -> Result<ImageFeatures<B>> {
        match (self, pixels) {
            (Vision::Llava(v), PixelBatch::Square(p)) => Ok(v.encode(p)),
            (Vision::Qwen(v), PixelBatch::Patches { rows, grids }) => Ok(v.encode(rows, grids)),
            (Vision::DeepseekVl2(v), PixelBatch::Tiles { tiles, crops }) => v.encode(tiles, &crops),
            _ => Err(Error::argument(
                "image",
                "pixels of another model family (see Vlm::pixels_tensor)",
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::llava::ClipVisionConfig;
    use tita_core::Activation;

    #[test]
    fn written_configs_read_back_equal() {
        let mut text = LlamaConfig::sized(64, 2, 4, 2, 128);
        text.pad_token_id = Some(5);
        text.tie_word_embeddings = true;
        let vision = ClipVisionConfig {
            hidden_size: 32,
            num_hidden_layers: 3,
            num_attention_heads: 4,
            image_size: 64,
            patch_size: 16,
            ..Default::default()
        };
        let mut llava = LlavaConfig::llava_1_5(text.clone(), vision);
        if let ModelConfig::Llava(c) = &mut llava {
            c.vision_feature_layers = vec![-2, -1];
        }
        for config in [llava, ModelConfig::Llama(text)] {
            let json = config.to_hf_json();
            let back = ModelConfig::from_value(&json, Path::new("config.json")).unwrap();
            assert_eq!(back, config, "{json:#}");
        }
    }

    fn parse(json: &str) -> Result<ModelConfig> {
        ModelConfig::from_value(
            &serde_json::from_str(json).unwrap(),
            Path::new("config.json"),
        )
    }

    #[test]
    fn sparse_llava_takes_transformers_defaults() {
        let c = match parse(r#"{"model_type": "llava", "text_config": {"model_type": "llama", "vocab_size": 32064}}"#).unwrap() {
            ModelConfig::Llava(c) => c,
            other => panic!("expected llava, got {other:?}"),
        };
        assert_eq!(c.text.hidden_size, 4096);
        assert_eq!(c.text.num_key_value_heads, 32);
        assert_eq!(c.text.rope_theta, 10000.0);
        assert_eq!(c.text.rms_norm_eps, 1e-6);
        assert_eq!(c.vision.image_size, 336);
        assert_eq!(c.vision.hidden_act, Activation::QuickGelu);
        assert_eq!(c.vision.layer_norm_eps, 1e-5);
        assert_eq!(c.vision_feature_layers, vec![-2]);
        assert_eq!(c.image_tokens(), 576);
        assert_eq!(c.feature_layer_indices(), vec![23]);
        assert_eq!(c.image_token_id, 32000);
    }

    #[test]
    fn rope_parameters_and_dtype_of_transformers_5() {
        let c = parse(r#"{"model_type": "llama", "dtype": "bfloat16", "rope_parameters": {"rope_type": "default", "rope_theta": 500000.0}}"#).unwrap();
        assert_eq!(c.text().rope_theta, 500000.0);
        assert_eq!(c.text().dtype.as_deref(), Some("bfloat16"));
    }

    #[test]
    fn invalid_configs_name_the_field() {
        let e = parse(r#"{"model_type": "llama", "hidden_size": 30, "num_attention_heads": 4}"#)
            .unwrap_err();
        assert!(e.to_string().contains("num_attention_heads"), "{e}");
        let e =
            parse(r#"{"model_type": "llama", "num_attention_heads": 8, "num_key_value_heads": 3}"#)
                .unwrap_err();
        assert!(e.to_string().contains("num_key_value_heads"), "{e}");
        let e =
            parse(r#"{"model_type": "llava", "text_config": {"hidden_size": "big"}}"#).unwrap_err();
        assert!(e.to_string().contains("text_config.hidden_size"), "{e}");
        let e = parse(r#"{"model_type": "llava", "vision_feature_layer": -30}"#).unwrap_err();
        assert!(e.to_string().contains("vision_feature_layer"), "{e}");
        let e =
            parse(r#"{"model_type": "llama", "rope_scaling": {"type": "yarn", "factor": 2.0}}"#)
                .unwrap_err();
        assert!(e.to_string().contains("rope_scaling"), "{e}");
        let e = parse(r#"{"model_type": "bert"}"#).unwrap_err();
        assert!(e.to_string().contains("model_type"), "{e}");
    }
}
