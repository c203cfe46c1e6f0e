//! TLS with rustls and the ring provider only (see the workspace note on crypto providers).
//!
//! - [`ReloadingCert`]: a server certificate and key from PEM files, reloaded when the files change (a
//!   broken new pair keeps the old one).
//! - [`server_config`]: a server config, with client certificates required and checked against a CA
//!   (mutual TLS) when one is given.
//! - [`client_config`]: a client config trusting one CA, presenting a client certificate when given.
//! - [`serve`]: an HTTPS accept loop for an axum router (peer address as `ConnectInfo`).
//! - [`dev_ca`]: a development CA with a server and a client certificate (rcgen), for labs and tests.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio_util::sync::CancellationToken;

/// Why TLS material cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file is missing or not the PEM expected.
    #[error("{path}: {message}")]
    File {
        /// The file.
        path: String,
        /// What is wrong.
        message: String,
    },
    /// rustls refused the material.
    #[error("TLS: {0}")]
    Rustls(#[from] rustls::Error),
    /// The client verifier could not be built.
    #[error("client certificate verifier: {0}")]
    Verifier(String),
    /// Certificate generation failed.
    #[error("certificate generation: {0}")]
    Generate(String),
}

fn file_err(path: &Path, message: impl std::fmt::Display) -> TlsError {
    TlsError::File {
        path: path.display().to_string(),
        message: message.to_string(),
    }
}

/// The one crypto provider.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Every certificate of a PEM file (at least one).
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| file_err(path, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_err(path, e))?;
    if certs.is_empty() {
        return Err(file_err(path, "no certificate in the file"));
    }
    Ok(certs)
}

/// The private key of a PEM file.
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| file_err(path, e))
}

/// A root store of the CA certificates in a PEM file.
pub fn load_roots(path: &Path) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for c in load_certs(path)? {
        roots.add(c).map_err(|e| file_err(path, e))?;
    }
    Ok(roots)
}

fn certified(cert: &Path, key: &Path) -> Result<CertifiedKey, TlsError> {
    let chain = load_certs(cert)?;
    let key = load_key(key)?;
    Ok(CertifiedKey::from_der(chain, key, &provider())?)
}

fn mtime(p: &Path) -> Option<SystemTime> {
    std::fs::metadata(p).and_then(|m| m.modified()).ok()
}

/// A server certificate from files, reloaded when they change.
#[derive(Debug)]
pub struct ReloadingCert {
    cert: PathBuf,
    key: PathBuf,
    current: ArcSwap<CertifiedKey>,
    stamp: std::sync::Mutex<(Option<SystemTime>, Option<SystemTime>)>,
}

impl ReloadingCert {
    /// Loads the pair (an error when it is unusable).
    pub fn load(cert: &Path, key: &Path) -> Result<Arc<ReloadingCert>, TlsError> {
        let ck = certified(cert, key)?;
        Ok(Arc::new(ReloadingCert {
            cert: cert.to_owned(),
            key: key.to_owned(),
            current: ArcSwap::from_pointee(ck),
            stamp: std::sync::Mutex::new((mtime(cert), mtime(key))),
        }))
    }

    /// Reloads when either file's modification time changed; true when a new pair is in use. A pair that
    /// does not load keeps the old one (and the error is returned).
    pub fn reload_if_changed(&self) -> Result<bool, TlsError> {
        let now = (mtime(&self.cert), mtime(&self.key));
        let mut stamp = self.stamp.lock().unwrap_or_else(|p| p.into_inner());
        if *stamp == now {
            return Ok(false);
        }
        let ck = certified(&self.cert, &self.key)?;
        self.current.store(Arc::new(ck));
        *stamp = now;
        Ok(true)
    }

    /// Checks the files every `every` until `stop`.
    pub fn watch(self: &Arc<Self>, every: Duration, stop: CancellationToken) {
        let me = self.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(every) => {}
                }
                match me.reload_if_changed() {
                    Ok(true) => {
                        tracing::info!(cert = %me.cert.display(), "TLS certificate reloaded.")
                    }
                    Ok(false) => {}
                    Err(e) => {
                        tracing::warn!(error = %e, "New TLS certificate refused; keeping the old one.")
                    }
                }
            }
        });
    }

    /// The certificate in use (its leaf, DER).
    pub fn leaf(&self) -> CertificateDer<'static> {
        self.current.load().cert[0].clone()
    }
}

impl ResolvesServerCert for ReloadingCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}

/// A server config presenting `cert`; with `client_ca`, every client must present a certificate signed by
/// that CA (the handshake fails otherwise).
pub fn server_config(
    cert: Arc<ReloadingCert>,
    client_ca: Option<&Path>,
) -> Result<Arc<ServerConfig>, TlsError> {
    let builder =
        ServerConfig::builder_with_provider(provider()).with_safe_default_protocol_versions()?;
    let builder = match client_ca {
        Some(ca) => {
            let verifier =
                WebPkiClientVerifier::builder_with_provider(Arc::new(load_roots(ca)?), provider())
                    .build()
                    .map_err(|e| TlsError::Verifier(e.to_string()))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_cert_resolver(cert);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// A client config trusting the CAs of `ca`, presenting `identity` (certificate, key files) when given.
pub fn client_config(
    ca: &Path,
    identity: Option<(&Path, &Path)>,
) -> Result<ClientConfig, TlsError> {
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(load_roots(ca)?);
    Ok(match identity {
        Some((cert, key)) => builder.with_client_auth_cert(load_certs(cert)?, load_key(key)?)?,
        None => builder.with_no_client_auth(),
    })
}

/// Serves `router` over TLS on `listener` until `stop`; each request carries the peer address as
/// `axum::extract::ConnectInfo<SocketAddr>`. Handshakes are bounded to 10 s.
pub async fn serve(
    listener: tokio::net::TcpListener,
    config: Arc<ServerConfig>,
    router: axum::Router,
    stop: CancellationToken,
) {
    use hyper_util::rt::{TokioExecutor, TokioIo};
    use hyper_util::service::TowerToHyperService;
    use tower::ServiceExt as _;
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    loop {
        let (tcp, peer) = tokio::select! {
            _ = stop.cancelled() => break,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(error = %e, "Accept failed.");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let acceptor = acceptor.clone();
        let svc = router.clone().map_request(
            move |mut req: axum::http::Request<hyper::body::Incoming>| {
                req.extensions_mut()
                    .insert(axum::extract::ConnectInfo::<SocketAddr>(peer));
                req
            },
        );
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let tls =
                match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await {
                    Ok(Ok(t)) => t,
                    Ok(Err(e)) => {
                        tracing::debug!(%peer, error = %e, "TLS handshake refused.");
                        return;
                    }
                    Err(_) => return,
                };
            let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            let conn = builder
                .serve_connection_with_upgrades(TokioIo::new(tls), TowerToHyperService::new(svc));
            let _ = watcher.watch(conn.into_owned()).await;
        });
    }
    let _ = tokio::time::timeout(Duration::from_secs(5), graceful.shutdown()).await;
}

/// Files written by [`dev_ca`].
#[derive(Debug, Clone)]
pub struct DevCa {
    /// The CA certificate (trust it).
    pub ca: PathBuf,
    /// The server certificate (SANs: `localhost`, `127.0.0.1`, `::1` and the names given) and its key.
    pub server: (PathBuf, PathBuf),
    /// A client certificate (for managers calling supervisors) and its key.
    pub client: (PathBuf, PathBuf),
}

fn write_private(path: &Path, text: &str) -> Result<(), TlsError> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let _ = std::fs::remove_file(path);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| file_err(path, e))?;
    f.write_all(text.as_bytes()).map_err(|e| file_err(path, e))
}

/// Generates a development CA in `out` (`ca.pem`, `ca-key.pem`) and a server and a client certificate
/// signed by it (`server.pem`/`server-key.pem`, `client.pem`/`client-key.pem`); keys are 0600. For labs
/// and tests: production CAs live outside the cluster.
pub fn dev_ca(out: &Path, names: &[String]) -> Result<DevCa, TlsError> {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
        KeyUsagePurpose,
    };
    let g = |e: rcgen::Error| TlsError::Generate(e.to_string());
    std::fs::create_dir_all(out).map_err(|e| file_err(out, e))?;
    let ca_key = KeyPair::generate().map_err(g)?;
    let mut ca = CertificateParams::new(Vec::<String>::new()).map_err(g)?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, "Atlantis development CA");
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_cert = ca.self_signed(&ca_key).map_err(g)?;
    let leaf = |sans: Vec<String>, cn: &str, eku: ExtendedKeyUsagePurpose| {
        let key = KeyPair::generate().map_err(g)?;
        let mut p = CertificateParams::new(sans).map_err(g)?;
        p.is_ca = IsCa::ExplicitNoCa;
        p.distinguished_name.push(DnType::CommonName, cn);
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        p.extended_key_usages = vec![eku];
        let cert = p.signed_by(&key, &ca_cert, &ca_key).map_err(g)?;
        Ok::<_, TlsError>((cert.pem(), key.serialize_pem()))
    };
    let mut sans: Vec<String> = vec!["localhost".into(), "127.0.0.1".into(), "::1".into()];
    sans.extend(names.iter().cloned());
    let server = leaf(sans, "atlantis-server", ExtendedKeyUsagePurpose::ServerAuth)?;
    let client = leaf(
        vec!["atlantis-manager".into()],
        "atlantis-manager",
        ExtendedKeyUsagePurpose::ClientAuth,
    )?;
    let files = DevCa {
        ca: out.join("ca.pem"),
        server: (out.join("server.pem"), out.join("server-key.pem")),
        client: (out.join("client.pem"), out.join("client-key.pem")),
    };
    std::fs::write(&files.ca, ca_cert.pem()).map_err(|e| file_err(&files.ca, e))?;
    write_private(&out.join("ca-key.pem"), &ca_key.serialize_pem())?;
    std::fs::write(&files.server.0, &server.0).map_err(|e| file_err(&files.server.0, e))?;
    write_private(&files.server.1, &server.1)?;
    std::fs::write(&files.client.0, &client.0).map_err(|e| file_err(&files.client.0, e))?;
    write_private(&files.client.1, &client.1)?;
    Ok(files)
}
