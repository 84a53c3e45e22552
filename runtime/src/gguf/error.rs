//! Errors of the GGUF reader and writer: each names what went wrong and where.

use std::path::PathBuf;

/// A malformed, unsupported or unreadable GGUF file. Byte offsets are from the file's start.
#[derive(Debug, thiserror::Error)]
pub enum GgufError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot write {path}: {source}")]
    Create {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is a directory, not a GGUF file")]
    IsDirectory { path: PathBuf },
    #[error("not a GGUF file: magic \"{found}\" at offset 0, expected \"GGUF\"")]
    BadMagic { found: String },
    #[error("big-endian GGUF file (version {version} byte-swapped); only little-endian files are supported")]
    BigEndian { version: u32 },
    #[error("unsupported GGUF version {version} at offset 4 (supported: 2, 3)")]
    UnsupportedVersion { version: u32 },
    #[error("truncated file: {what} at offset {offset} needs {needed} bytes, only {available} remain")]
    Truncated {
        what: String,
        offset: u64,
        needed: u64,
        available: u64,
    },
    #[error("{what} at offset {offset} is not valid UTF-8")]
    InvalidUtf8 { what: String, offset: u64 },
    #[error("unknown metadata value type {type_id} for {what} at offset {offset}")]
    UnknownValueType { what: String, type_id: u32, offset: u64 },
    #[error("invalid bool {value} for {what} at offset {offset} (must be 0 or 1)")]
    InvalidBool { what: String, value: u8, offset: u64 },
    #[error("arrays nested deeper than {max} levels in {what} at offset {offset}")]
    NestingTooDeep { what: String, max: usize, offset: u64 },
    #[error(
        "{what} {count} at offset {offset} cannot fit: the {available} bytes left hold at most {max} (truncated or corrupt file)"
    )]
    AbsurdCount {
        what: &'static str,
        count: u64,
        max: u64,
        offset: u64,
        available: u64,
    },
    #[error("duplicate metadata key `{key}` at offset {offset}")]
    DuplicateKey { key: String, offset: u64 },
    #[error("metadata key `{key}` has type {found}, expected {expected}")]
    WrongValueType {
        key: String,
        expected: &'static str,
        found: String,
    },
    #[error("metadata key `{key}` is missing")]
    MissingKey { key: String },
    #[error("invalid general.alignment {value}: must be a non-zero power of two")]
    BadAlignment { value: u64 },
    #[error("tensor `{tensor}` (info at offset {offset}) has {n_dims} dimensions, at most 4 are allowed")]
    TooManyDims { tensor: String, n_dims: u32, offset: u64 },
    #[error("tensor `{tensor}` has a zero dimension in shape {shape:?}")]
    ZeroDim { tensor: String, shape: Vec<u64> },
    #[error("tensor `{tensor}`: shape {shape:?} of {ty} overflows")]
    ShapeOverflow {
        tensor: String,
        shape: Vec<u64>,
        ty: String,
    },
    #[error("tensor `{tensor}`: unknown ggml type {type_id} (info at offset {offset})")]
    UnknownGgmlType { tensor: String, type_id: u32, offset: u64 },
    #[error("tensor `{tensor}`: first dimension {ne0} is not a multiple of the {ty} block size {block}")]
    NotBlockMultiple {
        tensor: String,
        ne0: u64,
        ty: String,
        block: usize,
    },
    #[error("tensor `{tensor}`: data [{start}, {end}) lies outside the file ({file_len} bytes)")]
    TensorOutOfBounds {
        tensor: String,
        start: u64,
        end: u64,
        file_len: u64,
    },
    #[error("tensor `{tensor}`: data offset {offset} is not a multiple of the alignment {alignment}")]
    TensorMisaligned {
        tensor: String,
        offset: u64,
        alignment: u64,
    },
    #[error("tensors `{first}` and `{second}` overlap at data offset {offset}")]
    TensorOverlap { first: String, second: String, offset: u64 },
    #[error("duplicate tensor name `{name}` (info at offset {offset})")]
    DuplicateTensor { name: String, offset: u64 },
    #[error("no tensor named `{name}`")]
    MissingTensor { name: String },
    #[error("tensor `{tensor}`: {message}")]
    TensorView { tensor: String, message: String },
    #[error("cannot write GGUF: {message}")]
    Write { message: String },
    #[error("write failed: {0}")]
    WriteIo(#[from] std::io::Error),
}
