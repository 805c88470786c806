//! ggml tensor types and their dequantisation to f32, in the arithmetic order of ggml's
//! `dequantize_row_*` and gguf-py's `quants.py` (so the values are theirs bit for bit): plain
//! loops over fixed-size blocks that the compiler vectorises, split across threads for large
//! tensors.

use half::{bf16, f16};

/// A ggml tensor type, by its id in the GGUF file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct GgmlType(pub u32);

impl GgmlType {
    pub const F32: Self = Self(0);
    pub const F16: Self = Self(1);
    pub const Q4_0: Self = Self(2);
    pub const Q4_1: Self = Self(3);
    pub const Q8_0: Self = Self(8);
    pub const Q4_K: Self = Self(12);
    pub const Q5_K: Self = Self(13);
    pub const Q6_K: Self = Self(14);
    pub const BF16: Self = Self(30);

    /// The types this module dequantises.
    pub const SUPPORTED: [Self; 9] = [
        Self::F32,
        Self::F16,
        Self::BF16,
        Self::Q8_0,
        Self::Q4_0,
        Self::Q4_1,
        Self::Q4_K,
        Self::Q5_K,
        Self::Q6_K,
    ];

    pub fn from_id(id: u32) -> Self {
        Self(id)
    }

    /// ggml's name of the type (`Q4_K`), or `type N` for an id it does not know.
    pub fn name(self) -> String {
        const NAMES: [&str; 40] = [
            "F32",
            "F16",
            "Q4_0",
            "Q4_1",
            "Q4_2",
            "Q4_3",
            "Q5_0",
            "Q5_1",
            "Q8_0",
            "Q8_1",
            "Q2_K",
            "Q3_K",
            "Q4_K",
            "Q5_K",
            "Q6_K",
            "Q8_K",
            "IQ2_XXS",
            "IQ2_XS",
            "IQ3_XXS",
            "IQ1_S",
            "IQ4_NL",
            "IQ3_S",
            "IQ2_S",
            "IQ4_XS",
            "I8",
            "I16",
            "I32",
            "I64",
            "F64",
            "IQ1_M",
            "BF16",
            "Q4_0_4_4",
            "Q4_0_4_8",
            "Q4_0_8_8",
            "TQ1_0",
            "TQ2_0",
            "IQ4_NL_4_4",
            "IQ4_NL_4_8",
            "IQ4_NL_8_8",
            "MXFP4",
        ];
        NAMES
            .get(self.0 as usize)
            .map_or_else(|| format!("type {}", self.0), |n| n.to_string())
    }

    /// (elements, bytes) of one block, for the types whose layout is known (also some that are
    /// not dequantised, so that their extent in the file can still be checked).
    pub fn block(self) -> Option<(usize, usize)> {
        Some(match self.0 {
            0 => (1, 4),
            1 | 30 => (1, 2),
            2 => (32, 18),
            3 => (32, 20),
            6 => (32, 22),
            7 => (32, 24),
            8 => (32, 34),
            9 => (32, 36),
            10 => (256, 84),
            11 => (256, 110),
            12 => (256, 144),
            13 => (256, 176),
            14 => (256, 210),
            15 => (256, 292),
            24 => (1, 1),
            25 => (1, 2),
            26 => (1, 4),
            27 | 28 => (1, 8),
            _ => return None,
        })
    }

    pub fn is_supported(self) -> bool {
        Self::SUPPORTED.contains(&self)
    }
}

/// Below this many elements a tensor is dequantised on the calling thread.
const PARALLEL_MIN: usize = 1 << 20;

/// Dequantises `bytes` (whole blocks of `ty`) into `out`, which must hold exactly their
/// elements. The error says why in words (the caller names the file and tensor).
pub fn dequantize(ty: GgmlType, bytes: &[u8], out: &mut [f32]) -> Result<(), String> {
    let kernel: fn(&[u8], &mut [f32]) = match ty {
        GgmlType::F32 => f32s,
        GgmlType::F16 => f16s,
        GgmlType::BF16 => bf16s,
        GgmlType::Q8_0 => q8_0,
        GgmlType::Q4_0 => q4_0,
        GgmlType::Q4_1 => q4_1,
        GgmlType::Q4_K => q4_k,
        GgmlType::Q5_K => q5_k,
        GgmlType::Q6_K => q6_k,
        other => {
            let names: Vec<String> = GgmlType::SUPPORTED.iter().map(|t| t.name()).collect();
            return Err(format!(
                "ggml type {} ({}) is not supported (supported: {})",
                other.name(),
                other.0,
                names.join(", ")
            ));
        }
    };
    let (elems, block_bytes) = ty.block().expect("supported types have a block layout");
    if !bytes.len().is_multiple_of(block_bytes) || bytes.len() / block_bytes * elems != out.len() {
        return Err(format!(
            "{} bytes of {} do not hold the {} elements of its shape",
            bytes.len(),
            ty.name(),
            out.len()
        ));
    }
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    if out.len() < PARALLEL_MIN || threads == 1 {
        kernel(bytes, out);
        return Ok(());
    }
    // Whole blocks per thread.
    let blocks = out.len() / elems;
    let per = blocks.div_ceil(threads);
    std::thread::scope(|s| {
        for (b, y) in bytes
            .chunks(per * block_bytes)
            .zip(out.chunks_mut(per * elems))
        {
            s.spawn(move || kernel(b, y));
        }
    });
    Ok(())
}

fn half_at(b: &[u8], i: usize) -> f32 {
    f16::from_le_bytes([b[i], b[i + 1]]).to_f32()
}

fn f32s(b: &[u8], y: &mut [f32]) {
    for (y, b) in y.iter_mut().zip(b.chunks_exact(4)) {
        *y = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
    }
}

fn f16s(b: &[u8], y: &mut [f32]) {
    for (y, b) in y.iter_mut().zip(b.chunks_exact(2)) {
        *y = f16::from_le_bytes([b[0], b[1]]).to_f32();
    }
}

fn bf16s(b: &[u8], y: &mut [f32]) {
    for (y, b) in y.iter_mut().zip(b.chunks_exact(2)) {
        *y = bf16::from_le_bytes([b[0], b[1]]).to_f32();
    }
}

/// f16 d, 32 × i8: d·q.
fn q8_0(b: &[u8], y: &mut [f32]) {
    for (b, y) in b.chunks_exact(34).zip(y.chunks_exact_mut(32)) {
        let d = half_at(b, 0);
        for (y, &q) in y.iter_mut().zip(&b[2..34]) {
            *y = d * f32::from(q as i8);
        }
    }
}

/// f16 d, 16 bytes of nibbles (low: elements 0..16, high: 16..32): d·(q − 8).
fn q4_0(b: &[u8], y: &mut [f32]) {
    for (b, y) in b.chunks_exact(18).zip(y.chunks_exact_mut(32)) {
        let d = half_at(b, 0);
        let (lo, hi) = y.split_at_mut(16);
        for ((lo, hi), &q) in lo.iter_mut().zip(hi).zip(&b[2..18]) {
            *lo = d * f32::from((q & 0x0F) as i8 - 8);
            *hi = d * f32::from((q >> 4) as i8 - 8);
        }
    }
}

/// f16 d, f16 m, nibbles as Q4_0: d·q + m.
fn q4_1(b: &[u8], y: &mut [f32]) {
    for (b, y) in b.chunks_exact(20).zip(y.chunks_exact_mut(32)) {
        let (d, m) = (half_at(b, 0), half_at(b, 2));
        let (lo, hi) = y.split_at_mut(16);
        for ((lo, hi), &q) in lo.iter_mut().zip(hi).zip(&b[4..20]) {
            *lo = d * f32::from(q & 0x0F) + m;
            *hi = d * f32::from(q >> 4) + m;
        }
    }
}

/// The 6-bit scale and min of sub-block `j` (of 8) from a K-quant's 12 packed bytes
/// (ggml's `get_scale_min_k4`).
fn scale_min_k4(j: usize, s: &[u8]) -> (u8, u8) {
    if j < 4 {
        (s[j] & 63, s[j + 4] & 63)
    } else {
        (
            (s[j + 4] & 0x0F) | ((s[j - 4] >> 6) << 4),
            (s[j + 4] >> 4) | ((s[j] >> 6) << 4),
        )
    }
}

/// Q4_K super-block (256 elements, 144 bytes): f16 d, f16 dmin, 12 bytes of scales and mins,
/// 128 bytes of nibbles; per 64 elements 32 bytes, low nibbles first:
/// (d·scale)·q − (dmin·min).
fn q4_k(b: &[u8], y: &mut [f32]) {
    for (b, y) in b.chunks_exact(144).zip(y.chunks_exact_mut(256)) {
        let (d, dmin) = (half_at(b, 0), half_at(b, 2));
        let scales = &b[4..16];
        for (c, (qs, y)) in b[16..144]
            .chunks_exact(32)
            .zip(y.chunks_exact_mut(64))
            .enumerate()
        {
            let (s1, m1) = scale_min_k4(2 * c, scales);
            let (s2, m2) = scale_min_k4(2 * c + 1, scales);
            let (d1, m1) = (d * f32::from(s1), dmin * f32::from(m1));
            let (d2, m2) = (d * f32::from(s2), dmin * f32::from(m2));
            let (lo, hi) = y.split_at_mut(32);
            for ((lo, hi), &q) in lo.iter_mut().zip(hi).zip(qs) {
                *lo = d1 * f32::from(q & 0x0F) - m1;
                *hi = d2 * f32::from(q >> 4) - m2;
            }
        }
    }
}

/// Q5_K super-block (256 elements, 176 bytes): as Q4_K with a fifth bit per element in 32
/// bytes `qh` (bit i for sub-block i) before the nibbles.
fn q5_k(b: &[u8], y: &mut [f32]) {
    for (b, y) in b.chunks_exact(176).zip(y.chunks_exact_mut(256)) {
        let (d, dmin) = (half_at(b, 0), half_at(b, 2));
        let scales = &b[4..16];
        let qh = &b[16..48];
        for (c, (qs, y)) in b[48..176]
            .chunks_exact(32)
            .zip(y.chunks_exact_mut(64))
            .enumerate()
        {
            let (s1, m1) = scale_min_k4(2 * c, scales);
            let (s2, m2) = scale_min_k4(2 * c + 1, scales);
            let (d1, m1) = (d * f32::from(s1), dmin * f32::from(m1));
            let (d2, m2) = (d * f32::from(s2), dmin * f32::from(m2));
            let (lo, hi) = y.split_at_mut(32);
            for (((lo, hi), &q), &h) in lo.iter_mut().zip(hi).zip(qs).zip(qh) {
                let h_lo = ((h >> (2 * c)) & 1) << 4;
                let h_hi = ((h >> (2 * c + 1)) & 1) << 4;
                *lo = d1 * f32::from((q & 0x0F) | h_lo) - m1;
                *hi = d2 * f32::from((q >> 4) | h_hi) - m2;
            }
        }
    }
}

/// Q6_K super-block (256 elements, 210 bytes): 128 bytes of low nibbles, 64 bytes of high bit
/// pairs, 16 i8 scales (one per 16 elements), f16 d: (d·scale)·(q − 32). Per 128 elements: 64
/// bytes of `ql` (elements l and l + 64 from byte l, l + 32 and l + 96 from byte l + 32) and 32
/// of `qh` (bits 0-1, 2-3, 4-5, 6-7 for the four runs of 32).
fn q6_k(b: &[u8], y: &mut [f32]) {
    for (b, y) in b.chunks_exact(210).zip(y.chunks_exact_mut(256)) {
        let d = half_at(b, 208);
        for h in 0..2 {
            let ql = &b[64 * h..64 * h + 64];
            let qh = &b[128 + 32 * h..128 + 32 * h + 32];
            let sc = &b[192 + 8 * h..192 + 8 * h + 8];
            let y = &mut y[128 * h..128 * h + 128];
            // Run r (32 elements) holds sub-blocks 2r and 2r + 1 of 16.
            let ds: [f32; 8] = std::array::from_fn(|i| d * f32::from(sc[i] as i8));
            for l in 0..32 {
                let is = l / 16;
                let q1 = ((ql[l] & 0x0F) | ((qh[l] & 3) << 4)) as i8 - 32;
                let q2 = ((ql[l + 32] & 0x0F) | (((qh[l] >> 2) & 3) << 4)) as i8 - 32;
                let q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i8 - 32;
                let q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i8 - 32;
                y[l] = ds[is] * f32::from(q1);
                y[l + 32] = ds[is + 2] * f32::from(q2);
                y[l + 64] = ds[is + 4] * f32::from(q3);
                y[l + 96] = ds[is + 6] * f32::from(q4);
            }
        }
    }
}
