//! Loads the programs (with the unwinder) and prints each one's verdict, verified instruction
//! count and, when rejected, the end of the verifier's log:
//! `cargo run -p ferroscope-ebpf-programs --example load_report [loop|legacy]`.
#![allow(clippy::print_stdout)]

use ferroscope_ebpf_programs::{Build, Error, Sampler, SamplerConfig, UnwinderConfig, Verdict};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let build = match std::env::args().nth(1).as_deref() {
        Some("legacy") => Some(Build::Legacy),
        Some("loop") => Some(Build::Loop),
        _ => None,
    };
    let sampler = Sampler::start(&SamplerConfig {
        unwinder: Some(UnwinderConfig::default()),
        build,
        ..SamplerConfig::frame_pointers(19, Some(vec![]))
    });
    match sampler {
        Ok(s) => {
            for p in s.programs() {
                match &p.verdict {
                    Verdict::Loaded {
                        verified_instructions,
                    } => {
                        println!(
                            "{} {:?}: loaded, {verified_instructions:?} verified instructions",
                            p.program, p.build
                        )
                    }
                    Verdict::Rejected { reason, log_tail } => {
                        println!(
                            "{} {:?}: REJECTED: {reason}\n{log_tail}",
                            p.program, p.build
                        )
                    }
                }
            }
        }
        Err(Error::ProgramRejected {
            program,
            reason,
            log_tail,
        }) => {
            println!("{program}: REJECTED: {reason}\n{log_tail}");
        }
        Err(e) => return Err(e.into()),
    }
    Ok(())
}
