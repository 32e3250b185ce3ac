//! One line on why the kernel rejected a program, naming the kernel feature that is missing
//! when the verifier's log says.

/// Helpers the programs call, with the kernel that introduced each.
const HELPERS: &[(u32, &str, &str)] = &[
    (12, "bpf_tail_call", "4.2"),
    (67, "bpf_get_stack", "4.18"),
    (112, "bpf_probe_read_user", "5.5"),
    (113, "bpf_probe_read_kernel", "5.5"),
    (130, "bpf_ringbuf_output", "5.8"),
    (158, "bpf_get_current_task_btf", "5.11"),
    (175, "bpf_task_pt_regs", "5.15"),
    (181, "bpf_loop", "5.17"),
];

/// Explains a rejection from the verifier's log and the syscall's error.
pub fn explain_rejection(log: &str, error: &std::io::Error) -> String {
    if error.raw_os_error() == Some(libc::EPERM) && log.trim().is_empty() {
        return "permission denied: loading eBPF programs needs root, or CAP_BPF and CAP_PERFMON \
                (CAP_SYS_ADMIN before 5.8); `ferroscope check` tells which is missing"
            .into();
    }
    for line in log.lines() {
        if let Some(rest) = line
            .strip_prefix("unknown func ")
            .or_else(|| line.strip_prefix("invalid func "))
            && let Some(id) = rest
                .rsplit('#')
                .next()
                .and_then(|n| n.trim().parse::<u32>().ok())
        {
            return match HELPERS.iter().find(|(i, _, _)| *i == id) {
                Some((_, name, since)) => format!(
                    "the kernel lacks the {name} helper (Linux {since} or later): {}",
                    line.trim()
                ),
                None => format!("the kernel lacks BPF helper #{id}: {}", line.trim()),
            };
        }
        if line.contains("number of funcs in func_info doesn't match number of subprogs")
            || line.contains("unrecognized bpf_ld_imm64 insn")
        {
            return format!(
                "the kernel does not accept bpf_loop callbacks (function pointers in BPF code need \
                 Linux 5.13, bpf_loop 5.17; the legacy build is for this kernel): {}",
                line.trim()
            );
        }
        if line.contains("BPF program is too large") || line.contains("too many states") {
            return format!(
                "the verifier's complexity limit was reached (1M processed instructions): {}",
                line.trim()
            );
        }
        if line.contains("tail_calls are not allowed") {
            return format!(
                "this kernel cannot mix tail calls with BPF-to-BPF calls (x86-64 from Linux 5.10): {}",
                line.trim()
            );
        }
        if line.contains("back-edge") || line.contains("infinite loop") {
            return format!(
                "the kernel refuses this loop (bounded loops need Linux 5.3, and the loop must be \
                 provably bounded): {}",
                line.trim()
            );
        }
    }
    // Verified, yet refused: the x86 JIT of kernels before 5.12 gives up (silently) on
    // programs whose jumps keep changing size between its passes; the program would run
    // interpreted, and an interpreted program cannot join the JIT-compiled ones in the
    // tail-call table (EINVAL without a word in the log).
    let lines: Vec<&str> = log.lines().map(str::trim).collect();
    let after = lines
        .iter()
        .rposition(|l| is_instruction(l))
        .map_or(0, |i| i + 1);
    let verified = lines[after..].iter().any(|l| l.starts_with("processed "));
    let said_why = lines[after..].iter().any(|l| {
        !l.is_empty()
            && !l.starts_with("processed ")
            && !l.starts_with("verification time")
            && !l.starts_with("stack depth")
    });
    if verified && !said_why && error.raw_os_error() == Some(libc::EINVAL) {
        return "the verifier accepted it, but the kernel's JIT could not compile it (x86 kernels \
                before 5.12 give up on programs whose jumps do not settle; keep loop steps \
                straight-line), and an interpreted program cannot share the tail-call table with \
                JIT-compiled ones"
            .into();
    }
    // Otherwise the verifier's own words: the lines after the last instruction it printed.
    let said: Vec<&str> = lines[after..]
        .iter()
        .copied()
        .filter(|l| {
            !l.is_empty()
                && !l.starts_with("processed ")
                && !l.starts_with("verification time")
                && !l.starts_with("stack depth")
        })
        .take(2)
        .collect();
    if said.is_empty() {
        format!("the kernel refused it: {error}")
    } else {
        format!("the verifier rejected it: {} ({error})", said.join("; "))
    }
}

/// A line of the verifier's instruction dump (`123: (85) call ...`).
fn is_instruction(line: &str) -> bool {
    let digits = line.bytes().take_while(u8::is_ascii_digit).count();
    digits > 0 && line[digits..].starts_with(':')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn einval() -> std::io::Error {
        std::io::Error::from_raw_os_error(libc::EINVAL)
    }

    #[test]
    fn missing_helpers_are_named_with_their_kernel() {
        let m = explain_rejection("0: R1=ctx\ninvalid func unknown#181\n", &einval());
        assert!(m.contains("bpf_loop") && m.contains("5.17"), "{m}");
        let m = explain_rejection("unknown func bpf_task_pt_regs#175\n", &einval());
        assert!(m.contains("bpf_task_pt_regs") && m.contains("5.15"), "{m}");
    }

    #[test]
    fn the_5_10_callback_rejection_is_explained() {
        let m = explain_rejection(
            "number of funcs in func_info doesn't match number of subprogs\n",
            &einval(),
        );
        assert!(
            m.contains("bpf_loop callbacks") && m.contains("legacy"),
            "{m}"
        );
    }

    #[test]
    fn a_verified_program_refused_after_verification_is_the_jit() {
        let log = "0: R1=ctx(id=0,off=0,imm=0) R10=fp0\n; int f(void *ctx)\n0: (b7) r0 = 0\n\
                   1: (95) exit\nverification time 3755378 usec\nstack depth 104\n\
                   processed 64500 insns (limit 1000000) max_states_per_insn 30\n";
        let m = explain_rejection(log, &einval());
        assert!(m.contains("JIT could not compile it"), "{m}");
    }

    #[test]
    fn otherwise_the_last_verifier_line_is_kept() {
        let log = "0: (b7) r0 = 0\n1: (95) exit\nR0 !read_ok\nprocessed 2 insns (limit 1000000)\n";
        let m = explain_rejection(log, &einval());
        assert!(m.contains("R0 !read_ok"), "{m}");
        let log = "623: (85) call bpf_probe_read_user#112\ninvalid access to map value, \
                   value_size=64 off=0 size=127\nR1 min value is outside of the allowed memory \
                   range\nverification time 11698 usec\nstack depth 144\nprocessed 1467 insns\n";
        let m = explain_rejection(log, &einval());
        assert!(
            m.contains("invalid access to map value") && !m.contains("stack depth"),
            "{m}"
        );
        let m = explain_rejection("", &std::io::Error::from_raw_os_error(libc::EPERM));
        assert!(m.contains("CAP_BPF"), "{m}");
    }
}
