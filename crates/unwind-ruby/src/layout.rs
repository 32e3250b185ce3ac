//! Per-version offsets of the CRuby structures the walker and the naming follow (x86-64).
//!
//! Facts from CRuby's headers (`vm_core.h`, `method.h`, `iseq.h`, `internal/class.h`,
//! `include/ruby/internal/core/rstring.h` and `rarray.h`, `symbol.h`) of each minor version;
//! the same within a minor from its first to its last patch release for every field used
//! here. How each row is checked: 3.1 against Debian's `rb_mjit_min_header-3.1.2.h` (the
//! internal structures as the compiler saw them; `tests/layout_header.rs` compiles `offsetof`
//! of every field), 3.1 and 3.3 against live processes (`tests/live.rs`: the walker's reads
//! of real contexts, frames, iseqs, method entries and classes give the names the scripts
//! define); 2.7, 3.0, 3.2 and 3.4 are derived from the published headers only.

/// Where a class keeps its path (`"Shop::Cart"`) and a singleton class its object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClassLayout {
    /// 2.7 to 3.1: in instance variables (`__classpath__`, `__attached__`) of the class's
    /// `st_table` `iv_tbl`, in its `rb_classext_t`, which `RClass.ptr` points to.
    Ivars {
        /// `RClass.ptr`.
        ext_ptr: u32,
        /// `rb_classext_t.iv_tbl`.
        iv_tbl: u32,
    },
    /// 3.3 and 3.4: `rb_classext_t` follows the `RClass` in the same slot and holds both.
    Embedded {
        /// `sizeof(struct RClass)`: where the extension starts.
        ext: u32,
        /// `rb_classext_t.classpath`.
        classpath: u32,
        /// `rb_classext_t.as.singleton_class.attached_object`.
        attached_object: u32,
    },
    /// 3.2: class paths are instance variables found through object shapes, which this
    /// crate does not follow: methods are named without their class.
    Unsupported,
}

/// How a `String` keeps its length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StringLayout {
    /// ≤ 3.1: an embedded string's length is in its flags (bits 14..18), its bytes at 16.
    LengthInFlags,
    /// 3.2+: the length is a field at 16 for both kinds; embedded bytes at 24.
    LengthField,
}

/// The offsets of one minor version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    /// `(major, minor)`.
    pub version: (u8, u8),
    /// `rb_execution_context_t.vm_stack` (then `vm_stack_size`, in VALUEs).
    pub ec_vm_stack: u32,
    /// `rb_execution_context_t.cfp`.
    pub ec_cfp: u32,
    /// `rb_execution_context_t.thread_ptr`.
    pub ec_thread_ptr: u32,
    /// `rb_thread_t.thread_id` (a `pthread_t`), checked by the 2.7 walker.
    pub thread_id: u32,
    /// `sizeof(rb_control_frame_t)`.
    pub cfp_size: u32,
    /// `rb_control_frame_t.pc`.
    pub cfp_pc: u32,
    /// `rb_control_frame_t.iseq`.
    pub cfp_iseq: u32,
    /// `rb_control_frame_t.ep`.
    pub cfp_ep: u32,
    /// `rb_iseq_t.body`.
    pub iseq_body: u32,
    /// `rb_iseq_constant_body.type` (an int).
    pub body_type: u32,
    /// `rb_iseq_constant_body.iseq_size` (an unsigned int, in VALUEs).
    pub body_iseq_size: u32,
    /// `rb_iseq_constant_body.iseq_encoded`.
    pub body_iseq_encoded: u32,
    /// `rb_iseq_constant_body.location` (pathobj, base_label, label, first_lineno follow at
    /// 0, 8, 16, 24).
    pub body_location: u32,
    /// `rb_iseq_constant_body.insns_info` (body, positions, size, succ_index_table at 0, 8,
    /// 16, 24).
    pub body_insns_info: u32,
    /// `rb_iseq_constant_body.local_iseq`.
    pub body_local_iseq: u32,
    /// `sizeof(struct iseq_insn_info_entry)` (`line_no` first).
    pub insn_info_entry: u32,
    /// `rb_callable_method_entry_t.def` (`defined_class` at 8, `owner` at 32).
    pub cme_def: u32,
    /// `rb_method_definition_t.body` (`iseq.iseqptr` first).
    pub def_body: u32,
    /// `rb_method_definition_t.original_id`.
    pub def_original_id: u32,
    /// `struct vm_svar.cref_or_me`.
    pub svar_cref_or_me: u32,
    /// `FL_SINGLETON`.
    pub fl_singleton: u64,
    /// Bits of an embedded array's length (`RARRAY_EMBED_LEN_MASK >> 15`).
    pub array_embed_len_mask: u64,
    /// How strings keep their length.
    pub string: StringLayout,
    /// Where classes keep their paths.
    pub class: ClassLayout,
    /// YJIT: 0 when its code keeps frame pointers, else the size of its frame up to and
    /// including the return address (3.1: three pushed registers).
    pub jit_cfa: u32,
}

/// Minor versions with a layout (major 2: 7; major 3: 0 to 4).
pub const SUPPORTED: &[(u8, u8)] = &[(2, 7), (3, 0), (3, 1), (3, 2), (3, 3), (3, 4)];

/// The layout of `major.minor`, if supported.
pub fn layout(major: u8, minor: u8) -> Option<Layout> {
    let v = (major, minor);
    if !SUPPORTED.contains(&v) {
        return None;
    }
    let at_least = |m: u8| (major, minor) >= (3, m);
    let ruby27 = v == (2, 7);
    Some(Layout {
        version: v,
        ec_vm_stack: 0,
        ec_cfp: 16,
        ec_thread_ptr: if at_least(1) { 48 } else { 56 },
        thread_id: 72,
        // 3.1 and 3.2 added jit_return after __bp__; 3.3 removed __bp__.
        cfp_size: if at_least(1) && !at_least(3) { 64 } else { 56 },
        cfp_pc: 0,
        cfp_iseq: 16,
        cfp_ep: 32,
        iseq_body: 16,
        body_type: 0,
        body_iseq_size: 4,
        body_iseq_encoded: 8,
        body_location: 64,
        body_insns_info: if at_least(2) { 112 } else { 120 },
        body_local_iseq: if at_least(2) { 168 } else { 176 },
        // node_id joined line_no and events in 3.1.
        insn_info_entry: if at_least(1) { 12 } else { 8 },
        cme_def: 16,
        def_body: 8,
        def_original_id: 32,
        svar_cref_or_me: 8,
        fl_singleton: if at_least(4) { 1 << 13 } else { 1 << 12 },
        array_embed_len_mask: if at_least(2) { 0x7f } else { 0x3 },
        string: if at_least(2) {
            StringLayout::LengthField
        } else {
            StringLayout::LengthInFlags
        },
        class: if at_least(3) {
            ClassLayout::Embedded {
                ext: 32,
                classpath: 120,
                attached_object: 96,
            }
        } else if ruby27 || !at_least(2) {
            ClassLayout::Ivars {
                ext_ptr: 24,
                iv_tbl: 8,
            }
        } else {
            ClassLayout::Unsupported
        },
        jit_cfa: if v == (3, 1) { 32 } else { 0 },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_supported_version_has_a_layout() {
        for &(major, minor) in SUPPORTED {
            let l = layout(major, minor).unwrap();
            assert_eq!(l.version, (major, minor));
            assert!(l.cfp_size >= l.cfp_ep + 8);
        }
        assert!(layout(2, 6).is_none());
        assert!(layout(3, 5).is_none());
    }

    #[test]
    fn control_frames_grew_in_3_1_and_shrank_in_3_3() {
        let size = |m| layout(3, m).unwrap().cfp_size;
        assert_eq!(
            (size(0), size(1), size(2), size(3), size(4)),
            (56, 64, 64, 56, 56)
        );
    }
}
