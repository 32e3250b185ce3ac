//! ferroscope with CPython and a runtime whose program every kernel rejects (for the test
//! that a rejected runtime turns off alone).

use ferroscope_unwind_python as _;

ferroscope_unwind_api::inventory::submit! {
    ferroscope_unwind_api::InterpreterPlugin {
        name: "rejected",
        create: || Box::new(ferroscope_testrt::TestJit::rejected()),
    }
}

fn main() -> std::process::ExitCode {
    ferroscope::main()
}
