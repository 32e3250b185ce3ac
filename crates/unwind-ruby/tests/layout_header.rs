//! The 3.1 layout against the structures Debian's Ruby 3.1 was compiled with: its
//! `rb_mjit_min_header-3.1.2.h` (package ruby3.1-dev) holds the VM's internal definitions as
//! the compiler saw them; a C program prints `offsetof` of every field the walker and the
//! naming read.

use std::process::Command;
use std::time::Duration;

use ferroscope_test_harness as harness;
use ferroscope_unwind_ruby::layout::{ClassLayout, layout};

const HEADER: &str = "/usr/include/x86_64-linux-gnu/ruby-3.1.0/rb_mjit_min_header-3.1.2.h";

const PROGRAM: &str = r#"
#include "rb_mjit_min_header-3.1.2.h"
#include <stdio.h>
#include <stddef.h>
#define P(name, value) printf("%s %zu\n", name, (size_t)(value))
int main(void) {
  P("ec_vm_stack", offsetof(rb_execution_context_t, vm_stack));
  P("ec_cfp", offsetof(rb_execution_context_t, cfp));
  P("ec_thread_ptr", offsetof(rb_execution_context_t, thread_ptr));
  P("cfp_size", sizeof(rb_control_frame_t));
  P("cfp_pc", offsetof(rb_control_frame_t, pc));
  P("cfp_iseq", offsetof(rb_control_frame_t, iseq));
  P("cfp_ep", offsetof(rb_control_frame_t, ep));
  P("iseq_body", offsetof(rb_iseq_t, body));
  P("body_type", offsetof(struct rb_iseq_constant_body, type));
  P("body_iseq_size", offsetof(struct rb_iseq_constant_body, iseq_size));
  P("body_iseq_encoded", offsetof(struct rb_iseq_constant_body, iseq_encoded));
  P("body_location", offsetof(struct rb_iseq_constant_body, location));
  P("location_label", offsetof(rb_iseq_location_t, label));
  P("location_first_lineno", offsetof(rb_iseq_location_t, first_lineno));
  P("body_insns_info", offsetof(struct rb_iseq_constant_body, insns_info));
  P("insns_info_succ", offsetof(struct rb_iseq_constant_body, insns_info.succ_index_table));
  P("body_local_iseq", offsetof(struct rb_iseq_constant_body, local_iseq));
  P("insn_info_entry", sizeof(struct iseq_insn_info_entry));
  P("cme_defined_class", offsetof(rb_callable_method_entry_t, defined_class));
  P("cme_def", offsetof(rb_callable_method_entry_t, def));
  P("def_body", offsetof(rb_method_definition_t, body));
  P("def_original_id", offsetof(rb_method_definition_t, original_id));
  P("svar_cref_or_me", offsetof(struct vm_svar, cref_or_me));
  P("class_ext_ptr", offsetof(struct RClass, ptr));
  P("class_iv_tbl", offsetof(struct rb_classext_struct, iv_tbl));
  P("string_heap_ptr", offsetof(struct RString, as.heap.ptr));
  P("string_embed", offsetof(struct RString, as.embed.ary));
  P("array_heap_ptr", offsetof(struct RArray, as.heap.ptr));
  P("string_noembed", RSTRING_NOEMBED);
  P("string_embed_len_shift", RSTRING_EMBED_LEN_SHIFT);
  P("array_embed_len_mask", RARRAY_EMBED_LEN_MASK >> RARRAY_EMBED_LEN_SHIFT);
  P("fl_singleton", FL_SINGLETON);
  return 0;
}
"#;

#[test]
fn ruby_3_1_layout_matches_its_compiled_structures() {
    let Some(_) = harness::file(HEADER, "apt-get install ruby3.1-dev") else {
        return;
    };
    let Some(gcc) = harness::tool("gcc") else {
        return;
    };
    let dir = tempfile_dir();
    let src = dir.join("offsets.c");
    let exe = dir.join("offsets");
    std::fs::write(&src, PROGRAM).unwrap();
    harness::run_ok(
        Command::new(&gcc)
            .arg("-w")
            .arg("-I/usr/include/ruby-3.1.0")
            .arg("-I/usr/include/x86_64-linux-gnu/ruby-3.1.0")
            .arg(&src)
            .arg("-o")
            .arg(&exe)
            .arg("-lruby-3.1"),
        Duration::from_secs(120),
    );
    let out = harness::run_ok(&mut Command::new(&exe), Duration::from_secs(10));
    let got: std::collections::HashMap<&str, u32> = out
        .lines()
        .filter_map(|l| {
            let (k, v) = l.split_once(' ')?;
            Some((k, v.parse().ok()?))
        })
        .collect();
    let l = layout(3, 1).unwrap();
    let ClassLayout::Ivars { ext_ptr, iv_tbl } = l.class else {
        panic!("3.1 keeps class paths in ivars");
    };
    let want = [
        ("ec_vm_stack", l.ec_vm_stack),
        ("ec_cfp", l.ec_cfp),
        ("ec_thread_ptr", l.ec_thread_ptr),
        ("cfp_size", l.cfp_size),
        ("cfp_pc", l.cfp_pc),
        ("cfp_iseq", l.cfp_iseq),
        ("cfp_ep", l.cfp_ep),
        ("iseq_body", l.iseq_body),
        ("body_type", l.body_type),
        ("body_iseq_size", l.body_iseq_size),
        ("body_iseq_encoded", l.body_iseq_encoded),
        ("body_location", l.body_location),
        ("location_label", 16),
        ("location_first_lineno", 24),
        ("body_insns_info", l.body_insns_info),
        ("insns_info_succ", l.body_insns_info + 24),
        ("body_local_iseq", l.body_local_iseq),
        ("insn_info_entry", l.insn_info_entry),
        ("cme_defined_class", 8),
        ("cme_def", l.cme_def),
        ("def_body", l.def_body),
        ("def_original_id", l.def_original_id),
        ("svar_cref_or_me", l.svar_cref_or_me),
        ("class_ext_ptr", ext_ptr),
        ("class_iv_tbl", iv_tbl),
        ("string_heap_ptr", 24),
        ("string_embed", 16),
        ("array_heap_ptr", 32),
        ("string_noembed", 1 << 13),
        ("string_embed_len_shift", 14),
        ("array_embed_len_mask", l.array_embed_len_mask as u32),
        ("fl_singleton", l.fl_singleton as u32),
    ];
    for (name, value) in want {
        assert_eq!(got.get(name), Some(&value), "{name}\n{out}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

fn tempfile_dir() -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("ferroscope-ruby-layout-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}
