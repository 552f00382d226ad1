//! Network namespaces of pods, seen from the agent: it opens sockets inside
//! them, and the BPF programs know a pod by its namespace's cookie.

mod connections;
mod netlink;
mod routing;

use std::fs::File;
use std::os::fd::{AsFd, BorrowedFd};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use nix::sched::{setns, CloneFlags};
use nix::sys::socket::{socket, AddressFamily, SockFlag, SockType};

pub use connections::holds_tcp_connection;
pub use routing::prepare_inbound_routing;

#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    #[error("opening network namespace {path}: {source}")]
    Open {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("entering network namespace {path}: {source}")]
    Enter { path: PathBuf, source: nix::Error },
    #[error("reading the cookie of network namespace {path}: {source}")]
    Cookie { path: PathBuf, source: nix::Error },
    #[error("the agent's own network namespace: {0}")]
    Own(std::io::Error),
}

impl From<NetnsError> for std::io::Error {
    fn from(error: NetnsError) -> Self {
        std::io::Error::other(error)
    }
}

/// The agent's own namespace, to return to after working in a pod's.
static OWN: OnceLock<File> = OnceLock::new();

fn own_netns() -> Result<&'static File, NetnsError> {
    if let Some(own) = OWN.get() {
        return Ok(own);
    }
    // The process's (main thread's) namespace, not the calling thread's,
    // which may be inside a pod's right now.
    let file = File::open("/proc/self/ns/net").map_err(NetnsError::Own)?;
    Ok(OWN.get_or_init(|| file))
}

/// An open network namespace: holding it keeps the namespace alive.
#[derive(Debug)]
pub struct Netns {
    path: PathBuf,
    file: File,
    cookie: u64,
}

impl Netns {
    /// Opens the namespace at `path` (`/proc/PID/ns/net`, `/var/run/netns/NAME`).
    pub fn open(path: &Path) -> Result<Self, NetnsError> {
        own_netns()?;
        let file = File::open(path).map_err(|source| NetnsError::Open {
            path: path.to_path_buf(),
            source,
        })?;
        let mut netns = Self {
            path: path.to_path_buf(),
            file,
            cookie: 0,
        };
        netns.cookie = netns
            .run(cookie_of_current)?
            .map_err(|source| NetnsError::Cookie {
                path: path.to_path_buf(),
                source,
            })?;
        Ok(netns)
    }

    /// The value `bpf_get_netns_cookie` returns inside this namespace.
    pub fn cookie(&self) -> u64 {
        self.cookie
    }

    pub fn as_fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }

    /// Runs `f` with the calling thread inside this namespace, then returns
    /// the thread to the agent's own. Sockets `f` creates stay in this
    /// namespace for their whole life. `f` must not block: on a runtime
    /// thread nothing else runs meanwhile.
    pub fn run<T>(&self, f: impl FnOnce() -> T) -> Result<T, NetnsError> {
        let own = own_netns()?;
        setns(self.file.as_fd(), CloneFlags::CLONE_NEWNET).map_err(|source| NetnsError::Enter {
            path: self.path.clone(),
            source,
        })?;
        let result = f();
        if let Err(error) = setns(own.as_fd(), CloneFlags::CLONE_NEWNET) {
            // A thread stuck in a pod's namespace would send the agent's own
            // traffic from there: nothing safe is left to do.
            eprintln!("fatal: cannot return to the agent's network namespace: {error}");
            std::process::abort();
        }
        Ok(result)
    }
}

fn cookie_of_current() -> Result<u64, nix::Error> {
    let socket = socket(
        AddressFamily::Inet,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    getsockopt_u64(&socket, nix::libc::SO_NETNS_COOKIE)
}

fn getsockopt_u64(fd: &impl AsFd, option: nix::libc::c_int) -> Result<u64, nix::Error> {
    use std::os::fd::AsRawFd;
    let mut value: u64 = 0;
    let mut len = std::mem::size_of::<u64>() as nix::libc::socklen_t;
    // SAFETY: `value` and `len` are valid for writes and `len` is its size.
    let rc = unsafe {
        nix::libc::getsockopt(
            fd.as_fd().as_raw_fd(),
            nix::libc::SOL_SOCKET,
            option,
            (&mut value as *mut u64).cast(),
            &mut len,
        )
    };
    nix::Error::result(rc).map(|_| value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_own_namespace_has_a_stable_nonzero_cookie() {
        let first = Netns::open(Path::new("/proc/self/ns/net")).expect("own netns");
        let again = Netns::open(Path::new("/proc/self/ns/net")).expect("own netns");
        assert_ne!(first.cookie(), 0);
        assert_eq!(first.cookie(), again.cookie());
    }

    #[test]
    fn a_missing_namespace_is_named_in_the_error() {
        let error = Netns::open(Path::new("/run/netns/does-not-exist")).unwrap_err();
        assert!(error.to_string().contains("/run/netns/does-not-exist"));
    }
}
