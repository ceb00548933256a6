//! The library's errors: one variant per way a model or a file can be wrong.
//!
//! Model errors name the subgraph, tensor or buffer concerned; file errors name the path.

use std::path::PathBuf;

/// What is wrong with a model's bytes. Every variant is a clean refusal: nothing was written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ModelError {
    /// The file is empty.
    #[error("the file is empty (0 bytes): not a TFLite model")]
    Empty,
    /// The model refers to bytes past the end of the file: a partial download or copy.
    #[error("truncated: the file has {}, the model refers to byte {needed}", crate::text::count(*.len, "byte", "bytes"))]
    Truncated {
        /// Length of the input in bytes.
        len: usize,
        /// The end of the first range the model refers to that lies past the end of the file.
        needed: usize,
    },
    /// The file is too short to hold the `TFL3` identifier, and what it holds is not its start.
    #[error(
        "not a TFLite model: no TFL3 identifier (the file has only {})",
        crate::text::count(*.len, "byte", "bytes")
    )]
    TooShort {
        /// Length of the input in bytes.
        len: usize,
    },
    /// The flatbuffer's file identifier is not `TFL3`.
    #[error("not a TFLite model: no TFL3 identifier (bytes 4 to 8 are {found:?})")]
    BadIdentifier {
        /// The four bytes found at the identifier's place, lossily decoded.
        found: String,
    },
    /// The flatbuffers verifier rejected the structure (offsets out of range, bad vectors...).
    #[error("corrupt flatbuffer: {detail}")]
    Corrupt {
        /// The verifier's account of the problem.
        detail: String,
    },
    /// The schema version is not the one this tool reads.
    #[error("unsupported TFLite schema version {version} (only version 3 is supported)")]
    UnsupportedVersion {
        /// The model's `version` field.
        version: u32,
    },
    /// The model has no subgraph.
    #[error("model has no subgraphs")]
    NoSubgraphs,
    /// The model has no buffer table (not even the empty buffer 0).
    #[error("model has no buffer table")]
    NoBuffers,
    /// A subgraph has no tensor table.
    #[error("subgraph {subgraph} has no tensor table")]
    NoTensors {
        /// Subgraph index.
        subgraph: usize,
    },
    /// A CUSTOM operator code without the name of the custom operator.
    #[error("operator code {index} is CUSTOM but has no custom_code")]
    CustomWithoutCode {
        /// Index of the operator code.
        index: usize,
    },
    /// A tensor refers to a buffer index that does not exist.
    #[error(
        "subgraph {subgraph} tensor {tensor} ({name:?}) refers to buffer {buffer}, but the model has {}",
        crate::text::count(*.count, "buffer", "buffers")
    )]
    BufferIndex {
        /// Subgraph index.
        subgraph: usize,
        /// Tensor index within the subgraph.
        tensor: usize,
        /// Tensor name.
        name: String,
        /// The out-of-range buffer index.
        buffer: u32,
        /// Number of buffers in the model.
        count: usize,
    },
    /// An operator, subgraph input/output or signature refers to a tensor that does not exist.
    #[error(
        "{place} refers to tensor {index}, but subgraph {subgraph} has {}",
        crate::text::count(*.count, "tensor", "tensors")
    )]
    TensorIndex {
        /// Where the reference is, e.g. "subgraph 0 operator 3 input".
        place: String,
        /// Subgraph whose tensors are meant.
        subgraph: usize,
        /// The out-of-range index.
        index: i64,
        /// Number of tensors in the subgraph.
        count: usize,
    },
    /// An operator refers to an operator code that does not exist.
    #[error(
        "subgraph {subgraph} operator {op} uses operator code {index}, but the model has {count}"
    )]
    OpcodeIndex {
        /// Subgraph index.
        subgraph: usize,
        /// Operator index within the subgraph.
        op: usize,
        /// The out-of-range opcode index.
        index: u32,
        /// Number of operator codes.
        count: usize,
    },
    /// A control-flow operator or signature refers to a subgraph that does not exist.
    #[error(
        "{place} refers to subgraph {index}, but the model has {}",
        crate::text::count(*.count, "subgraph", "subgraphs")
    )]
    SubgraphIndex {
        /// Where the reference is.
        place: String,
        /// The out-of-range index.
        index: i64,
        /// Number of subgraphs.
        count: usize,
    },
    /// Control-flow operators call subgraphs in a cycle: the runtime would recurse forever.
    #[error("control-flow subgraphs form a cycle: {path}")]
    SubgraphCycle {
        /// The cycle, e.g. "0 -> 1 -> 0".
        path: String,
    },
    /// A buffer stored after the flatbuffer (`offset`/`size`) lies outside the file.
    #[error(
        "buffer {buffer}: data at offset {offset} with size {size} lies outside the {file_len}-byte file"
    )]
    BufferOutOfFile {
        /// Buffer index.
        buffer: usize,
        /// The buffer's `offset` field.
        offset: u64,
        /// The buffer's `size` field.
        size: u64,
        /// Length of the file.
        file_len: usize,
    },
    /// Two buffers stored after the flatbuffer share bytes.
    #[error("buffers {a} and {b} overlap in the file")]
    OverlappingBuffers {
        /// First buffer index.
        a: usize,
        /// Second buffer index.
        b: usize,
    },
    /// A buffer has both a `data` vector (even an empty one) and an external `offset`.
    #[error("buffer {buffer} has both inline data and an offset into the file")]
    AmbiguousBuffer {
        /// Buffer index.
        buffer: usize,
    },
    /// A tensor's shape has a negative dimension (unknown ones belong in `shape_signature`).
    #[error(
        "subgraph {subgraph} tensor {tensor} ({name:?}) has invalid shape {shape:?}: a dimension is negative (unknown dimensions belong in shape_signature)"
    )]
    BadShape {
        /// Subgraph index.
        subgraph: usize,
        /// Tensor index.
        tensor: usize,
        /// Tensor name.
        name: String,
        /// The shape as stored.
        shape: Vec<i32>,
    },
    /// A tensor's element count or byte size overflows.
    #[error(
        "subgraph {subgraph} tensor {tensor} ({name:?}) has shape {shape:?} whose size overflows"
    )]
    ShapeOverflow {
        /// Subgraph index.
        subgraph: usize,
        /// Tensor index.
        tensor: usize,
        /// Tensor name.
        name: String,
        /// The shape as stored.
        shape: Vec<i32>,
    },
    /// A constant tensor's buffer holds a different number of bytes than its shape needs.
    #[error(
        "subgraph {subgraph} tensor {tensor} ({name:?}): buffer {buffer} holds {}, but shape {shape:?} of {dtype} needs {expected}",
        crate::text::count(*.got as usize, "byte", "bytes")
    )]
    BufferSize {
        /// Subgraph index.
        subgraph: usize,
        /// Tensor index.
        tensor: usize,
        /// Tensor name.
        name: String,
        /// Buffer index.
        buffer: u32,
        /// Shape of the tensor.
        shape: Vec<i32>,
        /// Element type name.
        dtype: String,
        /// Bytes the shape needs.
        expected: u64,
        /// Bytes the buffer holds.
        got: u64,
    },
    /// An operator's custom options stored after the flatbuffer lie outside the file.
    #[error(
        "subgraph {subgraph} operator {op}: custom options at offset {offset} with size {size} lie outside the {file_len}-byte file"
    )]
    CustomOptionsOutOfFile {
        /// Subgraph index.
        subgraph: usize,
        /// Operator index within the subgraph.
        op: usize,
        /// The operator's `large_custom_options_offset`.
        offset: u64,
        /// The operator's `large_custom_options_size`.
        size: u64,
        /// Length of the file.
        file_len: usize,
    },
    /// A metadata entry refers to a buffer that does not exist.
    #[error(
        "{place} refers to buffer {buffer}, but the model has {}",
        crate::text::count(*.count, "buffer", "buffers")
    )]
    MetadataBuffer {
        /// Which entry, e.g. `metadata 2 ("min_runtime_version")`.
        place: String,
        /// The out-of-range buffer index.
        buffer: i64,
        /// Number of buffers.
        count: usize,
    },
    /// An operator code names no builtin operator of the schema.
    #[error(
        "operator code {index} is builtin operator {code}, which the TFLite schema does not define (a damaged file, or a model newer than this tool)"
    )]
    UnknownOperator {
        /// Index of the operator code.
        index: usize,
        /// The effective builtin code (the larger of `builtin_code` and
        /// `deprecated_builtin_code`, as the runtime reads it).
        code: i32,
    },
    /// A tensor's element type is not one of the schema's.
    #[error(
        "subgraph {subgraph} tensor {tensor} ({name:?}) has unknown element type {dtype} (a damaged file, or a model newer than this tool)"
    )]
    UnknownType {
        /// Subgraph index.
        subgraph: usize,
        /// Tensor index.
        tensor: usize,
        /// Tensor name.
        name: String,
        /// The `type` field as stored.
        dtype: i8,
    },
    /// A union (operator options, quantization details, sparse index vector) whose type the
    /// schema does not define.
    #[error(
        "{place}: {what} of unknown type {value} (a damaged file, or a model newer than this tool)"
    )]
    UnknownVariant {
        /// Where, e.g. "subgraph 0 operator 3".
        place: String,
        /// Which union.
        what: &'static str,
        /// The type as stored.
        value: u8,
    },
    /// A variable (state) tensor has constant data; the runtime refuses it.
    #[error(
        "subgraph {subgraph} tensor {tensor} ({name:?}) is a variable but has constant data in buffer {buffer}"
    )]
    VariableWithData {
        /// Subgraph index.
        subgraph: usize,
        /// Tensor index.
        tensor: usize,
        /// Tensor name.
        name: String,
        /// Its buffer.
        buffer: u32,
    },
    /// A tensor's quantization parameters contradict each other or its shape.
    #[error(
        "subgraph {subgraph} tensor {tensor} ({name:?}) has invalid quantization parameters: {what}"
    )]
    BadQuantization {
        /// Subgraph index.
        subgraph: usize,
        /// Tensor index.
        tensor: usize,
        /// Tensor name.
        name: String,
        /// What is inconsistent.
        what: String,
    },
    /// An operator lists one tensor as both an input and an output.
    #[error("subgraph {subgraph} operator {op} both reads and writes tensor {tensor}")]
    InputIsOutput {
        /// Subgraph index.
        subgraph: usize,
        /// Operator index.
        op: usize,
        /// The tensor.
        tensor: i32,
    },
    /// A signature has no key, which the runtime needs to name it.
    #[error("signature {signature} has no signature_key")]
    SignatureKey {
        /// Index of the signature.
        signature: usize,
    },
    /// The rewritten model cannot be represented (e.g. more than 2^32 tensors).
    #[error("cannot write the model: {what}")]
    Unrepresentable {
        /// What limit was hit.
        what: String,
    },
}

/// Errors of the file-level API: a model error or an I/O error, with the path concerned.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The model in `path` is invalid.
    #[error("{}: {source}", path.display())]
    Model {
        /// The model file.
        path: PathBuf,
        /// What is wrong with it.
        #[source]
        source: Box<ModelError>,
    },
    /// Reading, mapping or writing `path` failed.
    #[error("{}: cannot {action}: {source}", path.display())]
    Io {
        /// The file concerned.
        path: PathBuf,
        /// What was being done, e.g. "read", "write the output".
        action: &'static str,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// The input is not a regular file.
    #[error("{}: not a regular file", path.display())]
    NotAFile {
        /// The path given.
        path: PathBuf,
    },
    /// The input changed (another process wrote to it) while it was being read.
    #[error(
        "{}: the file changed while it was being read (size {before} -> {after} bytes); nothing was written",
        path.display()
    )]
    Changed {
        /// The input file.
        path: PathBuf,
        /// Its size when opened.
        before: u64,
        /// Its size afterwards.
        after: u64,
    },
    /// The output would overwrite the input and `--in-place` was not given.
    #[error(
        "{}: output is the input file; pass --in-place to overwrite it",
        path.display()
    )]
    SameFile {
        /// The path given for both.
        path: PathBuf,
    },
    /// The model is invalid (no file name known: the in-memory API).
    #[error(transparent)]
    Invalid(Box<ModelError>),
    /// The plan given (`--plan`) cannot be applied exactly: one line per tensor, naming it
    /// and the rule.
    #[error("the plan cannot be applied exactly:\n  {}", conflicts.join("\n  "))]
    Plan {
        /// What stands in the way, per tensor.
        conflicts: Vec<String>,
    },
    /// The quantizer could not write the model to the given writer.
    #[error("cannot write the output: {0}")]
    Write(#[source] std::io::Error),
}

impl Error {
    /// Attaches `path` to a model error.
    pub fn model(path: impl Into<PathBuf>, source: impl Into<Box<ModelError>>) -> Error {
        Error::Model {
            path: path.into(),
            source: source.into(),
        }
    }

    /// Attaches `path` and an action to an I/O error.
    pub fn io(path: impl Into<PathBuf>, action: &'static str, source: std::io::Error) -> Error {
        Error::Io {
            path: path.into(),
            action,
            source,
        }
    }
}

impl From<ModelError> for Error {
    fn from(e: ModelError) -> Error {
        Error::Invalid(Box::new(e))
    }
}

/// Result of the library's functions.
pub type Result<T, E = Error> = std::result::Result<T, E>;
