//! `ferroscope symbolize`: names addresses of a live process or an ELF file the way the
//! profiler does, printed like `addr2line -f -i -C` (or as JSON), to debug symbolization.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use ferroscope_symbolize::{DemangleMode, Symbolizer, UserFrame};

/// Name addresses: function, file:line and inline chain, like `addr2line -f -i -C`.
#[derive(clap::Args, Debug)]
#[command(group(clap::ArgGroup::new("target").required(true).args(["pid", "elf"])))]
pub struct SymbolizeArgs {
    /// Addresses in this running process (runtime addresses, as in its stack traces).
    #[arg(long, value_name = "PID")]
    pub pid: Option<u32>,
    /// Addresses in this ELF file (its virtual addresses, as `addr2line -e FILE` takes them).
    #[arg(long, value_name = "FILE")]
    pub elf: Option<PathBuf>,
    /// Addresses in hex (`0x` optional).
    #[arg(required = true, value_name = "ADDR", value_parser = parse_hex)]
    pub addrs: Vec<u64>,
    /// How to demangle C++ and Rust names: none, simplified, templates, full.
    #[arg(long, default_value = "full")]
    pub demangle: DemangleMode,
    /// Do not show inlined functions as frames of their own.
    #[arg(long)]
    pub no_inline: bool,
    /// Do not read DWARF (no file:line, no inline frames).
    #[arg(long)]
    pub no_dwarf: bool,
    /// Keep parsed symbol tables in this directory (e.g. /tmp/symb-cache).
    #[arg(long, value_name = "DIR")]
    pub symb_cache_path: Option<PathBuf>,
    /// Print one JSON object per address instead of addr2line's format.
    #[arg(long)]
    pub json: bool,
    /// Also print each address before its frames (like `addr2line -a`).
    #[arg(short = 'a', long)]
    pub addresses: bool,
}

fn parse_hex(s: &str) -> Result<u64, String> {
    let t = s.trim_start_matches("0x").trim_start_matches("0X");
    u64::from_str_radix(t, 16).map_err(|e| format!("{s:?} is not a hex address: {e}"))
}

/// Runs the command; exits with failure when some address could not be named.
pub fn run(args: SymbolizeArgs) -> anyhow::Result<ExitCode> {
    let mut symbolizer = Symbolizer::builder()
        .demangle(args.demangle)
        .inline_frames(!args.no_inline)
        .dwarf(!args.no_dwarf)
        .cache_dir(args.symb_cache_path.clone())
        .build();
    let mut frames = Vec::with_capacity(args.addrs.len());
    match (args.pid, &args.elf) {
        (Some(pid), None) => {
            symbolizer.observe_process(pid).with_context(|| {
                format!("cannot read the mappings of process {pid}; is it running?")
            })?;
            for &a in &args.addrs {
                frames.push(symbolizer.symbolize_user(pid, a));
            }
        }
        (None, Some(path)) => {
            frames = symbolizer
                .symbolize_elf_batch(path, &args.addrs)
                .with_context(|| format!("cannot symbolize addresses in {}", path.display()))?;
        }
        _ => bail!("give exactly one of --pid PID or --elf FILE"),
    }
    let mut out = std::io::stdout().lock();
    for f in &frames {
        if args.json {
            writeln!(out, "{}", to_json(f))?;
        } else {
            write_addr2line(&mut out, f, args.addresses)?;
        }
    }
    out.flush()?;
    let all_named = frames.iter().all(|f| f.function.is_some());
    Ok(if all_named {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// `addr2line -f -i` format: per frame, innermost first, the function then `file:line`
/// (`??` and `??:0` when unknown).
fn write_addr2line(out: &mut impl Write, f: &UserFrame, address: bool) -> std::io::Result<()> {
    if address {
        writeln!(out, "{:#018x}", f.addr)?;
    }
    for s in f.source_frames() {
        let name = if f.function.is_none() && s.file.is_none() {
            // Unresolved: module+offset rather than addr2line's bare "??".
            f.display_name()
        } else {
            s.function.unwrap_or_else(|| "??".to_owned())
        };
        writeln!(out, "{name}")?;
        match (s.file, s.line) {
            (Some(file), Some(line)) => writeln!(out, "{file}:{line}")?,
            (Some(file), None) => writeln!(out, "{file}:?")?,
            _ => writeln!(out, "??:0")?,
        }
    }
    Ok(())
}

fn to_json(f: &UserFrame) -> String {
    let mut s = format!("{{\"addr\":\"{:#x}\"", f.addr);
    if let Some(a) = f.elf_addr {
        s.push_str(&format!(",\"elf_addr\":\"{a:#x}\""));
    }
    if let Some(m) = &f.module {
        s.push_str(&format!(
            ",\"module\":{}",
            json_str(&m.path.to_string_lossy())
        ));
        if let Some(id) = &m.build_id {
            s.push_str(&format!(",\"build_id\":{}", json_str(id)));
        }
    }
    s.push_str(&format!(",\"resolved\":{}", f.function.is_some()));
    s.push_str(",\"frames\":[");
    for (i, fr) in f.source_frames().into_iter().enumerate() {
        if i > 0 {
            s.push(',');
        }
        s.push_str(&format!(
            "{{\"function\":{},\"file\":{},\"line\":{},\"inlined\":{}}}",
            fr.function.as_deref().map_or("null".to_owned(), json_str),
            fr.file.as_deref().map_or("null".to_owned(), json_str),
            fr.line.map_or("null".to_owned(), |l| l.to_string()),
            i < f.inlined.len()
        ));
    }
    s.push_str("]}");
    s
}

fn json_str(v: &str) -> String {
    let mut s = String::with_capacity(v.len() + 2);
    s.push('"');
    for c in v.chars() {
        match c {
            '"' => s.push_str("\\\""),
            '\\' => s.push_str("\\\\"),
            '\n' => s.push_str("\\n"),
            '\r' => s.push_str("\\r"),
            '\t' => s.push_str("\\t"),
            c if (c as u32) < 0x20 => s.push_str(&format!("\\u{:04x}", c as u32)),
            c => s.push(c),
        }
    }
    s.push('"');
    s
}
