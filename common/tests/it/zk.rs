//! The coordination layer against a real ZooKeeper: CAS, ephemerals, watches, transactions, session loss.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use atlantis_common::zk::{Coord, CoordError, ZkConfig};
use atlantis_testkit::{ZooKeeper, eventually};
use serde::{Deserialize, Serialize};

/// A client of the shared server, rooted under a root no other test uses.
pub async fn client(zk: &ZooKeeper, root: &str) -> Coord {
    static N: AtomicU64 = AtomicU64::new(0);
    let _ = N.fetch_add(1, Ordering::Relaxed);
    let mut cfg = ZkConfig::new(zk.connect_string(), "test".parse().unwrap());
    cfg.session_timeout = Duration::from_secs(3);
    cfg.root = Some(format!("/t/{root}"));
    Coord::connect(cfg).await.expect("connect to ZooKeeper")
}

/// The next item of a watch stream, within 5 s.
async fn next<T>(rx: &mut tokio::sync::mpsc::Receiver<T>) -> T {
    tokio::time::timeout(Duration::from_secs(5), rx.recv())
        .await
        .expect("watch item within 5 s")
        .expect("watch running")
}

/// The counter a watched node holds.
fn n_of(item: Option<atlantis_common::zk::NodeData>) -> u64 {
    serde_json::from_slice::<Counter>(&item.expect("node present").data)
        .unwrap()
        .n
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Counter {
    version: u32,
    n: u64,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compare_and_set_detects_conflicts() {
    let zk = ZooKeeper::shared();
    let c = client(zk, "cas").await;
    let p = format!("{}/apps/hello", c.layout().root());
    let v0 = c.create(&p, &Counter { version: 1, n: 0 }).await.unwrap();
    assert!(matches!(
        c.create(&p, &Counter { version: 1, n: 9 }).await,
        Err(CoordError::Exists { .. })
    ));
    let read = c.get::<Counter>(&p).await.unwrap().unwrap();
    assert_eq!(read.version, v0);
    let v1 = c
        .set(&p, &Counter { version: 1, n: 1 }, Some(v0))
        .await
        .unwrap();
    assert_eq!(v1, v0 + 1);
    // A writer holding the old version loses, and the node keeps the winner's value.
    let stale = c.set(&p, &Counter { version: 1, n: 42 }, Some(v0)).await;
    assert!(
        matches!(stale, Err(CoordError::Conflict { .. })),
        "{stale:?}"
    );
    assert_eq!(c.get::<Counter>(&p).await.unwrap().unwrap().value.n, 1);

    // Concurrent read-modify-write loops never lose an increment.
    let tasks: Vec<_> = (0..10)
        .map(|_| {
            let c = c.clone();
            let p = p.clone();
            tokio::spawn(async move {
                for _ in 0..5 {
                    c.update::<Counter, _>(&p, |cur| {
                        cur.map(|x| Counter {
                            version: 1,
                            n: x.n + 1,
                        })
                    })
                    .await
                    .unwrap();
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(c.get::<Counter>(&p).await.unwrap().unwrap().value.n, 51);

    // Bad payloads are reported with their path, not silently defaulted.
    c.put(
        &format!("{}/apps/junk", c.layout().root()),
        &"not a counter",
    )
    .await
    .unwrap();
    let e = c
        .get::<Counter>(&format!("{}/apps/junk", c.layout().root()))
        .await
        .unwrap_err();
    assert!(
        e.to_string().contains("apps/junk: invalid JSON payload"),
        "{e}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transactions_are_all_or_nothing() {
    let zk = ZooKeeper::shared();
    let c = client(zk, "txn").await;
    let root = c.layout().root().to_owned();
    let a = format!("{root}/a");
    let b = format!("{root}/b");
    let v = c.create(&a, &1).await.unwrap();
    // The check fails (stale version), so b must not be created and a must not change.
    let r = c
        .txn()
        .set(&a, &2, Some(v))
        .create(&b, &3)
        .check(&a, v)
        .commit()
        .await;
    match r {
        Err(CoordError::Txn { index, source }) => {
            assert_eq!(index, 2);
            assert!(matches!(*source, CoordError::Conflict { .. }));
        }
        other => panic!("expected a failed transaction, got {other:?}"),
    }
    assert!(c.get::<i32>(&b).await.unwrap().is_none());
    assert_eq!(c.get::<i32>(&a).await.unwrap().unwrap().value, 1);
    let ok = c
        .txn()
        .set(&a, &2, Some(v))
        .create(&b, &3)
        .commit()
        .await
        .unwrap();
    assert_eq!(ok.len(), 2);
    assert_eq!(c.get::<i32>(&b).await.unwrap().unwrap().value, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ephemeral_goes_with_its_session() {
    let zk = ZooKeeper::shared();
    let owner = client(zk, "eph").await;
    let observer = client(zk, "eph").await;
    let p = owner.layout().supervisor(&"host-1".parse().unwrap());
    let reg = owner
        .register_ephemeral(&p, &Counter { version: 1, n: 7 })
        .await
        .unwrap();
    assert_eq!(
        observer.get::<Counter>(&p).await.unwrap().unwrap().value.n,
        7
    );
    reg.update(&Counter { version: 1, n: 8 }).await.unwrap();
    assert_eq!(
        observer.get::<Counter>(&p).await.unwrap().unwrap().value.n,
        8
    );
    let stat = observer.stat(&p).await.unwrap().unwrap();
    assert_eq!(stat.ephemeral_owner, owner.session_id().unwrap());
    owner.close();
    eventually(
        Duration::from_secs(10),
        "ephemeral node removed",
        || async { observer.stat(&p).await.unwrap().is_none().then_some(()) },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_and_child_watches_fire() {
    let zk = ZooKeeper::shared();
    let c = client(zk, "watch").await;
    let writer = client(zk, "watch").await;
    let node = format!("{}/releases/hello/prod", c.layout().root());
    let dir = format!("{}/instances/hello/prod", c.layout().root());
    let mut data = c.watch_data(&node);
    let mut kids = c.watch_children(&dir);

    assert_eq!(next(&mut data).await, None, "first item: absent");
    assert_eq!(next(&mut kids).await, Vec::<String>::new());

    writer
        .create(&node, &Counter { version: 1, n: 1 })
        .await
        .unwrap();
    assert_eq!(n_of(next(&mut data).await), 1, "created");
    writer
        .set(&node, &Counter { version: 1, n: 2 }, None)
        .await
        .unwrap();
    assert_eq!(n_of(next(&mut data).await), 2, "changed");

    writer.create_raw(&format!("{dir}/b"), b"").await.unwrap();
    assert_eq!(next(&mut kids).await, vec!["b".to_string()]);
    writer.create_raw(&format!("{dir}/a"), b"").await.unwrap();
    assert_eq!(
        next(&mut kids).await,
        vec!["a".to_string(), "b".to_string()]
    );
    writer.delete(&node, None).await.unwrap();
    assert_eq!(next(&mut data).await, None, "deleted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_session_is_replaced_and_watches_rearm() {
    let zk = ZooKeeper::shared();
    let c = client(zk, "expire").await;
    let writer = client(zk, "expire").await;
    let p = c.layout().supervisor(&"host-9".parse().unwrap());
    let node = format!("{}/envs/prod", c.layout().root());
    let _reg = c
        .register_ephemeral(&p, &Counter { version: 1, n: 1 })
        .await
        .unwrap();
    let mut data = c.watch_data(&node);
    assert_eq!(next(&mut data).await, None);
    let old_session = c.session_id().unwrap();
    let mut status = c.status();

    c.expire_session().await.unwrap();
    tokio::time::timeout(
        Duration::from_secs(15),
        status.wait_for(|s| s.epoch == 1 && s.connected),
    )
    .await
    .unwrap()
    .unwrap();
    assert_ne!(c.session_id().unwrap(), old_session);
    // The registration is back, owned by the new session.
    eventually(Duration::from_secs(10), "ephemeral restored", || async {
        writer
            .stat(&p)
            .await
            .unwrap()
            .filter(|s| s.ephemeral_owner == c.session_id().unwrap())
            .map(|_| ())
    })
    .await;
    // The data watch was re-armed on the new session.
    writer
        .create(&node, &Counter { version: 1, n: 5 })
        .await
        .unwrap();
    assert_eq!(n_of(next(&mut data).await), 5, "created");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn survives_a_zookeeper_restart() {
    // Its own server: this test stops it for longer than the session timeout.
    let mut zk = ZooKeeper::start();
    let mut cfg = ZkConfig::new(zk.connect_string(), "test".parse().unwrap());
    cfg.session_timeout = Duration::from_secs(2);
    let c = Coord::connect(cfg).await.unwrap();
    let p = c.layout().supervisor(&"host-r".parse().unwrap());
    let _reg = c
        .register_ephemeral(&p, &Counter { version: 1, n: 3 })
        .await
        .unwrap();
    let mut status = c.status();

    zk.kill();
    tokio::time::timeout(Duration::from_secs(10), status.wait_for(|s| !s.connected))
        .await
        .unwrap()
        .unwrap();
    // Out for longer than the session timeout: the client gives the session up.
    // Wait until the client has given the session up (1.4 x the session timeout without an answer).
    tokio::time::timeout(Duration::from_secs(30), status.wait_for(|s| s.replacing))
        .await
        .expect("session given up while ZooKeeper is down")
        .unwrap();
    zk.restart();
    tokio::time::timeout(
        Duration::from_secs(30),
        status.wait_for(|s| s.connected && s.epoch >= 1),
    )
    .await
    .unwrap()
    .unwrap();
    let me = c.session_id().unwrap();
    eventually(
        Duration::from_secs(15),
        "registration back under the new session",
        || async {
            c.stat(&p)
                .await
                .ok()
                .flatten()
                .filter(|s| s.ephemeral_owner == me)
                .map(|_| ())
        },
    )
    .await;
    assert_eq!(c.get::<Counter>(&p).await.unwrap().unwrap().value.n, 3);
}
