//! The contract every [`HostApi`] keeps, written once and run against the real supervisor client (on a
//! real dockerd, `manager/tests/ha`) and against [`super::FakeHost`] (unit tests).

use atlantis_common::ContainerId;
use atlantis_common::api::supervisor::{ContainerInfo, ContainerSpec, ContainerState, Dependency};

use super::HostApi;

fn fresh(template: &ContainerSpec) -> ContainerSpec {
    let mut s = template.clone();
    s.container_id = ContainerId::generate(&s.app, &s.sha, &s.env);
    s
}

/// Runs the contract on `host`, which must run none of the containers of `template`'s app. `template` is
/// a valid spec that starts and passes its health check there; `memory_over` is more memory than the
/// host has. Panics with what broke.
pub async fn check(host: &dyn HostApi, template: &ContainerSpec, memory_over: u64) {
    let mine = |list: &[atlantis_common::api::supervisor::ContainerInfo]| {
        let mut v: Vec<ContainerId> = list
            .iter()
            .filter(|c| c.app == template.app)
            .map(|c| c.container_id.clone())
            .collect();
        v.sort();
        v
    };
    assert_eq!(
        mine(&host.list().await.unwrap()),
        Vec::<ContainerId>::new(),
        "starts empty"
    );

    // A deploy answers with the running, healthy container and its published port.
    let a = fresh(template);
    let info = host.deploy(&a).await.expect("a valid spec deploys");
    assert_eq!(info.container_id, a.container_id);
    assert_eq!((&info.app, &info.sha, &info.env), (&a.app, &a.sha, &a.env));
    assert_eq!(info.state, ContainerState::Healthy);
    for p in &a.ports {
        let b = info
            .ports
            .iter()
            .find(|b| b.container_port == *p)
            .unwrap_or_else(|| panic!("port {p} is published: {:?}", info.ports));
        assert_ne!(b.host_port, 0);
    }
    assert_eq!(
        (info.cpu_millis, info.memory_mb),
        (a.cpu_millis, a.memory_mb)
    );
    assert_eq!(
        mine(&host.list().await.unwrap()),
        vec![a.container_id.clone()]
    );

    // The same ID twice is refused, and changes nothing.
    let e = host.deploy(&a).await.expect_err("a duplicate is refused");
    assert_eq!(e.code.as_deref(), Some("duplicate"), "{e}");
    // An invalid spec is refused with its code.
    let mut bad = fresh(template);
    bad.cpu_millis = 0;
    let e = host
        .deploy(&bad)
        .await
        .expect_err("an invalid spec is refused");
    assert_eq!(e.code.as_deref(), Some("invalid_spec"), "{e}");
    // More memory than the host has is refused as no capacity.
    let mut big = fresh(template);
    big.memory_mb = memory_over;
    let e = host.deploy(&big).await.expect_err("too big is refused");
    assert_eq!(e.code.as_deref(), Some("no_capacity"), "{e}");
    assert_eq!(
        mine(&host.list().await.unwrap()),
        vec![a.container_id.clone()]
    );

    // A second container gets a different host port.
    let b = fresh(template);
    let info_b = host.deploy(&b).await.expect("a second container deploys");
    assert_ne!(
        info.ports, info_b.ports,
        "each container has its own host ports"
    );

    // A container's dependencies are replaced in place: the answer and the listing show the new set;
    // an unknown container is `not_found`, an invalid set `invalid_spec`, and neither changes anything.
    let dep = Dependency {
        name: "contract-db".into(),
        address: std::net::Ipv4Addr::new(192, 0, 2, 7),
        port: 5432,
    };
    let changed = host
        .set_dependencies(&b.container_id, std::slice::from_ref(&dep))
        .await
        .expect("dependencies of a running container are replaced");
    assert_eq!(changed.dependencies, vec![dep.clone()]);
    let listed = |list: Vec<ContainerInfo>| {
        list.into_iter()
            .find(|c| c.container_id == b.container_id)
            .map(|c| c.dependencies)
    };
    assert_eq!(listed(host.list().await.unwrap()), Some(vec![dep.clone()]));
    let e = host
        .set_dependencies(&fresh(template).container_id, &[])
        .await
        .expect_err("an unknown container is refused");
    assert_eq!(e.code.as_deref(), Some("not_found"), "{e}");
    let mut bad_dep = dep.clone();
    bad_dep.port = 0;
    let e = host
        .set_dependencies(&b.container_id, &[bad_dep])
        .await
        .expect_err("an invalid dependency is refused");
    assert_eq!(e.code.as_deref(), Some("invalid_spec"), "{e}");
    assert_eq!(listed(host.list().await.unwrap()), Some(vec![dep]));
    host.set_dependencies(&b.container_id, &[])
        .await
        .expect("dependencies can be emptied");
    assert_eq!(listed(host.list().await.unwrap()), Some(Vec::new()));

    // Teardown removes what it names and ignores unknown IDs; a second teardown is a no-op.
    let unknown = fresh(template).container_id;
    let removed = host
        .teardown(&[a.container_id.clone(), unknown])
        .await
        .unwrap();
    assert_eq!(removed, vec![a.container_id.clone()]);
    assert_eq!(
        mine(&host.list().await.unwrap()),
        vec![b.container_id.clone()]
    );
    assert!(
        host.teardown(std::slice::from_ref(&a.container_id))
            .await
            .unwrap()
            .is_empty()
    );
    // The freed room is usable again, under the same ID too.
    host.deploy(&a)
        .await
        .expect("a removed ID can be deployed again");
    let removed = host
        .teardown(&[a.container_id.clone(), b.container_id.clone()])
        .await
        .unwrap();
    assert_eq!(removed.len(), 2);
    assert_eq!(mine(&host.list().await.unwrap()), Vec::<ContainerId>::new());
}

#[cfg(test)]
pub(crate) mod tests {
    use super::super::FakeHost;
    use atlantis_common::ContainerId;
    use atlantis_common::api::supervisor::{ContainerSpec, HealthCheck, Resources};

    /// A spec the fake accepts (the same shape the real contract run uses).
    pub fn template() -> ContainerSpec {
        let (app, sha, env) = (
            "contract".parse().unwrap(),
            "abcdef1234567".parse().unwrap(),
            "test".parse().unwrap(),
        );
        ContainerSpec {
            container_id: ContainerId::generate(&app, &sha, &env),
            app,
            sha,
            env,
            image: "atlantis-test/busybox:1".into(),
            cpu_millis: 100,
            memory_mb: 64,
            ports: vec![8080],
            env_vars: Default::default(),
            config: None,
            dependencies: Vec::new(),
            health: HealthCheck {
                path: "/".into(),
                port: None,
                timeout_ms: 2000,
                start_timeout_ms: 20000,
                interval_ms: 500,
            },
            command: Some(vec![
                "httpd".into(),
                "-f".into(),
                "-p".into(),
                "8080".into(),
            ]),
            read_only_rootfs: false,
            allow_ping: false,
        }
    }

    #[tokio::test]
    async fn the_fake_host_keeps_the_contract() {
        let host = FakeHost::new(
            "fake-1".parse().unwrap(),
            "zone-a".parse().unwrap(),
            Resources {
                slots: 4,
                cpu_millis: 2000,
                memory_mb: 512,
            },
            "10.0.0.1",
        );
        super::check(&host, &template(), 4096).await;
        // Everything it took came back.
        assert_eq!(host.record().free, host.record().capacity);
    }
}
