//! Per-version byte offsets of the Perl structures a walker follows (x86-64).
//!
//! Facts from each version's headers (`intrpvar.h`, `cop.h`, `sv.h`, `cv.h`, `gv.h`,
//! `hv.h`, `opnames.h`); `tests/layout_headers.rs` compiles the headers of every Perl
//! installed on the machine (5.36 on the host, 5.40 and 5.42 in the Debian chroots) and
//! compares every offset here with the compiler's. What changed from 5.28 to 5.42:
//!
//! - 5.32: `si_cxsubix` (the innermost sub, eval or format of a runlevel) and each such
//!   context's `old_cxsubix` make a chain through the context stack; before, every context
//!   is read. `si_type` moved from 0x28 to 0x2c, contexts grew from 0x60 to 0x68 bytes and
//!   the fields after `blk_sub.retop` moved by 8.
//! - 5.34: two interpreter variables went, so `PL_curcop` and `PL_curstackinfo` moved from
//!   0xe0/0xf0 to 0xd0/0xe0.
//! - 5.36: a stash's name moved from after its bucket array to its body
//!   (`struct xpvhv_with_aux`).
//! - 5.38 and 5.42: new ops renumbered `require`, `do FILE` and `nextstate`.

use crate::PerlVersion;

/// Where the `struct xpvhv_aux` of a hash (a stash's name) is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HvAux {
    /// Right after the bucket array: `HvARRAY(hv) + (HvMAX(hv) + 1) * 8` (5.28 to 5.34).
    AfterBuckets,
    /// In the body, `struct xpvhv_with_aux`, at this offset (5.36+).
    InBody(u16),
}

/// One Perl version's offsets (bytes) and constants.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    /// The minor version this layout is for.
    pub version: u8,
    /// `struct interpreter`: `Iop` (`PL_op`, the op executing in the innermost runops call).
    pub interp_op: u16,
    /// `Icurcop` (`PL_curcop`, the statement executing).
    pub interp_curcop: u16,
    /// `Icurstackinfo` (`PL_curstackinfo`, the innermost runlevel).
    pub interp_curstackinfo: u16,
    /// `struct stackinfo`: `si_cxstack`.
    pub si_cxstack: u16,
    /// `si_prev`: the runlevel this one interrupted (outwards).
    pub si_prev: u16,
    /// `si_next`: a deeper runlevel kept for reuse (not walked; here for the tests).
    pub si_next: u16,
    /// `si_cxix`: the innermost context's index.
    pub si_cxix: u16,
    /// `si_cxsubix` (5.32+): the innermost sub, format or eval context's index.
    pub si_cxsubix: Option<u16>,
    /// `si_type` (`PERLSI_*`).
    pub si_type: u16,
    /// `sizeof(PERL_CONTEXT)`.
    pub cx_size: u16,
    /// `blk_oldcop`: the statement that was executing when the context was pushed.
    pub cx_oldcop: u16,
    /// `blk_sub.retop` (and `blk_eval.retop`): the op to return to; NULL when C code
    /// entered the sub.
    pub cx_retop: u16,
    /// `blk_sub.old_cxsubix` (5.32+): the next sub, format or eval outwards.
    pub cx_subix: Option<u16>,
    /// `blk_sub.cv` (and `blk_format.cv`).
    pub cx_cv: u16,
    /// `blk_eval.old_namesv`: the name a `require` or `do FILE` was given.
    pub cx_namesv: u16,
    /// `blk_eval.cur_text`: a string eval's source.
    pub cx_text: u16,
    /// `struct cop`: `cop_line`.
    pub cop_line: u16,
    /// `cop_file` (threaded builds: a C string) or `cop_filegv` (a GV named `_<FILE`).
    pub cop_file: u16,
    /// The 16-bit word of a `BASEOP` whose low 9 bits are `op_type`.
    pub op_type: u16,
    /// `OP_NEXTSTATE`.
    pub op_nextstate: u16,
    /// `OP_DBSTATE`.
    pub op_dbstate: u16,
    /// `OP_REQUIRE`.
    pub op_require: u16,
    /// `OP_DOFILE`.
    pub op_dofile: u16,
    /// SV head: `sv_any` (the body).
    pub sv_any: u16,
    /// `sv_flags`.
    pub sv_flags: u16,
    /// `sv_u` (`svu_pv`, `svu_gp`, `svu_hash`).
    pub sv_u: u16,
    /// `XPV`: `xpv_cur` (a string's length).
    pub xpv_cur: u16,
    /// `XPVCV`: `xcv_stash` (the package a sub was compiled in).
    pub xcv_stash: u16,
    /// `xcv_start_u`: the first op of a Perl sub.
    pub xcv_start: u16,
    /// `xcv_gv_u`: its GV, or its name HEK when `CVf_NAMED`.
    pub xcv_gv: u16,
    /// `xcv_flags` (32 bits).
    pub xcv_flags: u16,
    /// `XPVGV`: `xiv_u.xivu_namehek`.
    pub xgv_namehek: u16,
    /// `xnv_u.xgv_stash`.
    pub xgv_stash: u16,
    /// `GP`: `gp_egv` (the effective GV of an aliased glob).
    pub gp_egv: u16,
    /// `XPVHV`: `xhv_max` (buckets - 1).
    pub xhv_max: u16,
    /// Where a hash's aux struct is.
    pub hv_aux: HvAux,
    /// `struct xpvhv_aux`: `xhv_name_u`.
    pub hvaux_name: u16,
    /// `xhv_name_count`.
    pub hvaux_name_count: u16,
    /// `HEK`: `hek_len`.
    pub hek_len: u16,
    /// `hek_key`.
    pub hek_key: u16,
}

/// Context types and flags (`cop.h`), the same from 5.28 to 5.42.
pub mod cx {
    /// `CXTYPEMASK`.
    pub const TYPE_MASK: u8 = 0xf;
    /// `CXt_NULL`: a sort block.
    pub const NULL: u8 = 0;
    /// `CXt_SUB`.
    pub const SUB: u8 = 9;
    /// `CXt_FORMAT`.
    pub const FORMAT: u8 = 10;
    /// `CXt_EVAL`.
    pub const EVAL: u8 = 11;
    /// `CXp_SUB_RE_FAKE`: a sub context faked for `(?{ })`, whose sub fields are stale.
    pub const SUB_RE_FAKE: u8 = 0x80;
    /// `CXp_REAL`: a string eval.
    pub const REAL: u8 = 0x20;
    /// `CXp_EVALBLOCK` (`CXp_TRYBLOCK` before 5.34): `eval { }`.
    pub const EVALBLOCK: u8 = 0x40;
    /// `CXp_TRY` (5.34+): `try { }`.
    pub const TRY: u8 = 0x80;
    /// `PERLSI_MAIN`: the main runlevel.
    pub const SI_MAIN: i32 = 1;
}

/// SV types and flags (`sv.h`, `cv.h`), the same from 5.28 to 5.42.
pub mod sv {
    /// `SVTYPEMASK`.
    pub const TYPE_MASK: u32 = 0xff;
    /// `SVt_PVGV`.
    pub const PVGV: u32 = 9;
    /// `SVt_PVHV`.
    pub const PVHV: u32 = 12;
    /// `SVt_PVCV`.
    pub const PVCV: u32 = 13;
    /// `SVf_POK`.
    pub const POK: u32 = 0x400;
    /// `SVp_POK`.
    pub const P_POK: u32 = 0x4000;
    /// `SVf_OOK`: a hash has its aux struct (`SVphv_HasAUX` since 5.38, same bit).
    pub const OOK: u32 = 0x0200_0000;
    /// `CVf_ISXSUB`.
    pub const CVF_ISXSUB: u32 = 0x8;
    /// `CVf_ANON`.
    pub const CVF_ANON: u32 = 0x80;
    /// `CVf_NAMED`: `xcv_gv_u` is a name HEK, not a GV.
    pub const CVF_NAMED: u32 = 0x8000;
    /// `HVhek_UTF8`: a HEK's key is UTF-8.
    pub const HEK_UTF8: u8 = 0x1;
}

/// The minor versions with a layout: the stable releases 5.28 to 5.42.
pub const SUPPORTED_VERSIONS: &[u8] = &[28, 30, 32, 34, 36, 38, 40, 42];

const BASE: Layout = Layout {
    version: 36,
    interp_op: 0x08,
    interp_curcop: 0xd0,
    interp_curstackinfo: 0xe0,
    si_cxstack: 0x08,
    si_prev: 0x10,
    si_next: 0x18,
    si_cxix: 0x20,
    si_cxsubix: Some(0x28),
    si_type: 0x2c,
    cx_size: 0x68,
    cx_oldcop: 0x10,
    cx_retop: 0x30,
    cx_subix: Some(0x38),
    cx_cv: 0x48,
    cx_namesv: 0x40,
    cx_text: 0x50,
    cop_line: 0x24,
    cop_file: 0x30,
    op_type: 0x20,
    op_nextstate: 195,
    op_dbstate: 196,
    op_require: 342,
    op_dofile: 343,
    sv_any: 0x00,
    sv_flags: 0x0c,
    sv_u: 0x10,
    xpv_cur: 0x10,
    xcv_stash: 0x20,
    xcv_start: 0x28,
    xcv_gv: 0x38,
    xcv_flags: 0x5c,
    xgv_namehek: 0x20,
    xgv_stash: 0x28,
    gp_egv: 0x38,
    xhv_max: 0x18,
    hv_aux: HvAux::InBody(0x20),
    hvaux_name: 0x00,
    hvaux_name_count: 0x1c,
    hek_len: 0x04,
    hek_key: 0x08,
};

/// 5.28 and 5.30: no sub chain, smaller contexts, the interpreter's fields 0x10 further.
const V28: Layout = Layout {
    version: 28,
    interp_curcop: 0xe0,
    interp_curstackinfo: 0xf0,
    si_cxsubix: None,
    si_type: 0x28,
    cx_size: 0x60,
    cx_subix: None,
    cx_cv: 0x40,
    cx_namesv: 0x38,
    cx_text: 0x48,
    hv_aux: HvAux::AfterBuckets,
    ..BASE
};

const V30: Layout = Layout { version: 30, ..V28 };

/// 5.32: the sub chain.
const V32: Layout = Layout {
    version: 32,
    interp_curcop: 0xe0,
    interp_curstackinfo: 0xf0,
    hv_aux: HvAux::AfterBuckets,
    ..BASE
};

const V34: Layout = Layout {
    version: 34,
    hv_aux: HvAux::AfterBuckets,
    ..BASE
};

const V36: Layout = BASE;

/// 5.38 and 5.40: three new ops before `nextstate`, three more before `require`.
const V38: Layout = Layout {
    version: 38,
    op_nextstate: 198,
    op_dbstate: 199,
    op_require: 345,
    op_dofile: 346,
    ..BASE
};

const V40: Layout = Layout { version: 40, ..V38 };

const V42: Layout = Layout {
    version: 42,
    op_nextstate: 202,
    op_dbstate: 203,
    op_require: 349,
    op_dofile: 350,
    ..BASE
};

/// The layout of Perl 5.`version`, for the stable releases 5.28 to 5.42.
pub fn layout(version: u8) -> Option<&'static Layout> {
    Some(match version {
        28 => &V28,
        30 => &V30,
        32 => &V32,
        34 => &V34,
        36 => &V36,
        38 => &V38,
        40 => &V40,
        42 => &V42,
        _ => return None,
    })
}

/// The layout of `version` (any patch level of a supported stable release).
pub fn layout_for(version: PerlVersion) -> Option<&'static Layout> {
    if version.revision != 5 {
        return None;
    }
    layout(version.version)
}

impl Layout {
    /// Bytes of a context the walker reads: every context field it uses.
    pub fn cx_read_len(&self) -> u16 {
        [
            self.cx_oldcop,
            self.cx_retop,
            self.cx_subix.unwrap_or(0),
            self.cx_cv,
            self.cx_namesv,
            self.cx_text,
        ]
        .into_iter()
        .max()
        .unwrap_or(0)
            + 8
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_supported_version_has_its_own_layout() {
        for &v in SUPPORTED_VERSIONS {
            assert_eq!(layout(v).unwrap().version, v);
        }
        for v in [26, 29, 31, 41, 43, 44] {
            assert!(layout(v).is_none(), "5.{v}");
        }
        assert!(layout_for(PerlVersion::new(6, 36, 0)).is_none());
        assert_eq!(layout_for(PerlVersion::new(5, 36, 3)), Some(&V36));
    }

    #[test]
    fn a_context_read_covers_every_field_and_fits_the_walkers_buffer() {
        for &v in SUPPORTED_VERSIONS {
            let l = layout(v).unwrap();
            let len = l.cx_read_len();
            assert!(len <= l.cx_size && len < 128, "5.{v}: {len}");
            assert!(l.cx_cv + 8 <= len && l.cx_text + 8 <= len);
        }
    }
}
