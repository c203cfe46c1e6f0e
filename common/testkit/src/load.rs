//! Paced HTTP load for end-to-end tests: a few clients send `GET`s with a `Host` header at a fixed
//! pace while a deploy, a rollback or a failure happens, and count every answer that was not one of
//! the expected bodies.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
use std::time::{Duration, Instant};

/// How many error texts [`Outcome::errors`] keeps.
const KEPT_ERRORS: usize = 20;

/// What a run counted.
#[derive(Debug)]
pub struct Outcome {
    /// Answers 200 with an accepted body.
    pub ok: u64,
    /// Everything else: other statuses, other bodies, connection errors and timeouts.
    pub failed: u64,
    /// How long the load ran.
    pub elapsed: Duration,
    /// The first few failures, each naming its URL.
    pub errors: Vec<String>,
}

/// A running load; [`Load::finish`] stops it.
pub struct Load {
    ok: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<Vec<String>>>,
    started: Instant,
}

impl Load {
    /// `workers` clients, spread round-robin over `urls`, each sending one `GET` every `every` with
    /// `Host: host`. A 200 whose body equals one of `accept` (both trimmed) counts as ok.
    pub fn start(
        urls: &[String],
        host: &str,
        accept: &[String],
        workers: usize,
        every: Duration,
    ) -> Load {
        assert!(
            !urls.is_empty() && workers > 0,
            "a load needs URLs and workers"
        );
        let ok = Arc::new(AtomicU64::new(0));
        let failed = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let accept: Arc<Vec<String>> =
            Arc::new(accept.iter().map(|a| a.trim().to_owned()).collect());
        let tasks = (0..workers)
            .map(|i| {
                let (ok, failed, stop, accept) =
                    (ok.clone(), failed.clone(), stop.clone(), accept.clone());
                let url = urls[i % urls.len()].clone();
                let host = host.to_owned();
                tokio::spawn(async move {
                    let http = reqwest::Client::builder()
                        .no_proxy()
                        .timeout(Duration::from_secs(10))
                        .build()
                        .expect("an HTTP client");
                    let mut errors = Vec::new();
                    let mut tick = tokio::time::interval(every);
                    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                    while !stop.load(SeqCst) {
                        tick.tick().await;
                        let error = match http.get(&url).header("host", &host).send().await {
                            Ok(r) if r.status() == 200 => {
                                let body = r.text().await.unwrap_or_default();
                                if accept.iter().any(|a| a == body.trim()) {
                                    None
                                } else {
                                    Some(format!("{url}: body {body:?}"))
                                }
                            }
                            Ok(r) => Some(format!(
                                "{url}: status {} {:?}",
                                r.status(),
                                r.headers().get("x-atlantis-error")
                            )),
                            Err(e) => Some(format!("{url}: {e}")),
                        };
                        match error {
                            None => ok.fetch_add(1, SeqCst),
                            Some(e) => {
                                if errors.len() < KEPT_ERRORS {
                                    errors.push(e);
                                }
                                failed.fetch_add(1, SeqCst)
                            }
                        };
                    }
                    errors
                })
            })
            .collect();
        Load {
            ok,
            failed,
            stop,
            tasks,
            started: Instant::now(),
        }
    }

    /// Waits until `more` requests have been answered or have failed from now on (bounded by `limit`),
    /// so a test lets the load run across an event by counting requests, not by sleeping.
    pub async fn settle(&self, more: u64, limit: Duration) {
        let seen = || self.ok.load(SeqCst) + self.failed.load(SeqCst);
        let want = seen() + more;
        let deadline = Instant::now() + limit;
        while seen() < want {
            assert!(
                Instant::now() < deadline,
                "the load made {} of {more} requests in {limit:?}",
                more + seen() - want
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// How long it has run.
    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// Stops the clients (each ends its request in flight) and returns the counts.
    pub async fn finish(self) -> Outcome {
        self.stop.store(true, SeqCst);
        let elapsed = self.started.elapsed();
        let mut errors = Vec::new();
        for t in self.tasks {
            errors.extend(t.await.expect("a load client panicked"));
        }
        errors.truncate(KEPT_ERRORS);
        Outcome {
            ok: self.ok.load(SeqCst),
            failed: self.failed.load(SeqCst),
            elapsed,
            errors,
        }
    }
}
