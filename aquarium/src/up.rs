//! `aquarium up`: packages, binaries, then every component in order (each skipped when already running
//! and healthy), the registrations, and the sample app built and deployed.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context as _;

use crate::client::Manager;
use crate::components::{self, Bins, Component};
use crate::paths::DataDir;
use crate::plan::{Plan, PlanOptions};
use crate::progress::Progress;
use crate::{net, process, sample};

/// Options of `up`.
#[derive(Debug, Clone)]
pub struct UpOptions {
    /// The data directory.
    pub data: DataDir,
    /// Use the binaries in this directory (skips nothing else).
    pub bin_dir: Option<PathBuf>,
    /// Do not run cargo.
    pub no_build: bool,
    /// Do not install Debian packages.
    pub no_install: bool,
    /// Build the debug profile instead of release.
    pub debug: bool,
    /// The workspace (for `.ci/install` and cargo).
    pub source: PathBuf,
    /// Manager and first external router address.
    pub public_ip: Option<Ipv4Addr>,
    /// The app to build and deploy.
    pub app_dir: PathBuf,
}

/// The workspace this aquarium was built from.
pub fn default_source() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map_or_else(|| PathBuf::from("."), Path::to_owned)
}

/// Runs `up`.
pub async fn up(opts: UpOptions) -> anyhow::Result<()> {
    let p = Progress::default();
    anyhow::ensure!(
        process::is_root(),
        "aquarium up needs root: it creates network namespaces and runs Docker Engines and iptables"
    );
    p.step("packages", install(&opts)).await?;
    let bins = p.step("binaries", build(&opts)).await?;
    let data = &opts.data;
    let plan = p
        .step("plan", async {
            let existed = Plan::load(data)?.is_some();
            let plan = Plan::load_or_create(
                data,
                &PlanOptions {
                    public_ip: opts.public_ip,
                },
            )?;
            components::ensure_secrets(data)?;
            Ok((
                plan,
                format!(
                    "{} {}",
                    if existed { "reused" } else { "created" },
                    data.plan_file().display()
                ),
            ))
        })
        .await?;
    components::write_configs(&plan, data)?;
    components::ensure_userns_remap()?;
    let comps = components::all(&plan, data, &bins)?;
    let http = crate::health::http_client();
    for z in &plan.zones {
        p.step(&format!("netns {}", z.netns), async {
            let existed = net::is_set_up(z);
            net::setup(z)?;
            Ok((
                (),
                format!(
                    "{} ({} <-> {})",
                    if existed { "present" } else { "created" },
                    z.host_ip,
                    z.ns_ip
                ),
            ))
        })
        .await?;
    }
    for c in &comps {
        if c.name == "manager" {
            p.step(&c.name, start_manager(c, data, &plan, &http))
                .await?;
        } else {
            p.step(&c.name, start(c, data, &plan, &http)).await?;
        }
    }
    let mgr = Manager::new(plan.manager_url(), data.admin_token());
    p.step("registrations", wait_registered(&mgr, &plan))
        .await?;
    let app_dir = opts.app_dir.clone();
    let app = sample::app_name(&app_dir)?;
    redeploy_after_down(&p, &mgr, data).await?;
    deploy_dir(&p, &mgr, &plan, data, &app_dir, Mode::Ensure, None).await?;
    print_summary(&plan, data, &app, p.elapsed());
    Ok(())
}

/// When [`deploy_dir`] deploys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// `up`: only when the app has no release that is served (a release of any sha that is served is
    /// left alone, so `up` never undoes a deploy).
    Ensure,
    /// `deploy`: unless this very sha is the current release and serves this page (or `force`).
    Change {
        /// Deploy anyway.
        force: bool,
    },
}

/// Builds `dir` and deploys it, as `mode` says; returns the sha that is current afterwards.
pub async fn deploy_dir(
    p: &Progress,
    mgr: &Manager,
    plan: &Plan,
    data: &DataDir,
    dir: &Path,
    mode: Mode,
    start_timeout_ms: Option<u64>,
) -> anyhow::Result<String> {
    let app = sample::app_name(dir)?;
    let sha = sample::content_sha(dir)?;
    let want = std::fs::read_to_string(dir.join("www/index.html")).ok();
    p.step(&format!("{app}: setup"), async {
        sample::ensure_setup(mgr, plan, &app).await?;
        Ok((
            (),
            format!("env {}, app {app}, port {}", plan.env, plan.http_port),
        ))
    })
    .await?;
    let current = sample::current_sha(mgr, plan, &app).await?;
    let skip = match (mode, &current) {
        (Mode::Ensure, Some(cur)) => sample::wait_served(plan, &app, None, Duration::from_secs(2))
            .await
            .is_ok()
            .then(|| cur.clone()),
        (Mode::Change { force: false }, Some(cur)) if *cur == sha => {
            sample::wait_served(plan, &app, want.as_deref(), Duration::from_secs(2))
                .await
                .is_ok()
                .then(|| cur.clone())
        }
        _ => None,
    };
    if let Some(cur) = skip {
        println!(
            "[{:>6.1}s] {app}: sha {cur} is the current release and is served",
            p.elapsed()
        );
        return Ok(cur);
    }
    p.step(&format!("{app}: build {sha}"), async {
        let d = sample::build(mgr, plan, data, dir, &app, &sha).await?;
        Ok(((), d))
    })
    .await?;
    p.step(&format!("{app}: deploy {sha}"), async {
        let t = sample::deploy(mgr, plan, &app, &sha, start_timeout_ms, |s| {
            println!(
                "           - {} {}",
                s["name"].as_str().unwrap_or("?"),
                s["detail"].as_str().unwrap_or("")
            );
        })
        .await?;
        Ok(((), format!("release {}", t["release"])))
    })
    .await?;
    if let Some(w) = want {
        p.step(&format!("{app}: served"), async {
            sample::wait_served(plan, &app, Some(&w), Duration::from_secs(60)).await?;
            Ok(((), format!("through {} external routers", plan.zones.len())))
        })
        .await?;
    }
    Ok(sha)
}

/// Redeploys what `down` tore down (but the sample app, which the next step handles).
async fn redeploy_after_down(p: &Progress, mgr: &Manager, data: &DataDir) -> anyhow::Result<()> {
    let file = crate::down::deployed_file(data);
    let Ok(bytes) = std::fs::read(&file) else {
        return Ok(());
    };
    let list: Vec<crate::down::Deployed> =
        serde_json::from_slice(&bytes).with_context(|| format!("reading {}", file.display()))?;
    for d in list {
        p.step(&format!("{}.{}: redeploy {}", d.app, d.env, d.sha), async {
            let t = sample::deploy_in(mgr, &d.app, &d.env, &d.sha, None, |_| {}).await?;
            Ok(((), format!("release {}", t["release"])))
        })
        .await?;
    }
    std::fs::remove_file(&file)?;
    Ok(())
}

/// Starts the manager; it requires a token on every call and writes the admin token file at its
/// first start (`[auth] admin_token_file`).
async fn start_manager(
    c: &Component,
    data: &DataDir,
    plan: &Plan,
    http: &reqwest::Client,
) -> anyhow::Result<((), String)> {
    start(c, data, plan, http).await
}

async fn install(opts: &UpOptions) -> anyhow::Result<((), String)> {
    if opts.no_install {
        return Ok(((), "skipped (--no-install)".into()));
    }
    let script = opts.source.join(".ci/install");
    if script.is_file() {
        let st = Command::new(&script)
            .arg("--packages-only")
            .stdin(Stdio::null())
            .stdout(Stdio::inherit())
            .stderr(Stdio::inherit())
            .status()
            .with_context(|| format!("running {}", script.display()))?;
        anyhow::ensure!(st.success(), "{} failed ({st})", script.display());
        return Ok(((), format!("{} --packages-only", script.display())));
    }
    let missing: Vec<&str> = [
        "java",
        "dockerd",
        "ip",
        "nsenter",
        "iptables",
        "conntrack",
        "busybox",
        "bwrap",
    ]
    .into_iter()
    .filter(|b| components::which(b).is_none())
    .collect();
    anyhow::ensure!(
        missing.is_empty(),
        "missing programs: {} (install the packages listed in .ci/install)",
        missing.join(", ")
    );
    Ok(((), "all programs present".into()))
}

/// The target directory cargo uses for this workspace.
fn target_dir(source: &Path) -> PathBuf {
    if let Some(d) = std::env::var_os("CARGO_TARGET_DIR").filter(|d| !d.is_empty()) {
        return PathBuf::from(d);
    }
    // Running from target/<profile>/aquarium: its target directory.
    if let Ok(exe) = std::env::current_exe()
        && let Some(profile_dir) = exe.parent()
        && matches!(
            profile_dir.file_name().and_then(|n| n.to_str()),
            Some("debug" | "release")
        )
        && let Some(t) = profile_dir.parent()
    {
        return t.to_owned();
    }
    source.join("target")
}

async fn build(opts: &UpOptions) -> anyhow::Result<(Bins, String)> {
    let profile = if opts.debug { "debug" } else { "release" };
    let dir = match &opts.bin_dir {
        Some(d) => d.clone(),
        None => target_dir(&opts.source).join(profile),
    };
    let bins = Bins { dir };
    if opts.no_build {
        bins.check()?;
        return Ok((bins.clone(), format!("using {}", bins.dir.display())));
    }
    anyhow::ensure!(
        opts.source.join("Cargo.toml").is_file(),
        "no workspace at {} to build (give --source, or --bin-dir DIR --no-build)",
        opts.source.display()
    );
    let mut cmd = Command::new("cargo");
    cmd.current_dir(&opts.source)
        .args(["build", "--locked", "--bins"]);
    if !opts.debug {
        cmd.arg("--release");
    }
    // The same package set as the bench and the docs, so cargo reuses one feature resolution.
    for b in [
        "atlantis-aquarium",
        "atlantis-manager",
        "atlantis-supervisor",
        "atlantis-router",
        "atlantis-registry",
        "atlantis-builder",
        "atlantis-cli",
    ] {
        cmd.args(["-p", b]);
    }
    if opts.bin_dir.is_none() {
        cmd.env("CARGO_TARGET_DIR", target_dir(&opts.source));
    }
    let st = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::inherit())
        .stderr(Stdio::inherit())
        .status()
        .context("running cargo (is the Rust toolchain installed?)")?;
    anyhow::ensure!(st.success(), "cargo build failed ({st})");
    bins.check()?;
    Ok((
        bins.clone(),
        format!("cargo build --{profile} into {}", bins.dir.display()),
    ))
}

/// Starts a component unless it already runs healthy; waits for its health.
async fn start(
    c: &Component,
    data: &DataDir,
    plan: &Plan,
    http: &reqwest::Client,
) -> anyhow::Result<((), String)> {
    let pid_file = data.pid(&c.name);
    let log = data.log(&c.name);
    if let Some(pid) = process::running(&pid_file, &c.marker(data)) {
        return match wait_healthy(c, http, pid, Duration::from_secs(c.start_timeout_secs)).await {
            Ok(d) => Ok(((), format!("already running, pid {pid}, {d}"))),
            Err(e) => Err(anyhow::anyhow!(
                "{} runs (pid {pid}) but is not healthy: {e}; log: {}",
                c.name,
                log.display()
            )),
        };
    }
    if c.name.starts_with("dockerd-") {
        clean_stale_engine(c, data, plan);
    }
    for port in &c.ports {
        anyhow::ensure!(
            !listening(*port),
            "{} cannot start: {port} is taken by another program (see `ss -ltnp`); log: {}",
            c.name,
            log.display()
        );
    }
    std::fs::create_dir_all(data.dir(&c.name))?;
    let pid = process::spawn(&c.spec, &log, &pid_file)?;
    match wait_healthy(c, http, pid, Duration::from_secs(c.start_timeout_secs)).await {
        Ok(d) => Ok(((), format!("started, pid {pid}, {}", ports_text(c) + &d))),
        Err(e) => Err(anyhow::anyhow!(
            "{} did not become healthy: {e}\nlog: {}\n--- last lines ---\n{}",
            c.name,
            log.display(),
            process::tail(&log, 15)
        )),
    }
}

fn ports_text(c: &Component) -> String {
    if c.ports.is_empty() {
        return String::new();
    }
    let p: Vec<String> = c.ports.iter().map(ToString::to_string).collect();
    format!("{}, ", p.join(" "))
}

/// True when a TCP socket of this machine listens at `addr` (or on the wildcard address with its port),
/// from `ss -Hltn`. (Connecting is no test: a vanished address may be answered by whatever routes it.)
pub fn listening(addr: std::net::SocketAddr) -> bool {
    let out = crate::net::output("ss", &["-Hltn"]).unwrap_or_default();
    let port = format!(":{}", addr.port());
    out.lines()
        .filter_map(|l| l.split_whitespace().nth(3))
        .any(|local| {
            local.strip_suffix(&port).is_some_and(|ip| {
                ip == addr.ip().to_string() || ip == "0.0.0.0" || ip == "*" || ip == "[::]"
            })
        })
}

async fn wait_healthy(
    c: &Component,
    http: &reqwest::Client,
    pid: u32,
    timeout: Duration,
) -> anyhow::Result<String> {
    let deadline = Instant::now() + timeout;
    loop {
        let r = c.health.probe(http).await;
        match r {
            Ok(d) => return Ok(d),
            Err(e) => {
                anyhow::ensure!(process::alive(pid), "it exited ({e})");
                anyhow::ensure!(
                    Instant::now() < deadline,
                    "not healthy after {timeout:?}: {e}"
                );
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Before starting a zone's engine: processes a dead engine left in the namespace (containerd,
/// shims, containers) are stopped, and its mounts are released.
fn clean_stale_engine(c: &Component, data: &DataDir, plan: &Plan) {
    let Some(z) = plan
        .zones
        .iter()
        .find(|z| c.name == format!("dockerd-{}", z.key))
    else {
        return;
    };
    for pid in net::netns_pids(z) {
        process::stop(pid, Duration::from_secs(5));
    }
    net::unmount_under(&data.dir(&c.name).join("exec"));
    let _ = std::fs::remove_file(data.dir(&c.name).join("engine.pid"));
}

async fn wait_registered(mgr: &Manager, plan: &Plan) -> anyhow::Result<((), String)> {
    let deadline = Instant::now() + Duration::from_secs(60);
    let want_routers = plan.zones.len() * 2;
    loop {
        let sup = mgr
            .call(reqwest::Method::GET, "/v1/supervisors", None)
            .await?;
        let rt = mgr.call(reqwest::Method::GET, "/v1/routers", None).await?;
        let n_sup = sup.1.as_array().map_or(0, Vec::len);
        let n_rt = rt.1.as_array().map_or(0, Vec::len);
        if sup.0 == 200 && rt.0 == 200 && n_sup >= plan.zones.len() && n_rt >= want_routers {
            return Ok((
                (),
                format!("{n_sup} supervisors, {n_rt} routers in ZooKeeper"),
            ));
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "after 60 s: supervisors {} ({n_sup}), routers {} ({n_rt}); see `aquarium status`",
            sup.0,
            rt.0
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// What to try next.
pub fn print_summary(plan: &Plan, data: &DataDir, app: &str, secs: f64) {
    let url = format!("http://{}:{}/", plan.app_host(app), plan.http_port);
    let ext = plan.external_addr(&plan.zones[0]);
    let token = data.admin_token();
    println!();
    println!("The aquarium is up ({secs:.1}s). {app} is served at {url}");
    println!("  curl {url}");
    println!("  curl -H 'Host: {}' http://{ext}/", plan.app_host(app));
    println!();
    println!("CLI settings:");
    println!("  region:     {}", plan.region);
    println!("  manager:    {}", plan.manager_url());
    println!("  token file: {}", token.display());
    println!("  export ATLANTIS_MANAGER={}", plan.manager_url());
    println!("  export ATLANTIS_TOKEN=$(cat {})", token.display());
    println!();
    println!("Next:");
    println!("  atlantis status");
    println!("  atlantis releases {app} {}", plan.env);
    println!(
        "  edit aquarium/examples/{app}/www/index.html, then: aquarium deploy   (build + atlantis deploy {app} <sha> {})",
        plan.env
    );
    println!("  atlantis rollback {app} {}", plan.env);
    println!("  aquarium status | aquarium logs manager -f | aquarium verify | aquarium down");
    println!("  data and logs: {}", data.root().display());
}
