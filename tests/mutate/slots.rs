//! Where the structural bytes of a model are, found once per seed model with the schema code.
//!
//! Blind bit flips mostly land in weight data, which is harmless by design. Mutations aimed
//! at these positions (offsets, vector lengths, vtables, indices, buffer offsets) reach the
//! code that follows them, which is where a reader can crash, hang or allocate too much.

use flatbuffers::{Table, VOffsetT};
use tflq_schema as fb;

/// What the bytes at a position mean.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    /// A table's signed offset to its vtable (i32).
    SOffset,
    /// A u16 entry of a vtable: its size, its table's size, or a field's offset.
    VTableEntry,
    /// A u32 offset to a table, vector or string.
    UOffset,
    /// The u32 element count in front of a vector or string, with the element size.
    VectorLen(u8),
    /// A field of a table whose width the walker does not know (1 to 8 bytes).
    Scalar,
    /// An i32 element of an index or shape vector.
    I32Element,
    /// A u64 `offset` or `size` of a buffer or of large custom options.
    U64Field,
}

/// One position of interest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Slot {
    pub pos: usize,
    pub kind: Kind,
}

/// Every slot of a model, and the positions the offsets point at (to aim offsets elsewhere).
#[derive(Debug, Default, Clone)]
pub struct Slots {
    pub all: Vec<Slot>,
    pub targets: Vec<usize>,
}

struct Walker<'a> {
    buf: &'a [u8],
    out: Slots,
}

fn read_u32(buf: &[u8], pos: usize) -> Option<u32> {
    Some(u32::from_le_bytes(buf.get(pos..pos + 4)?.try_into().ok()?))
}

impl Walker<'_> {
    fn push(&mut self, pos: usize, kind: Kind) {
        if pos < self.buf.len() {
            self.out.all.push(Slot { pos, kind });
        }
    }

    /// The table itself: its vtable pointer, its vtable, every field present.
    fn table(&mut self, t: &Table<'_>) {
        let loc = t.loc();
        self.push(loc, Kind::SOffset);
        let Some(soff) = read_u32(self.buf, loc) else {
            return;
        };
        let vt_loc = (loc as i64 - i64::from(soff as i32)) as usize;
        let vt = t.vtable();
        for i in 0..2 + vt.num_fields() {
            self.push(vt_loc + 2 * i, Kind::VTableEntry);
        }
        for i in 0..vt.num_fields() {
            let f = vt.get_field(i);
            if f != 0 {
                self.push(loc + usize::from(f), Kind::Scalar);
            }
        }
    }

    /// The offset field `field` of `t`; returns where it points.
    fn offset(&mut self, t: &Table<'_>, field: VOffsetT) -> Option<usize> {
        let f = t.vtable().get(field);
        if f == 0 {
            return None;
        }
        let pos = t.loc() + usize::from(f);
        self.push(pos, Kind::UOffset);
        let target = pos + read_u32(self.buf, pos)? as usize;
        self.out.targets.push(target);
        Some(target)
    }

    /// A vector (or string) field with `elem`-byte elements; i32 elements are recorded too.
    fn vector(&mut self, t: &Table<'_>, field: VOffsetT, elem: u8, i32_elements: bool) {
        let Some(at) = self.offset(t, field) else {
            return;
        };
        self.push(at, Kind::VectorLen(elem));
        if i32_elements {
            let n = read_u32(self.buf, at).unwrap_or(0) as usize;
            for i in 0..n.min(64) {
                self.push(at + 4 + 4 * i, Kind::I32Element);
            }
        }
    }

    /// A vector of tables: its length and each element's offset (the tables are walked by
    /// the caller through the typed accessors).
    fn table_vector(&mut self, t: &Table<'_>, field: VOffsetT) {
        let Some(at) = self.offset(t, field) else {
            return;
        };
        self.push(at, Kind::VectorLen(4));
        let n = read_u32(self.buf, at).unwrap_or(0) as usize;
        for i in 0..n.min(4096) {
            let pos = at + 4 + 4 * i;
            self.push(pos, Kind::UOffset);
            if let Some(o) = read_u32(self.buf, pos) {
                self.out.targets.push(pos + o as usize);
            }
        }
    }

    fn u64_field(&mut self, t: &Table<'_>, field: VOffsetT) {
        let f = t.vtable().get(field);
        if f != 0 {
            self.push(t.loc() + usize::from(f), Kind::U64Field);
        }
    }

    fn tensor(&mut self, t: &fb::Tensor<'_>) {
        use fb::Tensor as T;
        let tab = &t._tab;
        self.table(tab);
        self.vector(tab, T::VT_SHAPE, 4, true);
        self.vector(tab, T::VT_NAME, 1, false);
        self.vector(tab, T::VT_SHAPE_SIGNATURE, 4, true);
        if let Some(q) = t.quantization() {
            self.offset(tab, T::VT_QUANTIZATION);
            self.table(&q._tab);
            use fb::QuantizationParameters as Q;
            self.vector(&q._tab, Q::VT_SCALE, 4, false);
            self.vector(&q._tab, Q::VT_ZERO_POINT, 8, false);
            self.vector(&q._tab, Q::VT_MIN, 4, false);
            self.vector(&q._tab, Q::VT_MAX, 4, false);
        }
        if let Some(s) = t.sparsity() {
            self.offset(tab, T::VT_SPARSITY);
            self.table(&s._tab);
            use fb::SparsityParameters as S;
            self.vector(&s._tab, S::VT_TRAVERSAL_ORDER, 4, true);
            self.vector(&s._tab, S::VT_BLOCK_MAP, 4, true);
            self.table_vector(&s._tab, S::VT_DIM_METADATA);
        }
    }

    fn operator(&mut self, o: &fb::Operator<'_>) {
        use fb::Operator as O;
        let tab = &o._tab;
        self.table(tab);
        self.vector(tab, O::VT_INPUTS, 4, true);
        self.vector(tab, O::VT_OUTPUTS, 4, true);
        self.vector(tab, O::VT_INTERMEDIATES, 4, true);
        self.vector(tab, O::VT_CUSTOM_OPTIONS, 1, false);
        self.vector(tab, O::VT_MUTATING_VARIABLE_INPUTS, 1, false);
        self.u64_field(tab, O::VT_LARGE_CUSTOM_OPTIONS_OFFSET);
        self.u64_field(tab, O::VT_LARGE_CUSTOM_OPTIONS_SIZE);
        if let Some(opts) = o.builtin_options() {
            self.offset(tab, O::VT_BUILTIN_OPTIONS);
            self.table(&opts);
        }
        if let Some(opts) = o.builtin_options_2() {
            self.offset(tab, O::VT_BUILTIN_OPTIONS_2);
            self.table(&opts);
        }
    }

    fn model(&mut self, m: &fb::Model<'_>) {
        use fb::Model as M;
        let tab = &m._tab;
        self.push(0, Kind::UOffset);
        self.table(tab);
        self.table_vector(tab, M::VT_OPERATOR_CODES);
        for c in m.operator_codes().into_iter().flatten() {
            self.table(&c._tab);
            self.vector(&c._tab, fb::OperatorCode::VT_CUSTOM_CODE, 1, false);
        }
        self.table_vector(tab, M::VT_SUBGRAPHS);
        for sg in m.subgraphs().into_iter().flatten() {
            use fb::SubGraph as S;
            self.table(&sg._tab);
            self.table_vector(&sg._tab, S::VT_TENSORS);
            self.table_vector(&sg._tab, S::VT_OPERATORS);
            self.vector(&sg._tab, S::VT_INPUTS, 4, true);
            self.vector(&sg._tab, S::VT_OUTPUTS, 4, true);
            self.vector(&sg._tab, S::VT_NAME, 1, false);
            for t in sg.tensors().into_iter().flatten() {
                self.tensor(&t);
            }
            for o in sg.operators().into_iter().flatten() {
                self.operator(&o);
            }
        }
        self.vector(tab, M::VT_DESCRIPTION, 1, false);
        self.table_vector(tab, M::VT_BUFFERS);
        for b in m.buffers().into_iter().flatten() {
            self.table(&b._tab);
            self.vector(&b._tab, fb::Buffer::VT_DATA, 1, false);
            self.u64_field(&b._tab, fb::Buffer::VT_OFFSET);
            self.u64_field(&b._tab, fb::Buffer::VT_SIZE);
        }
        self.vector(tab, M::VT_METADATA_BUFFER, 4, true);
        self.table_vector(tab, M::VT_METADATA);
        for md in m.metadata().into_iter().flatten() {
            self.table(&md._tab);
            self.vector(&md._tab, fb::Metadata::VT_NAME, 1, false);
        }
        self.table_vector(tab, M::VT_SIGNATURE_DEFS);
        for s in m.signature_defs().into_iter().flatten() {
            use fb::SignatureDef as D;
            self.table(&s._tab);
            self.vector(&s._tab, D::VT_SIGNATURE_KEY, 1, false);
            self.table_vector(&s._tab, D::VT_INPUTS);
            self.table_vector(&s._tab, D::VT_OUTPUTS);
            for map in s
                .inputs()
                .into_iter()
                .flatten()
                .chain(s.outputs().into_iter().flatten())
            {
                self.table(&map._tab);
                self.vector(&map._tab, fb::TensorMap::VT_NAME, 1, false);
            }
        }
    }
}

/// The slots of a model that verifies (an empty set for one that does not).
pub fn find(bytes: &[u8]) -> Slots {
    let opts = flatbuffers::VerifierOptions {
        max_tables: usize::MAX,
        max_apparent_size: usize::MAX,
        ..Default::default()
    };
    let Ok(model) = fb::root_as_model_with_opts(&opts, bytes) else {
        return Slots::default();
    };
    let mut w = Walker {
        buf: bytes,
        out: Slots::default(),
    };
    w.model(&model);
    let mut out = w.out;
    out.all.sort_unstable();
    out.all.dedup();
    out.targets.sort_unstable();
    out.targets.dedup();
    out
}
