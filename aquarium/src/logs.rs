//! `aquarium logs COMPONENT [-f]`.

use std::io::{Read as _, Seek as _, Write as _};
use std::time::Duration;

use crate::components::{self, Bins};
use crate::paths::DataDir;
use crate::plan::Plan;

/// Prints the last `lines` lines of a component's log, then follows it with `follow`.
pub fn logs(data: &DataDir, component: &str, lines: usize, follow: bool) -> anyhow::Result<()> {
    let plan = Plan::require(data)?;
    let names: Vec<String> = components::all(
        &plan,
        data,
        &Bins {
            dir: Default::default(),
        },
    )?
    .into_iter()
    .map(|c| c.name)
    .collect();
    anyhow::ensure!(
        names.iter().any(|n| n == component),
        "no component {component:?}; one of: {}",
        names.join(", ")
    );
    let path = data.log(component);
    println!("==> {} <==", path.display());
    println!("{}", crate::process::tail(&path, lines));
    if !follow {
        return Ok(());
    }
    let mut f = std::fs::File::open(&path)?;
    let mut pos = f.seek(std::io::SeekFrom::End(0))?;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let len = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        if len < pos {
            // Truncated or replaced: start over.
            f = std::fs::File::open(&path)?;
            pos = 0;
        }
        let n = f.read(&mut buf)?;
        if n == 0 {
            std::thread::sleep(Duration::from_millis(200));
            continue;
        }
        pos += n as u64;
        std::io::stdout().write_all(&buf[..n])?;
        std::io::stdout().flush()?;
    }
}
