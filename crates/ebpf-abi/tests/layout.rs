//! The Rust mirrors against the C headers: every header is compiled with clang in both
//! builds (bpf_loop and legacy), and every mirrored type, enum and array length is compared
//! with the BTF clang emitted. A drift on either side fails here.

use std::mem::{offset_of, size_of};
use std::path::PathBuf;
use std::sync::OnceLock;

use ferroscope_ebpf_abi::btf::Btf;
use ferroscope_ebpf_abi::*;

/// Both objects of tests/c/anchors.bpf.c, compiled once per test binary.
fn objects() -> &'static [Btf; 2] {
    static OBJECTS: OnceLock<[Btf; 2]> = OnceLock::new();
    OBJECTS.get_or_init(|| {
        let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
        let out =
            std::env::temp_dir().join(format!("ferroscope-abi-layout-{}", std::process::id()));
        std::fs::create_dir_all(&out).expect("temp dir");
        let objects = ferroscope_ebpf_abi::build::compile(
            &manifest.join("tests/c/anchors.bpf.c"),
            &out,
            &manifest,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let load = |p: &PathBuf| {
            let bytes = std::fs::read(p).expect("compiled object");
            Btf::from_elf(&bytes).expect("the object has BTF")
        };
        let both = [load(&objects.modern), load(&objects.legacy)];
        let _ = std::fs::remove_dir_all(&out);
        both
    })
}

fn each(check: impl Fn(&Btf) -> Result<(), String>) {
    for (btf, build) in objects().iter().zip(["bpf_loop", "legacy"]) {
        if let Err(e) = check(btf) {
            panic!("{build} build: {e}");
        }
    }
}

macro_rules! fields {
    ($t:ty: $($f:ident),* $(,)?) => {
        &[$((stringify!($f), offset_of!($t, $f))),*]
    };
}

#[test]
fn record_types_match_c() {
    each(|b| {
        b.check_struct(
            "fs_trace_header",
            size_of::<TraceHeader>(),
            fields!(TraceHeader: pid, tid, ktime_ns, start_ns, cpu, flags, kernel_len, user_len,
                    comm, user_error, interp_frames),
        )?;
        b.check_struct(
            "fs_frame",
            size_of::<UserFrame>(),
            fields!(UserFrame: addr, aux),
        )?;
        b.check_struct(
            "fs_pid_event",
            size_of::<PidEvent>(),
            fields!(PidEvent: pid, kind, address, ktime_ns),
        )
    });
}

#[test]
fn unwinder_map_types_match_c() {
    each(|b| {
        b.check_struct(
            "fs_pid_mapping_key",
            size_of::<PidMappingKey>(),
            fields!(PidMappingKey: prefixlen, pid, address_be),
        )?;
        b.check_struct(
            "fs_pid_mapping",
            size_of::<PidMapping>(),
            fields!(PidMapping: file_id, bias, start, end, owner, flags),
        )?;
        b.check_struct(
            "fs_delta_page_key",
            size_of::<DeltaPageKey>(),
            fields!(DeltaPageKey: file_id, page),
        )?;
        b.check_struct(
            "fs_delta_page",
            size_of::<DeltaPage>(),
            fields!(DeltaPage: first, count),
        )?;
        b.check_struct(
            "fs_delta_entry",
            size_of::<DeltaEntry>(),
            fields!(DeltaEntry: address_low, info_index),
        )?;
        b.check_struct(
            "fs_unwind_info",
            size_of::<UnwindInfoRaw>(),
            fields!(UnwindInfoRaw: kind, flags, reserved, cfa_offset, fp_offset, reserved2),
        )
    });
}

#[test]
fn counters_match_the_c_enum() {
    let mut expected: Vec<(&str, i64)> = Counter::ALL
        .iter()
        .map(|c| (c.c_name(), *c as i64))
        .collect();
    expected.push(("FS_CNT_MAX", i64::from(Counter::COUNT)));
    each(|b| b.check_enum("fs_counter", &expected));
    each(|b| {
        b.check_enum(
            "fs_rt_common_counter",
            &[
                ("FS_RT_CNT_ATTEMPTS", i64::from(RT_CNT_ATTEMPTS)),
                ("FS_RT_CNT_FRAMES", i64::from(RT_CNT_FRAMES)),
                ("FS_RT_CNT_NO_FRAMES", i64::from(RT_CNT_NO_FRAMES)),
                ("FS_RT_COMMON_COUNTERS", i64::from(RT_COMMON_COUNTERS)),
            ],
        )
    });
}

#[test]
fn enums_match_c() {
    let mut errors = vec![("FS_UNWIND_OK", 0)];
    errors.extend(UnwindError::ALL.iter().map(|e| (e.c_name(), *e as i64)));
    errors.push(("FS_UNWIND_ERR_MAX", i64::from(UnwindError::COUNT)));
    each(|b| b.check_enum("fs_unwind_error", &errors));
    let kinds: Vec<(&str, i64)> = PidEventKind::ALL
        .iter()
        .map(|k| (k.c_name(), *k as i64))
        .collect();
    each(|b| b.check_enum("fs_pid_event_kind", &kinds));
    let rules: Vec<(&str, i64)> = UnwindKind::ALL
        .iter()
        .map(|k| (k.c_name(), *k as i64))
        .collect();
    each(|b| b.check_enum("fs_unwind_kind", &rules));
}

#[test]
fn array_lengths_match_c() {
    each(|b| {
        let check = |s: &str, m: &str, want: usize| match b.array_len(s, m) {
            Some(n) if n as usize == want => Ok(()),
            got => Err(format!("{s}.{m}: C length {got:?}, Rust {want}")),
        };
        check("fs_trace_header", "comm", COMM_LEN)?;
        check(
            "fs_trace_buf",
            "data",
            MAX_USER_FRAMES * size_of::<UserFrame>() + MAX_KERNEL_FRAMES * 8,
        )?;
        check("fs_unwind_state", "rt", MAX_RUNTIMES)
    });
}
