//! Drain by connections through a real deploy: a 10-second request to release A, in flight through the
//! router while release B is deployed, completes with 200 and A's answer; the deploy's drain waited for
//! it (and no longer), and the task's steps say so (`routers N/N on generation G`, `drained in X s`).
//! Runs on the cluster of `deploy::releases_end_to_end`.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use atlantis_common::api::manager::{TaskState, TaskStatus, TaskStep};
use reqwest::Method;
use serde_json::json;

use crate::support::{Cluster, DRAIN_DEADLINE_MS};

const APP: &str = "drainer";
const HOST: &str = "drainer.prod.apps.localhost";
const SHA_A: &str = "5555555eeeeeee";
const SHA_B: &str = "6666666fffffff";
/// How long the slow endpoint takes.
const SLOW: Duration = Duration::from_secs(10);

/// Serves `/version` (the sha) and the CGI `/cgi-bin/slow`, which marks `/tmp/slow-started`, sleeps
/// 10 s, then answers `slow <sha>` (busybox httpd runs executables under `cgi-bin/`).
fn deploy_body(sha: &str) -> serde_json::Value {
    let secs = SLOW.as_secs();
    let script = format!(
        r#"mkdir -p /www/cgi-bin; printf '#!/bin/sh\ntouch /tmp/slow-started\nsleep {secs}\nprintf "Content-Type: text/plain\\r\\n\\r\\nslow {sha}\\n"\n' > /www/cgi-bin/slow; chmod 755 /www/cgi-bin/slow; echo {sha} > /www/version; exec httpd -f -p 8080 -h /www"#
    );
    json!({"sha": sha, "command": ["/bin/sh", "-c", script], "start_timeout_ms": 20000})
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// The app's containers on each host: (host index, name).
fn containers(c: &Cluster) -> Vec<(usize, String)> {
    c.hosts
        .iter()
        .enumerate()
        .flat_map(|(i, h)| {
            h.containers()
                .into_iter()
                .filter(|n| n.starts_with(&format!("{APP}-")))
                .map(move |n| (i, n))
        })
        .collect()
}

/// Whether the slow CGI has started in one of the app's containers.
async fn slow_started(c: &Cluster) -> bool {
    for (host, name) in containers(c) {
        let mut cmd = c.hosts[host].docker.docker();
        cmd.args(["exec", &name, "test", "-e", "/tmp/slow-started"]);
        cmd.stdin(std::process::Stdio::null());
        let out = tokio::task::spawn_blocking(move || cmd.output().expect("run docker exec"))
            .await
            .unwrap();
        if out.status.success() {
            return true;
        }
    }
    false
}

fn step<'a>(t: &'a TaskStatus, name: &str) -> &'a TaskStep {
    t.steps
        .iter()
        .find(|s| s.name == name)
        .unwrap_or_else(|| panic!("no step {name:?}: {t:?}"))
}

pub async fn slow_request_survives_a_deploy(c: &Cluster) {
    let (s, v) = c
        .call(Method::POST, "/v1/apps", Some(json!({"name": APP})))
        .await;
    assert_eq!(s, 201, "{v}");
    c.publish(APP, SHA_A).await;
    c.publish(APP, SHA_B).await;
    let path = format!("/v1/apps/{APP}/envs/prod/deploy");
    let t = c.run_task(&path, deploy_body(SHA_A)).await;
    assert_eq!(t.state, TaskState::Done, "{t:?}");
    c.router_serves(HOST, "/version", SHA_A).await;
    let old = containers(c);
    assert_eq!(old.len(), 2, "one container per zone: {old:?}");

    // The slow request, through the router, to release A.
    let http = c.http.clone();
    let url = format!("http://127.0.0.1:{}/cgi-bin/slow", c.router_port);
    let requested = Instant::now();
    let slow = tokio::spawn(async move {
        let r = http
            .get(url)
            .header("host", HOST)
            .timeout(Duration::from_secs(60))
            .send()
            .await;
        let out = match r {
            Ok(r) => {
                let status = r.status().as_u16();
                (status, r.text().await.map_err(|e| e.to_string()))
            }
            Err(e) => (0, Err(e.to_string())),
        };
        (out, Instant::now(), now_ms())
    });
    // It reached a backend of A before the deploy starts.
    atlantis_testkit::eventually(Duration::from_secs(5), "the slow CGI started", || async {
        slow_started(c).await.then_some(())
    })
    .await;

    // Release B is deployed while it is in flight.
    let t0 = Instant::now();
    let t = c.run_task(&path, deploy_body(SHA_B)).await;
    let deployed = Instant::now();
    let ((status, body), answered, answered_ms) = slow.await.unwrap();
    let request_took = answered - requested;
    eprintln!(
        "slow request: {status} in {request_took:?}; deploy took {:?}; steps: {:?}",
        deployed - t0,
        t.steps
            .iter()
            .map(|s| format!("{} ({:?} ms): {}", s.name, s.took_ms, s.detail))
            .collect::<Vec<_>>()
    );
    assert_eq!(
        (status, body.as_deref().map(str::trim)),
        (200, Ok(format!("slow {SHA_A}").as_str())),
        "the request in flight completes with A's answer"
    );
    assert!(request_took >= SLOW, "{request_took:?}");
    assert_eq!(t.state, TaskState::Done, "{t:?}");
    assert!(t.warnings.is_empty(), "{:?}", t.warnings);

    // Every router acknowledged the switch (one external router in this cluster).
    let routers = &step(&t, "wait for routers").detail;
    let acked = routers
        .split("; ")
        .find_map(|d| d.strip_prefix("routers "))
        .unwrap_or_else(|| panic!("no acknowledgement in {routers:?}"));
    let (count, generation) = acked.split_once(" on generation ").expect(routers);
    assert_eq!(count, "1/1", "{routers}");
    assert!(generation.parse::<u64>().unwrap() >= 1, "{routers}");

    // The drain waited for the request, not for its deadline.
    let drain = step(&t, "drain old release");
    let secs: f64 = drain
        .detail
        .split("; ")
        .find_map(|d| d.strip_prefix("drained in "))
        .and_then(|d| d.strip_suffix(" s"))
        .unwrap_or_else(|| panic!("no drain summary in {:?}", drain.detail))
        .parse()
        .unwrap();
    assert!(
        drain.detail.contains("removed 2 old containers"),
        "{drain:?}"
    );
    // From the drain's start until the answer; the summary is rounded to 0.1 s, and the routers report
    // every 200 ms.
    let in_flight_ms = answered_ms.saturating_sub(drain.started_ms) as f64;
    assert!(
        in_flight_ms >= 1000.0,
        "the request was still in flight well into the drain: {in_flight_ms} ms"
    );
    let drained_ms = secs * 1000.0;
    assert!(
        drained_ms + 500.0 >= in_flight_ms && drained_ms <= in_flight_ms + 1500.0,
        "drained in {secs} s; the request ended {in_flight_ms} ms into the drain"
    );
    assert!(deployed >= answered, "the deploy ended after the answer");
    assert!(
        deployed - t0 < Duration::from_millis(DRAIN_DEADLINE_MS),
        "the deploy took {:?}",
        deployed - t0
    );
    eprintln!("drain: {secs} s (the request ended {in_flight_ms} ms into it)");

    // B serves; A's containers are gone.
    c.router_serves(HOST, "/version", SHA_B).await;
    let new = containers(c);
    assert_eq!(new.len(), 2, "{new:?}");
    assert!(new.iter().all(|n| !old.contains(n)), "{old:?} {new:?}");

    let t = c
        .run_task(&format!("/v1/apps/{APP}/teardown"), json!({}))
        .await;
    assert_eq!(t.state, TaskState::Done, "{t:?}");
    assert!(containers(c).is_empty());
    let (s, _) = c
        .call(Method::DELETE, &format!("/v1/apps/{APP}"), None)
        .await;
    assert_eq!(s, 204);
}
