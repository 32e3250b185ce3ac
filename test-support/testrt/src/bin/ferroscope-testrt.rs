//! ferroscope with CPython and the test JIT runtime linked (for the seam's tests).

use ferroscope_unwind_python as _;

ferroscope_unwind_api::inventory::submit! {
    ferroscope_unwind_api::InterpreterPlugin {
        name: "testjit",
        create: || Box::new(ferroscope_testrt::TestJit::working()),
    }
}

fn main() -> std::process::ExitCode {
    ferroscope::main()
}
