//! The manager against real parts: registration and leadership on a real ZooKeeper; the SQL history on
//! SQLite and PostgreSQL; and the release engine end to end on a cluster of two supervisors in two zones
//! (dockerd in network namespaces), a router and a registry (`deploy`).

mod acks;
mod api;
mod auth;
mod dep_grants;
mod deploy;
mod drain;
mod history;
mod internal_deps;
mod registry_tokens;
mod routing;
mod support;

use std::time::Duration;

use atlantis_common::zk::{Coord, ZkConfig};
use atlantis_manager::{App, Config};
use atlantis_testkit::{ZooKeeper, eventually};

fn config(zk: &ZooKeeper, host: &str, dir: &std::path::Path) -> Config {
    let mut z = ZkConfig::new(zk.connect_string(), "test".parse().unwrap());
    z.session_timeout = Duration::from_secs(3);
    let mut c = support::manager_config(&z, dir, "127.0.0.1:9".parse().unwrap());
    c.host = host.parse().unwrap();
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn managers_register_and_one_leads() {
    let zk = ZooKeeper::start();
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = App::build(config(&zk, "m1", da.path())).await.unwrap();
    let b = App::build(config(&zk, "m2", db.path())).await.unwrap();
    let observer = Coord::connect(config(&zk, "x", da.path()).zookeeper)
        .await
        .unwrap();
    let hosts = observer
        .children(&observer.layout().managers())
        .await
        .unwrap();
    assert_eq!(hosts, vec!["m1".to_string(), "m2".to_string()]);

    let http = reqwest::Client::new();
    let health = |addr: std::net::SocketAddr| {
        let http = http.clone();
        async move {
            http.get(format!("http://{addr}/healthz"))
                .send()
                .await
                .unwrap()
                .json::<serde_json::Value>()
                .await
                .unwrap()
        }
    };
    let leader = eventually(Duration::from_secs(10), "a leader", || async {
        observer
            .leader(&observer.layout().manager_leader())
            .await
            .unwrap()
    })
    .await;
    assert!(leader == "m1" || leader == "m2");
    eventually(
        Duration::from_secs(5),
        "exactly one manager reports leading",
        || async {
            let (ha, hb) = (health(a.addr).await, health(b.addr).await);
            assert_eq!(ha["status"], "OK");
            (ha["leader"].as_bool().unwrap() ^ hb["leader"].as_bool().unwrap()).then_some(())
        },
    )
    .await;
    let unauthenticated = http
        .get(format!("http://{}/metrics", a.addr))
        .send()
        .await
        .unwrap();
    assert_eq!(unauthenticated.status(), 401);
    let metrics = http
        .get(format!("http://{}/metrics", a.addr))
        .bearer_auth(support::admin_token(&a))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(metrics.ends_with("# EOF\n"), "{metrics}");

    // The leader shuts down: the other takes over and the first one's registration is gone.
    let (first, second, second_name) = if leader == "m1" {
        (a, b, "m2")
    } else {
        (b, a, "m1")
    };
    first.shutdown().await;
    eventually(Duration::from_secs(15), "failover", || async {
        (observer
            .leader(&observer.layout().manager_leader())
            .await
            .unwrap()
            .as_deref()
            == Some(second_name))
        .then_some(())
    })
    .await;
    eventually(Duration::from_secs(15), "registration removed", || async {
        (observer
            .children(&observer.layout().managers())
            .await
            .unwrap()
            == vec![second_name.to_string()])
        .then_some(())
    })
    .await;
    second.shutdown().await;
}

#[test]
fn binary_prints_help_and_refuses_bad_config() {
    let bin = env!("CARGO_BIN_EXE_atlantis-manager");
    let out = std::process::Command::new(bin)
        .arg("--help")
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("--config <CONFIG>"));
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("m.toml");
    std::fs::write(
        &cfg,
        "host = \"Bad Host\"\n[zookeeper]\nservers = \"127.0.0.1:1\"\nregion = \"dev\"\n",
    )
    .unwrap();
    let out = std::process::Command::new(bin)
        .arg("--config")
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("invalid host name \"Bad Host\""), "{err}");
}
