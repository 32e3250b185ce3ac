//! Loads one object alone (no shared maps) and one of its perf_event programs, printing the
//! kernel's verdict with the verifier's log: for debugging a runtime object on another kernel.
//! `load_one OBJECT.o PROGRAM`.
#![allow(clippy::print_stdout)]

use aya::programs::PerfEvent;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let path = args.next().ok_or("usage: load_one OBJECT.o PROGRAM")?;
    let name = args.next().ok_or("usage: load_one OBJECT.o PROGRAM")?;
    let bytes = std::fs::read(path)?;
    let slot = 1u32;
    let mut ebpf = aya::EbpfLoader::new()
        .override_global("fs_rt_slot", &slot, false)
        .verifier_log_level(aya::VerifierLogLevel::DEBUG | aya::VerifierLogLevel::STATS)
        .load(&bytes)?;
    let p: &mut PerfEvent = ebpf
        .program_mut(&name)
        .ok_or("no such program")?
        .try_into()?;
    match p.load() {
        Ok(()) => println!(
            "{name}: loaded; jited {:?}",
            p.info().map(|i| i.size_jitted())
        ),
        Err(aya::programs::ProgramError::LoadError {
            io_error,
            verifier_log,
        }) => {
            let log = verifier_log.to_string();
            let tail: Vec<&str> = log.lines().rev().take(8).collect();
            println!(
                "{name}: REJECTED: {io_error}\n{}",
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
        Err(e) => println!("{name}: {e}"),
    }
    Ok(())
}
