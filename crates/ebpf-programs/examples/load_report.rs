//! Loads the programs (with the unwinder) and prints each one's verdict, verified instruction
//! count and, when rejected, the end of the verifier's log; optionally with runtime objects
//! from files, to see what a kernel makes of them:
//! `cargo run -p ferroscope-ebpf-programs --example load_report [loop|legacy] [NAME PROGRAM OBJECT.o]...`.
#![allow(clippy::print_stdout)]

use ferroscope_ebpf_programs::{
    Build, Error, RuntimeObject, SamplerConfig, UnwinderConfig, Verdict, probe,
};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let build = match args.first().map(String::as_str) {
        Some("legacy") => Some(Build::Legacy),
        Some("loop") => Some(Build::Loop),
        _ => None,
    };
    let mut runtimes = Vec::new();
    for chunk in args.get(1..).unwrap_or(&[]).chunks(3) {
        let [name, program, path] = chunk else {
            return Err("runtime arguments come in threes: NAME PROGRAM OBJECT.o".into());
        };
        let bytes: &'static [u8] = Box::leak(std::fs::read(path)?.into_boxed_slice());
        runtimes.push(RuntimeObject {
            name: Box::leak(name.clone().into_boxed_str()),
            program: Box::leak(program.clone().into_boxed_str()),
            // One object stands for every build and entry: only the CPU entry is loaded.
            objects: {
                let b = ferroscope_ebpf_abi::Builds {
                    modern: bytes,
                    legacy: bytes,
                };
                ferroscope_ebpf_abi::ObjectSet {
                    cpu: b,
                    switch: b,
                    probe: b,
                }
            },
            pid_maps: &[],
        });
    }
    let config = SamplerConfig {
        unwinder: Some(UnwinderConfig::default()),
        build,
        runtimes,
        ..SamplerConfig::frame_pointers(19, Some(vec![]))
    };
    match probe(&config) {
        Ok(reports) => {
            for p in reports {
                match &p.verdict {
                    Verdict::Loaded {
                        verified_instructions,
                    } => println!(
                        "{} {:?}: loaded, {verified_instructions:?} verified instructions",
                        p.program, p.build
                    ),
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
        }) => println!("{program}: REJECTED: {reason}\n{log_tail}"),
        Err(e) => return Err(e.into()),
    }
    Ok(())
}
