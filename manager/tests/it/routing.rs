//! The switch transaction against a real ZooKeeper.

use std::time::Duration;

use atlantis_common::api::manager::{InstanceRecord, InstanceState};
use atlantis_common::zk::{Coord, RouterKind, ZkConfig};
use atlantis_manager::routing::{self, NewBackend, Publish, ReleaseWrite, Route};
use atlantis_testkit::ZooKeeper;

use crate::support::unique;

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

/// A backend left in the pool by a container that is gone (its host died, it was removed by hand) sits at
/// the address the supervisor now gives a new container: the switch replaces it instead of failing with
/// "node exists", and the pool names the new container.
#[tokio::test]
async fn a_stale_backend_at_the_new_address_is_replaced() {
    let zk = ZooKeeper::shared();
    let mut cfg = ZkConfig::new(zk.connect_string(), "test".parse().unwrap());
    cfg.session_timeout = Duration::from_secs(6);
    cfg.root = Some(format!("/mgr-routing-{}", unique()));
    let coord = Coord::connect(cfg).await.unwrap();
    let (app, env) = ("hello".parse().unwrap(), "prod".parse().unwrap());
    let route = Route {
        kind: RouterKind::External,
        publish: Publish::External {
            trie: "apps".into(),
            domain: "apps.test".into(),
        },
    };
    let l = coord.layout();
    for cid in ["hello-1a2b3c4-prod-aaaaaa", "hello-1a2b3c4-prod-bbbbbb"] {
        let rec = instance(cid);
        let path = l.instance(&app, &env, &rec.container_id);
        coord.create(&path, &rec).await.unwrap();
    }
    let first = NewBackend {
        backend: "10.1.2.3:42000".into(),
        instance: instance("hello-1a2b3c4-prod-aaaaaa"),
    };
    routing::switch_in(
        &coord,
        &route,
        &app,
        &env,
        &[first],
        ReleaseWrite::Keep,
        None,
    )
    .await
    .unwrap();
    // The first container disappears without its backend being removed; a new one gets its address.
    let second = NewBackend {
        backend: "10.1.2.3:42000".into(),
        instance: instance("hello-1a2b3c4-prod-bbbbbb"),
    };
    routing::switch_in(
        &coord,
        &route,
        &app,
        &env,
        &[second],
        ReleaseWrite::Keep,
        None,
    )
    .await
    .expect("the stale backend is replaced");
    let path = l.pool_backend(
        RouterKind::External,
        &routing::pool_name(&app, &env),
        "10.1.2.3:42000",
    );
    let doc = coord
        .get::<serde_json::Value>(&path)
        .await
        .unwrap()
        .expect("the backend is there");
    assert_eq!(doc.value["container"], "hello-1a2b3c4-prod-bbbbbb");
    let backends = coord
        .children(&l.router_item(
            RouterKind::External,
            atlantis_common::zk::Section::Pools,
            &routing::pool_name(&app, &env),
        ))
        .await
        .unwrap();
    assert_eq!(backends, ["10.1.2.3:42000"]);
}
