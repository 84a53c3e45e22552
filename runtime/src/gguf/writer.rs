//! The GGUF writer (version 3, little-endian), laid out as gguf.c and gguf-py write it: header,
//! metadata, tensor infos, padding to the alignment, then each tensor's data padded to the
//! alignment. A file read with [`GgufFile`](super::GgufFile) and written back with the same
//! metadata and tensors in the same order reproduces the original bytes.

use std::borrow::Cow;
use std::collections::HashSet;
use std::io::Write;

use quant::GgmlType;

use super::error::GgufError;
use super::reader::{GGML_MAX_DIMS, GGUF_DEFAULT_ALIGNMENT, GGUF_MAGIC, Metadata, align_up, tensor_size};
use super::value::{GgufArray, GgufValue};

/// A tensor to write: name, ggml shape (ne0 first), type and its raw bytes.
#[derive(Clone, Debug)]
pub struct WriterTensor<'a> {
    pub name: String,
    pub shape: Vec<u64>,
    pub ty: GgmlType,
    pub data: Cow<'a, [u8]>,
}

/// Builds a GGUF file.
#[derive(Clone, Debug, Default)]
pub struct GgufWriter<'a> {
    /// Metadata written in this order. `general.alignment` (u32) sets the alignment.
    pub metadata: Metadata,
    /// Tensors written in this order.
    pub tensors: Vec<WriterTensor<'a>>,
}

impl<'a> GgufWriter<'a> {
    /// An empty file.
    pub fn new() -> Self {
        Self::default()
    }

    /// Add a tensor.
    pub fn add_tensor(
        &mut self,
        name: impl Into<String>,
        shape: Vec<u64>,
        ty: GgmlType,
        data: impl Into<Cow<'a, [u8]>>,
    ) {
        self.tensors.push(WriterTensor {
            name: name.into(),
            shape,
            ty,
            data: data.into(),
        });
    }

    /// Write the file; returns the number of bytes written.
    ///
    /// Errors: [`GgufError::Write`] when a tensor's data does not match its shape and type, a
    /// name repeats, or `general.alignment` is invalid; [`GgufError::WriteIo`] from `w`.
    pub fn write_to<W: Write>(&self, w: &mut W) -> Result<u64, GgufError> {
        let alignment = match self.metadata.get("general.alignment") {
            None => GGUF_DEFAULT_ALIGNMENT,
            Some(GgufValue::U32(a)) if *a != 0 && a.is_power_of_two() => *a as u64,
            Some(v) => {
                return Err(GgufError::Write {
                    message: format!("general.alignment must be a power-of-two uint32, got {v:?}"),
                });
            }
        };
        let mut seen = HashSet::new();
        let mut offsets = Vec::with_capacity(self.tensors.len());
        let mut off = 0u64;
        for t in &self.tensors {
            if !seen.insert(t.name.as_str()) {
                return Err(GgufError::Write {
                    message: format!("duplicate tensor name `{}`", t.name),
                });
            }
            if t.shape.len() > GGML_MAX_DIMS {
                return Err(GgufError::Write {
                    message: format!("tensor `{}` has {} dimensions", t.name, t.shape.len()),
                });
            }
            let size = tensor_size(&t.name, &t.shape, t.ty).map_err(|e| GgufError::Write { message: e.to_string() })?;
            if size != t.data.len() as u64 {
                return Err(GgufError::Write {
                    message: format!(
                        "tensor `{}`: {} bytes given, {} {:?} needs {}",
                        t.name,
                        t.data.len(),
                        t.ty,
                        t.shape,
                        size
                    ),
                });
            }
            offsets.push(off);
            off = align_up(off + size, alignment);
        }

        let mut out = CountingWriter { inner: w, n: 0 };
        out.write_all(&GGUF_MAGIC)?;
        out.write_all(&3u32.to_le_bytes())?;
        out.write_all(&(self.tensors.len() as u64).to_le_bytes())?;
        out.write_all(&(self.metadata.len() as u64).to_le_bytes())?;
        for (k, v) in self.metadata.iter() {
            write_string(&mut out, k)?;
            out.write_all(&(v.value_type() as u32).to_le_bytes())?;
            write_value(&mut out, v)?;
        }
        for (t, o) in self.tensors.iter().zip(&offsets) {
            write_string(&mut out, &t.name)?;
            out.write_all(&(t.shape.len() as u32).to_le_bytes())?;
            for d in &t.shape {
                out.write_all(&d.to_le_bytes())?;
            }
            out.write_all(&t.ty.id().to_le_bytes())?;
            out.write_all(&o.to_le_bytes())?;
        }
        pad(&mut out, alignment)?;
        for t in &self.tensors {
            out.write_all(&t.data)?;
            pad(&mut out, alignment)?;
        }
        Ok(out.n)
    }

    /// Write the file to `path`: into a temporary file beside it, renamed over `path` once
    /// complete, so a failure never leaves a partial file and a file that is still memory-mapped
    /// (for instance the model being merged) is never truncated under its readers.
    ///
    /// Errors: [`GgufError::Create`] naming the path, [`GgufError::Write`].
    pub fn write_file(&self, path: impl AsRef<std::path::Path>) -> Result<u64, GgufError> {
        let path = path.as_ref();
        let create = |source| GgufError::Create {
            path: path.to_path_buf(),
            source,
        };
        let file_name = path
            .file_name()
            .ok_or_else(|| create(std::io::Error::other("not a file path")))?;
        let tmp = path.with_file_name(format!(
            ".{}.partial-{}",
            file_name.to_string_lossy(),
            std::process::id()
        ));
        let result = (|| {
            let f = std::fs::File::create(&tmp).map_err(create)?;
            let mut bw = std::io::BufWriter::with_capacity(1 << 20, f);
            let n = self.write_to(&mut bw)?;
            bw.flush().map_err(create)?;
            std::fs::rename(&tmp, path).map_err(create)?;
            Ok(n)
        })();
        if result.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        result
    }
}

struct CountingWriter<'w, W: Write> {
    inner: &'w mut W,
    n: u64,
}

impl<W: Write> Write for CountingWriter<'_, W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let k = self.inner.write(buf)?;
        self.n += k as u64;
        Ok(k)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

fn pad<W: Write>(out: &mut CountingWriter<'_, W>, alignment: u64) -> std::io::Result<()> {
    let k = (align_up(out.n, alignment) - out.n) as usize;
    out.write_all(&vec![0u8; k])
}

fn write_string(w: &mut impl Write, s: &str) -> std::io::Result<()> {
    w.write_all(&(s.len() as u64).to_le_bytes())?;
    w.write_all(s.as_bytes())
}

fn write_value(w: &mut impl Write, v: &GgufValue) -> std::io::Result<()> {
    match v {
        GgufValue::U8(x) => w.write_all(&[*x]),
        GgufValue::I8(x) => w.write_all(&x.to_le_bytes()),
        GgufValue::U16(x) => w.write_all(&x.to_le_bytes()),
        GgufValue::I16(x) => w.write_all(&x.to_le_bytes()),
        GgufValue::U32(x) => w.write_all(&x.to_le_bytes()),
        GgufValue::I32(x) => w.write_all(&x.to_le_bytes()),
        GgufValue::F32(x) => w.write_all(&x.to_le_bytes()),
        GgufValue::U64(x) => w.write_all(&x.to_le_bytes()),
        GgufValue::I64(x) => w.write_all(&x.to_le_bytes()),
        GgufValue::F64(x) => w.write_all(&x.to_le_bytes()),
        GgufValue::Bool(b) => w.write_all(&[*b as u8]),
        GgufValue::String(s) => write_string(w, s),
        GgufValue::Array(a) => write_array(w, a),
    }
}

fn write_array(w: &mut impl Write, a: &GgufArray) -> std::io::Result<()> {
    w.write_all(&(a.elem_type() as u32).to_le_bytes())?;
    w.write_all(&(a.len() as u64).to_le_bytes())?;
    macro_rules! le {
        ($v:expr) => {{
            let mut buf = Vec::with_capacity($v.len() * 8);
            for x in $v {
                buf.extend_from_slice(&x.to_le_bytes());
            }
            w.write_all(&buf)
        }};
    }
    match a {
        GgufArray::U8(v) => w.write_all(v),
        GgufArray::I8(v) => le!(v),
        GgufArray::U16(v) => le!(v),
        GgufArray::I16(v) => le!(v),
        GgufArray::U32(v) => le!(v),
        GgufArray::I32(v) => le!(v),
        GgufArray::F32(v) => le!(v),
        GgufArray::U64(v) => le!(v),
        GgufArray::I64(v) => le!(v),
        GgufArray::F64(v) => le!(v),
        GgufArray::Bool(v) => w.write_all(&v.iter().map(|&b| b as u8).collect::<Vec<_>>()),
        GgufArray::String(v) => {
            let mut buf = Vec::new();
            for s in v {
                buf.extend_from_slice(&(s.len() as u64).to_le_bytes());
                buf.extend_from_slice(s.as_bytes());
            }
            w.write_all(&buf)
        }
        GgufArray::Array(v) => {
            for x in v {
                write_array(w, x)?;
            }
            Ok(())
        }
    }
}
