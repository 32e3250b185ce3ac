//! The `ferroscope` binary: the command line of the library, with the runtime plug-ins its
//! cargo features select linked in (each registers itself when its crate is linked).

#[cfg(feature = "python")]
use ferroscope_unwind_python as _;
#[cfg(feature = "ruby")]
use ferroscope_unwind_ruby as _;

fn main() -> std::process::ExitCode {
    ferroscope::main()
}
