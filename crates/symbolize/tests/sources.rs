//! Symbol sources against real binaries: separate debug files (debuglink, `.debug/`, build-id
//! directory, CRC check, compressed sections), libc through libc6-dbg, Go's `.gopclntab`,
//! DWARF inline frames, and malformed or replaced files.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{build_id, gcc, go_build, nm_symbol, run};
use ferroscope_symbolize::{DemangleMode, Symbolizer, UserFrame};
use ferroscope_test_harness as harness;

const DEBUGLINK_PROGRAM: &str = r#"
__attribute__((noinline)) int debuglink_target_function(int x) {
    return x * 7 + 1;
}
int main(int argc, char **argv) { (void)argv; return debuglink_target_function(argc); }
"#;

/// A full build, its debug file and a stripped copy with a debuglink to `link_name`.
struct Split {
    full: PathBuf,
    debug: PathBuf,
    stripped: PathBuf,
    addr: u64,
}

fn split_build(dir: &Path, tag: &str, link_name: &str, compress: Option<&str>) -> Split {
    // The tag makes the build ID unique to this test.
    let source = format!("{DEBUGLINK_PROGRAM}\nconst char *ferroscope_tag = \"{tag}\";\n");
    let full = gcc(dir, "full", &source, &["-O1", "-g", "-Wl,--build-id"]);
    let debug = dir.join(link_name);
    run(Command::new("objcopy")
        .arg("--only-keep-debug")
        .args(compress.map(|c| format!("--compress-debug-sections={c}")))
        .arg(&full)
        .arg(&debug));
    let stripped = dir.join("prog");
    run(Command::new("strip")
        .arg("--strip-all")
        .arg("-o")
        .arg(&stripped)
        .arg(&full));
    run(Command::new("objcopy")
        .arg(format!("--add-gnu-debuglink={}", debug.display()))
        .arg(&stripped));
    let (addr, _) = nm_symbol(&full, "debuglink_target_function");
    Split {
        full,
        debug,
        stripped,
        addr,
    }
}

fn check_named(f: &UserFrame) {
    assert_eq!(
        f.function.as_deref(),
        Some("debuglink_target_function"),
        "{f:?}"
    );
    assert!(
        f.file.as_deref().is_some_and(|p| p.ends_with("full.c")),
        "{f:?}"
    );
    assert_eq!(f.line, Some(3), "{f:?}");
}

#[test]
fn stripped_binary_is_named_through_debuglink_in_its_directory() {
    let dir = tempfile::tempdir().unwrap();
    let b = split_build(dir.path(), "same-dir", "prog.debug", None);
    let mut s = Symbolizer::new();
    // The stripped binary alone has no name for it.
    let f = Symbolizer::builder()
        .debug_files(false)
        .build()
        .symbolize_elf(&b.stripped, b.addr + 1)
        .unwrap();
    assert_eq!(f.function, None, "{f:?}");
    assert_eq!(s.debug_file_of(&b.stripped).unwrap(), Some(b.debug.clone()));
    check_named(&s.symbolize_elf(&b.stripped, b.addr + 1).unwrap());
    assert!(b.full.exists());
}

#[test]
fn stripped_binary_is_named_through_a_dot_debug_directory() {
    let dir = tempfile::tempdir().unwrap();
    let b = split_build(dir.path(), "dot-debug", "prog.dbg", None);
    std::fs::create_dir(dir.path().join(".debug")).unwrap();
    let moved = dir.path().join(".debug/prog.dbg");
    std::fs::rename(&b.debug, &moved).unwrap();
    let mut s = Symbolizer::new();
    assert_eq!(s.debug_file_of(&b.stripped).unwrap(), Some(moved));
    check_named(&s.symbolize_elf(&b.stripped, b.addr).unwrap());
}

/// Removes a file when dropped.
struct RemoveOnDrop(PathBuf);
impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

#[test]
fn stripped_binary_is_named_through_the_build_id_directory() {
    let dir = tempfile::tempdir().unwrap();
    let tag = format!("build-id-{}", dir.path().display());
    let b = split_build(dir.path(), &tag, "elsewhere.debug", Some("zlib"));
    let id = build_id(&b.stripped);
    let target = PathBuf::from(format!(
        "/usr/lib/debug/.build-id/{}/{}.debug",
        &id[..2],
        &id[2..]
    ));
    if let Err(e) = std::fs::create_dir_all(target.parent().unwrap()) {
        harness::skip(format!(
            "cannot write {} ({e}): run the tests as root",
            target.display()
        ));
        return;
    }
    std::fs::rename(&b.debug, &target).unwrap();
    let _guard = RemoveOnDrop(target.clone());
    let mut s = Symbolizer::new();
    assert_eq!(s.debug_file_of(&b.stripped).unwrap(), Some(target));
    // zlib-compressed DWARF sections still give file and line.
    check_named(&s.symbolize_elf(&b.stripped, b.addr + 2).unwrap());
}

#[test]
fn zstd_compressed_debug_sections_are_read() {
    let dir = tempfile::tempdir().unwrap();
    let b = split_build(dir.path(), "zstd", "prog.debug", Some("zstd"));
    let sections = run(Command::new("readelf").arg("-SW").arg(&b.debug));
    assert!(sections.contains(".debug_info"), "{sections}");
    check_named(
        &Symbolizer::new()
            .symbolize_elf(&b.stripped, b.addr)
            .unwrap(),
    );
}

#[test]
fn debug_file_with_a_wrong_crc_is_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let b = split_build(dir.path(), "wrong-crc", "prog.debug", None);
    // Same name, different content: a stale debug file from another build.
    let mut bytes = std::fs::read(&b.debug).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    std::fs::write(&b.debug, bytes).unwrap();
    let mut s = Symbolizer::new();
    assert_eq!(s.debug_file_of(&b.stripped).unwrap(), None);
    let f = s.symbolize_elf(&b.stripped, b.addr).unwrap();
    assert_eq!(f.function, None, "{f:?}");
    assert!(
        f.display_name().starts_with("prog+0x"),
        "{}",
        f.display_name()
    );
}

#[test]
fn libc_is_symbolized_through_libc6_dbg() {
    let libc = own_libc();
    let Some(debug) = common::debug_file_of(&libc) else {
        return;
    };
    let mut s = Symbolizer::new();
    assert_eq!(s.debug_file_of(&libc).unwrap(), Some(debug.clone()));
    // A local function: in the debug file's .symtab, not in libc's .dynsym.
    let symtab = run(Command::new("readelf").args(["-sW"]).arg(&debug));
    let dynsym = run(Command::new("readelf")
        .args(["--dyn-syms", "-W"])
        .arg(&libc));
    let (addr, name) = symtab
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() == 8 && f[3] == "FUNC" && f[4] == "LOCAL" && f[6] != "UND" && f[2] != "0")
                .then(|| (u64::from_str_radix(f[1], 16).ok(), f[7].to_owned()))
        })
        .find_map(|(a, n)| {
            (!n.contains('.') && !dynsym.contains(&format!(" {n}"))).then_some((a?, n))
        })
        .expect("a local function in libc's debug file");
    let f = s.symbolize_elf(&libc, addr).unwrap();
    assert_eq!(f.function.as_deref(), Some(name.as_str()), "{f:?}");
    assert!(
        f.file.is_some() && f.line.is_some(),
        "no DWARF line for {name}: {f:?}"
    );
}

fn own_libc() -> PathBuf {
    let maps = ferroscope_symbolize::maps::read_maps(std::process::id()).unwrap();
    maps.iter()
        .filter_map(|m| m.path.file_path())
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("libc.so"))
        })
        .expect("libc mapped")
        .to_owned()
}

const GO_PROGRAM: &str = r#"package main

import (
	"fmt"
	"os"
)

//go:noinline
func goTargetFunction(n int) int {
	s := 0
	for i := 0; i < n*1000; i++ {
		s += i ^ n
	}
	return s
}

func main() {
	fmt.Println(goTargetFunction(len(os.Args)))
}
"#;

fn check_go(go: &Path, expected_magic: Option<u32>) {
    let dir = tempfile::tempdir().unwrap();
    let full = go_build(go, dir.path(), GO_PROGRAM);
    let stripped = dir.path().join("gostripped");
    run(Command::new("strip").arg("-o").arg(&stripped).arg(&full));
    let syms = run(Command::new("readelf").arg("-SW").arg(&stripped));
    assert!(!syms.contains(".symtab"), "strip left a .symtab");
    assert!(!syms.contains(".debug_info"), "strip left DWARF");
    if let Some(magic) = expected_magic {
        let data = std::fs::read(&stripped).unwrap();
        let obj = object::File::parse(&*data).unwrap();
        use object::{Object, ObjectSection};
        let pcln = obj.section_by_name(".gopclntab").expect(".gopclntab kept");
        let d = pcln.data().unwrap();
        assert_eq!(u32::from_le_bytes(d[..4].try_into().unwrap()), magic);
    }
    let (addr, size) = nm_symbol(&full, "main.goTargetFunction");
    let mut s = Symbolizer::new();
    let addrs = [addr, addr + size / 2, addr + size - 1];
    // Go's own addr2line, on the unstripped binary, is the reference for lines.
    let input: String = addrs.iter().map(|a| format!("{a:#x}\n")).collect();
    let reference = harness::run_ok_with_input(
        Command::new(go)
            .args(["tool", "addr2line"])
            .arg(&full)
            .env("GOTOOLCHAIN", "local"),
        input.as_bytes(),
        std::time::Duration::from_secs(300),
    );
    let expected: Vec<&str> = reference.lines().collect();
    assert_eq!(expected.len(), 2 * addrs.len(), "{reference}");
    for (i, a) in addrs.into_iter().enumerate() {
        let f = s.symbolize_elf(&stripped, a).unwrap();
        assert_eq!(
            f.function.as_deref(),
            Some("main.goTargetFunction"),
            "{f:?}"
        );
        assert_eq!(expected[2 * i], "main.goTargetFunction");
        let line = f.line.expect("line");
        let file = f.file.as_deref().expect("file");
        assert!(file.ends_with("/main.go"), "{f:?}");
        assert_eq!(format!("{file}:{line}"), expected[2 * i + 1], "at {a:#x}");
        assert!((9..=15).contains(&line), "{f:?}");
    }
    assert!(s.stats().go_frames >= 3);
}

#[test]
fn stripped_go_binary_is_named_through_gopclntab() {
    let Some(go) = harness::tool("go") else {
        return;
    };
    check_go(&go, Some(0xfffffff1));
}

#[test]
fn go_1_19_pclntab_layout() {
    let Some(go) = harness::tool("go-1.19") else {
        return;
    };
    check_go(&go, Some(0xfffffff0));
}

const INLINE_PROGRAM: &str = r#"
static inline __attribute__((always_inline)) int forced_inline_leaf(int x) {
    int s = 0;
    for (int i = 0; i < x; i++)
        s += (i * i) ^ x;
    return s;
}

__attribute__((noinline)) int inline_caller(int x) {
    return forced_inline_leaf(x) + 1;
}

int main(int argc, char **argv) { (void)argv; return inline_caller(argc * 1000); }
"#;

#[test]
fn inline_frames_from_an_optimized_c_program() {
    let dir = tempfile::tempdir().unwrap();
    let bin = gcc(dir.path(), "inl", INLINE_PROGRAM, &["-O2", "-g"]);
    let (addr, size) = nm_symbol(&bin, "inline_caller");
    let mut s = Symbolizer::builder().demangle(DemangleMode::Full).build();
    let mut found = None;
    for a in addr..addr + size {
        let f = s.symbolize_elf(&bin, a).unwrap();
        assert_eq!(f.function.as_deref(), Some("inline_caller"), "{f:?}");
        if f.inlined.first().and_then(|i| i.function.as_deref()) == Some("forced_inline_leaf") {
            found = Some((a, f));
            break;
        }
    }
    let (a, f) = found.expect("no address of inline_caller shows the inlined leaf");
    assert_eq!(f.inlined.len(), 1);
    assert!((3..=6).contains(&f.inlined[0].line.unwrap()), "{f:?}");
    assert_eq!(f.line, Some(10), "call site of the inlined function: {f:?}");
    // The same chain as binutils.
    let out = run(Command::new("addr2line")
        .args(["-f", "-i", "-C", "-e"])
        .arg(&bin)
        .arg(format!("{a:#x}")));
    let names: Vec<&str> = out.lines().step_by(2).collect();
    assert_eq!(names, ["forced_inline_leaf", "inline_caller"]);
    // Without inline frames, only the physical function remains.
    let mut s = Symbolizer::builder().inline_frames(false).build();
    let f = s.symbolize_elf(&bin, a).unwrap();
    assert!(f.inlined.is_empty());
    assert_eq!(f.function.as_deref(), Some("inline_caller"));
}

#[test]
fn malformed_and_truncated_files_fall_back_to_module_offset() {
    let dir = tempfile::tempdir().unwrap();
    let b = split_build(dir.path(), "malformed", "prog.debug", None);
    let full = std::fs::read(&b.full).unwrap();
    let mut s = Symbolizer::new();
    for (i, len) in [0usize, 16, 64, 200, full.len() / 3, full.len() - 100]
        .into_iter()
        .enumerate()
    {
        let p = dir.path().join(format!("trunc{i}"));
        std::fs::write(&p, &full[..len]).unwrap();
        // Either an error (unparseable) or an unresolved/resolved frame: never a panic.
        let _ = s.symbolize_elf(&p, b.addr);
    }
    // Corrupt DWARF: flip bytes all over the debug sections.
    let mut bad = full.clone();
    for i in (full.len() / 4..full.len()).step_by(97) {
        bad[i] ^= 0x5a;
    }
    let p = dir.path().join("corrupt");
    std::fs::write(&p, &bad).unwrap();
    let _ = s.symbolize_elf(&p, b.addr);
    assert!(s.stats().unresolved_frames + s.stats().files_parsed > 0);
}

#[test]
fn on_disk_cache_survives_corruption() {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    let b = split_build(dir.path(), "disk-cache", "prog.debug", None);
    let sym = |cache: &Path| {
        let mut s = Symbolizer::builder()
            .cache_dir(Some(cache.to_owned()))
            .build();
        let f = s.symbolize_elf(&b.full, b.addr).unwrap();
        (f, s.stats())
    };
    let (f, st) = sym(&cache);
    assert_eq!(f.function.as_deref(), Some("debuglink_target_function"));
    assert_eq!(st.disk_cache_hits, 0);
    let (f, st) = sym(&cache);
    assert_eq!(f.function.as_deref(), Some("debuglink_target_function"));
    assert_eq!(st.disk_cache_hits, 1);
    // Truncate and corrupt every entry: rebuilt, never a crash.
    for e in walk(&cache) {
        let data = std::fs::read(&e).unwrap();
        std::fs::write(&e, &data[..data.len() / 2]).unwrap();
    }
    let (f, st) = sym(&cache);
    assert_eq!(f.function.as_deref(), Some("debuglink_target_function"));
    assert_eq!(st.disk_cache_hits, 0);
    let (_, st) = sym(&cache);
    assert_eq!(st.disk_cache_hits, 1, "the entry was rebuilt");
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}
