//! `atlantis`: the command-line client. Errors are one line on stderr (and `{"error": ...}` on stdout with
//! `--json`), never a backtrace, whatever `RUST_BACKTRACE` says.

use clap::{CommandFactory, Parser};

use atlantis_cli::{Cli, CliError, Command};

fn main() {
    // A bug must not dump a stack on the user either.
    std::panic::set_hook(Box::new(|info| {
        let msg = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown".into());
        let at = info
            .location()
            .map(|l| format!(" at {}:{}", l.file(), l.line()))
            .unwrap_or_default();
        eprintln!("error: internal error in atlantis{at}: {msg} (please report it)");
    }));
    let cli = Cli::parse();
    if let Command::Completions { shell } = cli.command {
        clap_complete::generate(
            shell,
            &mut Cli::command(),
            "atlantis",
            &mut std::io::stdout(),
        );
        return;
    }
    let json = cli.json;
    atlantis_cli::output::Out::detect(json);
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start: {e}");
            std::process::exit(1);
        }
    };
    let code = match rt.block_on(atlantis_cli::cmd::run(cli)) {
        Ok(code) => code,
        Err(e) => report(&e, json),
    };
    drop(rt);
    std::process::exit(code);
}

fn report(e: &CliError, json: bool) -> i32 {
    // A failed task's document was printed already; other failures get an error document.
    if json && !matches!(e, CliError::TaskFailed(_)) {
        println!("{}", e.to_json());
    }
    let line = e.to_string().replace('\n', " ");
    eprintln!("{} {line}", console::style("error:").red().bold());
    e.exit_code()
}
