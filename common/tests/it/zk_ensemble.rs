//! A client of a three-node ensemble rides out the loss of the ZooKeeper leader.

use std::time::Duration;

use atlantis_common::zk::{Coord, TreeCache, TreeEvent, ZkConfig};
use atlantis_testkit::{Ensemble, eventually};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_loss_keeps_state_and_session() {
    let mut zk = Ensemble::start();
    let mut cfg = ZkConfig::new(zk.connect_string(), "test".parse().unwrap());
    cfg.session_timeout = Duration::from_secs(6);
    let c = Coord::connect(cfg.clone()).await.unwrap();
    let reg_path = c.layout().supervisor(&"host-e".parse().unwrap());
    let _reg = c
        .register_ephemeral(&reg_path, &serde_json::json!({"version": 1}))
        .await
        .unwrap();
    let app = c.layout().app(&"hello".parse().unwrap());
    c.create(&app, &serde_json::json!({"version": 1, "team": "web"}))
        .await
        .unwrap();
    let mut cache = TreeCache::start(c.clone(), &c.layout().apps());
    assert!(
        matches!(tokio::time::timeout(Duration::from_secs(10), cache.recv()).await.unwrap(), Some(TreeEvent::Reset(m)) if m.len() == 1)
    );
    let session = c.session_id().unwrap();

    let leader = zk.leader();
    zk.kill(leader);
    zk.wait_quorum(2, Duration::from_secs(60));

    // Same session, same ephemeral node, data intact, writes go on.
    let observer = Coord::connect(cfg).await.unwrap();
    let got = observer
        .get::<serde_json::Value>(&app)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got.value["team"], "web");
    eventually(
        Duration::from_secs(20),
        "write after leader loss",
        || async {
            c.set(
                &app,
                &serde_json::json!({"version": 1, "team": "platform"}),
                Some(got.version),
            )
            .await
            .ok()
        },
    )
    .await;
    assert_eq!(
        c.session_id().unwrap(),
        session,
        "the session survived the failover"
    );
    assert_eq!(
        observer
            .stat(&reg_path)
            .await
            .unwrap()
            .unwrap()
            .ephemeral_owner,
        session
    );
    // The cache saw the write made after the failover.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let ev = tokio::time::timeout_at(deadline, cache.recv())
            .await
            .expect("cache event")
            .expect("cache running");
        let seen = match ev {
            TreeEvent::Upsert { node, .. } => node.data,
            TreeEvent::Reset(m) => m.get("hello").map(|n| n.data.clone()).unwrap_or_default(),
            TreeEvent::Remove { .. } => continue,
        };
        if String::from_utf8_lossy(&seen).contains("platform") {
            break;
        }
    }
    // The killed member comes back and catches up.
    zk.restart(leader);
    zk.wait_quorum(3, Duration::from_secs(60));
}
