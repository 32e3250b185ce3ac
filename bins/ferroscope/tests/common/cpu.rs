//! How much CPU a workload got inside a profile's window: its CPU time is read every 20 ms
//! while `ferroscope` runs, and interpolated at the window's start and end (the profile's
//! `time_nanos` and `duration_nanos`), so that start-up and symbolization, which can take
//! seconds on a loaded machine, do not count.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ferroscope_pprof::proto::Profile;

use super::cpu_time_of;

/// CPU-time readings of some processes, with when each was taken.
pub struct CpuLog {
    readings: Vec<(SystemTime, Vec<Duration>)>,
}

/// Runs `f` while reading the CPU time of `pids` every 20 ms.
pub fn logging_cpu<T>(pids: &[u32], f: impl FnOnce() -> T) -> (T, CpuLog) {
    let done = std::sync::atomic::AtomicBool::new(false);
    let read = || {
        (
            SystemTime::now(),
            pids.iter().map(|&p| cpu_time_of(p)).collect::<Vec<_>>(),
        )
    };
    std::thread::scope(|scope| {
        let logger = scope.spawn(|| {
            let mut readings = Vec::new();
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                readings.push(read());
                std::thread::sleep(Duration::from_millis(20));
            }
            readings.push(read());
            readings
        });
        let out = f();
        done.store(true, std::sync::atomic::Ordering::Relaxed);
        let readings = logger.join().unwrap();
        (out, CpuLog { readings })
    })
}

impl CpuLog {
    /// The CPU time of the `index`th process (in the order given) at wall time `t`,
    /// interpolated between the readings around it.
    fn at(&self, index: usize, t: SystemTime) -> f64 {
        let i = self
            .readings
            .iter()
            .position(|(when, _)| *when >= t)
            .expect("a reading after the window");
        let (t1, ref c1) = self.readings[i];
        let c1 = c1[index].as_secs_f64();
        let Some((t0, c0)) = i.checked_sub(1).map(|j| &self.readings[j]) else {
            return c1;
        };
        let c0 = c0[index].as_secs_f64();
        let span = t1.duration_since(*t0).unwrap().as_secs_f64().max(1e-9);
        let frac = t.duration_since(*t0).unwrap().as_secs_f64() / span;
        c0 + frac * (c1 - c0)
    }

    /// The CPU time the `index`th process got inside `profile`'s window.
    pub fn in_window(&self, index: usize, profile: &Profile) -> Duration {
        let start = UNIX_EPOCH + Duration::from_nanos(profile.time_nanos as u64);
        let end = start + Duration::from_nanos(profile.duration_nanos as u64);
        Duration::from_secs_f64((self.at(index, end) - self.at(index, start)).max(0.0))
    }
}
