//! Tokenizer (`tokenizer.json` through the `tokenizers` crate) and the LLaVA-1.5 chat template.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// LLaVA-1.5's conversation template; `{prompt}` is replaced by the user's text.
pub const LLAVA_TEMPLATE: &str = "USER: <image>\n{prompt} ASSISTANT:";
/// The placeholder the template uses for the image.
pub const IMAGE_PLACEHOLDER: &str = "<image>";

/// Formats a user prompt with the LLaVA-1.5 template.
pub fn llava_prompt(prompt: &str) -> String {
    LLAVA_TEMPLATE.replace("{prompt}", prompt)
}

/// See [`Tokenizer::stream`].
pub struct TextStream<'t> {
    inner: tokenizers::DecodeStream<
        't,
        tokenizers::ModelWrapper,
        tokenizers::NormalizerWrapper,
        tokenizers::PreTokenizerWrapper,
        tokenizers::PostProcessorWrapper,
        tokenizers::DecoderWrapper,
    >,
    tokenizer: &'t Tokenizer,
}

impl TextStream<'_> {
    /// The text `id` completes (empty while a multi-byte character is still incomplete).
    pub fn step(&mut self, id: u32) -> Result<String> {
        self.inner
            .step(id)
            .map(Option::unwrap_or_default)
            .map_err(|e| self.tokenizer.err(e.to_string()))
    }
}

pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    path: PathBuf,
}

impl Tokenizer {
    /// Loads `tokenizer.json` (a file, or a checkpoint directory that holds one).
    pub fn from_file(path: &Path) -> Result<Self> {
        let path = if path.is_dir() {
            path.join("tokenizer.json")
        } else {
            path.to_path_buf()
        };
        if !path.exists() {
            return Err(Error::Tokenizer {
                path,
                msg: "file not found (a `tokenizer.json` is required)".into(),
            });
        }
        let inner = tokenizers::Tokenizer::from_file(&path).map_err(|e| Error::Tokenizer {
            path: path.clone(),
            msg: e.to_string(),
        })?;
        Ok(Tokenizer { inner, path })
    }

    /// A tokenizer from the text of a `tokenizer.json` made in memory (from a GGUF's metadata);
    /// `path` is the file it describes, named in errors.
    pub fn from_json(json: &str, path: &Path) -> Result<Self> {
        let inner = json
            .parse::<tokenizers::Tokenizer>()
            .map_err(|e| Error::Tokenizer {
                path: path.to_path_buf(),
                msg: e.to_string(),
            })?;
        Ok(Tokenizer {
            inner,
            path: path.to_path_buf(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn err(&self, msg: impl Into<String>) -> Error {
        Error::Tokenizer {
            path: self.path.clone(),
            msg: msg.into(),
        }
    }

    /// Token ids of `text`; `add_special_tokens` adds BOS as the tokenizer's post-processor says.
    pub fn encode(&self, text: &str, add_special_tokens: bool) -> Result<Vec<u32>> {
        let enc = self
            .inner
            .encode(text, add_special_tokens)
            .map_err(|e| self.err(e.to_string()))?;
        Ok(enc.get_ids().to_vec())
    }

    /// Text of `ids`; `skip_special_tokens` drops BOS/EOS/`<image>`/pad as transformers does.
    pub fn decode(&self, ids: &[u32], skip_special_tokens: bool) -> Result<String> {
        self.inner
            .decode(ids, skip_special_tokens)
            .map_err(|e| self.err(e.to_string()))
    }

    /// An incremental decoder (`tokenizers`' `DecodeStream`): each id gives the text it
    /// completes, so a character split over byte-fallback tokens comes out once, whole, and no
    /// step re-decodes the whole sequence.
    pub fn stream(&self, skip_special_tokens: bool) -> TextStream<'_> {
        TextStream {
            inner: self.inner.decode_stream(skip_special_tokens),
            tokenizer: self,
        }
    }

    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    pub fn id_to_token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    /// Number of ids, added tokens included.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// Tokenises a prompt that contains exactly one `<image>` and expands that id to
    /// `image_tokens` copies, one per image feature the vision tower yields.
    pub fn encode_with_image(
        &self,
        text: &str,
        image_token_id: u32,
        image_tokens: usize,
    ) -> Result<Vec<u32>> {
        self.expand_image_ids(self.encode(text, true)?, image_token_id, image_tokens)
    }

    /// Expands the one `<image>` id of `ids` to `image_tokens` copies.
    pub fn expand_image_ids(
        &self,
        ids: Vec<u32>,
        image_token_id: u32,
        image_tokens: usize,
    ) -> Result<Vec<u32>> {
        let count = ids.iter().filter(|&&t| t == image_token_id).count();
        if count != 1 {
            return Err(self.err(format!(
                "the prompt must hold exactly one `{IMAGE_PLACEHOLDER}` (id {image_token_id}) for one image, found {count}"
            )));
        }
        let mut out = Vec::with_capacity(ids.len() + image_tokens - 1);
        for t in ids {
            if t == image_token_id {
                out.extend(std::iter::repeat_n(image_token_id, image_tokens));
            } else {
                out.push(t);
            }
        }
        Ok(out)
    }

    /// The token strings for every id, used to compare two models' vocabularies.
    pub fn tokens(&self) -> Vec<Option<String>> {
        (0..self.vocab_size() as u32)
            .map(|id| self.id_to_token(id))
            .collect()
    }
}
