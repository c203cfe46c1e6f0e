//! Bounded load through routers: a few clients paced to a total rate, counting requests that got one
//! of the expected bodies and every other outcome.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
use std::time::Duration;

/// Results of a run.
#[derive(Debug)]
pub struct Outcome {
    pub ok: u64,
    pub failed: u64,
    pub errors: Vec<String>,
}

pub struct Load {
    ok: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<Vec<String>>>,
}

impl Load {
    /// `rate` requests per second in total, spread over `addrs` (two clients each).
    pub fn start(addrs: &[&str], host: &str, bodies: Vec<String>, rate: u32) -> Load {
        let ok = Arc::new(AtomicU64::new(0));
        let failed = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let workers = (addrs.len() * 2) as u32;
        let interval = Duration::from_secs_f64(f64::from(workers) / f64::from(rate));
        let bodies = Arc::new(bodies);
        let tasks = (0..workers as usize)
            .map(|i| {
                let (ok, failed, stop, bodies) =
                    (ok.clone(), failed.clone(), stop.clone(), bodies.clone());
                let url = format!("http://{}/", addrs[i % addrs.len()]);
                let host = host.to_owned();
                tokio::spawn(async move {
                    let http = reqwest::Client::builder()
                        .no_proxy()
                        .timeout(Duration::from_secs(10))
                        .build()
                        .unwrap();
                    let mut errors = Vec::new();
                    let mut tick = tokio::time::interval(interval);
                    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                    while !stop.load(SeqCst) {
                        tick.tick().await;
                        match http.get(&url).header("host", &host).send().await {
                            Ok(r) if r.status() == 200 => {
                                let body = r.text().await.unwrap_or_default();
                                if bodies.contains(&body) {
                                    ok.fetch_add(1, SeqCst);
                                } else {
                                    failed.fetch_add(1, SeqCst);
                                    errors.push(format!("{url}: body {body:?}"));
                                }
                            }
                            Ok(r) => {
                                failed.fetch_add(1, SeqCst);
                                errors.push(format!("{url}: status {}", r.status()));
                            }
                            Err(e) => {
                                failed.fetch_add(1, SeqCst);
                                errors.push(format!("{url}: {e}"));
                            }
                        }
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
        }
    }

    pub async fn finish(self) -> Outcome {
        self.stop.store(true, SeqCst);
        let mut errors = Vec::new();
        for t in self.tasks {
            errors.extend(t.await.unwrap());
        }
        errors.truncate(20);
        Outcome {
            ok: self.ok.load(SeqCst),
            failed: self.failed.load(SeqCst),
            errors,
        }
    }
}

/// Waits (bounded) until `addr` serves `body` for the sample app.
pub async fn expect_body(addr: &str, body: &str) {
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    atlantis_testkit::eventually(
        Duration::from_secs(30),
        &format!("{addr} serves {body:?}"),
        || async {
            let r = http
                .get(format!("http://{addr}/"))
                .header("host", "hello.dev.apps.localhost")
                .timeout(Duration::from_secs(5))
                .send()
                .await
                .ok()?;
            (r.status() == 200 && r.text().await.ok()? == body).then_some(())
        },
    )
    .await;
}
