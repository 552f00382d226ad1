//! `cargo xtask …`: the project's own commands.

mod bench;
mod crds;
mod demo;
mod ebpf;
mod images;
mod istio_fields;
mod layering;
mod setup;
mod soak;

use std::path::PathBuf;
use std::process::Command;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask", about = "Ambit's developer commands")]
struct Cli {
    #[command(subcommand)]
    command: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what this machine lacks and mount cgroup v2 and bpffs (idempotent).
    Setup,
    /// Build the BPF programs into <target>/bpf/ambit.bpf.o.
    BuildEbpf,
    /// Set up, build, and show traffic on a two-node namespace cluster.
    Demo,
    /// Check formatting, clippy and the crates' dependency rules, the BPF programs included.
    Lint,
    /// Measure the mesh model at scale, and the data path against no mesh on the namespace cluster (release build; needs root).
    Bench {
        /// Times each path is measured, in turns; the report gives medians.
        #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u16).range(1..))]
        rounds: u16,
        /// Only this part (all of them by default).
        #[arg(long, value_enum)]
        only: Option<bench::Part>,
        /// A ztunnel binary (built from istio/ztunnel; the bench never
        /// builds or fetches it): its mTLS path is measured beside the
        /// agents' in the same rounds.
        #[arg(long)]
        ztunnel: Option<PathBuf>,
        /// Run the images' static (musl) builds of the agent, waypoint, CA
        /// and CNI plugin, what clusters run, instead of this machine's
        /// release builds.
        #[arg(long)]
        image_binaries: bool,
    },
    /// Connection churn through both agents with attacks beside it; reports whether the agents stay flat (release build; needs root).
    Soak {
        /// How long the churn lasts.
        #[arg(long, default_value_t = 10)]
        minutes: u64,
    },
    /// Derive config/tests/fixtures/istio-fields.txt from Istio's published CRDs.
    IstioFields {
        /// Istio's `crd-all.gen.yaml`.
        #[arg(long)]
        crds: PathBuf,
    },
    /// Generate the CRDs of the Istio kinds Ambit reads from its own types
    /// into the chart (`--check`: fail when they are out of date).
    Crds {
        #[arg(long)]
        check: bool,
    },
    /// The Helm chart: `check` lints, renders and validates it for every
    /// value set; `render` writes the plain manifests, deploy/ambit.yaml.
    Chart {
        #[arg(value_parser = ["check", "render"], default_value = "check")]
        action: String,
    },
    /// Build the container images with podman from static binaries and check them (needs root).
    Images,
    /// Set up, build, and run every test (unit, integration, end-to-end;
    /// needs root); with no arguments, also build and check the images.
    Test {
        /// Passed to `cargo test`, e.g. a test name filter.
        #[arg(trailing_var_arg = true)]
        args: Vec<String>,
    },
}

fn main() -> anyhow::Result<()> {
    let workspace = Workspace::find()?;
    match Cli::parse().command {
        Task::Setup => setup::run(),
        Task::BuildEbpf => ebpf::build(&workspace),
        Task::Lint => {
            run(workspace.cargo().args(["fmt", "--all", "--check"]))?;
            run(workspace.cargo().args([
                "clippy",
                "--workspace",
                "--all-targets",
                "--",
                "-D",
                "warnings",
            ]))?;
            layering::check(&workspace)?;
            ebpf::lint(&workspace)
        }
        Task::Demo => {
            prepare(&workspace)?;
            demo::run()
        }
        Task::Bench {
            rounds,
            only,
            ztunnel,
            image_binaries,
        } => {
            prepare(&workspace)?;
            let bench = bench::Bench {
                rounds: rounds.into(),
                only,
                ztunnel: ztunnel.as_deref(),
                image_binaries,
            };
            bench::run(&workspace, &bench)
        }
        Task::Soak { minutes } => {
            prepare(&workspace)?;
            soak::run(&workspace, minutes)
        }
        Task::IstioFields { crds } => istio_fields::write(&workspace, &crds),
        Task::Crds { check: false } => crds::write(&workspace),
        Task::Crds { check: true } => crds::check(&workspace),
        Task::Chart { action } => {
            setup::chart_libraries()?;
            run(Command::new("python3")
                .arg(workspace.root.join("xtask/chart.py"))
                .arg(action))
        }
        Task::Test { args } => {
            prepare(&workspace)?;
            let everything = args.is_empty();
            let mut test = workspace.cargo();
            test.args(["test", "--workspace"]).args(args);
            run_tests(&mut test)?;
            // The whole suite also builds and checks the images.
            match everything {
                true => images::build(&workspace),
                false => Ok(()),
            }
        }
        Task::Images => {
            ambit_testbed::host::require_root()?;
            setup::run()?;
            ebpf::build(&workspace)?;
            images::build(&workspace)
        }
    }
}

/// What the demo and the tests need before they start: tools, mounts, and
/// every binary and BPF object built.
fn prepare(workspace: &Workspace) -> anyhow::Result<()> {
    ambit_testbed::host::require_root()?;
    setup::run()?;
    ebpf::build(workspace)?;
    run(workspace
        .cargo()
        .args(["build", "--workspace", "--bins", "--examples"]))
}

/// The workspace this xtask belongs to.
pub struct Workspace {
    root: PathBuf,
    target: PathBuf,
}

impl Workspace {
    fn find() -> anyhow::Result<Self> {
        // `cargo run` says where xtask is at run time; the path compiled in
        // is where it was built, which a shared target directory may have
        // reused from another checkout.
        let manifest_dir = std::env::var_os("CARGO_MANIFEST_DIR")
            .map_or_else(|| env!("CARGO_MANIFEST_DIR").into(), PathBuf::from);
        let root = manifest_dir
            .parent()
            .context("xtask lives in a workspace")?
            .to_path_buf();
        let metadata = Command::new(cargo_bin())
            .args(["metadata", "--format-version", "1", "--no-deps"])
            .current_dir(&root)
            .output()
            .context("running cargo metadata")?;
        if !metadata.status.success() {
            bail!(
                "cargo metadata failed: {}",
                String::from_utf8_lossy(&metadata.stderr)
            );
        }
        let metadata: serde_json::Value = serde_json::from_slice(&metadata.stdout)?;
        let target = metadata["target_directory"]
            .as_str()
            .context("cargo metadata has no target_directory")?
            .into();
        Ok(Self { root, target })
    }

    /// `cargo` run at the workspace root.
    fn cargo(&self) -> Command {
        let mut command = Command::new(cargo_bin());
        command.current_dir(&self.root);
        // `cargo xtask` runs this binary with its own package's variables
        // set. Passed on, they differ from what the `cargo xtask` build saw,
        // so build scripts that watch them (ring's watches
        // CARGO_MANIFEST_DIR) rerun, and each build undoes the other's.
        for (name, _) in std::env::vars_os() {
            let name = name.to_string_lossy();
            if name.starts_with("CARGO_MANIFEST_") || name.starts_with("CARGO_PKG_") {
                command.env_remove(name.as_ref());
            }
        }
        command
    }
}

fn cargo_bin() -> String {
    std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_string())
}

/// Runs `cargo test`, passing its output through, and ends with one line
/// that totals every test binary's results.
fn run_tests(command: &mut Command) -> anyhow::Result<()> {
    use std::io::BufRead;
    let mut child = command
        .stdout(std::process::Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {command:?}"))?;
    let stdout = child.stdout.take().context("cargo test's stdout")?;
    let (mut passed, mut failed) = (0u64, 0u64);
    for line in std::io::BufReader::new(stdout).lines() {
        let line = line?;
        println!("{line}");
        if let Some((p, f)) = test_result_counts(&line) {
            passed += p;
            failed += f;
        }
    }
    let status = child.wait()?;
    println!("{passed} passed, {failed} failed");
    if !status.success() {
        bail!("cargo test failed ({status})");
    }
    Ok(())
}

/// The counts in a line like `test result: ok. 4 passed; 0 failed; …`.
fn test_result_counts(line: &str) -> Option<(u64, u64)> {
    let rest = line.strip_prefix("test result: ")?;
    let count = |label: &str| -> Option<u64> {
        rest.split(';').find_map(|part| {
            part.trim()
                .strip_suffix(label)?
                .rsplit(' ')
                .next()?
                .parse()
                .ok()
        })
    };
    Some((count(" passed")?, count(" failed")?))
}

/// Runs a command with inherited output; fails when it fails.
fn run(command: &mut Command) -> anyhow::Result<()> {
    let status = command
        .status()
        .with_context(|| format!("starting {command:?}"))?;
    if !status.success() {
        bail!("{command:?} failed ({status})");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_result_lines_are_totalled() {
        let line = "test result: ok. 4 passed; 1 failed; 0 ignored; 0 measured; 0 filtered out; finished in 6.85s";
        assert_eq!(test_result_counts(line), Some((4, 1)));
        assert_eq!(test_result_counts("running 4 tests"), None);
    }
}
