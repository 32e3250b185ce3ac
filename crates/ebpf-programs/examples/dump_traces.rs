//! Prints the raw traces the sampler sends for one process, for debugging:
//! `cargo run -p ferroscope-ebpf-programs --example dump_traces -- PID [SECONDS]`.
#![allow(clippy::print_stdout)]

use ferroscope_ebpf_programs::{Sampler, SamplerConfig};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let pid: u32 = args
        .next()
        .ok_or("usage: dump_traces PID [SECONDS]")?
        .parse()?;
    let secs: f64 = args.next().map(|s| s.parse()).transpose()?.unwrap_or(1.0);
    let mut sampler = Sampler::start(&SamplerConfig::frame_pointers(97, Some(vec![pid])))?;
    std::thread::sleep(std::time::Duration::from_secs_f64(secs));
    sampler.drain(|e| {
        let k: Vec<String> = e.kernel_frames().map(|a| format!("{a:#x}")).collect();
        let u: Vec<String> = e.user_frames().map(|f| format!("{:#x}", f.addr)).collect();
        println!(
            "{} {} {} kernel=[{}] user=[{}]",
            e.header.pid,
            e.header.tid,
            e.comm(),
            k.join(" "),
            u.join(" ")
        );
    });
    println!("{:?}", sampler.counters()?);
    Ok(())
}
