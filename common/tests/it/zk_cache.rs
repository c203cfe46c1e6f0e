//! TreeCache against a real ZooKeeper: live edits, and edits made while ZooKeeper was away.

use std::collections::BTreeMap;
use std::time::Duration;

use atlantis_common::zk::{Coord, Node, TreeCache, TreeEvent, ZkConfig};
use atlantis_testkit::ZooKeeper;
use tokio::sync::mpsc::UnboundedReceiver;

fn apply(map: &mut BTreeMap<String, Node>, ev: TreeEvent) {
    match ev {
        TreeEvent::Reset(m) => *map = m,
        TreeEvent::Upsert { path, node } => {
            map.insert(path, node);
        }
        TreeEvent::Remove { path } => {
            map.remove(&path);
        }
    }
}

/// Applies events until `pred` holds for the mirror, or fails after `secs`.
async fn until(
    rx: &mut UnboundedReceiver<TreeEvent>,
    map: &mut BTreeMap<String, Node>,
    secs: u64,
    what: &str,
    pred: impl Fn(&BTreeMap<String, Node>) -> bool,
) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    while !pred(map) {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(ev)) => apply(map, ev),
            Ok(None) => panic!("cache stopped while waiting for {what}"),
            Err(_) => panic!(
                "timed out waiting for {what}; mirror: {:?}",
                map.keys().collect::<Vec<_>>()
            ),
        }
    }
}

fn data(map: &BTreeMap<String, Node>, k: &str) -> Option<String> {
    map.get(k)
        .map(|n| String::from_utf8_lossy(&n.data).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mirrors_a_subtree_and_catches_up_after_an_outage() {
    let mut zk = ZooKeeper::start();
    let servers = zk.connect_string();
    let cfg = |t: u64| {
        let mut c = ZkConfig::new(servers.clone(), "test".parse().unwrap());
        c.session_timeout = Duration::from_secs(t);
        c
    };
    let reader = Coord::connect(cfg(6)).await.unwrap();
    let root = reader
        .layout()
        .router_config(atlantis_common::zk::RouterKind::External);
    let writer = Coord::connect(cfg(6)).await.unwrap();
    writer
        .create_raw(&format!("{root}/pools/web"), b"p1")
        .await
        .unwrap();
    writer
        .create_raw(&format!("{root}/pools/web/10.0.0.1:80"), b"")
        .await
        .unwrap();

    let mut rx = TreeCache::start(reader.clone(), &root);
    let mut map = BTreeMap::new();
    until(&mut rx, &mut map, 10, "initial state", |m| {
        m.contains_key("pools/web/10.0.0.1:80")
    })
    .await;
    assert_eq!(data(&map, "pools/web").as_deref(), Some("p1"));

    // Live edits: create, change, delete.
    writer
        .create_raw(&format!("{root}/rules/r1"), b"host=a")
        .await
        .unwrap();
    until(&mut rx, &mut map, 5, "rule created", |m| {
        data(m, "rules/r1").as_deref() == Some("host=a")
    })
    .await;
    writer
        .set_raw(&format!("{root}/rules/r1"), b"host=b", None)
        .await
        .unwrap();
    until(&mut rx, &mut map, 5, "rule changed", |m| {
        data(m, "rules/r1").as_deref() == Some("host=b")
    })
    .await;
    writer
        .delete(&format!("{root}/pools/web/10.0.0.1:80"), None)
        .await
        .unwrap();
    until(&mut rx, &mut map, 5, "backend removed", |m| {
        !m.contains_key("pools/web/10.0.0.1:80")
    })
    .await;

    // A short outage within the session timeout: the reader keeps its session. Edits are made through a
    // server restart by the writer once it is back, before the reader reconnects or after; either way the
    // reader must converge.
    zk.kill();
    let mut st = reader.status();
    tokio::time::timeout(Duration::from_secs(10), st.wait_for(|s| !s.connected))
        .await
        .unwrap()
        .unwrap();
    zk.restart();
    // The writer may race the reader's reconnection: write as soon as the writer can.
    let w = writer.clone();
    let r2 = root.clone();
    let edits = tokio::spawn(async move {
        for _ in 0..200 {
            if w.create_raw(&format!("{r2}/rules/r2"), b"path=/x")
                .await
                .is_ok()
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        w.set_raw(&format!("{r2}/rules/r1"), b"host=c", None)
            .await
            .unwrap();
        w.delete(&format!("{r2}/pools/web"), None).await.unwrap();
    });
    edits.await.unwrap();
    until(&mut rx, &mut map, 30, "edits made around the outage", |m| {
        data(m, "rules/r2").as_deref() == Some("path=/x")
            && data(m, "rules/r1").as_deref() == Some("host=c")
            && !m.contains_key("pools/web")
    })
    .await;

    // A long outage: the reader's session expires; edits made by a new writer while the reader is away
    // show up through the Reset after its new session.
    drop(writer);
    zk.kill();
    // Wait until the client has given the session up (1.4 x the session timeout without an answer).
    tokio::time::timeout(Duration::from_secs(30), st.wait_for(|s| s.replacing))
        .await
        .expect("session given up while ZooKeeper is down")
        .unwrap();
    zk.restart();
    let writer = Coord::connect(cfg(6)).await.unwrap();
    writer
        .create_raw(&format!("{root}/pools/api"), b"p2")
        .await
        .unwrap();
    writer
        .delete(&format!("{root}/rules/r2"), None)
        .await
        .unwrap();
    until(
        &mut rx,
        &mut map,
        40,
        "edits made while the reader's session was dead",
        |m| data(m, "pools/api").as_deref() == Some("p2") && !m.contains_key("rules/r2"),
    )
    .await;
    assert!(
        reader.status().borrow().epoch >= 1,
        "the reader went through a new session"
    );
}
