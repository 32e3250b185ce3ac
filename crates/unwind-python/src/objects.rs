//! Plain Python objects read from process memory: `dict`s (combined and split tables),
//! instance attributes (a `__dict__` behind `tp_dictoffset` up to 3.10; the managed dicts and
//! shared-key values of 3.11, 3.12 and 3.13+), `int`s and `str` keys.
//!
//! Facts from CPython's headers (`Include/cpython/object.h`, `Include/internal/pycore_dict.h`,
//! `pycore_object.h`, `Objects/dictobject.c`, `Include/cpython/longintrepr.h`), checked against
//! the DWARF of real builds in `tests/layout_dwarf.rs` where DWARF shows them (field offsets)
//! and against live processes in `tests/thread_names.rs` (tag bits, negative offsets, flags).
//! 64-bit builds only; every read is bounded and a garbage object gives an error, never a panic
//! or an unbounded loop.

use ferroscope_unwind_api::ProcessMemory;

use crate::{Error, Layout};

/// Most entries read from one `dict` (its keys table); a larger one is refused.
pub const MAX_DICT_ENTRIES: usize = 1 << 15;

/// `PyObject.ob_type`.
const OB_TYPE: u64 = 8;
/// `PyTypeObject.tp_basicsize` (`Py_ssize_t`).
const TP_BASICSIZE: u64 = 32;
/// `PyTypeObject.tp_flags` (`unsigned long`).
const TP_FLAGS: u64 = 168;
/// `PyTypeObject.tp_dictoffset` (`Py_ssize_t`).
const TP_DICTOFFSET: u64 = 288;
/// 3.11+ `Py_TPFLAGS_MANAGED_DICT`: the instance's dict (or values) is before the object.
const TPFLAGS_MANAGED_DICT: u64 = 1 << 4;
/// 3.13+ `Py_TPFLAGS_INLINE_VALUES`: the values follow the object, at `tp_basicsize`.
const TPFLAGS_INLINE_VALUES: u64 = 1 << 2;
/// 3.11+: where a managed dict's pointer is, before the object (`MANAGED_DICT_OFFSET`, -3
/// pointers; 3.12 keeps a tagged dict-or-values word there).
const MANAGED_DICT: u64 = 24;
/// 3.11: where the shared-key values pointer is, before the object (-4 pointers).
const MANAGED_VALUES_311: u64 = 32;

/// `PyDictObject.ma_used`, `.ma_keys`, `.ma_values` (3.6-3.15).
const MA_USED: u64 = 16;
const MA_KEYS: u64 = 32;
const MA_VALUES: u64 = 40;
/// `sizeof(PyDictObject)`.
const DICT_SIZE: usize = 48;
/// 3.13+ `PyDictValues`: `capacity` (byte 0), `valid` (byte 3), then the values at 8.
const VALUES_HEADER_313: u64 = 8;
/// `PyModuleObject.md_dict`.
const MD_DICT: u64 = 16;
/// `PyLongObject`: `ob_size` (≤3.11) or `long_value.lv_tag` (3.12+), then 30-bit digits.
const LONG_SIZE: u64 = 16;
const LONG_DIGITS: u64 = 24;

/// How a CPython version lays out dicts and instance attributes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ObjectLayout {
    /// 3.11+ keys tables (`dk_log2_size`, `dk_kind`, entries of 16 bytes for `str` keys);
    /// before, `dk_size`, `dk_lookup` and 24-byte entries.
    pub compact_keys: bool,
    /// 3.12+ `int`s: `lv_tag` (digit count << 3 | sign) instead of a signed `ob_size`.
    pub tagged_long: bool,
    /// Where an instance keeps its attributes.
    pub instance: InstanceDict,
    /// `PyHeapTypeObject.ht_cached_keys` (the keys shared by a class's instances, which
    /// their values index; 3.11+), when known for the version.
    pub cached_keys: Option<u32>,
}

/// Where an instance's attributes are, by era.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InstanceDict {
    /// ≤3.10: a `dict` pointer at the type's `tp_dictoffset`.
    TypeOffset,
    /// 3.11: with `Py_TPFLAGS_MANAGED_DICT`, a values pointer 32 bytes before the object and a
    /// dict pointer 24 bytes before (one of them set).
    Managed311,
    /// 3.12: one word 24 bytes before the object, a dict pointer or, with its low bit set,
    /// the values pointer minus 1.
    Tagged312,
    /// 3.13+: a dict pointer 24 bytes before the object; without one, with
    /// `Py_TPFLAGS_INLINE_VALUES`, the values at `tp_basicsize` (valid when byte 3 is set).
    Inline313,
}

impl ObjectLayout {
    /// The object layout of CPython 3.`minor`.
    pub fn of(minor: u8) -> ObjectLayout {
        ObjectLayout {
            compact_keys: minor >= 11,
            tagged_long: minor >= 12,
            instance: match minor {
                ..=10 => InstanceDict::TypeOffset,
                11 => InstanceDict::Managed311,
                12 => InstanceDict::Tagged312,
                _ => InstanceDict::Inline313,
            },
            // sizeof(PyTypeObject) + the method tables + ht_name, ht_slots, ht_qualname:
            // PyTypeObject grew to 416 bytes in 3.12 and 424 in 3.15.
            cached_keys: match minor {
                ..=10 => None,
                11 => Some(872),
                12..=14 => Some(880),
                15 => Some(888),
                _ => None,
            },
        }
    }
}

fn rd(mem: &dyn ProcessMemory, what: &'static str, addr: u64) -> Result<u64, Error> {
    mem.read_u64(addr).map_err(Error::read(what, addr))
}

fn u64_at(buf: &[u8], off: usize) -> u64 {
    buf.get(off..off + 8)
        .and_then(|b| b.try_into().ok())
        .map_or(0, u64::from_le_bytes)
}

/// The (key, value) object pointers of a `dict`, in insertion order for combined tables;
/// entries without a value (deleted, or an attribute this instance lacks) are left out.
pub fn dict_items(
    mem: &dyn ProcessMemory,
    objects: &ObjectLayout,
    minor: u8,
    dict: u64,
) -> Result<Vec<(u64, u64)>, Error> {
    if dict == 0 {
        return Err(Error::invalid("dict", dict, "null pointer"));
    }
    let mut head = [0u8; DICT_SIZE];
    mem.read_exact_at(dict, &mut head)
        .map_err(Error::read("dict", dict))?;
    let used = u64_at(&head, MA_USED as usize);
    if used > MAX_DICT_ENTRIES as u64 {
        return Err(Error::invalid(
            "dict",
            dict,
            format!("{used} items, more than the {MAX_DICT_ENTRIES} read"),
        ));
    }
    let keys = u64_at(&head, MA_KEYS as usize);
    let values = u64_at(&head, MA_VALUES as usize);
    let values = (values != 0).then(|| {
        if minor >= 13 {
            values.wrapping_add(VALUES_HEADER_313)
        } else {
            values
        }
    });
    keys_items(mem, objects, keys, values, None)
}

/// The entries of a keys table with their values: `values` is a split table's values array
/// (indexed like the entries, at most `capacity` of them when known), else the entries'
/// own values.
fn keys_items(
    mem: &dyn ProcessMemory,
    objects: &ObjectLayout,
    keys: u64,
    values: Option<u64>,
    capacity: Option<usize>,
) -> Result<Vec<(u64, u64)>, Error> {
    const WHAT: &str = "dict keys";
    if keys == 0 {
        return Err(Error::invalid(WHAT, keys, "null pointer"));
    }
    let mut head = [0u8; 40];
    mem.read_exact_at(keys, &mut head)
        .map_err(Error::read(WHAT, keys))?;
    let (nentries, entries, entry_size, value_at) = if objects.compact_keys {
        let log2_index_bytes = head[9];
        let kind = head[10];
        if log2_index_bytes > 40 {
            return Err(Error::invalid(
                WHAT,
                keys,
                format!("index of 2^{log2_index_bytes} bytes"),
            ));
        }
        // DICT_KEYS_GENERAL (0) has (hash, key, value) entries; UNICODE (1) and SPLIT (2)
        // (key, value).
        let (size, value_at) = match kind {
            0 => (24, 16),
            1 | 2 => (16, 8),
            _ => return Err(Error::invalid(WHAT, keys, format!("kind {kind}"))),
        };
        let entries = keys.wrapping_add(32).wrapping_add(1 << log2_index_bytes);
        (u64_at(&head, 24), entries, size, value_at)
    } else {
        let size = u64_at(&head, 8);
        if size == 0 || size > 1 << 40 || !size.is_power_of_two() {
            return Err(Error::invalid(WHAT, keys, format!("size {size}")));
        }
        let index_width = match size {
            0..=0xff => 1,
            0x100..=0xffff => 2,
            0x1_0000..=0xffff_ffff => 4,
            _ => 8,
        };
        let entries = keys.wrapping_add(40).wrapping_add(size * index_width);
        (u64_at(&head, 32), entries, 24, 16)
    };
    let n = usize::try_from(nentries)
        .ok()
        .filter(|&n| n <= MAX_DICT_ENTRIES)
        .ok_or_else(|| {
            Error::invalid(
                WHAT,
                keys,
                format!("{nentries} entries (at most {MAX_DICT_ENTRIES} are read)"),
            )
        })?;
    let mut raw = vec![0u8; n * entry_size];
    mem.read_exact_at(entries, &mut raw)
        .map_err(Error::read("dict entries", entries))?;
    let split = match values {
        Some(at) => {
            let m = capacity.map_or(n, |c| c.min(n));
            let mut v = vec![0u8; m * 8];
            mem.read_exact_at(at, &mut v)
                .map_err(Error::read("dict values", at))?;
            Some(v)
        }
        None => None,
    };
    let key_at = value_at - 8;
    let mut out = Vec::new();
    for (i, e) in raw.chunks_exact(entry_size).enumerate() {
        let key = u64_at(e, key_at);
        let value = match &split {
            Some(v) => u64_at(v, i * 8),
            None => u64_at(e, value_at),
        };
        if key != 0 && value != 0 {
            out.push((key, value));
        }
    }
    Ok(out)
}

/// Whether the `str` at `addr` is the ASCII string `want` (a compact ASCII `str` of that
/// length and those characters; any other object or a read failure is `false`).
pub fn str_is(mem: &dyn ProcessMemory, layout: &Layout, addr: u64, want: &str) -> bool {
    let u = &layout.unicode;
    let mut head = [0u8; 48];
    let len = ((u.state + 4).max(u.length + 8) as usize).min(head.len());
    if addr == 0 || mem.read_exact_at(addr, &mut head[..len]).is_err() {
        return false;
    }
    let length = u64_at(&head, u.length as usize);
    let state = head
        .get(u.state as usize..u.state as usize + 4)
        .and_then(|b| b.try_into().ok())
        .map_or(0, u32::from_le_bytes);
    let compact_ascii = state >> u.compact_bit & 1 == 1 && state >> u.ascii_bit & 1 == 1;
    if length != want.len() as u64 || !compact_ascii {
        return false;
    }
    let mut chars = vec![0u8; want.len()];
    mem.read_exact_at(addr.wrapping_add(u64::from(u.ascii_size)), &mut chars)
        .is_ok_and(|()| chars == want.as_bytes())
}

/// The value of `key` (an ASCII `str`) in the `dict` at `dict`, `None` when absent.
pub fn dict_get(
    mem: &dyn ProcessMemory,
    layout: &Layout,
    objects: &ObjectLayout,
    dict: u64,
    key: &str,
) -> Result<Option<u64>, Error> {
    Ok(dict_items(mem, objects, layout.minor, dict)?
        .into_iter()
        .find(|&(k, _)| str_is(mem, layout, k, key))
        .map(|(_, v)| v))
}

/// The `dict` of a module object (`md_dict`).
pub fn module_dict(mem: &dyn ProcessMemory, module: u64) -> Result<u64, Error> {
    rd(mem, "module's dict", module.wrapping_add(MD_DICT))
}

/// The attributes of an instance of a Python class: (name `str`, value) object pointers,
/// wherever its version keeps them (see [`InstanceDict`]). An object without attributes
/// gives an empty list.
pub fn instance_attributes(
    mem: &dyn ProcessMemory,
    layout: &Layout,
    objects: &ObjectLayout,
    obj: u64,
) -> Result<Vec<(u64, u64)>, Error> {
    let minor = layout.minor;
    let tp = rd(mem, "object's type", obj.wrapping_add(OB_TYPE))?;
    let flags = rd(mem, "type's flags", tp.wrapping_add(TP_FLAGS))?;
    let managed = objects.instance != InstanceDict::TypeOffset && flags & TPFLAGS_MANAGED_DICT != 0;
    if !managed {
        let offset = rd(mem, "type's tp_dictoffset", tp.wrapping_add(TP_DICTOFFSET))? as i64;
        // A negative offset counts from the end of a variable-size object: not a class
        // whose instances this crate reads.
        if offset <= 0 {
            return Ok(Vec::new());
        }
        let dict = rd(mem, "instance's __dict__", obj.wrapping_add(offset as u64))?;
        return if dict == 0 {
            Ok(Vec::new())
        } else {
            dict_items(mem, objects, minor, dict)
        };
    }
    let shared = |values: u64, capacity: Option<usize>| -> Result<Vec<(u64, u64)>, Error> {
        let Some(at) = objects.cached_keys else {
            return Err(Error::invalid(
                "instance",
                obj,
                format!("where CPython 3.{minor} keeps a class's shared keys is not known"),
            ));
        };
        let keys = rd(mem, "class's shared keys", tp.wrapping_add(u64::from(at)))?;
        keys_items(mem, objects, keys, Some(values), capacity)
    };
    let word = rd(mem, "managed dict", obj.wrapping_sub(MANAGED_DICT))?;
    match objects.instance {
        InstanceDict::TypeOffset => unreachable!("handled above"),
        InstanceDict::Managed311 => {
            let values = rd(mem, "managed values", obj.wrapping_sub(MANAGED_VALUES_311))?;
            if values != 0 {
                shared(values, None)
            } else if word != 0 {
                dict_items(mem, objects, minor, word)
            } else {
                Ok(Vec::new())
            }
        }
        InstanceDict::Tagged312 => {
            if word & 1 == 1 {
                shared(word.wrapping_add(1), None)
            } else if word != 0 {
                dict_items(mem, objects, minor, word)
            } else {
                Ok(Vec::new())
            }
        }
        InstanceDict::Inline313 => {
            if word != 0 {
                return dict_items(mem, objects, minor, word);
            }
            if flags & TPFLAGS_INLINE_VALUES == 0 {
                return Ok(Vec::new());
            }
            let size = rd(mem, "type's tp_basicsize", tp.wrapping_add(TP_BASICSIZE))?;
            if size == 0 || size > 1 << 20 || size % 8 != 0 {
                return Err(Error::invalid(
                    "instance",
                    obj,
                    format!("its type's basic size is {size}"),
                ));
            }
            let at = obj.wrapping_add(size);
            let header = rd(mem, "inline values", at)?.to_le_bytes();
            let (capacity, valid) = (header[0], header[3]);
            if valid == 0 {
                return Ok(Vec::new());
            }
            shared(
                at.wrapping_add(VALUES_HEADER_313),
                Some(usize::from(capacity)),
            )
        }
    }
}

/// The value of an `int` that fits in 64 bits (`None` for a negative or larger one).
pub fn read_int(
    mem: &dyn ProcessMemory,
    objects: &ObjectLayout,
    addr: u64,
) -> Result<Option<u64>, Error> {
    let word = rd(mem, "int object", addr.wrapping_add(LONG_SIZE))?;
    let (negative, digits) = if objects.tagged_long {
        // lv_tag: digit count << 3, sign in the low 2 bits (0 positive, 1 zero, 2 negative).
        (word & 3 == 2, word >> 3)
    } else {
        let size = word as i64;
        (size < 0, size.unsigned_abs())
    };
    if negative || digits > 3 {
        return Ok(None);
    }
    let mut b = [0u8; 12];
    let b = &mut b[..4 * digits as usize];
    let at = addr.wrapping_add(LONG_DIGITS);
    mem.read_exact_at(at, b)
        .map_err(Error::read("int object's digits", at))?;
    let mut value: u128 = 0;
    for d in b.chunks_exact(4).rev() {
        let d = u32::from_le_bytes([d[0], d[1], d[2], d[3]]);
        value = value << 30 | u128::from(d & 0x3fff_ffff);
    }
    Ok(u64::try_from(value).ok())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout;
    use ferroscope_unwind_api::SnapshotMemory;

    /// A compact ASCII `str` at `addr`.
    fn put_str(mem: &mut SnapshotMemory, l: &Layout, addr: u64, s: &str) {
        let u = &l.unicode;
        let mut state = (1u32 << u.kind_shift) | (1 << u.compact_bit) | (1 << u.ascii_bit);
        if let Some(b) = u.ready_bit {
            state |= 1 << b;
        }
        let mut b = vec![0u8; u.ascii_size as usize];
        b[u.length as usize..][..8].copy_from_slice(&(s.len() as u64).to_le_bytes());
        b[u.state as usize..][..4].copy_from_slice(&state.to_le_bytes());
        b.extend_from_slice(s.as_bytes());
        b.push(0);
        mem.add_region(addr, b);
    }

    fn words(values: &[u64]) -> Vec<u8> {
        values.iter().flat_map(|v| v.to_le_bytes()).collect()
    }

    /// A keys table at `addr` with `keys` (and `values` in its entries when given), for
    /// `minor`'s era; 8 slots, one-byte indices.
    fn put_keys(
        mem: &mut SnapshotMemory,
        minor: u8,
        addr: u64,
        keys: &[u64],
        values: Option<&[u64]>,
        kind: u8,
    ) {
        let mut b;
        if minor >= 11 {
            b = vec![0u8; 32];
            b[8] = 3; // log2 size
            b[9] = 3; // log2 index bytes: 8 one-byte slots
            b[10] = kind;
            b[24..32].copy_from_slice(&(keys.len() as u64).to_le_bytes());
            b.extend_from_slice(&[0xff; 8]);
            for (i, k) in keys.iter().enumerate() {
                let v = values.map_or(0, |v| v[i]);
                if kind == 0 {
                    b.extend_from_slice(&words(&[0x1234, *k, v]));
                } else {
                    b.extend_from_slice(&words(&[*k, v]));
                }
            }
        } else {
            b = words(&[1, 8, 0, 0, keys.len() as u64]);
            b.extend_from_slice(&[0xff; 8]);
            for (i, k) in keys.iter().enumerate() {
                let v = values.map_or(0, |v| v[i]);
                b.extend_from_slice(&words(&[0x1234, *k, v]));
            }
        }
        mem.add_region(addr, b);
    }

    fn put_dict(mem: &mut SnapshotMemory, addr: u64, used: u64, keys: u64, values: u64) {
        mem.add_region(addr, words(&[1, 0xd1c7, used, 0, keys, values]));
    }

    const K_NAME: u64 = 0x10_000;
    const K_OTHER: u64 = 0x11_000;
    const V_NAME: u64 = 0x20_000;
    const V_OTHER: u64 = 0x21_000;

    fn strings(mem: &mut SnapshotMemory, l: &Layout) {
        put_str(mem, l, K_NAME, "_name");
        put_str(mem, l, K_OTHER, "_other");
    }

    #[test]
    fn combined_and_split_dicts_of_every_era_read() {
        for minor in [6u8, 8, 10, 11, 12, 13, 14] {
            let l = layout(minor.min(12)).unwrap().clone();
            let l = Layout { minor, ..l };
            let o = ObjectLayout::of(minor);
            let mut mem = SnapshotMemory::new(1);
            strings(&mut mem, &l);
            // Combined: values in the entries (3.11+: a str-keyed table).
            put_keys(
                &mut mem,
                minor,
                0x30_000,
                &[K_OTHER, K_NAME],
                Some(&[V_OTHER, V_NAME]),
                1,
            );
            put_dict(&mut mem, 0x40_000, 2, 0x30_000, 0);
            assert_eq!(
                dict_get(&mem, &l, &o, 0x40_000, "_name").unwrap(),
                Some(V_NAME),
                "3.{minor} combined"
            );
            assert_eq!(dict_get(&mem, &l, &o, 0x40_000, "_none").unwrap(), None);
            // Split: values in their own array (3.13+: after an 8-byte header).
            put_keys(&mut mem, minor, 0x50_000, &[K_NAME, K_OTHER], None, 2);
            let values = 0x60_000;
            let header = if minor >= 13 {
                words(&[0x0102_0002])
            } else {
                Vec::new()
            };
            mem.add_region(values, [header, words(&[V_NAME, 0])].concat());
            put_dict(&mut mem, 0x70_000, 1, 0x50_000, values);
            assert_eq!(
                dict_items(&mem, &o, minor, 0x70_000).unwrap(),
                vec![(K_NAME, V_NAME)],
                "3.{minor} split: the missing value is left out"
            );
        }
    }

    /// An object of a class at `tp` whose flags are `flags`, basic size 16.
    fn put_type(
        mem: &mut SnapshotMemory,
        o: &ObjectLayout,
        tp: u64,
        flags: u64,
        dictoffset: i64,
        cached_keys: u64,
    ) {
        let mut b = vec![0u8; 1024];
        b[TP_BASICSIZE as usize..][..8].copy_from_slice(&16u64.to_le_bytes());
        b[TP_FLAGS as usize..][..8].copy_from_slice(&flags.to_le_bytes());
        b[TP_DICTOFFSET as usize..][..8].copy_from_slice(&dictoffset.to_le_bytes());
        if let Some(at) = o.cached_keys {
            b[at as usize..][..8].copy_from_slice(&cached_keys.to_le_bytes());
        }
        mem.add_region(tp, b);
    }

    #[test]
    fn instance_attributes_of_every_era_read() {
        let tp = 0x80_000;
        // Four words before the object: 3.11's values and dict pointers (-32, -24) and the rest.
        let obj = 0x90_000 + 32;
        for minor in [8u8, 11, 12, 13, 15] {
            let l = Layout {
                minor,
                ..layout(minor.min(12)).unwrap().clone()
            };
            let o = ObjectLayout::of(minor);
            let mut mem = SnapshotMemory::new(1);
            strings(&mut mem, &l);
            put_keys(&mut mem, minor, 0x50_000, &[K_OTHER, K_NAME], None, 2);
            let values = 0xa0_000;
            match o.instance {
                InstanceDict::TypeOffset => {
                    put_type(&mut mem, &o, tp, 0, 16, 0);
                    put_dict(&mut mem, 0x70_000, 2, 0x50_000, values);
                    mem.add_region(values, words(&[V_OTHER, V_NAME]));
                    mem.add_region(obj, words(&[1, tp, 0x70_000]));
                }
                InstanceDict::Managed311 => {
                    put_type(&mut mem, &o, tp, TPFLAGS_MANAGED_DICT, -1, 0x50_000);
                    mem.add_region(values, words(&[V_OTHER, V_NAME]));
                    mem.add_region(obj - 32, words(&[values, 0, 0, 0, 1, tp]));
                }
                InstanceDict::Tagged312 => {
                    put_type(&mut mem, &o, tp, TPFLAGS_MANAGED_DICT, -1, 0x50_000);
                    mem.add_region(values, words(&[V_OTHER, V_NAME]));
                    mem.add_region(obj - 32, words(&[0, values - 1, 0, 0, 1, tp]));
                }
                InstanceDict::Inline313 => {
                    put_type(
                        &mut mem,
                        &o,
                        tp,
                        TPFLAGS_MANAGED_DICT | TPFLAGS_INLINE_VALUES,
                        -1,
                        0x50_000,
                    );
                    // capacity 2, size 2, embedded, valid; then the values, after the
                    // object's 16 bytes.
                    mem.add_region(
                        obj - 32,
                        [
                            words(&[0, 0, 0, 0, 1, tp]),
                            vec![2, 2, 1, 1, 0, 0, 0, 0],
                            words(&[V_OTHER, V_NAME]),
                        ]
                        .concat(),
                    );
                }
            }
            let attrs =
                instance_attributes(&mem, &l, &o, obj).unwrap_or_else(|e| panic!("3.{minor}: {e}"));
            assert_eq!(
                attrs,
                vec![(K_OTHER, V_OTHER), (K_NAME, V_NAME)],
                "3.{minor}"
            );
        }
    }

    #[test]
    fn ints_of_both_eras_read() {
        for (tagged, minor) in [(false, 8u8), (true, 12)] {
            let o = ObjectLayout::of(minor);
            assert_eq!(o.tagged_long, tagged);
            let mut mem = SnapshotMemory::new(1);
            let put = |mem: &mut SnapshotMemory, at: u64, digits: &[u32], negative: bool| {
                let n = digits.len() as u64;
                let size = if tagged {
                    (n << 3)
                        | if n == 0 {
                            1
                        } else if negative {
                            2
                        } else {
                            0
                        }
                } else if negative {
                    (n as i64).wrapping_neg() as u64
                } else {
                    n
                };
                let mut b = words(&[1, 0xabc, size]);
                for d in digits {
                    b.extend_from_slice(&d.to_le_bytes());
                }
                mem.add_region(at, b);
            };
            put(&mut mem, 0x1000, &[], false);
            put(&mut mem, 0x2000, &[12345], false);
            // 0x7f12_3456_7890 = digits (low first) of 30 bits.
            let v: u64 = 0x7f12_3456_7890;
            put(
                &mut mem,
                0x3000,
                &[(v & 0x3fff_ffff) as u32, (v >> 30) as u32],
                false,
            );
            put(&mut mem, 0x4000, &[5], true);
            assert_eq!(read_int(&mem, &o, 0x1000).unwrap(), Some(0));
            assert_eq!(read_int(&mem, &o, 0x2000).unwrap(), Some(12345));
            assert_eq!(read_int(&mem, &o, 0x3000).unwrap(), Some(v));
            assert_eq!(read_int(&mem, &o, 0x4000).unwrap(), None, "negative");
            assert!(read_int(&mem, &o, 0x9000).is_err());
        }
    }

    #[test]
    fn garbage_never_panics_and_stays_bounded() {
        // A xorshift generator: the same bytes every run.
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for round in 0..300 {
            let mut bytes = vec![0u8; 4096];
            for b in bytes.iter_mut() {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                // Small values often, so that pointers land back in the region.
                *b = if x.is_multiple_of(3) {
                    (x >> 8) as u8 & 0x1f
                } else {
                    (x >> 16) as u8
                };
            }
            let mut mem = SnapshotMemory::new(1);
            mem.add_region(0x1000, bytes);
            let minor = 6 + (round % 10) as u8;
            let l = Layout {
                minor,
                ..layout(minor.min(12)).unwrap().clone()
            };
            let o = ObjectLayout::of(minor);
            for addr in [0x1000u64, 0x1100, 0x1800, 0x1ff8] {
                if let Ok(items) = dict_items(&mem, &o, minor, addr) {
                    assert!(items.len() <= MAX_DICT_ENTRIES);
                }
                let _ = instance_attributes(&mem, &l, &o, addr);
                let _ = read_int(&mem, &o, addr);
                let _ = str_is(&mem, &l, addr, "_name");
                if let Ok(t) = crate::threading_threads(&mem, &l, addr) {
                    assert!(
                        t.len() <= crate::MAX_INTERPRETERS * crate::thread_names::MAX_PY_THREADS
                    );
                }
            }
        }
    }
}
