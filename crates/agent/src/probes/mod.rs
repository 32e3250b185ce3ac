//! Probe links (`probe_links`, `u_probe_links`, `record --probe`): parsing them, finding the
//! function (in the file's `.symtab`, `.dynsym`, or separate debug file; a kernel function in
//! `/proc/kallsyms`), attaching a uprobe, uretprobe, kprobe or kretprobe there, and, with
//! `load_probe`, attaching uprobes again to files of the same name that processes map later
//! (a `dlopen`, a container's copy of the library).
//!
//! Every link is checked before sampling starts, so that a typo is one error at start-up,
//! naming the link, with nothing attached.

mod link;

use std::collections::HashSet;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ferroscope_ebpf_programs::{ProbeSite, ProbeTarget};

use link::LIBRARY_DIRS;
pub use link::{
    ProbeLink, kallsyms_has_function, kernel_function, symbol_offset, symbol_offset_in,
};

use crate::Error;
use crate::session::Session;

/// How often pending links are looked for in the processes' mappings (`load_probe`).
const POLL_EVERY: Duration = Duration::from_secs(1);

/// The probe links of a session: those attached, and (with `load_probe`) those waiting for
/// a process to map their file.
#[derive(Debug)]
pub struct Probes {
    links: Vec<ProbeLink>,
    load_probe: bool,
    /// Files (device, inode) each link is attached to; (0, 0) for a kernel function.
    attached: Vec<HashSet<(u64, u64)>>,
    /// Attach in these processes only (`record --pid`); `None`: in every process.
    scope: Option<Vec<u32>>,
    /// Files a link's symbol is missing from (said once).
    refused: HashSet<(usize, u64, u64)>,
    last_poll: Option<Instant>,
}

impl Probes {
    /// Parses and checks every link: each file found (or, with `load_probe`, possibly
    /// mapped later) and its function there; each kernel function in /proc/kallsyms.
    /// Nothing is attached yet.
    pub fn check(links: &[String], load_probe: bool) -> Result<Probes, Error> {
        let mut parsed = Vec::with_capacity(links.len());
        for text in links {
            let link = ProbeLink::parse(text)?;
            if link.is_kernel() {
                kernel_function(&link.symbol).map_err(|why| Error::ProbeLink {
                    link: text.clone(),
                    why,
                })?;
                parsed.push(link);
                continue;
            }
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
                            link.file.as_deref().unwrap_or_default(),
                            if link.file.as_deref().is_some_and(|f| f.contains('/')) {
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

    /// Attaches every kernel function's link, and every link whose file is there now. An
    /// error names the link.
    pub fn attach(&mut self, session: &mut Session) -> Result<(), Error> {
        for i in 0..self.links.len() {
            let link = &self.links[i];
            if link.is_kernel() {
                // One probe for every task: the PID filter keeps the hits of those profiled.
                session
                    .attach_probe(&ProbeTarget {
                        kind: link.kind,
                        site: ProbeSite::Kernel {
                            function: link.symbol.clone(),
                        },
                        index: i as u16,
                    })
                    .map_err(|e| Error::ProbeLink {
                        link: link.text.clone(),
                        why: crate::error::Chain(&e).to_string(),
                    })?;
                tracing::info!(link = %link.text, "kernel probe attached");
                self.attached[i].insert((0, 0));
                continue;
            }
            match link.locate() {
                Some(path) => self.attach_file(session, i, &path, true)?,
                None => tracing::warn!(
                    link = %link.text,
                    "the probe's file is not there yet; it is attached when a process maps a \
                     file named {:?} (load_probe)",
                    link.file_name().unwrap_or_default()
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
                    if self.links[i].file_name() != Some(name) {
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
                site: ProbeSite::File {
                    path: path.to_owned(),
                    offset,
                    pid,
                },
                index: i as u16,
            })?;
        }
        tracing::info!(link = %link.text, file = %path.display(), offset, "probe attached");
        self.attached[i].insert(identity);
        Ok(())
    }
}
