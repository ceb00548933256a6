//! Byte-level damage: bit flips, overwrites, truncations, offsets aimed out of range or at
//! other objects, inflated vector lengths, broken vtables, wild indices and buffer offsets.
//!
//! Each function changes `bytes` in place and says what it did, so that a failing case can
//! be read and reproduced.

use crate::rng::Rng;
use crate::slots::{Kind, Slot, Slots};

/// Values that tend to sit on a boundary somewhere.
const INTERESTING_U32: [u32; 14] = [
    0,
    1,
    2,
    3,
    4,
    0x7f,
    0x80,
    0xff,
    0xffff,
    0x7fff_ffff,
    0x8000_0000,
    0xffff_fffe,
    0xffff_ffff,
    0x1000_0000,
];

fn put(bytes: &mut [u8], pos: usize, value: &[u8]) {
    let end = (pos + value.len()).min(bytes.len());
    if pos < end {
        bytes[pos..end].copy_from_slice(&value[..end - pos]);
    }
}

fn get_u32(bytes: &[u8], pos: usize) -> u32 {
    let mut b = [0u8; 4];
    for (i, x) in b.iter_mut().enumerate() {
        *x = bytes.get(pos + i).copied().unwrap_or(0);
    }
    u32::from_le_bytes(b)
}

/// A position: near a structural slot most of the time, anywhere otherwise.
fn position(rng: &mut Rng, bytes: &[u8], slots: &Slots) -> usize {
    if !slots.all.is_empty() && !rng.one_in(4) {
        let s = rng.pick(&slots.all);
        (s.pos + rng.below(8))
            .saturating_sub(2)
            .min(bytes.len() - 1)
    } else {
        rng.below(bytes.len())
    }
}

fn slot(rng: &mut Rng, slots: &Slots, bytes: &[u8], want: impl Fn(Kind) -> bool) -> Option<Slot> {
    let candidates: Vec<Slot> = slots
        .all
        .iter()
        .copied()
        .filter(|s| want(s.kind) && s.pos < bytes.len())
        .collect();
    (!candidates.is_empty()).then(|| *rng.pick(&candidates))
}

pub fn bit_flips(rng: &mut Rng, bytes: &mut [u8], slots: &Slots) -> String {
    let n = 1 + rng.below(8);
    let mut at = Vec::new();
    for _ in 0..n {
        let p = position(rng, bytes, slots);
        let bit = rng.below(8);
        bytes[p] ^= 1 << bit;
        at.push(format!("{p:#x}.{bit}"));
    }
    format!("bit flips at {}", at.join(","))
}

pub fn overwrite(rng: &mut Rng, bytes: &mut [u8], slots: &Slots) -> String {
    let p = position(rng, bytes, slots);
    let n = 1 + rng.below(16);
    let fill: Vec<u8> = match rng.below(4) {
        0 => vec![0; n],
        1 => vec![0xff; n],
        2 => INTERESTING_U32[rng.below(INTERESTING_U32.len())]
            .to_le_bytes()
            .to_vec(),
        _ => (0..n).map(|_| rng.next() as u8).collect(),
    };
    put(bytes, p, &fill);
    format!("overwrite {:02x?} at {p:#x}", fill)
}

pub fn truncate(rng: &mut Rng, bytes: &mut Vec<u8>, slots: &Slots) -> String {
    let len = bytes.len();
    let to = match rng.below(5) {
        0 => rng.below(24.min(len)),
        1 => len - 1 - rng.below(8.min(len)),
        2 if !slots.all.is_empty() => rng.pick(&slots.all).pos.min(len - 1),
        _ => rng.below(len),
    };
    bytes.truncate(to);
    format!("truncate {len} -> {to}")
}

/// Points a uoffset past the end, at another object, at itself, or somewhere unaligned.
pub fn offset(rng: &mut Rng, bytes: &mut [u8], slots: &Slots) -> String {
    let Some(s) = slot(rng, slots, bytes, |k| k == Kind::UOffset) else {
        return overwrite(rng, bytes, slots);
    };
    let len = bytes.len() as u64;
    let pos = s.pos as u64;
    let old = get_u32(bytes, s.pos);
    let new: u32 = match rng.below(8) {
        0 => (len - pos + rng.below(64) as u64) as u32,
        1 => (len - pos).saturating_sub(rng.below(8) as u64) as u32,
        2 => *rng.pick(&INTERESTING_U32),
        3 => old.wrapping_add(rng.range(-16, 16) as u32),
        4 => old ^ (1 << rng.below(32)),
        _ => {
            // Aim at another object: a table of another type, a vector, a string...
            match slots.targets.get(rng.below(slots.targets.len().max(1))) {
                Some(&t) if t as u64 >= pos => (t as u64 - pos) as u32,
                _ => rng.next() as u32 % (len as u32 + 64),
            }
        }
    };
    put(bytes, s.pos, &new.to_le_bytes());
    format!("uoffset at {:#x}: {old:#x} -> {new:#x}", s.pos)
}

/// Makes a vector or string claim more (or fewer) elements than it has.
pub fn vector_len(rng: &mut Rng, bytes: &mut [u8], slots: &Slots) -> String {
    let Some(s) = slot(rng, slots, bytes, |k| matches!(k, Kind::VectorLen(_))) else {
        return overwrite(rng, bytes, slots);
    };
    let Kind::VectorLen(elem) = s.kind else {
        unreachable!()
    };
    let elem = u64::from(elem.max(1));
    let old = get_u32(bytes, s.pos);
    let room = (bytes.len() as u64).saturating_sub(s.pos as u64 + 4) / elem;
    let new: u32 = match rng.below(9) {
        0 => old.wrapping_add(1),
        1 => old.wrapping_add(1 + rng.below(16) as u32),
        2 => old.wrapping_mul(2).max(1),
        3 => room as u32,
        4 => (room as u32).wrapping_add(1),
        5 => 0,
        6 => old.saturating_sub(1),
        7 => ((u32::MAX as u64 / elem) as u32).wrapping_add(rng.below(2) as u32),
        _ => *rng.pick(&INTERESTING_U32),
    };
    put(bytes, s.pos, &new.to_le_bytes());
    format!("vector length at {:#x}: {old} -> {new}", s.pos)
}

/// Breaks a table's vtable pointer or an entry of its vtable.
pub fn vtable(rng: &mut Rng, bytes: &mut [u8], slots: &Slots) -> String {
    if rng.one_in(2) {
        let Some(s) = slot(rng, slots, bytes, |k| k == Kind::SOffset) else {
            return overwrite(rng, bytes, slots);
        };
        let old = get_u32(bytes, s.pos) as i32;
        let new: i32 = match rng.below(5) {
            0 => old.wrapping_add(rng.range(-8, 8) as i32),
            1 => -old,
            2 => *rng.pick(&[0, 1, 2, i32::MIN, i32::MAX, -1]),
            3 => s.pos as i32 - rng.below(bytes.len()) as i32,
            _ => rng.next() as i32,
        };
        put(bytes, s.pos, &new.to_le_bytes());
        format!("soffset at {:#x}: {old} -> {new}", s.pos)
    } else {
        let Some(s) = slot(rng, slots, bytes, |k| k == Kind::VTableEntry) else {
            return overwrite(rng, bytes, slots);
        };
        let old = get_u32(bytes, s.pos) as u16;
        let new: u16 = match rng.below(5) {
            0 => old.wrapping_add(rng.range(-4, 4) as u16),
            1 => old | 1,
            2 => *rng.pick(&[0, 2, 4, 0x7ffe, 0xfffe, 0xffff]),
            3 => old.wrapping_mul(2),
            _ => rng.next() as u16,
        };
        put(bytes, s.pos, &new.to_le_bytes());
        format!("vtable entry at {:#x}: {old} -> {new}", s.pos)
    }
}

/// Sets an index, a dimension or a scalar field to a value on some boundary.
pub fn index(rng: &mut Rng, bytes: &mut [u8], slots: &Slots) -> String {
    let Some(s) = slot(rng, slots, bytes, |k| {
        matches!(k, Kind::I32Element | Kind::Scalar | Kind::U64Field)
    }) else {
        return overwrite(rng, bytes, slots);
    };
    let len = bytes.len() as u64;
    match s.kind {
        Kind::U64Field => {
            let old = u64::from(get_u32(bytes, s.pos)) | u64::from(get_u32(bytes, s.pos + 4)) << 32;
            let new: u64 = match rng.below(8) {
                0 => len,
                1 => len + rng.below(1024) as u64,
                2 => len - rng.below(len as usize) as u64,
                3 => u64::MAX - rng.below(16) as u64,
                4 => 1u64 << rng.below(64),
                5 => old.wrapping_add(rng.range(-32, 32) as u64),
                6 => *rng.pick(&[0, 1, 2, i64::MAX as u64]),
                _ => rng.next(),
            };
            put(bytes, s.pos, &new.to_le_bytes());
            format!("u64 field at {:#x}: {old} -> {new}", s.pos)
        }
        _ => {
            let old = get_u32(bytes, s.pos) as i32;
            let new: i32 = match rng.below(9) {
                0 => -1,
                1 => -rng.range(2, 1 << 20) as i32,
                2 => i32::MAX - rng.below(4) as i32,
                3 => i32::MIN,
                4 => old.wrapping_add(1),
                5 => old.wrapping_add(rng.range(2, 64) as i32),
                6 => rng.range(0, 70_000) as i32,
                7 => 1 << rng.below(31),
                _ => rng.next() as i32,
            };
            let width = if s.kind == Kind::Scalar {
                *rng.pick(&[1, 2, 4, 4, 4])
            } else {
                4
            };
            put(bytes, s.pos, &new.to_le_bytes()[..width]);
            format!("{width}-byte value at {:#x}: {old} -> {new}", s.pos)
        }
    }
}

/// Copies a chunk of the model over another place: structure where structure is expected,
/// but the wrong one.
pub fn splice(rng: &mut Rng, bytes: &mut [u8], slots: &Slots) -> String {
    let len = bytes.len();
    let n = 1 + rng.below(64.min(len));
    let from = rng.below(len - n + 1);
    let to = position(rng, bytes, slots).min(len - n);
    let chunk = bytes[from..from + n].to_vec();
    bytes[to..to + n].copy_from_slice(&chunk);
    format!("copy {n} bytes from {from:#x} to {to:#x}")
}

/// Appends bytes or changes the identifier: the cheap ways a file goes wrong.
pub fn ends(rng: &mut Rng, bytes: &mut Vec<u8>) -> String {
    match rng.below(3) {
        0 => {
            let n = 1 + rng.below(4096);
            bytes.extend((0..n).map(|_| rng.next() as u8));
            format!("append {n} random bytes")
        }
        1 if bytes.len() >= 8 => {
            let i = 4 + rng.below(4);
            let old = bytes[i];
            bytes[i] = rng.next() as u8;
            format!("identifier byte {i}: {old:#x} -> {:#x}", bytes[i])
        }
        _ => {
            let root = get_u32(bytes, 0);
            let new = *rng.pick(&INTERESTING_U32);
            put(bytes, 0, &new.to_le_bytes());
            format!("root offset {root:#x} -> {new:#x}")
        }
    }
}

/// Applies one random kind of damage.
pub fn any(rng: &mut Rng, bytes: &mut Vec<u8>, slots: &Slots) -> String {
    if bytes.is_empty() {
        return "empty".to_owned();
    }
    match rng.below(20) {
        0..=2 => bit_flips(rng, bytes, slots),
        3..=4 => overwrite(rng, bytes, slots),
        5..=6 => truncate(rng, bytes, slots),
        7..=9 => offset(rng, bytes, slots),
        10..=12 => vector_len(rng, bytes, slots),
        13..=14 => vtable(rng, bytes, slots),
        15..=17 => index(rng, bytes, slots),
        18 => splice(rng, bytes, slots),
        _ => ends(rng, bytes),
    }
}
