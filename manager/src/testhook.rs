//! TEST-ONLY pause points, inert by default.
//!
//! When the variable `ATLANTIS_MANAGER_TEST_PAUSE_AT` names a step (`start`: journal written, nothing
//! started; `switch`: containers healthy, traffic not switched; `drain`: traffic switched, old release not
//! drained yet) and `ATLANTIS_MANAGER_TEST_PAUSE_DIR` names a directory, a task reaching that step creates
//! `<dir>/paused-<step>` and waits until `<dir>/resume-<step>` exists. The HA tests use it to SIGKILL a
//! manager at an exact point of a deploy. Nothing sets these variables in production; without both of
//! them this is a no-op.

use std::path::PathBuf;
use std::time::Duration;

/// The variable naming the step to pause at.
pub const PAUSE_AT: &str = "ATLANTIS_MANAGER_TEST_PAUSE_AT";
/// The variable naming the directory of the marker files.
pub const PAUSE_DIR: &str = "ATLANTIS_MANAGER_TEST_PAUSE_DIR";

fn armed(step: &str) -> Option<PathBuf> {
    let at = std::env::var(PAUSE_AT).ok()?;
    let dir = std::env::var_os(PAUSE_DIR)?;
    (at == step).then(|| PathBuf::from(dir))
}

/// Waits at `step` when the test variables ask for it.
pub async fn pause(step: &str) {
    let Some(dir) = armed(step) else {
        return;
    };
    tracing::warn!(
        step,
        "TEST HOOK: pausing a task (ATLANTIS_MANAGER_TEST_PAUSE_AT is set)."
    );
    let _ = std::fs::write(dir.join(format!("paused-{step}")), b"");
    let resume = dir.join(format!("resume-{step}"));
    while !resume.exists() {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[cfg(test)]
mod tests {
    #[tokio::test]
    async fn inert_without_the_variables() {
        // The variables are not set in unit tests: this returns at once.
        tokio::time::timeout(std::time::Duration::from_secs(1), super::pause("switch"))
            .await
            .unwrap();
    }
}
