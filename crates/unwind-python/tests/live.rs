//! The reference walker on live CPython processes: threads, frames, code objects and every
//! line of the functions on the stacks, against what the script says of itself.
#![allow(clippy::print_stderr)]

mod common;

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ferroscope_test_harness::Guard;

use ferroscope_unwind_api::RemoteMemory;
use ferroscope_unwind_python::{
    CodeInfo, Layout, RawFrame, code_fingerprint, detect_file, interpreters_head, read_code,
    threads, walk,
};
use serde_json::Value;

const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/scripts/stacks.py");

/// Kills and reaps the child however the test ends.
/// Line numbers of the `# @name` markers in the script.
fn markers() -> HashMap<String, u32> {
    let text = std::fs::read_to_string(SCRIPT).expect("read script");
    text.lines()
        .enumerate()
        .filter_map(|(i, l)| {
            let (_, m) = l.split_once("# @")?;
            Some((m.trim().to_string(), i as u32 + 1))
        })
        .collect()
}

fn codes_of(
    frames: &[RawFrame],
    mem: &RemoteMemory,
    l: &Layout,
) -> Vec<(RawFrame, Option<CodeInfo>)> {
    frames
        .iter()
        .map(|f| (*f, read_code(mem, l, f.code).ok()))
        .collect()
}

fn describe(frames: &[(RawFrame, Option<CodeInfo>)]) -> String {
    frames
        .iter()
        .map(|(f, c)| match c {
            Some(c) => format!(
                "{}:{:?}{}",
                c.qualname,
                c.line_for_offset(f.byte_offset),
                if f.entry { "[entry]" } else { "" }
            ),
            None => format!("?{:#x}", f.code),
        })
        .collect::<Vec<_>>()
        .join(" <- ")
}

/// Where the tested CPython comes from.
#[derive(Debug, Clone, Copy)]
enum Build {
    /// pyenv's, with a shared libpython.
    Pyenv(u8),
    /// Debian's, statically linked and stripped, in the harness's chroot.
    Debian(u8),
}

fn live(build: Build) {
    let (minor, debian) = match build {
        Build::Pyenv(m) => (m, false),
        Build::Debian(m) => (m, true),
    };
    let test = format!("live_walk_3_{minor}{}", if debian { "_debian" } else { "" });
    // The command, the file holding the runtime (libpython, or the static executable), the
    // script's path as the process sees it, and what must live while it runs.
    let (mut cmd, runtime_file, script_seen, _keep): (
        Command,
        PathBuf,
        PathBuf,
        Box<dyn std::any::Any>,
    ) = if debian {
        let Some(py) = common::debian::debian_python(minor) else {
            return;
        };
        let (chroot, _) = py.runtime.chroot.as_ref().expect("a chroot runtime");
        let inside = chroot.copy_in(std::path::Path::new(SCRIPT));
        let mut cmd = py.runtime.command();
        cmd.arg(&inside);
        let exe = py.exe().to_path_buf();
        (cmd, exe, inside, Box::new(py))
    } else {
        let Some(py) = common::python(minor) else {
            return;
        };
        let mut cmd = Command::new(&py.exe);
        cmd.arg(SCRIPT);
        let script = std::fs::canonicalize(SCRIPT).expect("script path");
        (cmd, py.lib.clone(), script, Box::new(()))
    };
    let data = std::fs::read(&runtime_file).expect("read the runtime's file");
    let found = detect_file(&common::Elf::new(&runtime_file.to_string_lossy(), &data))
        .unwrap_or_else(|e| panic!("{test}: {e}"))
        .unwrap_or_else(|| panic!("{test}: {} is not detected", runtime_file.display()));
    let l = &found.layout;
    let mark = markers();
    // The script waits on its stdin, which the guard holds open until it kills it.
    let mut child = Guard::spawn(cmd.stdin(Stdio::piped()), Duration::from_secs(300));
    let pid = child.pid();
    let line = child
        .next_line(Duration::from_secs(30))
        .unwrap_or_else(|| panic!("{test}: the script closed its stdout without a line"));
    let info: Value = serde_json::from_str(&line)
        .unwrap_or_else(|e| panic!("{test}: bad JSON from the script ({e}): {line:?}"));
    let code = |k: &str| &info["codes"][k];
    let code_id = |k: &str| code(k)["id"].as_u64().expect("id");

    let file = object::File::parse(&*data).expect("parse the runtime's file");
    let sym = found.runtime;
    let bias = common::load_bias(pid, &runtime_file, &file);
    let mem = RemoteMemory::new(pid);

    // The script prints before its threads are surely parked: retry until both stacks are
    // where they block for good.
    let deadline = Instant::now() + Duration::from_secs(15);
    let (worker, main, worker_ts, main_ts) = loop {
        let attempt = || -> Result<_, String> {
            let head = interpreters_head(&mem, l, bias + sym).map_err(|e| e.to_string())?;
            let ts = threads(&mem, l, head).map_err(|e| e.to_string())?;
            let find = |ident: &str| {
                let want = info[ident].as_u64().expect("ident");
                ts.iter()
                    .find(|t| t.thread_id == want)
                    .copied()
                    .ok_or_else(|| {
                        format!("no thread with thread_id {want:#x} ({ident}) in {ts:x?}")
                    })
            };
            let (wt, mt) = (find("worker_ident")?, find("main_ident")?);
            let w = walk(&mem, l, wt.frame, 64).map_err(|e| e.to_string())?;
            let m = walk(&mem, l, mt.frame, 64).map_err(|e| e.to_string())?;
            let (w, m) = (codes_of(&w, &mem, l), codes_of(&m, &mem, l));
            let line_of = |f: &(RawFrame, Option<CodeInfo>)| {
                f.1.as_ref()
                    .and_then(|c| c.line_for_offset(f.0.byte_offset))
            };
            let ok = w.len() >= 2
                && w[0].0.code == code_id("inner")
                && line_of(&w[0]) == Some(mark["sleep"])
                && w[1].0.code == code_id("run")
                && line_of(&w[1]) == Some(mark["call_inner"])
                && m.len() == 3
                && m[0].0.code == code_id("block_main")
                && line_of(&m[0]) == Some(mark["select"])
                && m[1].0.code == code_id("main")
                && line_of(&m[1]) == Some(mark["call_block"])
                && m[2].0.code == code_id("module")
                && line_of(&m[2]) == Some(mark["call_main"]);
            if ok {
                Ok((w, m, wt, mt))
            } else {
                Err(format!("worker: {}\nmain: {}", describe(&w), describe(&m)))
            }
        };
        match attempt() {
            Ok(v) => break v,
            Err(e) if Instant::now() > deadline => panic!(
                "{test}: stacks not as expected (sleep line {}, call_inner {}, select {}, \
                 call_block {}, call_main {}):\n{e}",
                mark["sleep"],
                mark["call_inner"],
                mark["select"],
                mark["call_block"],
                mark["call_main"]
            ),
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    };

    // Names along the stacks, qualnames from 3.11.
    let names = |frames: &[(RawFrame, Option<CodeInfo>)]| -> Vec<String> {
        frames
            .iter()
            .map(|(_, c)| c.as_ref().map_or("?".into(), |c| c.qualname.clone()))
            .collect()
    };
    let (wn, mn) = (names(&worker), names(&main));
    if minor >= 11 {
        assert_eq!(
            wn[..2],
            ["Worker.run.<locals>.inner", "Worker.run"],
            "{test}"
        );
        assert_eq!(mn, ["block_main", "main", "<module>"], "{test}");
    } else {
        assert_eq!(wn[..2], ["inner", "run"], "{test}");
        assert_eq!(mn, ["block_main", "main", "<module>"], "{test}");
    }
    let tail: Vec<&str> = worker[2..]
        .iter()
        .filter_map(|(_, c)| c.as_ref().map(|c| c.name.as_str()))
        .collect();
    assert_eq!(
        tail.last(),
        Some(&"_bootstrap"),
        "{test}: worker tail {tail:?}"
    );
    assert!(
        tail.contains(&"_bootstrap_inner"),
        "{test}: worker tail {tail:?}"
    );
    let threading_file = worker
        .last()
        .and_then(|(_, c)| c.as_ref())
        .expect("code")
        .filename
        .clone();
    assert!(
        threading_file.ends_with("threading.py"),
        "{test}: {threading_file}"
    );

    // Entry frames: ≤3.10 each frame is its own eval call; 3.11+ the main thread's three
    // frames run in one eval call (plain Python-to-Python calls), and inner is called inline.
    let entries =
        |f: &[(RawFrame, Option<CodeInfo>)]| f.iter().map(|(f, _)| f.entry).collect::<Vec<_>>();
    if minor <= 10 {
        assert!(entries(&worker).iter().all(|&e| e), "{test}");
        assert!(entries(&main).iter().all(|&e| e), "{test}");
    } else {
        assert_eq!(entries(&main), [false, false, true], "{test}: main entries");
        assert!(!worker[0].0.entry, "{test}: inner is called inline");
        assert!(
            worker.last().unwrap().0.entry,
            "{test}: _bootstrap starts an eval call"
        );
    }

    // Native thread IDs where the thread state has them.
    if l.tstate_native_thread_id.is_some() {
        assert_eq!(
            worker_ts.native_thread_id,
            info["worker_native_id"].as_u64(),
            "{test}: worker native id"
        );
        assert_eq!(
            main_ts.native_thread_id,
            Some(u64::from(pid)),
            "{test}: main native id"
        );
    } else {
        assert_eq!(worker_ts.native_thread_id, None);
    }

    // Every code object: names, file, first line, and the line of every instruction offset.
    let mut checked = 0;
    for key in ["inner", "run", "block_main", "main", "module"] {
        let c = code(key);
        let id = code_id(key);
        let got =
            read_code(&mem, l, id).unwrap_or_else(|e| panic!("{test}: read_code({key}): {e}"));
        assert_eq!(got.name, c["name"].as_str().unwrap(), "{test}: {key} name");
        let want_qualname = if minor >= 11 {
            c["qualname"].as_str().unwrap()
        } else {
            c["name"].as_str().unwrap()
        };
        assert_eq!(got.qualname, want_qualname, "{test}: {key} qualname");
        assert_eq!(
            got.filename,
            c["filename"].as_str().unwrap(),
            "{test}: {key} filename"
        );
        let seen = if debian {
            PathBuf::from(&got.filename)
        } else {
            std::fs::canonicalize(&got.filename).unwrap_or_else(|_| PathBuf::from(&got.filename))
        };
        assert_eq!(seen, script_seen, "{test}: {key} filename is the script");
        let first = c["firstlineno"].as_u64().unwrap() as u32;
        assert_eq!(got.first_line, first, "{test}: {key} first line");
        assert_eq!(
            code_fingerprint(&mem, l, id).unwrap(),
            first,
            "{test}: fingerprint"
        );
        let mut wrong = Vec::new();
        for pair in c["lines"].as_array().unwrap() {
            let off = pair[0].as_u64().unwrap() as u32;
            let want = pair[1].as_i64().map(|l| l as u32);
            let have = got.line_for_offset(off);
            checked += 1;
            if have != want {
                wrong.push(format!("offset {off}: Python {want:?}, ours {have:?}"));
            }
        }
        assert!(
            wrong.is_empty(),
            "{test}: {key} line table ({:?}): {}",
            got.line_table().0,
            wrong.join("; ")
        );
    }
    eprintln!(
        "{test}: {} ok; worker: {}; main: {}; {checked} offsets agree",
        found.version,
        describe(&worker),
        describe(&main)
    );
}

#[test]
fn live_walk_3_6() {
    live(Build::Pyenv(6));
}
#[test]
fn live_walk_3_7() {
    live(Build::Pyenv(7));
}
#[test]
fn live_walk_3_8() {
    live(Build::Pyenv(8));
}
#[test]
fn live_walk_3_9() {
    live(Build::Pyenv(9));
}
#[test]
fn live_walk_3_10() {
    live(Build::Pyenv(10));
}
#[test]
fn live_walk_3_11() {
    live(Build::Pyenv(11));
}
#[test]
fn live_walk_3_12() {
    live(Build::Pyenv(12));
}
#[test]
fn live_walk_3_13() {
    live(Build::Pyenv(13));
}
#[test]
fn live_walk_3_13_debian() {
    live(Build::Debian(13));
}
#[test]
fn live_walk_3_14_debian() {
    live(Build::Debian(14));
}
#[test]
fn live_walk_3_15_debian() {
    live(Build::Debian(15));
}
