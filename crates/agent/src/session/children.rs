//! The processes that given ones started: `record --children` profiles them from the start
//! (later ones join the PID filter in the kernel, at fork).

use std::collections::{HashMap, HashSet};

/// The parent PID in the text of `/proc/PID/stat`: the field after the state, which follows
/// the command name in parentheses (a name may itself hold `)` and spaces: the last `)` ends
/// it).
pub fn parent_in_stat(stat: &str) -> Option<u32> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_ascii_whitespace();
    let _state = fields.next()?;
    fields.next()?.parse().ok()
}

/// Every live descendant of `roots` (children, their children, ...), found through the
/// parent PIDs in `/proc/*/stat`; the roots themselves are not included. A process whose
/// parent exited was reparented (to init or a subreaper) and is no longer a descendant.
pub fn descendants(roots: &[u32]) -> Vec<u32> {
    let mut children: HashMap<u32, Vec<u32>> = HashMap::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    for entry in dir.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        if let Some(parent) = parent_in_stat(&stat) {
            children.entry(parent).or_default().push(pid);
        }
    }
    let mut found = Vec::new();
    let mut seen: HashSet<u32> = roots.iter().copied().collect();
    let mut queue: Vec<u32> = roots.to_vec();
    while let Some(pid) = queue.pop() {
        for &child in children.get(&pid).into_iter().flatten() {
            if seen.insert(child) {
                found.push(child);
                queue.push(child);
            }
        }
    }
    found.sort_unstable();
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_parent_follows_a_name_with_parentheses_and_spaces() {
        let stat = "4242 (a) b (c)) S 17 4242 4242 0 -1 4194560 123 0 0 0";
        assert_eq!(parent_in_stat(stat), Some(17));
        assert_eq!(parent_in_stat("1 (init) S 0 1 1"), Some(0));
        assert_eq!(parent_in_stat("garbage"), None);
        assert_eq!(parent_in_stat("1 (x) S"), None);
        assert_eq!(parent_in_stat("1 (x) S notanumber"), None);
    }

    #[test]
    fn a_child_and_its_child_are_descendants() {
        // sh -c 'sleep 30 & wait': the shell's child `sleep` is its descendant, and both are
        // descendants of this test.
        let mut child = std::process::Command::new("sh")
            .args(["-c", "sleep 30 & wait"])
            .spawn()
            .unwrap();
        let sh = child.id();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let of_shell = loop {
            let found = descendants(&[sh]);
            if !found.is_empty() || std::time::Instant::now() > deadline {
                break found;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        };
        let of_test = descendants(&[std::process::id()]);
        let comm = of_shell
            .first()
            .and_then(|p| std::fs::read_to_string(format!("/proc/{p}/comm")).ok())
            .unwrap_or_default();
        for &p in &of_shell {
            // SAFETY: kill has no memory preconditions; `p` is the shell's own child.
            unsafe { libc::kill(p as i32, libc::SIGKILL) };
        }
        let _ = child.kill();
        let _ = child.wait();
        assert_eq!(
            comm.trim(),
            "sleep",
            "the shell's descendants: {of_shell:?}"
        );
        assert_eq!(of_shell.len(), 1, "{of_shell:?}");
        assert!(of_test.contains(&sh), "{of_test:?} has the shell {sh}");
        assert!(
            of_test.contains(&of_shell[0]),
            "{of_test:?} has the shell's child"
        );
        assert!(
            !of_test.contains(&std::process::id()),
            "a root is not its own descendant"
        );
    }
}
