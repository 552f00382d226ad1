//! `ambit`: the command line for Ambit users.

mod analyze;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "ambit", version, about = "Ambit, the sidecarless service mesh")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Check Istio manifests as Ambit reads them: one line per problem, then
    /// a summary; exits 1 when there is an error.
    Analyze {
        /// A manifest file, a directory of them (.yaml, .yml, .json), or `-`
        /// for standard input; repeatable.
        #[arg(short = 'f', long = "file", required = true)]
        files: Vec<String>,
    },
}

fn main() {
    let outcome = match Cli::parse().command {
        Command::Analyze { files } => analyze::run(&files),
    };
    match outcome {
        Ok(clean) => std::process::exit(if clean { 0 } else { 1 }),
        Err(error) => {
            eprintln!("ambit: {error:#}");
            std::process::exit(2);
        }
    }
}
