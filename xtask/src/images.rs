//! `cargo xtask images`: the container images, for amd64 and arm64 nodes,
//! built with podman from static (musl) binaries of this checkout (arm64's
//! cross-compiled), then checked as a cluster would start them: each
//! image's entrypoint exists, is statically linked (no program
//! interpreter: it runs on any node's libc, or none) for the image's CPU,
//! and prints its version (arm64's under qemu's user mode); the agent's
//! image also carries the CNI plugin (static too, since it runs on the node
//! itself) and the BPF object (one object serves both CPUs: BPF bytecode
//! and the kernel structures it reads are the same on both). Each image
//! name is a manifest list of the two, as a registry serves a multi-arch
//! image. Containers cannot be run on this machine, so each image is
//! mounted and its binaries run from there.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, ensure, Context};

use crate::{run, Workspace};

/// A CPU the images are built for, and how its binaries are built and run
/// on this (x86-64) machine.
pub(crate) struct Platform {
    /// The architecture as images name it (`linux/ARCH`), also the suffix
    /// of its image's tag.
    arch: &'static str,
    /// The Rust target of its static binaries.
    pub(crate) target: &'static str,
    /// Its ELF `e_machine`.
    elf_machine: u16,
    strip: &'static str,
    /// Cargo's environment for a cross build: the linker, and the C
    /// compiler of the crates with C in them (aws-lc, ring, jemalloc).
    cross: &'static [(&'static str, &'static str)],
    /// What runs one of its binaries here (qemu's user mode), if not the
    /// machine itself.
    runner: Option<&'static str>,
}

pub(crate) const PLATFORMS: [Platform; 2] = [
    Platform {
        arch: "amd64",
        target: "x86_64-unknown-linux-musl",
        elf_machine: 62,
        strip: "strip",
        cross: &[],
        runner: None,
    },
    Platform {
        arch: "arm64",
        target: "aarch64-unknown-linux-musl",
        elf_machine: 183,
        strip: "aarch64-linux-gnu-strip",
        cross: &[
            (
                "CARGO_TARGET_AARCH64_UNKNOWN_LINUX_MUSL_LINKER",
                "aarch64-linux-gnu-gcc",
            ),
            // Debian's musl-dev:arm64 wrapper: the cross gcc with musl's
            // headers and C library.
            ("CC_aarch64_unknown_linux_musl", "aarch64-linux-musl-gcc"),
            // jemalloc takes its page size from the build; arm64 nodes run
            // 4 KiB, 16 KiB or 64 KiB pages, and one built for the largest
            // runs on all of them.
            ("JEMALLOC_SYS_WITH_LG_PAGE", "16"),
            // Atomics inline: gcc's out-of-line ones (libgcc's lse-init)
            // need glibc's __getauxval, which musl lacks, and jemalloc's
            // configure links its probes (it found no atomics at all).
            ("CFLAGS_aarch64_unknown_linux_musl", "-mno-outline-atomics"),
        ],
        runner: Some("qemu-aarch64"),
    },
];

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
    ensure!(
        cfg!(target_arch = "x86_64"),
        "the images are built on an x86-64 machine (arm64's binaries are cross-compiled)"
    );
    let version = env!("CARGO_PKG_VERSION");
    for platform in &PLATFORMS {
        build_static(workspace, platform)?;
        if let Some(runner) = platform.runner {
            run_on_cpu(workspace, platform, runner)?;
        }
        let staged = stage(workspace, platform)?;
        for (image, carried) in IMAGES {
            let tag = platform_tag(image, version, platform);
            run(Command::new("podman")
                .args(["build", "--quiet", "--build-arg", "BINARIES=staged"])
                .arg(format!("--platform=linux/{}", platform.arch))
                .arg("--file")
                .arg(workspace.root.join("deploy/Dockerfile"))
                .args(["--target", image, "--tag", &tag])
                .arg(&staged))?;
            check(&tag, carried, version, platform)
                .with_context(|| format!("the {} image {image}", platform.arch))?;
            println!("images: {image} for {} ok", platform.arch);
        }
    }
    for (image, _) in IMAGES {
        list(&tag(image, version), image, version)
            .with_context(|| format!("the manifest list of {image}"))?;
    }
    Ok(())
}

/// Builds the images' static binaries for `platform`, into
/// `<target>/<platform's target>/release`.
fn build_static(workspace: &Workspace, platform: &Platform) -> anyhow::Result<()> {
    let mut cargo = workspace.cargo();
    cargo.args(["build", "--release", "--target", platform.target]);
    cargo.envs(platform.cross.iter().copied());
    for binary in BINARIES {
        cargo.args(["-p", binary]);
    }
    run(&mut cargo)
}

/// The images' binaries for this machine's CPU (amd64), as a directory
/// the test bed runs its binaries from: the static builds, with the
/// release build's test app beside them (it is no part of an image), and
/// the BPF object where the test bed looks for it. The bench measures what
/// clusters run with it.
pub(crate) fn for_the_test_bed(workspace: &Workspace) -> anyhow::Result<PathBuf> {
    ensure!(
        cfg!(target_arch = "x86_64"),
        "the images' binaries are benchmarked on an x86-64 machine"
    );
    let platform = &PLATFORMS[0];
    build_static(workspace, platform)?;
    let built = workspace.target.join(platform.target).join("release");
    // Beside `release`, so that the test bed finds `<target>/bpf`.
    let dir = workspace.target.join("image-binaries");
    if dir.exists() {
        std::fs::remove_dir_all(&dir)?;
    }
    std::fs::create_dir_all(&dir)?;
    let test_app = workspace.target.join("release").join("ambit-testapp");
    let binaries = BINARIES.iter().map(|binary| (built.join(binary), *binary));
    for (from, name) in binaries.chain([(test_app, "ambit-testapp")]) {
        std::fs::hard_link(&from, dir.join(name))
            .with_context(|| format!("linking {} into {}", from.display(), dir.display()))?;
    }
    Ok(dir)
}

/// Runs the tests of the crates whose code differs most by CPU (the
/// cryptography's assembly in aws-lc, TLS handshakes, HBONE tunnels in
/// mutual TLS) built for `platform`, under `runner`: an image that starts
/// but cannot shake hands would pass every other check.
fn run_on_cpu(workspace: &Workspace, platform: &Platform, runner: &str) -> anyhow::Result<()> {
    const CRATES: [&str; 3] = ["ambit-identity", "ambit-mesh-tls", "ambit-hbone"];
    let mut cargo = workspace.cargo();
    cargo.args(["test", "--release", "--target", platform.target]);
    cargo.envs(platform.cross.iter().copied());
    let runner_variable = format!(
        "CARGO_TARGET_{}_RUNNER",
        platform.target.to_uppercase().replace('-', "_")
    );
    cargo.env(runner_variable, runner);
    for name in CRATES {
        cargo.args(["-p", name]);
    }
    run(&mut cargo)
        .with_context(|| format!("the tests of {} on {}", CRATES.join(", "), platform.arch))
}

fn tag(image: &str, version: &str) -> String {
    format!("localhost/ambit-{image}:{version}")
}

fn platform_tag(image: &str, version: &str, platform: &Platform) -> String {
    format!("{}-{}", tag(image, version), platform.arch)
}

/// Gathers `image`'s platform images under `list`, one name for every
/// node (as `podman manifest push` would publish it), and checks that
/// it names each platform once.
fn list(list: &str, image: &str, version: &str) -> anyhow::Result<()> {
    // A list, or a single image, from an earlier build holds the name.
    // `rmi` would take a list's name for its image of this machine's CPU
    // and delete that, so a list goes by `manifest rm` first.
    for remove in [&["manifest", "rm"][..], &["rmi", "--ignore"]] {
        let _ = Command::new("podman").args(remove).arg(list).output();
    }
    output(Command::new("podman").args(["manifest", "create", list]))?;
    for platform in &PLATFORMS {
        let added = format!(
            "containers-storage:{}",
            platform_tag(image, version, platform)
        );
        output(Command::new("podman").args(["manifest", "add", list, &added]))?;
    }
    let inspected = output(Command::new("podman").args(["manifest", "inspect", list]))?;
    let manifest: serde_json::Value =
        serde_json::from_str(&inspected).context("reading the manifest list")?;
    let mut platforms: Vec<String> = manifest["manifests"]
        .as_array()
        .context("no manifests in the list")?
        .iter()
        .map(|entry| {
            let platform = &entry["platform"];
            format!(
                "{}/{}",
                platform["os"].as_str().unwrap_or("?"),
                platform["architecture"].as_str().unwrap_or("?")
            )
        })
        .collect();
    platforms.sort();
    let expected: Vec<String> = PLATFORMS
        .iter()
        .map(|platform| format!("linux/{}", platform.arch))
        .collect();
    ensure!(
        platforms == expected,
        "the list names {platforms:?}, not {expected:?}"
    );
    println!("images: {list} serves {}", expected.join(" and "));
    Ok(())
}

/// The image's files for `platform`, as the Dockerfile's `staged` stage
/// takes them: stripped static binaries, the BPF object, the system's
/// roots.
fn stage(workspace: &Workspace, platform: &Platform) -> anyhow::Result<PathBuf> {
    let built = workspace.target.join(platform.target).join("release");
    let staged = workspace.target.join("images").join(platform.arch);
    if staged.exists() {
        std::fs::remove_dir_all(&staged)?;
    }
    std::fs::create_dir_all(&staged)?;
    for binary in BINARIES {
        run(Command::new(platform.strip)
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

/// Mounts `image`, built for `platform`, and checks its entrypoint and
/// `carried` files.
fn check(image: &str, carried: &[&str], version: &str, platform: &Platform) -> anyhow::Result<()> {
    let inspected = output(Command::new("podman").args([
        "image",
        "inspect",
        "--format",
        "{{.Architecture}} {{json .Config.Entrypoint}}",
        image,
    ]))?;
    let (arch, entrypoint) = inspected
        .trim()
        .split_once(' ')
        .context("reading the image's architecture")?;
    ensure!(
        arch == platform.arch,
        "it is marked for {arch}, not {}",
        platform.arch
    );
    let entrypoint: Vec<String> =
        serde_json::from_str(entrypoint).context("reading the entrypoint")?;
    let binary = entrypoint.first().context("no entrypoint")?.clone();
    let root =
        PathBuf::from(output(Command::new("podman").args(["image", "mount", image]))?.trim());
    let checked = (|| -> anyhow::Result<()> {
        let path = root.join(binary.trim_start_matches('/'));
        ensure!(path.is_file(), "its entrypoint {binary} is not in it");
        check_executable(&path, platform).with_context(|| binary.clone())?;
        let mut version_command = match platform.runner {
            Some(runner) => {
                let mut command = Command::new(runner);
                command.arg(&path);
                command
            }
            None => Command::new(&path),
        };
        let printed = output(version_command.arg("--version"))?;
        ensure!(
            printed.contains(version),
            "{binary} --version printed {printed:?}, not version {version}"
        );
        for file in carried {
            let path = root.join(file.trim_start_matches('/'));
            ensure!(path.is_file(), "it lacks {file}");
            if file.starts_with("/usr/bin/") {
                check_executable(&path, platform).with_context(|| file.to_string())?;
            }
        }
        Ok(())
    })();
    let _ = Command::new("podman")
        .args(["image", "unmount", image])
        .output();
    checked
}

/// Checks that the ELF file at `path` is for `platform`'s CPU and runs
/// without a program interpreter (the dynamic linker).
fn check_executable(path: &Path, platform: &Platform) -> anyhow::Result<()> {
    let executable = Executable::read(path)?;
    ensure!(
        executable.machine == platform.elf_machine,
        "built for ELF machine {}, not {}'s ({})",
        executable.machine,
        platform.arch,
        platform.elf_machine
    );
    ensure!(executable.is_static, "dynamically linked");
    Ok(())
}

/// What an ELF file's headers say of how it runs.
struct Executable {
    /// `e_machine`: the CPU it is for.
    machine: u16,
    /// No PT_INTERP among its program headers: it needs no dynamic linker.
    is_static: bool,
}

impl Executable {
    fn read(path: &Path) -> anyhow::Result<Self> {
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
        let machine = u16::try_from(field(0x12, 2)?)?;
        let program_headers = usize::try_from(field(0x20, 8)?)?;
        let entry_size = usize::try_from(field(0x36, 2)?)?;
        let entries = usize::try_from(field(0x38, 2)?)?;
        const PT_INTERP: u64 = 3;
        let mut is_static = true;
        for i in 0..entries {
            if field(program_headers + i * entry_size, 4)? == PT_INTERP {
                is_static = false;
            }
        }
        Ok(Self { machine, is_static })
    }
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
    fn a_binary_is_known_by_its_cpu_and_its_linking() {
        // This test's own binary asks for the dynamic linker (a glibc build).
        let own = Executable::read(&std::env::current_exe().unwrap()).unwrap();
        assert_eq!(own.is_static, cfg!(target_env = "musl"));
        assert_eq!(own.machine, PLATFORMS[0].elf_machine);
        let err = check_executable(&std::env::current_exe().unwrap(), &PLATFORMS[1]).unwrap_err();
        assert!(err.to_string().contains("not arm64's"), "{err}");
        assert!(Executable::read(Path::new("/etc/hostname")).is_err());
    }
}
