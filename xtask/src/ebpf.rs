//! Builds and lints the BPF programs with nightly for `bpfel-unknown-none`.

use std::path::PathBuf;
use std::process::Command;

use anyhow::Context;

use crate::Workspace;

/// File the node agent looks for (see `ambit_node_agent::capture`).
const OBJECT_NAME: &str = "ambit.bpf.o";
const BPF_TARGET: &str = "bpfel-unknown-none";
/// How the programs crate is compiled, by `build` and `clippy` alike.
const BPF_BUILD_ARGS: &[&str] = &[
    "--locked",
    "--release",
    "--target",
    BPF_TARGET,
    "-Z",
    "build-std=core",
];

/// Builds the programs and puts the object at `<target>/bpf/ambit.bpf.o`.
pub fn build(workspace: &Workspace) -> anyhow::Result<()> {
    crate::run(nightly_cargo(workspace, &["build"]).args(BPF_BUILD_ARGS))
        .context("building the BPF programs (`cargo xtask setup` installs the tools)")?;

    let built = build_dir(workspace)
        .join(BPF_TARGET)
        .join("release")
        .join("ambit-ebpf");
    let dir = workspace.target.join("bpf");
    std::fs::create_dir_all(&dir)?;
    let object = dir.join(OBJECT_NAME);
    std::fs::copy(&built, &object)
        .with_context(|| format!("copying {} to {}", built.display(), object.display()))?;
    println!("BPF object: {}", object.display());
    Ok(())
}

/// Formatting and clippy for the programs crate.
pub fn lint(workspace: &Workspace) -> anyhow::Result<()> {
    crate::run(&mut nightly_cargo(workspace, &["fmt", "--check"]))?;
    crate::run(
        nightly_cargo(workspace, &["clippy"])
            .args(BPF_BUILD_ARGS)
            .args(["--", "-D", "warnings"]),
    )
}

fn build_dir(workspace: &Workspace) -> PathBuf {
    workspace.target.join("ebpf")
}

/// `cargo +nightly ARGS…` in the programs crate, with its own target directory.
fn nightly_cargo(workspace: &Workspace, args: &[&str]) -> Command {
    let mut cargo = Command::new("rustup");
    cargo
        .args(["run", "nightly", "cargo"])
        .args(args)
        .current_dir(workspace.root.join("ebpf/programs"))
        .env("CARGO_TARGET_DIR", build_dir(workspace));
    // The host build's settings must not leak into the BPF build.
    for var in [
        "RUSTUP_TOOLCHAIN",
        "RUSTC",
        "RUSTC_WRAPPER",
        "RUSTFLAGS",
        "CARGO",
    ] {
        cargo.env_remove(var);
    }
    cargo
}
