//! `ambit`: the command line for Ambit users.

mod analyze;
mod stat;

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
    /// The golden signals per service (or workload), read off the proxies'
    /// metrics endpoints: requests, rate, success, latency percentiles,
    /// TCP connections and their mutual TLS share.
    Stat {
        #[command(flatten)]
        sources: stat::Sources,
        /// Over a window of this many seconds (two scrapes); without it,
        /// since the proxies started.
        #[arg(long)]
        interval: Option<u64>,
        /// Refresh every interval (5 s unless `--interval` says) until
        /// interrupted: the table redrawn, or a JSON line each time.
        #[arg(short = 'w', long)]
        watch: bool,
        #[arg(long, value_enum, default_value = "service")]
        by: stat::By,
        #[arg(short = 'o', long, value_enum, default_value = "table")]
        output: stat::Output,
    },
    /// The service graph, from the proxies' metrics endpoints: a node per
    /// workload, an edge per caller and callee with its requests, success
    /// and mutual TLS; written as Graphviz DOT, or SVG for a `.svg` file.
    Graph {
        #[command(flatten)]
        sources: stat::Sources,
        /// Where the graph goes (`mesh.svg`, `mesh.dot`).
        #[arg(short = 'o', long, default_value = "mesh.svg")]
        out: std::path::PathBuf,
    },
}

fn main() {
    let outcome = match Cli::parse().command {
        Command::Analyze { files } => analyze::run(&files),
        Command::Stat {
            sources,
            interval,
            watch,
            by,
            output,
        } => {
            let view = stat::View {
                interval: interval.map(std::time::Duration::from_secs),
                watch,
                by,
                output,
            };
            stat::run(&sources, &view).map(|()| true)
        }
        Command::Graph { sources, out } => stat::graph(&sources, &out).map(|()| true),
    };
    match outcome {
        Ok(clean) => std::process::exit(if clean { 0 } else { 1 }),
        Err(error) => {
            eprintln!("ambit: {error:#}");
            std::process::exit(2);
        }
    }
}
