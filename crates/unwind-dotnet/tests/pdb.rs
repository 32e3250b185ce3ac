//! The portable PDB reader on a real PDB: pythonnet 3.0.3's `Python.Runtime.pdb` (written by
//! Roslyn, installed from PyPI by the harness), with the method rows of its assembly
//! `Python.Runtime.dll` read by our metadata reader, as the plug-in pairs them at run time.

use ferroscope_test_harness::runtimes;
use ferroscope_unwind_dotnet::NameStyle;
use ferroscope_unwind_dotnet::metadata::Metadata;
use ferroscope_unwind_dotnet::names::ModuleNames;
use ferroscope_unwind_dotnet::pdb::Pdb;
use ferroscope_unwind_dotnet::pe::{parse_cli, parse_headers};

/// The MethodDef table.
const METHOD_DEF: usize = 0x06;

/// The assembly's method names by MethodDef row, from its file.
fn method_names(dll: &[u8]) -> Vec<(u32, String)> {
    let h = parse_headers(dll).expect("PE headers");
    let cli_at = h.file_offset(h.cli.rva).expect("CLI header in the file") as usize;
    let cli = parse_cli(&dll[cli_at..]).expect("CLI header");
    let md_at = h
        .file_offset(cli.metadata.rva)
        .expect("metadata in the file") as usize;
    let md = Metadata::parse(
        dll[md_at..md_at + cli.metadata.size as usize].to_vec(),
        &[0; 64],
    )
    .expect("the assembly's metadata");
    let rows = md.rows(METHOD_DEF);
    let names = ModuleNames::new(md);
    (1..=rows)
        .filter_map(|rid| Some((rid, names.qualified(rid, NameStyle::Plain, &[], &[])?)))
        .collect()
}

#[test]
fn a_roslyn_portable_pdb_gives_the_source_lines_of_its_assemblys_methods() {
    let Some(dll_path) = runtimes::pythonnet_runtime() else {
        return;
    };
    let dll = std::fs::read(&dll_path).unwrap();
    let pdb = Pdb::parse(std::fs::read(dll_path.with_extension("pdb")).unwrap())
        .expect("Python.Runtime.pdb parses");
    let methods = method_names(&dll);
    assert!(methods.len() > 1000, "{} methods", methods.len());
    // One MethodDebugInformation row per MethodDef row.
    assert_eq!(pdb.methods() as usize, methods.len());

    // Most methods with IL have sequence points; every one is in a C# file of the project.
    let mut with_lines = 0;
    for (rid, name) in &methods {
        if let Some(l) = pdb.line(*rid, 0) {
            with_lines += 1;
            assert!(l.file.ends_with(".cs"), "{name}: {}", l.file);
            assert!(l.line >= 1 && l.line < 100_000, "{name}: line {}", l.line);
            assert!(l.start_line >= 1 && l.start_line <= l.line, "{name}: {l:?}");
        }
    }
    assert!(
        with_lines * 2 > methods.len(),
        "{with_lines} of {}",
        methods.len()
    );

    // Methods land in the files their types are written in, and later IL offsets on the
    // same or later lines of a method that runs straight through its first statements.
    let (rid, _) = methods
        .iter()
        .find(|(_, n)| n == "Python.Runtime.PythonEngine.Initialize")
        .expect("PythonEngine.Initialize");
    let first = pdb.line(*rid, 0).expect("Initialize has lines");
    assert!(
        first.file.replace('\\', "/").ends_with("/PythonEngine.cs"),
        "{first:?}"
    );
    let later = pdb.line(*rid, 0x40).expect("a later IL offset");
    assert_eq!(later.file, first.file);
    assert!(later.line >= first.line, "{first:?} then {later:?}");
}
