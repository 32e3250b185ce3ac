//! The `ferroscope` binary: the command line of the library, with the runtime plug-ins its
//! cargo features select linked in (each registers itself when its crate is linked).

#[cfg(feature = "dotnet")]
use ferroscope_unwind_dotnet as _;
#[cfg(feature = "hotspot")]
use ferroscope_unwind_hotspot as _;
#[cfg(feature = "perl")]
use ferroscope_unwind_perl as _;
#[cfg(feature = "php")]
use ferroscope_unwind_php as _;
#[cfg(feature = "python")]
use ferroscope_unwind_python as _;
#[cfg(feature = "ruby")]
use ferroscope_unwind_ruby as _;
#[cfg(feature = "v8")]
use ferroscope_unwind_v8 as _;

fn main() -> std::process::ExitCode {
    ferroscope::main()
}
