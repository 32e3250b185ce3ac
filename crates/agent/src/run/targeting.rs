//! Targets and the processes they matched: the static `[[targets]]`, the built-in process
//! discovery and the container discoveries (`crate::discover`: Docker, Kubernetes, the
//! node's CRI runtime), relabelled, and the target each profiled process belongs to.
//! Processes match PID targets first, then container targets by container ID.
//!
//! What is cached per process is dropped when the process exits, execs (its labels come
//! from its new program: it is discovered again at once, not at the next refresh) or its
//! PID names another process; a periodic sweep drops what is left of processes that are
//! gone.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ferroscope_targets::{
    FinderOptions, Labels, ProcessDiscovery, Target, TargetFinder, build_targets,
};

use crate::config::Config;
use crate::discover::Discoveries;

/// Targets and the processes they matched.
pub(super) struct Targeting {
    config: Config,
    discovery: Option<(ProcessDiscovery, Duration)>,
    last_discovery: Option<Instant>,
    /// What the process discovery found last.
    processes_found: Vec<Labels>,
    /// The container discoveries, and the generation of their lists last used.
    pub(super) discoveries: Discoveries,
    discoveries_seen: Option<u64>,
    pub(super) finder: TargetFinder,
    /// Processes seen, with their target (None: matches nothing).
    processes: HashMap<u32, Option<Arc<Target>>>,
    /// Static targets by PID, which a process keeps when rediscovery finds nothing.
    static_pids: HashMap<u32, Labels>,
    /// `follow_children`: a process that matches nothing gets the target of its nearest
    /// ancestor that is a static PID target.
    follow_children: bool,
}

/// How far up the process tree an unmatched process looks for a PID target.
const MAX_ANCESTORS: usize = 64;

impl Targeting {
    pub(super) fn new(config: &Config, discoveries: Discoveries) -> Targeting {
        let discovery = config
            .discovery
            .process
            .first()
            .map(|d| (ProcessDiscovery::new("/proc"), d.refresh_interval));
        let finder = TargetFinder::new(FinderOptions {
            proc_root: "/proc".into(),
            targets_only: config.ebpf.targets_only,
            container_id_cache_size: 1024,
        });
        Targeting {
            config: config.clone(),
            discovery,
            last_discovery: None,
            processes_found: Vec::new(),
            discoveries,
            discoveries_seen: None,
            finder,
            processes: HashMap::new(),
            static_pids: HashMap::new(),
            follow_children: config.ebpf.follow_children && config.ebpf.targets_only,
        }
    }

    /// Rebuilds the target list when process discovery is due (always the first time) or a
    /// container discovery's list changed.
    pub(super) fn refresh_targets(&mut self) -> bool {
        let due = match (self.last_discovery, &self.discovery) {
            (None, _) => true,
            (Some(at), Some((_, every))) => at.elapsed() >= *every,
            (Some(_), None) => false,
        };
        let generation = self.discoveries.generation();
        let containers_changed = self.discoveries_seen != Some(generation);
        if !due && !containers_changed {
            return false;
        }
        self.discoveries_seen = Some(generation);
        let mut sets: Vec<Labels> = self.config.targets.clone();
        self.static_pids = self
            .config
            .targets
            .iter()
            .filter_map(|l| {
                let pid = l.get(ferroscope_targets::target::LABEL_PID)?.parse().ok()?;
                Some((pid, l.clone()))
            })
            .collect();
        if due {
            self.last_discovery = Some(Instant::now());
            if let Some((discovery, _)) = &self.discovery {
                match discovery.discover() {
                    Ok(found) => self.processes_found = found,
                    Err(e) => {
                        tracing::warn!("process discovery failed: {}", crate::error::Chain(&e))
                    }
                }
            }
        }
        sets.extend(self.processes_found.iter().cloned());
        // Of two targets for the same PID or container, the later wins.
        sets.extend(self.discoveries.targets());
        let relabelled = sets
            .into_iter()
            .filter_map(|l| ferroscope_targets::relabel::relabel(&self.config.relabel, l));
        let targets = build_targets(relabelled);
        tracing::debug!(targets = targets.len(), "targets refreshed");
        self.finder.set_targets(targets);
        // Every process is matched again against the new targets.
        self.processes.clear();
        true
    }

    /// The target of `pid` (cached until the process changes or the targets are rebuilt).
    pub(super) fn target_of(&mut self, pid: u32) -> Option<Arc<Target>> {
        if let Some(t) = self.processes.get(&pid) {
            return t.clone();
        }
        let mut t = self.finder.find(pid);
        if t.is_none() && self.follow_children {
            t = self.inherited_target(pid);
        }
        self.processes.insert(pid, t.clone());
        t
    }

    /// The target of the nearest ancestor of `pid` that is a static PID target, found
    /// through the parent PIDs in `/proc` (a process whose parent exited was reparented and
    /// inherits nothing).
    fn inherited_target(&mut self, pid: u32) -> Option<Arc<Target>> {
        let mut at = pid;
        for _ in 0..MAX_ANCESTORS {
            let stat = std::fs::read_to_string(format!("/proc/{at}/stat")).ok()?;
            at = crate::session::parent_in_stat(&stat)?;
            if at <= 1 {
                return None;
            }
            if self.static_pids.contains_key(&at) {
                return self.finder.find(at);
            }
        }
        None
    }

    /// The process exec'd or its PID now names another process: its target is looked up
    /// again, from what the process is now.
    pub(super) fn rediscover(&mut self, pid: u32) {
        self.processes.remove(&pid);
        let Some((discovery, _)) = &self.discovery else {
            self.finder.forget(pid);
            return;
        };
        let found = discovery.process(pid);
        // What a container discovery's change rebuilds the targets from, too.
        self.drop_found(pid);
        self.processes_found.extend(found.clone());
        let labels = found.or_else(|| self.static_pids.get(&pid).cloned());
        let target = labels
            .and_then(|l| ferroscope_targets::relabel::relabel(&self.config.relabel, l))
            .and_then(Target::new);
        self.finder.set_pid_target(pid, target);
    }

    /// Drops what the last process discovery found for `pid`.
    fn drop_found(&mut self, pid: u32) {
        let pid = pid.to_string();
        self.processes_found
            .retain(|l| l.get(ferroscope_targets::target::LABEL_PID) != Some(pid.as_str()));
    }

    /// The process exited.
    pub(super) fn forget(&mut self, pid: u32) {
        self.processes.remove(&pid);
        self.finder.forget(pid);
        // A discovered target was the exited process's: a process that gets the PID next
        // must not inherit it before the next discovery. A static target names the PID and
        // stays.
        if self.discovery.is_some() {
            // Nor when a container discovery's change rebuilds the targets before then.
            self.drop_found(pid);
            let target = self
                .static_pids
                .get(&pid)
                .cloned()
                .and_then(|l| ferroscope_targets::relabel::relabel(&self.config.relabel, l))
                .and_then(Target::new);
            self.finder.set_pid_target(pid, target);
        }
    }

    /// Drops what is cached about processes not in `alive`.
    pub(super) fn sweep(&mut self, alive: &HashSet<u32>) {
        let gone: Vec<u32> = self
            .processes
            .keys()
            .copied()
            .filter(|p| !alive.contains(p))
            .collect();
        for pid in gone {
            self.forget(pid);
        }
    }

    /// Processes with a cached target.
    pub(super) fn cached(&self) -> usize {
        self.processes.len()
    }

    pub(super) fn debug_json(&self) -> serde_json::Value {
        let mut by_target: HashMap<String, (serde_json::Value, Vec<u32>)> = HashMap::new();
        for (pid, t) in &self.processes {
            if let Some(t) = t {
                let labels: serde_json::Map<String, serde_json::Value> = t
                    .labels()
                    .iter()
                    .map(|(k, v)| (k.to_owned(), serde_json::Value::from(v)))
                    .collect();
                let key = format!("{:?}", t.id());
                let entry = by_target.entry(key).or_insert_with(|| {
                    (
                        serde_json::json!({"service_name": t.service_name(), "labels": labels}),
                        Vec::new(),
                    )
                });
                entry.1.push(*pid);
            }
        }
        let mut out: Vec<serde_json::Value> = by_target
            .into_values()
            .map(|(mut v, mut pids)| {
                pids.sort_unstable();
                v["pids"] = serde_json::json!(pids);
                v
            })
            .collect();
        out.sort_by_key(|v| v["service_name"].to_string());
        serde_json::json!({
            "active_targets": self.finder.len(),
            "matched": out,
            "discoveries": self.discoveries.debug_json(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::AgentMetrics;

    /// A process discovery's target for a process that exited stays gone when a container
    /// discovery's change rebuilds the targets before the next process discovery (a process
    /// reusing the PID would inherit it otherwise).
    #[test]
    fn an_exited_process_target_is_not_rebuilt_by_a_container_change() {
        let (config, _) = crate::config::parse(
            "[[discovery.process]]\nrefresh_interval = \"1h\"\n",
            "test.toml",
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let (discoveries, publish) = Discoveries::by_hand(&AgentMetrics::default());
        let mut targeting = Targeting::new(&config, discoveries);
        let mut child = std::process::Command::new("sleep")
            .arg("60")
            .spawn()
            .unwrap_or_else(|e| panic!("sleep: {e}"));
        let pid = child.id();
        assert!(targeting.refresh_targets());
        let target = targeting
            .target_of(pid)
            .unwrap_or_else(|| panic!("no target"));
        assert_eq!(target.id(), &ferroscope_targets::TargetId::Pid(pid));

        let _ = child.kill();
        let _ = child.wait();
        targeting.forget(pid);
        assert!(targeting.target_of(pid).is_none());
        let before = targeting.finder.len();
        // A container appears: the targets are rebuilt, without the exited process's.
        let mut container = Labels::new();
        container.set(
            ferroscope_targets::target::LABEL_CONTAINER_ID,
            "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
        );
        publish(vec![container]);
        assert!(targeting.refresh_targets());
        assert!(
            targeting.target_of(pid).is_none(),
            "the exited process's target came back"
        );
        // The same PID targets as before (the process discovery was not due), and the
        // container's.
        assert_eq!(targeting.finder.len(), before + 1);
    }

    /// With `follow_children`, the child of a static PID target's child is profiled as that
    /// target; without it, it matches nothing.
    #[test]
    fn descendants_of_a_pid_target_inherit_it_with_follow_children() {
        let mut shell = std::process::Command::new("sh")
            .args(["-c", "sleep 30 & wait"])
            .spawn()
            .unwrap_or_else(|e| panic!("sh: {e}"));
        let sh = shell.id();
        let deadline = Instant::now() + Duration::from_secs(10);
        let sleep = loop {
            if let Some(&p) = crate::session::descendants(&[sh]).first() {
                break Some(p);
            }
            if Instant::now() > deadline {
                break None;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let found = |follow: bool| {
            let text = format!(
                "[ebpf]\nfollow_children = {follow}\n[[targets]]\n__process_pid__ = \"{sh}\"\nservice_name = \"shell\"\n"
            );
            let (config, _) =
                crate::config::parse(&text, "test.toml").unwrap_or_else(|e| panic!("{e}"));
            let (discoveries, _publish) = Discoveries::by_hand(&AgentMetrics::default());
            let mut targeting = Targeting::new(&config, discoveries);
            targeting.refresh_targets();
            sleep.and_then(|p| targeting.target_of(p))
        };
        let with = found(true);
        let without = found(false);
        if let Some(p) = sleep {
            // SAFETY: kill has no memory preconditions; `p` is the shell's own child.
            unsafe { libc::kill(p as i32, libc::SIGKILL) };
        }
        let _ = shell.kill();
        let _ = shell.wait();
        assert!(sleep.is_some(), "the shell started its child");
        let with = with.unwrap_or_else(|| panic!("the shell's child inherited nothing"));
        assert_eq!(with.service_name(), "shell");
        assert_eq!(with.id(), &ferroscope_targets::TargetId::Pid(sh));
        assert!(
            without.is_none(),
            "without follow_children it matches nothing"
        );
    }
}
