//! Replacing a running container's dependencies (`PUT /v1/containers/{id}/dependencies`, what the manager
//! calls when a grant is revoked): the container reaches two dependencies and holds a connection to one;
//! the route removes that one; the open connection is cut at once, new ones are refused, the other
//! dependency still answers; a supervisor restart keeps it removed; putting it back opens it again
//! without a redeploy. Bad bodies and unknown containers are refused clearly.

use std::time::{Duration, Instant};

use atlantis_common::supervisor_client::SupervisorClient;
use atlantis_supervisor::App;
use reqwest::Method;

use crate::escape::{echo_server, probe, start_stream, stream_state};
use crate::{Client, Host, TOKEN, dep, init_tracing, spec};

fn refused(r: &Result<String, String>) -> bool {
    r.as_ref().is_err_and(|e| e.contains("refused"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replaced_dependencies_cut_connections_and_survive_a_restart() {
    init_tracing();
    let host = Host::start("host-d", "zone-d");
    let ns_ip = host.docker.ns_ip();
    let _http = host.http_server(ns_ip, 18181, true, "dep-a\n");
    let _echo = echo_server(&host.docker.netns_path(), host.dir.path(), 19001);
    let cfg = host.config(None);
    let app = App::build(cfg.clone()).await.expect("supervisor starts");
    let client = Client::for_app(&app);
    let sup = SupervisorClient::new(&client.base, TOKEN).unwrap();

    let a = dep("kept", ns_ip, 18181);
    let s = dep("revoked", ns_ip, 19001);
    let mut web = spec("web", "prod");
    web.dependencies = vec![a.clone(), s.clone()];
    client.deploy_ok(&web).await;
    let id = web.container_id.clone();
    let cid = id.to_string();
    assert!(probe(&host, &cid, ns_ip, 18181).is_ok());
    let echo = probe(&host, &cid, ns_ip, 19001);
    assert!(
        echo.as_ref().is_err_and(|e| !e.contains("refused")),
        "the echo dependency is reachable (it echoes, it does not speak HTTP): {echo:?}"
    );
    start_stream(&host, &cid, ns_ip, 19001, "/tmp/revoked-stream");
    atlantis_testkit::wait_until(Duration::from_secs(10), "stream flowing", || {
        (stream_state(&host, &cid, "/tmp/revoked-stream").0 > 0).then_some(())
    });

    // Bad input changes nothing.
    let (st, body) = client
        .send(
            Method::PUT,
            &format!("/v1/containers/{cid}/dependencies"),
            Some(r#"{"dependencies":[{"name":"x","address":"10.0.0.1","port":0}]}"#.into()),
        )
        .await;
    assert!(
        st == 400 && body.contains("invalid_spec") && body.contains("dependencies[0].port"),
        "{st} {body}"
    );
    let (st, body) = client
        .send(
            Method::PUT,
            &format!("/v1/containers/{cid}/dependencies"),
            Some(r#"{"deps":[]}"#.into()),
        )
        .await;
    assert!(st == 400 && body.contains("invalid_request"), "{st} {body}");
    let ghost = "ghost-0123456-prod-aaaaaa".parse().unwrap();
    let err = sup.set_dependencies(&ghost, &[]).await.unwrap_err();
    assert_eq!(err.code(), Some("not_found"), "{err}");
    assert!(
        !stream_state(&host, &cid, "/tmp/revoked-stream").1,
        "bad input cut nothing"
    );

    // The revoke.
    let t = Instant::now();
    let info = sup
        .set_dependencies(&id, std::slice::from_ref(&a))
        .await
        .unwrap();
    eprintln!("dependencies replaced in {:?}", t.elapsed());
    assert_eq!(info.dependencies, vec![a.clone()]);
    atlantis_testkit::wait_until(Duration::from_secs(5), "open connection cut", || {
        stream_state(&host, &cid, "/tmp/revoked-stream")
            .1
            .then_some(())
    });
    eprintln!("open connection cut {:?} after the call", t.elapsed());
    let r = probe(&host, &cid, ns_ip, 19001);
    assert!(refused(&r), "new connections refused: {r:?}");
    assert!(probe(&host, &cid, ns_ip, 18181).is_ok(), "the other stays");
    let file = atlantis_supervisor::dependencies::path(&cfg.data_dir, &id);
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&file).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o600, "{}", file.display());

    // A restart rebuilds the same rules (the labels still carry the old set).
    app.shutdown().await;
    let app = App::build(cfg.clone()).await.expect("supervisor restarts");
    let client = Client::for_app(&app);
    let sup = SupervisorClient::new(&client.base, TOKEN).unwrap();
    let info = sup.get(&id).await.unwrap().expect("adopted");
    assert_eq!(info.dependencies, vec![a.clone()]);
    let r = probe(&host, &cid, ns_ip, 19001);
    assert!(refused(&r), "still refused after a restart: {r:?}");
    assert!(probe(&host, &cid, ns_ip, 18181).is_ok());

    // Granted again: open at once, no redeploy.
    sup.set_dependencies(&id, &[a.clone(), s.clone()])
        .await
        .unwrap();
    let again = probe(&host, &cid, ns_ip, 19001);
    assert!(
        again.as_ref().is_err_and(|e| !e.contains("refused")),
        "reachable again: {again:?}"
    );

    let (st, body) = client
        .send(Method::DELETE, &format!("/v1/containers/{cid}"), None)
        .await;
    assert_eq!(st, 200, "{body}");
    assert!(!file.exists(), "the file goes with the container");
    app.shutdown().await;
}
