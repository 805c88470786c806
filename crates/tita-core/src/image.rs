//! Image preprocessing as `CLIPImageProcessor` (PIL flavour) does it, driven by
//! `preprocessor_config.json`: RGB conversion, shortest-edge resize with Pillow's bicubic
//! resampling (same fixed-point arithmetic, so results match to the 8-bit level), center crop,
//! rescale, normalise. LLaVA-1.5's `--pad` (expand to square with the mean colour) is optional.

use std::path::{Path, PathBuf};

use image::RgbImage;
use serde_json::Value;

use crate::error::{read_json, Error, Result};

const OPENAI_CLIP_MEAN: [f64; 3] = [0.48145466, 0.4578275, 0.40821073];
const OPENAI_CLIP_STD: [f64; 3] = [0.26862954, 0.26130258, 0.27577711];

/// Target of the resize step.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ResizeTo {
    ShortestEdge(usize),
    Exact {
        height: usize,
        width: usize,
    },
    /// Qwen2-VL's `smart_resize`: both sides rounded to multiples of `factor`, the area kept
    /// within `min_pixels..=max_pixels`, the aspect ratio nearly kept.
    Smart {
        factor: usize,
        min_pixels: usize,
        max_pixels: usize,
    },
}

/// How Qwen2-VL cuts a resized image into the vision tower's input patches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PatchLayout {
    pub patch_size: usize,
    pub temporal_patch_size: usize,
    pub merge_size: usize,
}

impl PatchLayout {
    /// `[grid_t, grid_h, grid_w]` in patches of a still `height`×`width` image, whose sides
    /// must be whole merged patches (what `smart_resize` makes).
    pub fn grid(&self, height: usize, width: usize) -> Result<[usize; 3]> {
        let cell = self.patch_size * self.merge_size;
        if height == 0 || width == 0 || !height.is_multiple_of(cell) || !width.is_multiple_of(cell)
        {
            return Err(Error::argument(
                "image",
                format!(
                    "{width}x{height} pixels cannot be cut into {}-pixel patches merged {m}x{m}",
                    self.patch_size,
                    m = self.merge_size
                ),
            ));
        }
        Ok([1, height / self.patch_size, width / self.patch_size])
    }

    /// Image tokens a `[t, h, w]` grid becomes after the merger.
    pub fn tokens(&self, grid: [usize; 3]) -> usize {
        grid.iter().product::<usize>() / self.merge_size.pow(2)
    }
}

/// Pillow resampling filters (`resample` in the config: 2 bilinear, 3 bicubic).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Resample {
    Bilinear,
    Bicubic,
}

/// A preprocessed image: `[channels, height, width]` in row-major order, float32.
#[derive(Debug, Clone, PartialEq)]
pub struct PixelValues {
    pub data: Vec<f32>,
    pub height: usize,
    pub width: usize,
}

/// `CLIPImageProcessor` settings with transformers' defaults for missing fields.
#[derive(Debug, Clone, PartialEq)]
pub struct ImageProcessor {
    pub do_convert_rgb: bool,
    pub do_resize: bool,
    pub size: ResizeTo,
    pub resample: Resample,
    pub do_center_crop: bool,
    pub crop_size: (usize, usize),
    pub do_rescale: bool,
    pub rescale_factor: f64,
    pub do_normalize: bool,
    pub image_mean: [f64; 3],
    pub image_std: [f64; 3],
    /// Whose 8-bit resampling to reproduce.
    pub resizer: Resizer,
    /// Set for Qwen2-VL's processor (`Qwen2VLImageProcessor`): the model cuts the image into
    /// patches of this layout.
    pub patches: Option<PatchLayout>,
}

impl Default for ImageProcessor {
    fn default() -> Self {
        ImageProcessor {
            do_convert_rgb: true,
            do_resize: true,
            size: ResizeTo::ShortestEdge(224),
            resample: Resample::Bicubic,
            do_center_crop: true,
            crop_size: (224, 224),
            do_rescale: true,
            rescale_factor: 1.0 / 255.0,
            do_normalize: true,
            image_mean: OPENAI_CLIP_MEAN,
            image_std: OPENAI_CLIP_STD,
            resizer: Resizer::Pillow,
            patches: None,
        }
    }
}

impl ImageProcessor {
    /// Reads `preprocessor_config.json` (a file, or a checkpoint directory that holds one).
    pub fn from_file(path: &Path) -> Result<Self> {
        let path = if path.is_dir() {
            path.join("preprocessor_config.json")
        } else {
            path.to_path_buf()
        };
        Self::from_value(&read_json(&path)?, &path)
    }

    pub fn from_value(v: &Value, path: &Path) -> Result<Self> {
        let err = |field: &str, msg: &str| Error::config(path, field, msg);
        let d = ImageProcessor::default();
        let flag = |k: &str, def: bool| -> Result<bool> {
            match v.get(k) {
                None | Some(Value::Null) => Ok(def),
                Some(x) => x.as_bool().ok_or_else(|| err(k, "expected true or false")),
            }
        };
        let num = |x: &Value, k: &str| -> Result<usize> {
            x.as_u64()
                .filter(|&n| n > 0)
                .map(|n| n as usize)
                .ok_or_else(|| err(k, "expected a positive integer"))
        };
        let size = match v.get("size") {
            None | Some(Value::Null) => d.size,
            Some(s @ Value::Number(_)) => ResizeTo::ShortestEdge(num(s, "size")?),
            Some(Value::Object(o)) => {
                match (o.get("shortest_edge"), o.get("height"), o.get("width")) {
                    (Some(s), _, _) => ResizeTo::ShortestEdge(num(s, "size.shortest_edge")?),
                    (None, Some(h), Some(w)) => ResizeTo::Exact {
                        height: num(h, "size.height")?,
                        width: num(w, "size.width")?,
                    },
                    _ => {
                        return Err(err(
                            "size",
                            "expected `shortest_edge` or `height` and `width`",
                        ))
                    }
                }
            }
            Some(_) => return Err(err("size", "expected an integer or an object")),
        };
        let crop_size = match v.get("crop_size") {
            None | Some(Value::Null) => d.crop_size,
            Some(s @ Value::Number(_)) => {
                let n = num(s, "crop_size")?;
                (n, n)
            }
            Some(Value::Object(o)) => match (o.get("height"), o.get("width")) {
                (Some(h), Some(w)) => (num(h, "crop_size.height")?, num(w, "crop_size.width")?),
                _ => return Err(err("crop_size", "expected `height` and `width`")),
            },
            Some(_) => return Err(err("crop_size", "expected an integer or an object")),
        };
        let resample = match v.get("resample").and_then(Value::as_u64) {
            None => d.resample,
            Some(3) => Resample::Bicubic,
            Some(2) => Resample::Bilinear,
            Some(other) => {
                return Err(err(
                    "resample",
                    &format!("{other} is not supported (2 = bilinear, 3 = bicubic)"),
                ))
            }
        };
        let triple = |k: &str, def: [f64; 3]| -> Result<[f64; 3]> {
            match v.get(k) {
                None | Some(Value::Null) => Ok(def),
                Some(Value::Array(a)) if a.len() == 3 => {
                    let mut out = [0.0; 3];
                    for (o, x) in out.iter_mut().zip(a) {
                        *o = x.as_f64().ok_or_else(|| err(k, "expected numbers"))?;
                    }
                    Ok(out)
                }
                Some(_) => Err(err(k, "expected a list of three numbers")),
            }
        };
        let image_std = triple("image_std", d.image_std)?;
        if image_std.contains(&0.0) {
            return Err(err("image_std", "must not contain zero"));
        }
        let qwen = v
            .get("image_processor_type")
            .and_then(Value::as_str)
            .is_some_and(|t| t.starts_with("Qwen2VLImageProcessor"))
            || v.get("merge_size").is_some();
        let positive = |k: &str, def: usize| -> Result<usize> {
            match v.get(k) {
                None | Some(Value::Null) => Ok(def),
                Some(x) => num(x, k),
            }
        };
        let (size, patches) = if qwen {
            let layout = PatchLayout {
                patch_size: positive("patch_size", 14)?,
                temporal_patch_size: positive("temporal_patch_size", 2)?,
                merge_size: positive("merge_size", 2)?,
            };
            // Hub files write `min_pixels`/`max_pixels`; transformers 5 writes
            // `size.shortest_edge`/`size.longest_edge` (areas, despite the names).
            let from_size = |k: &str| v.get("size").and_then(|s| s.get(k)).cloned();
            let area = |k: &str, alt: &str, def: usize| -> Result<usize> {
                match v
                    .get(k)
                    .filter(|x| !x.is_null())
                    .cloned()
                    .or(from_size(alt))
                {
                    None => Ok(def),
                    Some(x) => num(&x, k),
                }
            };
            let min_pixels = area("min_pixels", "shortest_edge", 56 * 56)?;
            let max_pixels = area("max_pixels", "longest_edge", 28 * 28 * 1280)?;
            if min_pixels > max_pixels {
                return Err(err(
                    "min_pixels",
                    &format!("{min_pixels} is larger than max_pixels = {max_pixels}"),
                ));
            }
            let factor = layout.patch_size * layout.merge_size;
            (
                ResizeTo::Smart {
                    factor,
                    min_pixels,
                    max_pixels,
                },
                Some(layout),
            )
        } else {
            (size, None)
        };
        Ok(ImageProcessor {
            do_convert_rgb: flag("do_convert_rgb", true)?,
            do_resize: flag("do_resize", true)?,
            size,
            resample,
            do_center_crop: flag("do_center_crop", !qwen)?,
            crop_size,
            do_rescale: flag("do_rescale", true)?,
            rescale_factor: match v.get("rescale_factor") {
                None | Some(Value::Null) => d.rescale_factor,
                Some(x) => x
                    .as_f64()
                    .ok_or_else(|| err("rescale_factor", "expected a number"))?,
            },
            do_normalize: flag("do_normalize", true)?,
            image_mean: triple("image_mean", d.image_mean)?,
            image_std,
            // transformers 5 runs Qwen2-VL's processor on torchvision by default.
            resizer: if qwen {
                Resizer::Torchvision
            } else {
                Resizer::Pillow
            },
            patches,
        })
    }

    /// LLaVA's pad colour: the mean, scaled to 0..255 and truncated as `int(x * 255)` does.
    pub fn pad_color(&self) -> [u8; 3] {
        self.image_mean.map(|m| (m * 255.0) as u8)
    }

    /// Full pipeline on an RGB image; `pad` first expands it to a square of the mean colour.
    pub fn preprocess(&self, img: &RgbImage, pad: bool) -> Result<PixelValues> {
        let mut img = if pad {
            expand_to_square(img, self.pad_color())
        } else {
            img.clone()
        };
        if self.do_resize {
            let (w, h) = (img.width() as usize, img.height() as usize);
            let (nh, nw) = match self.size {
                ResizeTo::Exact { height, width } => (height, width),
                ResizeTo::ShortestEdge(s) => shortest_edge_size(h, w, s),
                ResizeTo::Smart {
                    factor,
                    min_pixels,
                    max_pixels,
                } => smart_resize(h, w, factor, min_pixels, max_pixels)?,
            };
            img = resize(&img, nw, nh, self.resample, self.resizer);
        }
        if self.do_center_crop {
            img = center_crop(&img, self.crop_size.0, self.crop_size.1);
        }
        let (w, h) = (img.width() as usize, img.height() as usize);
        let mut data = vec![0f32; 3 * h * w];
        for (x, y, px) in img.enumerate_pixels() {
            for c in 0..3 {
                let mut v = px.0[c] as f32;
                if self.do_rescale {
                    v = (px.0[c] as f64 * self.rescale_factor) as f32;
                }
                if self.do_normalize {
                    v = (v - self.image_mean[c] as f32) / self.image_std[c] as f32;
                }
                data[c * h * w + y as usize * w + x as usize] = v;
            }
        }
        Ok(PixelValues {
            data,
            height: h,
            width: w,
        })
    }

    /// Opens an image file and preprocesses it.
    pub fn preprocess_file(&self, path: &Path, pad: bool) -> Result<PixelValues> {
        self.preprocess(&load_rgb(path)?, pad)
    }
}

/// Opens an image and converts it to RGB the way PIL's `convert("RGB")` does (alpha dropped,
/// grey replicated). JPEGs go through libjpeg-turbo for Pillow's exact pixels ([`crate::jpeg`]).
pub fn load_rgb(path: &Path) -> Result<RgbImage> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    decode_rgb(&bytes, path)
}

/// [`load_rgb`] on an image already in memory; `source` names it in errors.
pub fn decode_rgb(bytes: &[u8], source: &Path) -> Result<RgbImage> {
    if crate::jpeg::is_jpeg(bytes) {
        return crate::jpeg::decode_rgb(bytes, source);
    }
    let img = image::load_from_memory(bytes).map_err(|e| {
        let msg = match (&e, dimensions(bytes)) {
            (image::ImageError::Limits(_), Some((w, h))) => format!(
                "{w}×{h} pixels is too large to decode (over the decoder's 512 MiB memory limit); downscale it"
            ),
            _ => format!("not a readable image: {e}"),
        };
        Error::Image {
            path: PathBuf::from(source),
            msg,
        }
    })?;
    Ok(to_rgb8_as_pillow(img))
}

/// An encoded image's width and height from its header, if it has a readable one.
fn dimensions(bytes: &[u8]) -> Option<(u32, u32)> {
    image::ImageReader::new(std::io::Cursor::new(bytes))
        .with_guessed_format()
        .ok()?
        .into_dimensions()
        .ok()
}

/// `convert("RGB")` as Pillow does it for 16-bit images, where it does not scale: it opens
/// 16-bit grey as mode `I;16` and clips it to 255, and keeps the high byte of every 16-bit
/// colour or grey-alpha sample. Everything else converts as usual.
fn to_rgb8_as_pillow(img: image::DynamicImage) -> RgbImage {
    use image::DynamicImage as D;
    let (w, h) = (img.width(), img.height());
    let grey = |v: u8| image::Rgb([v, v, v]);
    match img {
        D::ImageLuma16(b) => {
            RgbImage::from_fn(w, h, |x, y| grey(b.get_pixel(x, y)[0].min(255) as u8))
        }
        D::ImageLumaA16(b) => {
            RgbImage::from_fn(w, h, |x, y| grey((b.get_pixel(x, y)[0] >> 8) as u8))
        }
        D::ImageRgb16(b) => RgbImage::from_fn(w, h, |x, y| {
            image::Rgb(b.get_pixel(x, y).0.map(|v| (v >> 8) as u8))
        }),
        D::ImageRgba16(b) => RgbImage::from_fn(w, h, |x, y| {
            let p = b.get_pixel(x, y).0;
            image::Rgb([p[0], p[1], p[2]].map(|v| (v >> 8) as u8))
        }),
        other => other.to_rgb8(),
    }
}

/// transformers' `get_resize_output_image_size(default_to_square=False)`: the short side
/// becomes `size`, the long side keeps the aspect ratio, truncated. Returns (height, width).
fn shortest_edge_size(h: usize, w: usize, size: usize) -> (usize, usize) {
    let (short, long) = if w <= h { (w, h) } else { (h, w) };
    let new_long = (size as f64 * long as f64 / short as f64) as usize;
    if w <= h {
        (new_long, size)
    } else {
        (size, new_long)
    }
}

/// Qwen2-VL's `smart_resize` (Python's round-half-to-even included): the (height, width) a
/// `h`×`w` image is resized to.
pub fn smart_resize(
    h: usize,
    w: usize,
    factor: usize,
    min_pixels: usize,
    max_pixels: usize,
) -> Result<(usize, usize)> {
    if h == 0 || w == 0 || h.max(w) as f64 / h.min(w) as f64 > 200.0 {
        return Err(Error::argument(
            "image",
            format!("{w}x{h}: the aspect ratio must be at most 200 (Qwen2-VL's limit)"),
        ));
    }
    let (hf, wf, f) = (h as f64, w as f64, factor as f64);
    let mut hb = (hf / f).round_ties_even() * f;
    let mut wb = (wf / f).round_ties_even() * f;
    if hb * wb > max_pixels as f64 {
        let beta = (hf * wf / max_pixels as f64).sqrt();
        hb = f.max((hf / beta / f).floor() * f);
        wb = f.max((wf / beta / f).floor() * f);
    } else if hb * wb < min_pixels as f64 {
        let beta = (min_pixels as f64 / (hf * wf)).sqrt();
        hb = (hf * beta / f).ceil() * f;
        wb = (wf * beta / f).ceil() * f;
    }
    Ok((hb as usize, wb as usize))
}

/// Qwen2-VL's patch flattening of a preprocessed image: the image repeated over the temporal
/// patch, cut into `[grid_t·grid_h·grid_w, C·T·P·P]` rows in merge-block order (row-major over
/// merged cells, then row-major inside each cell). Returns the rows and `[grid_t, grid_h, grid_w]`.
pub fn flatten_patches(
    pixels: &PixelValues,
    layout: PatchLayout,
) -> Result<(Vec<f32>, [usize; 3])> {
    let PatchLayout {
        patch_size: p,
        temporal_patch_size: tp,
        merge_size: m,
    } = layout;
    let (h, w) = (pixels.height, pixels.width);
    let grid = layout.grid(h, w)?;
    let c = pixels.data.len() / (h * w);
    if c * h * w != pixels.data.len() {
        return Err(Error::argument(
            "image",
            format!(
                "{} values are not whole channels of {w}x{h} pixels",
                pixels.data.len()
            ),
        ));
    }
    let (gh, gw) = (h / p, w / p);
    let mut out = Vec::with_capacity(gh * gw * c * tp * p * p);
    for bh in 0..gh / m {
        for bw in 0..gw / m {
            for mh in 0..m {
                for mw in 0..m {
                    let (y0, x0) = ((bh * m + mh) * p, (bw * m + mw) * p);
                    for ch in 0..c {
                        for _t in 0..tp {
                            for y in y0..y0 + p {
                                let row = ch * h * w + y * w;
                                out.extend_from_slice(&pixels.data[row + x0..row + x0 + p]);
                            }
                        }
                    }
                }
            }
        }
    }
    Ok((out, grid))
}

/// LLaVA's `expand2square`: paste onto a square canvas of `color`, centred on the short axis.
pub fn expand_to_square(img: &RgbImage, color: [u8; 3]) -> RgbImage {
    let (w, h) = img.dimensions();
    if w == h {
        return img.clone();
    }
    let s = w.max(h);
    let mut out = RgbImage::from_pixel(s, s, image::Rgb(color));
    let (ox, oy) = if w > h {
        (0, (w - h) / 2)
    } else {
        ((h - w) / 2, 0)
    };
    image::imageops::replace(&mut out, img, ox as i64, oy as i64);
    out
}

/// transformers' `center_crop`, including its zero padding when the crop is larger.
fn center_crop(img: &RgbImage, ch: usize, cw: usize) -> RgbImage {
    let (w, h) = (img.width() as i64, img.height() as i64);
    let (ch, cw) = (ch as i64, cw as i64);
    let nh = h.max(ch);
    let nw = w.max(cw);
    let top_pad = (nh - h + 1) / 2;
    let left_pad = (nw - w + 1) / 2;
    let top = (h - ch).div_euclid(2) + top_pad;
    let left = (w - cw).div_euclid(2) + left_pad;
    let mut out = RgbImage::new(cw as u32, ch as u32);
    for y in 0..ch {
        for x in 0..cw {
            let (sy, sx) = (top + y - top_pad, left + x - left_pad);
            if (0..h).contains(&sy) && (0..w).contains(&sx) {
                out.put_pixel(x as u32, y as u32, *img.get_pixel(sx as u32, sy as u32));
            }
        }
    }
    out
}

// ---- Pillow's resampling (libImaging/Resample.c), 8 bits per channel ----

const PRECISION_BITS: u32 = 32 - 8 - 2;

/// Whose 8-bit resampler to reproduce: the two share the filter and the support, and differ
/// in how the weights are made integers, which moves a pixel by one level now and then.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resizer {
    /// Pillow: 22-bit fixed-point weights (what the PIL image processors use).
    Pillow,
    /// torchvision on uint8 tensors (transformers' default "fast" processors): int16 weights
    /// at the largest precision that keeps the biggest weight below 2^15, as Pillow-SIMD.
    Torchvision,
}

fn filter(resample: Resample, x: f64) -> f64 {
    let x = x.abs();
    match resample {
        Resample::Bilinear => {
            if x < 1.0 {
                1.0 - x
            } else {
                0.0
            }
        }
        Resample::Bicubic => {
            const A: f64 = -0.5;
            if x < 1.0 {
                ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
            } else if x < 2.0 {
                (((x - 5.0) * x + 8.0) * x - 4.0) * A
            } else {
                0.0
            }
        }
    }
}

fn support(resample: Resample) -> f64 {
    match resample {
        Resample::Bilinear => 1.0,
        Resample::Bicubic => 2.0,
    }
}

/// Fixed-point weights of one resampling pass: per output pixel its first input index and
/// weights, and the number of fractional bits.
struct Coefficients {
    taps: Vec<(usize, Vec<i32>)>,
    precision: u32,
}

/// Pillow's `precompute_coeffs` followed by the resizer's conversion to integers.
fn coefficients(in_size: usize, out_size: usize, resample: Resample, by: Resizer) -> Coefficients {
    let scale = in_size as f64 / out_size as f64;
    let filterscale = scale.max(1.0);
    let sup = support(resample) * filterscale;
    let ss = 1.0 / filterscale;
    let normalized: Vec<(usize, Vec<f64>)> = (0..out_size)
        .map(|xx| {
            let center = (xx as f64 + 0.5) * scale;
            let xmin = ((center - sup + 0.5) as i64).max(0) as usize;
            let xmax = ((center + sup + 0.5) as i64).min(in_size as i64) as usize;
            let w: Vec<f64> = (xmin..xmax)
                .map(|x| filter(resample, (x as f64 - center + 0.5) * ss))
                .collect();
            let total: f64 = w.iter().sum();
            let w = w
                .iter()
                .map(|&v| if total != 0.0 { v / total } else { v })
                .collect();
            (xmin, w)
        })
        .collect();
    let precision = match by {
        Resizer::Pillow => PRECISION_BITS,
        Resizer::Torchvision => {
            let max = normalized
                .iter()
                .flat_map(|(_, w)| w.iter().copied())
                .fold(0.0, f64::max);
            (0..22)
                .find(|&p| (0.5 + max * (1u64 << (p + 1)) as f64) as i64 >= 1 << 15)
                .unwrap_or(22)
        }
    };
    let one = (1u64 << precision) as f64;
    let taps = normalized
        .into_iter()
        .map(|(xmin, w)| {
            let k = w
                .iter()
                .map(|&v| {
                    let f = v * one;
                    (if f < 0.0 { f - 0.5 } else { f + 0.5 }) as i32
                })
                .collect();
            (xmin, k)
        })
        .collect();
    Coefficients { taps, precision }
}

/// One pass along x (`horizontal`) or y, each output rounded to 8 bits.
fn resample_pass(img: &RgbImage, out_len: usize, horizontal: bool, c: &Coefficients) -> RgbImage {
    let (w, h) = (img.width(), img.height());
    let (ow, oh) = if horizontal {
        (out_len as u32, h)
    } else {
        (w, out_len as u32)
    };
    // Half of the last unit: the shift below then rounds to nearest.
    let round = match c.precision {
        0 => 0,
        p => 1i64 << (p - 1),
    };
    let clip = |v: i64| (v >> c.precision).clamp(0, 255) as u8;
    RgbImage::from_fn(ow, oh, |x, y| {
        let (first, k) = &c.taps[if horizontal { x } else { y } as usize];
        let mut acc = [round; 3];
        for (i, &wt) in k.iter().enumerate() {
            let at = (first + i) as u32;
            let p = if horizontal {
                img.get_pixel(at, y)
            } else {
                img.get_pixel(x, at)
            }
            .0;
            for ch in 0..3 {
                acc[ch] += p[ch] as i64 * wt as i64;
            }
        }
        image::Rgb(acc.map(clip))
    })
}

/// `Image.resize((w, h), resample)` (or torchvision's uint8 resize with antialias): horizontal
/// pass then vertical pass, each rounded to 8 bits.
pub fn resize(
    img: &RgbImage,
    out_w: usize,
    out_h: usize,
    resample: Resample,
    by: Resizer,
) -> RgbImage {
    let (in_w, in_h) = (img.width() as usize, img.height() as usize);
    let mut cur = img.clone();
    if out_w != in_w {
        cur = resample_pass(&cur, out_w, true, &coefficients(in_w, out_w, resample, by));
    }
    if out_h != in_h {
        cur = resample_pass(&cur, out_h, false, &coefficients(in_h, out_h, resample, by));
    }
    cur
}

/// `Image.resize` as Pillow 13 does it: the same passes, but the vertical one first when the
/// height shrinks by more than twice as many pixels as the width (python-pillow/Pillow#9549;
/// the order moves a pixel by a level or two now and then). DeepSeek-VL2's reference was made
/// with Pillow 13.
pub fn resize_pillow13(img: &RgbImage, out_w: usize, out_h: usize, resample: Resample) -> RgbImage {
    let (in_w, in_h) = (img.width() as usize, img.height() as usize);
    let shrink_h = in_h as i64 - out_h as i64;
    if out_w != in_w && shrink_h > 0 && shrink_h > 2 * (in_w as i64 - out_w as i64) {
        let by = Resizer::Pillow;
        let tall = resample_pass(img, out_h, false, &coefficients(in_h, out_h, resample, by));
        return resample_pass(&tall, out_w, true, &coefficients(in_w, out_w, resample, by));
    }
    resize(img, out_w, out_h, resample, Resizer::Pillow)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A PNG that declares 30000×30000 pixels: the error gives the size and the limit.
    #[test]
    fn images_too_large_to_decode_are_named_with_their_size() {
        fn crc(bytes: &[u8]) -> u32 {
            let mut c = !0u32;
            for &b in bytes {
                c ^= b as u32;
                for _ in 0..8 {
                    c = if c & 1 == 1 {
                        0xEDB8_8320 ^ (c >> 1)
                    } else {
                        c >> 1
                    };
                }
            }
            !c
        }
        let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
        let mut chunk = |kind: &[u8], data: &[u8]| {
            png.extend((data.len() as u32).to_be_bytes());
            let body = [kind, data].concat();
            png.extend(&body);
            png.extend(crc(&body).to_be_bytes());
        };
        let side = 30000u32.to_be_bytes();
        // 8-bit RGB, no interlace.
        chunk(b"IHDR", &[&side[..], &side[..], &[8, 2, 0, 0, 0]].concat());
        chunk(b"IDAT", &[]);
        chunk(b"IEND", &[]);
        let err = decode_rgb(&png, Path::new("huge.png"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("huge.png")
                && err.contains("30000×30000 pixels")
                && err.contains("512 MiB"),
            "{err}"
        );
    }

    /// Pillow 13's `Image.open(png).convert("RGB")` on 16-bit PNGs: grey clipped to 255, colour
    /// and grey-alpha reduced to their high byte.
    #[test]
    fn sixteen_bit_pngs_convert_as_pillow_converts_them() {
        let encode = |img: image::DynamicImage| {
            let mut out = std::io::Cursor::new(Vec::new());
            img.write_to(&mut out, image::ImageFormat::Png).unwrap();
            decode_rgb(out.get_ref(), Path::new("test.png")).unwrap()
        };
        let firsts = |img: &RgbImage| -> Vec<u8> { img.pixels().map(|p| p[0]).collect() };
        let grey: Vec<u16> = vec![0, 100, 255, 256, 1000, 65535];
        let img = image::ImageBuffer::<image::Luma<u16>, _>::from_raw(6, 1, grey).unwrap();
        let rgb = encode(image::DynamicImage::ImageLuma16(img));
        assert_eq!(firsts(&rgb), [0, 100, 255, 255, 255, 255]);
        let vals: [u16; 7] = [0, 100, 255, 256, 1000, 0x80FF, 65535];
        let want = [0, 0, 0, 1, 3, 128, 255];
        let colour: Vec<u16> = vals.iter().flat_map(|&v| [v, v, v]).collect();
        let img = image::ImageBuffer::<image::Rgb<u16>, _>::from_raw(7, 1, colour).unwrap();
        assert_eq!(firsts(&encode(image::DynamicImage::ImageRgb16(img))), want);
        let grey_alpha: Vec<u16> = vals.iter().flat_map(|&v| [v, 65535]).collect();
        let img = image::ImageBuffer::<image::LumaA<u16>, _>::from_raw(7, 1, grey_alpha).unwrap();
        assert_eq!(
            firsts(&encode(image::DynamicImage::ImageLumaA16(img))),
            want
        );
    }

    #[test]
    fn shortest_edge_keeps_aspect_and_truncates() {
        assert_eq!(shortest_edge_size(480, 640, 336), (336, 448));
        assert_eq!(shortest_edge_size(333, 500, 224), (224, 336));
        assert_eq!(shortest_edge_size(500, 333, 224), (336, 224));
    }

    #[test]
    fn smart_resize_rounds_and_bounds_the_area() {
        // The fixture's cases: no resize, and max_pixels shrinking 200x90 to 140x56.
        assert_eq!(smart_resize(84, 112, 28, 3136, 12544).unwrap(), (84, 112));
        assert_eq!(smart_resize(90, 200, 28, 3136, 12544).unwrap(), (56, 140));
        // Half-way rounds to even as Python does: 42/28 = 1.5 -> 2, 70/28 = 2.5 -> 2.
        assert_eq!(smart_resize(42, 70, 28, 0, 1 << 30).unwrap(), (56, 56));
        // Too small grows to min_pixels.
        assert_eq!(smart_resize(20, 20, 28, 3136, 12544).unwrap(), (56, 56));
        assert!(smart_resize(1, 300, 28, 3136, 12544).is_err());
    }

    #[test]
    fn resize_to_same_size_is_identity_and_weights_sum_to_one() {
        let img = RgbImage::from_fn(7, 5, |x, y| image::Rgb([(x * 30) as u8, (y * 40) as u8, 9]));
        for by in [Resizer::Pillow, Resizer::Torchvision] {
            assert_eq!(resize(&img, 7, 5, Resample::Bicubic, by), img);
            let c = coefficients(100, 37, Resample::Bicubic, by);
            for (_, k) in c.taps {
                let s: i64 = k.iter().map(|&v| v as i64).sum();
                assert!((s - (1 << c.precision)).abs() <= k.len() as i64, "{s}");
            }
        }
    }
}
