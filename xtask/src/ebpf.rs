//! Builds the BPF programs with nightly for `bpfel-unknown-none`.

use std::process::Command;

use anyhow::Context;

use crate::Workspace;

/// File the node agent looks for (see `ambit_node_agent::capture`).
const OBJECT_NAME: &str = "ambit.bpf.o";
const BPF_TARGET: &str = "bpfel-unknown-none";

pub fn build(workspace: &Workspace) -> anyhow::Result<()> {
    let build_dir = workspace.target.join("ebpf");
    let mut cargo = Command::new("rustup");
    cargo
        .args([
            "run",
            "nightly",
            "cargo",
            "build",
            "--locked",
            "--release",
            "--target",
            BPF_TARGET,
        ])
        .args(["-Z", "build-std=core", "--target-dir"])
        .arg(&build_dir)
        .current_dir(workspace.root.join("ebpf/programs"));
    // The host build's settings must not leak into the BPF build.
    for var in [
        "RUSTUP_TOOLCHAIN",
        "RUSTC",
        "RUSTC_WRAPPER",
        "RUSTFLAGS",
        "CARGO_TARGET_DIR",
        "CARGO",
    ] {
        cargo.env_remove(var);
    }
    crate::run(&mut cargo)
        .context("building the BPF programs (`cargo xtask setup` installs the tools)")?;

    let built = build_dir
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
