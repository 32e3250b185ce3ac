//! Running the installers' commands: a failure is an [`Unavailable`] that carries the
//! command and the tail of its output, never a panic (the caller decides between skip and
//! failure).

use std::process::Command;
use std::time::Duration;

use crate::process::{RunError, describe, tail, try_run};
use crate::require::Unavailable;

/// Runs `cmd` under `limit`; its stdout when it succeeds.
pub fn exec(cmd: &mut Command, limit: Duration) -> Result<String, Unavailable> {
    let what = describe(cmd);
    match try_run(cmd, limit) {
        Ok(out) if out.status.success() => Ok(String::from_utf8_lossy(&out.stdout).into_owned()),
        Ok(out) => Err(Unavailable(format!(
            "`{what}` failed ({})\n{}{}",
            out.status,
            tail(&out.stdout),
            tail(&out.stderr)
        ))),
        Err(RunError::Start(e)) => Err(Unavailable(format!("cannot run `{what}`: {e}"))),
        Err(RunError::Timeout(out)) => Err(Unavailable(format!(
            "`{what}` ran past {} s and was killed\n{}",
            limit.as_secs(),
            tail(&out.stderr)
        ))),
    }
}

/// Minutes, for install time limits.
pub const fn minutes(n: u64) -> Duration {
    Duration::from_secs(n * 60)
}
