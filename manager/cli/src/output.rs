//! Output: JSON for scripts, aligned tables for people, colour only on a terminal and never with
//! `NO_COLOR`.

use std::io::{IsTerminal as _, Write as _};

use serde::Serialize;

/// How to print.
#[derive(Debug, Clone, Copy)]
pub struct Out {
    /// `--json`.
    pub json: bool,
    /// stderr is a terminal (live progress, prompts).
    pub tty_err: bool,
}

/// Whether colour is allowed at all: `NO_COLOR` unset (or empty) and `TERM` not `dumb`.
pub fn colour_allowed() -> bool {
    let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
    let dumb = std::env::var("TERM").is_ok_and(|t| t == "dumb");
    !no_color && !dumb
}

impl Out {
    /// Decides from the environment, and sets the styling of `console` (used by indicatif too).
    pub fn detect(json: bool) -> Out {
        let allowed = colour_allowed();
        let tty_out = std::io::stdout().is_terminal();
        let tty_err = std::io::stderr().is_terminal();
        console::set_colors_enabled(allowed && tty_out && !json);
        console::set_colors_enabled_stderr(allowed && tty_err);
        Out { json, tty_err }
    }

    /// Prints a value as pretty JSON.
    pub fn print_json<T: Serialize + ?Sized>(&self, v: &T) {
        let text = serde_json::to_string_pretty(v).unwrap_or_else(|_| "null".into());
        println_safe(&text);
    }

    /// Prints a value as JSON with `--json`, else runs `human`.
    pub fn show<T: Serialize + ?Sized>(&self, v: &T, human: impl FnOnce()) {
        if self.json {
            self.print_json(v);
        } else {
            human();
        }
    }
}

/// Prints a line to stdout; a closed pipe (`atlantis apps | head -1`) ends quietly.
pub fn println_safe(s: &str) {
    let mut o = std::io::stdout().lock();
    if writeln!(o, "{s}").is_err() {
        std::process::exit(0);
    }
}

/// Removes control characters (a container name or message from the wire cannot move the cursor).
pub fn clean(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

/// An aligned table with a bold header; an empty table prints `empty` instead.
pub fn table(headers: &[&str], rows: &[Vec<String>], empty: &str) {
    if rows.is_empty() {
        println_safe(empty);
        return;
    }
    let mut width: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    let rows: Vec<Vec<String>> = rows
        .iter()
        .map(|r| r.iter().map(|c| clean(c)).collect())
        .collect();
    for r in &rows {
        for (i, c) in r.iter().enumerate() {
            if i < width.len() {
                width[i] = width[i].max(c.chars().count());
            }
        }
    }
    let line = |cells: Vec<String>| {
        let n = cells.len();
        let mut s = String::new();
        for (i, c) in cells.into_iter().enumerate() {
            let pad = width[i].saturating_sub(console::measure_text_width(&c));
            s.push_str(&c);
            if i + 1 < n {
                s.push_str(&" ".repeat(pad + 2));
            }
        }
        s.trim_end().to_owned()
    };
    println_safe(&line(
        headers
            .iter()
            .map(|h| console::style(*h).bold().to_string())
            .collect(),
    ));
    for r in rows {
        println_safe(&line(r));
    }
}

/// Key/value lines.
pub fn fields(pairs: &[(&str, String)]) {
    let w = pairs.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    for (k, v) in pairs {
        println_safe(&format!(
            "{}{}  {}",
            console::style(*k).bold(),
            " ".repeat(w - k.len()),
            clean(v)
        ));
    }
}

/// Milliseconds as `1.2s`, `3m04s`.
pub fn duration(ms: u64) -> String {
    if ms < 60_000 {
        format!("{:.1}s", ms as f64 / 1000.0)
    } else {
        format!("{}m{:02}s", ms / 60_000, (ms % 60_000) / 1000)
    }
}

/// A time in ms since the epoch as `2026-12-06 18:30:00 UTC`.
pub fn when(ms: u64) -> String {
    let secs = ms / 1000;
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil(days as i64);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian.
fn civil(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_and_durations_read_well() {
        assert_eq!(when(0), "1970-01-01 00:00:00");
        assert_eq!(when(1_796_581_800_000), "2026-12-06 18:30:00");
        assert_eq!(duration(1234), "1.2s");
        assert_eq!(duration(184_000), "3m04s");
        assert_eq!(clean("a\x1b[2Jb\n"), "a [2Jb ");
    }
}
