//! Worker threads: one current-thread tokio runtime per core. Each worker accepts on its own
//! `SO_REUSEPORT` socket for every port and keeps its own idle backend connections, so a request is read,
//! routed, forwarded and answered on one core without cross-thread wake-ups. The control plane
//! (configuration source, table compiler, health checks, status listener) runs on the caller's runtime.

use std::cell::Cell;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

use tokio_util::sync::CancellationToken;

static SLOTS: AtomicUsize = AtomicUsize::new(1);

thread_local! {
    static WORKER: Cell<usize> = const { Cell::new(0) };
}

/// How many per-worker slots (idle connection lists) a backend keeps.
pub fn slots() -> usize {
    SLOTS.load(Relaxed)
}

/// The index of the worker running on this thread (0 outside workers).
pub fn current() -> usize {
    WORKER.with(Cell::get)
}

/// The running workers.
pub struct Workers {
    handles: Vec<tokio::runtime::Handle>,
    threads: Vec<std::thread::JoinHandle<()>>,
    stop: CancellationToken,
}

impl Workers {
    /// Starts `n` workers (at least one).
    pub fn start(n: usize) -> std::io::Result<Workers> {
        let n = n.max(1);
        SLOTS.fetch_max(n, Relaxed);
        let stop = CancellationToken::new();
        let mut handles = Vec::with_capacity(n);
        let mut threads = Vec::with_capacity(n);
        for i in 0..n {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            handles.push(rt.handle().clone());
            let stop = stop.clone();
            threads.push(
                std::thread::Builder::new()
                    .name(format!("router-worker-{i}"))
                    .spawn(move || {
                        WORKER.with(|w| w.set(i));
                        rt.block_on(stop.cancelled());
                    })?,
            );
        }
        Ok(Workers {
            handles,
            threads,
            stop,
        })
    }

    /// The workers' runtimes.
    pub fn handles(&self) -> &[tokio::runtime::Handle] {
        &self.handles
    }

    /// Stops every worker (tasks still running on them are dropped) and joins the threads.
    pub async fn stop(mut self) {
        self.stop.cancel();
        let threads = std::mem::take(&mut self.threads);
        let _ = tokio::task::spawn_blocking(move || {
            for t in threads {
                let _ = t.join();
            }
        })
        .await;
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}
