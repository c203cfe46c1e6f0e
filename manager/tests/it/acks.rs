//! Routers acknowledge: `routing::acks::wait_generation` counts the routers serving a switch and names a
//! paused one; `wait_drained` returns once no router has anything open to removed backends. Real
//! ZooKeeper, real routers (the router library, each on a runtime of its own).

use std::time::Duration;

use atlantis_common::api::manager::{InstanceRecord, InstanceState};
use atlantis_common::zk::{Coord, RouterKind, ZkConfig};
use atlantis_manager::routing::{self, NewBackend, Publish, ReleaseWrite, Route, acks};
use atlantis_testkit::ZooKeeper;

use crate::support::{Router, unique};

fn instance(cid: &str) -> InstanceRecord {
    InstanceRecord {
        version: 1,
        container_id: cid.parse().unwrap(),
        app: "hello".parse().unwrap(),
        env: "prod".parse().unwrap(),
        sha: "1a2b3c4d".parse().unwrap(),
        host: "host-a".parse().unwrap(),
        zone: "zone-a".parse().unwrap(),
        backend: None,
        state: InstanceState::Starting,
        release: 1,
        cpu_millis: 250,
        memory_mb: 64,
    }
}

/// A router on a thread and runtime of its own, which the test can freeze as SIGSTOP would: its
/// ZooKeeper client, tree cache and control loop stop (its session lives on, within the timeout).
struct Pausable {
    pause: tokio::sync::mpsc::UnboundedSender<(
        std::sync::mpsc::Receiver<()>,
        std::sync::mpsc::Sender<()>,
    )>,
    _thread: std::thread::JoinHandle<()>,
}

impl Pausable {
    fn start(zk: ZkConfig, host: &'static str) -> Pausable {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(
            std::sync::mpsc::Receiver<()>,
            std::sync::mpsc::Sender<()>,
        )>();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let _router = Router::start(
                    zk,
                    RouterKind::External,
                    "zone-a",
                    host,
                    std::net::Ipv4Addr::LOCALHOST,
                )
                .await;
                while let Some((resume, frozen)) = rx.recv().await {
                    // Blocks the whole runtime until resumed.
                    let _ = frozen.send(());
                    let _ = resume.recv();
                }
            });
        });
        Pausable {
            pause: tx,
            _thread: thread,
        }
    }

    /// Freezes the router until the returned sender is used (or dropped).
    fn pause(&self) -> std::sync::mpsc::Sender<()> {
        let (tx, rx) = std::sync::mpsc::channel();
        let (frozen_tx, frozen) = std::sync::mpsc::channel();
        self.pause.send((rx, frozen_tx)).unwrap();
        frozen
            .recv_timeout(Duration::from_secs(10))
            .expect("the router's runtime froze");
        tx
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_generation_names_a_paused_router_and_wait_drained_sees_the_drain() {
    let zk = ZooKeeper::shared();
    let mut zc = ZkConfig::new(zk.connect_string(), "test".parse().unwrap());
    zc.session_timeout = Duration::from_secs(10);
    zc.root = Some(format!("/mgr-acks-{}", unique()));
    let coord = Coord::connect(zc.clone()).await.unwrap();
    let (app, env) = ("hello".parse().unwrap(), "prod".parse().unwrap());
    let route = Route {
        kind: RouterKind::External,
        publish: Publish::External {
            trie: "apps".into(),
            domain: "apps.test".into(),
        },
    };
    let l = coord.layout();
    let cids = ["hello-1a2b3c4-prod-aaaaaa", "hello-1a2b3c4-prod-bbbbbb"];
    for cid in cids {
        let rec = instance(cid);
        coord
            .create(&l.instance(&app, &env, &rec.container_id), &rec)
            .await
            .unwrap();
    }
    let a = Pausable::start(zc.clone(), "router-a");
    let b = Pausable::start(zc.clone(), "router-b");
    let kind = RouterKind::External;
    let switch = |cid: &str, backend: &str| NewBackend {
        backend: backend.into(),
        instance: instance(cid),
    };
    let g1 = routing::switch_in(
        &coord,
        &route,
        &app,
        &env,
        &[switch(cids[0], "127.0.0.1:1")],
        ReleaseWrite::Keep,
        None,
    )
    .await
    .unwrap();
    assert!(g1 >= 1);
    let acks = acks::wait_generation(&coord, kind, g1, Duration::from_secs(15)).await;
    assert_eq!(
        (acks.on, acks.of, acks.lagging.clone()),
        (2, 2, vec![]),
        "{acks:?}"
    );
    // Router b freezes; the next switch is served by a alone, and b is named.
    let resume = b.pause();
    let g2 = routing::switch_in(
        &coord,
        &route,
        &app,
        &env,
        &[switch(cids[1], "127.0.0.1:2")],
        ReleaseWrite::Keep,
        None,
    )
    .await
    .unwrap();
    assert!(g2 > g1);
    let started = std::time::Instant::now();
    let acks = acks::wait_generation(&coord, kind, g2, Duration::from_secs(1)).await;
    let waited = started.elapsed();
    assert_eq!((acks.on, acks.of), (1, 2), "{acks:?}");
    assert_eq!(acks.lagging, [format!("zone-a/router-b (on {g1})")]);
    assert!(
        waited >= Duration::from_secs(1) && waited < Duration::from_secs(3),
        "{waited:?}"
    );
    // Resumed, it catches up.
    resume.send(()).unwrap();
    let acks = acks::wait_generation(&coord, kind, g2, Duration::from_secs(15)).await;
    assert_eq!((acks.on, acks.of), (2, 2), "{acks:?}");
    // A removal nothing is using drains at once, once both routers serve it.
    let g3 = routing::remove_backends(&coord, kind, &app, &env, &["127.0.0.1:1".into()])
        .await
        .unwrap();
    assert!(g3 > g2);
    let d = acks::wait_drained(
        &coord,
        kind,
        g3,
        &["127.0.0.1:1".into()],
        Duration::from_secs(15),
    )
    .await;
    assert!(
        !d.timed_out && d.remaining.is_empty() && d.lagging.is_empty(),
        "{d:?}"
    );
    assert!(d.took < Duration::from_secs(2), "{d:?}");
    assert!(d.summary().starts_with("drained in "), "{}", d.summary());
    drop(a);
}
