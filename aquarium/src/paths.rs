//! Where the aquarium keeps its state: one data directory with a folder per component, logs, pid files,
//! generated configs and secrets.

use std::path::{Path, PathBuf};

/// The data directory and the layout under it.
#[derive(Debug, Clone)]
pub struct DataDir {
    root: PathBuf,
}

impl DataDir {
    /// Uses `root` (made absolute against the current directory).
    pub fn new(root: &Path) -> DataDir {
        let root = if root.is_absolute() {
            root.to_owned()
        } else {
            std::env::current_dir()
                .map(|d| d.join(root))
                .unwrap_or_else(|_| root.to_owned())
        };
        DataDir { root }
    }

    /// The default: `/var/lib/atlantis-aquarium` for root, else `$XDG_DATA_HOME/atlantis-aquarium`
    /// (`~/.local/share/atlantis-aquarium`).
    pub fn default_root() -> PathBuf {
        if crate::process::is_root() {
            return PathBuf::from("/var/lib/atlantis-aquarium");
        }
        if let Some(x) = std::env::var_os("XDG_DATA_HOME").filter(|x| !x.is_empty()) {
            return PathBuf::from(x).join("atlantis-aquarium");
        }
        let home = std::env::var_os("HOME").map_or_else(|| PathBuf::from("."), PathBuf::from);
        home.join(".local/share/atlantis-aquarium")
    }

    /// The directory itself.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The cluster plan (ports, addresses, names), written by the first `up`.
    pub fn plan_file(&self) -> PathBuf {
        self.root.join("cluster.json")
    }

    /// A component's working directory (its data).
    pub fn dir(&self, component: &str) -> PathBuf {
        self.root.join(component)
    }

    /// A component's log (stdout and stderr).
    pub fn log(&self, component: &str) -> PathBuf {
        self.root.join("logs").join(format!("{component}.log"))
    }

    /// A component's pid file.
    pub fn pid(&self, component: &str) -> PathBuf {
        self.root.join("run").join(format!("{component}.pid"))
    }

    /// A component's generated config file.
    pub fn config(&self, component: &str, ext: &str) -> PathBuf {
        self.root.join("etc").join(format!("{component}.{ext}"))
    }

    /// The secrets folder (mode 0700): cluster token, secret key, the manager's admin token.
    pub fn secrets(&self) -> PathBuf {
        self.root.join("secrets")
    }

    /// The token supervisors accept from managers.
    pub fn cluster_token(&self) -> PathBuf {
        self.secrets().join("cluster.token")
    }

    /// The manager's key for sealing dependency data.
    pub fn secret_key(&self) -> PathBuf {
        self.secrets().join("secret.key")
    }

    /// The development cluster CA: `ca.pem`, the supervisors' `server.pem`, the manager's `client.pem`
    /// (and their keys), written by `atlantis_common::tls::dev_ca`.
    pub fn ca_dir(&self) -> PathBuf {
        self.secrets().join("ca")
    }

    /// The admin token the manager writes when it requires authentication (`auth.admin_token_file`).
    pub fn admin_token(&self) -> PathBuf {
        self.secrets().join("admin.token")
    }

    /// The password of a registry user (`builder` pushes, `puller` pulls).
    pub fn registry_password(&self, user: &str) -> PathBuf {
        self.secrets().join(format!("registry-{user}.password"))
    }

    /// Snapshots of app directories that were built (the builder only reads under this folder).
    pub fn apps(&self) -> PathBuf {
        self.root.join("apps")
    }
}
