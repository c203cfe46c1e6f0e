//! Running a command in a container with Docker exec: argv as given (no shell), stdout and stderr streamed
//! as they come, the exit code at the end. The process is killed (SIGKILL, through its host PID) when it
//! runs past its time limit or when the caller goes away, so nothing is left running unattended.

use std::time::Duration;

use atlantis_common::api::exec::ExecEvent;
use bollard::Docker;
use bollard::container::LogOutput;
use bollard::exec::{CreateExecOptions, StartExecOptions, StartExecResults};
use futures::StreamExt as _;
use futures::stream::BoxStream;

use super::map_err;
use crate::runtime::RuntimeError;

/// How long the exit code is waited for once the output ended.
const EXIT_WAIT: Duration = Duration::from_secs(10);

/// Starts `argv` in container `id`; the stream ends with `Exit` or `Error`.
pub(super) async fn run(
    docker: &Docker,
    id: &str,
    argv: Vec<String>,
    timeout: Duration,
) -> Result<BoxStream<'static, ExecEvent>, RuntimeError> {
    let created = docker
        .create_exec(
            id,
            CreateExecOptions {
                cmd: Some(argv),
                attach_stdin: Some(false),
                attach_stdout: Some(true),
                attach_stderr: Some(true),
                tty: Some(false),
                ..Default::default()
            },
        )
        .await
        .map_err(map_err)?;
    let started = docker
        .start_exec(
            &created.id,
            Some(StartExecOptions {
                detach: false,
                tty: false,
                output_capacity: Some(64 * 1024),
            }),
        )
        .await
        .map_err(map_err)?;
    let StartExecResults::Attached { mut output, .. } = started else {
        return Err(RuntimeError::Engine("the exec started detached".into()));
    };
    let (tx, rx) = tokio::sync::mpsc::channel::<ExecEvent>(64);
    let docker = docker.clone();
    let exec_id = created.id;
    tokio::spawn(async move {
        let deadline = tokio::time::Instant::now() + timeout;
        let (mut out, mut err) = (Utf8Carry::default(), Utf8Carry::default());
        let mut timed_out = false;
        let mut failure = None;
        loop {
            let next = tokio::select! {
                n = tokio::time::timeout_at(deadline, output.next()) => n,
                // The caller went away while the command was silent.
                () = tx.closed() => {
                    kill(&docker, &exec_id).await;
                    return;
                }
            };
            let item = match next {
                Err(_) => {
                    timed_out = true;
                    break;
                }
                Ok(None) => break,
                Ok(Some(Ok(item))) => item,
                Ok(Some(Err(e))) => {
                    failure = Some(format!("reading the output: {e}"));
                    break;
                }
            };
            let ev = match item {
                LogOutput::StdOut { message } | LogOutput::Console { message } => {
                    ExecEvent::Stdout {
                        data: out.push(&message),
                    }
                }
                LogOutput::StdErr { message } => ExecEvent::Stderr {
                    data: err.push(&message),
                },
                LogOutput::StdIn { .. } => continue,
            };
            if tx.send(ev).await.is_err() {
                // The caller went away: the command does not outlive its audience.
                kill(&docker, &exec_id).await;
                return;
            }
        }
        drop(output);
        if timed_out || failure.is_some() {
            kill(&docker, &exec_id).await;
        }
        for (rest, stdout) in [(out.finish(), true), (err.finish(), false)] {
            if !rest.is_empty() {
                let ev = if stdout {
                    ExecEvent::Stdout { data: rest }
                } else {
                    ExecEvent::Stderr { data: rest }
                };
                let _ = tx.send(ev).await;
            }
        }
        let last = match (failure, exit_code(&docker, &exec_id).await) {
            (None, Some(code)) => ExecEvent::Exit {
                exit_code: code,
                timed_out,
            },
            (Some(f), _) => ExecEvent::Error {
                code: "exec_failed".into(),
                message: f,
            },
            (None, None) => ExecEvent::Error {
                code: "exec_failed".into(),
                message: "the command's exit code could not be read".into(),
            },
        };
        let _ = tx.send(last).await;
    });
    Ok(
        futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|e| (e, rx)) })
            .boxed(),
    )
}

/// The exit code once the process has ended (None if it is still running after [`EXIT_WAIT`]).
async fn exit_code(docker: &Docker, exec_id: &str) -> Option<i64> {
    let until = tokio::time::Instant::now() + EXIT_WAIT;
    loop {
        if let Ok(i) = docker.inspect_exec(exec_id).await
            && i.running == Some(false)
        {
            return i.exit_code;
        }
        if tokio::time::Instant::now() >= until {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Kills the exec's process (SIGKILL through its host PID; argv, no shell).
async fn kill(docker: &Docker, exec_id: &str) {
    let Ok(i) = docker.inspect_exec(exec_id).await else {
        return;
    };
    let (Some(true), Some(pid)) = (i.running, i.pid.filter(|p| *p > 1)) else {
        return;
    };
    let r = tokio::process::Command::new("kill")
        .arg("-KILL")
        .arg(pid.to_string())
        .status()
        .await;
    if !r.is_ok_and(|s| s.success()) {
        tracing::warn!(
            exec = exec_id,
            pid,
            "Cannot kill an exec past its time limit."
        );
    }
}

/// Turns byte chunks into text without breaking a character split across two chunks.
#[derive(Default)]
struct Utf8Carry {
    rest: Vec<u8>,
}

impl Utf8Carry {
    fn push(&mut self, bytes: &[u8]) -> String {
        self.rest.extend_from_slice(bytes);
        let keep = match std::str::from_utf8(&self.rest) {
            Ok(_) => 0,
            // An incomplete character at the end waits for the next chunk.
            Err(e) if e.error_len().is_none() => self.rest.len() - e.valid_up_to(),
            Err(_) => 0,
        };
        let tail = self.rest.split_off(self.rest.len() - keep);
        let text = String::from_utf8_lossy(&self.rest).into_owned();
        self.rest = tail;
        text
    }

    fn finish(&mut self) -> String {
        String::from_utf8_lossy(&std::mem::take(&mut self.rest)).into_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn characters_split_across_chunks_survive() {
        let mut c = Utf8Carry::default();
        let bytes = "héllo".as_bytes();
        assert_eq!(c.push(&bytes[..2]), "h");
        assert_eq!(c.push(&bytes[2..]), "éllo");
        assert_eq!(c.push(b"\xff"), "\u{fffd}");
        assert_eq!(c.finish(), "");
    }
}
