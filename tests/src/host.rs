//! What the test bed needs from the host: root, cgroup v2 and bpffs mounted,
//! and no leftovers of a killed run.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context};

/// Prefix of every namespace, cgroup and log directory the test bed makes.
pub const PREFIX: &str = "ambit-";
/// Where cgroup v2 is mounted when the host has not mounted it.
const OWN_CGROUP2_MOUNT: &str = "/run/ambit/cgroup2";
const BPFFS: &str = "/sys/fs/bpf";
const NETNS_DIR: &str = "/run/netns";

/// Where `command` is on the PATH, if it is.
pub fn on_path(command: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(command))
        .find(|candidate| candidate.is_file())
}

/// Fails, saying why, unless the process can build namespace clusters.
pub fn require_root() -> anyhow::Result<()> {
    if !nix::unistd::geteuid().is_root() {
        bail!(
            "the namespace cluster needs root (network namespaces, cgroups, BPF): \
             run as root, e.g. `sudo -E cargo xtask test`"
        );
    }
    Ok(())
}

/// The cgroup v2 mount point, mounting cgroup v2 first if the host has none.
pub fn cgroup2_root() -> anyhow::Result<PathBuf> {
    if let Some(mount) = mount_point("cgroup2")? {
        return Ok(mount);
    }
    fs::create_dir_all(OWN_CGROUP2_MOUNT).context("creating the cgroup v2 mount point")?;
    run("mount", &["-t", "cgroup2", "none", OWN_CGROUP2_MOUNT])?;
    Ok(PathBuf::from(OWN_CGROUP2_MOUNT))
}

/// Mounts bpffs at /sys/fs/bpf unless it is mounted; returns whether it mounted.
pub fn ensure_bpffs() -> anyhow::Result<bool> {
    if mount_point("bpf")?.is_some() {
        return Ok(false);
    }
    run("mount", &["-t", "bpf", "bpf", BPFFS])?;
    Ok(true)
}

/// First mount point of a file system type, from /proc/self/mounts.
fn mount_point(fs_type: &str) -> anyhow::Result<Option<PathBuf>> {
    let mounts = fs::read_to_string("/proc/self/mounts").context("reading /proc/self/mounts")?;
    Ok(mounts.lines().find_map(|line| {
        let mut fields = line.split_whitespace();
        let (_, dir, kind) = (fields.next()?, fields.next()?, fields.next()?);
        (kind == fs_type).then(|| PathBuf::from(dir))
    }))
}

/// Runs a command to completion; its stderr is part of the error.
pub(crate) fn run(program: &str, args: &[&str]) -> anyhow::Result<()> {
    let output = Command::new(program)
        .args(args)
        .output()
        .with_context(|| format!("running {program} (is it installed? `cargo xtask setup`)"))?;
    if !output.status.success() {
        bail!(
            "`{program} {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(())
}

/// The run a name belongs to (`ambit-<pid>-<n>`) and the pid that owns it.
fn run_of(name: &str) -> Option<(String, i32)> {
    let mut parts = name.strip_prefix(PREFIX)?.splitn(3, '-');
    let pid: i32 = parts.next()?.parse().ok()?;
    let n: u32 = parts.next()?.parse().ok()?;
    Some((format!("{PREFIX}{pid}-{n}"), pid))
}

fn is_alive(pid: i32) -> bool {
    Path::new("/proc").join(pid.to_string()).exists()
}

/// Removes what runs whose process is gone left behind (processes, cgroups,
/// network namespaces, logs); returns how many runs it removed. Runs of live
/// processes are kept.
pub fn sweep_leftovers() -> anyhow::Result<usize> {
    let cgroups = cgroup2_root()?;
    let mut stale = BTreeSet::new();
    for dir in [
        cgroups.as_path(),
        Path::new(NETNS_DIR),
        &std::env::temp_dir(),
    ] {
        for name in list_names(dir)? {
            if let Some((run, pid)) = run_of(&name) {
                if !is_alive(pid) {
                    stale.insert(run);
                }
            }
        }
    }
    for run in &stale {
        remove_run(run)?;
    }
    Ok(stale.len())
}

/// Removes everything of one run: its processes and cgroups, its network
/// namespaces (`<run>-*`), its pinned BPF maps (`/sys/fs/bpf/<run>-*`) and
/// its work directory.
pub(crate) fn remove_run(run: &str) -> anyhow::Result<()> {
    remove_cgroup_tree(&cgroup2_root()?.join(run))?;
    let prefix = format!("{run}-");
    for name in list_names(Path::new(BPFFS))? {
        if name.starts_with(&prefix) {
            let pins = Path::new(BPFFS).join(&name);
            ignore_not_found(fs::remove_dir_all(&pins))
                .with_context(|| format!("removing {}", pins.display()))?;
        }
    }
    for name in list_names(Path::new(NETNS_DIR))? {
        if name.starts_with(&prefix) {
            let deleted = self::run("ip", &["netns", "del", &name]);
            // Another sweep (a parallel test) may have deleted it first.
            if Path::new(NETNS_DIR).join(&name).exists() {
                deleted?;
            }
        }
    }
    let logs = std::env::temp_dir().join(run);
    ignore_not_found(fs::remove_dir_all(&logs))
        .with_context(|| format!("removing {}", logs.display()))
}

/// Treats "already gone" as done: parallel sweeps remove the same leftovers.
fn ignore_not_found(result: std::io::Result<()>) -> std::io::Result<()> {
    match result {
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

fn list_names(dir: &Path) -> anyhow::Result<Vec<String>> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(error) => return Err(error).with_context(|| format!("listing {}", dir.display())),
    };
    Ok(entries
        .filter_map(Result::ok)
        .filter_map(|entry| entry.file_name().into_string().ok())
        .collect())
}

/// Kills every process in a cgroup tree, then removes its directories.
fn remove_cgroup_tree(root: &Path) -> anyhow::Result<()> {
    if !root.exists() {
        return Ok(());
    }
    ignore_not_found(fs::write(root.join("cgroup.kill"), "1"))
        .with_context(|| format!("killing the processes of cgroup {}", root.display()))?;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while is_populated(root)? {
        if std::time::Instant::now() > deadline {
            bail!(
                "processes of cgroup {} did not exit after SIGKILL",
                root.display()
            );
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    remove_dirs_bottom_up(root)
}

fn is_populated(cgroup: &Path) -> anyhow::Result<bool> {
    match fs::read_to_string(cgroup.join("cgroup.events")) {
        Ok(events) => Ok(events.lines().any(|line| line == "populated 1")),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(error) => {
            Err(error).with_context(|| format!("reading {}/cgroup.events", cgroup.display()))
        }
    }
}

fn remove_dirs_bottom_up(dir: &Path) -> anyhow::Result<()> {
    for name in list_names(dir)? {
        let path = dir.join(name);
        if path.is_dir() {
            remove_dirs_bottom_up(&path)?;
        }
    }
    ignore_not_found(fs::remove_dir(dir))
        .with_context(|| format!("removing cgroup {}", dir.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leftovers_are_recognised_by_their_owner_pid() {
        assert_eq!(
            run_of("ambit-4242-0-node-1"),
            Some(("ambit-4242-0".into(), 4242))
        );
        assert_eq!(run_of("ambit-4242-3"), Some(("ambit-4242-3".into(), 4242)));
        assert_eq!(run_of("other-4242-0"), None);
        assert_eq!(run_of("ambit-bpf"), None);
    }
}
