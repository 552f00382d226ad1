//! Network namespaces of pods, seen from the agent: it opens sockets inside
//! them, and the BPF programs know a pod by its namespace's cookie.

mod connections;
mod netlink;
mod routing;

use std::fs::File;
use std::net::IpAddr;
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::fs::OpenOptionsExt;
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
    #[error("{path} is not a network namespace")]
    NotNetns { path: PathBuf },
    #[error("{path} is the node's own network namespace, not a pod's")]
    Node { path: PathBuf },
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
    /// Opens a pod's namespace at `path` (`/proc/PID/ns/net`,
    /// `/var/run/netns/NAME`): a network namespace, and not the agent's own
    /// (the node's). The open never blocks, whatever `path` is (a FIFO
    /// would block a plain open until a writer came).
    pub fn open(path: &Path) -> Result<Self, NetnsError> {
        let own = own_netns()?;
        let file = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(nix::libc::O_NONBLOCK | nix::libc::O_CLOEXEC)
            .open(path)
            .map_err(|source| NetnsError::Open {
                path: path.to_path_buf(),
                source,
            })?;
        if !is_network_namespace(&file) {
            return Err(NetnsError::NotNetns {
                path: path.to_path_buf(),
            });
        }
        if same_file(&file, own) {
            return Err(NetnsError::Node {
                path: path.to_path_buf(),
            });
        }
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

/// Whether `file` is a namespace's file, and of a network namespace.
fn is_network_namespace(file: &File) -> bool {
    use std::os::fd::AsRawFd;
    // SAFETY: NS_GET_NSTYPE takes no argument; on any other kind of file
    // the kernel answers ENOTTY.
    let kind = unsafe { nix::libc::ioctl(file.as_raw_fd(), nix::libc::NS_GET_NSTYPE) };
    kind == nix::libc::CLONE_NEWNET
}

/// Whether two open files are one (a namespace's file is its inode).
fn same_file(a: &File, b: &File) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (a.metadata(), b.metadata()) {
        (Ok(a), Ok(b)) => (a.dev(), a.ino()) == (b.dev(), b.ino()),
        // Unknown counts as the same: the node's namespace is refused.
        _ => true,
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

/// The addresses of the current thread's network namespace, of both
/// families, in order and once each: the agent's own are the node's.
pub fn addresses() -> std::io::Result<Vec<IpAddr>> {
    let addresses = nix::ifaddrs::getifaddrs()?;
    let mut ips: Vec<IpAddr> = addresses
        .filter_map(|interface| interface.address)
        .filter_map(|address| {
            let v4 = address.as_sockaddr_in().map(|a| IpAddr::V4(a.ip()));
            v4.or_else(|| address.as_sockaddr_in6().map(|a| IpAddr::V6(a.ip())))
        })
        .collect();
    ips.sort();
    ips.dedup();
    Ok(ips)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs `f` with the path of a new network namespace, which lives as
    /// long as `f` runs (a thread of its own holds it).
    fn with_new_namespace(f: impl FnOnce(&Path)) {
        let (ready, path) = std::sync::mpsc::channel();
        let (done, finished) = std::sync::mpsc::channel::<()>();
        let holder = std::thread::spawn(move || {
            nix::sched::unshare(CloneFlags::CLONE_NEWNET).expect("a new network namespace (root)");
            let tid = nix::unistd::gettid();
            ready
                .send(PathBuf::from(format!("/proc/self/task/{tid}/ns/net")))
                .unwrap();
            let _ = finished.recv();
        });
        f(&path.recv().unwrap());
        drop(done);
        holder.join().unwrap();
    }

    #[test]
    fn a_pods_namespace_has_a_stable_nonzero_cookie_of_its_own() {
        let own = cookie_of_current().unwrap();
        with_new_namespace(|path| {
            let first = Netns::open(path).expect("the new namespace");
            let again = Netns::open(path).expect("the new namespace");
            assert_ne!(first.cookie(), 0);
            assert_ne!(first.cookie(), own);
            assert_eq!(first.cookie(), again.cookie());
        });
    }

    #[test]
    fn only_a_network_namespace_of_another_than_the_node_opens() {
        let dir = std::env::temp_dir().join(format!("ambit-netns-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let fifo = dir.join("fifo");
        let _ = std::fs::remove_file(&fifo);
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).unwrap();
        let regular = dir.join("regular");
        std::fs::write(&regular, b"").unwrap();
        let cases = [
            ("/proc/self/ns/net", "the node's own network namespace"),
            ("/proc/self/ns/mnt", "is not a network namespace"),
            (fifo.to_str().unwrap(), "is not a network namespace"),
            (regular.to_str().unwrap(), "is not a network namespace"),
            ("/dev/zero", "is not a network namespace"),
            ("/run/netns/does-not-exist", "/run/netns/does-not-exist"),
        ];
        for (path, says) in cases {
            let error = Netns::open(Path::new(path)).unwrap_err().to_string();
            assert!(error.contains(says), "{path}: {error}");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
