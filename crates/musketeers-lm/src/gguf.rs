//! GGUF (v2 and v3) files: metadata, tensor infos and tensor data, dequantized to f32.
//!
//! Written here rather than taken from a crate: the format is small, the Rust readers that
//! exist either come inside a whole tensor framework (candle) or do not dequantize the K-quants,
//! and a malformed file must be an error naming the file and the field, never a panic. Every
//! read is bounds-checked; counts are checked against the bytes that remain before allocating.

use crate::error::LmError;
use crate::quants::{GgmlType, dequantize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// A metadata value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    U64(u64),
    I64(i64),
    F32(f32),
    F64(f64),
    Bool(bool),
    String(String),
    Array(Vec<Value>),
}

impl Value {
    /// Any integer type as u64 (negative values are `None`).
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Value::U8(v) => Some(v.into()),
            Value::U16(v) => Some(v.into()),
            Value::U32(v) => Some(v.into()),
            Value::U64(v) => Some(v),
            Value::I8(v) => u64::try_from(v).ok(),
            Value::I16(v) => u64::try_from(v).ok(),
            Value::I32(v) => u64::try_from(v).ok(),
            Value::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Value::F32(v) => Some(v.into()),
            Value::F64(v) => Some(v),
            _ => self.as_u64().map(|v| v as f64),
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            Value::Bool(b) => Some(b),
            _ => None,
        }
    }

    pub fn as_array(&self) -> Option<&[Value]> {
        match self {
            Value::Array(a) => Some(a),
            _ => None,
        }
    }
}

/// Where a tensor's bytes are and how to read them.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorInfo {
    pub name: String,
    /// GGUF order: `dims[0]` is the innermost (contiguous) axis, so a Hugging Face
    /// `[out, in]` weight is `[in, out]` here.
    pub dims: Vec<u64>,
    pub ggml_type: GgmlType,
    /// From the start of the data section.
    pub offset: u64,
}

impl TensorInfo {
    pub fn num_elements(&self) -> usize {
        self.dims.iter().map(|&d| d as usize).product()
    }

    /// The shape in row-major (PyTorch) order: the GGUF dims reversed.
    pub fn shape(&self) -> Vec<usize> {
        self.dims.iter().rev().map(|&d| d as usize).collect()
    }
}

/// A GGUF file: its metadata and tensor infos, and its tensor data read on demand.
pub struct GgufFile {
    pub path: PathBuf,
    pub version: u32,
    pub metadata: BTreeMap<String, Value>,
    pub tensors: Vec<TensorInfo>,
    data: Data,
    data_start: usize,
}

/// Where the tensor data is. An opened file is read one tensor at a time: holding a whole
/// 1.1 GB file in memory while its largest tensor is dequantized was a third of loading's
/// peak memory (a team's load is what sets a real run's peak when steps are lean).
enum Data {
    Memory(Vec<u8>),
    File { file: std::fs::File, len: u64 },
}

impl Data {
    fn len(&self) -> u64 {
        match self {
            Data::Memory(bytes) => bytes.len() as u64,
            Data::File { len, .. } => *len,
        }
    }
}

/// What the header says: everything but the tensor data.
struct Header {
    version: u32,
    metadata: BTreeMap<String, Value>,
    tensors: Vec<TensorInfo>,
    data_start: usize,
}

/// The first read of an opened file, doubled until the header fits (Qwen2.5's, with its
/// 151,643-token vocabulary and merges, is about 7 MB).
const HEADER_READ: u64 = 16 << 20;

impl std::fmt::Debug for GgufFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GgufFile")
            .field("path", &self.path)
            .field("version", &self.version)
            .field("metadata", &self.metadata.len())
            .field("tensors", &self.tensors.len())
            .finish()
    }
}

const MAGIC: &[u8; 4] = b"GGUF";
const DEFAULT_ALIGNMENT: u64 = 32;

struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
    path: &'a Path,
}

impl<'a> Cursor<'a> {
    fn bad(&self, what: &str) -> LmError {
        LmError::BadGguf {
            path: self.path.into(),
            reason: format!("{what} (at byte {})", self.pos),
        }
    }

    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], LmError> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&end| end <= self.bytes.len())
            .ok_or_else(|| self.bad(&format!("file ends inside {what}")))?;
        let out = &self.bytes[self.pos..end];
        self.pos = end;
        Ok(out)
    }

    fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N], LmError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N, what)?);
        Ok(out)
    }

    fn u32(&mut self, what: &str) -> Result<u32, LmError> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }

    fn u64(&mut self, what: &str) -> Result<u64, LmError> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    /// A count of items of at least `min_size` bytes each that must fit in what remains.
    fn count(&mut self, min_size: usize, what: &str) -> Result<usize, LmError> {
        let n = self.u64(what)?;
        let remaining = (self.bytes.len() - self.pos) as u64;
        if n.saturating_mul(min_size as u64) > remaining {
            return Err(self.bad(&format!("{what} {n} is larger than the file")));
        }
        Ok(n as usize)
    }

    fn string(&mut self, what: &str) -> Result<String, LmError> {
        let len = self.count(1, &format!("length of {what}"))?;
        let raw = self.take(len, what)?;
        // Token texts are not always valid UTF-8 (byte tokens); keep them, lossily.
        Ok(String::from_utf8_lossy(raw).into_owned())
    }

    fn value(&mut self, kind: u32, depth: usize, what: &str) -> Result<Value, LmError> {
        Ok(match kind {
            0 => Value::U8(self.array::<1>(what)?[0]),
            1 => Value::I8(self.array::<1>(what)?[0] as i8),
            2 => Value::U16(u16::from_le_bytes(self.array(what)?)),
            3 => Value::I16(i16::from_le_bytes(self.array(what)?)),
            4 => Value::U32(self.u32(what)?),
            5 => Value::I32(i32::from_le_bytes(self.array(what)?)),
            6 => Value::F32(f32::from_le_bytes(self.array(what)?)),
            7 => match self.array::<1>(what)?[0] {
                0 => Value::Bool(false),
                1 => Value::Bool(true),
                b => return Err(self.bad(&format!("{what}: bool byte {b}"))),
            },
            8 => Value::String(self.string(what)?),
            9 => {
                if depth > 4 {
                    return Err(self.bad(&format!("{what}: arrays nested too deeply")));
                }
                let inner = self.u32(what)?;
                let n = self.count(1, &format!("length of {what}"))?;
                let mut items = Vec::with_capacity(n);
                for _ in 0..n {
                    items.push(self.value(inner, depth + 1, what)?);
                }
                Value::Array(items)
            }
            10 => Value::U64(self.u64(what)?),
            11 => Value::I64(i64::from_le_bytes(self.array(what)?)),
            12 => Value::F64(f64::from_le_bytes(self.array(what)?)),
            other => return Err(self.bad(&format!("{what}: unknown value type {other}"))),
        })
    }
}

impl GgufFile {
    /// Open `path`: its header is parsed and every tensor's extent checked against the
    /// file's length; tensor data is read when asked for.
    pub fn open(path: &Path) -> Result<Self, LmError> {
        use std::io::Read;
        let io = |source| LmError::Io {
            path: path.into(),
            source,
        };
        let file = std::fs::File::open(path).map_err(io)?;
        let len = file.metadata().map_err(io)?.len();
        let mut want = HEADER_READ.min(len);
        let header = loop {
            let mut prefix = Vec::with_capacity(want as usize);
            (&file).take(want).read_to_end(&mut prefix).map_err(io)?;
            match parse_header(path, &prefix) {
                Ok(header) => break header,
                // A header longer than the prefix reads as one cut short: read more.
                Err(_) if want < len => want = want.saturating_mul(2).min(len),
                Err(e) => return Err(e),
            }
        };
        Self::checked(path, header, Data::File { file, len })
    }

    /// Parse a whole file held in memory; checks every tensor's extent against the data.
    pub fn parse(path: &Path, bytes: Vec<u8>) -> Result<Self, LmError> {
        let header = parse_header(path, &bytes)?;
        Self::checked(path, header, Data::Memory(bytes))
    }

    fn checked(path: &Path, header: Header, data: Data) -> Result<Self, LmError> {
        let file = Self {
            path: path.into(),
            version: header.version,
            metadata: header.metadata,
            tensors: header.tensors,
            data_start: header.data_start,
            data,
        };
        for info in &file.tensors {
            file.extent(info)?;
        }
        Ok(file)
    }
}

/// Positioned reads, so that a shared `GgufFile` never races on a file cursor.
#[cfg(unix)]
fn read_exact_at(file: &std::fs::File, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
    std::os::unix::fs::FileExt::read_exact_at(file, buf, offset)
}

#[cfg(windows)]
fn read_exact_at(file: &std::fs::File, mut buf: &mut [u8], mut offset: u64) -> std::io::Result<()> {
    use std::os::windows::fs::FileExt;
    while !buf.is_empty() {
        match file.seek_read(buf, offset)? {
            0 => return Err(std::io::ErrorKind::UnexpectedEof.into()),
            n => {
                buf = &mut buf[n..];
                offset += n as u64;
            }
        }
    }
    Ok(())
}

/// The header at the start of `bytes`, which may end anywhere after it.
fn parse_header(path: &Path, bytes: &[u8]) -> Result<Header, LmError> {
    let mut c = Cursor {
        bytes,
        pos: 0,
        path,
    };
    if c.take(4, "the magic number")? != MAGIC {
        return Err(c.bad("not a GGUF file (no GGUF magic)"));
    }
    let version = c.u32("the version")?;
    if !(2..=3).contains(&version) {
        return Err(c.bad(&format!("GGUF version {version} (supported: 2, 3)")));
    }
    let tensor_count = c.count(24, "the tensor count")?;
    let kv_count = c.count(12, "the metadata count")?;
    let mut metadata = BTreeMap::new();
    for _ in 0..kv_count {
        let key = c.string("a metadata key")?;
        let kind = c.u32(&key)?;
        let value = c.value(kind, 0, &key)?;
        metadata.insert(key, value);
    }
    let mut tensors = Vec::with_capacity(tensor_count);
    for _ in 0..tensor_count {
        let name = c.string("a tensor name")?;
        let n_dims = c.u32(&name)?;
        if n_dims == 0 || n_dims > 4 {
            return Err(c.bad(&format!("tensor {name:?} has {n_dims} dimensions")));
        }
        let dims = (0..n_dims)
            .map(|_| c.u64(&name))
            .collect::<Result<Vec<_>, _>>()?;
        let raw_type = c.u32(&name)?;
        let ggml_type = GgmlType::from_id(raw_type).ok_or_else(|| {
            c.bad(&format!(
                "tensor {name:?} has ggml type {raw_type}, which this reader does not support \
                 (F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q8_0, Q4_K, Q5_K, Q6_K)"
            ))
        })?;
        let offset = c.u64(&name)?;
        tensors.push(TensorInfo {
            name,
            dims,
            ggml_type,
            offset,
        });
    }
    let alignment = match metadata.get("general.alignment") {
        None => DEFAULT_ALIGNMENT,
        Some(v) => v
            .as_u64()
            .filter(|a| a.is_power_of_two())
            .ok_or_else(|| c.bad("general.alignment is not a power of two"))?,
    };
    let data_start = (c.pos as u64).div_ceil(alignment) * alignment;
    Ok(Header {
        version,
        metadata,
        tensors,
        data_start: data_start as usize,
    })
}

impl GgufFile {
    fn bad(&self, reason: String) -> LmError {
        LmError::BadGguf {
            path: self.path.clone(),
            reason,
        }
    }

    /// The byte range of a tensor's data, checked.
    fn extent(&self, info: &TensorInfo) -> Result<std::ops::Range<usize>, LmError> {
        let elements = info
            .dims
            .iter()
            .try_fold(1u64, |acc, &d| acc.checked_mul(d))
            .ok_or_else(|| self.bad(format!("tensor {:?}: dimensions overflow", info.name)))?;
        let block = info.ggml_type.block_elements() as u64;
        if !info.dims[0].is_multiple_of(block) {
            return Err(self.bad(format!(
                "tensor {:?}: innermost dimension {} is not a multiple of the {:?} block ({block})",
                info.name, info.dims[0], info.ggml_type
            )));
        }
        let size = (elements / block).checked_mul(info.ggml_type.block_bytes() as u64);
        let start = (self.data_start as u64).checked_add(info.offset);
        let end = start.zip(size).and_then(|(s, size)| s.checked_add(size));
        match (start, end) {
            (Some(s), Some(e)) if e <= self.data.len() => Ok(s as usize..e as usize),
            _ => Err(self.bad(format!(
                "tensor {:?} ({} bytes at data offset {}) runs past the end of the file \
                 ({} bytes): truncated?",
                info.name,
                size.map_or("too many".to_string(), |s| s.to_string()),
                info.offset,
                self.data.len()
            ))),
        }
    }

    pub fn tensor_info(&self, name: &str) -> Option<&TensorInfo> {
        self.tensors.iter().find(|t| t.name == name)
    }

    /// The tensor `name`, dequantized to f32, in row-major order of [`TensorInfo::shape`].
    pub fn tensor_f32(&self, name: &str) -> Result<(Vec<usize>, Vec<f32>), LmError> {
        let info = self
            .tensor_info(name)
            .ok_or_else(|| LmError::MissingTensor {
                name: name.into(),
                dir: self.path.clone(),
            })?;
        let range = self.extent(info)?;
        let data = self.read(range)?;
        // Blocks are independent: dequantize runs of them on all cores, each into its part
        // of the output (no second copy of the tensor).
        let kind = info.ggml_type;
        let blocks_per_run = (16_384 / kind.block_elements()).max(1);
        let run = kind.block_bytes() * blocks_per_run;
        let elements_per_run = blocks_per_run * kind.block_elements();
        let mut values = vec![0f32; info.num_elements()];
        {
            use rayon::prelude::*;
            values
                .par_chunks_mut(elements_per_run)
                .zip(data.par_chunks(run))
                .for_each(|(out, chunk)| out.copy_from_slice(&dequantize(kind, chunk, out.len())));
        }
        Ok((info.shape(), values))
    }

    /// The bytes of `range` (checked by [`Self::extent`]).
    fn read(&self, range: std::ops::Range<usize>) -> Result<std::borrow::Cow<'_, [u8]>, LmError> {
        match &self.data {
            Data::Memory(bytes) => Ok(std::borrow::Cow::Borrowed(&bytes[range])),
            Data::File { file, .. } => {
                let mut bytes = vec![0u8; range.len()];
                read_exact_at(file, &mut bytes, range.start as u64).map_err(|source| {
                    LmError::Io {
                        path: self.path.clone(),
                        source,
                    }
                })?;
                Ok(std::borrow::Cow::Owned(bytes))
            }
        }
    }

    pub fn get(&self, key: &str) -> Option<&Value> {
        self.metadata.get(key)
    }

    /// A required metadata value, or an error naming the key.
    pub fn require(&self, key: &str) -> Result<&Value, LmError> {
        self.get(key)
            .ok_or_else(|| self.bad(format!("metadata key {key:?} is missing")))
    }

    pub fn require_u64(&self, key: &str) -> Result<u64, LmError> {
        self.require(key)?
            .as_u64()
            .ok_or_else(|| self.bad(format!("metadata key {key:?} is not an unsigned integer")))
    }

    pub fn require_f64(&self, key: &str) -> Result<f64, LmError> {
        self.require(key)?
            .as_f64()
            .ok_or_else(|| self.bad(format!("metadata key {key:?} is not a number")))
    }

    pub fn require_str(&self, key: &str) -> Result<&str, LmError> {
        self.require(key)?
            .as_str()
            .ok_or_else(|| self.bad(format!("metadata key {key:?} is not a string")))
    }

    /// `general.architecture`, e.g. `llama` or `gemma3`.
    pub fn architecture(&self) -> Result<&str, LmError> {
        self.require_str("general.architecture")
    }
}
