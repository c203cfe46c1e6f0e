//! `atlantis`: the command-line client.

use clap::{CommandFactory, Parser};

use atlantis_cli::{Cli, Command};

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Completions { shell } => {
            clap_complete::generate(
                shell,
                &mut Cli::command(),
                "atlantis",
                &mut std::io::stdout(),
            );
            Ok(())
        }
        other => {
            let name = format!("{other:?}");
            let name = name.split([' ', '{']).next().unwrap_or("command");
            anyhow::bail!(
                "`{name}` needs the manager API, which this build does not include yet (manager at {})",
                cli.manager
            )
        }
    }
}
