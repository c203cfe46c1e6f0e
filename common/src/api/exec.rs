//! Running a command in a container (`atlantis exec`): the request, and the events of the answer, one
//! JSON document per line (`application/x-ndjson`). The supervisor runs it (Docker exec, argv as given,
//! never through a shell) and the manager proxies it, recording it in its history.

use serde::{Deserialize, Serialize};

/// The run time allowed when the request names none, ms.
pub const DEFAULT_EXEC_TIMEOUT_MS: u64 = 300_000;
/// The longest run time a request may ask for, ms.
pub const MAX_EXEC_TIMEOUT_MS: u64 = 3_600_000;
/// At most this many arguments.
pub const MAX_ARGS: usize = 256;
/// At most this many bytes in all arguments together.
pub const MAX_ARGV_BYTES: usize = 64 * 1024;

/// `POST /v1/containers/{id}/exec` (manager and supervisor).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct ExecRequest {
    /// The program and its arguments, passed as a vector (no shell).
    pub argv: Vec<String>,
    /// Run time after which the command is killed, ms (default 300000, at most 3600000).
    #[serde(default)]
    pub timeout_ms: Option<u64>,
}

impl ExecRequest {
    /// Checks the argument vector and the run time.
    pub fn validate(&self) -> Result<(), super::manager::FieldError> {
        let bad = |field: &str, message: &str| super::manager::FieldError {
            field: field.to_owned(),
            message: message.to_owned(),
        };
        if self.argv.is_empty() || self.argv[0].is_empty() {
            return Err(bad("argv", "needs at least the program"));
        }
        if self.argv.len() > MAX_ARGS {
            return Err(bad("argv", "at most 256 arguments"));
        }
        if self.argv.iter().map(String::len).sum::<usize>() > MAX_ARGV_BYTES {
            return Err(bad("argv", "at most 65536 bytes in all"));
        }
        if self.argv.iter().any(|a| a.contains('\0')) {
            return Err(bad("argv", "no NUL bytes"));
        }
        if self
            .timeout_ms
            .is_some_and(|t| t == 0 || t > MAX_EXEC_TIMEOUT_MS)
        {
            return Err(bad("timeout_ms", "must be 1 to 3600000"));
        }
        Ok(())
    }

    /// The run time allowed.
    pub fn timeout_ms(&self) -> u64 {
        self.timeout_ms.unwrap_or(DEFAULT_EXEC_TIMEOUT_MS)
    }

    /// The command line for people and the history (arguments quoted where needed).
    pub fn command_line(&self) -> String {
        self.argv
            .iter()
            .map(|a| {
                let plain = !a.is_empty()
                    && a.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"-_./=:,@%+".contains(&b));
                if plain { a.clone() } else { format!("{a:?}") }
            })
            .collect::<Vec<_>>()
            .join(" ")
    }
}

/// One line of an exec answer. The last line is `exit` or `error`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ExecEvent {
    /// Output on the command's stdout (UTF-8, invalid bytes replaced).
    Stdout {
        /// The text.
        data: String,
    },
    /// Output on its stderr.
    Stderr {
        /// The text.
        data: String,
    },
    /// The command ended.
    Exit {
        /// Its exit code (137 when killed at the time limit).
        exit_code: i64,
        /// True when it was killed because it ran past its time limit.
        #[serde(default)]
        timed_out: bool,
    },
    /// The command could not be run (or its output could not be read to the end).
    Error {
        /// A stable code (`not_found`, `exec_failed`, ...).
        code: String,
        /// What went wrong.
        message: String,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_checked_and_quoted() {
        let r = ExecRequest {
            argv: vec!["sh".into(), "-c".into(), "echo hi; exit 3".into()],
            timeout_ms: None,
        };
        r.validate().unwrap();
        assert_eq!(r.command_line(), "sh -c \"echo hi; exit 3\"");
        assert_eq!(r.timeout_ms(), DEFAULT_EXEC_TIMEOUT_MS);
        let empty = ExecRequest {
            argv: vec![],
            timeout_ms: None,
        };
        assert_eq!(empty.validate().unwrap_err().field, "argv");
        let long = ExecRequest {
            argv: vec!["x".into()],
            timeout_ms: Some(MAX_EXEC_TIMEOUT_MS + 1),
        };
        assert_eq!(long.validate().unwrap_err().field, "timeout_ms");
    }

    #[test]
    fn events_have_a_type_tag() {
        let e: ExecEvent = serde_json::from_str(r#"{"type":"exit","exit_code":3}"#).unwrap();
        assert_eq!(
            e,
            ExecEvent::Exit {
                exit_code: 3,
                timed_out: false
            }
        );
        let s = serde_json::to_string(&ExecEvent::Stdout { data: "a".into() }).unwrap();
        assert_eq!(s, r#"{"type":"stdout","data":"a"}"#);
    }
}
