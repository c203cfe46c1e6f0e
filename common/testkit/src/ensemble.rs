//! A throwaway three-node ZooKeeper ensemble on loopback, for failover tests.

use std::net::SocketAddr;
use std::time::Duration;

use crate::process::Guarded;
use crate::zookeeper::four_letter;

const JARS: &str = "/usr/share/java/zookeeper.jar:/usr/share/java/slf4j-simple.jar";

struct Member {
    client_port: u16,
    proc: Option<Guarded>,
}

/// Three ZooKeeper servers forming one ensemble (tickTime 500 ms); stopped and deleted when dropped.
pub struct Ensemble {
    dir: tempfile::TempDir,
    members: Vec<Member>,
    servers: String,
}

impl Ensemble {
    /// Starts three servers and waits until each reports `leader` or `follower`.
    pub fn start() -> Ensemble {
        crate::require_bin("java", "default-jre-headless");
        crate::require_file("/usr/share/java/zookeeper.jar", "zookeeper");
        let dir = tempfile::Builder::new()
            .prefix("atlantis-zk3-")
            .tempdir()
            .expect("temp dir");
        let ports: Vec<u16> = (0..9).map(|_| crate::ports::free_port()).collect();
        let servers: String = (0..3)
            .map(|i| {
                format!(
                    "server.{}=127.0.0.1:{}:{}\n",
                    i + 1,
                    ports[3 + i],
                    ports[6 + i]
                )
            })
            .collect();
        let mut members = Vec::new();
        for (i, client_port) in ports.iter().copied().take(3).enumerate() {
            let d = dir.path().join(format!("n{}", i + 1));
            std::fs::create_dir_all(d.join("data")).expect("data dir");
            std::fs::write(d.join("data/myid"), format!("{}\n", i + 1)).expect("myid");
            let cfg = format!(
                "tickTime=500\ninitLimit=10\nsyncLimit=5\ndataDir={}\nclientPort={client_port}\nclientPortAddress=127.0.0.1\n\
                 admin.enableServer=false\n4lw.commands.whitelist=ruok,srvr,stat,mntr,conf\n{servers}",
                d.join("data").display()
            );
            std::fs::write(d.join("zoo.cfg"), cfg).expect("zoo.cfg");
            members.push(Member {
                client_port,
                proc: None,
            });
        }
        let connect = members
            .iter()
            .map(|m| format!("127.0.0.1:{}", m.client_port))
            .collect::<Vec<_>>()
            .join(",");
        let mut e = Ensemble {
            dir,
            members,
            servers: connect,
        };
        for i in 0..3 {
            e.launch(i);
        }
        e.wait_quorum(3, Duration::from_secs(60));
        e
    }

    fn launch(&mut self, i: usize) {
        let d = self.dir.path().join(format!("n{}", i + 1));
        let args: Vec<String> = vec![
            "-Xmx128m".into(),
            "-XX:+UseSerialGC".into(),
            "-XX:TieredStopAtLevel=1".into(),
            "-cp".into(),
            JARS.into(),
            "-Dorg.slf4j.simpleLogger.defaultLogLevel=warn".into(),
            "org.apache.zookeeper.server.quorum.QuorumPeerMain".into(),
            d.join("zoo.cfg").display().to_string(),
        ];
        let java = crate::require_bin("java", "default-jre-headless");
        self.members[i].proc = Some(Guarded::spawn(
            &format!("zookeeper-{}", i + 1),
            &java,
            &args,
            &d.join("zk.log"),
            None,
        ));
    }

    fn mode(&self, i: usize) -> Option<String> {
        let addr = SocketAddr::from(([127, 0, 0, 1], self.members[i].client_port));
        let out = four_letter(addr, "srvr")?;
        out.lines()
            .find_map(|l| l.strip_prefix("Mode: ").map(str::to_owned))
    }

    /// Waits until `n` members serve as leader or follower.
    pub fn wait_quorum(&self, n: usize, timeout: Duration) {
        crate::wait_until(timeout, &format!("{n} ensemble members serving"), || {
            let serving = (0..3)
                .filter(|&i| {
                    self.mode(i)
                        .is_some_and(|m| m == "leader" || m == "follower")
                })
                .count();
            (serving >= n).then_some(())
        });
    }

    /// The connect string naming all three members.
    pub fn connect_string(&self) -> String {
        self.servers.clone()
    }

    /// The index of the current leader.
    pub fn leader(&self) -> usize {
        crate::wait_until(Duration::from_secs(30), "an ensemble leader", || {
            (0..3).find(|&i| self.mode(i).as_deref() == Some("leader"))
        })
    }

    /// Kills member `i` with SIGKILL.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut p) = self.members[i].proc.take() {
            p.signal("KILL");
            p.stop();
        }
    }

    /// Starts member `i` again with its data.
    pub fn restart(&mut self, i: usize) {
        self.kill(i);
        self.launch(i);
    }
}
