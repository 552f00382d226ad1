//! `cargo xtask images`: the container images, built with podman from
//! static (musl) binaries of this checkout, then checked as a cluster
//! would start them: each image's entrypoint exists, is statically linked
//! (no program interpreter: it runs on any node's libc, or none) and
//! prints its version; the agent's image also carries the CNI plugin
//! (static too, since it runs on the node itself) and the BPF object.
//! Containers cannot be run on this machine, so the image is mounted and
//! its binaries run from there.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, ensure, Context};

use crate::{run, Workspace};

/// The architecture the binaries are built for here (the Dockerfile builds
/// arm64 too, from source, under buildx).
const TARGET: &str = "x86_64-unknown-linux-musl";
const BINARIES: [&str; 4] = [
    "ambit-node-agent",
    "ambit-cni",
    "ambit-ca",
    "ambit-waypoint",
];
/// The images, with the static binaries each must carry besides its
/// entrypoint, and other files.
const IMAGES: [(&str, &[&str]); 3] = [
    (
        "node-agent",
        &["/usr/bin/ambit-cni", "/usr/lib/ambit/ambit.bpf.o"],
    ),
    ("ca", &[]),
    ("waypoint", &["/etc/ssl/certs/ca-certificates.crt"]),
];
/// The system's roots, which the waypoint's image carries.
const SYSTEM_ROOTS: &str = "/etc/ssl/certs/ca-certificates.crt";

pub fn build(workspace: &Workspace) -> anyhow::Result<()> {
    let mut cargo = workspace.cargo();
    cargo.args(["build", "--release", "--target", TARGET]);
    for binary in BINARIES {
        cargo.args(["-p", binary]);
    }
    run(&mut cargo)?;
    let staged = stage(workspace)?;
    let version = env!("CARGO_PKG_VERSION");
    for (image, _) in IMAGES {
        run(Command::new("podman")
            .args(["build", "--quiet", "--build-arg", "BINARIES=staged"])
            .arg("--file")
            .arg(workspace.root.join("deploy/Dockerfile"))
            .args(["--target", image, "--tag"])
            .arg(tag(image, version))
            .arg(&staged))?;
    }
    for (image, carried) in IMAGES {
        check(&tag(image, version), carried, version)
            .with_context(|| format!("the image {image}"))?;
        println!("images: {image} ok");
    }
    Ok(())
}

fn tag(image: &str, version: &str) -> String {
    format!("localhost/ambit-{image}:{version}")
}

/// The image's files, as the Dockerfile's `staged` stage takes them:
/// stripped static binaries, the BPF object, the system's roots.
fn stage(workspace: &Workspace) -> anyhow::Result<PathBuf> {
    let built = workspace.target.join(TARGET).join("release");
    let staged = workspace.target.join("images");
    if staged.exists() {
        std::fs::remove_dir_all(&staged)?;
    }
    std::fs::create_dir_all(&staged)?;
    for binary in BINARIES {
        run(Command::new("strip")
            .arg("-o")
            .arg(staged.join(binary))
            .arg(built.join(binary)))?;
    }
    std::fs::copy(
        workspace.target.join("bpf/ambit.bpf.o"),
        staged.join("ambit.bpf.o"),
    )
    .context("the BPF object (cargo xtask build-ebpf)")?;
    std::fs::copy(SYSTEM_ROOTS, staged.join("ca-certificates.crt"))
        .with_context(|| format!("copying {SYSTEM_ROOTS}"))?;
    Ok(staged)
}

/// Mounts `image` and checks its entrypoint and `carried` files.
fn check(image: &str, carried: &[&str], version: &str) -> anyhow::Result<()> {
    let inspected = output(Command::new("podman").args([
        "image",
        "inspect",
        "--format",
        "{{json .Config.Entrypoint}}",
        image,
    ]))?;
    let entrypoint: Vec<String> =
        serde_json::from_str(inspected.trim()).context("reading the entrypoint")?;
    let binary = entrypoint.first().context("no entrypoint")?.clone();
    let root =
        PathBuf::from(output(Command::new("podman").args(["image", "mount", image]))?.trim());
    let checked = (|| -> anyhow::Result<()> {
        let path = root.join(binary.trim_start_matches('/'));
        ensure!(path.is_file(), "its entrypoint {binary} is not in it");
        ensure!(is_static(&path)?, "{binary} is dynamically linked");
        let printed = output(Command::new(&path).arg("--version"))?;
        ensure!(
            printed.contains(version),
            "{binary} --version printed {printed:?}, not version {version}"
        );
        for file in carried {
            let path = root.join(file.trim_start_matches('/'));
            ensure!(path.is_file(), "it lacks {file}");
            if file.starts_with("/usr/bin/") {
                ensure!(is_static(&path)?, "{file} is dynamically linked");
            }
        }
        Ok(())
    })();
    let _ = Command::new("podman")
        .args(["image", "unmount", image])
        .output();
    checked
}

/// Whether the ELF file at `path` runs without a program interpreter (the
/// dynamic linker): no PT_INTERP among its program headers.
fn is_static(path: &Path) -> anyhow::Result<bool> {
    let elf = std::fs::read(path)?;
    let field = |at: usize, size: usize| -> anyhow::Result<u64> {
        let bytes = elf.get(at..at + size).context("a truncated ELF file")?;
        Ok(bytes
            .iter()
            .rev()
            .fold(0u64, |value, byte| (value << 8) | u64::from(*byte)))
    };
    if elf.get(..4) != Some(b"\x7fELF") || elf.get(4) != Some(&2) || elf.get(5) != Some(&1) {
        bail!("{} is not a 64-bit little-endian ELF file", path.display());
    }
    let program_headers = usize::try_from(field(0x20, 8)?)?;
    let entry_size = usize::try_from(field(0x36, 2)?)?;
    let entries = usize::try_from(field(0x38, 2)?)?;
    const PT_INTERP: u64 = 3;
    for i in 0..entries {
        if field(program_headers + i * entry_size, 4)? == PT_INTERP {
            return Ok(false);
        }
    }
    Ok(true)
}

fn output(command: &mut Command) -> anyhow::Result<String> {
    let output = command
        .output()
        .with_context(|| format!("running {command:?}"))?;
    ensure!(
        output.status.success(),
        "{command:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dynamically_linked_binary_is_told_from_a_static_one() {
        // This test's own binary asks for the dynamic linker (a glibc build).
        let own = std::env::current_exe().unwrap();
        assert_eq!(is_static(&own).unwrap(), cfg!(target_env = "musl"));
        assert!(is_static(Path::new("/etc/hostname")).is_err());
    }
}
