//! A process in a chroot whose binary, and debug file, exist only inside its root.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::{build_id, gcc, run};
use ferroscope_symbolize::Symbolizer;
use ferroscope_test_harness::{self as harness, Guard};

const PROGRAM: &str = r#"
#include <stdio.h>
#include <unistd.h>
__attribute__((noinline)) void chrooted_function_for_ferroscope(void) {
    for (;;) pause();
}
int main(void) {
    printf("%p\n", (void *)chrooted_function_for_ferroscope);
    fflush(stdout);
    chrooted_function_for_ferroscope();
    return 0;
}
"#;

#[test]
fn process_in_a_chroot_is_symbolized_from_inside_its_root() {
    if !harness::root("chroot(2)") {
        return;
    }
    let build = tempfile::tempdir().unwrap();
    let tag = format!(
        "{PROGRAM}\nconst char *tag = \"{}\";\n",
        build.path().display()
    );
    let full = gcc(
        build.path(),
        "chrooted",
        &tag,
        &["-O1", "-g", "-static", "-Wl,--build-id"],
    );
    let root = tempfile::tempdir().unwrap();
    let root = root.path();
    let id = build_id(&full);
    let debug_dir = root.join(format!("usr/lib/debug/.build-id/{}", &id[..2]));
    std::fs::create_dir_all(&debug_dir).unwrap();
    run(Command::new("objcopy")
        .arg("--only-keep-debug")
        .arg(&full)
        .arg(debug_dir.join(format!("{}.debug", &id[2..]))));
    let inside = root.join("chrooted-only-here");
    run(Command::new("strip").arg("-o").arg(&inside).arg(&full));
    assert!(!Path::new("/chrooted-only-here").exists());
    assert!(
        !Path::new(&format!(
            "/usr/lib/debug/.build-id/{}/{}.debug",
            &id[..2],
            &id[2..]
        ))
        .exists()
    );

    let mut child = Guard::spawn(
        Command::new("chroot").arg(root).arg("/chrooted-only-here"),
        Duration::from_secs(120),
    );
    let line = child.wait_for(Duration::from_secs(30), |l| l.starts_with("0x"));
    let addr = u64::from_str_radix(line.trim().trim_start_matches("0x"), 16).expect("address");
    let pid = child.pid();

    let mut s = Symbolizer::new();
    s.observe_process(pid).unwrap();
    let f = s.symbolize_user(pid, addr + 1);
    assert_eq!(
        f.function.as_deref(),
        Some("chrooted_function_for_ferroscope"),
        "{f:?}"
    );
    assert!(
        f.file.as_deref().is_some_and(|p| p.ends_with("chrooted.c")),
        "{f:?}"
    );
    // The kernel prints the path relative to the reader's root: for a chroot in our mount
    // namespace that is the host path of the file; in another mount namespace, its own path.
    assert!(
        f.module
            .as_ref()
            .is_some_and(|m| m.path.ends_with("chrooted-only-here")),
        "{f:?}"
    );
    assert_eq!(s.stats().debug_files_found, 1);

    // After the process exits, the snapshot still names the frame.
    drop(child);
    let f = s.symbolize_user(pid, addr + 2);
    assert_eq!(
        f.function.as_deref(),
        Some("chrooted_function_for_ferroscope")
    );
}
