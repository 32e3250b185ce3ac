//! Probe links (`probe_links`, `u_probe_links`, `record --probe`): parsing them, finding the
//! function in the file (its `.symtab`, `.dynsym`, or separate debug file), attaching a uprobe
//! or uretprobe there, and, with `load_probe`, attaching again to files of the same name that
//! processes map later (a `dlopen`, a container's copy of the library).
//!
//! Every link is checked before sampling starts, so that a typo is one error at start-up,
//! naming the link, with nothing attached.

use std::collections::HashSet;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ferroscope_ebpf_programs::{ProbeKind, ProbeTarget};
use ferroscope_symbolize::debuglink::{DebugRefs, find_debug_file};
use ferroscope_symbolize::root::FsRoot;
use object::{Object, ObjectSegment, ObjectSymbol};

use crate::Error;
use crate::session::Session;

/// Directories a bare library name (`libc.so.6`) is looked for in, in order (the dynamic
/// linker's defaults on Debian and Red Hat systems).
const LIBRARY_DIRS: &[&str] = &[
    "/lib/x86_64-linux-gnu",
    "/usr/lib/x86_64-linux-gnu",
    "/lib64",
    "/usr/lib64",
    "/lib",
    "/usr/lib",
    "/usr/local/lib",
];

/// How often pending links are looked for in the processes' mappings (`load_probe`).
const POLL_EVERY: Duration = Duration::from_secs(1);

/// One parsed probe link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeLink {
    /// The link as given.
    pub text: String,
    /// Entry or return.
    pub kind: ProbeKind,
    /// The file as given: a path, or a bare file name looked for in the library directories.
    pub file: String,
    /// The function.
    pub symbol: String,
}

impl ProbeLink {
    /// Parses `uprobe:PATH:SYMBOL` or `uretprobe:PATH:SYMBOL`. `kprobe:` and `kretprobe:`
    /// are refused: ferroscope does not attach kernel probes (and this kernel may have none).
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
        let kind = match kind {
            "uprobe" => ProbeKind::Entry,
            "uretprobe" => ProbeKind::Return,
            "kprobe" | "kretprobe" => {
                let why = if kprobes_available() {
                    "kernel probes are not supported by ferroscope yet; use uprobe: or \
                     uretprobe: links"
                } else {
                    "this kernel has no kprobes (it was built without CONFIG_KPROBES: \
                     /sys/bus/event_source/devices/kprobe does not exist); use uprobe: or \
                     uretprobe: links"
                };
                return Err(bad(why.into()));
            }
            other => {
                return Err(bad(format!(
                    "unknown probe type {other:?}: use uprobe:PATH:SYMBOL or uretprobe:PATH:SYMBOL"
                )));
            }
        };
        let (file, symbol) = rest
            .rsplit_once(':')
            .filter(|(f, s)| !f.is_empty() && !s.is_empty())
            .ok_or_else(|| {
                bad("a uprobe link is uprobe:PATH:SYMBOL, e.g. uprobe:libc.so.6:malloc".into())
            })?;
        Ok(ProbeLink {
            text: text.to_owned(),
            kind,
            file: file.to_owned(),
            symbol: symbol.to_owned(),
        })
    }

    /// The file's name, which a mapped file must have to be this link's (`load_probe`).
    fn file_name(&self) -> &str {
        self.file.rsplit('/').next().unwrap_or(&self.file)
    }

    /// The file on the host now: the path as given, or a bare name in the library
    /// directories.
    fn locate(&self) -> Option<PathBuf> {
        if self.file.contains('/') {
            let p = PathBuf::from(&self.file);
            return p.is_file().then_some(p);
        }
        LIBRARY_DIRS
            .iter()
            .map(|d| Path::new(d).join(&self.file))
            .find(|p| p.is_file())
    }
}

/// Whether the running kernel can attach kprobes.
fn kprobes_available() -> bool {
    Path::new("/sys/bus/event_source/devices/kprobe").exists()
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

/// The probe links of a session: those attached, and (with `load_probe`) those waiting for
/// a process to map their file.
#[derive(Debug)]
pub struct Probes {
    links: Vec<ProbeLink>,
    load_probe: bool,
    /// Files (device, inode) each link is attached to.
    attached: Vec<HashSet<(u64, u64)>>,
    /// Attach in these processes only (`record --pid`); `None`: in every process.
    scope: Option<Vec<u32>>,
    /// Files a link's symbol is missing from (said once).
    refused: HashSet<(usize, u64, u64)>,
    last_poll: Option<Instant>,
}

impl Probes {
    /// Parses and checks every link: each file found (or, with `load_probe`, possibly
    /// mapped later) and its function there. Nothing is attached yet.
    pub fn check(links: &[String], load_probe: bool) -> Result<Probes, Error> {
        let mut parsed = Vec::with_capacity(links.len());
        for text in links {
            let link = ProbeLink::parse(text)?;
            match link.locate() {
                Some(path) => {
                    symbol_offset(&path, &link.symbol).map_err(|why| Error::ProbeLink {
                        link: text.clone(),
                        why,
                    })?;
                }
                // Attached when a process maps a file of its name.
                None if load_probe => {}
                None => {
                    return Err(Error::ProbeLink {
                        link: text.clone(),
                        why: format!(
                            "no file {:?}{}; give its full path, or set load_probe to attach it \
                             when a process loads it",
                            link.file,
                            if link.file.contains('/') {
                                String::new()
                            } else {
                                format!(" in {}", LIBRARY_DIRS.join(", "))
                            }
                        ),
                    });
                }
            }
            parsed.push(link);
        }
        if parsed.len() > usize::from(u16::MAX) {
            return Err(Error::ProbeLink {
                link: format!("{} links", parsed.len()),
                why: "at most 65535 probe links".into(),
            });
        }
        Ok(Probes {
            attached: vec![HashSet::new(); parsed.len()],
            links: parsed,
            load_probe,
            refused: HashSet::new(),
            last_poll: None,
            scope: None,
        })
    }

    /// Attaches the probes in these processes only: the kernel then puts the breakpoints in
    /// their memory alone, and other processes calling the function do not trap (`record
    /// --pid` without `--children`). Without it, every process that maps the file traps on
    /// each call, profiled or not.
    pub fn only_in(&mut self, pids: &[u32]) {
        self.scope = Some(pids.to_vec());
    }

    /// Whether there are links at all.
    pub fn is_empty(&self) -> bool {
        self.links.is_empty()
    }

    /// The links, in index order (a probe sample's index is its link's).
    pub fn links(&self) -> &[ProbeLink] {
        &self.links
    }

    /// Attaches every link whose file is there now. An error names the link.
    pub fn attach(&mut self, session: &mut Session) -> Result<(), Error> {
        for i in 0..self.links.len() {
            match self.links[i].locate() {
                Some(path) => self.attach_file(session, i, &path, true)?,
                None => tracing::warn!(
                    link = %self.links[i].text,
                    "the probe's file is not there yet; it is attached when a process maps a \
                     file named {:?} (load_probe)",
                    self.links[i].file_name()
                ),
            }
        }
        Ok(())
    }

    /// With `load_probe`, at most once a second: attaches the links to files of their name
    /// that the processes (`pids`, or every process) map and that are not attached yet.
    pub fn poll(&mut self, session: &mut Session, pids: Option<&[u32]>) {
        if !self.load_probe || self.links.is_empty() {
            return;
        }
        if self.last_poll.is_some_and(|t| t.elapsed() < POLL_EVERY) {
            return;
        }
        self.last_poll = Some(Instant::now());
        let all;
        let pids = match pids {
            Some(p) => p,
            None => {
                all = crate::session::live_pids().into_iter().collect::<Vec<_>>();
                &all
            }
        };
        for &pid in pids {
            let Ok(maps) = std::fs::read_to_string(format!("/proc/{pid}/maps")) else {
                continue;
            };
            let mut seen = HashSet::new();
            for line in maps.lines() {
                let mut fields = line.split_whitespace();
                let (Some(_), Some(_), Some(_), Some(_), Some(inode), Some(path)) = (
                    fields.next(),
                    fields.next(),
                    fields.next(),
                    fields.next(),
                    fields.next(),
                    fields.next(),
                ) else {
                    continue;
                };
                if inode == "0" || !path.starts_with('/') || !seen.insert(path) {
                    continue;
                }
                let name = path.rsplit('/').next().unwrap_or(path);
                for i in 0..self.links.len() {
                    if self.links[i].file_name() != name {
                        continue;
                    }
                    // Through the process's root: the file it maps, in its mount namespace.
                    let through = PathBuf::from(format!("/proc/{pid}/root{path}"));
                    if let Err(e) = self.attach_file(session, i, &through, false) {
                        tracing::warn!(
                            link = %self.links[i].text,
                            pid,
                            "cannot attach the probe to the file the process loaded: {}",
                            crate::error::Chain(&e)
                        );
                    }
                }
            }
        }
    }

    /// Attaches link `i` to the file at `path` unless it is attached there already. A file
    /// without the function is an error when `strict`, else said once and skipped.
    fn attach_file(
        &mut self,
        session: &mut Session,
        i: usize,
        path: &Path,
        strict: bool,
    ) -> Result<(), Error> {
        let Ok(meta) = std::fs::metadata(path) else {
            return Ok(());
        };
        let identity = (meta.dev(), meta.ino());
        if self.attached[i].contains(&identity) {
            return Ok(());
        }
        let link = &self.links[i];
        let offset = match symbol_offset(path, &link.symbol) {
            Ok(o) => o,
            Err(why) if strict => {
                return Err(Error::ProbeLink {
                    link: link.text.clone(),
                    why,
                });
            }
            Err(why) => {
                if self.refused.insert((i, identity.0, identity.1)) {
                    tracing::warn!(link = %link.text, "not attached to {}: {why}", path.display());
                }
                return Ok(());
            }
        };
        let pids: Vec<Option<u32>> = match &self.scope {
            Some(pids) => pids.iter().map(|&p| Some(p)).collect(),
            None => vec![None],
        };
        for pid in pids {
            session.attach_probe(&ProbeTarget {
                kind: link.kind,
                path: path.to_owned(),
                offset,
                index: i as u16,
                pid,
            })?;
        }
        tracing::info!(link = %link.text, file = %path.display(), offset, "probe attached");
        self.attached[i].insert(identity);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_parse_and_bad_ones_say_why() {
        let l = ProbeLink::parse("uprobe:/usr/lib/libc.so.6:malloc").unwrap();
        assert_eq!(
            (l.kind, l.file.as_str(), l.symbol.as_str()),
            (ProbeKind::Entry, "/usr/lib/libc.so.6", "malloc")
        );
        let l = ProbeLink::parse("uretprobe:libc.so.6:free").unwrap();
        assert_eq!((l.kind, l.file_name()), (ProbeKind::Return, "libc.so.6"));
        for (bad, says) in [
            ("malloc", "TYPE:"),
            ("tracepoint:sched:sched_switch", "unknown probe type"),
            ("uprobe:malloc", "uprobe:PATH:SYMBOL"),
            ("uprobe:/lib/libc.so.6:", "uprobe:PATH:SYMBOL"),
            ("kprobe:do_sys_open", "kprobe"),
        ] {
            let e = ProbeLink::parse(bad).unwrap_err().to_string();
            assert!(e.contains(bad) && e.contains(says), "{bad}: {e}");
        }
    }

    #[test]
    fn a_libc_function_is_found_and_a_missing_one_is_refused() {
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
