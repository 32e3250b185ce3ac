//! The binary's self-description: the `v8dbg_*` constants V8's build emits for post-mortem
//! debuggers (`tools/gen-postmortem-metadata.py`), each a 32-bit value behind a symbol.
//!
//! Field constants are named `v8dbg_class_<Class>__<field>__<type>`, where the type part has
//! changed across versions (`SharedFunctionInfo` then `Tagged_SharedFunctionInfo_`): every
//! lookup here takes a class, a field and the type spellings seen so far, and
//! [`Constants::field_any_type`] tries them all.

use std::collections::HashMap;

use ferroscope_unwind_api::ElfFile;

/// The `v8dbg_*` constants of one file, read on demand and remembered.
pub struct Constants<'a> {
    file: &'a dyn ElfFile,
    seen: HashMap<String, Option<i64>>,
}

impl std::fmt::Debug for Constants<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Constants")
            .field("path", &self.file.path())
            .field("read", &self.seen.len())
            .finish()
    }
}

impl<'a> Constants<'a> {
    /// The constants of `file`.
    pub fn new(file: &'a dyn ElfFile) -> Self {
        Constants {
            file,
            seen: HashMap::new(),
        }
    }

    /// `v8dbg_<name>`: its value, 0 when the symbol is in `.bss` (a zero constant), `None`
    /// when the file has no such symbol.
    pub fn get(&mut self, name: &str) -> Option<i64> {
        if let Some(v) = self.seen.get(name) {
            return *v;
        }
        let full = format!("v8dbg_{name}");
        let v = self.file.symbol(&full).map(|s| {
            let mut b = [0u8; 4];
            if self.file.read_vaddr(s.address, &mut b) {
                i64::from(i32::from_le_bytes(b))
            } else {
                0
            }
        });
        self.seen.insert(name.to_string(), v);
        v
    }

    /// The first of several spellings that exists.
    pub fn first(&mut self, names: &[&str]) -> Option<i64> {
        names.iter().find_map(|n| self.get(n))
    }

    /// `v8dbg_class_<class>__<field>__<type>` for any of `types`.
    pub fn field(&mut self, class: &str, field: &str, types: &[&str]) -> Option<i64> {
        types
            .iter()
            .find_map(|t| self.get(&format!("class_{class}__{field}__{t}")))
    }

    /// A field whose type spelling is one of the usual ones for object fields.
    pub fn field_any_type(&mut self, class: &str, field: &str, tagged: &str) -> Option<i64> {
        let spellings = [
            tagged.to_string(),
            format!("Tagged_{tagged}_"),
            "Object".to_string(),
            "Tagged_Object_".to_string(),
            "HeapObject".to_string(),
            "Tagged_HeapObject_".to_string(),
        ];
        let refs: Vec<&str> = spellings.iter().map(String::as_str).collect();
        self.field(class, field, &refs)
    }

    /// `v8dbg_type_<Class>__<TYPE>`: an instance type.
    pub fn instance_type(&mut self, class: &str, type_name: &str) -> Option<u16> {
        self.get(&format!("type_{class}__{type_name}"))
            .and_then(|v| u16::try_from(v).ok())
    }

    /// `v8dbg_frametype_<Name>`: a frame-type marker.
    pub fn frame_type(&mut self, name: &str) -> Option<u8> {
        self.get(&format!("frametype_{name}"))
            .and_then(|v| u8::try_from(v).ok())
    }

    /// Whether the file exports `v8dbg_parent_<a>__<b>` (a is derived from b).
    pub fn has_parent(&mut self, class: &str, parent: &str) -> bool {
        self.get(&format!("parent_{class}__{parent}")).is_some()
    }
}
