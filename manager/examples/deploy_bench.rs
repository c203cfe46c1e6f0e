//! Deploy benchmark (run by `bench/deploy.sh`): on the test cluster (two supervisors in two zones on
//! dockerd in network namespaces, a router, the registry, ZooKeeper), the median over RUNS of
//!   deploy:  POST .../deploy of an image already in the registry until the first 200 through the router
//!   anchor:  `docker run -d -p` of the same image on one host until its first HTTP answer
//! then the ratio and difference, and a redeploy under a paced load (requests, failures).

#[allow(dead_code)]
#[path = "../tests/it/support.rs"]
mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::json;
use support::{BASE_IMAGE, Cluster};

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn sha(i: usize) -> String {
    format!("{:07x}{:07x}", 0xbe0000 + i, i)
}

async fn first_200(c: &Cluster, host: &str, want: &str, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        let (s, b) = c.through_router(host, "/version").await;
        if s == 200 && b.trim() == want {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    false
}

#[tokio::main(flavor = "multi_thread", worker_threads = 4)]
async fn main() {
    let runs: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(5);
    let rate: u32 = std::env::var("RATE")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(400);
    let c = Cluster::start().await;
    assert_eq!(
        c.call(Method::POST, "/v1/envs", Some(json!({"name": "prod"})))
            .await
            .0,
        201
    );
    assert_eq!(
        c.call(Method::POST, "/v1/apps", Some(json!({"name": "bench"})))
            .await
            .0,
        201
    );
    let port = json!({"port": c.router_port, "trie": "apps"});
    assert_eq!(
        c.call(
            Method::PUT,
            "/v1/router-config/external/ports/http",
            Some(port)
        )
        .await
        .0,
        200
    );
    let host = "bench.prod.apps.localhost";
    let mut deploys = Vec::new();
    for i in 0..runs {
        let s = sha(i);
        c.publish("bench", &s).await;
        let body = json!({"sha": s, "command": ["/bin/sh", "-c", format!("echo {s} > /www/version; exec httpd -f -p 8080 -h /www")]});
        let t0 = Instant::now();
        let (code, v) = c
            .call(Method::POST, "/v1/apps/bench/envs/prod/deploy", Some(body))
            .await;
        assert_eq!(code, 202, "{v}");
        assert!(
            first_200(&c, host, &s, Duration::from_secs(60)).await,
            "no 200 for {s}"
        );
        let took = t0.elapsed();
        let t = c.wait_task(v["task_id"].as_str().unwrap()).await;
        assert_eq!(
            t.state,
            atlantis_common::api::manager::TaskState::Done,
            "{t:?}"
        );
        eprintln!("deploy {i}: first 200 after {took:?}");
        deploys.push(took);
        let t = c
            .run_task("/v1/apps/bench/envs/prod/teardown", json!({}))
            .await;
        assert_eq!(
            t.state,
            atlantis_common::api::manager::TaskState::Done,
            "{t:?}"
        );
    }
    let h = &c.hosts[0];
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let mut anchors = Vec::new();
    for i in 0..runs {
        let port = atlantis_testkit::ports::free_port();
        let name = format!("bench-anchor-{i}");
        let publish = format!("{}:{port}:8080", h.docker.ns_ip());
        let t0 = Instant::now();
        h.docker
            .docker_ok(&["run", "-d", "--name", &name, "-p", &publish, BASE_IMAGE]);
        let url = format!("http://{}:{port}/", h.docker.ns_ip());
        loop {
            if let Ok(r) = http.get(&url).timeout(Duration::from_secs(1)).send().await
                && r.status().is_success()
            {
                break;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(60),
                "anchor never answered"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let took = t0.elapsed();
        eprintln!("docker run {i}: first answer after {took:?}");
        anchors.push(took);
        h.docker.docker_ok(&["rm", "-f", &name]);
    }
    let (d, a) = (median(deploys), median(anchors));
    println!(
        "deploy to first 200 through the router: median {:.0} ms over {runs}",
        d.as_secs_f64() * 1000.0
    );
    println!(
        "bare docker run to first answer:        median {:.0} ms over {runs}",
        a.as_secs_f64() * 1000.0
    );
    println!(
        "ratio deploy/docker run: {:.2}; difference {:.0} ms (goal: within 500 ms)",
        d.as_secs_f64() / a.as_secs_f64(),
        (d.as_secs_f64() - a.as_secs_f64()) * 1000.0
    );

    // Redeploy under load.
    let (s1, s2) = (sha(100), sha(101));
    for s in [&s1, &s2] {
        c.publish("bench", s).await;
    }
    let body = |s: &str| json!({"sha": s, "command": ["/bin/sh", "-c", format!("echo {s} > /www/version; exec httpd -f -p 8080 -h /www")]});
    let t = c
        .run_task("/v1/apps/bench/envs/prod/deploy", body(&s1))
        .await;
    assert_eq!(
        t.state,
        atlantis_common::api::manager::TaskState::Done,
        "{t:?}"
    );
    assert!(first_200(&c, host, &s1, Duration::from_secs(30)).await);
    let ok = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let workers = 16;
    let interval = Duration::from_secs_f64(f64::from(workers) / f64::from(rate));
    let router_port = c.router_port;
    let tasks: Vec<_> = (0..workers)
        .map(|_| {
            let (ok, failed, stop) = (ok.clone(), failed.clone(), stop.clone());
            tokio::spawn(async move {
                let http = reqwest::Client::builder()
                    .no_proxy()
                    .timeout(Duration::from_secs(10))
                    .build()
                    .unwrap();
                let mut tick = tokio::time::interval(interval);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                while !stop.load(SeqCst) {
                    tick.tick().await;
                    let r = http
                        .get(format!("http://127.0.0.1:{router_port}/version"))
                        .header("host", "bench.prod.apps.localhost")
                        .send()
                        .await;
                    match r {
                        Ok(r) if r.status() == 200 => ok.fetch_add(1, SeqCst),
                        _ => failed.fetch_add(1, SeqCst),
                    };
                }
            })
        })
        .collect();
    let t0 = Instant::now();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let t = c
        .run_task("/v1/apps/bench/envs/prod/deploy", body(&s2))
        .await;
    assert_eq!(
        t.state,
        atlantis_common::api::manager::TaskState::Done,
        "{t:?}"
    );
    let redeploy = t.finished_ms.unwrap_or(0).saturating_sub(t.created_ms);
    tokio::time::sleep(Duration::from_secs(12).saturating_sub(t0.elapsed())).await;
    stop.store(true, SeqCst);
    for t in tasks {
        let _ = t.await;
    }
    let took = t0.elapsed().as_secs_f64();
    let (ok, failed) = (ok.load(SeqCst), failed.load(SeqCst));
    println!(
        "redeploy under load: {ok} requests answered 200, {failed} failed, over {took:.1} s ({:.0} req/s); the redeploy task took {redeploy} ms",
        ok as f64 / took
    );
}
