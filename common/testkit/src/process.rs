//! A child process that cannot outlive the test.
//!
//! The program runs under `sh -c`, which starts it in the background, records its PID, then blocks reading
//! stdin. Our end of that pipe closes when the handle drops or when the test process dies for any reason;
//! the shell then kills the program and waits for it. Arguments go to the program as `"$@"`, never
//! interpolated into the script.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::Duration;

/// A running service process.
pub struct Guarded {
    name: String,
    shell: Child,
    stdin: Option<ChildStdin>,
    pid: u32,
    log: PathBuf,
}

impl Guarded {
    /// Starts `program args...` with stdout and stderr appended to `log`, in the network namespace at
    /// `netns` (a `/run/netns/NAME` path) when one is given.
    pub fn spawn(
        name: &str,
        program: &Path,
        args: &[String],
        log: &Path,
        netns: Option<&Path>,
    ) -> Guarded {
        Self::spawn_inner(name, program, args, log, netns, None)
    }

    /// As [`Guarded::spawn`], and the watchdog deletes `cleanup` after the program exited. Meant for
    /// services shared by a whole test binary, whose handles are never dropped.
    pub fn spawn_cleanup(
        name: &str,
        program: &Path,
        args: &[String],
        log: &Path,
        cleanup: &Path,
    ) -> Guarded {
        Self::spawn_inner(name, program, args, log, None, Some(cleanup))
    }

    fn spawn_inner(
        name: &str,
        program: &Path,
        args: &[String],
        log: &Path,
        netns: Option<&Path>,
        cleanup: Option<&Path>,
    ) -> Guarded {
        let script = r#"pidfile="$1"; shift; "$@" </dev/null >>"$LOG" 2>&1 & child=$!; echo $child >"$pidfile"; cat >/dev/null; kill -TERM $child 2>/dev/null; i=0; while kill -0 $child 2>/dev/null && [ $i -lt 100 ]; do sleep 0.05; i=$((i+1)); done; kill -KILL $child 2>/dev/null; wait $child 2>/dev/null; if [ -n "$CLEANUP" ]; then rm -rf "$CLEANUP"; fi; exit 0"#;
        let pidfile = log.with_extension("pid");
        let _ = std::fs::remove_file(&pidfile);
        let mut cmd = match netns {
            Some(ns) => {
                let mut c = Command::new("nsenter");
                c.arg(format!("--net={}", ns.display())).arg("sh");
                c
            }
            None => Command::new("sh"),
        };
        cmd.arg("-c")
            .arg(script)
            .arg("sh")
            .arg(&pidfile)
            .arg(program)
            .args(args);
        cmd.env("LOG", log)
            .env("CLEANUP", cleanup.map(Path::as_os_str).unwrap_or_default())
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let mut shell = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        let stdin = shell.stdin.take();
        let pid = crate::wait_until(Duration::from_secs(10), &format!("{name} to start"), || {
            std::fs::read_to_string(&pidfile)
                .ok()
                .and_then(|s| s.trim().parse::<u32>().ok())
        });
        Guarded {
            name: name.to_owned(),
            shell,
            stdin,
            pid,
            log: log.to_owned(),
        }
    }

    /// The program's PID (not the wrapper shell's).
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// True while the program runs.
    pub fn is_running(&self) -> bool {
        // /proc/<pid>/stat's third field is the state; a zombie (Z) has exited.
        match std::fs::read_to_string(format!("/proc/{}/stat", self.pid)) {
            Ok(stat) => stat
                .rsplit_once(')')
                .map(|(_, rest)| !rest.trim_start().starts_with('Z'))
                .unwrap_or(false),
            Err(_) => false,
        }
    }

    /// Sends a signal (for example "KILL" or "STOP") to the program.
    pub fn signal(&self, sig: &str) {
        let status = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.pid.to_string())
            .status();
        if !matches!(status, Ok(s) if s.success()) {
            tracing::warn!(name = %self.name, sig, "Signal not delivered.");
        }
    }

    /// The log file.
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// The last `n` lines of the log, for failure messages.
    pub fn log_tail(&self, n: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// Stops the program (SIGTERM, then SIGKILL after 5 s) and waits for it.
    pub fn stop(&mut self) {
        if let Some(mut stdin) = self.stdin.take() {
            let _ = stdin.flush();
            drop(stdin);
        }
        let _ = self.shell.wait();
    }
}

impl Drop for Guarded {
    fn drop(&mut self) {
        self.stop();
    }
}
