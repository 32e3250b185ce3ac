//! ECMA-335 metadata (an assembly's `#~` tables and heaps) and the names built from it, from
//! arbitrary bytes: no panics, bounded names.
#![no_main]

use ferroscope_unwind_dotnet::NameStyle;
use ferroscope_unwind_dotnet::metadata::{Metadata, compressed_i32, compressed_u32};
use ferroscope_unwind_dotnet::names::{ModuleNames, strip_arity};
use libfuzzer_sys::fuzz_target;

/// ECMA-335 table numbers.
const TYPE_DEF: usize = 0x02;
const METHOD_DEF: usize = 0x06;

fuzz_target!(|data: &[u8]| {
    let _ = compressed_u32(data);
    let _ = compressed_i32(data);
    let Ok(md) = Metadata::parse(data.to_vec(), &[0; 64]) else {
        return;
    };
    let _ = (md.mvid(), md.module_name());
    for i in 0..16u32 {
        let _ = (md.string(i * 7), md.blob(i * 5), md.guid(i));
    }
    let types = md.rows(TYPE_DEF).min(64);
    let methods = md.rows(METHOD_DEF).min(64);
    let names = ModuleNames::new(md);
    let args = ["System.Int32".to_owned(), "System.String".to_owned()];
    for t in 0..=types + 1 {
        if let Some(n) = names.type_name(t) {
            assert!(n.len() <= 1 << 20);
            let _ = strip_arity(&n);
        }
        let _ = names.type_arity(t);
    }
    for m in 0..=methods + 1 {
        let _ = (
            names.owner_of(m),
            names.method_name(m),
            names.method_arity(m),
        );
        for style in [NameStyle::Plain, NameStyle::Parameters, NameStyle::Full] {
            if let Some(n) = names.qualified(m, style, &args, &args[..1]) {
                assert!(n.len() <= 1 << 20);
            }
        }
    }
});
