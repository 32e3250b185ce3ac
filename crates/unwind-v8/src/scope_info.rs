//! `ScopeInfo`: what V8 keeps about a compiled function's scope, of which the plug-in wants
//! the function's name, its inferred name (`obj.method = function () {}`), its source range,
//! its kind, and its outer scope (a class's scope for a method).
//!
//! ScopeInfo has no post-mortem metadata. Its layout (V8's `scope-info.tq`), checked on every
//! supported version: a flags word, the parameter count, the context-local count, then
//! variable-length parts whose presence the flags say. Until 12.7 the flags are a Smi and the
//! start/end positions come after the names; from 12.8.44 the flags are a raw 32-bit field
//! and the positions are fixed slots 3 and 4.

use crate::heap::{Heap, is_heap_object, is_smi, smi_value};
use crate::layout::ScopeInfoLayout;
use crate::{Error, Layout};

/// V8's `kScopeInfoMaxInlinedLocalNamesSize`: from this many context locals on, their names
/// are one hash table instead of inline.
const MAX_INLINED_LOCAL_NAMES: i64 = 75;
/// Slots read at once (the fixed part and the usual variable parts).
const SLOTS: usize = 24;

/// A scope's type, whichever numbering the version uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScopeType {
    /// A class body.
    Class,
    /// `eval` code.
    Eval,
    /// A function.
    Function,
    /// An ES module's body.
    Module,
    /// A script's top level.
    Script,
    /// Anything else (block, catch, with, REPL, shadow realm).
    Other,
}

/// `FunctionKind` values the naming cares about (the enum is the same from 10.2 to 14.6).
pub mod function_kind {
    /// `class X {}` with an explicit `constructor`.
    pub const BASE_CONSTRUCTOR: u8 = 3;
    /// `class X {}` without one.
    pub const DEFAULT_BASE_CONSTRUCTOR: u8 = 4;
    /// `class Y extends X {}` without a constructor.
    pub const DEFAULT_DERIVED_CONSTRUCTOR: u8 = 5;
    /// `class Y extends X { constructor() {} }`.
    pub const DERIVED_CONSTRUCTOR: u8 = 6;
    /// `get x()`.
    pub const GETTER: u8 = 7;
    /// `static get x()`.
    pub const STATIC_GETTER: u8 = 8;
    /// `set x(v)`.
    pub const SETTER: u8 = 9;
    /// `static set x(v)`.
    pub const STATIC_SETTER: u8 = 10;
    /// The function that initializes class fields.
    pub const CLASS_MEMBERS_INITIALIZER: u8 = 24;
    /// The function that runs static blocks and static field initializers.
    pub const CLASS_STATIC_INITIALIZER: u8 = 25;

    /// Whether a kind is a class constructor.
    pub fn is_constructor(kind: u8) -> bool {
        (BASE_CONSTRUCTOR..=DERIVED_CONSTRUCTOR).contains(&kind)
    }

    /// Whether a kind runs a class's field initializers.
    pub fn is_initializer(kind: u8) -> bool {
        kind == CLASS_MEMBERS_INITIALIZER || kind == CLASS_STATIC_INITIALIZER
    }

    /// Whether a function of this kind is written as a member of a class or object literal:
    /// constructors, accessors, (async, generator, static) concise methods.
    pub fn is_member(kind: u8) -> bool {
        matches!(kind, 3..=10 | 14..=17 | 20..=25)
    }
}

/// What a ScopeInfo says about its scope.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ScopeFacts {
    /// The scope's type (None when the flags were not understood).
    pub scope_type: Option<ScopeType>,
    /// The function's `FunctionKind` (function scopes).
    pub function_kind: u8,
    /// The function's own name (empty for anonymous functions).
    pub function_name: Option<String>,
    /// The name V8 inferred for an anonymous function (`obj.handler`).
    pub inferred_name: Option<String>,
    /// Start and end positions in the script (UTF-16 code units).
    pub positions: Option<(i32, i32)>,
    /// The enclosing scope's ScopeInfo (tagged), when the flags say there is one.
    pub outer: Option<u64>,
}

// ScopeFlags bits: the same positions in every supported version up to has_outer_scope_info.
const SCOPE_TYPE_MASK: u32 = 0xf;
const HAS_SAVED_CLASS_VARIABLE: u32 = 1 << 10;
const FUNCTION_VARIABLE_SHIFT: u32 = 12;
const HAS_INFERRED_FUNCTION_NAME: u32 = 1 << 14;
const FUNCTION_KIND_SHIFT: u32 = 17;
const HAS_OUTER_SCOPE_INFO: u32 = 1 << 22;

/// The scope type of a raw `scope_type` value: V8 added `REPL_MODE_SCOPE` and moved
/// `SCRIPT_SCOPE` first in the same releases that fixed the positions (seen: 12.4 has the
/// old order, 13.6 the new one).
fn scope_type(layout: ScopeInfoLayout, raw: u32) -> ScopeType {
    match layout {
        ScopeInfoLayout::PositionsAfterNames => match raw {
            0 => ScopeType::Class,
            1 => ScopeType::Eval,
            2 => ScopeType::Function,
            3 => ScopeType::Module,
            4 => ScopeType::Script,
            _ => ScopeType::Other,
        },
        ScopeInfoLayout::FixedPositions => match raw {
            0 => ScopeType::Script,
            2 => ScopeType::Class,
            3 => ScopeType::Eval,
            4 => ScopeType::Function,
            5 => ScopeType::Module,
            _ => ScopeType::Other,
        },
    }
}

/// Reads the ScopeInfo `obj` (tagged).
pub fn read_scope_info(heap: &mut Heap<'_>, obj: u64) -> Result<ScopeFacts, Error> {
    let layout: &Layout = heap.layout();
    let si = layout.scope_info;
    heap.expect_type("scope info", obj, layout.types.scope_info)?;
    let mut bytes = [0u8; SLOTS * 8];
    // The object may be shorter than SLOTS words: read less when the full read fails.
    let base = obj - 1 + 8;
    let mut n = SLOTS;
    while heap.read("scope info", base, &mut bytes[..n * 8]).is_err() {
        if n <= 5 {
            return Err(Error::invalid("scope info", obj, "unreadable".to_string()));
        }
        n = 5;
    }
    let slots: Vec<u64> = bytes[..n * 8]
        .chunks_exact(8)
        .map(|c| u64::from_le_bytes(c.try_into().unwrap_or([0; 8])))
        .collect();
    let slot = |i: usize| slots.get(i).copied();
    let smi = |i: usize| slot(i).filter(|&v| is_smi(v)).map(smi_value);

    let flags = match si {
        ScopeInfoLayout::PositionsAfterNames => smi(0).map(|v| v as u32),
        ScopeInfoLayout::FixedPositions => slot(0).map(|v| v as u32),
    }
    .ok_or_else(|| Error::invalid("scope info", obj, "no flags".to_string()))?;
    let context_locals = i64::from(
        smi(2).ok_or_else(|| Error::invalid("scope info", obj, "no local count".to_string()))?,
    );
    if !(0..=1 << 16).contains(&context_locals) {
        return Err(Error::invalid(
            "scope info",
            obj,
            format!("{context_locals} context locals"),
        ));
    }
    let ty = scope_type(si, flags & SCOPE_TYPE_MASK);
    let mut facts = ScopeFacts {
        scope_type: Some(ty),
        function_kind: ((flags >> FUNCTION_KIND_SHIFT) & 0x1f) as u8,
        ..ScopeFacts::default()
    };

    let mut i = 3usize;
    if si == ScopeInfoLayout::FixedPositions {
        facts.positions = smi(3).zip(smi(4));
        i = 5;
    }
    if ty == ScopeType::Module {
        i += 1; // module_variable_count
    }
    let locals = context_locals as usize;
    i += if context_locals < MAX_INLINED_LOCAL_NAMES {
        locals
    } else {
        1
    };
    i += locals; // context_local_infos
    if flags & HAS_SAVED_CLASS_VARIABLE != 0 {
        i += 1;
    }
    // Read what follows from memory when it lies beyond the slots read at once.
    let at = |heap: &Heap<'_>, i: usize| -> Result<u64, Error> {
        match slot(i) {
            Some(v) if i < n => Ok(v),
            _ => heap.word("scope info", base + (i as u64) * 8),
        }
    };
    if (flags >> FUNCTION_VARIABLE_SHIFT) & 3 != 0 {
        let name = at(heap, i)?;
        if is_heap_object(name) && heap.is_string(name) {
            facts.function_name = Some(heap.name(name)?);
        } else if !(is_smi(name) && smi_value(name) == 0) {
            return Err(Error::invalid(
                "scope info",
                obj,
                format!("function name slot {i} holds {name:#x}"),
            ));
        }
        i += 2;
    }
    if flags & HAS_INFERRED_FUNCTION_NAME != 0 {
        let name = at(heap, i)?;
        if is_heap_object(name) && heap.is_string(name) {
            let s = heap.name(name)?;
            if !s.is_empty() {
                facts.inferred_name = Some(s);
            }
        }
        i += 1;
    }
    if si == ScopeInfoLayout::PositionsAfterNames
        && matches!(
            ty,
            ScopeType::Function
                | ScopeType::Script
                | ScopeType::Eval
                | ScopeType::Module
                | ScopeType::Class
        )
    {
        let (s, e) = (at(heap, i)?, at(heap, i + 1)?);
        if is_smi(s) && is_smi(e) {
            facts.positions = Some((smi_value(s), smi_value(e)));
        }
        i += 2;
    }
    if flags & HAS_OUTER_SCOPE_INFO != 0 {
        let outer = at(heap, i)?;
        if is_heap_object(outer) {
            facts.outer = Some(outer);
        }
    }
    if let Some((s, e)) = facts.positions
        && (s < 0 || e < s)
    {
        facts.positions = None;
    }
    Ok(facts)
}
