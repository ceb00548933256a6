//! How a weight is stored: one [`Encoding`] answers every question the rest of the crate asks
//! about a stored tensor (its element type, bytes for n elements, how to encode a run of
//! values and decode one back, the quantization parameters to write), and one [`Geometry`]
//! says which parameters each element uses (the whole tensor, a channel, or a block).
//!
//! Nothing here knows about files or flatbuffers: slices in, bytes and statistics out. The
//! arithmetic kernels live in [`crate::quant`]; this module arranges them by geometry.

use rayon::prelude::*;

use crate::model::DType;
use crate::quant::{self, ErrorStats, QuantParams, Range};

/// Which quantization parameters each element of a tensor (row-major) uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Geometry {
    /// One set of parameters for the whole tensor.
    Tensor,
    /// One set per index along `axis`: element `i` is in channel `(i / inner) % channels`.
    Channels {
        /// The quantized dimension.
        axis: usize,
        /// Its length.
        channels: usize,
        /// Product of the dimensions after `axis`: elements in one run of a channel.
        inner: usize,
    },
    /// Blocks of `size` consecutive elements along the last axis (which `size` divides):
    /// element `i` is in block `i / size`, and the blocks of a `[N, K]` tensor are
    /// `[N, K / size]` row-major.
    Blocks {
        /// Elements per block.
        size: usize,
        /// Number of blocks.
        count: usize,
    },
}

impl Geometry {
    /// Channels along `axis` of a tensor with dimensions `dims` (`axis < dims.len()`).
    pub fn channels(dims: &[usize], axis: usize) -> Geometry {
        Geometry::Channels {
            axis,
            channels: dims[axis],
            inner: dims[axis + 1..].iter().product(),
        }
    }

    /// Blocks of `size` along the last axis of a tensor with dimensions `dims`, or `None`
    /// when `size` does not divide that axis.
    pub fn blocks(dims: &[usize], size: usize) -> Option<Geometry> {
        let last = *dims.last()?;
        (size > 0 && last % size == 0).then(|| Geometry::Blocks {
            size,
            count: dims.iter().product::<usize>() / size,
        })
    }

    /// Number of parameter sets.
    pub fn groups(&self) -> usize {
        match *self {
            Geometry::Tensor => 1,
            Geometry::Channels { channels, .. } => channels,
            Geometry::Blocks { count, .. } => count,
        }
    }

    /// The group of element `index`.
    #[inline]
    pub fn group_of(&self, index: usize) -> usize {
        match *self {
            Geometry::Tensor => 0,
            Geometry::Channels {
                channels, inner, ..
            } => (index / inner.max(1)) % channels.max(1),
            Geometry::Blocks { size, .. } => index / size.max(1),
        }
    }

    /// Splits elements `first..first + len` into runs that share a group and calls `f` with
    /// each group and the run's positions relative to `first`.
    pub fn runs(&self, first: usize, len: usize, mut f: impl FnMut(usize, std::ops::Range<usize>)) {
        let span = match *self {
            Geometry::Tensor => {
                if len > 0 {
                    f(0, 0..len);
                }
                return;
            }
            Geometry::Channels { inner, .. } => inner.max(1),
            Geometry::Blocks { size, .. } => size.max(1),
        };
        let mut i = 0;
        while i < len {
            let g = first + i;
            let end = len.min(i + (span - g % span));
            f(self.group_of(g), i..end);
            i = end;
        }
    }

    /// The range of each group's values, for a whole tensor.
    pub fn ranges(&self, values: &[f32]) -> Vec<Range> {
        match *self {
            Geometry::Tensor => vec![quant::scan_range_par(values)],
            Geometry::Channels {
                channels, inner, ..
            } => channel_ranges(values, channels, inner),
            Geometry::Blocks { size, .. } => values
                .par_chunks(size.max(1))
                .map(quant::scan_range)
                .collect(),
        }
    }
}

/// Range of each channel of a tensor viewed as `[outer, channels, inner]`.
fn channel_ranges(values: &[f32], channels: usize, inner: usize) -> Vec<Range> {
    use ndarray::{ArrayView3, Axis};
    let slab = channels * inner;
    if slab == 0 || values.is_empty() {
        return vec![Range::EMPTY; channels];
    }
    let merge_all = |mut a: Vec<Range>, b: Vec<Range>| {
        for (x, y) in a.iter_mut().zip(b) {
            *x = x.merge(y);
        }
        a
    };
    // Whole slabs only: the shape was checked against the buffer when the model was read.
    values
        .par_chunks(slab * (quant::CHUNK / slab).max(1))
        .map(|part| {
            let outer = part.len() / slab;
            let Ok(view) = ArrayView3::from_shape((outer, channels, inner), &part[..outer * slab])
            else {
                return vec![Range::EMPTY; channels];
            };
            let mut r = vec![Range::EMPTY; channels];
            if inner == 1 {
                // Last-axis channels (depthwise filters): fold row by row.
                for row in view.index_axis(Axis(2), 0).rows() {
                    for (c, &x) in r.iter_mut().zip(row) {
                        *c = c.merge(quant::scan_range(std::slice::from_ref(&x)));
                    }
                }
            } else {
                for (c, lanes) in r.iter_mut().zip(view.axis_iter(Axis(1))) {
                    for lane in lanes.rows() {
                        // Rows of one channel are contiguous runs of `inner` values.
                        let run = lane
                            .to_slice()
                            .map_or_else(|| quant::scan_range(&lane.to_vec()), quant::scan_range);
                        *c = c.merge(run);
                    }
                }
            }
            r
        })
        .reduce(|| vec![Range::EMPTY; channels], merge_all)
}

/// Width of the integer codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Bits {
    /// One signed byte per element.
    Eight,
    /// Two signed nibbles per byte, element 0 in the low nibble (TensorType INT4).
    Four,
    /// Four signed 2-bit codes per byte, element 0 in the low bits (TensorType INT2).
    Two,
}

impl Bits {
    /// The tensor type the codes are stored as.
    pub fn dtype(self) -> DType {
        match self {
            Bits::Eight => DType::INT8,
            Bits::Four => DType::INT4,
            Bits::Two => DType::INT2,
        }
    }

    /// Bits per code.
    pub fn width(self) -> u32 {
        match self {
            Bits::Eight => 8,
            Bits::Four => 4,
            Bits::Two => 2,
        }
    }

    /// Codes per byte.
    pub fn per_byte(self) -> usize {
        8 / self.width() as usize
    }

    /// Bytes that `n` packed codes take: `ceil(n * bits / 8)`.
    pub fn bytes_for(self, n: u64) -> u64 {
        n.div_ceil(self.per_byte() as u64)
    }

    /// Lower-case name: `int8`, `int4`, `int2`.
    pub fn name(self) -> &'static str {
        match self {
            Bits::Eight => "int8",
            Bits::Four => "int4",
            Bits::Two => "int2",
        }
    }

    /// The code of element `index` of packed `bytes`, sign-extended.
    #[inline]
    pub fn code(self, bytes: &[u8], index: usize) -> i8 {
        match self {
            Bits::Eight => bytes[index] as i8,
            _ => {
                let w = self.width();
                let per = self.per_byte();
                let shift = (index % per) as u32 * w;
                // Move the code to the top bits, then shift back arithmetically.
                ((bytes[index / per] >> shift) << (8 - w)) as i8 >> (8 - w)
            }
        }
    }
}

/// Packs signed `codes` (each in range for `bits`) into `out`, low bits first; a last byte
/// that is not full has zero high bits.
pub fn pack(bits: Bits, codes: &[i8], out: &mut [u8]) {
    match bits {
        Bits::Eight => out.copy_from_slice(bytemuck::cast_slice(codes)),
        // Whole bytes in a loop the compiler vectorises, then the last, partial byte.
        Bits::Four => {
            let pairs = codes.chunks_exact(2);
            let rest = pairs.remainder();
            for (o, pair) in out.iter_mut().zip(pairs) {
                *o = (pair[0] as u8 & 0x0F) | ((pair[1] as u8) << 4);
            }
            if let (Some(o), [last]) = (out.get_mut(codes.len() / 2), rest) {
                *o = *last as u8 & 0x0F;
            }
        }
        Bits::Two => {
            let quads = codes.chunks_exact(4);
            let rest = quads.remainder();
            for (o, q) in out.iter_mut().zip(quads) {
                *o = (q[0] as u8 & 3)
                    | ((q[1] as u8 & 3) << 2)
                    | ((q[2] as u8 & 3) << 4)
                    | ((q[3] as u8) << 6);
            }
            if let Some(o) = out.get_mut(codes.len() / 4).filter(|_| !rest.is_empty()) {
                *o = rest
                    .iter()
                    .enumerate()
                    .fold(0u8, |b, (k, &c)| b | ((c as u8 & 3) << (2 * k)));
            }
        }
    }
}

/// Unpacks `n` codes of `bytes`.
pub fn unpack(bits: Bits, bytes: &[u8], n: usize) -> Vec<i8> {
    (0..n).map(|i| bits.code(bytes, i)).collect()
}

/// Integer codes with their parameters.
#[derive(Debug, Clone, PartialEq)]
pub struct Codes {
    /// Width of each code.
    pub bits: Bits,
    /// Which parameters each element uses.
    pub geometry: Geometry,
    /// One set of parameters per group of the geometry.
    pub params: Vec<QuantParams>,
}

/// How one buffer's float32 values are stored in the output.
#[derive(Debug, Clone, PartialEq)]
pub enum Encoding {
    /// Integer codes with scales and zero points.
    Int(Codes),
    /// IEEE half precision; values beyond ±65504 are clamped to it, never infinity.
    Float16,
}

/// The quantization parameters to write into a tensor, in our own terms.
#[derive(Debug, Clone, PartialEq)]
pub struct QuantSpec {
    /// One scale per group (empty when blockwise: the scales are a tensor of their own).
    pub scales: Vec<f32>,
    /// One zero point per group (empty when blockwise).
    pub zero_points: Vec<i64>,
    /// The quantized dimension (0 when per-tensor or blockwise).
    pub axis: usize,
    /// Blockwise parameters, which need a second tensor.
    pub blocks: Option<BlockScales>,
}

/// The scales of a blockwise tensor: a FLOAT16 tensor of shape `shape` (`[N, K / size]`
/// for a `[N, K]` weight) with no zero points.
#[derive(Debug, Clone, PartialEq)]
pub struct BlockScales {
    /// Elements per block.
    pub size: usize,
    /// Shape of the scale tensor.
    pub shape: Vec<usize>,
    /// The scales, row-major, as float16 bytes (little-endian).
    pub bytes: Vec<u8>,
}

/// Largest finite float16 value.
pub const F16_MAX: f32 = 65504.0;

impl Encoding {
    /// Int8 codes with one set of parameters for the whole tensor.
    pub fn int8(p: QuantParams) -> Encoding {
        Encoding::Int(Codes {
            bits: Bits::Eight,
            geometry: Geometry::Tensor,
            params: vec![p],
        })
    }

    /// Int8 codes with one set of parameters per channel of `geometry`.
    pub fn int8_channels(geometry: Geometry, params: Vec<QuantParams>) -> Encoding {
        Encoding::Int(Codes {
            bits: Bits::Eight,
            geometry,
            params,
        })
    }

    /// The element type of the stored tensor.
    pub fn dtype(&self) -> DType {
        match self {
            Encoding::Int(c) => c.bits.dtype(),
            Encoding::Float16 => DType::FLOAT16,
        }
    }

    /// Integer codes of `bits` with one set of parameters per group of `geometry`.
    pub fn int(bits: Bits, geometry: Geometry, params: Vec<QuantParams>) -> Encoding {
        Encoding::Int(Codes {
            bits,
            geometry,
            params,
        })
    }

    /// Bytes that `n` encoded elements take.
    pub fn bytes_for(&self, n: u64) -> u64 {
        match self {
            Encoding::Int(c) => c.bits.bytes_for(n),
            Encoding::Float16 => 2 * n,
        }
    }

    /// Elements per byte boundary: a run encoded on its own must start at a multiple of it.
    pub fn alignment(&self) -> usize {
        match self {
            Encoding::Int(c) => c.bits.per_byte(),
            Encoding::Float16 => 1,
        }
    }

    /// The block size of a blockwise encoding.
    pub fn block_size(&self) -> Option<usize> {
        match self {
            Encoding::Int(Codes {
                geometry: Geometry::Blocks { size, .. },
                ..
            }) => Some(*size),
            _ => None,
        }
    }

    /// The integer codes, if any.
    pub fn codes(&self) -> Option<&Codes> {
        match self {
            Encoding::Int(c) => Some(c),
            Encoding::Float16 => None,
        }
    }

    /// The one set of parameters of a per-tensor encoding.
    pub fn per_tensor(&self) -> Option<QuantParams> {
        match self {
            Encoding::Int(c) if c.geometry == Geometry::Tensor => c.params.first().copied(),
            _ => None,
        }
    }

    /// Axis and channel count of a per-channel encoding.
    pub fn channels(&self) -> Option<(usize, usize)> {
        match self {
            Encoding::Int(Codes {
                geometry: Geometry::Channels { axis, channels, .. },
                ..
            }) => Some((*axis, *channels)),
            _ => None,
        }
    }

    /// Stable name used in summaries: `int8`, `int8_per_channel`, `int4_blockwise`, ...,
    /// or `float16`.
    pub fn name(&self) -> &'static str {
        match self {
            Encoding::Float16 => "float16",
            Encoding::Int(c) => match (c.bits, c.geometry) {
                (Bits::Eight, Geometry::Tensor) => "int8",
                (Bits::Eight, Geometry::Channels { .. }) => "int8_per_channel",
                (Bits::Eight, Geometry::Blocks { .. }) => "int8_blockwise",
                (Bits::Four, Geometry::Tensor) => "int4",
                (Bits::Four, Geometry::Channels { .. }) => "int4_per_channel",
                (Bits::Four, Geometry::Blocks { .. }) => "int4_blockwise",
                (Bits::Two, Geometry::Tensor) => "int2",
                (Bits::Two, Geometry::Channels { .. }) => "int2_per_channel",
                (Bits::Two, Geometry::Blocks { .. }) => "int2_blockwise",
            },
        }
    }

    /// Suffix of the name of the stored twin of a float tensor.
    pub fn suffix(&self) -> &'static str {
        match self {
            Encoding::Float16 => "fp16",
            Encoding::Int(c) => c.bits.name(),
        }
    }

    /// The DEQUANTIZE version the converter writes for this input (its op-version rules):
    /// 2 for int8, 3 for float16, 5 for per-channel int8, 6 for int4 and int2.
    pub fn dequantize_version(&self) -> i32 {
        match self {
            Encoding::Float16 => 3,
            Encoding::Int(c) => match (c.bits, c.geometry) {
                (Bits::Four | Bits::Two, _) => 6,
                (Bits::Eight, Geometry::Tensor) => 2,
                (Bits::Eight, _) => 5,
            },
        }
    }

    /// The quantization parameters to write (none for float16).
    pub fn quant_spec(&self) -> Option<QuantSpec> {
        let c = self.codes()?;
        if let Geometry::Blocks { size, count } = c.geometry {
            let mut bytes = Vec::with_capacity(2 * count);
            for p in &c.params {
                bytes.extend_from_slice(&half::f16::from_f32(p.scale).to_le_bytes());
            }
            return Some(QuantSpec {
                scales: Vec::new(),
                zero_points: Vec::new(),
                axis: 0,
                blocks: Some(BlockScales {
                    size,
                    shape: Vec::new(),
                    bytes,
                }),
            });
        }
        Some(QuantSpec {
            scales: c.params.iter().map(|p| p.scale).collect(),
            zero_points: c.params.iter().map(|p| i64::from(p.zero_point)).collect(),
            axis: match c.geometry {
                Geometry::Channels { axis, .. } => axis,
                _ => 0,
            },
            blocks: None,
        })
    }

    /// [`Encoding::quant_spec`] for a tensor of dimensions `dims`: a blockwise scale tensor
    /// gets the shape `[dims[..-1], last / size]`.
    pub fn quant_spec_for(&self, dims: &[usize]) -> Option<QuantSpec> {
        let mut spec = self.quant_spec()?;
        if let Some(b) = spec.blocks.as_mut() {
            let mut shape = dims.to_vec();
            if let Some(last) = shape.last_mut() {
                *last /= b.size.max(1);
            }
            b.shape = shape;
        }
        Some(spec)
    }

    /// Encodes `values`, elements `first..first + values.len()` of the tensor, into `out`
    /// (`bytes_for(values.len())` bytes) and measures the error.
    ///
    /// For sub-byte codes `first` must be a multiple of [`Encoding::alignment`], so that
    /// the run starts on a byte.
    pub fn encode(&self, values: &[f32], first: usize, out: &mut [u8]) -> ErrorStats {
        self.encode_in(values, first, out, &mut Scratch::new())
    }

    /// [`Encoding::encode`] with the caller's [`Scratch`].
    fn encode_in(
        &self,
        values: &[f32],
        first: usize,
        out: &mut [u8],
        scratch: &mut Scratch,
    ) -> ErrorStats {
        match self {
            Encoding::Int(c) if c.bits == Bits::Eight => {
                let codes: &mut [i8] = bytemuck::cast_slice_mut(out);
                let mut stats = ErrorStats::default();
                c.geometry.runs(first, values.len(), |g, r| {
                    let s = quant::quantize_measured(
                        &values[r.clone()],
                        c.params[g],
                        &mut codes[r],
                        &mut scratch.recon,
                    );
                    stats = stats.merge(s);
                });
                stats
            }
            Encoding::Int(c) => {
                debug_assert_eq!(first % c.bits.per_byte(), 0);
                // Quantize a run into bytes of the scratch, then pack it; runs are a whole
                // number of bytes (RUN is a multiple of 4).
                // The error sums run once per piece, not per group: blocks are short.
                let Scratch { codes, recon } = scratch;
                let mut stats = ErrorStats::default();
                let per = c.bits.per_byte();
                for (k, (xs, os)) in values
                    .chunks(quant::RUN)
                    .zip(out.chunks_mut(quant::RUN / per))
                    .enumerate()
                {
                    let qs = &mut codes[..xs.len()];
                    let ys = &mut recon[..xs.len()];
                    c.geometry.runs(first + k * quant::RUN, xs.len(), |g, r| {
                        quant::quantize_recon(
                            &xs[r.clone()],
                            c.params[g],
                            &mut qs[r.clone()],
                            &mut ys[r],
                        );
                    });
                    stats = stats.merge(quant::sums(xs, ys));
                    pack(c.bits, qs, os);
                }
                stats
            }
            Encoding::Float16 => encode_f16(values, out),
        }
    }

    /// [`Encoding::encode`] over all cores.
    pub fn encode_par(&self, values: &[f32], first: usize, out: &mut [u8]) -> ErrorStats {
        self.par(values, first, out, None)
    }

    /// [`Encoding::encode_par`] of `values` as changed by `prepare(at, piece, buffer)`, which
    /// writes the values to encode for each piece of [`quant::CHUNK`] elements (elements
    /// `at..` of the tensor) into a buffer small enough to stay in cache while it is encoded.
    pub fn encode_par_prepared(
        &self,
        values: &[f32],
        first: usize,
        out: &mut [u8],
        prepare: &Prepare<'_>,
    ) -> ErrorStats {
        self.par(values, first, out, Some(prepare))
    }

    /// [`Encoding::encode_par_prepared`] (or [`Encoding::encode_par`] without `prepare`) on
    /// this thread alone, chunk by chunk as those split the work: the same codes and sums.
    /// For callers that run one block per thread themselves (the rewriter's writer).
    pub fn encode_chunks(
        &self,
        values: &[f32],
        first: usize,
        out: &mut [u8],
        prepare: Option<&Prepare<'_>>,
    ) -> ErrorStats {
        let size = self.bytes_for(quant::CHUNK as u64) as usize;
        let (mut prepared, mut scratch) = (Vec::new(), Box::new(Scratch::new()));
        let chunks = values.chunks(quant::CHUNK).zip(out.chunks_mut(size));
        chunks
            .enumerate()
            .fold(ErrorStats::default(), |stats, (k, (xs, os))| {
                let at = first + k * quant::CHUNK;
                stats.merge(self.encode_chunk(xs, at, os, prepare, &mut prepared, &mut scratch))
            })
    }

    fn par(
        &self,
        values: &[f32],
        first: usize,
        out: &mut [u8],
        prepare: Option<&Prepare<'_>>,
    ) -> ErrorStats {
        let size = self.bytes_for(quant::CHUNK as u64) as usize;
        values
            .par_chunks(quant::CHUNK)
            .zip(out.par_chunks_mut(size))
            .enumerate()
            .map_init(
                || (Vec::new(), Box::new(Scratch::new())),
                |(prepared, scratch), (k, (xs, os))| {
                    let at = first + k * quant::CHUNK;
                    self.encode_chunk(xs, at, os, prepare, prepared, scratch)
                },
            )
            .reduce(ErrorStats::default, ErrorStats::merge)
    }

    /// One chunk of [`Encoding::par`] or [`Encoding::encode_chunks`]: elements `at..` of
    /// the tensor, prepared first when `prepare` is given.
    fn encode_chunk(
        &self,
        xs: &[f32],
        at: usize,
        os: &mut [u8],
        prepare: Option<&Prepare<'_>>,
        prepared: &mut Vec<f32>,
        scratch: &mut Scratch,
    ) -> ErrorStats {
        match prepare {
            None => self.encode_in(xs, at, os, scratch),
            // Piece by piece of RUN elements: each is made and encoded while in L1, so
            // reading the input overlaps the arithmetic. The encoder measures in such pieces
            // anyway, so the error sums are the same, except for int8 runs of channels or
            // blocks, which it measures from their own starts.
            Some(prepare) if !self.measures_from_group_starts() => {
                let per = self.bytes_for(quant::RUN as u64) as usize;
                let mut stats = ErrorStats::default();
                for (j, (p, o)) in xs.chunks(quant::RUN).zip(os.chunks_mut(per)).enumerate() {
                    let at = at + j * quant::RUN;
                    prepare(at, p, prepared);
                    stats = stats.merge(self.encode_in(prepared, at, o, scratch));
                }
                stats
            }
            Some(prepare) => {
                prepare(at, xs, prepared);
                self.encode_in(prepared, at, os, scratch)
            }
        }
    }

    /// Int8 codes of channels or blocks: [`Encoding::encode`] sums the error in pieces that
    /// start where each group starts, not every [`quant::RUN`] elements.
    fn measures_from_group_starts(&self) -> bool {
        matches!(self, Encoding::Int(c) if c.bits == Bits::Eight && !matches!(c.geometry, Geometry::Tensor))
    }

    /// The value the encoded element `index` of `bytes` stands for.
    pub fn decode(&self, bytes: &[u8], index: usize) -> f32 {
        match self {
            Encoding::Int(c) => quant::dequantize(
                c.bits.code(bytes, index),
                c.params[c.geometry.group_of(index)],
            ),
            Encoding::Float16 => {
                half::f16::from_le_bytes([bytes[2 * index], bytes[2 * index + 1]]).to_f32()
            }
        }
    }
}

/// Makes the values to encode of a piece (elements `at..` of the tensor) from the piece, in
/// a buffer: see [`Encoding::encode_par_prepared`].
pub type Prepare<'a> = dyn Fn(usize, &[f32], &mut Vec<f32>) + Sync + 'a;

/// Room an encoder reuses from one piece to the next: a worker's, so that it is not zeroed
/// for every piece (a run's 5 KiB for every 4 KiB of values, when encoding run by run).
struct Scratch {
    codes: [i8; quant::RUN],
    recon: [f32; quant::RUN],
}

impl Scratch {
    fn new() -> Scratch {
        Scratch {
            codes: [0; quant::RUN],
            recon: [0.0; quant::RUN],
        }
    }
}

impl Codes {
    /// Every zero point is 0.
    pub fn symmetric(&self) -> bool {
        self.params.iter().all(|p| p.zero_point == 0)
    }

    /// The group with the largest scale, and its parameters.
    pub fn widest(&self) -> (usize, QuantParams) {
        let mut best = (0, self.params[0]);
        for (c, p) in self.params.iter().enumerate() {
            if p.scale > best.1.scale {
                best = (c, *p);
            }
        }
        best
    }

    /// Error statistics of `codes` (elements `first..` of the tensor) against `values`.
    pub fn error_stats(&self, values: &[f32], codes: &[i8], first: usize) -> ErrorStats {
        let mut total = ErrorStats::default();
        let n = values.len().min(codes.len());
        self.geometry.runs(first, n, |g, r| {
            total = total.merge(quant::error_stats(
                &values[r.clone()],
                &codes[r],
                self.params[g],
            ));
        });
        total
    }
}

/// Float16 encoding, run by run: clamp, convert the whole run (half's slice conversion uses
/// the F16C instructions when the CPU has them, else the same rounding in software), convert
/// back for the reconstruction, and measure in lanes.
fn encode_f16(values: &[f32], out: &mut [u8]) -> ErrorStats {
    use half::slice::HalfFloatSliceExt;
    const RUN: usize = quant::RUN;
    let mut clamped = [0f32; RUN];
    let mut halves = [half::f16::ZERO; RUN];
    let mut recon = [0f32; RUN];
    let mut stats = ErrorStats::default();
    for (xs, os) in values.chunks(RUN).zip(out.chunks_mut(2 * RUN)) {
        let n = xs.len().min(os.len() / 2);
        let (xs, cs) = (&xs[..n], &mut clamped[..n]);
        for (c, &x) in cs.iter_mut().zip(xs) {
            *c = x.clamp(-F16_MAX, F16_MAX);
        }
        halves[..n].convert_from_f32_slice(cs);
        halves[..n].convert_to_f32_slice(&mut recon[..n]);
        for (o, h) in os.chunks_exact_mut(2).zip(&halves[..n]) {
            o.copy_from_slice(&h.to_le_bytes());
        }
        stats = stats.merge(quant::sums(xs, &recon[..n]));
    }
    stats
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::{asymmetric_params, error_stats, quantize_into};
    use ndarray::{ArrayView, Axis, IxDyn};
    use proptest::prelude::*;

    fn p(scale: f32) -> QuantParams {
        QuantParams {
            scale,
            zero_point: 0,
            qmin: -128,
            qmax: 127,
        }
    }

    #[test]
    fn per_channel_stats_use_each_channel_s_parameters() {
        // Shape [2, 3] quantized along axis 1 (inner 1) and along axis 0 (inner 3).
        let values = [1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0];
        let codes = [1i8, 1, 1, 2, 2, 2];
        let cols = Codes {
            bits: Bits::Eight,
            geometry: Geometry::channels(&[2, 3], 1),
            params: vec![p(1.0), p(2.0), p(3.0)],
        };
        let s = cols.error_stats(&values, &codes, 0);
        // Reconstruction 1, 2, 3, 2, 4, 6: errors 0, 0, 0, 2, 1, 0.
        assert_eq!((s.count, s.noise, s.max_abs), (6, 5.0, 2.0));
        let rows = Codes {
            geometry: Geometry::channels(&[2, 3], 0),
            params: vec![p(1.0), p(2.5)],
            ..cols.clone()
        };
        let s = rows.error_stats(&values, &codes, 0);
        // Reconstruction 1, 1, 1, 5, 5, 5: errors 0, 1, 2, 1, 0, 1.
        assert_eq!((s.noise, s.max_abs), (7.0, 2.0));
        // A block that starts mid-channel: elements 4 and 5 are in row 1.
        let s = rows.error_stats(&values[4..], &codes[4..], 4);
        assert_eq!((s.noise, s.max_abs), (1.0, 1.0));
        let one = Codes {
            geometry: Geometry::Tensor,
            params: vec![p(1.0)],
            ..cols
        };
        assert_eq!(
            one.error_stats(&values, &codes, 0),
            error_stats(&values, &codes, p(1.0))
        );
    }

    /// Per-channel encoding equals per-tensor encoding of each channel's own slice, for any
    /// axis and any block start (the streaming writer starts blocks anywhere). The reference
    /// finds each element's channel with an ndarray view, not with the geometry's arithmetic.
    #[test]
    fn per_channel_is_per_tensor_on_each_channel() {
        let dims = [3usize, 4, 5];
        let values: Vec<f32> = (0..60)
            .map(|i| ((i * 37 % 61) as f32 - 30.0) * (1.0 + (i % 4) as f32))
            .collect();
        let view = ArrayView::from_shape(IxDyn(&dims), &values).unwrap();
        for axis in 0..3 {
            let g = Geometry::channels(&dims, axis);
            let ranges = g.ranges(&values);
            let params: Vec<_> = ranges
                .iter()
                .map(|r| asymmetric_params(r.min, r.max))
                .collect();
            let e = Encoding::int8_channels(g, params.clone());
            let mut whole = vec![0u8; 60];
            e.encode(&values, 0, &mut whole);
            let mut pieces = vec![0u8; 60];
            for (start, end) in [(0, 7), (7, 33), (33, 60)] {
                e.encode(&values[start..end], start, &mut pieces[start..end]);
            }
            assert_eq!(whole, pieces, "axis {axis}");
            let coded = ArrayView::from_shape(IxDyn(&dims), &whole).unwrap();
            for (c, (xs, qs)) in view
                .axis_iter(Axis(axis))
                .zip(coded.axis_iter(Axis(axis)))
                .enumerate()
            {
                let lo = xs.iter().copied().fold(f32::INFINITY, f32::min);
                let hi = xs.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                assert_eq!((ranges[c].min, ranges[c].max), (lo, hi), "axis {axis}");
                for (&x, &q) in xs.iter().zip(qs.iter()) {
                    let mut want = [0i8];
                    quantize_into(&[x], params[c], &mut want);
                    assert_eq!(q as i8, want[0], "axis {axis} channel {c}");
                }
            }
            for (i, &x) in values.iter().enumerate() {
                let c = g.group_of(i);
                assert!((e.decode(&whole, i) - x).abs() <= params[c].scale * 0.5001);
            }
        }
    }

    #[test]
    fn float16_clamps_instead_of_overflowing() {
        let values = [1e6f32, -1e9, 1.0, 65504.0, 1e-8];
        let mut out = [0u8; 10];
        let stats = Encoding::Float16.encode(&values, 0, &mut out);
        let back: Vec<f32> = (0..5).map(|i| Encoding::Float16.decode(&out, i)).collect();
        assert_eq!(&back[..4], &[65504.0, -65504.0, 1.0, 65504.0]);
        assert!(back.iter().all(|v| v.is_finite()));
        assert_eq!(stats.count, 5);
    }

    #[test]
    fn sizes_names_and_parameters() {
        let e = Encoding::int8(p(0.5));
        assert_eq!(
            (e.bytes_for(10), e.dtype(), e.name()),
            (10, DType::INT8, "int8")
        );
        assert_eq!(
            e.quant_spec(),
            Some(QuantSpec {
                scales: vec![0.5],
                zero_points: vec![0],
                axis: 0,
                blocks: None,
            })
        );
        let c = Encoding::int8_channels(Geometry::channels(&[4, 2], 1), vec![p(1.0), p(2.0)]);
        assert_eq!(
            (c.name(), c.dequantize_version(), c.channels()),
            ("int8_per_channel", 5, Some((1, 2)))
        );
        assert_eq!(c.quant_spec().unwrap().axis, 1);
        assert_eq!(Encoding::Float16.bytes_for(3), 6);
        assert_eq!(Encoding::Float16.quant_spec(), None);
    }

    #[test]
    fn int4_packs_low_nibble_first_and_sign_extends() {
        let codes = [1i8, -2, 7, -8, 3];
        let mut out = [0u8; 3];
        pack(Bits::Four, &codes, &mut out);
        // 1 | (-2 & 15) << 4 = 0xE1; 7 | 8 << 4 = 0x87; 3 then a zero high nibble.
        assert_eq!(out, [0xE1, 0x87, 0x03]);
        assert_eq!(unpack(Bits::Four, &out, 5), codes);
        let two = [1i8, -1, -2, 0, 1];
        let mut out = [0u8; 2];
        pack(Bits::Two, &two, &mut out);
        // 01 | 11 << 2 | 10 << 4 | 00 << 6 = 0b0010_1101; then 01.
        assert_eq!(out, [0b0010_1101, 0b01]);
        assert_eq!(unpack(Bits::Two, &out, 5), two);
        assert_eq!((Bits::Four.bytes_for(5), Bits::Two.bytes_for(5)), (3, 2));
    }

    #[test]
    fn sub_byte_sizes_names_and_parameters() {
        let q = QuantParams {
            scale: 0.5,
            zero_point: 0,
            qmin: -7,
            qmax: 7,
        };
        let e = Encoding::int(Bits::Four, Geometry::Tensor, vec![q]);
        assert_eq!(
            (e.bytes_for(7), e.dtype(), e.name(), e.suffix()),
            (4, DType::INT4, "int4", "int4")
        );
        assert_eq!(e.dequantize_version(), 6);
        let g = Geometry::blocks(&[2, 64], 32).unwrap();
        assert_eq!(g, Geometry::Blocks { size: 32, count: 4 });
        assert_eq!(Geometry::blocks(&[2, 48], 32), None);
        let params: Vec<_> = [0.5f32, 0.25, 1.0, 2.0]
            .iter()
            .map(|&scale| QuantParams { scale, ..q })
            .collect();
        let b = Encoding::int(Bits::Four, g, params);
        assert_eq!((b.name(), b.block_size()), ("int4_blockwise", Some(32)));
        let spec = b.quant_spec_for(&[2, 64]).unwrap();
        assert!(spec.scales.is_empty() && spec.zero_points.is_empty());
        let blocks = spec.blocks.unwrap();
        assert_eq!((blocks.size, blocks.shape.clone()), (32, vec![2, 2]));
        // float16 0.5, 0.25, 1.0, 2.0: 0x3800, 0x3400, 0x3C00, 0x4000, little-endian.
        assert_eq!(blocks.bytes, [0, 0x38, 0, 0x34, 0, 0x3C, 0, 0x40]);
        // Element 33 is in block 1 (row 0, second block); element 64 in block 2.
        assert_eq!((g.group_of(33), g.group_of(64)), (1, 2));
    }

    /// The parallel encoder (chunks of 65536 elements) and a split at a streaming-block
    /// boundary give the bytes of one serial pass, for odd lengths too.
    #[test]
    fn int4_parallel_and_split_encodings_agree() {
        let n = 3 * quant::CHUNK + 12_345;
        let values: Vec<f32> = (0..n)
            .map(|i| ((i * 7919 % 1001) as f32 - 500.0) / 50.0)
            .collect();
        let geometry = Geometry::blocks(&[n / 3, 3], 3).unwrap();
        let params: Vec<_> = geometry
            .ranges(&values)
            .iter()
            .map(|r| quant::asymmetric_params_bits(r.min, r.max, 4))
            .collect();
        for e in [
            Encoding::int(Bits::Four, geometry, params),
            Encoding::int(
                Bits::Four,
                Geometry::Tensor,
                vec![quant::asymmetric_params_bits(-10.0, 10.0, 4)],
            ),
        ] {
            let size = e.bytes_for(n as u64) as usize;
            let (mut serial, mut par, mut split) =
                (vec![0u8; size], vec![0u8; size], vec![0u8; size]);
            let a = e.encode(&values, 0, &mut serial);
            let b = e.encode_par(&values, 0, &mut par);
            let cut = 2 * quant::CHUNK;
            e.encode_par(&values[..cut], 0, &mut split[..cut / 2]);
            e.encode_par(&values[cut..], cut, &mut split[cut / 2..]);
            assert_eq!(serial, par);
            assert_eq!(serial, split);
            assert_eq!(a.count, b.count);
            assert!((a.noise - b.noise).abs() <= 1e-9 * a.noise);
        }
    }

    proptest! {
        /// Packing round-trips any codes in range, for any count (odd ones included), and
        /// element i sits in byte i / per_byte at bit (i % per_byte) * width.
        #[test]
        fn packing_round_trips(
            raw in prop::collection::vec(any::<i8>(), 0..300),
            four in any::<bool>(),
        ) {
            let bits = if four { Bits::Four } else { Bits::Two };
            let w = bits.width();
            let lo = -(1i8 << (w - 1));
            let codes: Vec<i8> = raw
                .iter()
                .map(|&c| (c.rem_euclid(1 << w)) + lo)
                .collect();
            let mut out = vec![0u8; bits.bytes_for(codes.len() as u64) as usize];
            pack(bits, &codes, &mut out);
            prop_assert_eq!(unpack(bits, &out, codes.len()), codes.clone());
            let per = bits.per_byte();
            for (i, &c) in codes.iter().enumerate() {
                let field = (out[i / per] >> ((i % per) as u32 * w)) & ((1u8 << w) - 1);
                prop_assert_eq!(field, (c as u8) & ((1u8 << w) - 1));
            }
        }

        /// Sub-byte encoding, whole or in byte-aligned pieces, per tensor, per channel or
        /// per block: every value comes back within half a step of its group (no clipping
        /// with min-max parameters), and the pieces give the same bytes as the whole.
        #[test]
        fn every_sub_byte_value_within_half_a_step(
            values in prop::collection::vec(-100f32..100.0, 1..400),
            four in any::<bool>(),
            kind in 0usize..3,
            cut in 0usize..200,
        ) {
            let bits = if four { Bits::Four } else { Bits::Two };
            let w = bits.width();
            let n = values.len() / 32 * 32;
            let (values, geometry) = match kind {
                0 => (&values[..], Geometry::Tensor),
                1 => (&values[..], Geometry::channels(&[1, values.len()], 0)),
                _ if n > 0 => (&values[..n], Geometry::blocks(&[n / 32, 32], 32).unwrap()),
                _ => (&values[..], Geometry::Tensor),
            };
            let params: Vec<QuantParams> = match geometry {
                Geometry::Blocks { .. } => geometry
                    .ranges(values)
                    .iter()
                    .map(|r| {
                        let s = quant::block_scale(r.min.abs().max(r.max.abs()), w).unwrap();
                        let qmax = (1 << (w - 1)) - 1;
                        QuantParams { scale: s, zero_point: 0, qmin: -qmax, qmax }
                    })
                    .collect(),
                _ => geometry
                    .ranges(values)
                    .iter()
                    .map(|r| quant::asymmetric_params_bits(r.min, r.max, w))
                    .collect(),
            };
            let e = Encoding::int(bits, geometry, params.clone());
            let size = e.bytes_for(values.len() as u64) as usize;
            let mut whole = vec![0u8; size];
            let stats = e.encode(values, 0, &mut whole);
            let per = bits.per_byte();
            let cut = (cut.min(values.len()) / per) * per;
            let mut pieces = vec![0u8; size];
            e.encode(&values[..cut], 0, &mut pieces[..cut / per]);
            e.encode(&values[cut..], cut, &mut pieces[cut / per..]);
            prop_assert_eq!(&whole, &pieces);
            let mut noise = 0f64;
            for (i, &x) in values.iter().enumerate() {
                let p = params[geometry.group_of(i)];
                let y = e.decode(&whole, i);
                prop_assert!((y - x).abs() <= p.scale * 0.5 * 1.0001 + 1e-6,
                    "x {} y {} scale {}", x, y, p.scale);
                let q = i32::from(bits.code(&whole, i));
                prop_assert!(q >= p.qmin && q <= p.qmax);
                noise += (f64::from(x) - f64::from(y)).powi(2);
            }
            prop_assert_eq!(stats.count, values.len() as u64);
            prop_assert!((stats.noise - noise).abs() <= 1e-3 * noise + 1e-6);
        }

        /// Block scales: positive, normal in float16, exact in bfloat16 and float16, and
        /// never so small that the block's largest value needs a code beyond qmax.
        #[test]
        fn block_scales_are_safe_for_both_kernels(amax in prop_oneof![
            0f32..1e-6, 1e-6f32..1.0, 1.0f32..1000.0, Just(0.0), Just(65504.0 * 7.0 * 1.5)
        ]) {
            match quant::block_scale(amax, 4) {
                None => prop_assert!(amax / 7.0 > 65000.0),
                Some(s) => {
                    prop_assert!(s >= 6.103_515_6e-5, "{} below the smallest normal float16", s);
                    prop_assert_eq!(s.to_bits() & 0xFFFF, 0);
                    prop_assert_eq!(half::f16::from_f32(s).to_f32(), s);
                    prop_assert!(amax / s <= 7.0 + 1e-6, "{} / {}", amax, s);
                }
            }
        }
    }

    proptest! {
        #[test]
        fn float16_encoding_converts_each_value_alone(
            values in prop::collection::vec(
                prop_oneof![-1e5f32..1e5, -1e-4f32..1e-4, -1e-7f32..1e-7, Just(65504.0),
                    Just(-7e4), Just(f32::MAX), Just(0.0)],
                0..2500,
            ),
        ) {
            let mut out = vec![0u8; 2 * values.len()];
            let stats = Encoding::Float16.encode(&values, 0, &mut out);
            let mut noise = 0f64;
            for (&x, o) in values.iter().zip(out.chunks_exact(2)) {
                let h = half::f16::from_f32(x.clamp(-F16_MAX, F16_MAX));
                prop_assert_eq!(o, &h.to_le_bytes()[..], "x = {}", x);
                noise += (f64::from(x) - f64::from(h.to_f32())).powi(2);
            }
            prop_assert_eq!(stats.count, values.len() as u64);
            prop_assert!((stats.noise - noise).abs() <= 1e-5 * noise, "{} vs {noise}", stats.noise);
        }

        /// Runs cover every element once, in order, each inside one group.
        #[test]
        fn runs_tile_any_span(
            dims in prop::collection::vec(1usize..5, 1..4),
            axis_pick in 0usize..4,
            first in 0usize..50,
            len in 0usize..80,
        ) {
            let axis = axis_pick % dims.len();
            let g = Geometry::channels(&dims, axis);
            let mut next = 0;
            g.runs(first, len, |group, r| {
                assert_eq!(r.start, next);
                assert!(r.end > r.start);
                for i in r.clone() {
                    assert_eq!(g.group_of(first + i), group);
                }
                next = r.end;
            });
            prop_assert_eq!(next, len);
        }
    }
}
