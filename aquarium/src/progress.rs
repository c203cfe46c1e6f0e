//! One line per step, with the time since the command started and the step's own duration.

use std::time::Instant;

/// Prints step lines.
pub struct Progress {
    started: Instant,
}

impl Default for Progress {
    fn default() -> Self {
        Progress {
            started: Instant::now(),
        }
    }
}

impl Progress {
    /// Runs `f` as the step `name` and prints `[  t] name: detail (took)`; a failure prints the step
    /// and its error (the error says where the component's log is) and is returned.
    pub async fn step<T, F>(&self, name: &str, f: F) -> anyhow::Result<T>
    where
        F: Future<Output = anyhow::Result<(T, String)>>,
    {
        let t = Instant::now();
        match f.await {
            Ok((v, detail)) => {
                println!(
                    "[{:>6.1}s] {name}: {detail} ({:.1}s)",
                    self.started.elapsed().as_secs_f64(),
                    t.elapsed().as_secs_f64()
                );
                Ok(v)
            }
            Err(e) => {
                println!(
                    "[{:>6.1}s] {name}: FAILED after {:.1}s",
                    self.started.elapsed().as_secs_f64(),
                    t.elapsed().as_secs_f64()
                );
                Err(e.context(format!("step `{name}` failed")))
            }
        }
    }

    /// Seconds since the start.
    pub fn elapsed(&self) -> f64 {
        self.started.elapsed().as_secs_f64()
    }
}
