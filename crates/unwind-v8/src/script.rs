//! `Script`: a function's source file, as V8 loaded it (its name: a path, a `file://` URL,
//! `node:internal/...`), where its lines end, and the names of its classes. The source text
//! is read in windows and never kept whole.

use std::collections::HashMap;
use std::sync::Arc;

use crate::classes::{ClassBody, ClassScanner, is_direct_member};
use crate::heap::{Heap, MAX_SOURCE_CHARS, is_heap_object};
use crate::source::{class_name_at, line_ends};
use crate::{Error, Layout};

/// Code units of source read at once when computing line ends.
const SOURCE_CHUNK: usize = 64 << 10;
/// Class names remembered per script.
const CLASS_NAMES_LIMIT: usize = 1024;

/// A script, as far as naming frames needs it.
#[derive(Debug)]
pub struct ScriptInfo {
    /// The script's name (what V8 was given: a path, a URL), `<eval>` when it has none.
    pub name: Arc<str>,
    /// Where its lines end (V8's, or computed from the source); `None` when the source could
    /// not be read.
    pub line_ends: Option<Arc<[u32]>>,
    /// The source string (tagged), to read class names from.
    source: u64,
    /// Class names by the position their scope starts at.
    class_names: std::sync::Mutex<HashMap<u32, Option<Arc<str>>>>,
    /// The class bodies of the source, scanned on first use.
    class_bodies: std::sync::OnceLock<Arc<[ClassBody]>>,
}

impl ScriptInfo {
    /// The 1-based line of `position` (0 when unknown) and its 0-based column.
    pub fn line_column(&self, position: u32) -> (u32, u32) {
        self.line_ends
            .as_deref()
            .and_then(|ends| crate::source::line_column(ends, position))
            .unwrap_or((0, 0))
    }

    /// The name of the class whose scope starts at `position` (see
    /// [`class_name_at`](crate::source::class_name_at)), read from the source.
    pub fn class_name(&self, heap: &mut Heap<'_>, position: u32) -> Option<Arc<str>> {
        let mut names = self.class_names.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = names.get(&position) {
            return n.clone();
        }
        // A window around the position: the keyword is at or after it, an assignment before.
        let from = (position as usize).saturating_sub(512);
        let window = heap.substring(self.source, from, 1024).ok();
        let name = window
            .and_then(|w| class_name_at(&w.units, position as usize - from))
            .map(Arc::from);
        if names.len() >= CLASS_NAMES_LIMIT {
            names.clear();
        }
        names.insert(position, name.clone());
        name
    }
}

impl ScriptInfo {
    /// The class whose body `position` is a direct member of (a method, an accessor, a
    /// constructor), from the source text.
    pub fn member_of(&self, heap: &mut Heap<'_>, position: u32) -> Option<Arc<str>> {
        let bodies = self
            .class_bodies
            .get_or_init(|| scan_classes(heap, self.source).into())
            .clone();
        let body = bodies
            .iter()
            .filter(|b| b.body_start < position && position <= b.body_end)
            .max_by_key(|b| b.body_start)?;
        let from = body.body_start as usize + 1;
        let window = heap
            .substring(self.source, from, position as usize - from)
            .ok()?;
        if !is_direct_member(&window.units) {
            return None;
        }
        self.class_name(heap, body.keyword)
    }
}

/// The class bodies of a source string, scanned in chunks.
fn scan_classes(heap: &mut Heap<'_>, source: u64) -> Vec<ClassBody> {
    let mut scanner = ClassScanner::new();
    let mut from = 0usize;
    while from < MAX_SOURCE_CHARS {
        let Ok(chunk) = heap.substring(source, from, SOURCE_CHUNK) else {
            break;
        };
        scanner.feed(&chunk.units);
        from += chunk.units.len();
        if chunk.units.len() < SOURCE_CHUNK {
            break;
        }
    }
    scanner.finish()
}

/// What identifies a script object: its address and its source and name pointers (a
/// script freed and replaced at the same address differs in them).
pub type ScriptKey = (u64, u64, u64);

/// Reads the Script `obj` (tagged): the key that identifies it, and (when `known` does not
/// already hold it) what is in it.
pub fn script_key(heap: &mut Heap<'_>, obj: u64) -> Result<ScriptKey, Error> {
    let l: &Layout = heap.layout();
    let (name_off, source_off, ty) = (l.script_name, l.script_source, l.types.script);
    heap.expect_type("script", obj, ty)?;
    let name = heap.field("script name", obj, name_off)?;
    let source = heap.field("script source", obj, source_off)?;
    Ok((obj, source, name))
}

/// Reads a script whose key is `key`.
pub fn read_script(heap: &mut Heap<'_>, key: ScriptKey) -> Result<ScriptInfo, Error> {
    let (obj, source, name) = key;
    let line_ends_off = heap.layout().script_line_ends;
    let name: Arc<str> = if is_heap_object(name) && heap.is_string(name) {
        Arc::from(heap.name(name)?)
    } else {
        Arc::from("<eval>")
    };
    let mut ends = None;
    if let Some(off) = line_ends_off {
        let v = heap.field("script line ends", obj, off)?;
        let fixed_array = is_heap_object(v)
            && heap
                .instance_type(v)
                .is_ok_and(|t| heap.layout().types.is_fixed_array(t));
        if fixed_array && let Ok(words) = heap.fixed_array("script line ends", v, usize::MAX) {
            let e: Vec<u32> = words
                .iter()
                .map(|&w| crate::heap::smi_value(w).max(0) as u32)
                .collect();
            if !e.is_empty() {
                ends = Some(Arc::from(e));
            }
        }
    }
    if ends.is_none() && is_heap_object(source) && heap.is_string(source) {
        ends = source_line_ends(heap, source).ok().map(Arc::from);
    }
    Ok(ScriptInfo {
        name,
        line_ends: ends,
        source,
        class_names: std::sync::Mutex::new(HashMap::new()),
        class_bodies: std::sync::OnceLock::new(),
    })
}

/// The line ends of a source string, read in chunks.
fn source_line_ends(heap: &mut Heap<'_>, source: u64) -> Result<Vec<u32>, Error> {
    let mut ends = Vec::new();
    let mut from = 0usize;
    let mut last_cr = false;
    loop {
        let chunk = heap.substring(source, from, SOURCE_CHUNK)?;
        if chunk.units.is_empty() {
            break;
        }
        // A `\r\n` split between two chunks: the `\r` was counted as a line end.
        if last_cr && chunk.units[0] == 0x0a {
            ends.pop();
        }
        let mut local = line_ends(&chunk.units);
        local.pop(); // the chunk's own "one past the end"
        ends.extend(local.into_iter().map(|e| e + from as u32));
        last_cr = chunk.units.last() == Some(&0x0d);
        from += chunk.units.len();
        if chunk.units.len() < SOURCE_CHUNK || from >= MAX_SOURCE_CHARS {
            break;
        }
    }
    ends.push(from as u32);
    Ok(ends)
}
