//! `SharedFunctionInfo`: a JavaScript function's name, script, source range and bytecode,
//! shared by every closure of it. [`read_function`] turns one into the [`FunctionInfo`] the
//! plug-in names frames with.

use std::sync::Arc;

use crate::heap::{Heap, is_heap_object, is_smi, smi_value};
use crate::scope_info::{ScopeType, function_kind, read_scope_info};
use crate::script::ScriptInfo;
use crate::{Error, Layout};

/// A function, named as its users read it.
#[derive(Debug)]
pub struct FunctionInfo {
    /// `name`, `Class.method`, `new Class`, `<anonymous>`.
    pub name: Arc<str>,
    /// Its script (None for builtins and native functions).
    pub script: Option<Arc<ScriptInfo>>,
    /// The position (UTF-16 units) where it starts, when known.
    pub start_position: Option<u32>,
    /// The source position table of its bytecode (empty when V8 has none).
    pub bytecode_positions: Vec<u8>,
    /// Its bytecode (kept only when Sparkplug code of it is on a stack: the baseline
    /// offset table walks it).
    pub bytecode: Option<Vec<u8>>,
    /// The bytecode's length.
    pub bytecode_length: usize,
    /// A builtin (its function data is a builtin ID): named after the builtin, no source.
    pub builtin: bool,
}

impl FunctionInfo {
    /// The file as the script was loaded (empty for builtins).
    pub fn file(&self) -> Arc<str> {
        self.script
            .as_ref()
            .map_or_else(|| Arc::from(""), |s| Arc::clone(&s.name))
    }

    /// The 1-based line (0: unknown) of a script position.
    pub fn line_of(&self, position: Option<u32>) -> u32 {
        match (&self.script, position) {
            (Some(s), Some(p)) => s.line_column(p).0,
            _ => 0,
        }
    }

    /// The line the function starts on (0: unknown).
    pub fn start_line(&self) -> u32 {
        self.line_of(self.start_position)
    }
}

/// What [`read_function`] needs to look a script up in the caller's cache.
pub trait Scripts {
    /// The script `obj` (tagged), read or cached.
    fn script(&mut self, heap: &mut Heap<'_>, obj: u64) -> Result<Arc<ScriptInfo>, Error>;
}

/// The SFI's function data and its untrusted half (13.x+).
fn function_data(heap: &Heap<'_>, sfi: u64) -> Result<(u64, Option<u64>), Error> {
    let l = heap.layout();
    let trusted = heap.field("function data", sfi, l.sfi_function_data)?;
    let untrusted = match l.sfi_untrusted_function_data {
        Some(off) => Some(heap.field("function data", sfi, off)?),
        None => None,
    };
    Ok((trusted, untrusted))
}

/// The BytecodeArray behind function data (the array itself, baseline code's, or
/// interpreter data's), if any.
pub fn bytecode_array_of(heap: &mut Heap<'_>, data: u64) -> Option<u64> {
    let mut obj = data;
    for _ in 0..3 {
        if !is_heap_object(obj) {
            return None;
        }
        let t = heap.instance_type(obj).ok()?;
        let l: &Layout = heap.layout();
        if t == l.types.bytecode_array {
            return Some(obj);
        }
        let next = if t == l.types.code {
            l.code_deoptimization_data
        } else if Some(t) == l.types.interpreter_data {
            l.interpreter_data_bytecode
        } else {
            return None;
        };
        obj = heap.field("function data", obj, next).ok()?;
    }
    None
}

/// Reads the SharedFunctionInfo `sfi` (tagged).
pub fn read_function(
    heap: &mut Heap<'_>,
    scripts: &mut dyn Scripts,
    sfi: u64,
) -> Result<FunctionInfo, Error> {
    let types_sfi = heap.layout().types.shared_function_info;
    heap.expect_type("SharedFunctionInfo", sfi, types_sfi)?;
    let l = heap.layout();
    let (nos_off, script_off) = (l.sfi_name_or_scope_info, l.sfi_script);
    let scope_info_type = l.types.scope_info;
    let script_type = l.types.script;

    let nos = heap.field("name or scope info", sfi, nos_off)?;
    let script_obj = heap.field("script", sfi, script_off)?;
    let script =
        if is_heap_object(script_obj) && heap.instance_type(script_obj).ok() == Some(script_type) {
            Some(scripts.script(heap, script_obj)?)
        } else {
            None
        };

    let (data, untrusted) = function_data(heap, sfi)?;
    // A builtin's function data is its builtin ID (13.x+: the untrusted half; user
    // functions have -1 there).
    let builtin_id = |v: u64| is_smi(v) && smi_value(v) >= 0;
    let builtin = match untrusted {
        Some(u) => builtin_id(u),
        None => builtin_id(data),
    };

    let mut own_name = String::new();
    let mut inferred = None;
    let mut start_position = None;
    let mut kind = 0u8;
    let mut class: Option<Arc<str>> = None;
    if is_heap_object(nos) && heap.instance_type(nos).ok() == Some(scope_info_type) {
        let facts = read_scope_info(heap, nos)?;
        own_name = facts.function_name.unwrap_or_default();
        inferred = facts.inferred_name;
        kind = facts.function_kind;
        start_position = facts.positions.map(|(s, _)| s as u32);
        if let (Some(outer), Some(script)) = (facts.outer, &script) {
            class = enclosing_class(heap, script, outer);
        }
        // Strict code keeps no class scope in its methods' ScopeInfo: the source says.
        if let (None, Some(script), Some(at)) = (&class, &script, start_position)
            && function_kind::is_member(kind)
        {
            class = script.member_of(heap, at);
        }
    } else if is_heap_object(nos) && heap.is_string(nos) {
        own_name = heap.name(nos)?;
    }

    let name = display_name(&own_name, inferred.as_deref(), class.as_deref(), kind);

    let mut bytecode_positions = Vec::new();
    let mut bytecode_length = 0;
    if let Some(array) = bytecode_array_of(heap, data) {
        let l = heap.layout();
        let (len_off, spt_off) = (l.bytecode_length, l.bytecode_source_positions);
        bytecode_length = heap.smi_field("bytecode length", array, len_off)?.max(0) as usize;
        let table = heap.field("bytecode positions", array, spt_off)?;
        if is_heap_object(table)
            && heap
                .instance_type(table)
                .is_ok_and(|t| heap.layout().types.is_byte_array(t))
        {
            bytecode_positions = heap.byte_array("bytecode positions", table)?;
        }
    }
    Ok(FunctionInfo {
        name: Arc::from(name),
        script,
        start_position,
        bytecode_positions,
        bytecode: None,
        bytecode_length,
        builtin,
    })
}

/// The class a function is a member of: its outer scope is the class's (or, for a field
/// initializer's arrow function, the initializer's is).
fn enclosing_class(heap: &mut Heap<'_>, script: &ScriptInfo, outer: u64) -> Option<Arc<str>> {
    let mut scope = outer;
    for _ in 0..2 {
        let facts = read_scope_info(heap, scope).ok()?;
        match facts.scope_type {
            Some(ScopeType::Class) => {
                let (start, _) = facts.positions?;

                return script.class_name(heap, start as u32);
            }
            Some(ScopeType::Function) if function_kind::is_initializer(facts.function_kind) => {
                scope = facts.outer?;
            }
            _ => return None,
        }
    }
    None
}

/// A function's name as its users read it: `Class.method` for class members, `new Class`
/// for a constructor, the inferred name of an anonymous function expression, else
/// `<anonymous>`.
pub fn display_name(own: &str, inferred: Option<&str>, class: Option<&str>, kind: u8) -> String {
    let base = if !own.is_empty() {
        own
    } else {
        inferred.unwrap_or("")
    };
    match class {
        Some(c) if function_kind::is_constructor(kind) => format!("new {c}"),
        Some(c) if !base.is_empty() => format!("{c}.{base}"),
        _ if base.is_empty() => "<anonymous>".to_string(),
        _ => base.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_as_users_read_them() {
        assert_eq!(display_name("run", None, Some("Worker"), 22), "Worker.run");
        assert_eq!(
            display_name("Worker", None, Some("Worker"), 4),
            "new Worker"
        );
        assert_eq!(
            display_name("", Some("obj.assigned"), None, 0),
            "obj.assigned"
        );
        assert_eq!(display_name("", None, None, 11), "<anonymous>");
        assert_eq!(display_name("plain", None, None, 0), "plain");
        assert_eq!(display_name("", None, Some("K"), 11), "<anonymous>");
    }
}
