//! An app calls an internal app through its `ATLANTIS_DEP_<NAME>` address, from inside its container:
//! the address is its zone's internal router (the root end of the zone's veth, never a loopback
//! address), and the supervisor's firewall lets exactly that address and port through. Another internal
//! app's port on the same router stays refused to the container, while the host reaches it (control).
//! Runs on the cluster of `deploy::releases_end_to_end`; apps are registered with the admin token.

use std::time::Duration;

use atlantis_common::api::manager::TaskState;
use atlantis_common::zk::RouterKind;
use reqwest::Method;
use serde_json::json;

use crate::support::Cluster;

const SHA: &str = "4444444ddddddd";
const ONE: &str = "dep-one";
const TWO: &str = "dep-two";
const CALLER: &str = "dep-caller";

/// Serves `/who` with `body`.
fn serving(body: &str) -> serde_json::Value {
    json!({"sha": SHA, "start_timeout_ms": 20000, "command": ["/bin/sh", "-c",
        format!("echo {body} > /www/who; exec httpd -f -p 8080 -h /www")]})
}

/// `docker exec <container> <argv>` on `host`'s engine: exit success, stdout, stderr.
async fn exec(c: &Cluster, host: usize, container: &str, argv: &[&str]) -> (bool, String, String) {
    let mut cmd = c.hosts[host].docker.docker();
    cmd.arg("exec").arg(container).args(argv);
    cmd.stdin(std::process::Stdio::null());
    let out = tokio::task::spawn_blocking(move || cmd.output().expect("run docker exec"))
        .await
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `GET /who` from inside `container` to `target` (`ip:port`, or `$VAR` naming one in the container's
/// environment) with busybox `nc` (Debian's static busybox `wget` crashes): exit success, the raw
/// answer, stderr (`nc: can't connect to remote host (...): Connection refused` on a refusal). The
/// request is written through a FIFO held open until `nc` is done: a client that half-closes after its
/// request is taken by the router for one that left (`router/src/fast/exchange.rs`), and gets nothing.
async fn get_in(c: &Cluster, host: usize, container: &str, target: &str) -> (bool, String, String) {
    let script = format!(
        "t={target}; f=/dev/shm/atl-get.$$; mkfifo \"$f\" || exit 2; \
         nc \"${{t%:*}}\" \"${{t##*:}}\" <\"$f\" & n=$!; \
         {{ printf 'GET /who HTTP/1.0\\r\\nHost: dep\\r\\n\\r\\n'; sleep 10; }} >\"$f\" 2>/dev/null & s=$!; \
         wait $n; r=$?; kill $s 2>/dev/null; rm -f \"$f\"; exit $r"
    );
    exec(c, host, container, &["sh", "-c", &script]).await
}

pub async fn internal_dependencies(c: &Cluster) {
    let l = c.coord.layout();
    for (name, internal, deps) in [
        (ONE, true, json!([])),
        (TWO, true, json!([])),
        (CALLER, false, json!([])),
    ] {
        let (s, v) = c
            .call(
                Method::POST,
                "/v1/apps",
                Some(json!({"name": name, "internal": internal, "dependencies": deps})),
            )
            .await;
        assert_eq!(s, 201, "{v}");
        c.publish(name, SHA).await;
    }
    // The caller declares the first internal app once it is granted (dep-one has no team: a superuser
    // grants); dep-two it does not declare, so its port stays closed.
    let (s, v) = c
        .call(
            Method::PUT,
            &format!("/v1/dependencies/{ONE}/grants/{CALLER}"),
            None,
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let (s, v) = c
        .call(
            Method::PUT,
            &format!("/v1/apps/{CALLER}"),
            Some(json!({"name": CALLER, "dependencies": [ONE]})),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    for (app, body) in [(ONE, "one-answers"), (TWO, "two-answers")] {
        let t = c
            .run_task(&format!("/v1/apps/{app}/envs/prod/deploy"), serving(body))
            .await;
        assert_eq!(t.state, TaskState::Done, "{t:?}");
    }
    let ports: serde_json::Value = c
        .coord
        .get(&l.stable_ports(RouterKind::Internal))
        .await
        .unwrap()
        .unwrap()
        .value;
    let port = |app: &str| ports["ports"][format!("{app}.prod")].as_u64().unwrap() as u16;
    let (p1, p2) = (port(ONE), port(TWO));
    assert_ne!(p1, p2, "{ports}");
    let t = c
        .run_task(
            &format!("/v1/apps/{CALLER}/envs/prod/deploy"),
            serving("caller"),
        )
        .await;
    assert_eq!(t.state, TaskState::Done, "{t:?}");

    let prefix = format!("{CALLER}-");
    for (i, h) in c.hosts.iter().enumerate() {
        let router_ip = h.docker.host_ip().to_string();
        let containers: Vec<String> = h
            .containers()
            .into_iter()
            .filter(|n| n.starts_with(&prefix))
            .collect();
        assert!(!containers.is_empty(), "no {CALLER} container on host {i}");
        for ct in &containers {
            // The address is the zone's internal router, where the container can route to.
            let (ok, env, err) = exec(c, i, ct, &["sh", "-c", "echo $ATLANTIS_DEP_DEP_ONE"]).await;
            assert!(ok, "{err}");
            let dep = env.trim().to_owned();
            assert_eq!(dep, format!("{router_ip}:{p1}"), "in {ct}");

            // From inside the container: the dependency answers with the first app's body.
            let deadline = std::time::Instant::now() + Duration::from_secs(30);
            loop {
                let (ok, out, err) = get_in(c, i, ct, "$ATLANTIS_DEP_DEP_ONE").await;
                if ok && out.starts_with("HTTP/1.") && out.trim_end().ends_with("one-answers") {
                    break;
                }
                assert!(
                    std::time::Instant::now() < deadline,
                    "{ct} cannot call its dependency {dep}: {out:?} {err}"
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }

            // The other internal app's port on the same router address: refused by the firewall.
            let other = format!("{router_ip}:{p2}");
            let (ok, out, err) = get_in(c, i, ct, &other).await;
            assert!(
                !ok && !out.contains("two-answers"),
                "{ct} reached {other}: {out}"
            );
            assert!(
                err.contains("can't connect") && err.contains("refused"),
                "{ct} -> {other}: not a refused connection: {err}"
            );
            // Control: the host reaches that port on that address, so only the firewall refused it.
            let r = c
                .http
                .get(format!("http://{other}/who"))
                .send()
                .await
                .expect("host reaches the router");
            assert_eq!(r.text().await.unwrap().trim(), "two-answers");
            // And the granted port still answers from the same container right after.
            let (ok, out, err) = get_in(c, i, ct, &dep).await;
            assert!(ok && out.trim_end().ends_with("one-answers"), "{out} {err}");
        }
    }

    for app in [CALLER, ONE, TWO] {
        let t = c
            .run_task(&format!("/v1/apps/{app}/teardown"), json!({}))
            .await;
        assert_eq!(t.state, TaskState::Done, "{t:?}");
        let (s, _) = c
            .call(Method::DELETE, &format!("/v1/apps/{app}"), None)
            .await;
        assert_eq!(s, 204);
    }
    assert!(c.all_containers().is_empty(), "{:?}", c.all_containers());
}
