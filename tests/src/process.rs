//! Processes the test bed starts, and where their binaries are.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

/// The workspace's built binaries (`target/<profile>/`).
#[derive(Clone, Debug)]
pub struct Binaries {
    dir: PathBuf,
}

impl Binaries {
    /// Finds the build directory from the running executable: a binary in
    /// `target/<profile>/` or a test in `target/<profile>/deps/`.
    pub fn locate() -> anyhow::Result<Self> {
        let exe = std::env::current_exe().context("finding the running executable")?;
        exe.ancestors()
            .skip(1)
            .take(2)
            .find(|dir| dir.join("ambit-testapp").is_file())
            .map(|dir| Self {
                dir: dir.to_path_buf(),
            })
            .with_context(|| {
                format!(
                    "no ambit-testapp next to {}: build the binaries first with \
                     `cargo build --workspace --bins --examples` (`cargo xtask test` does)",
                    exe.display()
                )
            })
    }

    /// The binaries in `dir`, e.g. `target/release` for benchmarks.
    pub fn in_dir(dir: &Path) -> anyhow::Result<Self> {
        if !dir.join("ambit-testapp").is_file() {
            bail!(
                "no ambit-testapp in {}: build the binaries first",
                dir.display()
            );
        }
        Ok(Self {
            dir: dir.to_path_buf(),
        })
    }

    /// Path of the workspace binary `name`, which must exist.
    pub fn get(&self, name: &str) -> anyhow::Result<PathBuf> {
        built(self.dir.join(name), "cargo build --workspace --bins")
    }

    /// Path of the workspace example `name` (built by `cargo test`).
    pub fn example(&self, name: &str) -> anyhow::Result<PathBuf> {
        built(
            self.dir.join("examples").join(name),
            "cargo build -p ambit-testbed --examples",
        )
    }

    /// The BPF object, where `cargo xtask build-ebpf` puts it.
    pub fn bpf_object(&self) -> anyhow::Result<PathBuf> {
        let path = self
            .dir
            .parent()
            .map(|target| target.join("bpf").join("ambit.bpf.o"))
            .filter(|path| path.is_file());
        path.with_context(|| {
            format!(
                "no BPF object beside {}: build it with `cargo xtask build-ebpf`",
                self.dir.display()
            )
        })
    }
}

/// `path` if it exists, else an error naming the command that builds it.
fn built(path: PathBuf, build: &str) -> anyhow::Result<PathBuf> {
    if !path.is_file() {
        bail!("{} is missing: build it with `{build}`", path.display());
    }
    Ok(path)
}

/// What a process has used.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Usage {
    pub cpu_seconds: f64,
    pub rss_bytes: u64,
    /// File descriptors open now.
    pub open_files: usize,
}

/// CPU time the whole machine has spent busy so far, all CPUs and the
/// kernel's own work (interrupts, softirqs, kernel threads) included: the
/// time since boot on every online CPU less what `/proc/stat` counts as
/// idle, waiting for I/O, or stolen by the hypervisor. Its busy columns
/// (user, system…) are sampled at timer ticks, which a load of short bursts
/// between idle spells mostly misses (a run of 500 new connections a second
/// read 0.1 s busy where it was 2.4 s); idle time is accounted as the CPU
/// leaves idle, so the busy time derived from it holds for any load.
pub fn machine_busy_seconds() -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string("/proc/stat")?;
    let mut lines = stat.lines();
    let ticks: Vec<u64> = lines
        .next()
        .and_then(|line| line.strip_prefix("cpu "))
        .context("no cpu line in /proc/stat")?
        .split_whitespace()
        .map(str::parse)
        .collect::<Result<_, _>>()?;
    let online = lines.filter(|line| line.starts_with("cpu")).count();
    // user nice system idle iowait irq softirq steal …
    let column = |index: usize| {
        ticks
            .get(index)
            .copied()
            .context("short cpu line in /proc/stat")
    };
    let not_busy = (column(3)? + column(4)? + column(7)?) as f64 / clock_ticks_per_second()?;
    let uptime = std::fs::read_to_string("/proc/uptime")?;
    let since_boot: f64 = (uptime.split_whitespace().next())
        .context("empty /proc/uptime")?
        .parse()?;
    Ok(since_boot * online as f64 - not_busy)
}

fn clock_ticks_per_second() -> anyhow::Result<f64> {
    Ok(nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)?.context("no CLK_TCK")? as f64)
}

/// A process started by the test bed. Dropping it kills it.
pub struct Process {
    name: String,
    child: Child,
    log: PathBuf,
}

impl Process {
    /// Starts `command`, its stdout and stderr going to `log`.
    pub(crate) fn spawn(name: &str, mut command: Command, log: &Path) -> anyhow::Result<Self> {
        let out = File::create(log).with_context(|| format!("creating {}", log.display()))?;
        let err = out.try_clone().context("duplicating the log file")?;
        let child = command
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .with_context(|| format!("starting {name}: {command:?}"))?;
        Ok(Self {
            name: name.to_string(),
            child,
            log: log.to_path_buf(),
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// CPU time used so far, resident memory and open files now, from /proc.
    pub fn usage(&self) -> anyhow::Result<Usage> {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid()))?;
        // Fields after the command name, which is in parentheses: utime and
        // stime are the 12th and 13th of them, in clock ticks.
        let fields: Vec<&str> = stat
            .rsplit_once(") ")
            .map(|(_, rest)| rest)
            .unwrap_or_default()
            .split(' ')
            .collect();
        let ticks = |i: usize| -> anyhow::Result<u64> {
            Ok(fields.get(i).context("short /proc stat")?.parse()?)
        };
        let per_second = clock_ticks_per_second()?;
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()))?;
        let rss_kib: u64 = status
            .lines()
            .find_map(|line| line.strip_prefix("VmRSS:"))
            .and_then(|value| value.split_whitespace().next()?.parse().ok())
            .context("no VmRSS")?;
        let open_files = std::fs::read_dir(format!("/proc/{}/fd", self.pid()))?.count();
        Ok(Usage {
            cpu_seconds: (ticks(11)? + ticks(12)?) as f64 / per_second,
            rss_bytes: rss_kib * 1024,
            open_files,
        })
    }

    /// Sets how many files the process may open (its soft limit; at most
    /// its hard limit, which stays).
    pub fn limit_open_files(&self, limit: u64) -> anyhow::Result<()> {
        let pid = i32::try_from(self.pid())?;
        let mut current = nix::libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: a read of the limit into `current`, which outlives the call.
        let read = unsafe {
            nix::libc::prlimit(
                pid,
                nix::libc::RLIMIT_NOFILE,
                std::ptr::null(),
                &mut current,
            )
        };
        let wanted = nix::libc::rlimit {
            rlim_cur: limit.min(current.rlim_max),
            rlim_max: current.rlim_max,
        };
        // SAFETY: `wanted` is a valid rlimit and outlives the call; the old
        // limit is not asked for.
        let written = read == 0
            && unsafe {
                nix::libc::prlimit(pid, nix::libc::RLIMIT_NOFILE, &wanted, std::ptr::null_mut())
            } == 0;
        if !written {
            return Err(std::io::Error::last_os_error())
                .with_context(|| format!("limiting the open files of {}", self.name));
        }
        Ok(())
    }

    /// Everything the process has written so far.
    pub fn output(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Sends a signal (SIGTERM for a graceful stop).
    pub fn signal(&self, signal: nix::sys::signal::Signal) -> anyhow::Result<()> {
        let pid = nix::unistd::Pid::from_raw(i32::try_from(self.pid())?);
        nix::sys::signal::kill(pid, signal).with_context(|| format!("signalling {}", self.name))
    }

    /// Waits for the process to exit by itself.
    pub fn wait_exit(&mut self, timeout: Duration) -> anyhow::Result<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            if Instant::now() > deadline {
                bail!(
                    "{} did not exit within {timeout:?}:\n{}",
                    self.name,
                    self.output()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Fails with the process's output if it has exited.
    pub fn check_running(&mut self) -> anyhow::Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!("{} exited ({status}):\n{}", self.name, self.output());
        }
        Ok(())
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        // Already gone is fine: the cluster's teardown may have killed it.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
