//! Network namespaces seen from the agent: a pod is known to the BPF
//! programs by its namespace's cookie.

use std::fs::File;
use std::os::fd::AsFd;
use std::path::Path;

use nix::sched::{setns, CloneFlags};
use nix::sys::socket::{socket, AddressFamily, SockFlag, SockType};

#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    #[error("opening network namespace {path}: {source}")]
    Open {
        path: String,
        source: std::io::Error,
    },
    #[error("entering network namespace {path}: {source}")]
    Enter { path: String, source: nix::Error },
    #[error("reading the cookie of network namespace {path}: {source}")]
    Cookie { path: String, source: nix::Error },
    #[error("the thread that entered network namespace {path} panicked")]
    ThreadPanicked { path: String },
}

/// The cookie the kernel gives the network namespace at `path` (a file such
/// as `/proc/PID/ns/net` or `/run/netns/NAME`): the value
/// `bpf_get_netns_cookie` returns inside that namespace.
pub fn cookie(path: &Path) -> Result<u64, NetnsError> {
    let shown = path.display().to_string();
    let ns = File::open(path).map_err(|source| NetnsError::Open {
        path: shown.clone(),
        source,
    })?;
    // setns changes only the calling thread, so a short-lived thread enters
    // the namespace and the caller's own namespace is never touched.
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                setns(ns.as_fd(), CloneFlags::CLONE_NEWNET).map_err(|source| {
                    NetnsError::Enter {
                        path: shown.clone(),
                        source,
                    }
                })?;
                let socket = socket(
                    AddressFamily::Inet,
                    SockType::Stream,
                    SockFlag::SOCK_CLOEXEC,
                    None,
                )
                .map_err(|source| NetnsError::Cookie {
                    path: shown.clone(),
                    source,
                })?;
                getsockopt_u64(&socket, nix::libc::SO_NETNS_COOKIE).map_err(|source| {
                    NetnsError::Cookie {
                        path: shown.clone(),
                        source,
                    }
                })
            })
            .join()
            .map_err(|_| NetnsError::ThreadPanicked {
                path: shown.clone(),
            })?
    })
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
        let first = cookie(Path::new("/proc/self/ns/net")).expect("cookie of own netns");
        let again = cookie(Path::new("/proc/self/ns/net")).expect("cookie of own netns");
        assert_ne!(first, 0);
        assert_eq!(first, again);
    }

    #[test]
    fn a_missing_namespace_is_named_in_the_error() {
        let error = cookie(Path::new("/run/netns/does-not-exist")).unwrap_err();
        assert!(error.to_string().contains("/run/netns/does-not-exist"));
    }
}
