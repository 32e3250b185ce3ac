//! Everything the plug-in reads in a V8 heap, for one V8 version: where each field is, what
//! each instance type and frame type is. Most of it comes from the binary's `v8dbg_*`
//! constants ([`Constants`]); what the metadata lost over the years is filled in from
//! version knowledge, each fallback named on its field (and listed in ARCHITECTURE.md).
//! Every fallback was checked against the heaps of Node 18 (V8 10.2), 20 (11.3), 22 (12.4),
//! 24 (13.6) and 26 (14.6) (`tests/live.rs` and the end-to-end tests).

use crate::constants::Constants;
use crate::{Error, V8Version};

/// Where a `Code` object's instructions start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InstructionStart {
    /// Inside the `Code` object, at this offset (V8 ≤ 11.0: code lives in `Code` objects).
    Inline(u16),
    /// In a separate `InstructionStream`, whose address is the pointer at this offset of
    /// the `Code` object (V8 11.1+).
    Pointer(u16),
}

/// Which `ScopeInfo` layout the version has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScopeInfoLayout {
    /// V8 ≤ 12.7: flags are a Smi; the function's start and end positions follow the
    /// variable-length parts (context locals, function name, inferred name).
    PositionsAfterNames,
    /// V8 12.8.44+: flags are a raw 32-bit field; the positions are the fixed slots 3 and 4.
    FixedPositions,
}

/// The `DeoptimizationData` slots that describe inlining.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeoptIndexes {
    /// How many functions were inlined (a Smi).
    pub inlined_function_count: u16,
    /// The literal array whose first entries are the inlined functions' SFIs.
    pub literal_array: u16,
    /// The optimized function's SFI (V8 ≤ 13.0), or its `SharedFunctionInfoWrapper`.
    pub shared_function_info: u16,
    /// Whether [`DeoptIndexes::shared_function_info`] holds a wrapper (V8 13+).
    pub sfi_wrapped: bool,
    /// The byte array of `InliningPosition`s.
    pub inlining_positions: u16,
}

/// One V8 version's object layout, instance types, frame types and constants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    /// The version this layout is for.
    pub version: V8Version,

    /// Frame slots, bytes from the frame pointer.
    pub fp_context: i16,
    /// The JSFunction slot.
    pub fp_function: i16,
    /// The BytecodeArray slot of interpreted and baseline frames.
    pub fp_bytecode_array: i16,
    /// The bytecode offset slot (a Smi) of interpreted frames.
    pub fp_bytecode_offset: i16,

    /// Every frame type the binary names (`v8dbg_frametype_*`), by marker.
    pub frame_types: Vec<(u8, &'static str)>,

    /// `Map::instance_type`.
    pub map_instance_type: u16,
    /// `JSFunction::shared`.
    pub jsfunction_shared: u16,
    /// `SharedFunctionInfo::function_data` (`trusted_function_data` in 12.x+: bytecode,
    /// baseline code, interpreter data). Fallback: 8 (no metadata since 12.0).
    pub sfi_function_data: u16,
    /// `SharedFunctionInfo::untrusted_function_data` (13.x+: a builtin ID, uncompiled data,
    /// API data), when the version splits function data in two.
    pub sfi_untrusted_function_data: Option<u16>,
    /// `SharedFunctionInfo::name_or_scope_info`.
    pub sfi_name_or_scope_info: u16,
    /// `SharedFunctionInfo::script_or_debug_info` (`script` in 12.x+).
    pub sfi_script: u16,
    /// `SharedFunctionInfo::flags` (a 32-bit field).
    pub sfi_flags: u16,

    /// `Script::source`. Fallback: `name` − 8.
    pub script_source: u16,
    /// `Script::name`.
    pub script_name: u16,
    /// `Script::line_ends` (a FixedArray of Smis once V8 computed it).
    pub script_line_ends: Option<u16>,

    /// `String::length` (a 32-bit field).
    pub string_length: u16,
    /// Characters of sequential strings.
    pub seq_string_chars: u16,
    /// `ConsString::first` and `second`.
    pub cons_first: u16,
    /// `ConsString::second`.
    pub cons_second: u16,
    /// `ThinString::actual`.
    pub thin_actual: u16,
    /// `SlicedString::parent` and `offset` (a Smi).
    pub sliced_parent: u16,
    /// `SlicedString::offset`.
    pub sliced_offset: u16,
    /// The cached data pointer of external strings (`resource` + 8).
    pub external_resource_data: u16,
    /// `FIRST_NONSTRING_TYPE`: instance types below it are strings.
    pub first_nonstring_type: u16,

    /// `FixedArrayBase::length` (a Smi).
    pub fixed_array_length: u16,
    /// The first element of fixed arrays (and the bytes of byte arrays).
    pub fixed_array_data: u16,

    /// `BytecodeArray::length` (a Smi).
    pub bytecode_length: u16,
    /// `BytecodeArray::source_position_table`. Fallback (lost in 9.4): `length` + 24 before
    /// 12.x, `wrapper` + 8 since.
    pub bytecode_source_positions: u16,
    /// The first bytecode.
    pub bytecode_data: u16,

    /// Where a Code object's instructions start.
    pub code_instruction_start: InstructionStart,
    /// `Code::instruction_size` (32 bits). 11.x fallback (metadata lost): `flags` + 8.
    pub code_instruction_size: u16,
    /// `Code::flags` (32 bits; the kind in its low 4 bits). 11.x fallback: the instruction
    /// start + 8.
    pub code_flags: u16,
    /// `Code::deoptimization_data` (optimized code), also the bytecode (or interpreter
    /// data) of baseline code. Fallback: the position table − 8.
    pub code_deoptimization_data: u16,
    /// `Code::source_position_table` (optimized code), also the bytecode offset table of
    /// baseline code. Fallback: `instruction_size` − 16 (≤ 10.x), the instruction start − 24
    /// (11.x+, where it follows the code wrapper when there is one).
    pub code_position_table: u16,
    /// `InstructionStream` header size: where instructions start in it (11.1+).
    pub instruction_stream_header: u16,
    /// `InstructionStream::code`, the back pointer to its Code (11.1+): right after the map.
    pub instruction_stream_code: u16,
    /// Code kinds: `BASELINE` (Sparkplug); MAGLEV and TURBOFAN follow it.
    pub code_kind_baseline: u8,
    /// `BUILTIN` (2 in every version).
    pub code_kind_builtin: u8,

    /// DeoptimizationData slots.
    pub deopt: DeoptIndexes,
    /// `SharedFunctionInfoWrapper::shared_info` (13.x+): right after the map.
    pub sfi_wrapper_shared: u16,
    /// `InterpreterData::bytecode_array`: right after the map.
    pub interpreter_data_bytecode: u16,
    /// `UncompiledData::inferred_name`, `start_position`, `end_position`.
    pub uncompiled_inferred_name: u16,
    /// `UncompiledData::start_position` (32 bits).
    pub uncompiled_start_position: u16,
    /// `UncompiledData::end_position` (32 bits).
    pub uncompiled_end_position: u16,

    /// The ScopeInfo layout.
    pub scope_info: ScopeInfoLayout,

    /// Instance types.
    pub types: Types,
}

/// The instance types the plug-in tells apart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Types {
    /// `SHARED_FUNCTION_INFO_TYPE`.
    pub shared_function_info: u16,
    /// `SHARED_FUNCTION_INFO_WRAPPER_TYPE` (13.x+).
    pub shared_function_info_wrapper: Option<u16>,
    /// `SCOPE_INFO_TYPE`.
    pub scope_info: u16,
    /// `SCRIPT_TYPE`.
    pub script: u16,
    /// `BYTECODE_ARRAY_TYPE`.
    pub bytecode_array: u16,
    /// `CODE_TYPE`.
    pub code: u16,
    /// `INSTRUCTION_STREAM_TYPE` (11.1+).
    pub instruction_stream: Option<u16>,
    /// `INTERPRETER_DATA_TYPE`.
    pub interpreter_data: Option<u16>,
    /// `FIXED_ARRAY_TYPE`, and the trusted and protected variants (12.x+).
    pub fixed_arrays: Vec<u16>,
    /// `BYTE_ARRAY_TYPE` and `TRUSTED_BYTE_ARRAY_TYPE`.
    pub byte_arrays: Vec<u16>,
    /// `WEAK_FIXED_ARRAY_TYPE` and `TRUSTED_WEAK_FIXED_ARRAY_TYPE`.
    pub weak_fixed_arrays: Vec<u16>,
    /// The `UNCOMPILED_DATA_*` types.
    pub uncompiled_data: Vec<u16>,
}

impl Types {
    /// Whether `t` is a (trusted, protected) fixed array.
    pub fn is_fixed_array(&self, t: u16) -> bool {
        self.fixed_arrays.contains(&t)
    }

    /// Whether `t` is a (trusted) byte array.
    pub fn is_byte_array(&self, t: u16) -> bool {
        self.byte_arrays.contains(&t)
    }
}

/// The frame types V8 has had, by the name `v8dbg_frametype_*` gives them.
pub const FRAME_TYPE_NAMES: &[&str] = &[
    "EntryFrame",
    "ConstructEntryFrame",
    "ExitFrame",
    "FastConstructFrame",
    "WasmFrame",
    "WasmToJsFrame",
    "WasmToJsFunctionFrame",
    "JsToWasmFrame",
    "StackSwitchFrame",
    "WasmDebugBreakFrame",
    "CWasmEntryFrame",
    "WasmExitFrame",
    "WasmCompileLazyFrame",
    "WasmLiftoffSetupFrame",
    "WasmSegmentStartFrame",
    "WasmJspiFrame",
    "WasmStackEntryFrame",
    "WasmStackExitFrame",
    "InterpretedFrame",
    "BaselineFrame",
    "MaglevFrame",
    "TurbofanFrame",
    "TurbofanJSFrame",
    "OptimizedFrame",
    "StubFrame",
    "TurbofanStubWithContextFrame",
    "BuiltinContinuationFrame",
    "JavaScriptBuiltinContinuationFrame",
    "JavaScriptBuiltinContinuationWithCatchFrame",
    "InternalFrame",
    "ConstructFrame",
    "BuiltinFrame",
    "BuiltinExitFrame",
    "ApiCallbackExitFrame",
    "ApiAccessorExitFrame",
    "ApiConstructExitFrame",
    "ApiNamedAccessorExitFrame",
    "ApiIndexedAccessorExitFrame",
    "NativeFrame",
    "IrregexpFrame",
];

/// The typed frames the walker records (and names): builtins' own frames, regular
/// expression code and WebAssembly. Entry, exit, construct and internal frames are walked
/// through without a frame of their own: the native frames or the JavaScript frames around
/// them say what runs.
pub const RECORDED_FRAME_TYPES: &[&str] = &[
    "StubFrame",
    "BuiltinFrame",
    "TurbofanStubWithContextFrame",
    "IrregexpFrame",
    "WasmFrame",
    "WasmToJsFrame",
    "WasmToJsFunctionFrame",
    "JsToWasmFrame",
    "CWasmEntryFrame",
    "WasmExitFrame",
    "WasmJspiFrame",
];

fn need<T>(what: &'static str, v: Option<T>) -> Result<T, Error> {
    v.ok_or(Error::MissingConstant { what })
}

fn u16_of(v: i64) -> Option<u16> {
    u16::try_from(v).ok()
}

impl Layout {
    /// How this version encodes its source position tables.
    pub fn position_format(&self) -> crate::positions::TableFormat {
        crate::positions::TableFormat::of(self.version.major)
    }

    /// The layout of a binary whose V8 is `version`, from its constants.
    pub fn from_constants(version: V8Version, c: &mut Constants<'_>) -> Result<Layout, Error> {
        // The tagging scheme every read here assumes: 64-bit pointers, no pointer
        // compression (Node's default), 32-bit Smis in the upper half of a word.
        let tagged = c.get("TaggedSize").unwrap_or(8);
        let pointer = c.get("SystemPointerSize").unwrap_or(8);
        let smi_shift = c.get("SmiShiftSize").unwrap_or(31);
        let heap_tag = c.get("HeapObjectTag").unwrap_or(1);
        let heap_mask = c.get("HeapObjectTagMask").unwrap_or(3);
        if tagged != 8 || pointer != 8 || smi_shift != 31 || heap_tag != 1 || heap_mask != 3 {
            return Err(Error::Unsupported {
                version,
                reason: format!(
                    "tagged values of {tagged} bytes, Smi shift {smi_shift}, heap object tag \
                     {heap_tag}/{heap_mask}: only builds without pointer compression (Node's \
                     default) are supported"
                ),
            });
        }

        let fp_function = c.get("off_fp_function").unwrap_or(-16);
        let fp_context = c
            .first(&["off_fp_context_or_frame_type", "off_fp_context"])
            .unwrap_or(-8);
        // Before 9.5.2 the bytecode slots had no constants: below the argument count.
        let fp_bytecode_array = c.get("off_fp_bytecode_array").unwrap_or(fp_function - 16);
        let fp_bytecode_offset = c
            .get("off_fp_bytecode_offset")
            .unwrap_or(fp_bytecode_array - 8);
        let slot = |v: i64| -> Result<i16, Error> {
            if (-48..=-8).contains(&v) && v % 8 == 0 {
                Ok(v as i16)
            } else {
                Err(Error::Unsupported {
                    version,
                    reason: format!("a frame slot at {v} bytes from the frame pointer"),
                })
            }
        };

        let mut frame_types = Vec::new();
        for name in FRAME_TYPE_NAMES {
            if let Some(v) = c.frame_type(name) {
                frame_types.push((v, *name));
            }
        }

        let map_instance_type = c
            .field("Map", "instance_type", &["uint16_t"])
            .and_then(u16_of)
            .unwrap_or(12);
        let jsfunction_shared = need(
            "JSFunction::shared",
            c.field_any_type("JSFunction", "shared", "SharedFunctionInfo")
                .and_then(u16_of),
        )?;
        let sfi_name_or_scope_info = need(
            "SharedFunctionInfo::name_or_scope_info",
            c.field(
                "SharedFunctionInfo",
                "name_or_scope_info",
                &[
                    "Object",
                    "Tagged_Object_",
                    "Tagged_NameOrScopeInfoT_",
                    "Tagged_UnionOf_String_ScopeInfo_",
                ],
            )
            .and_then(u16_of),
        )?;
        let sfi_script = need(
            "SharedFunctionInfo::script",
            c.field(
                "SharedFunctionInfo",
                "script_or_debug_info",
                &[
                    "HeapObject",
                    "Object",
                    "Tagged_HeapObject_",
                    "Tagged_Object_",
                ],
            )
            .or_else(|| {
                c.field(
                    "SharedFunctionInfo",
                    "script",
                    &["Tagged_HeapObject_", "HeapObject"],
                )
            })
            .or_else(|| c.field("SharedFunctionInfo", "raw_script", &["Tagged_Object_"]))
            .and_then(u16_of),
        )?;
        let sfi_function_data = c
            .field_any_type("SharedFunctionInfo", "function_data", "Object")
            .and_then(u16_of)
            .unwrap_or(8);
        // 13.x split function data into a trusted and an untrusted field: name_or_scope_info
        // moved from 16 to 24, and the untrusted part is the field at 16.
        let sfi_untrusted_function_data =
            (sfi_name_or_scope_info >= sfi_function_data + 16).then_some(sfi_function_data + 8);
        let sfi_flags = c
            .field("SharedFunctionInfo", "flags", &["int", "uint32_t"])
            .and_then(u16_of)
            .unwrap_or(sfi_script + 16);

        let script_name = need(
            "Script::name",
            c.field_any_type("Script", "name", "Object")
                .and_then(u16_of),
        )?;
        let script_source = c
            .field_any_type("Script", "source", "Object")
            .and_then(u16_of)
            .unwrap_or(script_name - 8);
        let script_line_ends = c
            .field_any_type("Script", "line_ends", "Object")
            .and_then(u16_of);

        let string_length = c
            .field("String", "length", &["int32_t", "uint32_t"])
            .and_then(u16_of)
            .unwrap_or(12);
        let seq_string_chars = c
            .field("SeqOneByteString", "chars", &["char"])
            .and_then(u16_of)
            .unwrap_or(16);
        let cons_first = c
            .field_any_type("ConsString", "first", "String")
            .and_then(u16_of)
            .unwrap_or(16);
        let cons_second = c
            .field_any_type("ConsString", "second", "String")
            .and_then(u16_of)
            .unwrap_or(24);
        let thin_actual = c
            .field_any_type("ThinString", "actual", "String")
            .and_then(u16_of)
            .unwrap_or(16);
        let sliced_parent = c
            .field_any_type("SlicedString", "parent", "String")
            .and_then(u16_of)
            .unwrap_or(16);
        let sliced_offset = c
            .field("SlicedString", "offset", &["SMI"])
            .and_then(u16_of)
            .unwrap_or(24);
        let external_resource_data = c
            .field_any_type("ExternalString", "resource", "Object")
            .and_then(u16_of)
            .unwrap_or(16)
            + 8;
        let first_nonstring_type = c.get("FirstNonstringType").and_then(u16_of).unwrap_or(128);

        let fixed_array_length = c
            .field("FixedArrayBase", "length", &["SMI"])
            .and_then(u16_of)
            .unwrap_or(8);
        let fixed_array_data = c
            .field("FixedArray", "data", &["uintptr_t"])
            .and_then(u16_of)
            .unwrap_or(16);

        let bytecode_length = c
            .field("BytecodeArray", "length", &["SMI"])
            .and_then(u16_of)
            .unwrap_or(fixed_array_length);
        let bytecode_wrapper = c
            .field("BytecodeArray", "wrapper", &["Tagged_BytecodeWrapper_"])
            .and_then(u16_of);
        let bytecode_source_positions = c
            .field_any_type("BytecodeArray", "source_position_table", "Object")
            .and_then(u16_of)
            .unwrap_or(match bytecode_wrapper {
                Some(w) => w + 8,
                None => bytecode_length + 24,
            });
        let bytecode_data = need(
            "BytecodeArray::data",
            c.field("BytecodeArray", "data", &["uintptr_t"])
                .and_then(u16_of),
        )?;

        let code = code_layout(version, c)?;

        let deopt = {
            let count = c
                .get("DeoptimizationDataInlinedFunctionCountIndex")
                .and_then(u16_of)
                .unwrap_or(1);
            let literal = c
                .get("DeoptimizationDataLiteralArrayIndex")
                .and_then(u16_of)
                .unwrap_or(count + 1);
            let wrapper = c
                .get("DeoptimizationDataWrappedSharedFunctionInfoIndex")
                .or_else(|| c.get("DeoptimizationDataSharedFunctionInfoWrapperIndex"))
                .and_then(u16_of);
            let sfi = wrapper
                .or_else(|| {
                    c.get("DeoptimizationDataSharedFunctionInfoIndex")
                        .and_then(u16_of)
                })
                .unwrap_or(6);
            let inlining = c
                .get("DeoptimizationDataInliningPositionsIndex")
                .and_then(u16_of)
                .unwrap_or(sfi + 1);
            DeoptIndexes {
                inlined_function_count: count,
                literal_array: literal,
                shared_function_info: sfi,
                sfi_wrapped: wrapper.is_some(),
                inlining_positions: inlining,
            }
        };
        let sfi_wrapper_shared = c
            .field(
                "SharedFunctionInfoWrapper",
                "shared_info",
                &["Tagged_SharedFunctionInfo_", "SharedFunctionInfo"],
            )
            .and_then(u16_of)
            .unwrap_or(8);

        let uncompiled_inferred_name = c
            .field_any_type("UncompiledData", "inferred_name", "String")
            .and_then(u16_of)
            .unwrap_or(8);
        let uncompiled_start_position = c
            .field("UncompiledData", "start_position", &["int32_t"])
            .and_then(u16_of)
            .unwrap_or(16);
        let uncompiled_end_position = c
            .field("UncompiledData", "end_position", &["int32_t"])
            .and_then(u16_of)
            .unwrap_or(20);

        // See scope_info.rs: the positions became fixed slots in 12.8.44.
        let scope_info = if version.at_least(12, 8, 44) {
            ScopeInfoLayout::FixedPositions
        } else {
            ScopeInfoLayout::PositionsAfterNames
        };

        let ty = |c: &mut Constants<'_>, class: &str, names: &[&str]| {
            names.iter().find_map(|n| c.instance_type(class, n))
        };
        let types = Types {
            shared_function_info: need(
                "SHARED_FUNCTION_INFO_TYPE",
                ty(c, "SharedFunctionInfo", &["SHARED_FUNCTION_INFO_TYPE"]),
            )?,
            shared_function_info_wrapper: ty(
                c,
                "SharedFunctionInfoWrapper",
                &["SHARED_FUNCTION_INFO_WRAPPER_TYPE"],
            ),
            scope_info: need("SCOPE_INFO_TYPE", ty(c, "ScopeInfo", &["SCOPE_INFO_TYPE"]))?,
            script: need("SCRIPT_TYPE", ty(c, "Script", &["SCRIPT_TYPE"]))?,
            bytecode_array: need(
                "BYTECODE_ARRAY_TYPE",
                ty(c, "BytecodeArray", &["BYTECODE_ARRAY_TYPE"]),
            )?,
            code: need("CODE_TYPE", ty(c, "Code", &["CODE_TYPE"]))?,
            instruction_stream: ty(c, "InstructionStream", &["INSTRUCTION_STREAM_TYPE"]),
            interpreter_data: ty(c, "InterpreterData", &["INTERPRETER_DATA_TYPE"]),
            fixed_arrays: [
                ty(c, "FixedArray", &["FIXED_ARRAY_TYPE"]),
                ty(c, "TrustedFixedArray", &["TRUSTED_FIXED_ARRAY_TYPE"]),
                ty(c, "ProtectedFixedArray", &["PROTECTED_FIXED_ARRAY_TYPE"]),
            ]
            .into_iter()
            .flatten()
            .collect(),
            byte_arrays: [
                ty(c, "ByteArray", &["BYTE_ARRAY_TYPE"]),
                ty(c, "TrustedByteArray", &["TRUSTED_BYTE_ARRAY_TYPE"]),
            ]
            .into_iter()
            .flatten()
            .collect(),
            weak_fixed_arrays: [
                ty(c, "WeakFixedArray", &["WEAK_FIXED_ARRAY_TYPE"]),
                ty(
                    c,
                    "TrustedWeakFixedArray",
                    &["TRUSTED_WEAK_FIXED_ARRAY_TYPE"],
                ),
                ty(
                    c,
                    "ProtectedWeakFixedArray",
                    &["PROTECTED_WEAK_FIXED_ARRAY_TYPE"],
                ),
            ]
            .into_iter()
            .flatten()
            .collect(),
            uncompiled_data: [
                ty(
                    c,
                    "UncompiledDataWithoutPreparseData",
                    &["UNCOMPILED_DATA_WITHOUT_PREPARSE_DATA_TYPE"],
                ),
                ty(
                    c,
                    "UncompiledDataWithPreparseData",
                    &["UNCOMPILED_DATA_WITH_PREPARSE_DATA_TYPE"],
                ),
                ty(
                    c,
                    "UncompiledDataWithoutPreparseDataWithJob",
                    &["UNCOMPILED_DATA_WITHOUT_PREPARSE_DATA_WITH_JOB_TYPE"],
                ),
                ty(
                    c,
                    "UncompiledDataWithPreparseDataAndJob",
                    &["UNCOMPILED_DATA_WITH_PREPARSE_DATA_AND_JOB_TYPE"],
                ),
            ]
            .into_iter()
            .flatten()
            .collect(),
        };
        if types.instruction_stream.is_none()
            && matches!(code.instruction_start, InstructionStart::Pointer(_))
        {
            return Err(Error::MissingConstant {
                what: "INSTRUCTION_STREAM_TYPE",
            });
        }

        Ok(Layout {
            version,
            fp_context: slot(fp_context)?,
            fp_function: slot(fp_function)?,
            fp_bytecode_array: slot(fp_bytecode_array)?,
            fp_bytecode_offset: slot(fp_bytecode_offset)?,
            frame_types,
            map_instance_type,
            jsfunction_shared,
            sfi_function_data,
            sfi_untrusted_function_data,
            sfi_name_or_scope_info,
            sfi_script,
            sfi_flags,
            script_source,
            script_name,
            script_line_ends,
            string_length,
            seq_string_chars,
            cons_first,
            cons_second,
            thin_actual,
            sliced_parent,
            sliced_offset,
            external_resource_data,
            first_nonstring_type,
            fixed_array_length,
            fixed_array_data,
            bytecode_length,
            bytecode_source_positions,
            bytecode_data,
            code_instruction_start: code.instruction_start,
            code_instruction_size: code.instruction_size,
            code_flags: code.flags,
            code_deoptimization_data: code.deoptimization_data,
            code_position_table: code.position_table,
            instruction_stream_header: code.instruction_stream_header,
            instruction_stream_code: 8,
            code_kind_baseline: code.kind_baseline,
            code_kind_builtin: 2,
            deopt,
            sfi_wrapper_shared,
            interpreter_data_bytecode: 8,
            uncompiled_inferred_name,
            uncompiled_start_position,
            uncompiled_end_position,
            scope_info,
            types,
        })
    }

    /// The marker of a frame type, by its `v8dbg_frametype_*` name.
    pub fn frame_type(&self, name: &str) -> Option<u8> {
        self.frame_types
            .iter()
            .find(|(_, n)| *n == name)
            .map(|(v, _)| *v)
    }

    /// The name of a frame type marker.
    pub fn frame_type_name(&self, marker: u8) -> Option<&'static str> {
        self.frame_types
            .iter()
            .find(|(v, _)| *v == marker)
            .map(|(_, n)| *n)
    }

    /// The frame types the walker records ([`RECORDED_FRAME_TYPES`]), as a bit mask.
    pub fn recorded_frame_types(&self) -> u64 {
        RECORDED_FRAME_TYPES
            .iter()
            .filter_map(|n| self.frame_type(n))
            .filter(|&t| t < 64)
            .fold(0, |m, t| m | (1u64 << t))
    }

    /// `MAGLEV`.
    pub fn code_kind_maglev(&self) -> u8 {
        self.code_kind_baseline + 1
    }

    /// `TURBOFAN` (`TURBOFAN_JS`).
    pub fn code_kind_turbofan(&self) -> u8 {
        self.code_kind_baseline + 2
    }
}

struct CodeLayout {
    instruction_start: InstructionStart,
    instruction_size: u16,
    flags: u16,
    deoptimization_data: u16,
    position_table: u16,
    instruction_stream_header: u16,
    kind_baseline: u8,
}

/// Where `Code`'s fields are: the metadata lost most of them in 11.x, then some came back.
fn code_layout(version: V8Version, c: &mut Constants<'_>) -> Result<CodeLayout, Error> {
    let instruction_stream_header = c
        .field("InstructionStream", "instruction_start", &["uintptr_t"])
        .and_then(u16_of);
    let start_pointer = c
        .field("Code", "instruction_start", &["Address"])
        .and_then(u16_of);
    let start_inline = c
        .field("Code", "instruction_start", &["uintptr_t"])
        .and_then(u16_of);
    let mut size = c
        .field("Code", "instruction_size", &["int", "uint32_t"])
        .and_then(u16_of);
    let mut flags = c.field("Code", "flags", &["uint32_t"]).and_then(u16_of);
    let mut positions = c
        .field_any_type("Code", "source_position_table", "ByteArray")
        .and_then(u16_of);
    let mut deopt = c
        .field_any_type("Code", "deoptimization_data", "FixedArray")
        .and_then(u16_of);
    let has_wrapper = c
        .field("Code", "wrapper", &["Tagged_CodeWrapper_"])
        .is_some();

    let instruction_start = match (start_pointer, start_inline, instruction_stream_header) {
        (Some(p), _, _) => InstructionStart::Pointer(p),
        (None, Some(i), None) => InstructionStart::Inline(i),
        // 11.x: no Code field metadata but an InstructionStream; the start pointer follows
        // the source position table and the instruction stream pointer.
        (None, _, Some(_)) => match positions {
            Some(p) => InstructionStart::Pointer(p + 16),
            None => {
                return Err(Error::MissingConstant {
                    what: "Code::instruction_start",
                });
            }
        },
        (None, None, None) => {
            return Err(Error::MissingConstant {
                what: "Code::instruction_start",
            });
        }
    };
    match instruction_start {
        InstructionStart::Pointer(start) => {
            // 11.x lost flags and size; flags follows the start pointer, then (before
            // 11.4.59) a builtin ID and kind-specific flags, then the size.
            if flags.is_none() {
                flags = Some(start + 8);
            }
            if size.is_none() {
                let f = flags.unwrap_or(start + 8);
                size = Some(if version.at_least(11, 4, 59) {
                    f + 4
                } else {
                    f + 8
                });
            }
            if positions.is_none() {
                positions = Some(if has_wrapper { start - 24 } else { start - 16 });
            }
        }
        InstructionStart::Inline(_) => {
            if positions.is_none() {
                positions = size.map(|s| s - 16);
            }
            if flags.is_none() {
                flags = size.map(|s| s + 8);
            }
        }
    }
    let positions = need("Code::source_position_table", positions)?;
    if deopt.is_none() {
        deopt = Some(positions - 8);
    }
    let kind_baseline = c
        .get("CodeKindBaseline")
        .and_then(|v| u8::try_from(v).ok())
        .unwrap_or(11);
    Ok(CodeLayout {
        instruction_start,
        instruction_size: need("Code::instruction_size", size)?,
        flags: need("Code::flags", flags)?,
        deoptimization_data: need("Code::deoptimization_data", deopt)?,
        position_table: positions,
        instruction_stream_header: instruction_stream_header.unwrap_or(0),
        kind_baseline,
    })
}
