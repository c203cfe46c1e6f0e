//! A throwaway OpenLDAP server (Debian's `slapd`) on a free loopback port, loaded with `slapadd`.
//!
//! The directory is `dc=atlantis,dc=test` with `ou=people` (users, `uid=<name>`) and `ou=groups`
//! (`groupOfNames` whose `member`s are user DNs). Passwords are readable only by a bind (`auth`), never by
//! a search. The server runs from a `slapd.conf` in a temp dir and stops when its handle drops.

use std::process::Command;
use std::time::Duration;

use crate::process::Guarded;

/// The directory suffix.
pub const SUFFIX: &str = "dc=atlantis,dc=test";
/// Where users live.
pub const PEOPLE: &str = "ou=people,dc=atlantis,dc=test";
/// Where groups live.
pub const GROUPS: &str = "ou=groups,dc=atlantis,dc=test";

/// A user of the test directory.
#[derive(Debug, Clone)]
pub struct User {
    /// `uid`.
    pub name: String,
    /// Clear-text password (slapd compares it on bind).
    pub password: String,
}

/// A group of users.
#[derive(Debug, Clone)]
pub struct Group {
    /// `cn`.
    pub name: String,
    /// Member `uid`s.
    pub members: Vec<String>,
}

/// A running slapd; stopped and deleted when dropped.
pub struct Slapd {
    port: u16,
    tls_port: Option<u16>,
    proc: Option<Guarded>,
    dir: tempfile::TempDir,
}

fn ldif(users: &[User], groups: &[Group]) -> String {
    let mut s = format!(
        "dn: {SUFFIX}\nobjectClass: dcObject\nobjectClass: organization\no: Atlantis\ndc: atlantis\n\n\
         dn: {PEOPLE}\nobjectClass: organizationalUnit\nou: people\n\n\
         dn: {GROUPS}\nobjectClass: organizationalUnit\nou: groups\n\n"
    );
    for u in users {
        s.push_str(&format!(
            "dn: uid={n},{PEOPLE}\nobjectClass: inetOrgPerson\nuid: {n}\ncn: {n}\nsn: {n}\nuserPassword: {p}\n\n",
            n = u.name,
            p = u.password
        ));
    }
    for g in groups {
        s.push_str(&format!(
            "dn: cn={n},{GROUPS}\nobjectClass: groupOfNames\ncn: {n}\n",
            n = g.name
        ));
        for m in &g.members {
            s.push_str(&format!("member: uid={m},{PEOPLE}\n"));
        }
        s.push('\n');
    }
    s
}

impl Slapd {
    /// Writes the config and data, loads them with slapadd and starts slapd; waits until it answers.
    pub fn start(users: &[User], groups: &[Group]) -> Slapd {
        Self::start_with_tls(users, groups, None)
    }

    /// As [`Slapd::start`]; with `tls` (PEM certificate and key files) slapd also serves LDAPS on a second
    /// port and StartTLS on the first.
    pub fn start_with_tls(
        users: &[User],
        groups: &[Group],
        tls: Option<(&std::path::Path, &std::path::Path)>,
    ) -> Slapd {
        let slapd = crate::require_bin("slapd", "slapd");
        let slapadd = crate::require_bin("slapadd", "slapd");
        let search = crate::require_bin("ldapsearch", "ldap-utils");
        crate::require_file("/etc/ldap/schema/inetorgperson.schema", "slapd");
        let dir = tempfile::Builder::new()
            .prefix("atlantis-slapd-")
            .tempdir()
            .expect("temp dir");
        let d = dir.path();
        std::fs::create_dir_all(d.join("db")).expect("db dir");
        let conf = format!(
            "include /etc/ldap/schema/core.schema\n\
             include /etc/ldap/schema/cosine.schema\n\
             include /etc/ldap/schema/inetorgperson.schema\n\
             include /etc/ldap/schema/nis.schema\n\
             {tls}\
             modulepath /usr/lib/ldap\n\
             moduleload back_mdb\n\
             pidfile {d}/slapd.pid\n\
             database mdb\n\
             maxsize 104857600\n\
             suffix \"{SUFFIX}\"\n\
             rootdn \"cn=admin,{SUFFIX}\"\n\
             directory {d}/db\n\
             index objectClass,uid,member eq\n\
             access to attrs=userPassword by self write by anonymous auth by * none\n\
             access to * by * read\n",
            d = d.display(),
            tls = tls.map_or(String::new(), |(c, k)| format!(
                "TLSCertificateFile {}\nTLSCertificateKeyFile {}\n",
                c.display(),
                k.display()
            ))
        );
        std::fs::write(d.join("slapd.conf"), conf).expect("write slapd.conf");
        std::fs::write(d.join("data.ldif"), ldif(users, groups)).expect("write ldif");
        let out = Command::new(&slapadd)
            .arg("-q")
            .arg("-f")
            .arg(d.join("slapd.conf"))
            .arg("-l")
            .arg(d.join("data.ldif"))
            .output()
            .expect("run slapadd");
        assert!(
            out.status.success(),
            "slapadd failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        for _ in 0..5 {
            let port = crate::ports::free_port();
            let tls_port = tls.map(|_| crate::ports::free_port());
            let url = format!("ldap://127.0.0.1:{port}/");
            let urls = match tls_port {
                Some(p) => format!("{url} ldaps://127.0.0.1:{p}/"),
                None => url.clone(),
            };
            let args: Vec<String> = vec![
                "-d".into(),
                "0".into(),
                "-f".into(),
                d.join("slapd.conf").display().to_string(),
                "-h".into(),
                urls,
            ];
            let proc = Guarded::spawn("slapd", &slapd, &args, &d.join("slapd.log"), None);
            let deadline = std::time::Instant::now() + Duration::from_secs(20);
            let ready = loop {
                let ok = Command::new(&search)
                    .args(["-x", "-H", &url, "-b", "", "-s", "base"])
                    .output()
                    .is_ok_and(|o| o.status.success());
                if ok {
                    break true;
                }
                if !proc.is_running() || std::time::Instant::now() > deadline {
                    break false;
                }
                std::thread::sleep(Duration::from_millis(20));
            };
            if ready {
                return Slapd {
                    port,
                    tls_port,
                    proc: Some(proc),
                    dir,
                };
            }
            tracing::warn!(port, log = %proc.log_tail(20), "slapd did not come up, retrying on another port.");
        }
        panic!("slapd did not start; see {}", d.display());
    }

    /// `ldap://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("ldap://127.0.0.1:{}", self.port)
    }

    /// `ldaps://127.0.0.1:<port>` when started with TLS.
    pub fn ldaps_url(&self) -> Option<String> {
        self.tls_port.map(|p| format!("ldaps://127.0.0.1:{p}"))
    }

    /// The port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Stops the server (the directory stays until the handle drops): LDAP is then down.
    pub fn stop(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.stop();
        }
    }

    /// The server log's last lines.
    pub fn log_tail(&self, n: usize) -> String {
        self.proc
            .as_ref()
            .map(|p| p.log_tail(n))
            .unwrap_or_default()
    }

    /// Where its files live.
    pub fn dir(&self) -> &std::path::Path {
        self.dir.path()
    }
}

impl Drop for Slapd {
    fn drop(&mut self) {
        self.stop();
    }
}
