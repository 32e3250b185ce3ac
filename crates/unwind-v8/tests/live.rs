//! Functions of live Node processes (every supported major) named as their users read them:
//! each script prints its functions' SharedFunctionInfo addresses (`%DebugPrint`) and the
//! test reads them back through the plug-in's readers, from the process's memory.

mod common;
use common::{Elf, MAJORS, node, run_printing, shared_infos};

use ferroscope_test_harness as harness;
use ferroscope_unwind_api::RemoteMemory;
use ferroscope_unwind_v8::{Binary, Namer, detect_file};

/// A script whose functions have every naming case; `// LINE <name>` marks where each starts.
const SCRIPT: &str = r#"'use strict';
class Worker { // LINE Worker
  constructor(n) { this.n = n; } // LINE ctor
  run(k) { return k + this.n; } // LINE run
  static make() { return new Worker(1); } // LINE make
}
class Base { base() { return 1; } } // LINE base
class Derived extends Base { base() { return super.base() + 1; } } // LINE derived
const Expr = class { go() { return 3; } }; // LINE go
function plain(n) { return n + 1; } // LINE plain
const arrowNamed = (q) => q * 2; // LINE arrowNamed
const obj = { meth() { return 1; } }; // LINE meth
obj.assigned = function () { return 2; }; // LINE assigned
let kept;
function keep(f) { kept = f; return f(1); }
keep((x) => x + 1); // LINE anonymous
const w = Worker.make(); w.run(1); new Derived().base(); new Expr().go(); plain(1);
arrowNamed(1); obj.meth(); obj.assigned();
for (const f of [Worker, Worker.prototype.run, Worker.make, Derived.prototype.base,
                 Expr.prototype.go, plain, arrowNamed, obj.meth, obj.assigned, kept]) {
  %DebugPrint(f);
}
console.log('READY');
setInterval(() => {}, 1000);
"#;

/// (expected name, the LINE tag of where it starts), in the order the script prints them.
const EXPECTED: &[(&str, &str)] = &[
    ("new Worker", "ctor"),
    ("Worker.run", "run"),
    ("Worker.make", "make"),
    ("Derived.base", "derived"),
    ("Expr.go", "go"),
    ("plain", "plain"),
    ("arrowNamed", "arrowNamed"),
    ("meth", "meth"),
    ("obj.assigned", "assigned"),
    ("<anonymous>", "anonymous"),
];

fn line_of(tag: &str) -> u32 {
    SCRIPT
        .lines()
        .position(|l| l.ends_with(&format!("// LINE {tag}")))
        .expect("tagged") as u32
        + 1
}

fn names_on(major: u32) {
    if !harness::root("reading another process's memory") {
        return;
    }
    let Some(node) = node(major) else { return };
    let file = detect_file(&Elf::open(&node))
        .expect("detection")
        .expect("node is V8");
    let printed = run_printing(&node, SCRIPT);
    let sfis = shared_infos(&printed.output);
    assert_eq!(sfis.len(), EXPECTED.len(), "{}", printed.output);
    let mem = RemoteMemory::new(printed.guard.pid());
    let mut namer = Namer::new(Binary {
        layout: file.layout.clone(),
        builtins: file.builtins.clone(),
        bytecode_sizes: file.bytecode_sizes.clone(),
        bias: 0,
        remap: None,
    });
    let mut wrong = Vec::new();
    for ((sfi, v8_name), (name, tag)) in sfis.iter().zip(EXPECTED) {
        let f = namer
            .function_info(&mem, *sfi)
            .unwrap_or_else(|e| panic!("Node {major}: {v8_name}: {e}"));
        let got = (
            f.name.to_string(),
            f.start_line(),
            f.file().ends_with("script.js"),
        );
        let want = (name.to_string(), line_of(tag), true);
        if got != want {
            wrong.push(format!("{v8_name}: got {got:?}, want {want:?}"));
        }
    }
    assert!(wrong.is_empty(), "Node {major}:\n{}", wrong.join("\n"));
}

#[test]
fn functions_are_named_on_every_major() {
    for major in MAJORS {
        names_on(major);
    }
}
