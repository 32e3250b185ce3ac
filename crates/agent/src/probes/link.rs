//! One probe link (`uprobe:PATH:SYMBOL`, `uretprobe:`, `kprobe:SYMBOL`, `kretprobe:`): parsing
//! it, and finding its function: in the file's `.symtab`, `.dynsym` or separate debug file for
//! a uprobe, in `/proc/kallsyms` for a kernel probe.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use ferroscope_ebpf_programs::ProbeKind;
use ferroscope_symbolize::debuglink::{DebugRefs, find_debug_file};
use ferroscope_symbolize::root::FsRoot;
use object::{Object, ObjectSegment, ObjectSymbol};

use crate::Error;

/// Directories a bare library name (`libc.so.6`) is looked for in, in order (the dynamic
/// linker's defaults on Debian and Red Hat systems).
pub(super) const LIBRARY_DIRS: &[&str] = &[
    "/lib/x86_64-linux-gnu",
    "/usr/lib/x86_64-linux-gnu",
    "/lib64",
    "/usr/lib64",
    "/lib",
    "/usr/lib",
    "/usr/local/lib",
];

/// Where the kernel lists the functions kprobes refuse (with debugfs mounted).
const KPROBE_BLACKLIST: &str = "/sys/kernel/debug/kprobes/blacklist";

/// One parsed probe link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeLink {
    /// The link as given.
    pub text: String,
    /// Entry or return.
    pub kind: ProbeKind,
    /// The file as given: a path, or a bare file name looked for in the library directories;
    /// `None` for a kernel function (`kprobe:`, `kretprobe:`).
    pub file: Option<String>,
    /// The function.
    pub symbol: String,
}

impl ProbeLink {
    /// Parses `uprobe:PATH:SYMBOL`, `uretprobe:PATH:SYMBOL`, `kprobe:SYMBOL` or
    /// `kretprobe:SYMBOL`. A kernel probe is refused at once on a kernel without kprobes.
    pub fn parse(text: &str) -> Result<ProbeLink, Error> {
        let bad = |why: String| Error::ProbeLink {
            link: text.to_owned(),
            why,
        };
        let (kind, rest) = text.split_once(':').ok_or_else(|| {
            bad(
                "a probe link is TYPE:..., e.g. uprobe:/usr/lib/x86_64-linux-gnu/libc.so.6:malloc"
                    .into(),
            )
        })?;
        let (kind, kernel) = match kind {
            "uprobe" => (ProbeKind::Entry, false),
            "uretprobe" => (ProbeKind::Return, false),
            "kprobe" => (ProbeKind::Entry, true),
            "kretprobe" => (ProbeKind::Return, true),
            other => {
                return Err(bad(format!(
                    "unknown probe type {other:?}: use uprobe:PATH:SYMBOL, uretprobe:PATH:SYMBOL, \
                     kprobe:SYMBOL or kretprobe:SYMBOL"
                )));
            }
        };
        if kernel {
            if rest.is_empty() || rest.contains([':', '/', ' ']) {
                return Err(bad(
                    "a kernel probe link is kprobe:FUNCTION, e.g. kprobe:do_sys_openat2".into(),
                ));
            }
            if !kprobes_available() {
                return Err(bad(
                    "this kernel has no kprobes (it was built without CONFIG_KPROBES: \
                     /sys/bus/event_source/devices/kprobe does not exist); use uprobe: or \
                     uretprobe: links, or a kernel with kprobes"
                        .into(),
                ));
            }
            return Ok(ProbeLink {
                text: text.to_owned(),
                kind,
                file: None,
                symbol: rest.to_owned(),
            });
        }
        let (file, symbol) = rest
            .rsplit_once(':')
            .filter(|(f, s)| !f.is_empty() && !s.is_empty())
            .ok_or_else(|| {
                bad("a uprobe link is uprobe:PATH:SYMBOL, e.g. uprobe:libc.so.6:malloc".into())
            })?;
        Ok(ProbeLink {
            text: text.to_owned(),
            kind,
            file: Some(file.to_owned()),
            symbol: symbol.to_owned(),
        })
    }

    /// Whether the function is the kernel's.
    pub fn is_kernel(&self) -> bool {
        self.file.is_none()
    }

    /// The file's name, which a mapped file must have to be this link's (`load_probe`);
    /// `None` for a kernel function.
    pub(super) fn file_name(&self) -> Option<&str> {
        let file = self.file.as_deref()?;
        Some(file.rsplit('/').next().unwrap_or(file))
    }

    /// The file on the host now: the path as given, or a bare name in the library
    /// directories (`None` for a kernel function).
    pub(super) fn locate(&self) -> Option<PathBuf> {
        let file = self.file.as_deref()?;
        if file.contains('/') {
            let p = PathBuf::from(file);
            return p.is_file().then_some(p);
        }
        LIBRARY_DIRS
            .iter()
            .map(|d| Path::new(d).join(file))
            .find(|p| p.is_file())
    }
}

/// Whether the running kernel can attach kprobes.
fn kprobes_available() -> bool {
    Path::new("/sys/bus/event_source/devices/kprobe").exists()
}

/// Checks that the running kernel has a function `name` a kprobe can attach to: a text symbol
/// of `/proc/kallsyms` (the kernel's or a loaded module's), and not on the kprobe blacklist.
pub fn kernel_function(name: &str) -> Result<(), String> {
    let kallsyms = std::fs::read_to_string("/proc/kallsyms")
        .map_err(|e| format!("cannot read /proc/kallsyms to find {name:?}: {e}"))?;
    if !kallsyms_has_function(&kallsyms, name) {
        return Err(format!(
            "the kernel has no function {name:?} (it is not a text symbol of /proc/kallsyms: \
             check the name with `grep -w {name} /proc/kallsyms`; a function the compiler \
             inlined everywhere cannot be probed)"
        ));
    }
    // Readable only with debugfs mounted; without it the attach itself refuses.
    if let Ok(list) = std::fs::read_to_string(KPROBE_BLACKLIST)
        && blacklist_has(&list, name)
    {
        return Err(format!(
            "the kernel refuses kprobes on {name:?}: it is on the kprobe blacklist \
             ({KPROBE_BLACKLIST}); probe a function that calls it, or one it calls"
        ));
    }
    Ok(())
}

/// Whether `kallsyms` (the text of /proc/kallsyms: `ADDRESS TYPE NAME [MODULE]` lines) has a
/// text symbol `name`.
pub fn kallsyms_has_function(kallsyms: &str, name: &str) -> bool {
    kallsyms.lines().any(|line| {
        let mut fields = line.split_ascii_whitespace();
        let (Some(_), Some(kind), Some(symbol)) = (fields.next(), fields.next(), fields.next())
        else {
            return false;
        };
        symbol == name && matches!(kind, "t" | "T" | "w" | "W")
    })
}

/// Whether the kprobe blacklist (`START-END NAME` lines) names `name`.
fn blacklist_has(list: &str, name: &str) -> bool {
    list.lines()
        .any(|line| line.split_ascii_whitespace().nth(1) == Some(name))
}

/// The file offset of `symbol`'s first instruction in the ELF file at `path`, from its
/// `.symtab`, its `.dynsym`, or its separate debug file.
pub fn symbol_offset(path: &Path, symbol: &str) -> Result<u64, String> {
    let data = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let file = object::File::parse(&*data)
        .map_err(|e| format!("{} is not an ELF file: {e}", path.display()))?;
    let mut address = find_symbol(&file, symbol);
    if address.is_none() {
        let refs = DebugRefs::of(&file);
        let identity = std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()));
        if let Some(found) = find_debug_file(&FsRoot::Host, path, &refs, identity) {
            let cache = object::ReadCache::new(&found.file);
            if let Ok(debug) = object::File::parse(&cache) {
                address = find_symbol(&debug, symbol);
            }
        }
    }
    let address = address.ok_or_else(|| {
        format!(
            "{} has no function {symbol:?} in its .symtab, .dynsym or debug file",
            path.display()
        )
    })?;
    file_offset_of(&file, address).ok_or_else(|| {
        format!(
            "{symbol:?} at {address:#x} lies in no loaded segment of {}",
            path.display()
        )
    })
}

/// `symbol_offset` of an ELF file's bytes, without the debug file (what the fuzz target
/// runs).
pub fn symbol_offset_in(data: &[u8], symbol: &str) -> Option<u64> {
    let file = object::File::parse(data).ok()?;
    file_offset_of(&file, find_symbol(&file, symbol)?)
}

/// The file offset of virtual address `address`: in the segment that holds it, address - its
/// address + its offset.
fn file_offset_of<'d, R: object::ReadRef<'d>>(
    file: &object::File<'d, R>,
    address: u64,
) -> Option<u64> {
    file.segments().find_map(|s| {
        let (offset, size) = s.file_range();
        let start = s.address();
        if address >= start && address - start < size {
            (address - start).checked_add(offset)
        } else {
            None
        }
    })
}

/// The address of the defined function `name` (a versioned dynamic name such as
/// `malloc@@GLIBC_2.2.5` matches `malloc`).
fn find_symbol<'d, R: object::ReadRef<'d>>(file: &object::File<'d, R>, name: &str) -> Option<u64> {
    let matches = |s: &object::Symbol<'d, '_, R>| {
        s.is_definition()
            && s.kind() == object::SymbolKind::Text
            && s.name()
                .is_ok_and(|n| n == name || n.split('@').next() == Some(name))
    };
    file.symbols()
        .find(matches)
        .or_else(|| file.dynamic_symbols().find(matches))
        .map(|s| s.address())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_parse_and_bad_ones_say_why() {
        let l = ProbeLink::parse("uprobe:/usr/lib/libc.so.6:malloc").unwrap();
        assert_eq!(
            (l.kind, l.file.as_deref(), l.symbol.as_str()),
            (ProbeKind::Entry, Some("/usr/lib/libc.so.6"), "malloc")
        );
        let l = ProbeLink::parse("uretprobe:libc.so.6:free").unwrap();
        assert_eq!(
            (l.kind, l.file_name()),
            (ProbeKind::Return, Some("libc.so.6"))
        );
        for (bad, says) in [
            ("malloc", "TYPE:"),
            ("tracepoint:sched:sched_switch", "unknown probe type"),
            ("uprobe:malloc", "uprobe:PATH:SYMBOL"),
            ("uprobe:/lib/libc.so.6:", "uprobe:PATH:SYMBOL"),
            ("kprobe:", "kprobe:FUNCTION"),
            ("kretprobe:/lib/libc.so.6:malloc", "kprobe:FUNCTION"),
        ] {
            let e = ProbeLink::parse(bad).unwrap_err().to_string();
            assert!(e.contains(bad) && e.contains(says), "{bad}: {e}");
        }
        // A kernel function's link: parsed where the kernel has kprobes, refused clearly
        // where it has none (as on the development machines).
        for (text, kind) in [
            ("kprobe:do_sys_openat2", ProbeKind::Entry),
            ("kretprobe:do_sys_openat2", ProbeKind::Return),
        ] {
            match ProbeLink::parse(text) {
                Ok(l) => {
                    assert!(kprobes_available(), "{text} parsed without kprobes");
                    assert_eq!(
                        (l.kind, l.file, l.symbol.as_str()),
                        (kind, None, "do_sys_openat2")
                    );
                }
                Err(e) => {
                    assert!(!kprobes_available(), "{text}: {e}");
                    let e = e.to_string();
                    assert!(e.contains(text) && e.contains("CONFIG_KPROBES"), "{e}");
                }
            }
        }
    }

    #[test]
    fn kernel_functions_are_looked_up_in_kallsyms() {
        let text = "ffffffff81000000 T _stext\n\
                    ffffffff81001000 t do_one_thing\n\
                    ffffffff82000000 D some_variable\n\
                    ffffffffc0000000 t mod_func\t[some_module]\n";
        assert!(kallsyms_has_function(text, "do_one_thing"));
        assert!(kallsyms_has_function(text, "mod_func"));
        assert!(
            !kallsyms_has_function(text, "some_variable"),
            "data is not a function"
        );
        assert!(!kallsyms_has_function(text, "do_one"), "whole names only");
        assert!(blacklist_has(
            "0xffffffff81001000-0xffffffff81001010\tdo_one_thing\n",
            "do_one_thing"
        ));
        // The running kernel's own table.
        kernel_function("schedule").unwrap();
        let e = kernel_function("no_such_kernel_function_here").unwrap_err();
        assert!(e.contains("kallsyms"), "{e}");
    }

    #[test]
    fn a_libc_function_is_found_and_a_missing_one_is_refused() {
        use super::super::Probes;
        let libc = ProbeLink::parse("uprobe:libc.so.6:malloc")
            .unwrap()
            .locate()
            .expect("libc.so.6 in the library directories");
        let offset = symbol_offset(&libc, "malloc").unwrap();
        assert!(offset > 0);
        let e = symbol_offset(&libc, "no_such_function_here").unwrap_err();
        assert!(e.contains("no function"), "{e}");
        let e = Probes::check(&["uprobe:libc.so.6:no_such_function_here".into()], false)
            .unwrap_err()
            .to_string();
        assert!(e.contains("uprobe:libc.so.6:no_such_function_here"), "{e}");
        let e = Probes::check(&["uprobe:/no/such/lib.so:f".into()], false)
            .unwrap_err()
            .to_string();
        assert!(e.contains("load_probe"), "{e}");
        // With load_probe a missing file waits.
        assert!(Probes::check(&["uprobe:libnotyet.so:f".into()], true).is_ok());
    }

    fn run(cmd: &mut std::process::Command) {
        let out = cmd.output().expect("the tool runs");
        assert!(
            out.status.success(),
            "{cmd:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// A function only the debug file names (a static function of a stripped library) is
    /// found through the library's `.gnu_debuglink`, at the offset it had before stripping.
    #[test]
    fn a_function_of_a_stripped_library_is_found_in_its_debug_file() {
        use std::process::Command;
        let dir = tempfile::tempdir().unwrap();
        let src =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/probes/plugin.c");
        let lib = dir.path().join("libstripped.so");
        run(Command::new("gcc")
            .args(["-O1", "-g", "-shared", "-fPIC", "-o"])
            .arg(&lib)
            .arg(&src));
        let before = symbol_offset(&lib, "plugin_inner").unwrap();
        let debug = dir.path().join("libstripped.so.debug");
        run(Command::new("objcopy")
            .arg("--only-keep-debug")
            .arg(&lib)
            .arg(&debug));
        run(Command::new("strip").arg("--strip-unneeded").arg(&lib));
        run(Command::new("objcopy")
            .arg(format!("--add-gnu-debuglink={}", debug.display()))
            .arg(&lib));
        let data = std::fs::read(&lib).unwrap();
        assert_eq!(
            symbol_offset_in(&data, "plugin_inner"),
            None,
            "stripped: not in the library itself"
        );
        assert_eq!(symbol_offset(&lib, "plugin_inner").unwrap(), before);
        // An exported function is still found in .dynsym.
        assert!(symbol_offset_in(&data, "plugin_outer").is_some());
        std::fs::remove_file(&debug).unwrap();
        let e = symbol_offset(&lib, "plugin_inner").unwrap_err();
        assert!(e.contains("debug file"), "{e}");
    }
}
