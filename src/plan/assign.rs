//! Plans: one encoding per weight tensor, chosen by the user (`--plan FILE`), by a data-free
//! target (`--target-sqnr DB`) or by `tflq tune`, written as a versioned JSON document.
//!
//! ```json
//! {"tflq_plan": 1,
//!  "tensors": [{"subgraph": 0, "name": "dense/kernel", "buffer": 3, "type": "int4",
//!               "granularity": "per-channel", "symmetric": false, "range": "minmax"}]}
//! ```
//!
//! - `type`: `int8`, `int4`, `int2`, `float16` or `float32` (left as it is);
//! - `granularity`: `per-tensor`, `per-channel` or `block` (with `block_size`: 32, 64, 128 or
//!   256); ignored for `float16` and `float32`;
//! - `symmetric`: zero point 0 (blocks always are; hybrid kernels need it);
//! - `range`: `minmax` or `mse`.
//!
//! A plan applies by (subgraph, tensor name). The buffer index is a check: on a single model
//! a mismatch is an error (the plan was written for another model); in a batch
//! (`tflq quantize DIR -o OUT --plan FILE`) the name alone decides, so one plan serves every
//! model of one architecture whatever its buffer order. A quantizable tensor the plan does
//! not list stays float32. A listed tensor whose readers cannot take its encoding (the
//! planner would fall back) is an error naming the tensor and the rule, never a silent
//! change. Equalization follows the options as without a plan.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{Granularity, Options, RangeMethod, WeightType};
use crate::encoding::{Encoding, Geometry};

/// The version of the plan format this build reads and writes.
pub const VERSION: u32 = 1;

/// A plan document.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlanFile {
    /// Format version ([`VERSION`]).
    pub tflq_plan: u32,
    /// Cross-layer equalization of the pairs whose weights are both int8 per-tensor (as the
    /// run that wrote the plan did; off when absent, and with `--no-equalize`).
    #[serde(default)]
    pub equalize: bool,
    /// One entry per weight tensor.
    pub tensors: Vec<Entry>,
}

/// The encoding of one tensor.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Entry {
    /// Subgraph index.
    pub subgraph: usize,
    /// Tensor name (the key).
    pub name: String,
    /// Buffer index (a check).
    pub buffer: u32,
    /// Storage type.
    #[serde(rename = "type")]
    pub kind: Kind,
    /// Scales per tensor, channel or block (integer types).
    #[serde(default)]
    pub granularity: Grain,
    /// Elements per block, with `block`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub block_size: Option<usize>,
    /// Zero point 0.
    #[serde(default)]
    pub symmetric: bool,
    /// How clipping ranges are chosen.
    #[serde(default)]
    pub range: Range,
}

/// Storage type of a planned tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// 8-bit codes.
    Int8,
    /// 4-bit codes.
    Int4,
    /// 2-bit codes.
    Int2,
    /// Half precision.
    Float16,
    /// Left as it is.
    Float32,
}

/// Granularity of a planned tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Grain {
    /// One scale per tensor.
    #[default]
    PerTensor,
    /// One per output channel.
    PerChannel,
    /// One per block.
    Block,
}

/// Range method of a planned tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Range {
    /// Min-max.
    #[default]
    Minmax,
    /// Least squared error.
    Mse,
}

impl Kind {
    /// The name in plans and summaries.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Int8 => "int8",
            Kind::Int4 => "int4",
            Kind::Int2 => "int2",
            Kind::Float16 => "float16",
            Kind::Float32 => "float32",
        }
    }
}

impl Grain {
    /// The name in plans.
    pub fn name(self) -> &'static str {
        match self {
            Grain::PerTensor => "per-tensor",
            Grain::PerChannel => "per-channel",
            Grain::Block => "block",
        }
    }
}

/// A parsed plan, keyed for lookup.
#[derive(Debug, Clone)]
pub struct Assignment {
    entries: BTreeMap<(usize, String), Entry>,
    /// [`PlanFile::equalize`].
    pub equalize: bool,
    /// A buffer index that differs from the model's is an error (single models); false in
    /// batches, where the name alone decides.
    pub check_buffers: bool,
}

impl Assignment {
    /// Parses and checks a plan document; the error says what is wrong.
    pub fn parse(text: &str) -> Result<Assignment, String> {
        let file: PlanFile = serde_json::from_str(text).map_err(|e| e.to_string())?;
        Assignment::new(file)
    }

    /// Checks a plan document.
    pub fn new(file: PlanFile) -> Result<Assignment, String> {
        if file.tflq_plan != VERSION {
            return Err(format!(
                "plan format version {} (this tflq reads version {VERSION})",
                file.tflq_plan
            ));
        }
        let mut entries = BTreeMap::new();
        for e in file.tensors {
            let int = matches!(e.kind, Kind::Int8 | Kind::Int4 | Kind::Int2);
            if e.granularity == Grain::Block {
                if !matches!(e.kind, Kind::Int4 | Kind::Int2) {
                    return Err(format!(
                        "tensor {:?}: block granularity needs int4 or int2, not {}",
                        e.name,
                        e.kind.name()
                    ));
                }
                match e.block_size {
                    Some(32 | 64 | 128 | 256) => {}
                    Some(n) => {
                        return Err(format!(
                            "tensor {:?}: block_size {n} must be 32, 64, 128 or 256",
                            e.name
                        ));
                    }
                    None => return Err(format!("tensor {:?}: block needs block_size", e.name)),
                }
            } else if e.block_size.is_some() && int {
                return Err(format!(
                    "tensor {:?}: block_size needs granularity block",
                    e.name
                ));
            }
            let key = (e.subgraph, e.name.clone());
            if entries.insert(key, e.clone()).is_some() {
                return Err(format!(
                    "subgraph {} tensor {:?} is listed twice",
                    e.subgraph, e.name
                ));
            }
        }
        Ok(Assignment {
            entries,
            equalize: file.equalize,
            check_buffers: true,
        })
    }

    /// The entry of a tensor, if listed.
    pub fn get(&self, subgraph: usize, name: &str) -> Option<&Entry> {
        self.entries.get(&(subgraph, name.to_owned()))
    }

    /// Whether equalization may rescale the buffer read by `users`: all planned int8
    /// per-tensor.
    pub fn equalizes(
        &self,
        model: &crate::model::Model<'_>,
        users: &[crate::model::TensorRef],
    ) -> bool {
        users.iter().all(|&u| {
            self.get(u.subgraph, &model.tensor(u).name)
                .is_some_and(|e| e.kind == Kind::Int8 && e.granularity == Grain::PerTensor)
        })
    }

    /// Every entry, in (subgraph, name) order.
    pub fn entries(&self) -> impl Iterator<Item = &Entry> {
        self.entries.values()
    }
}

impl Entry {
    /// `opts` with this entry's encoding, or `None` for float32.
    pub fn options(&self, opts: &Options) -> Option<Options> {
        let weight_type = match self.kind {
            Kind::Int8 => WeightType::Int8,
            Kind::Int4 => WeightType::Int4,
            Kind::Int2 => WeightType::Int2,
            Kind::Float16 => WeightType::Float16,
            Kind::Float32 => return None,
        };
        Some(Options {
            weight_type,
            granularity: match self.granularity {
                Grain::PerTensor => Granularity::PerTensor,
                Grain::PerChannel => Granularity::PerChannel,
                Grain::Block => Granularity::Block,
            },
            block_size: self.block_size.unwrap_or(opts.block_size),
            symmetric: self.symmetric,
            range: match self.range {
                Range::Minmax => RangeMethod::Minmax,
                Range::Mse => RangeMethod::Mse,
            },
            ..opts.clone()
        })
    }

    /// Whether `taken` (what the planner made) is what this entry asks for.
    pub fn same_encoding(&self, taken: &Entry) -> bool {
        if self.kind != taken.kind {
            return false;
        }
        match self.kind {
            Kind::Float16 | Kind::Float32 => true,
            _ if self.granularity == Grain::Block => {
                taken.granularity == Grain::Block
                    && taken.block_size == self.block_size
                    && taken.range == self.range
            }
            _ => {
                self.granularity == taken.granularity
                    && self.symmetric == taken.symmetric
                    && self.range == taken.range
            }
        }
    }
}

/// The entry describing `encoding` as made (for `--write-plan`): `searched` when the range
/// was searched for (mse).
pub fn entry_of(
    subgraph: usize,
    name: &str,
    buffer: u32,
    encoding: &Encoding,
    searched: bool,
) -> Entry {
    let mut e = Entry {
        subgraph,
        name: name.to_owned(),
        buffer,
        kind: Kind::Float16,
        granularity: Grain::PerTensor,
        block_size: None,
        symmetric: false,
        range: Range::Minmax,
    };
    let Some(codes) = encoding.codes() else {
        return e;
    };
    e.kind = match codes.bits.width() {
        8 => Kind::Int8,
        4 => Kind::Int4,
        _ => Kind::Int2,
    };
    e.symmetric = codes
        .params
        .iter()
        .all(|p| p.zero_point == 0 && p.qmin == -p.qmax);
    e.range = if searched { Range::Mse } else { Range::Minmax };
    e.granularity = match codes.geometry {
        Geometry::Tensor => Grain::PerTensor,
        Geometry::Blocks { .. } => {
            e.block_size = encoding.block_size();
            Grain::Block
        }
        // Scales repeated from the whole tensor (a hybrid kernel that reads per-channel
        // scales only): per-tensor values.
        Geometry::Channels { .. } if codes.params.windows(2).all(|w| w[0] == w[1]) => {
            Grain::PerTensor
        }
        Geometry::Channels { .. } => Grain::PerChannel,
    };
    e
}

/// The text of an entry's encoding, for messages: `int4 per-channel asymmetric minmax`.
pub fn describe(e: &Entry) -> String {
    match e.kind {
        Kind::Float16 | Kind::Float32 => e.kind.name().to_owned(),
        _ => {
            let grain = match e.block_size {
                Some(n) if e.granularity == Grain::Block => format!("block {n}"),
                _ => e.granularity.name().to_owned(),
            };
            let sym = if e.symmetric {
                "symmetric"
            } else {
                "asymmetric"
            };
            let range = match e.range {
                Range::Minmax => "minmax",
                Range::Mse => "mse",
            };
            format!("{} {grain} {sym} {range}", e.kind.name())
        }
    }
}

/// Encodes one buffer with the given options: the job and whether float16 values were
/// clamped.
pub(super) type EncodeOne<'a> = dyn Fn(&Options) -> (super::BufferJob, bool) + 'a;

/// Plan entries that name no tensor of the model, or a tensor that cannot be quantized.
pub(super) fn check_listed(
    model: &crate::model::Model<'_>,
    selected: &super::select::Selection,
    a: &Assignment,
    conflicts: &mut Vec<String>,
) {
    let mut names: BTreeMap<(usize, &str), usize> = BTreeMap::new();
    for (s, sg) in model.subgraphs().iter().enumerate() {
        for (i, t) in sg.tensors.iter().enumerate() {
            names.entry((s, t.name.as_str())).or_insert(i);
        }
    }
    let candidates: std::collections::BTreeSet<crate::model::TensorRef> =
        selected.candidates.values().flatten().copied().collect();
    for e in a.entries() {
        let Some(&tensor) = names.get(&(e.subgraph, e.name.as_str())) else {
            conflicts.push(format!(
                "the plan lists subgraph {} tensor {:?}, which the model does not have",
                e.subgraph, e.name
            ));
            continue;
        };
        let t = crate::model::TensorRef {
            subgraph: e.subgraph,
            tensor,
        };
        if e.kind == Kind::Float32 || candidates.contains(&t) {
            continue;
        }
        let why = selected.skipped.iter().find(|(r, _)| *r == t).map_or_else(
            || "it is not a constant weight".to_owned(),
            |(_, r)| r.to_string(),
        );
        conflicts.push(format!(
            "subgraph {} tensor {:?}: the plan asks {}, but it cannot be quantized: {why}",
            e.subgraph,
            e.name,
            describe(e)
        ));
    }
}

/// The job of a buffer as the plan says, or why it stays float32. A plan the planner cannot
/// follow exactly adds a conflict.
pub(super) fn planned(
    model: &crate::model::Model<'_>,
    a: &Assignment,
    users: &[crate::model::TensorRef],
    opts: &Options,
    one: &EncodeOne<'_>,
    conflicts: &mut Vec<String>,
) -> Result<(super::BufferJob, bool), String> {
    let mut listed: Vec<(&str, &Entry)> = Vec::new();
    let mut unlisted = Vec::new();
    for &u in users {
        let t = model.tensor(u);
        match a.get(u.subgraph, &t.name) {
            Some(e) => {
                if a.check_buffers && e.buffer != t.buffer {
                    conflicts.push(format!(
                        "subgraph {} tensor {:?}: the plan says buffer {}, the model has buffer {} \
                         (a plan written for another model; in a batch, names alone decide)",
                        u.subgraph, t.name, e.buffer, t.buffer
                    ));
                }
                listed.push((&t.name, e));
            }
            None => unlisted.push(t.name.as_str()),
        }
    }
    let Some(&(first_name, first)) = listed.first() else {
        return Err("not in the plan".to_owned());
    };
    if let Some((name, _)) = listed
        .iter()
        .find(|(_, e)| !e.same_encoding(first) || e.kind != first.kind)
    {
        conflicts.push(format!(
            "tensors {first_name:?} and {name:?} share one buffer, and the plan gives them different encodings"
        ));
        return Err("conflicting plan entries".to_owned());
    }
    if let Some(name) = unlisted.first() {
        conflicts.push(format!(
            "tensors {first_name:?} and {name:?} share one buffer, and the plan lists only the first"
        ));
        return Err("partly listed".to_owned());
    }
    let Some(o) = first.options(opts) else {
        return Err("float32 in the plan".to_owned());
    };
    let (job, clamped) = one(&o);
    let taken = entry_of(0, "", 0, &job.encoding, job.range.is_some());
    if !first.same_encoding(&taken) {
        let rule = job
            .fallback
            .clone()
            .or_else(|| job.per_channel_fallback.clone())
            .unwrap_or_else(|| {
                if first.symmetric != taken.symmetric {
                    "a hybrid kernel reads it directly, and hybrid kernels take symmetric weights only"
                        .to_owned()
                } else {
                    "its hybrid reader's kernel takes only that".to_owned()
                }
            });
        conflicts.push(format!(
            "subgraph {} tensor {first_name:?}: the plan asks {}, but {rule}; it would get {}",
            users[0].subgraph,
            describe(first),
            describe(&taken)
        ));
    }
    Ok((job, clamped))
}

/// The encodings `--target-sqnr` tries, smallest first by nature (sorted by bytes anyway).
fn target_candidates(opts: &Options) -> Vec<Entry> {
    let e = |kind, granularity, block_size| Entry {
        subgraph: 0,
        name: String::new(),
        buffer: 0,
        kind,
        granularity,
        block_size,
        symmetric: opts.symmetric,
        range: match opts.range {
            RangeMethod::Minmax => Range::Minmax,
            RangeMethod::Mse => Range::Mse,
        },
    };
    vec![
        e(Kind::Int2, Grain::PerChannel, None),
        e(Kind::Int4, Grain::PerChannel, None),
        e(Kind::Int4, Grain::Block, Some(32)),
        e(Kind::Int8, Grain::PerTensor, None),
        e(Kind::Int8, Grain::PerChannel, None),
        e(Kind::Float16, Grain::PerTensor, None),
    ]
}

/// The weight SQNR of `data` stored as `encoding`, in dB.
pub fn weight_sqnr(encoding: &Encoding, data: crate::equalize::Values<'_>) -> f64 {
    data.with(|v| {
        let mut out = vec![0u8; encoding.bytes_for(v.len() as u64) as usize];
        encoding.encode_par(v, 0, &mut out).sqnr_db()
    })
}

/// `--target-sqnr`: the smallest encoding the readers take exactly (no fallback) whose
/// weight SQNR reaches `db`, or why the buffer stays float32.
pub(super) fn by_sqnr(
    model: &crate::model::Model<'_>,
    data: crate::equalize::Values<'_>,
    users: &[crate::model::TensorRef],
    opts: &Options,
    db: f64,
    one: &EncodeOne<'_>,
) -> Result<(super::BufferJob, bool), String> {
    let _ = (model, users);
    let mut tried: Vec<(u64, super::BufferJob, bool)> = Vec::new();
    for mut want in target_candidates(opts) {
        let Some(o) = want.options(opts) else {
            continue;
        };
        let (job, clamped) = one(&o);
        let taken = entry_of(0, "", 0, &job.encoding, job.range.is_some());
        // Hybrid kernels make their weights symmetric: not a fallback of the type.
        want.symmetric |= taken.symmetric;
        if !want.same_encoding(&taken) || job.fallback.is_some() {
            continue;
        }
        let params = job.encoding.codes().map_or(0, |c| c.params.len() as u64);
        let bytes = job.stored_bytes() + job.scale_bytes() + 12 * params;
        tried.push((bytes, job, clamped));
    }
    tried.sort_by_key(|(bytes, _, _)| *bytes);
    let mut best = f64::NEG_INFINITY;
    for (_, job, clamped) in tried {
        let sqnr = weight_sqnr(&job.encoding, data);
        if sqnr >= db {
            return Ok((job, clamped));
        }
        best = best.max(sqnr);
    }
    Err(format!(
        "no encoding its readers take reaches {db} dB weight SQNR (best {best:.1} dB)"
    ))
}
