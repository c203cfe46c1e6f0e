//! Prefix locks and leader election against a real ZooKeeper.

use std::time::Duration;

use atlantis_common::zk::{LockError, LockHolder, LockKey};
use atlantis_testkit::{ZooKeeper, eventually};

use crate::zk::client;

fn key(s: &[&str]) -> LockKey {
    LockKey::new(s.iter().copied()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefix_locks_exclude_each_other() {
    let zk = ZooKeeper::shared();
    let a = client(zk, "locks").await;
    let b = client(zk, "locks").await;
    let c = client(zk, "locks").await;

    // Two clients race for app/env while a third goes for app: exactly one of the three wins.
    let (k1, k2) = (key(&["hello", "prod"]), key(&["hello"]));
    let (ha, hb, hc) = (
        LockHolder::new("a", "deploy"),
        LockHolder::new("b", "deploy"),
        LockHolder::new("c", "teardown"),
    );
    let (ra, rb, rc) = tokio::join!(
        a.try_lock(&k1, &ha),
        b.try_lock(&k1, &hb),
        c.try_lock(&k2, &hc)
    );
    let won: Vec<bool> = vec![ra.is_ok(), rb.is_ok(), rc.is_ok()];
    assert_eq!(
        won.iter().filter(|w| **w).count(),
        1,
        "exactly one winner: {won:?}"
    );
    for r in [&ra, &rb, &rc] {
        if let Err(e) = r {
            assert!(matches!(e, LockError::Conflict { .. }), "{e}");
        }
    }
    drop((ra, rb, rc));
    // Guards dropped: released in the background. Now take them in turn.
    let g = a
        .lock(
            &key(&["hello", "prod"]),
            &LockHolder::new("a", "deploy"),
            Duration::from_secs(5),
        )
        .await
        .unwrap();
    let e = c
        .try_lock(&key(&["hello"]), &LockHolder::new("c", "teardown"))
        .await
        .unwrap_err();
    match &e {
        LockError::Conflict { held, holder, .. } => {
            assert_eq!(held, "hello/prod");
            assert_eq!(holder.owner, "a");
        }
        other => panic!("{other}"),
    }
    assert!(e.to_string().contains("held by a (deploy)"), "{e}");
    // Other envs of another app are independent; a sibling env is too.
    let other = b
        .try_lock(&key(&["hello", "staging"]), &LockHolder::new("b", "deploy"))
        .await
        .unwrap();
    let apple = c
        .try_lock(&key(&["hello-world"]), &LockHolder::new("c", "deploy"))
        .await
        .unwrap();
    assert!(g.is_held().await.unwrap());
    g.release().await.unwrap();
    other.release().await.unwrap();
    let t = c
        .lock(
            &key(&["hello"]),
            &LockHolder::new("c", "teardown"),
            Duration::from_secs(5),
        )
        .await
        .unwrap();
    t.release().await.unwrap();
    apple.release().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lock_is_released_when_its_session_expires() {
    let zk = ZooKeeper::shared();
    let a = client(zk, "locks-expire").await;
    let b = client(zk, "locks-expire").await;
    let g = a
        .try_lock(&key(&["app", "env"]), &LockHolder::new("a", "deploy"))
        .await
        .unwrap();
    assert!(
        b.try_lock(&key(&["app"]), &LockHolder::new("b", "teardown"))
            .await
            .is_err()
    );
    // b waits; a's session dies; b gets the lock without anyone releasing it.
    let waiter = {
        let b = b.clone();
        tokio::spawn(async move {
            b.lock(
                &key(&["app"]),
                &LockHolder::new("b", "teardown"),
                Duration::from_secs(20),
            )
            .await
        })
    };
    a.expire_session().await.unwrap();
    let got = waiter
        .await
        .unwrap()
        .expect("lock after the holder's session expired");
    assert!(got.is_held().await.unwrap());
    assert!(
        !g.is_held().await.unwrap(),
        "the old guard knows it lost the lock"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_election_fails_over() {
    let zk = ZooKeeper::shared();
    let a = client(zk, "election").await;
    let b = client(zk, "election").await;
    let path = a.layout().manager_leader();
    let la = a.campaign(&path, "manager-a").await.unwrap();
    assert!(la.is_leader().await);
    assert_eq!(b.leader(&path).await.unwrap().as_deref(), Some("manager-a"));
    let candidate = {
        let b = b.clone();
        let path = path.clone();
        tokio::spawn(async move { b.campaign(&path, "manager-b").await })
    };
    // b's campaign is queued behind a: its session watches the leader node a holds. From then on only a
    // change of that node can let b through.
    let b_session = b.session_id().unwrap();
    eventually(
        Duration::from_secs(10),
        "b's campaign to watch the leader node",
        || async { zk.watchers(&path).contains(&b_session).then_some(()) },
    )
    .await;
    assert!(!candidate.is_finished(), "b must not lead while a does");
    assert!(la.is_leader().await);
    assert_eq!(b.leader(&path).await.unwrap().as_deref(), Some("manager-a"));
    // a's session expires: a learns it lost, b takes over.
    a.expire_session().await.unwrap();
    tokio::time::timeout(Duration::from_secs(10), la.lost())
        .await
        .expect("a notices it lost leadership");
    let lb = tokio::time::timeout(Duration::from_secs(15), candidate)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(lb.is_leader().await);
    assert_eq!(a.leader(&path).await.unwrap().as_deref(), Some("manager-b"));
    // Resigning hands over again.
    let again = {
        let a = a.clone();
        let path = path.clone();
        tokio::spawn(async move { a.campaign(&path, "manager-a").await })
    };
    lb.resign().await.unwrap();
    let la2 = tokio::time::timeout(Duration::from_secs(10), again)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(la2.id(), "manager-a");
}
