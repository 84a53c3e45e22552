//! The GGUF reader: header, metadata and tensor infos parsed from untrusted bytes, tensor data
//! viewed in place over a memory map.
//!
//! Layout (ggml/docs/gguf.md, gguf.c): magic "GGUF", u32 version, u64 tensor_count,
//! u64 kv_count, kv_count × (string key, u32 type, value), tensor_count × (string name,
//! u32 n_dims, n_dims × u64 ne, u32 ggml_type, u64 offset), padding to `general.alignment`
//! (default 32), then the tensor data; each tensor's offset is relative to the data start.
//!
//! Every count read from the file is checked against the bytes left before anything is
//! allocated for it, every read is bounds-checked, and every failure is a [`GgufError`]
//! naming the byte offset and the key or tensor.

use std::collections::HashMap;
use std::path::Path;

use quant::GgmlType;

use super::error::GgufError;
use super::value::{GgufArray, GgufValue, GgufValueType};

/// "GGUF" as it appears in the file.
pub const GGUF_MAGIC: [u8; 4] = *b"GGUF";
/// The alignment when `general.alignment` is absent (`GGUF_DEFAULT_ALIGNMENT`).
pub const GGUF_DEFAULT_ALIGNMENT: u64 = 32;
/// Most dimensions a tensor may have (`GGML_MAX_DIMS`).
pub const GGML_MAX_DIMS: usize = 4;
/// Deepest array nesting accepted (guards the recursion against hostile files).
pub const MAX_ARRAY_DEPTH: usize = 8;

/// Metadata in file order, with lookup by key.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Metadata {
    entries: Vec<(String, GgufValue)>,
    index: HashMap<String, usize>,
}

impl Metadata {
    /// An empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Insert or replace `key`.
    pub fn set(&mut self, key: impl Into<String>, value: GgufValue) {
        let key = key.into();
        match self.index.get(&key) {
            Some(&i) => self.entries[i].1 = value,
            None => {
                self.index.insert(key.clone(), self.entries.len());
                self.entries.push((key, value));
            }
        }
    }

    /// Remove `key`, keeping the order of the rest.
    pub fn remove(&mut self, key: &str) -> Option<GgufValue> {
        let i = self.index.remove(key)?;
        let (_, v) = self.entries.remove(i);
        for idx in self.index.values_mut() {
            if *idx > i {
                *idx -= 1;
            }
        }
        Some(v)
    }

    /// The value of `key`.
    pub fn get(&self, key: &str) -> Option<&GgufValue> {
        self.index.get(key).map(|&i| &self.entries[i].1)
    }

    /// Entries in file order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &GgufValue)> {
        self.entries.iter().map(|(k, v)| (k.as_str(), v))
    }

    /// Number of keys.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether there are no keys.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    fn require(&self, key: &str) -> Result<&GgufValue, GgufError> {
        self.get(key)
            .ok_or_else(|| GgufError::MissingKey { key: key.to_string() })
    }

    /// A string value. Errors: [`GgufError::MissingKey`], [`GgufError::WrongValueType`].
    pub fn get_str(&self, key: &str) -> Result<&str, GgufError> {
        let v = self.require(key)?;
        v.as_str().ok_or_else(|| wrong(key, "string", v))
    }

    /// A non-negative integer of any integer type, as u64.
    pub fn get_u64(&self, key: &str) -> Result<u64, GgufError> {
        let v = self.require(key)?;
        v.as_u64().ok_or_else(|| wrong(key, "unsigned integer", v))
    }

    /// A float (f32, f64 or integer) as f64.
    pub fn get_f64(&self, key: &str) -> Result<f64, GgufError> {
        let v = self.require(key)?;
        v.as_f64().ok_or_else(|| wrong(key, "number", v))
    }

    /// A bool.
    pub fn get_bool(&self, key: &str) -> Result<bool, GgufError> {
        let v = self.require(key)?;
        v.as_bool().ok_or_else(|| wrong(key, "bool", v))
    }

    /// An array.
    pub fn get_array(&self, key: &str) -> Result<&GgufArray, GgufError> {
        let v = self.require(key)?;
        v.as_array().ok_or_else(|| wrong(key, "array", v))
    }
}

fn wrong(key: &str, expected: &'static str, v: &GgufValue) -> GgufError {
    let found = match v {
        GgufValue::Array(a) => format!("array of {}", a.elem_type()),
        _ => v.value_type().to_string(),
    };
    GgufError::WrongValueType {
        key: key.to_string(),
        expected,
        found,
    }
}

/// One tensor's description from the header.
#[derive(Clone, Debug, PartialEq)]
pub struct TensorInfo {
    /// llama.cpp tensor name, e.g. `blk.0.attn_q.weight`.
    pub name: String,
    /// Shape in ggml order: `shape[0]` (ne0) is the contiguous dimension, so a `[n_out, n_in]`
    /// weight matrix has `shape == [n_in, n_out]`.
    pub shape: Vec<u64>,
    /// Element type.
    pub ty: GgmlType,
    /// Byte offset of the data, relative to the start of the data section.
    pub offset: u64,
    /// Byte size of the data.
    pub size: u64,
    /// Byte offset of this tensor's info record in the file (for error messages).
    pub info_offset: u64,
}

impl TensorInfo {
    /// Number of elements.
    pub fn n_elements(&self) -> u64 {
        self.shape.iter().product()
    }

    /// Rows of `shape[0]` elements (the product of the other dimensions).
    pub fn n_rows(&self) -> u64 {
        self.shape.iter().skip(1).product()
    }
}

/// A parsed GGUF header: everything but the tensor data.
#[derive(Clone, Debug, PartialEq)]
pub struct GgufHeader {
    /// GGUF version (2 or 3).
    pub version: u32,
    /// Metadata in file order.
    pub metadata: Metadata,
    /// Tensor infos in file order.
    pub tensors: Vec<TensorInfo>,
    /// `general.alignment` or the default 32.
    pub alignment: u64,
    /// Absolute byte offset where the data section starts.
    pub data_offset: u64,
}

impl GgufHeader {
    /// Parse and validate the header of a complete GGUF file held in `bytes` (the data section
    /// is bounds-checked against `bytes.len()` but not read).
    ///
    /// Errors: any [`GgufError`] for a malformed file; never panics.
    pub fn parse(bytes: &[u8]) -> Result<GgufHeader, GgufError> {
        let mut c = Cursor { buf: bytes, pos: 0 };
        let magic = c.take(4, || "magic".into())?;
        if magic != GGUF_MAGIC {
            return Err(GgufError::BadMagic {
                found: String::from_utf8_lossy(magic).escape_debug().to_string(),
            });
        }
        let version = c.u32(|| "version".into())?;
        if version & 0xffff == 0 && version != 0 {
            return Err(GgufError::BigEndian {
                version: version.swap_bytes(),
            });
        }
        if version != 2 && version != 3 {
            return Err(GgufError::UnsupportedVersion { version });
        }
        let count_off = c.pos as u64;
        let n_tensors = c.u64(|| "tensor count".into())?;
        let n_kv = c.u64(|| "metadata key/value count".into())?;
        // A key/value pair takes at least 8 (key length) + 4 (type) + 1 bytes, a tensor info
        // 8 (name length) + 4 (n_dims) + 4 (type) + 8 (offset) bytes.
        c.check_count("metadata key/value count", n_kv, 13, count_off + 8)?;
        c.check_count("tensor count", n_tensors, 24, count_off)?;

        let mut metadata = Metadata::new();
        for i in 0..n_kv {
            let key_off = c.pos as u64;
            let key = c.string(|| format!("metadata key #{i}"))?;
            if metadata.get(&key).is_some() {
                return Err(GgufError::DuplicateKey { key, offset: key_off });
            }
            let type_off = c.pos as u64;
            let type_id = c.u32(|| format!("type of metadata key `{key}`"))?;
            let ty = GgufValueType::from_id(type_id).ok_or_else(|| GgufError::UnknownValueType {
                what: format!("metadata key `{key}`"),
                type_id,
                offset: type_off,
            })?;
            let value = c.value(ty, &key, 0)?;
            metadata.set(key, value);
        }

        let alignment = match metadata.get("general.alignment") {
            None => GGUF_DEFAULT_ALIGNMENT,
            Some(GgufValue::U32(a)) if *a != 0 && a.is_power_of_two() => *a as u64,
            Some(GgufValue::U32(a)) => return Err(GgufError::BadAlignment { value: *a as u64 }),
            Some(v) => return Err(wrong("general.alignment", "uint32", v)),
        };

        let mut tensors: Vec<TensorInfo> = Vec::new();
        let mut names: HashMap<String, ()> = HashMap::new();
        for i in 0..n_tensors {
            let info_offset = c.pos as u64;
            let name = c.string(|| format!("name of tensor #{i}"))?;
            if names.insert(name.clone(), ()).is_some() {
                return Err(GgufError::DuplicateTensor {
                    name,
                    offset: info_offset,
                });
            }
            let n_dims = c.u32(|| format!("n_dims of tensor `{name}`"))?;
            if n_dims as usize > GGML_MAX_DIMS {
                return Err(GgufError::TooManyDims {
                    tensor: name,
                    n_dims,
                    offset: info_offset,
                });
            }
            let mut shape = Vec::with_capacity(n_dims as usize);
            for d in 0..n_dims {
                shape.push(c.u64(|| format!("dimension {d} of tensor `{name}`"))?);
            }
            let type_off = c.pos as u64;
            let type_id = c.u32(|| format!("type of tensor `{name}`"))?;
            let ty = GgmlType::from_id(type_id).ok_or_else(|| GgufError::UnknownGgmlType {
                tensor: name.clone(),
                type_id,
                offset: type_off,
            })?;
            let offset = c.u64(|| format!("data offset of tensor `{name}`"))?;
            let size = tensor_size(&name, &shape, ty)?;
            if offset % alignment != 0 {
                return Err(GgufError::TensorMisaligned {
                    tensor: name,
                    offset,
                    alignment,
                });
            }
            tensors.push(TensorInfo {
                name,
                shape,
                ty,
                offset,
                size,
                info_offset,
            });
        }

        let end_of_infos = c.pos as u64;
        let data_offset = align_up(end_of_infos, alignment);
        let file_len = bytes.len() as u64;
        for t in &tensors {
            let start = data_offset.checked_add(t.offset);
            let end = start.and_then(|s| s.checked_add(t.size));
            match (start, end) {
                (Some(_), Some(e)) if e <= file_len => {}
                _ => {
                    return Err(GgufError::TensorOutOfBounds {
                        tensor: t.name.clone(),
                        start: data_offset.saturating_add(t.offset),
                        end: data_offset.saturating_add(t.offset).saturating_add(t.size),
                        file_len,
                    });
                }
            }
        }
        let mut by_offset: Vec<&TensorInfo> = tensors.iter().collect();
        by_offset.sort_by_key(|t| (t.offset, t.size));
        for w in by_offset.windows(2) {
            if w[0].offset + w[0].size > w[1].offset {
                return Err(GgufError::TensorOverlap {
                    first: w[0].name.clone(),
                    second: w[1].name.clone(),
                    offset: w[1].offset,
                });
            }
        }
        Ok(GgufHeader {
            version,
            metadata,
            tensors,
            alignment,
            data_offset,
        })
    }

    /// The info of tensor `name`.
    pub fn tensor_info(&self, name: &str) -> Option<&TensorInfo> {
        self.tensors.iter().find(|t| t.name == name)
    }
}

/// Round `x` up to a multiple of `align` (a power of two), saturating.
pub fn align_up(x: u64, align: u64) -> u64 {
    x.checked_add(align - 1)
        .map(|v| v & !(align - 1))
        .unwrap_or(!(align - 1))
}

/// Byte size of a tensor of `ty` with ggml `shape`, checking every rule of gguf.c: no zero
/// dimension, ne0 a multiple of the block size, no overflow.
pub fn tensor_size(name: &str, shape: &[u64], ty: GgmlType) -> Result<u64, GgufError> {
    if shape.contains(&0) {
        return Err(GgufError::ZeroDim {
            tensor: name.to_string(),
            shape: shape.to_vec(),
        });
    }
    let overflow = || GgufError::ShapeOverflow {
        tensor: name.to_string(),
        shape: shape.to_vec(),
        ty: ty.name().to_string(),
    };
    let mut n: u64 = 1;
    for &d in shape {
        n = n.checked_mul(d).ok_or_else(overflow)?;
    }
    // ggml keeps element counts in int64_t.
    if n > i64::MAX as u64 {
        return Err(overflow());
    }
    let ne0 = shape.first().copied().unwrap_or(1);
    let block = ty.block_size() as u64;
    if ne0 % block != 0 {
        return Err(GgufError::NotBlockMultiple {
            tensor: name.to_string(),
            ne0,
            ty: ty.name().to_string(),
            block: block as usize,
        });
    }
    (n / block).checked_mul(ty.type_size() as u64).ok_or_else(overflow)
}

struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn remaining(&self) -> u64 {
        (self.buf.len() - self.pos) as u64
    }

    fn take(&mut self, n: u64, what: impl FnOnce() -> String) -> Result<&'a [u8], GgufError> {
        if n > self.remaining() {
            return Err(GgufError::Truncated {
                what: what(),
                offset: self.pos as u64,
                needed: n,
                available: self.remaining(),
            });
        }
        let s = &self.buf[self.pos..self.pos + n as usize];
        self.pos += n as usize;
        Ok(s)
    }

    fn array<const N: usize>(&mut self, what: impl FnOnce() -> String) -> Result<[u8; N], GgufError> {
        let s = self.take(N as u64, what)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }

    fn u32(&mut self, what: impl FnOnce() -> String) -> Result<u32, GgufError> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }

    fn u64(&mut self, what: impl FnOnce() -> String) -> Result<u64, GgufError> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    /// Refuse a count that cannot fit in the bytes left, before allocating for it.
    fn check_count(&self, what: &'static str, count: u64, min_size: u64, offset: u64) -> Result<(), GgufError> {
        let max = self.remaining() / min_size;
        if count > max {
            return Err(GgufError::AbsurdCount {
                what,
                count,
                max,
                offset,
                available: self.remaining(),
            });
        }
        Ok(())
    }

    fn string(&mut self, what: impl Fn() -> String) -> Result<String, GgufError> {
        let len = self.u64(|| format!("length of {}", what()))?;
        let off = self.pos as u64;
        let s = self.take(len, || format!("{} ({len} bytes)", what()))?;
        String::from_utf8(s.to_vec()).map_err(|_| GgufError::InvalidUtf8 {
            what: what(),
            offset: off,
        })
    }

    fn value(&mut self, ty: GgufValueType, key: &str, depth: usize) -> Result<GgufValue, GgufError> {
        use GgufValueType as T;
        let what = || format!("value of metadata key `{key}`");
        Ok(match ty {
            T::U8 => GgufValue::U8(self.array::<1>(what)?[0]),
            T::I8 => GgufValue::I8(self.array::<1>(what)?[0] as i8),
            T::U16 => GgufValue::U16(u16::from_le_bytes(self.array(what)?)),
            T::I16 => GgufValue::I16(i16::from_le_bytes(self.array(what)?)),
            T::U32 => GgufValue::U32(u32::from_le_bytes(self.array(what)?)),
            T::I32 => GgufValue::I32(i32::from_le_bytes(self.array(what)?)),
            T::F32 => GgufValue::F32(f32::from_le_bytes(self.array(what)?)),
            T::U64 => GgufValue::U64(u64::from_le_bytes(self.array(what)?)),
            T::I64 => GgufValue::I64(i64::from_le_bytes(self.array(what)?)),
            T::F64 => GgufValue::F64(f64::from_le_bytes(self.array(what)?)),
            T::Bool => GgufValue::Bool(self.bool(&what)?),
            T::String => GgufValue::String(self.string(what)?),
            T::Array => GgufValue::Array(self.array_value(key, depth)?),
        })
    }

    fn bool(&mut self, what: &impl Fn() -> String) -> Result<bool, GgufError> {
        let off = self.pos as u64;
        match self.array::<1>(what)?[0] {
            0 => Ok(false),
            1 => Ok(true),
            value => Err(GgufError::InvalidBool {
                what: what(),
                value,
                offset: off,
            }),
        }
    }

    fn array_value(&mut self, key: &str, depth: usize) -> Result<GgufArray, GgufError> {
        let start = self.pos as u64;
        if depth >= MAX_ARRAY_DEPTH {
            return Err(GgufError::NestingTooDeep {
                what: format!("metadata key `{key}`"),
                max: MAX_ARRAY_DEPTH,
                offset: start,
            });
        }
        let type_id = self.u32(|| format!("array element type of metadata key `{key}`"))?;
        let elem = GgufValueType::from_id(type_id).ok_or_else(|| GgufError::UnknownValueType {
            what: format!("array elements of metadata key `{key}`"),
            type_id,
            offset: start,
        })?;
        let count_off = self.pos as u64;
        let n = self.u64(|| format!("array length of metadata key `{key}`"))?;
        self.check_count("array length", n, elem.min_encoded_size(), count_off)?;
        let n = n as usize;
        use GgufArray as A;
        use GgufValueType as T;
        let what = || format!("array of metadata key `{key}`");
        Ok(match elem {
            T::U8 => A::U8(self.take(n as u64, what)?.to_vec()),
            T::I8 => A::I8(self.take(n as u64, what)?.iter().map(|&b| b as i8).collect()),
            T::U16 => A::U16(self.fixed::<2, _>(n, &what, u16::from_le_bytes)?),
            T::I16 => A::I16(self.fixed::<2, _>(n, &what, i16::from_le_bytes)?),
            T::U32 => A::U32(self.fixed::<4, _>(n, &what, u32::from_le_bytes)?),
            T::I32 => A::I32(self.fixed::<4, _>(n, &what, i32::from_le_bytes)?),
            T::F32 => A::F32(self.fixed::<4, _>(n, &what, f32::from_le_bytes)?),
            T::U64 => A::U64(self.fixed::<8, _>(n, &what, u64::from_le_bytes)?),
            T::I64 => A::I64(self.fixed::<8, _>(n, &what, i64::from_le_bytes)?),
            T::F64 => A::F64(self.fixed::<8, _>(n, &what, f64::from_le_bytes)?),
            T::Bool => {
                let mut v = Vec::with_capacity(n);
                for _ in 0..n {
                    v.push(self.bool(&what)?);
                }
                A::Bool(v)
            }
            T::String => {
                let mut v = Vec::with_capacity(n);
                for i in 0..n {
                    v.push(self.string(|| format!("element {i} of metadata key `{key}`"))?);
                }
                A::String(v)
            }
            T::Array => {
                let mut v = Vec::with_capacity(n);
                for _ in 0..n {
                    v.push(self.array_value(key, depth + 1)?);
                }
                A::Array(v)
            }
        })
    }

    fn fixed<const N: usize, V>(
        &mut self,
        n: usize,
        what: &impl Fn() -> String,
        f: impl Fn([u8; N]) -> V,
    ) -> Result<Vec<V>, GgufError> {
        let bytes = self.take((n as u64) * N as u64, what)?;
        Ok(bytes
            .chunks_exact(N)
            .map(|c| f(c.try_into().expect("chunks_exact yields N bytes")))
            .collect())
    }
}

/// Where a file's bytes live: a read-only memory map, or memory (tests, generated files).
enum Backing {
    Mmap(memmap2::Mmap),
    Owned(Vec<u8>),
}

impl Backing {
    fn bytes(&self) -> &[u8] {
        match self {
            Backing::Mmap(m) => m,
            Backing::Owned(v) => v,
        }
    }
}

/// An open GGUF file: the parsed header plus zero-copy access to tensor data.
///
/// `Send + Sync`; share it through `Arc`.
pub struct GgufFile {
    header: GgufHeader,
    backing: Backing,
}

impl std::fmt::Debug for GgufFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GgufFile")
            .field("version", &self.header.version)
            .field("tensors", &self.header.tensors.len())
            .finish()
    }
}

impl GgufFile {
    /// Memory-map and parse the file at `path`.
    ///
    /// Errors: [`GgufError::Io`] if it cannot be opened or mapped, otherwise any parse error
    /// of [`GgufHeader::parse`].
    pub fn open(path: impl AsRef<Path>) -> Result<GgufFile, GgufError> {
        let path = path.as_ref();
        let io = |source| GgufError::Io {
            path: path.to_path_buf(),
            source,
        };
        if path.is_dir() {
            return Err(GgufError::IsDirectory {
                path: path.to_path_buf(),
            });
        }
        let file = std::fs::File::open(path).map_err(io)?;
        let len = file.metadata().map_err(io)?.len();
        if len == 0 {
            // mmap of an empty file fails on some systems; it is simply truncated.
            return Self::from_bytes(Vec::new());
        }
        // SAFETY: the map is read-only; as with every mmap-based loader, a file truncated by
        // another process while mapped is outside what we can defend against.
        let mmap = unsafe { memmap2::Mmap::map(&file) }.map_err(io)?;
        let header = GgufHeader::parse(&mmap)?;
        Ok(GgufFile {
            header,
            backing: Backing::Mmap(mmap),
        })
    }

    /// Parse a file held in memory.
    pub fn from_bytes(bytes: Vec<u8>) -> Result<GgufFile, GgufError> {
        let header = GgufHeader::parse(&bytes)?;
        Ok(GgufFile {
            header,
            backing: Backing::Owned(bytes),
        })
    }

    /// The parsed header.
    pub fn header(&self) -> &GgufHeader {
        &self.header
    }

    /// GGUF version.
    pub fn version(&self) -> u32 {
        self.header.version
    }

    /// Metadata.
    pub fn metadata(&self) -> &Metadata {
        &self.header.metadata
    }

    /// Tensor infos in file order.
    pub fn tensors(&self) -> &[TensorInfo] {
        &self.header.tensors
    }

    /// The whole file.
    pub fn bytes(&self) -> &[u8] {
        self.backing.bytes()
    }

    /// A view of tensor `name`. Errors: [`GgufError::MissingTensor`].
    pub fn tensor(&self, name: &str) -> Result<TensorView<'_>, GgufError> {
        let info = self
            .header
            .tensor_info(name)
            .ok_or_else(|| GgufError::MissingTensor { name: name.to_string() })?;
        Ok(self.view(info))
    }

    /// A view of the tensor described by `info` (which must come from this file).
    pub fn view<'a>(&'a self, info: &'a TensorInfo) -> TensorView<'a> {
        // parse() checked data_offset + offset + size <= len for every tensor.
        let start = (self.header.data_offset + info.offset) as usize;
        TensorView {
            info,
            data: &self.bytes()[start..start + info.size as usize],
        }
    }
}

/// A tensor's info and its bytes, borrowed from the file (no copy).
#[derive(Clone, Copy, Debug)]
pub struct TensorView<'a> {
    pub info: &'a TensorInfo,
    pub data: &'a [u8],
}

impl<'a> TensorView<'a> {
    /// The data as blocks of `B`, zero-copy.
    ///
    /// Errors: [`GgufError::TensorView`] when `B` is not the tensor's type or the data is not
    /// aligned for `B` (possible only with `general.alignment` below the block's alignment).
    pub fn blocks<B: quant::Block>(&self) -> Result<&'a [B], GgufError> {
        if B::TYPE != self.info.ty {
            return Err(GgufError::TensorView {
                tensor: self.info.name.clone(),
                message: format!("is {}, not {}", self.info.ty, B::TYPE),
            });
        }
        bytemuck::try_cast_slice(self.data).map_err(|e| GgufError::TensorView {
            tensor: self.info.name.clone(),
            message: format!("cannot view as {} blocks: {e:?}", B::TYPE),
        })
    }

    /// Row `i` (of `shape[0]` elements) as raw bytes; `None` past the last row.
    pub fn row(&self, i: usize) -> Option<&'a [u8]> {
        let rb = self.info.ty.row_bytes(*self.info.shape.first()? as usize)?;
        self.data.get(i.checked_mul(rb)?..i.checked_mul(rb)?.checked_add(rb)?)
    }

    /// Dequantize the whole tensor to f32.
    ///
    /// Errors: [`GgufError::TensorView`] for a type the quant crate does not support.
    pub fn to_f32(&self) -> Result<Vec<f32>, GgufError> {
        let n = self.info.n_elements() as usize;
        let mut out = vec![0f32; n];
        quant::dequantize_row(self.info.ty, self.data, &mut out).map_err(|e| GgufError::TensorView {
            tensor: self.info.name.clone(),
            message: e.to_string(),
        })?;
        Ok(out)
    }
}
