//! Mutual TLS on the supervisor API: only a client certificate of the cluster CA gets in. No client
//! certificate, a certificate of another CA, or the right token over plain HTTP: refused, nothing done.

use atlantis_common::supervisor_client::SupervisorClient;
use atlantis_common::tls::{client_config, dev_ca};
use atlantis_supervisor::App;
use atlantis_supervisor::config::TlsConfig;

use crate::{Host, TOKEN, init_tracing, spec};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_managers_with_a_cluster_certificate_get_in() {
    init_tracing();
    let host = Host::start("host-t", "zone-t");
    let cluster = dev_ca(&host.dir.path().join("ca"), &[]).unwrap();
    let other = dev_ca(&host.dir.path().join("other-ca"), &[]).unwrap();
    let mut cfg = host.config(None);
    cfg.tls = Some(TlsConfig {
        cert_file: cluster.server.0.clone(),
        key_file: cluster.server.1.clone(),
        client_ca_file: cluster.ca.clone(),
        reload_interval_ms: 1000,
    });
    let app = App::build(cfg).await.expect("supervisor starts");
    let base = format!("https://{}", app.addr);
    let before = host.container_names();
    let s = spec("web", "prod");

    // Refused: no client certificate, a client certificate of another CA (with the right token, too),
    // plain HTTP with the right token.
    let refused = [
        (
            "no client certificate",
            SupervisorClient::with_tls(
                &base,
                TOKEN,
                Some(client_config(&cluster.ca, None).unwrap()),
            ),
        ),
        (
            "another CA's certificate",
            SupervisorClient::with_tls(
                &base,
                TOKEN,
                Some(client_config(&cluster.ca, Some((&other.client.0, &other.client.1))).unwrap()),
            ),
        ),
        (
            "plain HTTP",
            SupervisorClient::new(&format!("http://{}", app.addr), TOKEN),
        ),
    ];
    for (what, client) in refused {
        let client = client.unwrap();
        let e = client.deploy(&s).await.expect_err(what);
        assert!(e.code().is_none(), "{what}: refused before the API: {e}");
        assert!(client.list().await.is_err(), "{what}");
    }
    assert_eq!(host.container_names(), before, "nothing was started");

    // A manager with the cluster's client certificate deploys (no token needed).
    let manager = SupervisorClient::with_tls(
        &base,
        "not-the-token-0123456789",
        Some(client_config(&cluster.ca, Some((&cluster.client.0, &cluster.client.1))).unwrap()),
    )
    .unwrap();
    let info = manager.deploy(&s).await.expect("deploy over mutual TLS");
    assert_eq!(info.container_id, s.container_id);
    assert_eq!(manager.list().await.unwrap().len(), 1);
    // A client that does not trust the supervisor's CA does not talk to it either.
    let distrust = SupervisorClient::with_tls(
        &base,
        TOKEN,
        Some(client_config(&other.ca, Some((&other.client.0, &other.client.1))).unwrap()),
    )
    .unwrap();
    assert!(distrust.list().await.is_err());
    manager
        .teardown(&atlantis_common::api::supervisor::TeardownRequest {
            container_ids: vec![s.container_id.clone()],
            app: None,
            env: None,
        })
        .await
        .expect("teardown over mutual TLS");
    app.shutdown().await;
}
