//! The thread-local storage hook on a real program: a thread-local variable of a C
//! executable, located from its file alone (`TlsTemplate::executable_variable` and the
//! symbol's value), is read in the live process at the thread pointer plus that offset, as
//! a runtime's eBPF program reads it at `fs_thread_pointer() + offset`.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use ferroscope_unwind_api::{ProcessMemory, RemoteMemory, TlsTemplate};
use object::read::elf::{FileHeader, ProgramHeader};
use object::{Endianness, Object, ObjectSymbol, elf};

const PROGRAM: &str = r#"
#include <pthread.h>
#include <stdio.h>
#include <unistd.h>
__thread long padding[3] = {1, 2, 3};
__thread long marker = 0x5eed5eed1234abcdL;
int main(void) {
    /* glibc's pthread_self() is the thread pointer (the FS base) on x86-64. */
    printf("%lx %lx\n", (unsigned long)pthread_self(), (unsigned long)&marker);
    fflush(stdout);
    pause();
    return (int)padding[0];
}
"#;

#[test]
fn an_executables_thread_local_variable_is_found_from_its_file() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("tls.c");
    let exe = dir.path().join("tls");
    std::fs::write(&src, PROGRAM).unwrap();
    let built = Command::new("gcc")
        .args(["-O0", "-pthread", "-o"])
        .arg(&exe)
        .arg(&src)
        .status()
        .expect("gcc (install it with apt-get install gcc)");
    assert!(built.success(), "gcc failed");

    // From the file: the PT_TLS segment and the variable's symbol value.
    let bytes = std::fs::read(&exe).unwrap();
    let header = elf::FileHeader64::<Endianness>::parse(&*bytes).unwrap();
    let endian = header.endian().unwrap();
    let tls = header
        .program_headers(endian, &*bytes)
        .unwrap()
        .iter()
        .find(|p| p.p_type(endian) == elf::PT_TLS)
        .expect("a PT_TLS segment");
    let template = TlsTemplate {
        vaddr: tls.p_vaddr(endian),
        memsz: tls.p_memsz(endian),
        align: tls.p_align(endian),
    };
    let file = object::File::parse(&*bytes).unwrap();
    let symbol = file
        .symbols()
        .find(|s| s.name() == Ok("marker"))
        .expect("the marker symbol");
    let offset = template.executable_variable(symbol.address());

    let mut child = Command::new(&exe).stdout(Stdio::piped()).spawn().unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let mut words = line
        .split_whitespace()
        .map(|w| u64::from_str_radix(w, 16).unwrap());
    let (tp, address) = (words.next().unwrap(), words.next().unwrap());
    let value = RemoteMemory::new(child.id()).read_u64(tp.wrapping_add(offset as u64));
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(
        tp.wrapping_add(offset as u64),
        address,
        "the offset from the thread pointer (template {template:?}, symbol {:#x})",
        symbol.address()
    );
    assert_eq!(value.unwrap(), 0x5eed5eed1234abcd);
}
