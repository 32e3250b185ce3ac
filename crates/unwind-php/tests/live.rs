//! The reference walker and the naming on live PHP processes of every build on this machine
//! (npm's @libphp 7.4, 8.2, 8.3, 8.4, 8.5 and Debian's 8.2): a known stack, its functions
//! named as PHP users read them, its files and lines as the script says, and the calls of the
//! VM loop where C code called back into PHP. This checks every offset of the layouts that
//! these versions use against real interpreters.

mod common;

use ferroscope_unwind_api::RemoteMemory;
use ferroscope_unwind_php::ebpf::{FLAG_CODE, FLAG_TOP, fingerprint};
use ferroscope_unwind_php::{FunctionKind, current_frame, detect_file, read_function, walk};

#[test]
fn a_known_stack_is_walked_and_named_on_every_php() {
    let script = common::script("stacks.php");
    let m = common::markers(&script);
    let path = script.to_string_lossy().into_owned();
    let phps = common::phps();
    for rt in &phps {
        let bytes = std::fs::read(&rt.exe).unwrap();
        let elf = common::Elf::new(&rt.exe, &bytes);
        let php = detect_file(&elf)
            .unwrap()
            .unwrap_or_else(|| panic!("{} is PHP", rt.name));
        let l = php.layout;
        let mut guard = common::start(rt, &[], &script);
        let pid = guard.pid();
        let bias = common::load_bias(pid, &rt.exe, &elf.file);
        let mem = RemoteMemory::new(pid);
        // The process prints `ready` just before it parks in usleep(): retry until it is there.
        let mut frames = Vec::new();
        for _ in 0..50 {
            let ex = current_frame(&mem, l, php.executor_globals + bias).unwrap();
            frames = walk(&mem, l, ex, 64).unwrap();
            let first = frames
                .first()
                .and_then(|f| read_function(&mem, l, f.function).ok());
            if first.is_some_and(|f| f.name.as_deref() == Some("usleep")) {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let named: Vec<(String, FunctionKind, String, u32, bool)> = frames
            .iter()
            .map(|f| {
                let info = read_function(&mem, l, f.function)
                    .unwrap_or_else(|e| panic!("{}: {e}", rt.name));
                assert_eq!(
                    info.fingerprint, f.payload.fingerprint,
                    "{}: the walker's fingerprint is the function's",
                    rt.name
                );
                (
                    info.display_name(f.payload.flags),
                    info.kind,
                    info.file_name().to_owned(),
                    f.payload.line,
                    f.last_of_loop,
                )
            })
            .collect();
        let user = FunctionKind::User;
        let internal = FunctionKind::Internal;
        let want = vec![
            ("usleep".to_owned(), internal, String::new(), 0, false),
            (
                "App\\Cart::{closure}".into(),
                user,
                path.clone(),
                m["park"],
                false,
            ),
            (
                "App\\Cart::checkout".into(),
                user,
                path.clone(),
                m["checkout"],
                false,
            ),
            // Called back by array_map (C): the last frame of its call of the VM loop.
            ("{closure}".into(), user, path.clone(), m["map"], true),
            ("array_map".into(), internal, String::new(), 0, false),
            ("App\\probe_fn".into(), user, path.clone(), m["map"], false),
            ("<main>".into(), user, path.clone(), m["main"], true),
        ];
        assert_eq!(named, want, "{}", rt.name);
        let main = frames.last().unwrap();
        assert_eq!(main.payload.flags, FLAG_TOP | FLAG_CODE, "{}", rt.name);
        // The closure's first line, and the instruction pointer inside the function's
        // instructions (which checks the fields `opcodes` and `last`).
        let park = read_function(&mem, l, frames[1].function).unwrap();
        assert_eq!(park.line_start, m["park_start"], "{}", rt.name);
        for f in frames.iter().filter(|f| f.payload.fingerprint != 0) {
            let mut b = [0u8; 8];
            use ferroscope_unwind_api::ProcessMemory;
            mem.read_exact_at(f.execute_data + u64::from(l.ex_opline), &mut b)
                .unwrap();
            let opline = u64::from_le_bytes(b);
            mem.read_exact_at(f.function + u64::from(l.op_opcodes), &mut b)
                .unwrap();
            let opcodes = u64::from_le_bytes(b);
            assert_eq!(fingerprint(opcodes), f.payload.fingerprint);
            let mut w = [0u8; 4];
            mem.read_exact_at(f.function + u64::from(l.op_last), &mut w)
                .unwrap();
            let last = u64::from(u32::from_le_bytes(w));
            let at = opline.wrapping_sub(opcodes);
            let size = u64::from(l.zend_op_size);
            assert!(
                at % size == 0 && at < last * size && last < 1000,
                "{}: the frame's opline {opline:#x} is not among its function's {last} \
                 instructions at {opcodes:#x}",
                rt.name
            );
            // The last instruction of a function is a ZEND_RETURN (62): `last` is its length.
            let mut op = [0u8; 32];
            mem.read_exact_at(opcodes + (last - 1) * size, &mut op)
                .unwrap();
            assert_eq!(op[28], 62, "{}: ZEND_RETURN ends the function", rt.name);
        }
        guard.terminate(std::time::Duration::from_secs(5));
    }
}
