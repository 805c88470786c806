//! The GGUF container (llama.cpp's checkpoint file), versions 2 and 3, little-endian: header,
//! metadata key/values of every value type, tensor infos and the aligned data section, read from
//! a memory map. Every read is bounds-checked, so a truncated or corrupt file is an error that
//! says what was being read and at which byte.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use memmap2::Mmap;
use tita_core::{Error, Result};

use super::dequant::{self, GgmlType};

/// `GGUF` as a little-endian u32.
const MAGIC: u32 = 0x4655_4747;
/// Data-section alignment when `general.alignment` is absent.
const DEFAULT_ALIGNMENT: u64 = 32;

/// One metadata value.
#[derive(Debug, Clone, PartialEq)]
pub enum MetaValue {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    F32(f32),
    Bool(bool),
    Str(String),
    Array(Vec<MetaValue>),
    U64(u64),
    I64(i64),
    F64(f64),
}

impl MetaValue {
    /// A non-negative integer of any width.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            MetaValue::U8(v) => Some(v.into()),
            MetaValue::U16(v) => Some(v.into()),
            MetaValue::U32(v) => Some(v.into()),
            MetaValue::U64(v) => Some(v),
            MetaValue::I8(v) => u64::try_from(v).ok(),
            MetaValue::I16(v) => u64::try_from(v).ok(),
            MetaValue::I32(v) => u64::try_from(v).ok(),
            MetaValue::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    /// A number. An f32 is read as its shortest decimal form (`1e-5`, not
    /// `9.999999747378752e-6`), the value the config it was converted from wrote.
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            MetaValue::F32(v) => v.to_string().parse().ok(),
            MetaValue::F64(v) => Some(v),
            MetaValue::I8(v) => Some(v.into()),
            MetaValue::I16(v) => Some(v.into()),
            MetaValue::I32(v) => Some(v.into()),
            MetaValue::I64(v) => Some(v as f64),
            _ => self.as_u64().map(|v| v as f64),
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            MetaValue::Str(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            MetaValue::Bool(b) => Some(b),
            _ => None,
        }
    }

    pub fn as_array(&self) -> Option<&[MetaValue]> {
        match self {
            MetaValue::Array(a) => Some(a),
            _ => None,
        }
    }

    /// The GGUF name of the value's type, for messages.
    pub fn type_name(&self) -> &'static str {
        match self {
            MetaValue::U8(_) => "uint8",
            MetaValue::I8(_) => "int8",
            MetaValue::U16(_) => "uint16",
            MetaValue::I16(_) => "int16",
            MetaValue::U32(_) => "uint32",
            MetaValue::I32(_) => "int32",
            MetaValue::F32(_) => "float32",
            MetaValue::Bool(_) => "bool",
            MetaValue::Str(_) => "string",
            MetaValue::Array(_) => "array",
            MetaValue::U64(_) => "uint64",
            MetaValue::I64(_) => "int64",
            MetaValue::F64(_) => "float64",
        }
    }
}

/// One tensor's header entry.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorInfo {
    pub name: String,
    /// ggml's `ne`: the fastest-varying dimension first.
    pub ne: Vec<u64>,
    pub ggml_type: GgmlType,
    /// Absolute byte offset of the data in the file.
    pub offset: usize,
    /// Bytes of data (0 when the type is unknown: such a tensor cannot be read).
    pub n_bytes: usize,
}

impl TensorInfo {
    /// The row-major (PyTorch) shape: `ne` reversed.
    pub fn shape(&self) -> Vec<usize> {
        self.ne.iter().rev().map(|&d| d as usize).collect()
    }

    pub fn n_elements(&self) -> usize {
        self.ne.iter().product::<u64>() as usize
    }
}

/// A GGUF file, memory-mapped.
pub struct GgufFile {
    path: PathBuf,
    mmap: Mmap,
    pub version: u32,
    /// Metadata in file order.
    pub metadata: Vec<(String, MetaValue)>,
    meta_index: HashMap<String, usize>,
    pub tensors: Vec<TensorInfo>,
    tensor_index: HashMap<String, usize>,
    pub alignment: u64,
    /// Where the data section starts.
    pub data_offset: usize,
}

/// A bounds-checked little-endian reader over the mapped bytes.
struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
    path: &'a Path,
}

impl<'a> Cursor<'a> {
    fn truncated(&self, what: &str, need: usize) -> Error {
        Error::checkpoint(
            self.path,
            format!(
                "truncated or corrupt GGUF: {what} at byte {} needs {need} byte(s), but the file has {} in all",
                self.pos,
                self.bytes.len()
            ),
        )
    }

    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8]> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.bytes.len())
            .ok_or_else(|| self.truncated(what, n))?;
        let s = &self.bytes[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N]> {
        Ok(self.take(N, what)?.try_into().expect("N bytes"))
    }

    fn u32(&mut self, what: &str) -> Result<u32> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }

    fn u64(&mut self, what: &str) -> Result<u64> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    /// A length or count that must fit in what is left of the file at `min_each` bytes apiece
    /// (a corrupt count would otherwise ask for terabytes).
    fn count(&mut self, what: &str, min_each: usize) -> Result<usize> {
        let at = self.pos;
        let n = self.u64(what)?;
        let left = (self.bytes.len() - self.pos) as u64;
        if n.saturating_mul(min_each as u64) > left {
            return Err(Error::checkpoint(
                self.path,
                format!("truncated or corrupt GGUF: {what} at byte {at} is {n}, more than the {left} bytes left can hold"),
            ));
        }
        Ok(n as usize)
    }

    fn string(&mut self, what: &str) -> Result<String> {
        let n = self.count(what, 1)?;
        let at = self.pos;
        let bytes = self.take(n, what)?;
        String::from_utf8(bytes.to_vec()).map_err(|e| {
            Error::checkpoint(
                self.path,
                format!("corrupt GGUF: {what} at byte {at} is not UTF-8 ({e})"),
            )
        })
    }

    fn value(&mut self, ty: u32, what: &str) -> Result<MetaValue> {
        Ok(match ty {
            0 => MetaValue::U8(self.array::<1>(what)?[0]),
            1 => MetaValue::I8(self.array::<1>(what)?[0] as i8),
            2 => MetaValue::U16(u16::from_le_bytes(self.array(what)?)),
            3 => MetaValue::I16(i16::from_le_bytes(self.array(what)?)),
            4 => MetaValue::U32(self.u32(what)?),
            5 => MetaValue::I32(i32::from_le_bytes(self.array(what)?)),
            6 => MetaValue::F32(f32::from_le_bytes(self.array(what)?)),
            7 => {
                let at = self.pos;
                match self.array::<1>(what)?[0] {
                    0 => MetaValue::Bool(false),
                    1 => MetaValue::Bool(true),
                    b => {
                        return Err(Error::checkpoint(
                            self.path,
                            format!("corrupt GGUF: {what} at byte {at} is a bool of value {b}"),
                        ))
                    }
                }
            }
            8 => MetaValue::Str(self.string(what)?),
            9 => {
                let at = self.pos;
                let inner = self.u32(what)?;
                if inner == 9 {
                    // Nested arrays are allowed by the format but no writer emits them, and
                    // unbounded nesting is a corrupt file's easiest way to exhaust the stack.
                    return Err(Error::checkpoint(
                        self.path,
                        format!("unsupported GGUF: {what} at byte {at} is an array of arrays"),
                    ));
                }
                let n = self.count(what, 1)?;
                let mut items = Vec::with_capacity(n);
                for _ in 0..n {
                    items.push(self.value(inner, what)?);
                }
                MetaValue::Array(items)
            }
            10 => MetaValue::U64(self.u64(what)?),
            11 => MetaValue::I64(i64::from_le_bytes(self.array(what)?)),
            12 => MetaValue::F64(f64::from_le_bytes(self.array(what)?)),
            other => {
                return Err(Error::checkpoint(
                    self.path,
                    format!(
                        "corrupt GGUF: {what} at byte {} has value type {other} (0..=12 exist)",
                        self.pos - 4
                    ),
                ))
            }
        })
    }
}

impl GgufFile {
    pub fn open(path: &Path) -> Result<Self> {
        let f = File::open(path).map_err(|e| Error::io(path, e))?;
        // SAFETY: read-only map of a checkpoint file; the file is not modified while loaded.
        let mmap = unsafe { Mmap::map(&f) }.map_err(|e| Error::io(path, e))?;
        let mut c = Cursor {
            bytes: &mmap,
            pos: 0,
            path,
        };
        let magic = c.u32("the magic number")?;
        if magic != MAGIC {
            return Err(Error::checkpoint(
                path,
                format!(
                    "not a GGUF file: it starts with {:?}, not `GGUF`",
                    String::from_utf8_lossy(&magic.to_le_bytes())
                ),
            ));
        }
        let version = c.u32("the version")?;
        if !(2..=3).contains(&version) {
            let hint = if version.swap_bytes() <= 3 {
                " (a big-endian file?)"
            } else {
                ""
            };
            return Err(Error::checkpoint(
                path,
                format!("GGUF version {version} is not supported (2 and 3 are){hint}"),
            ));
        }
        // A tensor info is at least 24 bytes, a key/value 13.
        let n_tensors = c.count("the tensor count", 24)?;
        let n_kv = c.count("the metadata count", 13)?;
        let mut metadata = Vec::with_capacity(n_kv);
        let mut meta_index = HashMap::with_capacity(n_kv);
        for i in 0..n_kv {
            let key = c.string(&format!("the key of metadata entry {i}"))?;
            let what = format!("metadata `{key}`");
            let ty = c.u32(&what)?;
            let value = c.value(ty, &what)?;
            if meta_index.insert(key.clone(), metadata.len()).is_some() {
                return Err(Error::checkpoint(
                    path,
                    format!("corrupt GGUF: metadata key `{key}` appears twice"),
                ));
            }
            metadata.push((key, value));
        }
        let alignment = match meta_index.get("general.alignment") {
            None => DEFAULT_ALIGNMENT,
            Some(&i) => match metadata[i].1.as_u64() {
                Some(a) if a > 0 && a.is_power_of_two() => a,
                _ => {
                    return Err(Error::config(
                        path,
                        "general.alignment",
                        format!("{:?} is not a positive power of two", metadata[i].1),
                    ))
                }
            },
        };
        let mut infos = Vec::with_capacity(n_tensors);
        for i in 0..n_tensors {
            let name = c.string(&format!("the name of tensor {i}"))?;
            let what = format!("the info of tensor `{name}`");
            let n_dims = c.u32(&what)?;
            if n_dims > 4 {
                return Err(Error::tensor(
                    path,
                    name,
                    format!("corrupt GGUF: {n_dims} dimensions (ggml has at most 4)"),
                ));
            }
            let ne = (0..n_dims)
                .map(|_| c.u64(&what))
                .collect::<Result<Vec<_>>>()?;
            let ty = c.u32(&what)?;
            let offset = c.u64(&what)?;
            infos.push((name, ne, ty, offset));
        }
        let data_offset = (c.pos as u64).next_multiple_of(alignment) as usize;
        let len = mmap.len();
        let mut tensors = Vec::with_capacity(n_tensors);
        let mut tensor_index = HashMap::with_capacity(n_tensors);
        for (name, ne, ty, rel) in infos {
            let ggml_type = GgmlType::from_id(ty);
            let n: u64 = ne
                .iter()
                .try_fold(1u64, |a, &d| a.checked_mul(d))
                .unwrap_or(u64::MAX);
            let n_bytes = match ggml_type.block() {
                Some((elems, bytes)) => {
                    if ne.first().is_some_and(|&d| !d.is_multiple_of(elems as u64)) {
                        return Err(Error::tensor(
                            path,
                            name,
                            format!(
                                "rows of {} elements are not whole {} blocks of {elems}",
                                ne[0],
                                ggml_type.name()
                            ),
                        ));
                    }
                    (n / elems as u64).saturating_mul(bytes as u64)
                }
                None => 0,
            };
            if !rel.is_multiple_of(alignment) {
                return Err(Error::tensor(
                    path,
                    name,
                    format!("corrupt GGUF: data offset {rel} is not a multiple of the alignment {alignment}"),
                ));
            }
            let start = (data_offset as u64).saturating_add(rel);
            if start.saturating_add(n_bytes) > len as u64 {
                return Err(Error::tensor(
                    path,
                    name,
                    format!(
                        "truncated or corrupt GGUF: its {n_bytes} bytes of {} {ne:?} at byte {start} run past the end of the file ({len} bytes)",
                        ggml_type.name()
                    ),
                ));
            }
            if tensor_index.insert(name.clone(), tensors.len()).is_some() {
                return Err(Error::tensor(path, name, "corrupt GGUF: stored twice"));
            }
            tensors.push(TensorInfo {
                name,
                ne,
                ggml_type,
                offset: start as usize,
                n_bytes: n_bytes as usize,
            });
        }
        Ok(GgufFile {
            path: path.to_path_buf(),
            mmap,
            version,
            metadata,
            meta_index,
            tensors,
            tensor_index,
            alignment,
            data_offset,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn get(&self, key: &str) -> Option<&MetaValue> {
        self.meta_index.get(key).map(|&i| &self.metadata[i].1)
    }

    fn wrong_type(&self, key: &str, want: &str) -> Error {
        let found = self.get(key).map_or("nothing", MetaValue::type_name);
        Error::config(&self.path, key, format!("expected {want}, found {found}"))
    }

    /// An integer key, if present.
    pub fn get_usize(&self, key: &str) -> Result<Option<usize>> {
        self.get(key)
            .map(|v| {
                v.as_u64()
                    .map(|n| n as usize)
                    .ok_or_else(|| self.wrong_type(key, "a non-negative integer"))
            })
            .transpose()
    }

    /// An integer key that must be present.
    pub fn usize(&self, key: &str) -> Result<usize> {
        self.get_usize(key)?
            .ok_or_else(|| Error::config(&self.path, key, "missing (an integer is required)"))
    }

    pub fn get_f64(&self, key: &str) -> Result<Option<f64>> {
        self.get(key)
            .map(|v| v.as_f64().ok_or_else(|| self.wrong_type(key, "a number")))
            .transpose()
    }

    pub fn get_str(&self, key: &str) -> Result<Option<&str>> {
        self.get(key)
            .map(|v| v.as_str().ok_or_else(|| self.wrong_type(key, "a string")))
            .transpose()
    }

    pub fn get_bool(&self, key: &str) -> Result<Option<bool>> {
        self.get(key)
            .map(|v| v.as_bool().ok_or_else(|| self.wrong_type(key, "a bool")))
            .transpose()
    }

    /// An array key whose items all satisfy `item` (e.g. `MetaValue::as_str`), if present.
    pub fn get_array<'a, T>(
        &'a self,
        key: &str,
        what: &str,
        item: impl Fn(&'a MetaValue) -> Option<T>,
    ) -> Result<Option<Vec<T>>> {
        let Some(v) = self.get(key) else {
            return Ok(None);
        };
        let items = v
            .as_array()
            .ok_or_else(|| self.wrong_type(key, &format!("an array of {what}")))?;
        items
            .iter()
            .enumerate()
            .map(|(i, x)| {
                item(x).ok_or_else(|| {
                    Error::config(
                        &self.path,
                        format!("{key}[{i}]"),
                        format!("expected {what}, found {}", x.type_name()),
                    )
                })
            })
            .collect::<Result<Vec<T>>>()
            .map(Some)
    }

    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.tensor_index.get(name).map(|&i| &self.tensors[i])
    }

    /// The stored bytes of a tensor.
    pub fn data(&self, info: &TensorInfo) -> &[u8] {
        &self.mmap[info.offset..info.offset + info.n_bytes]
    }

    /// The values of tensor `name` as f32, in its stored (row-major) order.
    pub fn dequantize(&self, name: &str) -> Result<Vec<f32>> {
        let info = self
            .tensor(name)
            .ok_or_else(|| Error::tensor(&self.path, name, "not in this GGUF file"))?;
        self.dequantize_info(info)
    }

    pub fn dequantize_info(&self, info: &TensorInfo) -> Result<Vec<f32>> {
        let mut out = vec![0f32; info.n_elements()];
        dequant::dequantize(info.ggml_type, self.data(info), &mut out)
            .map_err(|why| Error::tensor(&self.path, &info.name, why))?;
        Ok(out)
    }
}
