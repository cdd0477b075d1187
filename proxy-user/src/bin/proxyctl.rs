//! proxyctl: explains what this node does with connections to Services.

use std::{path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand};
use proxy_user::{DEFAULT_BPFFS, ctl};

/// Reads the maps proxy-agent pinned and explains them. Works whether or not the agent runs.
#[derive(Debug, Parser)]
#[command(version, about, long_about = None)]
struct Args {
    /// bpffs directory where proxy-agent pinned its maps.
    #[arg(long, value_name = "PATH", default_value = DEFAULT_BPFFS, global = true)]
    bpffs: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Frontends with their backends, weights, shares, affinity and counters.
    ///
    /// Example: proxyctl services --json | jq '.[] | select(.service == "default/web:http")'
    Services {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("proxyctl: {}", proxy_user::logging::error_chain(e.as_ref()));
            ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> anyhow::Result<()> {
    let maps = ctl::open_maps(&args.bpffs)?;
    match args.command {
        Command::Services { json } => {
            let rows = ctl::services::rows(&maps)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&rows)?);
            } else {
                print!("{}", ctl::services::render_table(&rows));
            }
        }
    }
    Ok(())
}
