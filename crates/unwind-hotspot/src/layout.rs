//! The offsets the walker and the naming need, from the JVM's own tables ([`VmStructs`]),
//! with the few facts the tables do not hold derived from the JDK's version (each marked
//! "derived" below, and in ARCHITECTURE.md).

use crate::Error;
use crate::vmstructs::VmStructs;

/// Where an nmethod keeps its debug information (PcDescs, scopes) and metadata.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NmethodData {
    /// JDK 9 to 22: sections inside the nmethod, at int offsets from its start, except the
    /// scopes data, a pointer (`CompiledMethod::_scopes_data_begin`).
    InBlob {
        /// `nmethod::_metadata_offset` (metadata runs up to the scopes data).
        metadata_offset: u64,
        /// `nmethod::_scopes_pcs_offset`.
        pcs_offset: u64,
        /// `nmethod::_dependencies_offset`: where the PcDescs end.
        pcs_end_offset: u64,
        /// `CompiledMethod::_scopes_data_begin` (a pointer).
        scopes_data_begin: u64,
    },
    /// JDK 23+: debug information in a separate immutable block (`nmethod::_immutable_data`,
    /// sections at int offsets from it), metadata in the CodeBlob's mutable data after the
    /// relocations (JDK 25+; derived from nmethod.hpp: `mutable_data + relocation_size`).
    Immutable {
        /// `nmethod::_immutable_data` (a pointer).
        immutable_data: u64,
        /// `nmethod::_immutable_data_size`.
        immutable_data_size: u64,
        /// `nmethod::_scopes_pcs_offset`.
        pcs_offset: u64,
        /// `nmethod::_scopes_data_offset`: where the PcDescs end and the scopes start.
        scopes_data_offset: u64,
        /// `CodeBlob::_mutable_data` (a pointer).
        mutable_data: u64,
        /// `CodeBlob::_mutable_data_size`.
        mutable_data_size: u64,
        /// `CodeBlob::_relocation_size`.
        relocation_size: u64,
    },
}

/// How a CodeBlob tells what it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlobKinds {
    /// By its name (`CodeBlob::_name`: "nmethod", "native nmethod", "vtable chunks"...).
    ByName,
    /// By `CodeBlob::_kind` (JDK 23+), with the `CodeBlobKind` values of an nmethod, a vtable
    /// stub and an adapter.
    ByKind {
        /// `CodeBlob::_kind`.
        offset: u64,
        /// `CodeBlobKind::Nmethod`.
        nmethod: u8,
        /// `CodeBlobKind::Vtable`.
        vtable: u8,
        /// `CodeBlobKind::Adapter`.
        adapter: u8,
    },
}

/// Everything offset-like the plug-in needs for one JVM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    /// The JDK's feature release (11, 17, 21, 25...).
    pub major: u32,

    /// Address of `CodeCache::_heaps` (a `GrowableArray<CodeHeap*>*`).
    pub code_cache_heaps: u64,
    /// `GrowableArrayBase::_len` (`GenericGrowableArray::_len` before JDK 16).
    pub growable_len: u64,
    /// `GrowableArray<int>::_data` (the element array of every GrowableArray).
    pub growable_data: u64,
    /// `CodeHeap::_memory` (a VirtualSpace).
    pub heap_memory: u64,
    /// `CodeHeap::_segmap` (a VirtualSpace).
    pub heap_segmap: u64,
    /// `CodeHeap::_log2_segment_size`.
    pub heap_log2_segment_size: u64,
    /// `VirtualSpace::_low_boundary`.
    pub vs_low_boundary: u64,
    /// `VirtualSpace::_high_boundary`.
    pub vs_high_boundary: u64,
    /// `sizeof(HeapBlock)`: a CodeBlob starts this far into its block.
    pub heap_block_size: u64,
    /// Address of `AbstractInterpreter::_code` (a `StubQueue*`).
    pub interpreter_code: u64,
    /// `StubQueue::_stub_buffer`.
    pub stub_queue_buffer: u64,
    /// `StubQueue::_buffer_limit`.
    pub stub_queue_limit: u64,

    /// `CodeBlob::_name`.
    pub blob_name: u64,
    /// `CodeBlob::_size`.
    pub blob_size: u64,
    /// `CodeBlob::_code_begin` (a pointer), or `_code_offset` (an int, JDK 23+).
    pub blob_code_begin: u64,
    /// `CodeBlob::_code_end` (a pointer), or `_data_offset` (an int, JDK 23+).
    pub blob_code_end: u64,
    /// Code begin and end are int offsets from the blob (JDK 23+).
    pub code_offsets: bool,
    /// `CodeBlob::_frame_complete_offset`.
    pub blob_frame_complete: u64,
    /// `_frame_complete_offset` is 16 bits wide (`int16_t`, JDK 23+).
    pub frame_complete_16: bool,
    /// `CodeBlob::_frame_size` (words).
    pub blob_frame_size: u64,
    /// How a blob's kind is told.
    pub blob_kinds: BlobKinds,

    /// `nmethod::_method` (`CompiledMethod::_method` before JDK 23).
    pub nm_method: u64,
    /// `nmethod::_compile_id`.
    pub nm_compile_id: u64,
    /// `nmethod::_orig_pc_offset`.
    pub nm_orig_pc_offset: u64,
    /// `nmethod::_entry_bci`.
    pub nm_entry_bci: u64,
    /// The deoptimization handler: `CompiledMethod::_deopt_handler_begin` (a pointer) or
    /// `nmethod::_deopt_handler_offset` (an int offset from the blob, JDK 23+).
    pub nm_deopt_handler: u64,
    /// `nm_deopt_handler` is an offset.
    pub deopt_offset: bool,
    /// Where the debug information is.
    pub nm_data: NmethodData,
    /// `sizeof(PcDesc)`.
    pub pc_desc_size: u64,
    /// `PcDesc::_pc_offset`.
    pub pc_desc_pc_offset: u64,
    /// `PcDesc::_scope_decode_offset`.
    pub pc_desc_scope_offset: u64,

    /// `Method::_constMethod`.
    pub method_const_method: u64,
    /// `sizeof(ConstMethod)`: the bytecodes follow it, then the compressed line table.
    pub const_method_size: u64,
    /// `ConstMethod::_constants`.
    pub cm_constants: u64,
    /// `ConstMethod::_code_size`.
    pub cm_code_size: u64,
    /// `ConstMethod::_name_index`.
    pub cm_name_index: u64,
    /// `ConstMethod::_signature_index`.
    pub cm_signature_index: u64,
    /// `ConstMethod::_flags` (`_flags._flags`, 32 bits, from JDK 21).
    pub cm_flags: u64,
    /// Width of the flags in bytes (2 or 4).
    pub cm_flags_width: u8,
    /// The flag bit of a method with a line number table.
    pub cm_has_line_table: u32,
    /// `sizeof(ConstantPool)`: the pool's slots follow it.
    pub cp_size: u64,
    /// `ConstantPool::_pool_holder`.
    pub cp_pool_holder: u64,
    /// `ConstantPool::_source_file_name_index` (JDK 15+).
    pub cp_source_file: Option<u64>,
    /// `InstanceKlass::_source_file_name_index` (before JDK 15).
    pub ik_source_file: Option<u64>,
    /// `Klass::_name`.
    pub klass_name: u64,
    /// `Symbol::_length` (a u16).
    pub symbol_length: u64,
    /// `Symbol::_body`.
    pub symbol_body: u64,

    /// The excluded bytes of the UNSIGNED5 encoding of line tables and scopes: 1 from JDK 20
    /// (derived: JDK-8297955 moved CompressedStream to the zero-free UNSIGNED5), 0 before.
    pub unsigned5_x: u8,
    /// Interpreter frame slots in words from RBP (x86-64): the Method* (derived: one below
    /// `frame::interpreter_frame_last_sp_offset`), the bytecode pointer (derived: 5 below the
    /// Method*, JDK 9+) and the sender SP (`frame::interpreter_frame_sender_sp_offset`).
    pub interp_method_slot: i8,
    /// The bytecode pointer's slot.
    pub interp_bcp_slot: i8,
    /// The sender SP's slot.
    pub interp_sender_sp_slot: i8,

    /// Address of `StubRoutines::_call_stub_return_address`, when listed.
    pub call_stub_return: Option<u64>,
    /// Addresses of the other `StubRoutines::_*` statics (each holds the address of a
    /// routine, or of data), with the routine's name.
    pub stub_routines: Vec<(String, u64)>,
}

/// The most a field offset may be: every class the walker reads is far smaller.
const MAX_OFFSET: u64 = 4096;

struct Lookup<'a> {
    vm: &'a VmStructs,
    missing: Vec<String>,
}

impl Lookup<'_> {
    /// The first of `fields` of the first of `classes` that the tables list.
    fn offset_of(&self, classes: &[&str], fields: &[&str]) -> Option<u64> {
        classes
            .iter()
            .flat_map(|c| fields.iter().map(move |f| (c, f)))
            .find_map(|(c, f)| self.vm.offset(c, f))
            .filter(|&o| o < MAX_OFFSET)
    }

    fn offset(&mut self, classes: &[&str], fields: &[&str]) -> u64 {
        match self.offset_of(classes, fields) {
            Some(o) => o,
            None => {
                self.missing.push(format!("{}::{}", classes[0], fields[0]));
                0
            }
        }
    }

    fn address(&mut self, class: &str, field: &str) -> u64 {
        match self.vm.address(class, field) {
            Some(a) if a != 0 => a,
            _ => {
                self.missing.push(format!("{class}::{field} (static)"));
                0
            }
        }
    }

    fn size(&mut self, type_name: &str) -> u64 {
        match self.vm.size(type_name).filter(|&s| s > 0 && s < MAX_OFFSET) {
            Some(s) => s,
            None => {
                self.missing.push(format!("sizeof({type_name})"));
                0
            }
        }
    }

    fn int(&mut self, names: &[&str]) -> i64 {
        match names.iter().find_map(|n| self.vm.int_constant(n)) {
            Some(v) => v,
            None => {
                self.missing.push(names[0].to_owned());
                0
            }
        }
    }
}

/// The JDK's feature release, from `Abstract_VM_Version::_vm_major_version` (read by the
/// caller at the address [`major_version_address`] gives).
pub fn major_version_address(vm: &VmStructs) -> Option<u64> {
    vm.address("Abstract_VM_Version", "_vm_major_version")
}

impl Layout {
    /// The layout of a JVM of feature release `major` whose tables are `vm`. Fails, naming
    /// every missing entry, when the tables lack something the walker needs (a JDK that
    /// renamed a field: its frames then stay native).
    pub fn new(vm: &VmStructs, major: u32) -> Result<Layout, Error> {
        if major < 9 {
            return Err(Error::Unsupported {
                major,
                reason: "JDK 8 and older keep one code heap without CodeCache::_heaps and an \
                         older interpreter frame; only JDK 9 and later are supported (11 to 25 \
                         are tested)",
            });
        }
        let mut l = Lookup {
            vm,
            missing: Vec::new(),
        };
        let nm: &[&str] = &["nmethod", "CompiledMethod"];
        let new_blob = vm.offset("CodeBlob", "_code_offset").is_some();
        let blob_kinds = match l.offset_of(&["CodeBlob"], &["_kind"]) {
            Some(offset) => {
                let kind = |l: &mut Lookup, name: &str| {
                    u8::try_from(l.int(&[&format!("CodeBlobKind::{name}")])).unwrap_or(0xff)
                };
                BlobKinds::ByKind {
                    offset,
                    nmethod: kind(&mut l, "Nmethod"),
                    vtable: kind(&mut l, "Vtable"),
                    adapter: kind(&mut l, "Adapter"),
                }
            }
            None => BlobKinds::ByName,
        };
        let nm_data = if vm.offset("nmethod", "_immutable_data").is_some() {
            NmethodData::Immutable {
                immutable_data: l.offset(&["nmethod"], &["_immutable_data"]),
                immutable_data_size: l.offset(&["nmethod"], &["_immutable_data_size"]),
                pcs_offset: l.offset(&["nmethod"], &["_scopes_pcs_offset"]),
                scopes_data_offset: l.offset(&["nmethod"], &["_scopes_data_offset"]),
                mutable_data: l.offset(&["CodeBlob"], &["_mutable_data"]),
                mutable_data_size: l.offset(&["CodeBlob"], &["_mutable_data_size"]),
                relocation_size: l.offset(&["CodeBlob"], &["_relocation_size"]),
            }
        } else {
            NmethodData::InBlob {
                metadata_offset: l.offset(&["nmethod"], &["_metadata_offset"]),
                pcs_offset: l.offset(&["nmethod"], &["_scopes_pcs_offset"]),
                pcs_end_offset: l.offset(&["nmethod"], &["_dependencies_offset"]),
                scopes_data_begin: l.offset(nm, &["_scopes_data_begin"]),
            }
        };
        let deopt_offset = vm.offset("nmethod", "_deopt_handler_offset").is_some()
            || vm
                .offset("nmethod", "_deopt_handler_entry_offset")
                .is_some();
        // Field widths from the types the table gives.
        let wide = |t: Option<&str>| t.is_some_and(|t| t.contains('4') || t.contains("int"));
        let cm_flags_wide = wide(
            vm.type_of("ConstMethod", "_flags._flags")
                .or_else(|| vm.type_of("ConstMethod", "_flags")),
        );
        let frame_complete_16 = vm
            .type_of("CodeBlob", "_frame_complete_offset")
            .is_some_and(|t| t.contains("16") || t.contains("short"));
        let last_sp = l.int(&["frame::interpreter_frame_last_sp_offset"]);
        let sender_sp = l.int(&["frame::interpreter_frame_sender_sp_offset"]);
        let stub_routines = vm
            .statics_of("StubRoutines")
            .into_iter()
            .filter(|(name, _)| *name != "_call_stub_return_address" && !name.contains("table"))
            .map(|(name, addr)| (name.trim_start_matches('_').to_owned(), addr))
            .collect();
        let layout = Layout {
            major,
            code_cache_heaps: l.address("CodeCache", "_heaps"),
            growable_len: l.offset(&["GrowableArrayBase", "GenericGrowableArray"], &["_len"]),
            growable_data: l.offset(&["GrowableArray<int>"], &["_data"]),
            heap_memory: l.offset(&["CodeHeap"], &["_memory"]),
            heap_segmap: l.offset(&["CodeHeap"], &["_segmap"]),
            heap_log2_segment_size: l.offset(&["CodeHeap"], &["_log2_segment_size"]),
            vs_low_boundary: l.offset(&["VirtualSpace"], &["_low_boundary"]),
            vs_high_boundary: l.offset(&["VirtualSpace"], &["_high_boundary"]),
            heap_block_size: l.size("HeapBlock"),
            interpreter_code: l.address("AbstractInterpreter", "_code"),
            stub_queue_buffer: l.offset(&["StubQueue"], &["_stub_buffer"]),
            stub_queue_limit: l.offset(&["StubQueue"], &["_buffer_limit"]),
            blob_name: l.offset(&["CodeBlob"], &["_name"]),
            blob_size: l.offset(&["CodeBlob"], &["_size"]),
            blob_code_begin: l.offset(&["CodeBlob"], &["_code_begin", "_code_offset"]),
            blob_code_end: l.offset(&["CodeBlob"], &["_code_end", "_data_offset"]),
            code_offsets: new_blob,
            blob_frame_complete: l.offset(&["CodeBlob"], &["_frame_complete_offset"]),
            frame_complete_16,
            blob_frame_size: l.offset(&["CodeBlob"], &["_frame_size"]),
            blob_kinds,
            nm_method: l.offset(nm, &["_method"]),
            nm_compile_id: l.offset(&["nmethod"], &["_compile_id"]),
            nm_orig_pc_offset: l.offset(&["nmethod"], &["_orig_pc_offset"]),
            nm_entry_bci: l.offset(&["nmethod"], &["_entry_bci"]),
            nm_deopt_handler: l.offset(
                nm,
                &[
                    "_deopt_handler_begin",
                    "_deopt_handler_offset",
                    "_deopt_handler_entry_offset",
                ],
            ),
            deopt_offset,
            nm_data,
            pc_desc_size: l.size("PcDesc"),
            pc_desc_pc_offset: l.offset(&["PcDesc"], &["_pc_offset"]),
            pc_desc_scope_offset: l.offset(&["PcDesc"], &["_scope_decode_offset"]),
            method_const_method: l.offset(&["Method"], &["_constMethod"]),
            const_method_size: l.size("ConstMethod"),
            cm_constants: l.offset(&["ConstMethod"], &["_constants"]),
            cm_code_size: l.offset(&["ConstMethod"], &["_code_size"]),
            cm_name_index: l.offset(&["ConstMethod"], &["_name_index"]),
            cm_signature_index: l.offset(&["ConstMethod"], &["_signature_index"]),
            cm_flags: l.offset(&["ConstMethod"], &["_flags._flags", "_flags"]),
            cm_flags_width: if cm_flags_wide { 4 } else { 2 },
            cm_has_line_table: l.int(&[
                "ConstMethodFlags::_misc_has_linenumber_table",
                "ConstMethod::_has_linenumber_table",
            ]) as u32,
            cp_size: l.size("ConstantPool"),
            cp_pool_holder: l.offset(&["ConstantPool"], &["_pool_holder"]),
            cp_source_file: l.offset_of(&["ConstantPool"], &["_source_file_name_index"]),
            ik_source_file: l.offset_of(&["InstanceKlass"], &["_source_file_name_index"]),
            klass_name: l.offset(&["Klass"], &["_name"]),
            symbol_length: match l.offset_of(&["Symbol"], &["_length"]) {
                Some(o) => o,
                // A combined 32-bit field whose upper half is the length.
                None => l.offset(&["Symbol"], &["_length_and_refcount"]) + 2,
            },
            symbol_body: l.offset(&["Symbol"], &["_body"]),
            unsigned5_x: u8::from(major >= 20),
            interp_method_slot: i8::try_from(last_sp - 1).unwrap_or(0),
            interp_bcp_slot: i8::try_from(last_sp - 6).unwrap_or(0),
            interp_sender_sp_slot: i8::try_from(sender_sp).unwrap_or(0),
            call_stub_return: vm.address("StubRoutines", "_call_stub_return_address"),
            stub_routines,
        };
        let slots = [
            layout.interp_method_slot,
            layout.interp_bcp_slot,
            layout.interp_sender_sp_slot,
        ];
        if slots.iter().any(|s| !(-9..=-1).contains(s)) {
            l.missing.push(format!(
                "interpreter frame slots {slots:?} (expected -9 to -1)"
            ));
        }
        if layout.cp_source_file.is_none() && layout.ik_source_file.is_none() {
            l.missing
                .push("ConstantPool::_source_file_name_index".to_owned());
        }
        if l.missing.is_empty() {
            Ok(layout)
        } else {
            Err(Error::MissingStructs {
                major,
                missing: l.missing,
            })
        }
    }
}
