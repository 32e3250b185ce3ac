//! Process reports: the `fs_pid_events` ring buffer.

use crate::Plain;

/// `enum fs_pid_event_kind`: what a [`PidEvent`] reports.
#[repr(u32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PidEventKind {
    /// A process whose tables are not loaded was sampled.
    New = 0,
    /// A known process ran code outside its loaded mappings.
    Rescan = 1,
    /// A known process exited.
    Exit = 2,
    /// A known process called exec.
    Exec = 3,
    /// A thread recorded as it left the CPU runs again: [`PidEvent::pid`] is the thread ID,
    /// [`PidEvent::address`] when it left (its record's `ktime_ns`), [`PidEvent::ktime_ns`]
    /// when it came back.
    OffCpuEnd = 4,
}

impl PidEventKind {
    /// Every kind, in value order.
    pub const ALL: [PidEventKind; 5] = [
        PidEventKind::New,
        PidEventKind::Rescan,
        PidEventKind::Exit,
        PidEventKind::Exec,
        PidEventKind::OffCpuEnd,
    ];

    /// The name of the C enumerator.
    pub fn c_name(self) -> &'static str {
        match self {
            PidEventKind::New => "FS_PID_NEW",
            PidEventKind::Rescan => "FS_PID_RESCAN",
            PidEventKind::Exit => "FS_PID_EXIT",
            PidEventKind::Exec => "FS_PID_EXEC",
            PidEventKind::OffCpuEnd => "FS_PID_OFF_CPU_END",
        }
    }
}

/// `struct fs_pid_event`: one report through the `fs_pid_events` ring buffer.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PidEvent {
    /// The process.
    pub pid: u32,
    /// A [`PidEventKind`] value.
    pub kind: u32,
    /// The address outside every loaded mapping ([`PidEventKind::Rescan`]), else 0.
    pub address: u64,
    /// When it happened (`bpf_ktime_get_ns`, as [`crate::TraceHeader::ktime_ns`]).
    pub ktime_ns: u64,
}

// SAFETY: repr(C): u32, u32, u64, u64 (24 bytes, no padding).
unsafe impl Plain for PidEvent {}

impl PidEvent {
    /// Decodes a ring-buffer record; `None` when it is too short or of an unknown kind.
    pub fn decode(bytes: &[u8]) -> Option<(PidEvent, PidEventKind)> {
        let e = PidEvent::read_prefix(bytes)?;
        let kind = PidEventKind::ALL
            .iter()
            .copied()
            .find(|k| *k as u32 == e.kind)?;
        Some((e, kind))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_decode_and_unknown_kinds_are_refused() {
        let e = PidEvent {
            pid: 42,
            kind: 1,
            address: 0x7f00_dead_0000,
            ktime_ns: 7,
        };
        let (got, kind) = PidEvent::decode(e.as_bytes()).unwrap();
        assert_eq!((got, kind), (e, PidEventKind::Rescan));
        let bad = PidEvent { kind: 9, ..e };
        assert!(PidEvent::decode(bad.as_bytes()).is_none());
        assert!(PidEvent::decode(&e.as_bytes()[..12]).is_none());
    }
}
