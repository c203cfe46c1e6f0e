//! One build: read the input, check the app config, assemble the layers and the image, push.
//!
//! Everything the caller can get wrong is checked before the first byte goes to the registry, so a bad
//! input pushes nothing.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use atlantis_common::api::app_config::{self, AppConfig, Template};
use atlantis_common::names::Sha;
use serde::{Deserialize, Serialize};

use crate::cache::{LayerCache, key_of};
use crate::error::{BuildError, io};
use crate::git::GitSource;
use crate::image::{self, Image};
use crate::layer::{Content, Entry, LayerInfo};
use crate::push::{Blob, BlobData, Credentials, ImageRef, PushOptions, PushStats, Pusher};
use crate::source::{self, Kind, Limits};
use crate::template;

/// Where the app comes from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Source {
    /// A directory on the builder's host (the app root).
    Dir(PathBuf),
    /// A git repository, commit and app root.
    Git(GitSource),
}

/// What to build and where to push it.
#[derive(Debug, Clone)]
pub struct BuildRequest {
    /// The input.
    pub source: Source,
    /// The commit the image is of (labels). Taken from a git source or the push tag when absent.
    pub sha: Option<Sha>,
    /// Where to push; `None` builds into the cache only.
    pub push: Option<ImageRef>,
}

/// What a build produced.
#[derive(Debug, Clone)]
pub struct BuildOutput {
    /// The app config, as checked.
    pub app: AppConfig,
    /// The sha recorded in the labels.
    pub sha: Option<Sha>,
    /// The image: config, manifest, digest, layers.
    pub image: Image,
    /// Where it was pushed and what was sent.
    pub pushed: Option<(ImageRef, PushStats)>,
    /// For each layer (base, app): whether it came from the cache.
    pub cached: [bool; 2],
}

/// Builder settings.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Input bounds.
    pub limits: Limits,
    /// The busybox binary installed by the busybox template.
    pub busybox: PathBuf,
    /// Push settings (credentials, chunk size, parallelism).
    pub push: PushOptions,
    /// Where the debian template gets Debian from.
    pub debian: crate::debian::DebianSettings,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            limits: Limits::default(),
            busybox: PathBuf::from("/bin/busybox"),
            push: PushOptions::default(),
            debian: crate::debian::DebianSettings::default(),
        }
    }
}

pub use crate::log::Log;

/// Builds images; cheap to clone.
#[derive(Debug, Clone)]
pub struct Builder {
    cache: LayerCache,
    settings: Settings,
}

/// Input read and layers assembled: everything before the push.
struct Prepared {
    app: AppConfig,
    sha: Option<Sha>,
    image: Image,
    cached: [bool; 2],
}

impl Builder {
    /// A builder over the layer cache.
    pub fn new(cache: LayerCache, settings: Settings) -> Builder {
        Builder { cache, settings }
    }

    /// The layer cache.
    pub fn cache(&self) -> &LayerCache {
        &self.cache
    }

    /// Runs one build, pushing with the settings' credentials.
    pub async fn build(&self, req: BuildRequest, log: Log) -> Result<BuildOutput, BuildError> {
        self.build_as(req, None, log).await
    }

    /// Runs one build; `credentials`, when given, replace the settings' for this build's push (the
    /// API passes the request's scoped registry token).
    pub async fn build_as(
        &self,
        req: BuildRequest,
        credentials: Option<Credentials>,
        log: Log,
    ) -> Result<BuildOutput, BuildError> {
        let started = Instant::now();
        let this = self.clone();
        let req2 = req.clone();
        let log2 = log.clone();
        let prepared = tokio::task::spawn_blocking(move || this.prepare(&req2, &log2))
            .await
            .map_err(|e| BuildError::Io {
                what: "the build task".into(),
                source: std::io::Error::other(e.to_string()),
            })??;
        log(format!(
            "image {} assembled in {} ms",
            prepared.image.digest,
            started.elapsed().as_millis()
        ));
        let pushed = match &req.push {
            Some(target) => {
                let stats = self
                    .push(target, &prepared.image, credentials, &log)
                    .await?;
                log(format!(
                    "pushed {target}@{} in {} ms: {} uploaded ({} bytes), {} mounted, {} already there",
                    prepared.image.digest,
                    started.elapsed().as_millis(),
                    stats.uploaded,
                    stats.bytes_uploaded,
                    stats.mounted,
                    stats.existed
                ));
                Some((target.clone(), stats))
            }
            None => None,
        };
        Ok(BuildOutput {
            app: prepared.app,
            sha: prepared.sha,
            image: prepared.image,
            pushed,
            cached: prepared.cached,
        })
    }

    fn prepare(&self, req: &BuildRequest, log: &Log) -> Result<Prepared, BuildError> {
        let mut sha = req.sha.clone();
        let scratch = tempfile::Builder::new()
            .prefix("atlantis-build-")
            .tempdir_in(self.cache.dir().join("tmp"))
            .map_err(io("creating a build dir"))?;
        // The builder's own dir: its real path, so roots below it open without symlinks.
        let scratch_path =
            std::fs::canonicalize(scratch.path()).map_err(io("resolving the build dir"))?;
        let mut revision = None;
        let root = match &req.source {
            Source::Dir(d) => d.clone(),
            Source::Git(g) => {
                if let Some(s) = &sha
                    && s != &g.sha
                {
                    return Err(BuildError::Request(format!(
                        "sha {s} differs from the git source's commit {}",
                        g.sha
                    )));
                }
                sha = Some(g.sha.clone());
                let dest = scratch_path.join("app");
                std::fs::create_dir(&dest).map_err(io("creating the export dir"))?;
                let t = Instant::now();
                let full = crate::git::export(g, &dest, &scratch_path, self.settings.limits)?;
                log(format!(
                    "git: exported {}:{} ({full}) in {} ms",
                    g.repo,
                    if g.root.is_empty() { "." } else { &g.root },
                    t.elapsed().as_millis()
                ));
                revision = Some(full);
                dest
            }
        };
        if sha.is_none()
            && let Some(t) = &req.push
            && let Ok(s) = t.tag.parse::<Sha>()
        {
            sha = Some(s);
        }
        let dir = Arc::new(crate::beneath::RootDir::open(&root)?);
        let app = read_config_at(&dir)?;
        if let Some(t) = &req.push
            && t.repository != format!("apps/{}", app.name)
        {
            return Err(BuildError::Request(format!(
                "the app is named {:?} in atlantis.toml but would be pushed to {}; a build pushes only apps/{}",
                app.name.as_str(),
                t.repository,
                app.name
            )));
        }
        let mut tree = source::collect_at(dir, self.settings.limits)?;
        log(format!(
            "app {} (template {}): {} entries, {} bytes",
            app.name,
            app.template,
            tree.entries.len(),
            tree.bytes
        ));

        let t = Instant::now();
        let (base_layer, base_hit) = if app.template == Template::Debian {
            let steps = app.build.clone().unwrap_or_default();
            let droot = crate::debian::root(
                self.cache.dir(),
                &self.settings.debian,
                &steps.packages.0,
                log,
            )?;
            let key = format!(
                "debian-root-{}",
                crate::debian::root_key(&self.settings.debian, &steps.packages.0)
            );
            let base = match self.cache.lookup(&key) {
                Some(info) => (info, true),
                None => self
                    .cache
                    .layer(&key, &crate::debian::root_entries(&droot)?)?,
            };
            if !steps.commands.0.is_empty() {
                // The commands work on a private copy; what they leave in /app is checked again.
                let copy = scratch_path.join("app-build");
                let work = scratch_path.join("work");
                std::fs::create_dir_all(&copy).map_err(io("creating the build copy"))?;
                std::fs::create_dir_all(&work).map_err(io("creating the build dir"))?;
                tree.copy_into(&copy)?;
                crate::debian::run_commands(
                    &droot,
                    &copy,
                    &work,
                    &steps,
                    &self.settings.debian.sandbox,
                    log,
                )?;
                tree = source::collect(&copy, self.settings.limits)?;
                log(format!(
                    "build output: {} entries, {} bytes",
                    tree.entries.len(),
                    tree.bytes
                ));
            }
            base
        } else {
            let base = template::base_entries(app.template, &self.settings.busybox)?;
            let base_key = key_of(&format!("base-{}", app.template), &base)?;
            self.cache.layer(&base_key, &base)?
        };
        log(layer_line("base", &base_layer, base_hit, t));

        let t = Instant::now();
        let files = app_entries(&Arc::new(tree));
        let app_key = key_of("app", &files)?;
        let (app_layer, app_hit) = self.cache.layer(&app_key, &files)?;
        log(layer_line("app", &app_layer, app_hit, t));

        let image = image::assemble(
            &app,
            sha.as_ref().map(Sha::as_str),
            revision.as_deref(),
            app.template.as_str(),
            vec![base_layer, app_layer],
        );
        let keep: HashSet<String> = image.layers.iter().map(|l| l.digest.clone()).collect();
        let freed = self.cache.evict(&keep);
        if freed > 0 {
            log(format!("cache: evicted {freed} bytes of old layers"));
        }
        Ok(Prepared {
            app,
            sha,
            image,
            cached: [base_hit, app_hit],
        })
    }

    async fn push(
        &self,
        target: &ImageRef,
        image: &Image,
        credentials: Option<Credentials>,
        log: &Log,
    ) -> Result<PushStats, BuildError> {
        let mut options = self.settings.push.clone();
        if credentials.is_some() {
            options.credentials = credentials;
        }
        let pusher = Pusher::new(&target.registry, options)?;
        let mut blobs: Vec<Blob> = image
            .layers
            .iter()
            .map(|l| Blob {
                digest: l.digest.clone(),
                size: l.size,
                data: BlobData::File(self.cache.blob_path(&l.digest)),
                mount_from: self.cache.pushed_in(&target.registry, &l.digest),
            })
            .collect();
        blobs.push(Blob {
            digest: image.config_digest.clone(),
            size: image.config.len() as u64,
            data: BlobData::Bytes(image.config.clone().into()),
            mount_from: None,
        });
        let on_blob = |b: &Blob, o| {
            log(format!(
                "blob {} ({} bytes): {}",
                short(&b.digest),
                b.size,
                match o {
                    crate::push::BlobOutcome::Exists => "already in the repository",
                    crate::push::BlobOutcome::Mounted => "mounted from another repository",
                    crate::push::BlobOutcome::Uploaded => "uploaded",
                }
            ))
        };
        let (digest, stats) = pusher
            .push(
                &target.repository,
                &target.tag,
                blobs.clone(),
                &image.manifest,
                &on_blob,
            )
            .await?;
        debug_assert_eq!(digest, image.digest);
        for b in &blobs {
            self.cache
                .remember_push(&target.registry, &b.digest, &target.repository);
        }
        Ok(stats)
    }
}

/// Reads and checks `atlantis.toml` in `root` (opened below the root's descriptor, never through a
/// link).
pub fn read_config(root: &std::path::Path) -> Result<AppConfig, BuildError> {
    let dir = crate::beneath::RootDir::open(root)?;
    read_config_at(&dir)
}

/// Reads and checks `atlantis.toml` below an open root.
pub fn read_config_at(root: &crate::beneath::RootDir) -> Result<AppConfig, BuildError> {
    let name = app_config::FILE_NAME;
    let st = match rustix::fs::statat(root.fd(), name, rustix::fs::AtFlags::SYMLINK_NOFOLLOW) {
        Ok(st) => st,
        Err(rustix::io::Errno::NOENT) => {
            return Err(BuildError::MissingConfig(root.path().display().to_string()));
        }
        Err(e) => return Err(BuildError::Input(format!("cannot read {name}: {e}"))),
    };
    if !rustix::fs::FileType::from_raw_mode(st.st_mode).is_file() {
        return Err(BuildError::Input(format!(
            "{} must be a regular file",
            root.path().join(name).display()
        )));
    }
    let max = app_config::MAX_FILE_BYTES as u64;
    if st.st_size as u64 > max {
        return Err(BuildError::Input(format!(
            "{} is {} bytes, at most {max} are accepted",
            root.path().join(name).display(),
            st.st_size
        )));
    }
    let bytes = root.read_file(name, max)?;
    let text =
        String::from_utf8(bytes).map_err(|_| BuildError::Input(format!("{name} is not UTF-8")))?;
    Ok(AppConfig::parse(&text)?)
}

/// The app layer's entries: `app/` and every tree entry under it, with normalised modes.
fn app_entries(tree: &Arc<source::Tree>) -> Vec<Entry> {
    let base = image::APP_DIR.trim_start_matches('/');
    let mut out = vec![Entry {
        path: base.to_owned(),
        content: Content::Dir(0o755),
    }];
    for (rel, kind) in &tree.entries {
        let content = match kind {
            Kind::Dir => Content::Dir(0o755),
            Kind::File { size, exec, .. } => Content::FileAt {
                tree: tree.clone(),
                rel: rel.clone(),
                mode: if *exec { 0o755 } else { 0o644 },
                size: *size,
            },
            Kind::Symlink(t) => Content::Symlink(t.clone()),
        };
        out.push(Entry {
            path: format!("{base}/{rel}"),
            content,
        });
    }
    out
}

fn short(digest: &str) -> &str {
    let hex = digest.trim_start_matches("sha256:");
    &hex[..hex.len().min(12)]
}

fn layer_line(which: &str, l: &LayerInfo, hit: bool, t: Instant) -> String {
    format!(
        "{which} layer {} ({} bytes): {} in {} ms",
        short(&l.digest),
        l.size,
        if hit { "cached" } else { "built" },
        t.elapsed().as_millis()
    )
}

/// Reads registry credentials from the environment: `ATLANTIS_REGISTRY_TOKEN`, or
/// `ATLANTIS_REGISTRY_USER` with `ATLANTIS_REGISTRY_PASSWORD`.
pub fn credentials_from_env() -> Option<Credentials> {
    if let Ok(t) = std::env::var("ATLANTIS_REGISTRY_TOKEN")
        && !t.is_empty()
    {
        return Some(Credentials::Bearer(t));
    }
    let user = std::env::var("ATLANTIS_REGISTRY_USER").ok()?;
    let password = std::env::var("ATLANTIS_REGISTRY_PASSWORD").unwrap_or_default();
    Some(Credentials::Basic {
        username: user,
        password,
    })
}
