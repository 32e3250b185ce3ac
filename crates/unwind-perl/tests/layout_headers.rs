//! Every offset and constant of the layout tables against the C compiler: a probe program is
//! compiled against the headers (and `config.h`) of each installed Perl (5.36 on the host,
//! 5.40 and 5.42 in the Debian chroots) and prints `offsetof` of every field the walker and
//! the naming follow; the table for that version must agree on each.

#![allow(clippy::print_stderr)]

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use ferroscope_test_harness::{self as harness, runtimes};
use ferroscope_unwind_perl::layout::{cx, sv};
use ferroscope_unwind_perl::{HvAux, layout};

const PROBE: &str = r#"
#include "EXTERN.h"
#include "perl.h"
#include <stdio.h>
#include <string.h>
#include <stddef.h>
#define O(name, type, field) printf("%s %ld\n", name, (long)offsetof(type, field))
#define V(name, v) printf("%s %ld\n", name, (long)(v))
int main(void) {
    O("interp_op", struct interpreter, Iop);
    O("interp_curcop", struct interpreter, Icurcop);
    O("interp_curstackinfo", struct interpreter, Icurstackinfo);
    O("si_cxstack", struct stackinfo, si_cxstack);
    O("si_prev", struct stackinfo, si_prev);
    O("si_next", struct stackinfo, si_next);
    O("si_cxix", struct stackinfo, si_cxix);
    O("si_cxsubix", struct stackinfo, si_cxsubix);
    O("si_type", struct stackinfo, si_type);
    V("cx_size", sizeof(PERL_CONTEXT));
    O("cx_type", PERL_CONTEXT, cx_type);
    O("cx_u16", PERL_CONTEXT, blk_u16);
    O("cx_oldcop", PERL_CONTEXT, blk_oldcop);
    O("cx_retop", PERL_CONTEXT, blk_sub.retop);
    O("cx_eval_retop", PERL_CONTEXT, blk_eval.retop);
    O("cx_format_retop", PERL_CONTEXT, blk_format.retop);
    O("cx_subix", PERL_CONTEXT, blk_sub.old_cxsubix);
    O("cx_eval_subix", PERL_CONTEXT, blk_eval.old_cxsubix);
    O("cx_format_subix", PERL_CONTEXT, blk_format.old_cxsubix);
    O("cx_cv", PERL_CONTEXT, blk_sub.cv);
    O("cx_format_cv", PERL_CONTEXT, blk_format.cv);
    O("cx_namesv", PERL_CONTEXT, blk_eval.old_namesv);
    O("cx_text", PERL_CONTEXT, blk_eval.cur_text);
    O("cop_line", COP, cop_line);
    O("cop_file", COP, cop_file);
    {
        /* op_type is a bitfield: find the 16-bit word it lives in. */
        struct op o;
        unsigned short w[sizeof(o) / 2];
        memset(&o, 0, sizeof(o));
        o.op_type = 0x1ff;
        memcpy(w, &o, sizeof(o));
        for (unsigned i = 0; i < sizeof(o) / 2; i++)
            if (w[i])
                V("op_type", 2 * i);
    }
    V("op_nextstate", OP_NEXTSTATE);
    V("op_dbstate", OP_DBSTATE);
    V("op_require", OP_REQUIRE);
    V("op_dofile", OP_DOFILE);
    O("sv_any", SV, sv_any);
    O("sv_flags", SV, sv_flags);
    O("sv_u", SV, sv_u);
    O("xpv_cur", XPV, xpv_cur);
    O("xcv_stash", XPVCV, xcv_stash);
    O("xcv_start", XPVCV, xcv_start_u);
    O("xcv_gv", XPVCV, xcv_gv_u);
    O("xcv_flags", XPVCV, xcv_flags);
    V("xcv_flags_size", sizeof(((XPVCV *)0)->xcv_flags));
    O("xgv_namehek", XPVGV, xiv_u.xivu_namehek);
    O("xgv_stash", XPVGV, xnv_u.xgv_stash);
    O("gp_egv", GP, gp_egv);
    O("xhv_max", XPVHV, xhv_max);
    O("hv_aux", struct xpvhv_with_aux, xhv_aux);
    O("hvaux_name", struct xpvhv_aux, xhv_name_u);
    O("hvaux_name_count", struct xpvhv_aux, xhv_name_count);
    O("hek_len", HEK, hek_len);
    O("hek_key", HEK, hek_key);
    V("CXTYPEMASK", CXTYPEMASK);
    V("CXt_NULL", CXt_NULL);
    V("CXt_SUB", CXt_SUB);
    V("CXt_FORMAT", CXt_FORMAT);
    V("CXt_EVAL", CXt_EVAL);
    V("CXp_SUB_RE_FAKE", CXp_SUB_RE_FAKE);
    V("CXp_REAL", CXp_REAL);
    V("CXp_EVALBLOCK", CXp_EVALBLOCK);
    V("CXp_TRY", CXp_TRY);
    V("PERLSI_MAIN", PERLSI_MAIN);
    V("SVTYPEMASK", SVTYPEMASK);
    V("SVt_PVGV", SVt_PVGV);
    V("SVt_PVHV", SVt_PVHV);
    V("SVt_PVCV", SVt_PVCV);
    V("SVf_POK", SVf_POK);
    V("SVp_POK", SVp_POK);
    V("SVf_OOK", SVf_OOK);
    V("CVf_ISXSUB", CVf_ISXSUB);
    V("CVf_ANON", CVf_ANON);
    V("CVf_NAMED", CVf_NAMED);
    V("HVhek_UTF8", HVhek_UTF8);
    V("PERL_VERSION", PERL_VERSION);
    return 0;
}
"#;

/// The headers of every installed Perl: (minor, CORE directory).
fn cores() -> Vec<(u8, PathBuf)> {
    let mut out = Vec::new();
    if let Some(perl) = runtimes::perl_debian()
        && perl.exe.exists()
    {
        out.push((
            36,
            PathBuf::from("/usr/lib/x86_64-linux-gnu/perl/5.36/CORE"),
        ));
    }
    if harness::root("the Debian chroots with Perl 5.40 and 5.42") {
        for (minor, runtime) in [(40, runtimes::perl_trixie()), (42, runtimes::perl_sid())] {
            if let Some(rt) = runtime {
                let (chroot, _) = rt.chroot.expect("a chroot runtime");
                out.push((
                    minor,
                    chroot.host_path(format!("/usr/lib/x86_64-linux-gnu/perl/5.{minor}/CORE")),
                ));
            }
        }
    }
    out
}

/// Compiles and runs the probe against `core`: every name it printed, with its value.
fn probe(gcc: &Path, core: &Path) -> HashMap<String, i64> {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("probe.c");
    std::fs::write(&src, PROBE).unwrap();
    let exe = dir.path().join("probe");
    // Perl's own flags (ExtUtils::Embed's ccopts); -O2 drops the unused inline functions
    // that would need libperl to link.
    harness::run_ok(
        Command::new(gcc)
            .args([
                "-O2",
                "-w",
                "-D_REENTRANT",
                "-D_GNU_SOURCE",
                "-fwrapv",
                "-fno-strict-aliasing",
                "-D_LARGEFILE_SOURCE",
                "-D_FILE_OFFSET_BITS=64",
            ])
            .arg(format!("-I{}", core.display()))
            .arg(&src)
            .arg("-o")
            .arg(&exe),
        Duration::from_secs(120),
    );
    let out = harness::run_ok(&mut Command::new(&exe), Duration::from_secs(30));
    out.lines()
        .filter_map(|l| {
            let (k, v) = l.split_once(' ')?;
            Some((k.to_owned(), v.parse().ok()?))
        })
        .collect()
}

#[test]
fn the_layout_tables_agree_with_each_perls_headers() {
    let Some(gcc) = harness::tool("gcc") else {
        return;
    };
    let cores = cores();
    assert!(
        !cores.is_empty() || !harness::required(),
        "no Perl headers to check"
    );
    for (minor, core) in cores {
        let c = probe(&gcc, &core);
        assert_eq!(c["PERL_VERSION"], i64::from(minor), "{}", core.display());
        let l = layout(minor).unwrap();
        let hv_aux = match l.hv_aux {
            HvAux::InBody(off) => i64::from(off),
            HvAux::AfterBuckets => -1,
        };
        let ours: Vec<(&str, i64)> = vec![
            ("interp_op", l.interp_op.into()),
            ("interp_curcop", l.interp_curcop.into()),
            ("interp_curstackinfo", l.interp_curstackinfo.into()),
            ("si_cxstack", l.si_cxstack.into()),
            ("si_prev", l.si_prev.into()),
            ("si_next", l.si_next.into()),
            ("si_cxix", l.si_cxix.into()),
            ("si_cxsubix", l.si_cxsubix.map_or(-1, i64::from)),
            ("si_type", l.si_type.into()),
            ("cx_size", l.cx_size.into()),
            ("cx_type", 0),
            ("cx_u16", 2),
            ("cx_oldcop", l.cx_oldcop.into()),
            ("cx_retop", l.cx_retop.into()),
            ("cx_eval_retop", l.cx_retop.into()),
            ("cx_format_retop", l.cx_retop.into()),
            ("cx_subix", l.cx_subix.map_or(-1, i64::from)),
            ("cx_eval_subix", l.cx_subix.map_or(-1, i64::from)),
            ("cx_format_subix", l.cx_subix.map_or(-1, i64::from)),
            ("cx_cv", l.cx_cv.into()),
            ("cx_format_cv", l.cx_cv.into()),
            ("cx_namesv", l.cx_namesv.into()),
            ("cx_text", l.cx_text.into()),
            ("cop_line", l.cop_line.into()),
            ("cop_file", l.cop_file.into()),
            ("op_type", l.op_type.into()),
            ("op_nextstate", l.op_nextstate.into()),
            ("op_dbstate", l.op_dbstate.into()),
            ("op_require", l.op_require.into()),
            ("op_dofile", l.op_dofile.into()),
            ("sv_any", l.sv_any.into()),
            ("sv_flags", l.sv_flags.into()),
            ("sv_u", l.sv_u.into()),
            ("xpv_cur", l.xpv_cur.into()),
            ("xcv_stash", l.xcv_stash.into()),
            ("xcv_start", l.xcv_start.into()),
            ("xcv_gv", l.xcv_gv.into()),
            ("xcv_flags", l.xcv_flags.into()),
            ("xcv_flags_size", 4),
            ("xgv_namehek", l.xgv_namehek.into()),
            ("xgv_stash", l.xgv_stash.into()),
            ("gp_egv", l.gp_egv.into()),
            ("xhv_max", l.xhv_max.into()),
            ("hv_aux", hv_aux),
            ("hvaux_name", l.hvaux_name.into()),
            ("hvaux_name_count", l.hvaux_name_count.into()),
            ("hek_len", l.hek_len.into()),
            ("hek_key", l.hek_key.into()),
            ("CXTYPEMASK", cx::TYPE_MASK.into()),
            ("CXt_NULL", cx::NULL.into()),
            ("CXt_SUB", cx::SUB.into()),
            ("CXt_FORMAT", cx::FORMAT.into()),
            ("CXt_EVAL", cx::EVAL.into()),
            ("CXp_SUB_RE_FAKE", cx::SUB_RE_FAKE.into()),
            ("CXp_REAL", cx::REAL.into()),
            ("CXp_EVALBLOCK", cx::EVALBLOCK.into()),
            ("CXp_TRY", cx::TRY.into()),
            ("PERLSI_MAIN", cx::SI_MAIN.into()),
            ("SVTYPEMASK", sv::TYPE_MASK.into()),
            ("SVt_PVGV", sv::PVGV.into()),
            ("SVt_PVHV", sv::PVHV.into()),
            ("SVt_PVCV", sv::PVCV.into()),
            ("SVf_POK", sv::POK.into()),
            ("SVp_POK", sv::P_POK.into()),
            ("SVf_OOK", sv::OOK.into()),
            ("CVf_ISXSUB", sv::CVF_ISXSUB.into()),
            ("CVf_ANON", sv::CVF_ANON.into()),
            ("CVf_NAMED", sv::CVF_NAMED.into()),
            ("HVhek_UTF8", sv::HEK_UTF8.into()),
        ];
        let wrong: Vec<String> = ours
            .iter()
            .filter(|(name, v)| c.get(*name) != Some(v))
            .map(|(name, v)| format!("{name}: the table says {v}, the headers {:?}", c.get(*name)))
            .collect();
        assert!(
            wrong.is_empty(),
            "Perl 5.{minor} ({}):\n{}",
            core.display(),
            wrong.join("\n")
        );
        eprintln!(
            "Perl 5.{minor}: {} offsets and constants agree with {}",
            ours.len(),
            core.display()
        );
    }
}
