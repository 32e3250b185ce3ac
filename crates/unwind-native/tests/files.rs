//! Extraction from open files (`extract_file`): the same table as from the bytes, and a file
//! truncated while it is read is an error, not a crash.

use std::fs::File;
use std::io::Write;

use ferroscope_unwind_native::{ExtractOptions, extract, extract_file};

fn libc() -> std::path::PathBuf {
    ferroscope_test_harness::files::libc()
}

#[test]
fn a_file_gives_the_same_table_as_its_bytes() {
    let path = libc();
    let bytes = std::fs::read(&path).unwrap();
    let from_bytes = extract(&bytes, None, &ExtractOptions::default()).unwrap();
    let from_file = extract_file(
        &File::open(&path).unwrap(),
        None,
        &ExtractOptions::default(),
    )
    .unwrap();
    assert!(from_bytes.len() > 1000, "libc has thousands of deltas");
    assert_eq!(from_bytes.deltas, from_file.deltas);
}

#[test]
fn a_file_truncated_while_read_is_an_error() {
    let bytes = std::fs::read(libc()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("libc.so.6");
    File::create(&path).unwrap().write_all(&bytes).unwrap();
    // Opened whole, then cut to its first 64 KiB by "another process" before it is read:
    // the sections the table needs are past the end. With a mapping, touching them would
    // raise SIGBUS and kill the test.
    let file = File::open(&path).unwrap();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(64 * 1024)
        .unwrap();
    let err = extract_file(&file, None, &ExtractOptions::default())
        .expect_err("the truncated file has no readable CFI");
    assert!(
        err.to_string().contains("ELF"),
        "the error names what failed: {err}"
    );
}
