//! The authors' `DeepseekVLV2Processor` (inference mode): the `deepseek` conversation format
//! (`<|User|>: …\n\n<|Assistant|>:`), text tokenised in pieces between `<image>` placeholders,
//! and dynamic tiling: per image a global view padded to one tile and, when the whole
//! conversation has at most two images, a local canvas at the best-fitting candidate
//! resolution cut into tiles; each placeholder becomes the image-token run the model fills.
//! Padding is Pillow's `ImageOps.pad` (bicubic resize to fit with Python's `round`, centred
//! paste at `round(pad/2)`, half to even) on the mean colour, with Pillow 13's pass order (what
//! the reference used), so tiles match to the byte.

use std::path::Path;

use burn::tensor::{backend::Backend, Tensor, TensorData};
use image::RgbImage;
use serde_json::Value;
use tita_core::config::{read_config, Fields};
use tita_core::image::{resize_pillow13, PixelValues, Resample};
use tita_core::{Error, Result, Tokenizer};

use crate::deepseek_vl2::config::{parse_resolutions, DeepseekVl2Config, IMAGE_TOKEN_ID};

pub const IMAGE_TOKEN: &str = "<image>";
pub const USER: &str = "<|User|>";
pub const ASSISTANT: &str = "<|Assistant|>";
/// The template's separator after an assistant answer (DeepSeek's EOS text).
const SEP2: &str = "<｜end▁of▁sentence｜>";

/// The authors' `deepseek` conversation format as a chat template (their checkpoints ship
/// none): `{system}\n\n` when set, `<|User|>: {text}\n\n`, `<|Assistant|>:{answer}` + EOS (the
/// processor tokenises answers without the space its `sft_format` string shows), and
/// `<|Assistant|>:` to generate; an image part is `<image>\n` in place.
pub const CHAT_TEMPLATE: &str = "{% for message in messages %}{% if message['role'] == 'system' %}{% for c in message['content'] %}{{ c['text'] | trim }}{% endfor %}{{ '\n\n' }}{% elif message['role'] == 'user' %}{{ '<|User|>: ' }}{% for c in message['content'] %}{% if c['type'] == 'image' %}{{ '<image>\n' }}{% else %}{{ c['text'] | trim }}{% endif %}{% endfor %}{{ '\n\n' }}{% else %}{{ '<|Assistant|>:' }}{% for c in message['content'] %}{{ c['text'] | trim }}{% endfor %}{{ '<｜end▁of▁sentence｜>' }}{% endif %}{% endfor %}{% if add_generation_prompt %}{{ '<|Assistant|>:' }}{% endif %}";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    User,
    Assistant,
}

impl Role {
    fn tag(self) -> &'static str {
        match self {
            Role::User => USER,
            Role::Assistant => ASSISTANT,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub role: Role,
    /// The text, with one `<image>` per image of this turn.
    pub content: String,
}

impl Message {
    pub fn user(content: impl Into<String>) -> Self {
        Message {
            role: Role::User,
            content: content.into(),
        }
    }

    pub fn assistant(content: impl Into<String>) -> Self {
        Message {
            role: Role::Assistant,
            content: content.into(),
        }
    }
}

/// How one image was tiled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tiling {
    /// The local canvas `(width, height)`: the chosen candidate, or one tile without cropping.
    pub best_wh: (usize, usize),
    /// `[across, down]`, the authors' `images_spatial_crop` entry.
    pub tiles: [usize; 2],
}

/// The processor's output for one conversation.
#[derive(Debug, Clone, PartialEq)]
pub struct Prepared {
    pub input_ids: Vec<u32>,
    pub images_seq_mask: Vec<bool>,
    /// `[tiles, 3, size, size]` bytes in tile order (per image: global view, then the local
    /// tiles row by row); the model's input is [`Prepared::pixel_values`].
    pub pixel_bytes: Vec<u8>,
    pub tiles: usize,
    pub tile_size: usize,
    /// `[across, down]` per image; `[[0, 0]]` without images, as the authors emit (their
    /// all-zero placeholder tile is not materialised: the model never reads it).
    pub images_spatial_crop: Vec<[usize; 2]>,
    pub num_image_tokens: Vec<usize>,
    pub tilings: Vec<Tiling>,
    /// Per channel, the float each byte becomes: `(b/255 - mean)/std` in f32, as torchvision.
    pub lut: [[f32; 256]; 3],
}

impl Prepared {
    /// The pixel tensor's values (`[tiles, 3, size, size]`).
    pub fn pixel_values(&self) -> Vec<f32> {
        let plane = self.tile_size * self.tile_size;
        self.pixel_bytes
            .iter()
            .enumerate()
            .map(|(i, &b)| self.lut[(i / plane) % 3][b as usize])
            .collect()
    }

    /// Every image in the band layout the model takes through [`crate::Vlm`] (see [`band`]).
    pub fn images(&self) -> Vec<PixelValues> {
        let per_tile = 3 * self.tile_size * self.tile_size;
        let mut first = 0;
        self.tilings
            .iter()
            .map(|t| {
                let n = 1 + t.tiles[0] * t.tiles[1];
                let bytes = &self.pixel_bytes[first * per_tile..(first + n) * per_tile];
                first += n;
                band(bytes, t.tiles, self.tile_size, &self.lut)
            })
            .collect()
    }

    /// The tiles as a tensor, or None without images.
    pub fn tiles_tensor<B: Backend>(&self, device: &B::Device) -> Option<Tensor<B, 4>> {
        (self.tiles > 0).then(|| {
            let s = self.tile_size;
            Tensor::from_data(
                TensorData::new(self.pixel_values(), [self.tiles, 3, s, s]),
                device,
            )
        })
    }
}

/// The authors' `select_best_resolution`: per candidate `(width, height)` the image is scaled
/// to fit (sizes truncated); the largest effective area (capped at the original's) wins, ties
/// go to the least padding, then to the earlier candidate.
pub fn best_resolution(size_wh: (usize, usize), candidates: &[(usize, usize)]) -> (usize, usize) {
    let (w, h) = size_wh;
    let mut best: Option<((usize, usize), usize, usize)> = None;
    for &(cw, ch) in candidates {
        let scale = (cw as f64 / w as f64).min(ch as f64 / h as f64);
        let (dw, dh) = ((w as f64 * scale) as usize, (h as f64 * scale) as usize);
        let effective = (dw * dh).min(w * h);
        let wasted = cw * ch - effective;
        let better = match best {
            None => true,
            Some((_, e, wst)) => effective > e || (effective == e && wasted < wst),
        };
        if better {
            best = Some(((cw, ch), effective, wasted));
        }
    }
    best.map_or(candidates[0], |(c, _, _)| c)
}

/// Pillow's `ImageOps.pad(img, (tw, th), BICUBIC, color)` with centring 0.5.
pub fn pad_to(img: &RgbImage, (tw, th): (usize, usize), color: [u8; 3]) -> Result<RgbImage> {
    let (w, h) = (img.width() as usize, img.height() as usize);
    let (im_ratio, dest_ratio) = (w as f64 / h as f64, tw as f64 / th as f64);
    // `ImageOps.contain`: fit inside, the free side rounded as Python rounds.
    let (rw, rh) = if im_ratio == dest_ratio {
        (tw, th)
    } else if im_ratio > dest_ratio {
        (
            tw,
            (h as f64 / w as f64 * tw as f64).round_ties_even() as usize,
        )
    } else {
        (
            (w as f64 / h as f64 * th as f64).round_ties_even() as usize,
            th,
        )
    };
    if rw == 0 || rh == 0 {
        return Err(Error::argument(
            "image",
            format!("{w}x{h} pixels is too narrow to fit into {tw}x{th}"),
        ));
    }
    let resized = resize_pillow13(img, rw, rh, Resample::Bicubic);
    if (rw, rh) == (tw, th) {
        return Ok(resized);
    }
    let mut out = RgbImage::from_pixel(tw as u32, th as u32, image::Rgb(color));
    let (x, y) = if rw != tw {
        (((tw - rw) as f64 * 0.5).round_ties_even() as i64, 0)
    } else {
        (0, ((th - rh) as f64 * 0.5).round_ties_even() as i64)
    };
    image::imageops::replace(&mut out, &resized, x, y);
    Ok(out)
}

/// One image's tiles (`bytes`: the global view, then the `[across, down]` local tiles row by
/// row, each `[3, s, s]`) as one image `[3, (1 + down)·s, across·s]`: a top band of one tile
/// row holding the global view in its first tile (the rest zero), over the local canvas as it
/// was cut. This is how a DeepSeek-VL2 image travels as [`PixelValues`]: the tiling is its
/// shape ([`DeepseekVl2Config::tiling_of`]).
pub fn band(
    bytes: &[u8],
    [across, down]: [usize; 2],
    s: usize,
    lut: &[[f32; 256]; 3],
) -> PixelValues {
    let (h, w) = ((1 + down) * s, across * s);
    let mut data = vec![0f32; 3 * h * w];
    let per_tile = 3 * s * s;
    let tiles = std::iter::once((0, 0))
        .chain((1..=down).flat_map(|ty| (0..across).map(move |tx| (ty, tx))));
    for (k, (ty, tx)) in tiles.enumerate() {
        let tile = &bytes[k * per_tile..(k + 1) * per_tile];
        for c in 0..3 {
            for y in 0..s {
                let src = &tile[(c * s + y) * s..(c * s + y + 1) * s];
                let at = c * h * w + (ty * s + y) * w + tx * s;
                for (d, &b) in data[at..at + s].iter_mut().zip(src) {
                    *d = lut[c][b as usize];
                }
            }
        }
    }
    PixelValues {
        data,
        height: h,
        width: w,
    }
}

/// The processor's image half: how an image becomes its global view and local tiles.
#[derive(Debug, Clone, PartialEq)]
pub struct Tiler {
    /// `(width, height)`: the authors read `candidate_resolutions` pairs in that order.
    pub candidate_resolutions: Vec<(usize, usize)>,
    /// Tile side: the first candidate's first value, as the authors take it.
    pub image_size: usize,
    pub image_mean: [f64; 3],
    pub image_std: [f64; 3],
}

impl Tiler {
    /// The model config's tiling with the authors' defaults (mean and std 0.5); the first
    /// candidate resolution is the tower's tile size.
    pub fn new(c: &DeepseekVl2Config) -> Result<Self> {
        let image_size = c.candidate_resolutions[0].0;
        if image_size != c.vision.image_size {
            return Err(Error::argument(
                "candidate_resolutions",
                format!(
                    "the first resolution gives tiles of {image_size} pixels, but the tower takes \
                     vision_config.image_size = {}",
                    c.vision.image_size
                ),
            ));
        }
        let t = Tiler {
            candidate_resolutions: c.candidate_resolutions.clone(),
            image_size,
            image_mean: [0.5; 3],
            image_std: [0.5; 3],
        };
        t.check_resolutions()
            .map_err(|e| Error::argument("candidate_resolutions", e))?;
        Ok(t)
    }

    /// The tiling of a checkpoint directory: the model config's, then what its
    /// `processor_config.json` sets (`candidate_resolutions`, `image_mean`, `image_std`,
    /// `normalize`, `image_token`; `patch_size` and `downsample_ratio` must agree with the
    /// model, `sft_format` must be `deepseek`), the authors' defaults where it is silent or
    /// absent.
    pub fn from_dir(dir: &Path, c: &DeepseekVl2Config, tokenizer: &Tokenizer) -> Result<Self> {
        let mut p = Self::new(c)?;
        let path = dir.join("processor_config.json");
        if !path.is_file() {
            return Ok(p);
        }
        let (value, path) = read_config(&path)?;
        let f = Fields::root(&value, &path)?;
        if f.get("candidate_resolutions").is_some() {
            p.candidate_resolutions = parse_resolutions(&f)?;
            p.check_resolutions()
                .map_err(|e| f.err("candidate_resolutions", e))?;
        }
        for (field, want) in [
            ("patch_size", c.vision.patch_size),
            ("downsample_ratio", c.projector.downsample_ratio),
        ] {
            let got = f.usize(field, want)?;
            if got != want {
                return Err(f.err(
                    field,
                    format!("{got}, but the model's config.json implies {want}"),
                ));
            }
        }
        let triple = |field: &str, default: [f64; 3]| -> Result<[f64; 3]> {
            match f.get(field) {
                None => Ok(default),
                Some(Value::Array(a)) if a.len() == 3 && a.iter().all(Value::is_number) => {
                    Ok(std::array::from_fn(|i| a[i].as_f64().expect("checked")))
                }
                Some(v) => Err(f.err(field, format!("expected 3 numbers, found {v}"))),
            }
        };
        p.image_mean = triple("image_mean", p.image_mean)?;
        p.image_std = triple("image_std", p.image_std)?;
        if let Some(i) = p.image_std.iter().position(|&s| s <= 0.0) {
            return Err(f.err("image_std", format!("entry {i} must be positive")));
        }
        if !f.bool("normalize", true)? {
            (p.image_mean, p.image_std) = ([0.0; 3], [1.0; 3]);
        }
        if let Some(token) = f.opt_str("image_token")? {
            let id = tokenizer.token_to_id(&token).ok_or_else(|| {
                f.err("image_token", format!("`{token}` is not in the tokenizer"))
            })?;
            if id != IMAGE_TOKEN_ID {
                return Err(f.err(
                    "image_token",
                    format!(
                        "`{token}` is id {id}; the model reads images at `{IMAGE_TOKEN}`'s id \
                         {IMAGE_TOKEN_ID}"
                    ),
                ));
            }
        }
        match f.opt_str("sft_format")?.as_deref() {
            None | Some("deepseek") => Ok(p),
            Some(other) => Err(f.err(
                "sft_format",
                format!("`{other}` is not supported (expected `deepseek`)"),
            )),
        }
    }

    /// Every candidate is whole tiles of `image_size`.
    fn check_resolutions(&self) -> std::result::Result<(), String> {
        let s = self.image_size;
        match self
            .candidate_resolutions
            .iter()
            .find(|&&(w, h)| !w.is_multiple_of(s) || !h.is_multiple_of(s))
        {
            Some(&(w, h)) => Err(format!(
                "[{w}, {h}] is not a whole number of {s}-pixel tiles"
            )),
            None => Ok(()),
        }
    }

    /// One image as the model takes it (the band layout of [`band`]), tiled as in a
    /// conversation of at most two images (`cropping`) or more.
    pub fn pixels(&self, img: &RgbImage, cropping: bool) -> Result<PixelValues> {
        let mut out = self.empty();
        let tiling = self.tile(img, cropping, &mut out)?;
        Ok(band(
            &out.pixel_bytes,
            tiling.tiles,
            self.image_size,
            &out.lut,
        ))
    }

    /// The padding colour: `int(mean · 255)` per channel.
    pub fn pad_color(&self) -> [u8; 3] {
        self.image_mean.map(|m| (m * 255.0) as u8)
    }

    /// Nothing processed yet.
    fn empty(&self) -> Prepared {
        Prepared {
            input_ids: Vec::new(),
            images_seq_mask: Vec::new(),
            pixel_bytes: Vec::new(),
            tiles: 0,
            tile_size: self.image_size,
            images_spatial_crop: Vec::new(),
            num_image_tokens: Vec::new(),
            tilings: Vec::new(),
            lut: std::array::from_fn(|c| {
                let (mean, std) = (self.image_mean[c] as f32, self.image_std[c] as f32);
                std::array::from_fn(|b| (b as f32 / 255.0 - mean) / std)
            }),
        }
    }

    /// The global view and the local tiles of one image, appended to `out`'s bytes.
    fn tile(&self, img: &RgbImage, cropping: bool, out: &mut Prepared) -> Result<Tiling> {
        let s = self.image_size;
        let (w, h) = (img.width() as usize, img.height() as usize);
        if w == 0 || h == 0 {
            return Err(Error::argument("image", "an image has no pixels"));
        }
        let best_wh = if cropping {
            best_resolution((w, h), &self.candidate_resolutions)
        } else {
            (s, s)
        };
        let color = self.pad_color();
        let global = pad_to(img, (s, s), color)?;
        push_tile(&global, (0, 0), s, &mut out.pixel_bytes);
        let local = pad_to(img, best_wh, color)?;
        let (across, down) = (best_wh.0 / s, best_wh.1 / s);
        for ty in 0..down {
            for tx in 0..across {
                push_tile(&local, (tx * s, ty * s), s, &mut out.pixel_bytes);
            }
        }
        out.tiles += 1 + across * down;
        Ok(Tiling {
            best_wh,
            tiles: [across, down],
        })
    }
}

/// `DeepseekVLV2Processor` with its tokenizer.
pub struct Processor {
    pub tokenizer: Tokenizer,
    pub tiler: Tiler,
    pub patch_size: usize,
    pub downsample_ratio: usize,
    pub image_token_id: u32,
    pub bos_id: u32,
    pub eos_id: u32,
}

impl Processor {
    /// The processor of a model config with the authors' defaults (mean and std 0.5, the
    /// tower's patch size, the projector's downsample ratio) and `tokenizer`, which must know
    /// `<image>`.
    pub fn new(c: &DeepseekVl2Config, tokenizer: Tokenizer) -> Result<Self> {
        let tiler = Tiler::new(c)?;
        let image_token_id =
            tokenizer
                .token_to_id(IMAGE_TOKEN)
                .ok_or_else(|| Error::Tokenizer {
                    path: tokenizer.path().to_path_buf(),
                    msg: format!("no `{IMAGE_TOKEN}` token (the DeepSeek-VL2 processor adds it)"),
                })?;
        let l = &c.language;
        let bos_id = l
            .bos_token_id
            .ok_or_else(|| Error::argument("language_config.bos_token_id", "missing"))?;
        let eos_id = *l
            .eos_token_ids
            .first()
            .ok_or_else(|| Error::argument("language_config.eos_token_id", "missing"))?;
        if image_token_id != IMAGE_TOKEN_ID {
            return Err(Error::Tokenizer {
                path: tokenizer.path().to_path_buf(),
                msg: format!(
                    "`{IMAGE_TOKEN}` is id {image_token_id}; DeepSeek-VL2 reads images at id \
                     {IMAGE_TOKEN_ID} (the VL2 processor's tokenizer)"
                ),
            });
        }
        Ok(Processor {
            tokenizer,
            tiler,
            patch_size: c.vision.patch_size,
            downsample_ratio: c.projector.downsample_ratio,
            image_token_id,
            bos_id,
            eos_id,
        })
    }

    /// The processor of a checkpoint directory: [`Processor::new`] with the tiling of
    /// [`Tiler::from_dir`].
    pub fn from_dir(dir: &Path, c: &DeepseekVl2Config, tokenizer: Tokenizer) -> Result<Self> {
        let tiler = Tiler::from_dir(dir, c, &tokenizer)?;
        Ok(Processor {
            tiler,
            ..Self::new(c, tokenizer)?
        })
    }

    /// Feature rows per tile side after the projector: `⌈(size / patch) / ratio⌉`.
    pub fn tokens_per_side(&self) -> usize {
        (self.tiler.image_size / self.patch_size).div_ceil(self.downsample_ratio)
    }

    /// Image tokens of one image tiled `[across, down]`: the global view's rows with their
    /// newlines, the separator, the stitched local grid with a newline per row.
    pub fn image_tokens(&self, [across, down]: [usize; 2]) -> usize {
        let s = self.tokens_per_side();
        s * (s + 1) + 1 + (down * s) * (across * s + 1)
    }

    /// The padding colour: `int(mean · 255)` per channel.
    pub fn pad_color(&self) -> [u8; 3] {
        self.tiler.pad_color()
    }

    /// The string the authors' processor reports as `sft_format` (not what is tokenised: in
    /// multi-turn prompts it has a space after `<|Assistant|>:` that the ids lack).
    pub fn sft_format(&self, messages: &[Message]) -> String {
        let mut out = String::new();
        for (i, m) in messages.iter().enumerate() {
            let text = m.content.trim();
            if text.is_empty() {
                out += &format!("{}:", m.role.tag());
            } else {
                let sep = if i % 2 == 0 { "\n\n" } else { SEP2 };
                out += &format!("{}: {text}{sep}", m.role.tag());
            }
        }
        out.trim().to_string()
    }

    fn encode(&self, text: &str) -> Result<Vec<u32>> {
        self.tokenizer.encode(text, false)
    }

    /// Token ids, image mask and tiles of a conversation whose `images` (in order) fill its
    /// `<image>` placeholders; it must end with an (empty) assistant message, whose EOS is
    /// dropped for generation.
    pub fn process(&self, messages: &[Message], images: &[RgbImage]) -> Result<Prepared> {
        let cropping = images.len() <= 2;
        let mut out = self.tiler.empty();
        out.input_ids.push(self.bos_id);
        out.images_seq_mask.push(false);
        let mut used = 0;
        for (i, m) in messages.iter().enumerate() {
            let text = m.content.trim();
            match m.role {
                Role::User => {
                    let turn = if text.is_empty() {
                        format!("{USER}:{ASSISTANT}:")
                    } else {
                        format!("{USER}: {text}\n\n{ASSISTANT}:")
                    };
                    let n = turn.matches(IMAGE_TOKEN).count();
                    let Some(these) = images.get(used..used + n) else {
                        return Err(Error::argument(
                            "images",
                            format!(
                                "message {i} holds {n} `{IMAGE_TOKEN}` but only {} of the {} \
                                 images are left",
                                images.len() - used,
                                images.len()
                            ),
                        ));
                    };
                    self.tokenize_with_images(&turn, these, cropping, &mut out)?;
                    used += n;
                }
                Role::Assistant => {
                    if text.contains(IMAGE_TOKEN) {
                        return Err(Error::argument(
                            "messages",
                            format!("message {i}: an assistant reply cannot hold `{IMAGE_TOKEN}`"),
                        ));
                    }
                    let ids = self.encode(text)?;
                    out.images_seq_mask
                        .extend(std::iter::repeat_n(false, ids.len() + 1));
                    out.input_ids.extend(ids);
                    out.input_ids.push(self.eos_id);
                }
            }
        }
        if used != images.len() {
            return Err(Error::argument(
                "images",
                format!(
                    "{} images for {used} `{IMAGE_TOKEN}` placeholders",
                    images.len()
                ),
            ));
        }
        if out.input_ids.last() != Some(&self.eos_id) {
            return Err(Error::argument(
                "messages",
                "the conversation must end with an assistant message (empty: the reply to \
                 generate)",
            ));
        }
        out.input_ids.pop();
        out.images_seq_mask.pop();
        if out.images_spatial_crop.is_empty() {
            out.images_spatial_crop.push([0, 0]);
        }
        Ok(out)
    }

    /// One user turn: text pieces around the placeholders, each image as its token run.
    fn tokenize_with_images(
        &self,
        turn: &str,
        images: &[RgbImage],
        cropping: bool,
        out: &mut Prepared,
    ) -> Result<()> {
        let mut pieces = turn.split(IMAGE_TOKEN);
        for img in images {
            let ids = self.encode(pieces.next().unwrap_or_default())?;
            out.images_seq_mask
                .extend(std::iter::repeat_n(false, ids.len()));
            out.input_ids.extend(ids);
            let tiling = self.tiler.tile(img, cropping, out)?;
            let n = self.image_tokens(tiling.tiles);
            out.input_ids
                .extend(std::iter::repeat_n(self.image_token_id, n));
            out.images_seq_mask.extend(std::iter::repeat_n(true, n));
            out.images_spatial_crop.push(tiling.tiles);
            out.num_image_tokens.push(n);
            out.tilings.push(tiling);
        }
        let rest: Vec<&str> = pieces.collect();
        let ids = self.encode(&rest.join(IMAGE_TOKEN))?;
        out.images_seq_mask
            .extend(std::iter::repeat_n(false, ids.len()));
        out.input_ids.extend(ids);
        Ok(())
    }
}

/// The `s×s` square of `img` at `(x0, y0)` as channel-major bytes.
fn push_tile(img: &RgbImage, (x0, y0): (usize, usize), s: usize, out: &mut Vec<u8>) {
    for c in 0..3 {
        for y in 0..s {
            for x in 0..s {
                out.push(img.get_pixel((x0 + x) as u32, (y0 + y) as u32).0[c]);
            }
        }
    }
}
