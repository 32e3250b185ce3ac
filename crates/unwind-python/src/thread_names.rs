//! The names of a process's `threading.Thread`s (`MainThread`, `worker-3`, ...), read from its
//! memory, by OS thread.
//!
//! Each interpreter's `sys.modules` holds the `threading` module once a program has imported
//! it; its `_active` dict maps each running thread's `get_ident()` to its `Thread` object,
//! whose `_name` attribute is the name and whose `_native_id` attribute (3.8+) is the OS
//! thread ID. 3.6 and 3.7 have no `_native_id`: there the OS thread ID is read from glibc's
//! thread descriptor, which the ident points to (`pthread_self()`), on x86-64 only.
//! Bounded: at most [`MAX_INTERPRETERS`] interpreters,
//! [`MAX_PY_THREADS`] threads each, [`MAX_THREAD_ATTRIBUTES`] attributes per thread and
//! [`MAX_DICT_ENTRIES`](crate::objects::MAX_DICT_ENTRIES) entries per dict; a thread that does
//! not read is left out, the others are still returned.

use ferroscope_unwind_api::ProcessMemory;

use crate::code::read_str;
use crate::objects::{
    ObjectLayout, dict_get, dict_items, instance_attributes, module_dict, read_int, str_is,
};
use crate::{Error, Layout, MAX_INTERPRETERS};

/// Longest thread name kept, in characters.
pub const MAX_THREAD_NAME: usize = 256;
/// Most threads read per interpreter.
pub const MAX_PY_THREADS: usize = 4096;
/// Most attributes of a `Thread` object looked at (`_name` and `_native_id` are among the
/// first of `Thread.__init__`'s).
pub const MAX_THREAD_ATTRIBUTES: usize = 256;

/// Where glibc's x86-64 `struct pthread` keeps the thread's kernel TID (`tid`, at 0x2d0 in
/// every glibc since 2.x; what `_thread_db_pthread_tid` describes to debuggers).
#[cfg(target_arch = "x86_64")]
const GLIBC_PTHREAD_TID: Option<u64> = Some(0x2d0);
#[cfg(not(target_arch = "x86_64"))]
const GLIBC_PTHREAD_TID: Option<u64> = None;

/// One `threading.Thread` of a process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PyThread {
    /// The key in `threading._active`: `threading.get_ident()`, the thread's
    /// `pthread_self()`.
    pub ident: u64,
    /// `Thread._native_id`: the OS thread ID (3.8+; `None` before it is set). 3.6 and 3.7:
    /// the `tid` of glibc's thread descriptor at `ident` (x86-64; `None` elsewhere, or when
    /// it does not read as a TID).
    pub native_id: Option<u32>,
    /// `Thread._name`.
    pub name: String,
}

/// Every `threading.Thread` alive in the process, from each interpreter's
/// `threading._active`. `interp_head` is the address of the pointer to the first interpreter
/// (`&_PyRuntime.interpreters.head`, or 3.6's `interp_head`: what [`ebpf_proc`](crate::ebpf_proc)
/// gives the eBPF walker). A process that has not imported `threading` has none.
pub fn threading_threads(
    mem: &dyn ProcessMemory,
    layout: &Layout,
    interp_head: u64,
) -> Result<Vec<PyThread>, Error> {
    let objects = ObjectLayout::of(layout.minor);
    let mut out = Vec::new();
    let mut interp = mem
        .read_u64(interp_head)
        .map_err(Error::read("interpreter list head", interp_head))?;
    let mut seen = Vec::new();
    for _ in 0..MAX_INTERPRETERS {
        if interp == 0 || seen.contains(&interp) {
            break;
        }
        seen.push(interp);
        if let Some(active) = active_dict(mem, layout, &objects, interp)? {
            for (key, thread) in dict_items(mem, &objects, layout.minor, active)?
                .into_iter()
                .take(MAX_PY_THREADS)
            {
                match read_thread(mem, layout, &objects, key, thread) {
                    Ok(Some(t)) => out.push(t),
                    Ok(None) => {}
                    Err(e) => {
                        tracing::trace!(thread, error = %e, "a threading.Thread did not read")
                    }
                }
            }
        }
        let at = interp.wrapping_add(u64::from(layout.interp_next));
        interp = mem
            .read_u64(at)
            .map_err(Error::read("interpreter's next", at))?;
    }
    Ok(out)
}

/// `threading._active` of one interpreter, `None` when `threading` is not imported there.
pub fn active_dict(
    mem: &dyn ProcessMemory,
    layout: &Layout,
    objects: &ObjectLayout,
    interp: u64,
) -> Result<Option<u64>, Error> {
    let at = interp.wrapping_add(u64::from(layout.interp_modules));
    let modules = mem
        .read_u64(at)
        .map_err(Error::read("interpreter's sys.modules", at))?;
    if modules == 0 {
        // An interpreter still starting up.
        return Ok(None);
    }
    let Some(threading) = dict_get(mem, layout, objects, modules, "threading")? else {
        return Ok(None);
    };
    let globals = module_dict(mem, threading)?;
    dict_get(mem, layout, objects, globals, "_active")
}

/// One `_active` entry: the ident key and the `Thread` object; `None` when the thread has
/// no `_name` yet.
fn read_thread(
    mem: &dyn ProcessMemory,
    layout: &Layout,
    objects: &ObjectLayout,
    key: u64,
    thread: u64,
) -> Result<Option<PyThread>, Error> {
    let ident = read_int(mem, objects, key)?.unwrap_or(0);
    // `_native_id` is None until the thread runs: an int only when of the key's type.
    let int_type = mem
        .read_u64(key.wrapping_add(8))
        .map_err(Error::read("int object's type", key))?;
    let is_int = |v: u64| mem.read_u64(v.wrapping_add(8)).is_ok_and(|t| t == int_type);
    let mut name = None;
    let mut native_id = None;
    for (k, v) in instance_attributes(mem, layout, objects, thread)?
        .into_iter()
        .take(MAX_THREAD_ATTRIBUTES)
    {
        if name.is_none() && str_is(mem, layout, k, "_name") {
            let mut s = read_str(mem, layout, v)?;
            if let Some((cut, _)) = s.char_indices().nth(MAX_THREAD_NAME) {
                s.truncate(cut);
            }
            name = Some(s);
        } else if native_id.is_none() && str_is(mem, layout, k, "_native_id") && is_int(v) {
            native_id = read_int(mem, objects, v)
                .ok()
                .flatten()
                .and_then(|n| u32::try_from(n).ok());
        }
    }
    if native_id.is_none() && layout.minor <= 7 {
        native_id = glibc_tid(mem, ident);
    }
    Ok(name.map(|name| PyThread {
        ident,
        native_id,
        name,
    }))
}

/// The kernel TID in glibc's descriptor of the thread whose `pthread_self()` is `ident`.
/// Callers compare it with the TID they look for: any other value (musl, or not a
/// descriptor) simply matches nothing.
fn glibc_tid(mem: &dyn ProcessMemory, ident: u64) -> Option<u32> {
    let at = ident.checked_add(GLIBC_PTHREAD_TID?)?;
    let mut b = [0u8; 4];
    mem.read_exact_at(at, &mut b).ok()?;
    let tid = i32::from_le_bytes(b);
    u32::try_from(tid).ok().filter(|&t| t > 0)
}
