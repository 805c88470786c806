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
    Exact { height: usize, width: usize },
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
        Ok(ImageProcessor {
            do_convert_rgb: flag("do_convert_rgb", true)?,
            do_resize: flag("do_resize", true)?,
            size,
            resample,
            do_center_crop: flag("do_center_crop", true)?,
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
        })
    }

    /// LLaVA's pad colour: the mean, scaled to 0..255 and truncated as `int(x * 255)` does.
    pub fn pad_color(&self) -> [u8; 3] {
        self.image_mean.map(|m| (m * 255.0) as u8)
    }

    /// Full pipeline on an RGB image; `pad` first expands it to a square of the mean colour.
    pub fn preprocess(&self, img: &RgbImage, pad: bool) -> PixelValues {
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
            };
            img = resize(&img, nw, nh, self.resample);
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
        PixelValues {
            data,
            height: h,
            width: w,
        }
    }

    /// Opens an image file and preprocesses it.
    pub fn preprocess_file(&self, path: &Path, pad: bool) -> Result<PixelValues> {
        Ok(self.preprocess(&load_rgb(path)?, pad))
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
    let img = image::load_from_memory(bytes).map_err(|e| Error::Image {
        path: PathBuf::from(source),
        msg: format!("not a readable image: {e}"),
    })?;
    Ok(img.to_rgb8())
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

/// Per output pixel: first input index and fixed-point weights (Pillow's `precompute_coeffs`
/// followed by `normalize_coeffs_8bpc`).
fn coefficients(in_size: usize, out_size: usize, resample: Resample) -> Vec<(usize, Vec<i32>)> {
    let scale = in_size as f64 / out_size as f64;
    let filterscale = scale.max(1.0);
    let sup = support(resample) * filterscale;
    let ss = 1.0 / filterscale;
    (0..out_size)
        .map(|xx| {
            let center = (xx as f64 + 0.5) * scale;
            let xmin = ((center - sup + 0.5) as i64).max(0) as usize;
            let xmax = ((center + sup + 0.5) as i64).min(in_size as i64) as usize;
            let w: Vec<f64> = (xmin..xmax)
                .map(|x| filter(resample, (x as f64 - center + 0.5) * ss))
                .collect();
            let total: f64 = w.iter().sum();
            let k = w
                .iter()
                .map(|&v| {
                    let v = if total != 0.0 { v / total } else { v };
                    let f = v * (1u32 << PRECISION_BITS) as f64;
                    (if f < 0.0 { f - 0.5 } else { f + 0.5 }) as i32
                })
                .collect();
            (xmin, k)
        })
        .collect()
}

fn clip8(v: i64) -> u8 {
    (v >> PRECISION_BITS).clamp(0, 255) as u8
}

/// `Image.resize((w, h), resample)`: horizontal pass then vertical pass, each rounded to 8 bits.
fn resize(img: &RgbImage, out_w: usize, out_h: usize, resample: Resample) -> RgbImage {
    let (in_w, in_h) = (img.width() as usize, img.height() as usize);
    let mut cur = img.clone();
    if out_w != in_w {
        let coeffs = coefficients(in_w, out_w, resample);
        let mut out = RgbImage::new(out_w as u32, in_h as u32);
        for y in 0..in_h {
            for (xx, (xmin, k)) in coeffs.iter().enumerate() {
                let mut acc = [1i64 << (PRECISION_BITS - 1); 3];
                for (i, &w) in k.iter().enumerate() {
                    let p = cur.get_pixel((xmin + i) as u32, y as u32).0;
                    for c in 0..3 {
                        acc[c] += p[c] as i64 * w as i64;
                    }
                }
                out.put_pixel(xx as u32, y as u32, image::Rgb(acc.map(clip8)));
            }
        }
        cur = out;
    }
    if out_h != in_h {
        let coeffs = coefficients(in_h, out_h, resample);
        let w = cur.width() as usize;
        let mut out = RgbImage::new(w as u32, out_h as u32);
        for (yy, (ymin, k)) in coeffs.iter().enumerate() {
            for x in 0..w {
                let mut acc = [1i64 << (PRECISION_BITS - 1); 3];
                for (i, &wt) in k.iter().enumerate() {
                    let p = cur.get_pixel(x as u32, (ymin + i) as u32).0;
                    for c in 0..3 {
                        acc[c] += p[c] as i64 * wt as i64;
                    }
                }
                out.put_pixel(x as u32, yy as u32, image::Rgb(acc.map(clip8)));
            }
        }
        cur = out;
    }
    cur
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shortest_edge_keeps_aspect_and_truncates() {
        assert_eq!(shortest_edge_size(480, 640, 336), (336, 448));
        assert_eq!(shortest_edge_size(333, 500, 224), (224, 336));
        assert_eq!(shortest_edge_size(500, 333, 224), (336, 224));
    }

    #[test]
    fn resize_to_same_size_is_identity_and_weights_sum_to_one() {
        let img = RgbImage::from_fn(7, 5, |x, y| image::Rgb([(x * 30) as u8, (y * 40) as u8, 9]));
        assert_eq!(resize(&img, 7, 5, Resample::Bicubic), img);
        for (_, k) in coefficients(100, 37, Resample::Bicubic) {
            let s: i64 = k.iter().map(|&v| v as i64).sum();
            assert!((s - (1 << PRECISION_BITS)).abs() <= k.len() as i64, "{s}");
        }
    }
}
