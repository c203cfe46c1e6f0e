//! Running the binary with its own config directory and a clean environment.

use std::path::Path;
use std::process::{Output, Stdio};

/// The binary.
pub const BIN: &str = env!("CARGO_BIN_EXE_atlantis");

/// What a run printed.
#[derive(Debug)]
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    fn from(out: Output) -> Run {
        Run {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// The stdout as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {self:?}"))
    }

    /// Asserts success.
    #[track_caller]
    pub fn ok(self) -> Run {
        assert_eq!(self.code, 0, "{self:?}");
        self
    }

    /// Asserts a failure with `code` and a one-line error containing `want`.
    #[track_caller]
    pub fn fails(self, code: i32, want: &str) -> Run {
        assert_eq!(self.code, code, "{self:?}");
        let errors: Vec<&str> = self
            .stderr
            .lines()
            .filter(|l| l.starts_with("error:"))
            .collect();
        assert_eq!(errors.len(), 1, "one error line: {self:?}");
        assert!(errors[0].contains(want), "{want:?} not in {self:?}");
        assert!(
            !self.stderr.contains("stack backtrace") && !self.stderr.contains("panicked"),
            "no stack dump: {self:?}"
        );
        self
    }
}

/// A command for `atlantis args...` with `config` as `$XDG_CONFIG_HOME`, `RUST_BACKTRACE=1` (errors must
/// stay one line anyway) and no inherited `ATLANTIS_*` variables.
pub fn command(config: &Path, args: &[&str]) -> std::process::Command {
    let mut c = std::process::Command::new(BIN);
    c.args(args)
        .env("XDG_CONFIG_HOME", config)
        .env("RUST_BACKTRACE", "1")
        .env("NO_COLOR", "1")
        .env_remove("ATLANTIS_MANAGER")
        .env_remove("ATLANTIS_REGION")
        .env_remove("ATLANTIS_TOKEN")
        .stdin(Stdio::null());
    c
}

/// Runs `atlantis args...` (blocking; from async code use [`run_async`]).
pub fn run(config: &Path, args: &[&str]) -> Run {
    Run::from(command(config, args).output().expect("atlantis runs"))
}

/// Runs with `stdin` as standard input.
pub fn run_stdin(config: &Path, args: &[&str], stdin: &str) -> Run {
    use std::io::Write as _;
    let mut child = command(config, args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("atlantis runs");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    Run::from(child.wait_with_output().unwrap())
}

/// Runs on a blocking thread, for async tests.
pub async fn run_async(config: &Path, args: &[&str]) -> Run {
    let config = config.to_owned();
    let args: Vec<String> = args.iter().map(|s| (*s).to_owned()).collect();
    tokio::task::spawn_blocking(move || {
        let a: Vec<&str> = args.iter().map(String::as_str).collect();
        run(&config, &a)
    })
    .await
    .unwrap()
}

/// Runs `atlantis args...` inside a pseudo-terminal (`script` from util-linux), returning everything the
/// terminal showed. `NO_COLOR` is unset so the output is what a person sees.
pub async fn run_in_terminal(config: &Path, args: &[&str]) -> Run {
    terminal(config, args, false).await
}

/// [`run_in_terminal`] with `NO_COLOR=1`.
pub async fn run_in_terminal_no_color(config: &Path, args: &[&str]) -> Run {
    terminal(config, args, true).await
}

async fn terminal(config: &Path, args: &[&str], no_color: bool) -> Run {
    let mut line = String::from(BIN);
    for a in args {
        assert!(
            a.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_./:=".contains(&b)),
            "keep terminal test arguments plain: {a}"
        );
        line.push(' ');
        line.push_str(a);
    }
    let config = config.to_owned();
    tokio::task::spawn_blocking(move || {
        let mut c = std::process::Command::new("script");
        c.args(["-q", "-e", "-c", &line, "/dev/null"])
            .env("XDG_CONFIG_HOME", &config)
            .env("TERM", "xterm-256color")
            .env_remove("NO_COLOR");
        if no_color {
            c.env("NO_COLOR", "1");
        }
        let out = c
            .env_remove("ATLANTIS_MANAGER")
            .env_remove("ATLANTIS_TOKEN")
            .stdin(Stdio::null())
            .output()
            .expect("script (util-linux) runs");
        Run::from(out)
    })
    .await
    .unwrap()
}
