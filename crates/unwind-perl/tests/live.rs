//! The reference walker and the naming on live Perl processes (5.36 on the host, 5.40 and
//! 5.42 in the Debian chroots): `fixtures/perl/states.pl` stops in a known state (nested
//! calls, a sort block, a signal handler, a string eval, a require, a MULTICALL block, an
//! anonymous sub) and sleeps; the test reads the main interpreter (`PL_curinterp`) through
//! process_vm_readv, walks it and names every frame.

mod common;

use common::{Elf, TestPerl, bias, line_of, perls};
use ferroscope_unwind_api::{ProcessMemory, RemoteMemory};
use ferroscope_unwind_perl::names::Reader;
use ferroscope_unwind_perl::{PerlFile, Start, Walk, detect_file, name_frame, walk};

/// A walk of a process stopped in one state of states.pl, with its frames named.
struct Named {
    walk: Walk,
    /// Per segment, per frame: (function, file, line).
    segments: Vec<Vec<(String, String, u32)>>,
    /// The innermost runlevel, its `si_next` / `si_prev` (the question the reference left
    /// open: which link leads outwards), the `si_type` of `si_prev`, and the `si_prev` of
    /// `si_next` (0 when there is no `si_next`).
    first_si: u64,
    si_next: u64,
    si_prev: u64,
    prev_type: i32,
    next_prev: u64,
}

impl Named {
    fn functions(&self) -> Vec<Vec<&str>> {
        self.segments
            .iter()
            .map(|s| s.iter().map(|f| f.0.as_str()).collect())
            .collect()
    }

    fn lines(&self) -> Vec<u32> {
        self.segments.iter().flatten().map(|f| f.2).collect()
    }
}

fn walk_state(perl: &TestPerl, mode: &str) -> Named {
    let guard = perl.start("states.pl", &[mode]);
    // `ready` is printed just before the sleep: let it get there.
    std::thread::sleep(std::time::Duration::from_millis(300));
    let pid = guard.pid();
    let bytes = std::fs::read(perl.exe()).unwrap();
    let elf = Elf::new(perl.exe(), &bytes);
    let file: PerlFile = detect_file(&elf)
        .expect("a supported Perl")
        .expect("detected");
    assert_eq!(file.version.version, perl.minor, "{}", perl.runtime.name);
    assert!(file.threaded, "Debian's Perls are threaded");
    let bias = bias(pid, &perl.exe().to_string_lossy());
    let mem = RemoteMemory::new(pid);
    let curinterp = file.curinterp.expect("PL_curinterp") + bias;
    let interp = mem.read_u64(curinterp).unwrap();
    let start = Start::of_interpreter(&mem, file.layout, interp).unwrap();
    let w = walk(&mem, file.layout, start).unwrap();
    let l = file.layout;
    let si_next = mem
        .read_u64(start.stackinfo + u64::from(l.si_next))
        .unwrap();
    let si_prev = mem
        .read_u64(start.stackinfo + u64::from(l.si_prev))
        .unwrap();
    let prev_type = if si_prev == 0 {
        0
    } else {
        let mut b = [0u8; 4];
        mem.read_exact_at(si_prev + u64::from(l.si_type), &mut b)
            .unwrap();
        i32::from_le_bytes(b)
    };
    let next_prev = if si_next == 0 {
        0
    } else {
        mem.read_u64(si_next + u64::from(l.si_prev)).unwrap()
    };
    let reader = Reader::new(&mem, file.layout, file.threaded);
    let segments = w
        .segments
        .iter()
        .map(|s| {
            s.iter()
                .map(|f| {
                    let named = name_frame(&reader, f.kind, f.cop, f.ptr)
                        .unwrap_or_else(|e| panic!("{}: {f:?}: {e}", perl.runtime.name));
                    (
                        named.function.to_string(),
                        named.file.to_string(),
                        named.line,
                    )
                })
                .collect()
        })
        .collect();
    guard.signal(9);
    Named {
        walk: w,
        segments,
        first_si: start.stackinfo,
        si_next,
        si_prev,
        prev_type,
        next_prev,
    }
}

fn each_perl(mut check: impl FnMut(&TestPerl)) {
    let perls = perls();
    assert!(
        !perls.is_empty() || !ferroscope_test_harness::required(),
        "no Perl to test"
    );
    for perl in &perls {
        check(perl);
    }
}

#[test]
fn nested_subs_are_one_segment_with_their_call_lines() {
    each_perl(|perl| {
        let n = walk_state(perl, "plain");
        assert_eq!(
            n.functions(),
            vec![vec![
                "main::ready_and_sleep",
                "main::inner",
                "main::middle",
                "main::outer",
                "main"
            ]],
            "{}",
            perl.runtime.name
        );
        let s = "states.pl";
        assert_eq!(
            n.lines(),
            vec![
                line_of(s, "sub ready_and_sleep"),
                line_of(s, "sub inner "),
                line_of(s, "sub middle "),
                line_of(s, "sub outer "),
                line_of(s, "$run->();"),
            ],
            "{}",
            perl.runtime.name
        );
        assert!(n.segments[0][0].1.ends_with("states.pl"));
        assert!(!n.walk.idle && !n.walk.truncated && n.walk.runlevels == 0);
    });
}

/// The sort block runs in a runlevel of its own: its frames are one segment (its runops
/// call), and the walk goes on outwards through `si_prev`, to the main runlevel. `si_next`
/// leads inwards: a deeper runlevel kept for reuse (this one is its `si_prev`), or NULL. This
/// settles the question the reference left open (it follows `si_next`).
#[test]
fn a_sort_block_is_a_nested_runlevel_reached_through_si_prev() {
    each_perl(|perl| {
        let n = walk_state(perl, "sort");
        assert_eq!(
            n.functions(),
            vec![
                vec!["main::ready_and_sleep", "main::in_sort"],
                vec!["main::sorter", "main"]
            ],
            "{}",
            perl.runtime.name
        );
        assert_eq!(n.walk.runlevels, 1);
        assert_ne!(
            n.si_prev, 0,
            "a nested runlevel links to the one it interrupted"
        );
        assert_eq!(n.prev_type, 1, "si_prev is the main runlevel (PERLSI_MAIN)");
        assert!(
            n.si_next == 0 || n.next_prev == n.first_si,
            "{}: si_next ({:#x}) is deeper: its si_prev is {:#x}, this runlevel is {:#x}",
            perl.runtime.name,
            n.si_next,
            n.next_prev,
            n.first_si
        );
        // sorter's line is the sort block's, where it called in_sort.
        assert_eq!(
            n.segments[1][0].2,
            line_of("states.pl", "sort { in_sort($a, $b) }")
        );
    });
}

#[test]
fn a_signal_handler_is_a_nested_runlevel_entered_from_c() {
    each_perl(|perl| {
        let n = walk_state(perl, "signal");
        assert_eq!(
            n.functions(),
            vec![
                vec!["main::ready_and_sleep", "main::on_signal"],
                vec!["main::signaller", "main"]
            ],
            "{}",
            perl.runtime.name
        );
        assert_eq!(n.walk.runlevels, 1);
        let kill = line_of("states.pl", "kill 'USR1', $$;");
        // Perl runs the handler when the op after `kill` checks for signals.
        let at = n.segments[1][0].2;
        assert!(at == kill || at == kill + 1, "signaller at line {at}");
    });
}

#[test]
fn a_string_eval_is_named_after_its_number_and_runs_in_the_same_runops_call() {
    each_perl(|perl| {
        let n = walk_state(perl, "eval");
        let f = n.functions();
        assert_eq!(f.len(), 1, "{f:?}");
        assert_eq!(
            f[0][..2],
            ["main::ready_and_sleep", "main::in_eval"],
            "{f:?}"
        );
        assert!(
            f[0][2].starts_with("(eval ") && f[0][2].ends_with(')'),
            "{f:?}"
        );
        assert_eq!(f[0][3..], ["main::run_eval", "main"]);
        // in_eval was called from line 1 of the eval's source, in the file named after it.
        let (name, file, line) = &n.segments[0][2];
        assert_eq!((file.as_str(), *line), (name.as_str(), 1));
    });
}

#[test]
fn a_require_is_named_after_the_module_it_loads() {
    each_perl(|perl| {
        let n = walk_state(perl, "require");
        assert_eq!(
            n.functions(),
            vec![vec![
                "main::ready_and_sleep",
                "require Sleepy.pm",
                "main::loader",
                "main"
            ]],
            "{}",
            perl.runtime.name
        );
        let (_, file, line) = &n.segments[0][1];
        assert!(file.ends_with("Sleepy.pm"), "{file}");
        assert_eq!(*line, line_of("Sleepy.pm", "main::ready_and_sleep();"));
    });
}

/// List::Util's `first` (XS) runs its block with MULTICALL: a runlevel of its own, whose
/// runops call the block's segment gets; the XS frames go between.
#[test]
fn a_multicall_block_is_an_anonymous_sub_entered_from_c() {
    each_perl(|perl| {
        let n = walk_state(perl, "first");
        let block = format!(
            "main::__ANON__[{}:{}]",
            perl.fixture("states.pl").display(),
            line_of("states.pl", "return first { ready_and_sleep() }")
        );
        assert_eq!(
            n.functions(),
            vec![
                vec!["main::ready_and_sleep", block.as_str()],
                vec!["main::finder", "main"]
            ],
            "{}",
            perl.runtime.name
        );
    });
}

#[test]
fn anonymous_subs_are_named_by_package_file_and_first_line() {
    each_perl(|perl| {
        let n = walk_state(perl, "anon");
        let anon = format!(
            "Deep::Pkg::__ANON__[{}:{}]",
            perl.fixture("states.pl").display(),
            line_of("states.pl", "main::ready_and_sleep();")
        );
        assert_eq!(
            n.functions(),
            vec![vec![
                "main::ready_and_sleep",
                anon.as_str(),
                "Deep::Pkg::caller_of",
                "main"
            ]],
            "{}",
            perl.runtime.name
        );
    });
}
