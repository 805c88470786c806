//! The weights of an ONNX model (`ModelProto`): its initializers and the graph's nodes, read
//! by a minimal protobuf decoder over the memory-mapped file (only the fields needed to find
//! and read float tensors; no crate for the few hundred lines of `onnx.proto` this touches).
//! [`OnnxWeights`] serves them to the model code under checkpoint names that a family's
//! mapping gives them (see `dinov2::onnx`).

use std::collections::{BTreeSet, HashMap};
use std::fs::File;
use std::ops::Range;
use std::path::{Path, PathBuf};

use memmap2::Mmap;
use tita_core::{Error, Result};

use crate::weights::{transpose, StoredDtype, TensorSource};

/// `TensorProto.DataType` values read here.
const FLOAT: i32 = 1;
const FLOAT16: i32 = 10;
const DOUBLE: i32 = 11;
const BFLOAT16: i32 = 16;

/// Where an initializer's values are.
#[derive(Debug, Clone)]
enum Data {
    /// `raw_data`: little-endian bytes in the file.
    Raw(Range<usize>),
    /// `float_data`.
    Floats(Vec<f32>),
    /// `data_location = EXTERNAL`: in another file.
    External,
    None,
}

/// A `TensorProto` of the graph's initializers.
#[derive(Debug, Clone)]
pub struct Initializer {
    pub name: String,
    pub dims: Vec<usize>,
    pub data_type: i32,
    data: Data,
}

/// A `NodeProto`: an operator and the value names it reads and writes.
#[derive(Debug, Clone, Default)]
pub struct Node {
    pub name: String,
    pub op_type: String,
    pub inputs: Vec<String>,
    pub outputs: Vec<String>,
}

/// An ONNX file's initializers and nodes.
pub struct OnnxFile {
    path: PathBuf,
    mmap: Mmap,
    pub initializers: Vec<Initializer>,
    pub nodes: Vec<Node>,
}

/// One protobuf field's value.
enum Wire {
    Varint(u64),
    /// A length-delimited field: its byte range in the file.
    Bytes(Range<usize>),
    Fixed32(u32),
    Fixed64,
}

/// Protobuf wire-format fields of `buf[range]`, one by one.
struct Fields<'a> {
    buf: &'a [u8],
    pos: usize,
    end: usize,
    path: &'a Path,
}

impl<'a> Fields<'a> {
    fn new(buf: &'a [u8], range: Range<usize>, path: &'a Path) -> Self {
        Fields {
            buf,
            pos: range.start,
            end: range.end,
            path,
        }
    }

    fn err(&self, msg: impl std::fmt::Display) -> Error {
        Error::checkpoint(
            self.path,
            format!(
                "not a valid ONNX file (truncated or corrupt?): {msg} at byte {}",
                self.pos
            ),
        )
    }

    fn varint(&mut self) -> Result<u64> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let Some(&b) = self.buf[..self.end].get(self.pos) else {
                return Err(self.err("a varint runs past its message"));
            };
            self.pos += 1;
            v |= ((b & 0x7f) as u64) << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(self.err("a varint longer than 10 bytes"))
    }

    fn take(&mut self, n: usize) -> Result<Range<usize>> {
        let start = self.pos;
        match start.checked_add(n).filter(|&e| e <= self.end) {
            Some(end) => {
                self.pos = end;
                Ok(start..end)
            }
            None => Err(self.err(format!("a {n}-byte field runs past its message"))),
        }
    }

    /// The next field number and value, or None at the end of the message.
    fn next(&mut self) -> Result<Option<(u64, Wire)>> {
        if self.pos >= self.end {
            return Ok(None);
        }
        let key = self.varint()?;
        let value = match key & 7 {
            0 => Wire::Varint(self.varint()?),
            1 => {
                self.take(8)?;
                Wire::Fixed64
            }
            2 => {
                let n = self.varint()? as usize;
                Wire::Bytes(self.take(n)?)
            }
            5 => {
                let r = self.take(4)?;
                let b = &self.buf[r];
                Wire::Fixed32(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            }
            t => return Err(self.err(format!("wire type {t} (field {})", key >> 3))),
        };
        Ok(Some((key >> 3, value)))
    }

    fn string(&self, r: Range<usize>) -> Result<String> {
        String::from_utf8(self.buf[r].to_vec()).map_err(|_| self.err("a name that is not UTF-8"))
    }

    /// A repeated varint field's values, packed (`Bytes`) or not.
    fn varints(&self, v: Wire, out: &mut Vec<u64>) -> Result<()> {
        match v {
            Wire::Varint(x) => out.push(x),
            Wire::Bytes(r) => {
                let mut inner = Fields::new(self.buf, r, self.path);
                while inner.pos < inner.end {
                    out.push(inner.varint()?);
                }
            }
            _ => return Err(self.err("an integer list of the wrong wire type")),
        }
        Ok(())
    }
}

impl OnnxFile {
    pub fn open(path: &Path) -> Result<Self> {
        let f = File::open(path).map_err(|e| Error::io(path, e))?;
        // SAFETY: read-only map of a model file; the file is not modified while loaded.
        let mmap = unsafe { Mmap::map(&f) }.map_err(|e| Error::io(path, e))?;
        let (initializers, nodes) = parse_model(&mmap, path)?;
        Ok(OnnxFile {
            path: path.to_path_buf(),
            mmap,
            initializers,
            nodes,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The index of the initializer `name`.
    pub fn initializer(&self, name: &str) -> Option<usize> {
        self.initializers.iter().position(|t| t.name == name)
    }

    /// The values of initializer `idx` as f32 (row-major over `dims`).
    pub fn values(&self, idx: usize) -> Result<Vec<f32>> {
        let t = &self.initializers[idx];
        let n: usize = t.dims.iter().product();
        let err = |msg: String| Error::tensor(&self.path, &t.name, msg);
        let width = match t.data_type {
            FLOAT => 4,
            FLOAT16 | BFLOAT16 => 2,
            DOUBLE => 8,
            other => {
                return Err(err(format!(
                    "data type {other} is not supported (float, float16, bfloat16, double)"
                )))
            }
        };
        let values: Vec<f32> = match &t.data {
            Data::Raw(r) => {
                if r.len() != n * width {
                    return Err(err(format!(
                        "{:?} needs {} bytes of raw_data but holds {}",
                        t.dims,
                        n * width,
                        r.len()
                    )));
                }
                let b = &self.mmap[r.clone()];
                match t.data_type {
                    FLOAT => b
                        .chunks_exact(4)
                        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                        .collect(),
                    FLOAT16 => b
                        .chunks_exact(2)
                        .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
                        .collect(),
                    BFLOAT16 => b
                        .chunks_exact(2)
                        .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
                        .collect(),
                    _ => b
                        .chunks_exact(8)
                        .map(|c| f64::from_le_bytes(c.try_into().expect("8 bytes")) as f32)
                        .collect(),
                }
            }
            Data::Floats(v) if t.data_type == FLOAT => {
                if v.len() != n {
                    return Err(err(format!(
                        "{:?} needs {n} values but float_data holds {}",
                        t.dims,
                        v.len()
                    )));
                }
                v.clone()
            }
            Data::External => {
                return Err(err(
                    "is stored in an external data file, which is not supported".into(),
                ))
            }
            _ => {
                return Err(err(format!(
                    "has no values for its {:?} shape (only raw_data, or float_data for float, is read)",
                    t.dims
                )))
            }
        };
        if let Some((i, v)) = values.iter().enumerate().find(|(_, v)| !v.is_finite()) {
            return Err(err(format!(
                "holds a non-finite value ({v} at flat index {i}); the file is corrupt"
            )));
        }
        Ok(values)
    }

    /// The nodes that read value `name`.
    pub fn consumers<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a Node> + 'a {
        self.nodes
            .iter()
            .filter(move |n| n.inputs.iter().any(|i| i == name))
    }

    /// Linear layers exported as `MatMul(x, W)` then `Add(b, ·)`: for each initializer used as
    /// a MatMul's second input whose output feeds an Add of an initializer, the pair
    /// (W's index, b's index). W is `[in, out]` (the transpose of PyTorch's weight).
    pub fn matmul_biases(&self) -> Vec<(usize, usize)> {
        let index: HashMap<&str, usize> = self
            .initializers
            .iter()
            .enumerate()
            .map(|(i, t)| (t.name.as_str(), i))
            .collect();
        let mut pairs = Vec::new();
        for node in self.nodes.iter().filter(|n| n.op_type == "MatMul") {
            let (Some(w), Some(out)) = (
                node.inputs.get(1).and_then(|n| index.get(n.as_str())),
                node.outputs.first(),
            ) else {
                continue;
            };
            let bias = self
                .consumers(out)
                .filter(|n| n.op_type == "Add")
                .flat_map(|n| n.inputs.iter())
                .find_map(|i| index.get(i.as_str()));
            if let Some(&b) = bias {
                pairs.push((*w, b));
            }
        }
        pairs
    }
}

fn parse_model(buf: &[u8], path: &Path) -> Result<(Vec<Initializer>, Vec<Node>)> {
    let mut model = Fields::new(buf, 0..buf.len(), path);
    let mut graph = None;
    let mut ir_version = None;
    while let Some((field, v)) = model.next()? {
        match (field, v) {
            (1, Wire::Varint(x)) => ir_version = Some(x),
            (7, Wire::Bytes(r)) => graph = Some(r),
            _ => {}
        }
    }
    let (Some(graph), Some(_)) = (graph, ir_version) else {
        return Err(Error::checkpoint(
            path,
            "not an ONNX model: no `ir_version` and `graph` fields in the ModelProto",
        ));
    };
    let mut g = Fields::new(buf, graph, path);
    let (mut inits, mut nodes) = (Vec::new(), Vec::new());
    while let Some((field, v)) = g.next()? {
        match (field, v) {
            (1, Wire::Bytes(r)) => nodes.push(parse_node(buf, r, path)?),
            (5, Wire::Bytes(r)) => inits.push(parse_tensor(buf, r, path)?),
            _ => {}
        }
    }
    Ok((inits, nodes))
}

fn parse_node(buf: &[u8], r: Range<usize>, path: &Path) -> Result<Node> {
    let mut f = Fields::new(buf, r, path);
    let mut node = Node::default();
    while let Some((field, v)) = f.next()? {
        if let Wire::Bytes(r) = v {
            match field {
                1 => node.inputs.push(f.string(r)?),
                2 => node.outputs.push(f.string(r)?),
                3 => node.name = f.string(r)?,
                4 => node.op_type = f.string(r)?,
                _ => {}
            }
        }
    }
    Ok(node)
}

fn parse_tensor(buf: &[u8], r: Range<usize>, path: &Path) -> Result<Initializer> {
    let mut f = Fields::new(buf, r, path);
    let mut dims = Vec::new();
    let mut t = Initializer {
        name: String::new(),
        dims: Vec::new(),
        data_type: 0,
        data: Data::None,
    };
    let mut floats = Vec::new();
    let mut external = false;
    while let Some((field, v)) = f.next()? {
        match (field, v) {
            (1, v) => f.varints(v, &mut dims)?,
            (2, Wire::Varint(x)) => t.data_type = x as i32,
            (4, Wire::Fixed32(x)) => floats.push(f32::from_bits(x)),
            (4, Wire::Bytes(r)) => floats.extend(
                buf[r]
                    .chunks_exact(4)
                    .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])),
            ),
            (8, Wire::Bytes(r)) => t.name = f.string(r)?,
            (9, Wire::Bytes(r)) => t.data = Data::Raw(r),
            (14, Wire::Varint(1)) => external = true,
            _ => {}
        }
    }
    t.dims = dims.into_iter().map(|d| d as usize).collect();
    if external {
        t.data = Data::External;
    } else if matches!(t.data, Data::None) && !floats.is_empty() {
        t.data = Data::Floats(floats);
    }
    Ok(t)
}

/// How a checkpoint tensor is made of initializers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// As stored.
    Stored(usize),
    /// The transpose of a stored `[in, out]` MatMul weight: PyTorch's `[out, in]`.
    Transposed(usize),
    /// Stored `[1, n_i, d]` tensors joined along axis 1.
    Concat(Vec<usize>),
}

/// An ONNX file's initializers under checkpoint names; like [`crate::Weights`], each is
/// checked by shape and finiteness, and names nobody asked for are reported by
/// [`OnnxWeights::finish`].
pub struct OnnxWeights {
    pub file: OnnxFile,
    entries: HashMap<String, Source>,
    taken: BTreeSet<String>,
}

impl OnnxWeights {
    pub fn new(file: OnnxFile) -> Self {
        OnnxWeights {
            file,
            entries: HashMap::new(),
            taken: BTreeSet::new(),
        }
    }

    /// Serves `source` as `name`; a name given twice is an error.
    pub fn insert(&mut self, name: String, source: Source) -> Result<()> {
        let dims = |i: usize| &self.file.initializers[i].dims;
        let bad = match &source {
            Source::Stored(_) => None,
            Source::Transposed(i) => (dims(*i).len() != 2)
                .then(|| format!("transposes {:?}, which is not a matrix", dims(*i))),
            Source::Concat(parts) if parts.is_empty() => Some("joins no tensors".to_string()),
            Source::Concat(parts) => {
                let tail = parts.first().map(|&i| dims(i).get(2).copied());
                parts
                    .iter()
                    .find(|&&i| {
                        let d = dims(i);
                        d.len() != 3 || d[0] != 1 || Some(d.get(2).copied()) != tail
                    })
                    .map(|&i| {
                        format!(
                            "joins `{}` {:?}, which is not [1, n, d] like the first part",
                            self.file.initializers[i].name,
                            dims(i)
                        )
                    })
            }
        };
        if let Some(msg) = bad {
            return Err(Error::tensor(self.file.path(), &name, msg));
        }
        if let Some(old) = self.entries.get(&name) {
            if *old != source {
                return Err(Error::tensor(
                    self.file.path(),
                    &name,
                    "two initializers map to this name",
                ));
            }
        }
        self.entries.insert(name, source);
        Ok(())
    }

    /// How `name` is made of initializers.
    pub fn source(&self, name: &str) -> Option<&Source> {
        self.entries.get(name)
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.entries.keys().map(String::as_str)
    }

    /// The shape of `name` as served.
    pub fn shape(&self, name: &str) -> Option<Vec<usize>> {
        let dims = |i: usize| &self.file.initializers[i].dims;
        Some(match self.entries.get(name)? {
            Source::Stored(i) => dims(*i).clone(),
            Source::Transposed(i) => dims(*i).iter().rev().copied().collect(),
            Source::Concat(parts) => {
                let first = dims(*parts.first()?);
                let rows = parts
                    .iter()
                    .map(|&i| dims(i).get(1).copied().unwrap_or(0))
                    .sum();
                vec![1, rows, first.get(2).copied().unwrap_or(0)]
            }
        })
    }

    /// The most common float type among the served initializers.
    pub fn dtype(&self) -> StoredDtype {
        let mut counts = [0usize; 3];
        for s in self.entries.values() {
            let i = match s {
                Source::Stored(i) | Source::Transposed(i) => *i,
                Source::Concat(p) => p[0],
            };
            counts[match self.file.initializers[i].data_type {
                FLOAT16 => 1,
                BFLOAT16 => 2,
                _ => 0,
            }] += 1;
        }
        match (0..3).max_by_key(|&k| (counts[k], std::cmp::Reverse(k))) {
            Some(1) => StoredDtype::F16,
            Some(2) => StoredDtype::BF16,
            _ => StoredDtype::F32,
        }
    }

    /// Fails if a served name was not asked for.
    pub fn finish(self) -> Result<()> {
        let mut left: Vec<&String> = self
            .entries
            .keys()
            .filter(|k| !self.taken.contains(*k))
            .collect();
        if left.is_empty() {
            return Ok(());
        }
        left.sort();
        let shown: Vec<&str> = left.iter().take(8).map(|s| s.as_str()).collect();
        Err(Error::tensor(
            self.file.path(),
            left[0].clone(),
            format!(
                "{} tensor(s) that the config does not account for: {}",
                left.len(),
                shown.join(", ")
            ),
        ))
    }
}

impl TensorSource for OnnxWeights {
    fn take_vec(&mut self, name: &str, expected: &[usize]) -> Result<Vec<f32>> {
        let path = self.file.path();
        let source = self.entries.get(name).ok_or_else(|| {
            Error::tensor(
                path,
                name,
                format!("missing from the ONNX initializers (expected shape {expected:?})"),
            )
        })?;
        let shape = self.shape(name).expect("present");
        if shape != expected {
            return Err(Error::tensor(
                path,
                name,
                format!("has shape {shape:?}, but the config implies {expected:?}"),
            ));
        }
        let values = match source {
            Source::Stored(i) => self.file.values(*i)?,
            Source::Transposed(i) => {
                let d = &self.file.initializers[*i].dims;
                transpose(&self.file.values(*i)?, d[0], d[1])
            }
            Source::Concat(parts) => {
                let mut v = Vec::new();
                for &i in parts {
                    v.extend(self.file.values(i)?);
                }
                v
            }
        };
        self.taken.insert(name.to_string());
        Ok(values)
    }

    fn skip(&mut self, name: &str) {
        if self.entries.contains_key(name) {
            self.taken.insert(name.to_string());
        }
    }

    fn contains(&self, name: &str) -> bool {
        self.entries.contains_key(name)
    }

    fn stored_dtype(&self, name: &str) -> StoredDtype {
        let i = match self.entries.get(name) {
            Some(Source::Stored(i) | Source::Transposed(i)) => *i,
            Some(Source::Concat(p)) => p[0],
            None => return StoredDtype::F32,
        };
        match self.file.initializers[i].data_type {
            FLOAT16 => StoredDtype::F16,
            BFLOAT16 => StoredDtype::BF16,
            _ => StoredDtype::F32,
        }
    }
}
