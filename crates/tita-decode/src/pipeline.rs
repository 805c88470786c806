//! A checkpoint directory made ready to use: model, tokenizer, image processor and
//! conversation template, plus turning a request (prompt or conversation, image) into model
//! inputs.

use std::path::{Path, PathBuf};

use burn::tensor::backend::Backend;
use serde_json::Map;
use tita_core::image::PixelValues;
use tita_core::template::{ChatTemplate, Message, Part};
use tita_core::tokenizer::IMAGE_PLACEHOLDER;
use tita_core::{Error, Result, Tokenizer};
use tita_models::gguf::GgufSpec;
use tita_models::{ImagePreprocessor, Precision, Vlm};

/// Model, tokenizer and image processor of one checkpoint directory.
pub struct Pipeline<B: Backend> {
    pub model: Vlm<B>,
    pub tokenizer: Tokenizer,
    /// `None` for a text-only checkpoint.
    pub processor: Option<ImagePreprocessor>,
    pub device: B::Device,
    pub dir: PathBuf,
    /// The conversation template: the directory's `chat_template`, else the family's own
    /// (DeepSeek-VL2's `deepseek` format), else `llava_1_5`.
    pub template: ChatTemplate,
    /// A system message put before every prompt (`--system`).
    pub system: Option<String>,
    /// Extra template variables, e.g. `add_vision_id` (transformers' `**kwargs`).
    pub template_kwargs: Map<String, serde_json::Value>,
    /// Text-only prompts go through the template too (set when a template is chosen
    /// explicitly, and implied by a system message); otherwise they are tokenised as given,
    /// as a plain language model's are.
    pub template_text_prompts: bool,
}

/// An image for a request: a file, the bytes of an encoded file (JPEG, PNG, ...) already in
/// memory, or decoded pixels. Every form is preprocessed the same way (JPEGs as Pillow decodes
/// them; an alpha channel is dropped as `convert("RGB")` drops it).
#[derive(Debug, Clone)]
pub enum ImageInput {
    Path(PathBuf),
    Encoded(std::sync::Arc<[u8]>),
    Decoded(std::sync::Arc<image::RgbImage>),
}

impl ImageInput {
    /// Decoded pixels, from `image`'s own type (any colour type; converted to RGB).
    pub fn from_dynamic(img: &image::DynamicImage) -> Self {
        ImageInput::Decoded(std::sync::Arc::new(img.to_rgb8()))
    }

    /// The RGB pixels; decoded ones are borrowed, not copied.
    fn rgb(&self) -> Result<std::borrow::Cow<'_, image::RgbImage>> {
        use std::borrow::Cow;
        Ok(match self {
            ImageInput::Path(p) => Cow::Owned(tita_core::image::load_rgb(p)?),
            ImageInput::Encoded(bytes) => Cow::Owned(tita_core::image::decode_rgb(
                bytes,
                Path::new("<image bytes>"),
            )?),
            ImageInput::Decoded(img) => Cow::Borrowed(img.as_ref()),
        })
    }
}

impl From<&Path> for ImageInput {
    fn from(p: &Path) -> Self {
        ImageInput::Path(p.to_path_buf())
    }
}

impl From<PathBuf> for ImageInput {
    fn from(p: PathBuf) -> Self {
        ImageInput::Path(p)
    }
}

/// One request: the user's prompt (or a whole conversation) and an optional image.
#[derive(Debug, Clone, Default)]
pub struct Request {
    pub prompt: String,
    pub image: Option<ImageInput>,
    /// Pad the image to a square of the mean colour first (LLaVA-1.5 evaluation).
    pub pad: bool,
    /// A whole conversation (system, user and assistant turns) ending with the user's turn;
    /// when set, `prompt` is not used and the image goes where its image part is.
    pub messages: Option<Vec<Message>>,
    /// The question's position in its set, for methods that vary by question as their
    /// official pipelines do (MARINE's template draw); 0 when not given.
    pub position: Option<usize>,
}

impl Request {
    /// A prompt about an optional image (a path, or any [`ImageInput`]).
    pub fn new(prompt: impl Into<String>, image: Option<impl Into<ImageInput>>, pad: bool) -> Self {
        Request {
            prompt: prompt.into(),
            image: image.map(Into::into),
            pad,
            messages: None,
            position: None,
        }
    }
}

/// Model inputs for one request: token ids (with `<image>` expanded) and preprocessed pixels.
#[derive(Debug, Clone)]
pub struct Prompt {
    pub ids: Vec<u32>,
    pub pixels: Option<PixelValues>,
}

impl<B: Backend> Pipeline<B> {
    /// Loads `config.json`, the safetensors weights, `tokenizer.json` and the image
    /// processor's settings (`preprocessor_config.json`; DeepSeek-VL2: `processor_config.json`
    /// where present) from `dir`; or a llama.cpp GGUF checkpoint (a `.gguf` file,
    /// or a directory with a language GGUF and its mmproj: see [`GgufSpec`]).
    pub fn load(dir: &Path, device: &B::Device) -> Result<Self> {
        Self::load_in(dir, Precision::F32, device)
    }

    /// [`Pipeline::load`] with the weights held and computed in `precision` (logits and the
    /// fusion stay f32).
    pub fn load_in(dir: &Path, precision: Precision, device: &B::Device) -> Result<Self> {
        let (model, tokenizer, processor, template) = match GgufSpec::detect(dir)? {
            // A llama.cpp checkpoint: tokenizer, template and preprocessing are in its metadata.
            Some(gguf) => {
                let ckpt = gguf.open()?;
                let (tokenizer, processor) = (ckpt.tokenizer()?, ckpt.image_processor()?);
                let template = match ckpt.chat_template()? {
                    Some(t) => t,
                    None => ChatTemplate::builtin("llava_1_5").expect("built in"),
                };
                (
                    ckpt.load(precision, device)?,
                    tokenizer,
                    processor.map(ImagePreprocessor::Resize),
                    template,
                )
            }
            None => {
                let model = Vlm::load_in(dir, precision, device)?;
                let tokenizer = Tokenizer::from_file(dir)?;
                let processor = model.config.image_preprocessor(dir, &tokenizer)?;
                let template = match (
                    ChatTemplate::from_model_dir(dir)?,
                    model.config.builtin_template(),
                ) {
                    (Some(t), _) => t,
                    (None, Some((name, source))) => {
                        let mut t = ChatTemplate::new(source.into(), name.into());
                        t.read_special_tokens(&dir.join("tokenizer_config.json"))?;
                        t
                    }
                    (None, None) => ChatTemplate::for_model(dir)?,
                };
                (model, tokenizer, processor, template)
            }
        };
        Ok(Pipeline {
            model,
            tokenizer,
            processor,
            device: device.clone(),
            dir: dir.to_path_buf(),
            template,
            system: None,
            template_kwargs: Map::new(),
            template_text_prompts: false,
        })
    }

    /// Uses `template` (`--template`) for every prompt, text-only ones included; the special
    /// tokens are this model's.
    pub fn set_template(&mut self, mut template: ChatTemplate) -> Result<()> {
        template.read_special_tokens(&self.dir.join("tokenizer_config.json"))?;
        self.template = template;
        self.template_text_prompts = true;
        Ok(())
    }

    /// The model inputs of a request.
    pub fn request_prompt(&self, request: &Request) -> Result<Prompt> {
        match (&request.messages, &request.image) {
            (Some(messages), image) => self.chat_prompt(messages, image.as_ref(), request.pad),
            (None, Some(ImageInput::Path(path))) => {
                self.prompt(&request.prompt, Some(path), request.pad)
            }
            (None, Some(image)) => {
                let pixels = self.preprocess(image, request.pad)?;
                self.prompt_with_pixels(&request.prompt, pixels)
            }
            (None, None) => self.prompt(&request.prompt, None, request.pad),
        }
    }

    /// The ids of a conversation rendered by the template with the generation prompt
    /// appended; `image` fills the conversation's one image part.
    pub fn chat_prompt(
        &self,
        messages: &[Message],
        image: Option<&ImageInput>,
        pad: bool,
    ) -> Result<Prompt> {
        let parts: usize = messages.iter().map(Message::images).sum();
        if parts != image.is_some() as usize {
            return Err(Error::argument(
                "messages",
                format!(
                    "the conversation has {parts} image part(s) and {} image was given; one image needs exactly one image part",
                    if image.is_some() { "an" } else { "no" }
                ),
            ));
        }
        let text = self.render(messages)?;
        match image {
            None => Ok(Prompt {
                ids: self.encode_rendered(&text)?,
                pixels: None,
            }),
            Some(image) => {
                let pixels = self.preprocess(image, pad)?;
                Ok(Prompt {
                    ids: self.expand_image(&text, &pixels)?,
                    pixels: Some(pixels),
                })
            }
        }
    }

    /// The model inputs of `request` with its image removed and the rest kept: the same
    /// conversation, rendered by the template as a text-only turn (M3ID's unconditioned
    /// branch). A prompt that is already templated loses its image placeholder.
    pub fn prompt_without_image(&self, request: &Request) -> Result<Prompt> {
        let messages = match &request.messages {
            Some(messages) => messages
                .iter()
                .map(|m| Message {
                    role: m.role.clone(),
                    content: m
                        .content
                        .iter()
                        .filter(|p| !matches!(p, Part::Image {}))
                        .cloned()
                        .collect(),
                })
                .collect(),
            None => {
                if let Some(placeholder) = self
                    .image_placeholder()
                    .filter(|p| request.prompt.contains(p.as_str()))
                {
                    let text = request
                        .prompt
                        .replace(&format!("{placeholder}\n"), "")
                        .replace(&placeholder, "");
                    return Ok(Prompt {
                        ids: self.encode_rendered(&text)?,
                        pixels: None,
                    });
                }
                self.conversation(&request.prompt, false)
            }
        };
        self.chat_prompt(&messages, None, request.pad)
    }

    /// What separates the generation prompt from the answer in a rendered conversation, read
    /// off the template: a space after LLaVA's `ASSISTANT:`, nothing after ChatML's
    /// `<|im_start|>assistant\n` or DeepSeek-VL2's `<|Assistant|>:` (whose processor tokenises
    /// the answer without the space its `sft_format` string shows). A template that renders an
    /// answer turn otherwise than as its generation prompt continued falls back to a space
    /// unless the prompt ends in whitespace.
    pub fn answer_separator(&self) -> Result<String> {
        const ANSWER: &str = "ANSWER";
        let mut messages = self.conversation("?", false);
        let prompt = self.render(&messages)?;
        messages.push(Message {
            role: "assistant".into(),
            content: vec![Part::Text {
                text: ANSWER.into(),
            }],
        });
        let answered = self
            .template
            .render(&messages, false, &self.template_kwargs)?;
        let between = (answered.strip_prefix(&prompt))
            .and_then(|rest| rest.split_once(ANSWER))
            .map(|(between, _)| between)
            .filter(|between| between.trim().is_empty());
        Ok(match between {
            Some(between) => between.to_string(),
            None if prompt.ends_with(char::is_whitespace) => String::new(),
            None => " ".into(),
        })
    }

    /// `messages` as the template renders them with the generation prompt appended.
    pub fn render(&self, messages: &[Message]) -> Result<String> {
        self.template.render(messages, true, &self.template_kwargs)
    }

    /// The conversation of a single prompt: the system message if one is set, then the user.
    fn conversation(&self, text: &str, with_image: bool) -> Vec<Message> {
        let mut messages: Vec<Message> = self.system.iter().map(|s| Message::system(s)).collect();
        messages.push(Message::user(text, with_image));
        messages
    }

    fn encode_rendered(&self, text: &str) -> Result<Vec<u32>> {
        self.tokenizer
            .encode(text, self.template.add_special_tokens(text))
    }

    fn preprocess(&self, image: &ImageInput, pad: bool) -> Result<PixelValues> {
        let processor = self.processor.as_ref().ok_or_else(|| {
            Error::argument(
                "image",
                format!(
                    "{} is a text-only model; it takes no image",
                    self.dir.display()
                ),
            )
        })?;
        processor.preprocess(&*image.rgb()?, pad)
    }

    /// The ids of a request. With an image the prompt goes through the conversation template
    /// (unless it already holds `<image>`: then it is taken as templated); text-only prompts
    /// are tokenised as given unless a template was chosen explicitly.
    pub fn prompt(&self, text: &str, image: Option<&Path>, pad: bool) -> Result<Prompt> {
        match image {
            None => {
                if let Some(placeholder) = self.image_placeholder().filter(|p| text.contains(p)) {
                    return Err(Error::argument(
                        "image",
                        format!("the prompt holds `{placeholder}` but no image was given"),
                    ));
                }
                if self.template_text_prompts || self.system.is_some() {
                    return self.chat_prompt(&self.conversation(text, false), None, pad);
                }
                Ok(Prompt {
                    ids: self.tokenizer.encode(text, true)?,
                    pixels: None,
                })
            }
            Some(path) => {
                let pixels = self.preprocess(&ImageInput::from(path), pad)?;
                self.prompt_with_pixels(text, pixels)
            }
        }
    }

    /// As [`Pipeline::prompt`] with an already preprocessed image.
    pub fn prompt_with_pixels(&self, text: &str, pixels: PixelValues) -> Result<Prompt> {
        Ok(Prompt {
            ids: self.image_prompt_ids(text, &pixels)?,
            pixels: Some(pixels),
        })
    }

    /// The text that stands for the image in a templated prompt: `<image>` for LLaVA,
    /// `<|image_pad|>` for Qwen2-VL (None for a text-only model).
    pub fn image_placeholder(&self) -> Option<String> {
        let id = self.model.image_token_id()?;
        Some(
            self.tokenizer
                .id_to_token(id)
                .unwrap_or_else(|| IMAGE_PLACEHOLDER.to_string()),
        )
    }

    /// The ids of a prompt about one image: the conversation template (unless `text` already
    /// holds the image placeholder) with the placeholder expanded to one id per image feature.
    pub fn image_prompt_ids(&self, text: &str, pixels: &PixelValues) -> Result<Vec<u32>> {
        if self.image_placeholder().is_some_and(|p| text.contains(&p)) {
            return self.expand_image(text, pixels);
        }
        self.expand_image(&self.render(&self.conversation(text, true))?, pixels)
    }

    /// Tokenises templated text that holds one image placeholder and expands it to one id per
    /// feature the image yields.
    fn expand_image(&self, text: &str, pixels: &PixelValues) -> Result<Vec<u32>> {
        let id = self.model.image_token_id().ok_or_else(|| {
            Error::argument("image", "this is a text-only model; it takes no image")
        })?;
        let ids = self.encode_rendered(text)?;
        self.tokenizer
            .expand_image_ids(ids, id, self.model.image_tokens_for(pixels)?)
    }
}
