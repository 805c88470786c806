//! JPEG decoding identical to Pillow's `Image.open(path).convert("RGB")`.
//!
//! Pillow decodes with libjpeg-turbo at its defaults: the accurate integer IDCT (ISLOW), fancy
//! (triangle-filter) chroma upsampling and libjpeg's fixed-point YCbCr->RGB tables. Pure-Rust
//! decoders (zune-jpeg, jpeg-decoder) use other IDCTs and upsampling rounding and differ by up
//! to 4 levels on COCO-style 4:2:0 files, so we link the libjpeg-turbo decoder itself (MozJPEG's
//! copy, built from its vendored C source by `mozjpeg-sys`: no system library, no cmake, no
//! nasm). Its decoder is libjpeg-turbo's, bit-exact with the SIMD paths Pillow's wheels use.
//! On top of libjpeg: Pillow's colour handling (grey replicated; four-channel files read as
//! Adobe-inverted CMYK and converted with Pillow's `cmyk2rgb`). EXIF orientation is not applied,
//! as `CLIPImageProcessor` does not apply it.

use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::path::Path;

use image::RgbImage;
use mozjpeg_sys as ffi;

use crate::error::{Error, Result};

/// Pillow's `MAX_IMAGE_PIXELS * 2`, past which it refuses an image as a decompression bomb.
const MAX_PIXELS: u64 = 2 * 89_478_485;

/// Whether `bytes` start with a JPEG start-of-image marker.
pub fn is_jpeg(bytes: &[u8]) -> bool {
    bytes.starts_with(&[0xFF, 0xD8, 0xFF])
}

/// Decodes a JPEG file's bytes to RGB exactly as Pillow does; `path` names it in errors.
pub fn decode_rgb(bytes: &[u8], path: &Path) -> Result<RgbImage> {
    let err = |msg: String| Error::Image {
        path: path.to_path_buf(),
        msg,
    };
    let mut error_mgr: Box<ffi::jpeg_error_mgr> = Box::new(unsafe { std::mem::zeroed() });
    // SAFETY: the decompress struct is zeroed, given the error manager, then initialised by
    // libjpeg; every libjpeg error unwinds (`C-unwind` ABI, C built with -fexceptions) into
    // `catch_unwind` below, after which `jpeg_destroy_decompress` is still valid.
    let mut cinfo: Box<ffi::jpeg_decompress_struct> = Box::new(unsafe { std::mem::zeroed() });
    unsafe {
        ffi::jpeg_std_error(&mut error_mgr);
        error_mgr.error_exit = Some(error_exit);
        error_mgr.emit_message = Some(emit_message);
        cinfo.common.err = &mut *error_mgr;
        ffi::jpeg_create_decompress(&mut *cinfo);
    }
    let decoded = catch_unwind(AssertUnwindSafe(|| unsafe { decode(&mut cinfo, bytes) }));
    unsafe { ffi::jpeg_destroy_decompress(&mut cinfo) };
    match decoded {
        Ok(Ok(img)) => Ok(img),
        Ok(Err(msg)) => Err(err(msg)),
        Err(payload) => Err(err(match payload.downcast::<String>() {
            Ok(msg) => *msg,
            Err(_) => "the JPEG decoder failed".into(),
        })),
    }
}

unsafe fn decode(
    cinfo: &mut ffi::jpeg_decompress_struct,
    bytes: &[u8],
) -> std::result::Result<RgbImage, String> {
    ffi::jpeg_mem_src(cinfo, bytes.as_ptr(), bytes.len() as _);
    ffi::jpeg_read_header(cinfo, 1);
    let (w, h) = (cinfo.image_width, cinfo.image_height);
    if w as u64 * h as u64 > MAX_PIXELS {
        return Err(format!(
            "{w}x{h} pixels is more than {MAX_PIXELS}, Pillow's decompression-bomb limit"
        ));
    }
    let channels = match (cinfo.num_components, cinfo.jpeg_color_space) {
        (1, _) => {
            cinfo.out_color_space = ffi::JCS_GRAYSCALE;
            1
        }
        (3, _) => {
            cinfo.out_color_space = ffi::JCS_RGB;
            3
        }
        (4, ffi::JCS_CMYK | ffi::JCS_YCCK) => {
            cinfo.out_color_space = ffi::JCS_CMYK;
            4
        }
        (n, space) => {
            return Err(format!(
            "{n} components in colour space {space:?}: expected greyscale, YCbCr/RGB or CMYK/YCCK"
        ))
        }
    };
    // libjpeg's defaults are Pillow's; set them anyway so a changed default cannot slip in.
    cinfo.dct_method = ffi::J_DCT_METHOD::JDCT_ISLOW;
    cinfo.do_fancy_upsampling = 1;
    ffi::jpeg_start_decompress(cinfo);
    let (w, h) = (cinfo.output_width as usize, cinfo.output_height as usize);
    let row_len = w * channels;
    let mut raw = vec![0u8; row_len * h];
    while (cinfo.output_scanline as usize) < h {
        let mut row = raw[cinfo.output_scanline as usize * row_len..].as_mut_ptr();
        if ffi::jpeg_read_scanlines(cinfo, &mut row, 1) == 0 {
            return Err("the JPEG data ended early".into());
        }
    }
    ffi::jpeg_finish_decompress(cinfo);
    let rgb: Vec<u8> = match channels {
        1 => raw.iter().flat_map(|&g| [g, g, g]).collect(),
        3 => raw,
        _ => raw.chunks_exact(4).flat_map(adobe_cmyk_to_rgb).collect(),
    };
    Ok(RgbImage::from_raw(w as u32, h as u32, rgb).expect("buffer sized from the dimensions"))
}

/// Pillow reads four-channel JPEGs as `CMYK;I` (Adobe's inverted convention) and `convert("RGB")`
/// applies `cmyk2rgb`: `nk - c·nk/255` with Pillow's rounded division by 255.
fn adobe_cmyk_to_rgb(px: &[u8]) -> [u8; 3] {
    let [c, m, y, k] = [px[0], px[1], px[2], px[3]].map(|v| 255 - v as i32);
    let nk = 255 - k;
    let muldiv255 = |a: i32, b: i32| {
        let t = a * b + 128;
        ((t >> 8) + t) >> 8
    };
    [c, m, y].map(|v| (nk - muldiv255(v, nk)).clamp(0, 255) as u8)
}

fn message(cinfo: &mut ffi::jpeg_common_struct) -> String {
    let mut buffer = [0u8; 80];
    // SAFETY: `format_message` writes a NUL-terminated string of at most 80 bytes; the binding
    // declares the buffer immutable, so go through a raw pointer.
    unsafe {
        if let Some(format) = (*cinfo.err).format_message {
            format(cinfo, &*(buffer.as_mut_ptr() as *const [u8; 80]));
        }
    }
    let end = buffer.iter().position(|&b| b == 0).unwrap_or(buffer.len());
    String::from_utf8_lossy(&buffer[..end]).into_owned()
}

extern "C-unwind" fn error_exit(cinfo: &mut ffi::jpeg_common_struct) {
    // resume_unwind skips the panic hook: nothing is printed, the error comes back as a value.
    resume_unwind(Box::new(message(cinfo)));
}

/// Warnings are ignored as Pillow ignores them (e.g. extraneous bytes before a marker), except
/// a premature end of data: libjpeg would pad the image with grey, Pillow refuses a truncated file.
extern "C-unwind" fn emit_message(cinfo: &mut ffi::jpeg_common_struct, level: std::os::raw::c_int) {
    // SAFETY: libjpeg passes the struct whose error manager we installed.
    let code = unsafe { (*cinfo.err).msg_code };
    if level < 0 && code == ffi::JWRN_JPEG_EOF {
        resume_unwind(Box::new(format!(
            "the file is truncated ({})",
            message(cinfo)
        )));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cmyk_conversion_matches_pillow_corners() {
        // Stored inverted: 255 means no ink.
        assert_eq!(adobe_cmyk_to_rgb(&[255, 255, 255, 255]), [255, 255, 255]);
        assert_eq!(adobe_cmyk_to_rgb(&[255, 255, 255, 0]), [0, 0, 0]);
        assert_eq!(adobe_cmyk_to_rgb(&[0, 255, 255, 255]), [0, 255, 255]);
    }

    #[test]
    fn broken_data_is_an_error_not_a_panic() {
        let path = Path::new("x.jpg");
        let e = decode_rgb(&[0xFF, 0xD8, 0xFF, 0xE0, 0, 16, 1, 2], path).unwrap_err();
        assert!(e.to_string().starts_with("x.jpg: image:"), "{e}");
    }
}
