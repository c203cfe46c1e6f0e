//! TLS for ports marked `tls`: certificates chosen by SNI, loaded from the files named in the config and
//! reloaded when they change (a broken new file keeps the previous certificate and logs an error).

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio_util::sync::CancellationToken;

use crate::config::{CertConfig, TlsConfig};

/// Why certificates could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read or parsed.
    #[error("cannot load {path}: {reason}")]
    Load {
        /// The file.
        path: String,
        /// What went wrong.
        reason: String,
    },
    /// rustls refused the setup.
    #[error("tls setup: {0}")]
    Setup(String),
}

#[derive(Default)]
struct Certs {
    exact: HashMap<String, Arc<CertifiedKey>>,
    wildcard: HashMap<String, Arc<CertifiedKey>>,
    default: Option<Arc<CertifiedKey>>,
}

/// The SNI certificate resolver.
#[derive(Debug)]
pub struct SniResolver {
    certs: ArcSwap<Certs>,
}

impl std::fmt::Debug for Certs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Certs")
            .field("exact", &self.exact.keys())
            .field("wildcard", &self.wildcard.keys())
            .finish()
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let certs = self.certs.load();
        if let Some(name) = hello.server_name() {
            let name = name.to_ascii_lowercase();
            if let Some(c) = certs.exact.get(&name) {
                return Some(c.clone());
            }
            if let Some((_, parent)) = name.split_once('.')
                && let Some(c) = certs.wildcard.get(parent)
            {
                return Some(c.clone());
            }
        }
        certs.default.clone()
    }
}

fn load_one(c: &CertConfig) -> Result<Arc<CertifiedKey>, TlsError> {
    let err = |p: &Path, r: String| TlsError::Load {
        path: p.display().to_string(),
        reason: r,
    };
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&c.cert)
        .map_err(|e| err(&c.cert, e.to_string()))?
        .collect::<Result<_, _>>()
        .map_err(|e| err(&c.cert, e.to_string()))?;
    if chain.is_empty() {
        return Err(err(&c.cert, "no certificate found".into()));
    }
    let key = PrivateKeyDer::from_pem_file(&c.key).map_err(|e| err(&c.key, e.to_string()))?;
    let signer = rustls::crypto::ring::sign::any_supported_type(&key)
        .map_err(|e| err(&c.key, e.to_string()))?;
    let ck = CertifiedKey::new(chain, signer);
    ck.keys_match()
        .map_err(|e| err(&c.key, format!("key does not match the certificate: {e}")))?;
    Ok(Arc::new(ck))
}

fn load_all(cfg: &TlsConfig) -> Result<Certs, TlsError> {
    let mut out = Certs::default();
    for c in &cfg.certs {
        let ck = load_one(c)?;
        if out.default.is_none() {
            out.default = Some(ck.clone());
        }
        for n in &c.names {
            let n = n.to_ascii_lowercase();
            match n.strip_prefix("*.") {
                Some(parent) => out.wildcard.insert(parent.to_owned(), ck.clone()),
                None => out.exact.insert(n, ck.clone()),
            };
        }
    }
    Ok(out)
}

fn stamps(cfg: &TlsConfig) -> Vec<Option<(SystemTime, u64)>> {
    cfg.certs
        .iter()
        .flat_map(|c| [&c.cert, &c.key])
        .map(|p| {
            std::fs::metadata(p)
                .ok()
                .and_then(|m| Some((m.modified().ok()?, m.len())))
        })
        .collect()
}

/// The TLS acceptor configuration plus its reload task.
pub struct Tls {
    /// rustls server config (ALPN h2 and http/1.1).
    pub server: Arc<rustls::ServerConfig>,
    resolver: Arc<SniResolver>,
}

impl Tls {
    /// Loads the certificates; `None` when none are configured.
    pub fn load(cfg: &TlsConfig) -> Result<Option<Tls>, TlsError> {
        if cfg.certs.is_empty() {
            return Ok(None);
        }
        let resolver = Arc::new(SniResolver {
            certs: ArcSwap::from_pointee(load_all(cfg)?),
        });
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut server = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Setup(e.to_string()))?
            .with_no_client_auth()
            .with_cert_resolver(resolver.clone());
        server.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Some(Tls {
            server: Arc::new(server),
            resolver,
        }))
    }

    /// Watches the files and reloads them when they change, until `shutdown`.
    pub fn spawn_reloader(&self, cfg: TlsConfig, shutdown: CancellationToken) {
        let resolver = self.resolver.clone();
        tokio::spawn(async move {
            let mut last = stamps(&cfg);
            let every = Duration::from_millis(cfg.reload_interval_ms.max(50));
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(every) => {}
                    _ = shutdown.cancelled() => return,
                }
                let now = stamps(&cfg);
                if now == last {
                    continue;
                }
                match load_all(&cfg) {
                    Ok(certs) => {
                        resolver.certs.store(Arc::new(certs));
                        last = now;
                        tracing::info!("TLS certificates reloaded.");
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "TLS certificates changed but cannot be loaded; keeping the previous ones.")
                    }
                }
            }
        });
    }
}
