//! `atlantis-builder`: build an app image (and push it), or serve the build API.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context as _;
use atlantis_builder::build::{BuildRequest, Source, credentials_from_env};
use atlantis_builder::cache::LayerCache;
use atlantis_builder::git::GitSource;
use atlantis_builder::push::ImageRef;
use atlantis_builder::{Builder, Config};
use atlantis_common::names::Sha;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "atlantis-builder",
    version,
    about = "Builds reproducible OCI images of Atlantis apps and pushes them to a registry"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Build an app (a directory with atlantis.toml, or a git repository at a commit) and push it.
    ///
    /// Registry credentials come from ATLANTIS_REGISTRY_TOKEN, or ATLANTIS_REGISTRY_USER and
    /// ATLANTIS_REGISTRY_PASSWORD (operator use on the builder's host; the API never uses them).
    Build {
        /// The app directory (holding atlantis.toml). Not with --git.
        dir: Option<PathBuf>,
        /// Build from this git repository (path or URL) instead of a directory.
        #[arg(long, requires = "sha")]
        git: Option<String>,
        /// The app's directory inside the git repository.
        #[arg(long, default_value = "", requires = "git")]
        root: String,
        /// The commit (the git commit to build; recorded in the image labels).
        #[arg(long)]
        sha: Option<Sha>,
        /// Push to REGISTRY/apps/NAME:SHA.
        #[arg(long)]
        push: Option<String>,
        /// The layer cache directory.
        #[arg(long, env = "ATLANTIS_BUILDER_CACHE")]
        cache_dir: Option<PathBuf>,
        /// The layer cache's size cap in bytes.
        #[arg(long, default_value_t = 4 * 1024 * 1024 * 1024)]
        cache_max_bytes: u64,
        /// The largest app accepted, in bytes.
        #[arg(long, default_value_t = 512 * 1024 * 1024)]
        max_input_bytes: u64,
        /// The busybox binary of the busybox template.
        #[arg(long, default_value = "/bin/busybox")]
        busybox: PathBuf,
        /// Blobs larger than this are uploaded in chunks of this size.
        #[arg(long, default_value_t = 16 * 1024 * 1024)]
        chunk_size: u64,
        /// Print the result as JSON on stdout (progress still goes to stderr).
        #[arg(long)]
        json: bool,
        /// No progress lines.
        #[arg(long, short)]
        quiet: bool,
    },
    /// Serve the HTTP build API.
    Serve {
        /// TOML config file; `ATLANTIS_BUILDER__<KEY>=value` environment variables override it.
        #[arg(long, env = "ATLANTIS_BUILDER_CONFIG")]
        config: Option<PathBuf>,
    },
}

fn default_cache() -> PathBuf {
    std::env::var_os("HOME")
        .map(|h| PathBuf::from(h).join(".cache/atlantis-builder"))
        .unwrap_or_else(|| PathBuf::from("/var/cache/atlantis-builder"))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Build {
            dir,
            git,
            root,
            sha,
            push,
            cache_dir,
            cache_max_bytes,
            max_input_bytes,
            busybox,
            chunk_size,
            json,
            quiet,
        } => {
            let source = match (dir, git) {
                (Some(d), None) => Source::Dir(
                    std::fs::canonicalize(&d)
                        .with_context(|| format!("cannot use {}", d.display()))?,
                ),
                (None, Some(repo)) => Source::Git(GitSource {
                    repo,
                    sha: sha.clone().context("--git needs --sha")?,
                    root,
                }),
                (Some(_), Some(_)) => anyhow::bail!("give a directory or --git, not both"),
                (None, None) => anyhow::bail!("give the app directory, or --git REPO --sha SHA"),
            };
            let push: Option<ImageRef> = push.map(|p| p.parse()).transpose()?;
            let cache =
                LayerCache::open(&cache_dir.unwrap_or_else(default_cache), cache_max_bytes)?;
            let mut settings = Config {
                max_input_bytes,
                busybox,
                ..Config::default()
            }
            .settings();
            settings.push.credentials = credentials_from_env();
            settings.push.chunk_size = chunk_size.max(1024);
            let builder = Builder::new(cache, settings);
            let started = Instant::now();
            let log: atlantis_builder::build::Log = Arc::new(move |line: String| {
                if !quiet {
                    eprintln!("[{:>6.2}s] {line}", started.elapsed().as_secs_f64());
                }
            });
            let req = BuildRequest { source, sha, push };
            let out = match builder.build(req, log).await {
                Ok(o) => o,
                Err(e) => {
                    eprintln!("atlantis-builder: {e}");
                    std::process::exit(if e.is_input_error() { 2 } else { 1 });
                }
            };
            if json {
                let v = serde_json::json!({
                    "digest": out.image.digest,
                    "image": out.pushed.as_ref().map(|(r, _)| r.to_string()),
                    "app_config": out.app,
                    "sha": out.sha,
                    "layers": out.image.layers,
                    "cached": out.cached,
                    "push": out.pushed.as_ref().map(|(_, s)| s),
                });
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                match &out.pushed {
                    Some((r, _)) => println!("{r}@{}", out.image.digest),
                    None => println!("{}", out.image.digest),
                }
            }
        }
        Command::Serve { config } => {
            atlantis_common::telemetry::init("atlantis-builder");
            let cfg: Config = atlantis_common::config::load(config.as_deref(), "ATLANTIS_BUILDER")
                .context("loading the configuration")?;
            let cache = LayerCache::open(&cfg.cache_dir, cfg.cache_max_bytes)?;
            if cfg.allow_network_builds {
                // Checks the build_network_* keys and removes what dead builds left.
                let settings = cfg.settings().debian.sandbox.network;
                let cleaned = atlantis_builder::sandbox::net::prepare(&settings)
                    .context("preparing networked builds")?;
                if !cleaned.is_empty() {
                    tracing::info!(?cleaned, "removed build networks left by dead builds");
                }
            }
            let builder = Builder::new(cache, cfg.settings());
            let app = atlantis_builder::api::App::build(cfg, builder).await?;
            app.serve(atlantis_common::shutdown::on_signal()).await?;
        }
    }
    Ok(())
}
