//! Placement benchmark (run by `bench/placement.sh`).
//!
//! Part 1, placement at scale: HOSTS simulated hosts (in-memory [`FakeHost`]s, which keep the same
//! contract as real supervisors) in 3 zones register in a real ZooKeeper; then, timed, the manager reads
//! the fleet from ZooKeeper, places CONTAINERS containers (APPS releases) with the real placement code,
//! writes one instance node per container in ZooKeeper transactions of BATCH operations, and starts each
//! container on its fake host (whose own accounting refuses anything over capacity). Checked: every
//! container placed and written, no host over capacity, zones within one container of each other.
//!
//! Part 2, API read latency: a real manager (same ZooKeeper, SQLite history) and CLIENTS concurrent
//! clients doing `GET /v1/apps/<app>` for SECONDS seconds; p50, p99 and the rate.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use atlantis_common::api::manager::{InstanceRecord, InstanceState};
use atlantis_common::api::supervisor::{Resources, SupervisorRecord};
use atlantis_common::zk::{Coord, ZkConfig};
use atlantis_common::{AppName, ContainerId, EnvName, HostName, Sha, ZoneName};
use atlantis_manager::fleet::{FakeHost, HostApi};
use atlantis_manager::placement::{Planner, Size};
use atlantis_testkit::ZooKeeper;

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let hosts: usize = env_or("HOSTS", 1000);
    let containers: u32 = env_or("CONTAINERS", 10_000);
    let apps: u32 = env_or("APPS", 100);
    let batch: usize = env_or("BATCH", 500);
    let clients: usize = env_or("CLIENTS", 200);
    let seconds: u64 = env_or("SECONDS", 10);
    let zk = ZooKeeper::start();
    let mut cfg = ZkConfig::new(zk.connect_string(), "bench".parse().unwrap());
    cfg.root = Some(format!("/placement-bench-{}", std::process::id()));
    let coord = Coord::connect(cfg.clone()).await.unwrap();
    let l = coord.layout().clone();

    // --- The fleet: hosts of three sizes, round-robin over three zones, registered in ZooKeeper.
    let zones: Vec<ZoneName> = ["zone-a", "zone-b", "zone-c"]
        .iter()
        .map(|z| z.parse().unwrap())
        .collect();
    let fleet: BTreeMap<HostName, FakeHost> = (0..hosts)
        .map(|i| {
            let host: HostName = format!("sim-{i:04}").parse().unwrap();
            let k = ((i / 3) % 3) as u32 + 1;
            let cap = Resources {
                slots: 8 * k,
                cpu_millis: 8000 * k,
                memory_mb: 8192 * u64::from(k),
            };
            let h = FakeHost::new(host.clone(), zones[i % 3].clone(), cap, "10.0.0.1");
            (host, h)
        })
        .collect();
    coord.ensure_path(&l.supervisors()).await.unwrap();
    let recs: Vec<SupervisorRecord> = fleet.values().map(FakeHost::record).collect();
    for chunk in recs.chunks(batch) {
        let mut txn = coord.txn();
        for r in chunk {
            txn = txn.create(&l.supervisor(&r.host), r);
        }
        txn.commit().await.unwrap();
    }
    let total_slots: u64 = recs.iter().map(|r| u64::from(r.capacity.slots)).sum();
    println!(
        "fleet: {hosts} simulated hosts in {} zones, {total_slots} slots; placing {containers} containers as {apps} releases",
        zones.len()
    );

    // --- Timed: read the fleet, place, write instance nodes in batched transactions, start on the fakes.
    let t0 = Instant::now();
    let sups = atlantis_manager::state::supervisors(&coord).await.unwrap();
    let t_read = t0.elapsed();
    let t1 = Instant::now();
    let mut planner = Planner::new(&sups);
    let env: EnvName = "prod".parse().unwrap();
    let size = Size {
        cpu_millis: 250,
        memory_mb: 256,
    };
    let mut placed: Vec<InstanceRecord> = Vec::with_capacity(containers as usize);
    for a in 0..apps {
        let app: AppName = format!("app{a:04}").parse().unwrap();
        let sha: Sha = format!("{:014x}", 0xabc0000u64 + u64::from(a))
            .parse()
            .unwrap();
        let n = containers / apps + u32::from(a < containers % apps);
        let slots = planner
            .spread(&BTreeMap::new(), n, size)
            .unwrap_or_else(|e| panic!("placing {app}: {e}"));
        for s in slots {
            placed.push(InstanceRecord {
                version: 1,
                container_id: ContainerId::generate(&app, &sha, &env),
                app: app.clone(),
                env: env.clone(),
                sha: sha.clone(),
                host: s.host,
                zone: s.zone,
                backend: None,
                state: InstanceState::Starting,
                release: 1,
                cpu_millis: size.cpu_millis,
                memory_mb: size.memory_mb,
            });
        }
    }
    let t_place = t1.elapsed();
    let t2 = Instant::now();
    // Parents first (one transaction), then the instance nodes, BATCH creates per transaction, eight
    // transactions in flight at once.
    coord.ensure_path(&l.all_instances()).await.unwrap();
    let mut parents = coord.txn();
    let mut seen = std::collections::BTreeSet::new();
    for r in &placed {
        if seen.insert(r.app.clone()) {
            parents = parents
                .create_raw(&l.app_instances(&r.app), b"")
                .create_raw(&l.instances(&r.app, &r.env), b"");
        }
    }
    parents.commit().await.unwrap();
    let txns = placed.len().div_ceil(batch) + 1;
    {
        use futures::StreamExt as _;
        let commits: Vec<_> = futures::stream::iter(placed.chunks(batch))
            .map(|chunk| {
                let mut txn = coord.txn();
                for r in chunk {
                    txn = txn.create(&l.instance(&r.app, &r.env, &r.container_id), r);
                }
                txn.commit()
            })
            .buffer_unordered(8)
            .collect()
            .await;
        for c in commits {
            c.unwrap();
        }
    }
    let t_write = t2.elapsed();
    let t3 = Instant::now();
    for r in &placed {
        let spec = spec_for(r);
        fleet[&r.host]
            .deploy(&spec)
            .await
            .unwrap_or_else(|e| panic!("{} refused {}: {e}", r.host, r.container_id));
    }
    let t_start = t3.elapsed();
    let total = t0.elapsed();

    // --- Checks.
    let mut per_zone: BTreeMap<&ZoneName, usize> = BTreeMap::new();
    for r in &placed {
        *per_zone.entry(&r.zone).or_default() += 1;
    }
    let (lo, hi) = (
        *per_zone.values().min().unwrap(),
        *per_zone.values().max().unwrap(),
    );
    let mut over = 0;
    for h in fleet.values() {
        let r = h.record();
        let n = placed.iter().filter(|p| p.host == r.host).count() as u32;
        if n > r.capacity.slots
            || n * size.cpu_millis > r.capacity.cpu_millis
            || u64::from(n) * size.memory_mb > r.capacity.memory_mb
        {
            over += 1;
        }
    }
    let mut written = 0;
    for app in coord.children(&l.all_instances()).await.unwrap() {
        let app: AppName = app.parse().unwrap();
        written += coord
            .children(&l.instances(&app, &env))
            .await
            .unwrap()
            .len();
    }
    let used_hosts = placed
        .iter()
        .map(|p| &p.host)
        .collect::<std::collections::BTreeSet<_>>()
        .len();
    println!("read fleet from ZooKeeper: {:>8.1} ms", ms(t_read));
    println!(
        "placement ({} containers): {:>8.1} ms",
        placed.len(),
        ms(t_place)
    );
    println!(
        "ZooKeeper writes:         {:>8.1} ms ({txns} transactions: parents, then up to {batch} creates each)",
        ms(t_write)
    );
    println!("start on fake hosts:      {:>8.1} ms", ms(t_start));
    println!(
        "TOTAL:                    {:>8.1} ms (goal < 5000 ms)",
        ms(total)
    );
    println!(
        "placed {} of {containers}; instance nodes in ZooKeeper: {written}; hosts used: {used_hosts}; hosts over capacity: {over}",
        placed.len()
    );
    println!(
        "per zone: {}; spread (max - min): {}",
        per_zone
            .iter()
            .map(|(z, n)| format!("{z}={n}"))
            .collect::<Vec<_>>()
            .join(" "),
        hi - lo
    );
    let ok = placed.len() == containers as usize
        && written == placed.len()
        && over == 0
        && hi - lo <= 1
        && total < Duration::from_secs(5);
    println!("placement goal met: {ok}");

    // --- Part 2: API read latency under concurrent clients.
    api_latency(&zk, &cfg, clients, seconds).await;
    coord.delete_recursive(l.root()).await.ok();
    if !ok {
        std::process::exit(1);
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn spec_for(r: &InstanceRecord) -> atlantis_common::api::supervisor::ContainerSpec {
    atlantis_common::api::supervisor::ContainerSpec {
        container_id: r.container_id.clone(),
        app: r.app.clone(),
        sha: r.sha.clone(),
        env: r.env.clone(),
        image: "registry.local/apps/bench:1".into(),
        cpu_millis: r.cpu_millis,
        memory_mb: r.memory_mb,
        ports: vec![8080],
        env_vars: Default::default(),
        config: None,
        dependencies: Vec::new(),
        health: Default::default(),
        command: None,
        read_only_rootfs: false,
        allow_ping: false,
    }
}

async fn api_latency(zk: &ZooKeeper, base: &ZkConfig, clients: usize, seconds: u64) {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("secret.key");
    std::fs::write(&key, "42".repeat(32)).unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::write(dir.path().join("token"), "bench-token-0123456789").unwrap();
    std::fs::set_permissions(
        dir.path().join("token"),
        std::fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    let mut z = ZkConfig::new(zk.connect_string(), "bench".parse().unwrap());
    z.root = Some(format!("{}-api", base.root.clone().unwrap_or_default()));
    let toml = format!(
        "listen = \"127.0.0.1:0\"\nhost = \"bench-manager\"\ndata_dir = \"{dir}/data\"\nsecret_key_file = \"{key}\"\n\
         supervisor_token_file = \"{dir}/token\"\n[zookeeper]\nservers = \"{servers}\"\nregion = \"bench\"\nroot = \"{root}\"\n\
         [registry]\nurl = \"http://127.0.0.1:9\"\n",
        dir = dir.path().display(),
        key = key.display(),
        servers = zk.connect_string(),
        root = z.root.clone().unwrap(),
    );
    let cfg: atlantis_manager::Config = toml::from_str(&toml).unwrap();
    let app = atlantis_manager::App::build(cfg).await.unwrap();
    let base_url = format!("http://{}", app.addr);
    let http = reqwest::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(clients)
        .build()
        .unwrap();
    for i in 0..10 {
        let r = http
            .post(format!("{base_url}/v1/apps"))
            .json(&serde_json::json!({"name": format!("read{i}")}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
    }
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let errors = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let workers: Vec<_> = (0..clients)
        .map(|c| {
            let (http, base_url, errors) = (http.clone(), base_url.clone(), errors.clone());
            tokio::spawn(async move {
                let mut lat = Vec::new();
                let mut i = c;
                while Instant::now() < deadline {
                    let t = Instant::now();
                    let r = http
                        .get(format!("{base_url}/v1/apps/read{}", i % 10))
                        .send()
                        .await;
                    match r {
                        Ok(r) if r.status() == 200 => {
                            let _ = r.bytes().await;
                            lat.push(t.elapsed());
                        }
                        _ => {
                            errors.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        }
                    }
                    i += 1;
                }
                lat
            })
        })
        .collect();
    let mut all = Vec::new();
    for w in workers {
        all.extend(w.await.unwrap());
    }
    all.sort();
    let pct = |p: f64| all[((all.len() as f64 * p) as usize).min(all.len() - 1)];
    println!(
        "API reads: {clients} concurrent clients, GET /v1/apps/<app> for {seconds} s: {} answered ({:.0}/s), {} errors; p50 {:.2} ms, p99 {:.2} ms",
        all.len(),
        all.len() as f64 / seconds as f64,
        errors.load(std::sync::atomic::Ordering::SeqCst),
        ms(pct(0.50)),
        ms(pct(0.99)),
    );
    app.shutdown().await;
}
