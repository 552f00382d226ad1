//! Traffic capture: loads Ambit's BPF programs, attaches them where pods'
//! connections are made, and keeps their maps in step with enrollment.

mod btf;

use std::fs::File;
use std::io::Read;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use ambit_ebpf_common::{
    Addr4, Addr6, ConnectionKey, RelayState, AGENT_SOURCES6_MAP, AGENT_SOURCES_MAP,
    CONNECT4_PROGRAM, CONNECT6_PROGRAM, DNS_ANSWER6_PROGRAM, DNS_ANSWER_PROGRAM,
    DNS_QUERY6_PROGRAM, DNS_QUERY_PROGRAM, INBOUND_LISTENERS6_MAP, INBOUND_LISTENERS_MAP,
    INBOUND_LOOKUP_PROGRAM, MAX_RELAYED_SOCKETS, ORIGINAL_DST6_MAP, ORIGINAL_DST_MAP,
    REDIRECTS_MAP, RELAYED_MAP, RELAY_HANDOVERS_MAP, RELAY_PEERS_MAP, RELAY_RELEASES_MAP,
    RELAY_RELEASE_PROGRAM, RELAY_STATES_MAP, RELAY_VERDICT_PROGRAM, RELEASE_PENDING,
    SOCKOPS_PROGRAM, TCP_BYTES_ACKED_OFFSET_GLOBAL,
};
use aya::maps::{HashMap, MapData, RingBuf, SockHash};
use aya::programs::links::{FdLink, LinkError};
use aya::programs::{CgroupAttachMode, CgroupSockAddr, Iter, SkLookup, SkSkb, SockOps};
use aya::{Btf, Ebpf, EbpfLoader, Endianness};

use crate::netns::Netns;

/// File name of the BPF object `cargo xtask build-ebpf` writes.
pub const OBJECT_NAME: &str = "ambit.bpf.o";
/// Where a packaged agent finds the object.
const INSTALLED_DIR: &str = "/usr/lib/ambit";
/// The running kernel's own types.
const KERNEL_BTF: &str = "/sys/kernel/btf/vmlinux";
/// Under the pin directory: the capture programs' links. Pinned, they
/// outlive the agent, so an enrolled pod's connections keep meeting the
/// agent's (then missing) listeners and fail, rather than bypass the mesh
/// while no agent runs; the next agent's links replace them. Removing the
/// pin directory (uninstalling) is what detaches them.
const LINKS_DIR: &str = "links";

#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    #[error(
        "the BPF object {OBJECT_NAME} was not found (searched {searched}); \
         build it with `cargo xtask build-ebpf`, or pass --bpf-object PATH"
    )]
    ObjectNotBuilt { searched: String },
    #[error("reading the BPF object {path}: {source}")]
    ReadObject {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("creating the BPF pin directory {path}: {source}")]
    PinDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("loading the BPF object {path}: {source}")]
    Load {
        path: PathBuf,
        source: Box<aya::EbpfError>,
    },
    #[error("the BPF object has no {0}; rebuild it with `cargo xtask build-ebpf`")]
    Missing(&'static str),
    #[error("BPF program: {0}")]
    Program(#[from] aya::programs::ProgramError),
    #[error("opening cgroup {path}: {source}")]
    OpenCgroup {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("BPF map: {0}")]
    Map(#[from] aya::maps::MapError),
    #[error("reading the kernel's BTF {KERNEL_BTF}, which the relay needs: {0}")]
    ReadBtf(std::io::Error),
    #[error("the kernel's BTF, which the relay's iterator needs: {0}")]
    Btf(#[from] aya::BtfError),
    #[error("the kernel's BTF {KERNEL_BTF}: {0}")]
    KernelField(#[from] btf::BtfError),
    #[error("attaching the relay's iterator: {0}")]
    Iterator(std::io::Error),
    #[error("BPF link: {0}")]
    Link(#[from] LinkError),
    #[error("pinning a BPF link: {0}")]
    Pin(#[from] aya::pin::PinError),
    #[error("pinning a BPF link at {path}: {source}")]
    PinLink {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Finds the BPF object: `explicit` when given, else `bpf/ambit.bpf.o` in a
/// directory above the running binary (the build tree's target directory),
/// else the installed location.
pub fn locate_object(explicit: Option<&Path>) -> Result<PathBuf, CaptureError> {
    let candidates: Vec<PathBuf> = match explicit {
        Some(path) => vec![path.to_path_buf()],
        None => {
            let exe = std::env::current_exe().ok();
            let build_tree = exe
                .iter()
                .flat_map(|exe| exe.ancestors().skip(1).take(3))
                .map(|dir| dir.join("bpf").join(OBJECT_NAME));
            build_tree
                .chain([Path::new(INSTALLED_DIR).join(OBJECT_NAME)])
                .collect()
        }
    };
    candidates
        .iter()
        .find(|path| path.is_file())
        .cloned()
        .ok_or_else(|| CaptureError::ObjectNotBuilt {
            searched: candidates
                .iter()
                .map(|path| path.display().to_string())
                .collect::<Vec<_>>()
                .join(", "),
        })
}

/// The loaded programs and the maps enrollment changes. The capture
/// programs' links and the maps stay pinned when it is dropped, so capture
/// goes on, failing closed, until a restarted agent takes it over.
pub struct Capture {
    ebpf: Ebpf,
    links_dir: PathBuf,
    redirects: HashMap<MapData, u64, Addr4>,
    inbound_listeners: SockHash<MapData, u32>,
    inbound_listeners6: SockHash<MapData, [u32; 4]>,
}

/// The maps the data path uses on every connection.
pub struct ConnectionMaps {
    original_dst: Mutex<HashMap<MapData, ConnectionKey, Addr4>>,
    original_dst6: Mutex<HashMap<MapData, ConnectionKey, Addr6>>,
    agent_sources: Mutex<HashMap<MapData, Addr4, u8>>,
    agent_sources6: Mutex<HashMap<MapData, Addr6, u8>>,
    pub relay: Arc<RelayMaps>,
}

/// The in-kernel relay's maps: `relay_verdict` runs on every member socket
/// and sends what it receives out of the socket filed as its peer.
pub struct RelayMaps {
    peers: Mutex<SockHash<MapData, u64>>,
    members: Mutex<SockHash<MapData, u64>>,
    states: Mutex<HashMap<MapData, u64, RelayState>>,
    /// Taken by [`RelayMaps::dispatch_handovers`].
    handovers: Mutex<Option<RingBuf<MapData>>>,
    /// Sockets to take out of `members` -> `relay_release`'s result.
    releases: Mutex<HashMap<MapData, u64, i64>>,
    /// `relay_release`, attached: each iterator made from it runs it once
    /// over the TCP sockets of the namespace it is made in.
    release_link: OwnedFd,
    /// Relayed sockets' cookies -> who waits for their handover.
    handover_waiters: Mutex<std::collections::HashMap<u64, Arc<tokio::sync::Notify>>>,
    /// Pairs the maps still have room for: a full table sends connections
    /// to the user-space relay rather than failing them.
    room: tokio::sync::Semaphore,
}

/// Room for one relayed pair in [`RelayMaps`], held while it is relayed.
/// Closing a socket takes it out of the maps.
pub struct RelaySlot<'a> {
    _permit: tokio::sync::SemaphorePermit<'a>,
}

/// What capture holds for one enrolled pod.
pub struct PodCapture {
    netns_cookie: u64,
    /// The addresses steered to the agent's listeners.
    ips: Vec<IpAddr>,
    /// Where the link of `inbound_lookup` to its namespace is pinned.
    inbound_link: PathBuf,
}

impl Capture {
    /// Loads the BPF object, with its maps pinned under `pin_dir` (reused
    /// when a previous agent left them), and attaches the outbound programs
    /// to the cgroup v2 directory `cgroup`: from then on, connections made by
    /// processes in that cgroup tree pass through them.
    /// Without `kernel_relay`, every connection is relayed in user space.
    pub fn attach(
        object: &Path,
        cgroup: &Path,
        pin_dir: &Path,
        kernel_relay: bool,
    ) -> Result<(Self, ConnectionMaps), CaptureError> {
        let bytes = std::fs::read(object).map_err(|source| CaptureError::ReadObject {
            path: object.to_path_buf(),
            source,
        })?;
        let links_dir = pin_dir.join(LINKS_DIR);
        std::fs::create_dir_all(&links_dir).map_err(|source| CaptureError::PinDir {
            path: links_dir.clone(),
            source,
        })?;
        let kernel_btf = std::fs::read(KERNEL_BTF).map_err(CaptureError::ReadBtf)?;
        let bytes_acked_offset = btf::field_offset(&kernel_btf, "tcp_sock", "bytes_acked", 8)?;
        let mut ebpf = EbpfLoader::new()
            .default_map_pin_directory(pin_dir)
            .override_global(TCP_BYTES_ACKED_OFFSET_GLOBAL, &bytes_acked_offset, true)
            .load(&bytes)
            .map_err(|source| CaptureError::Load {
                path: object.to_path_buf(),
                source: Box::new(source),
            })?;
        let cgroup_dir = File::open(cgroup).map_err(|source| CaptureError::OpenCgroup {
            path: cgroup.to_path_buf(),
            source,
        })?;
        // These are BPF links (flags must be 0, i.e. `Single`); links to one
        // cgroup always coexist, so a new agent attaches before the old one
        // detaches and no connection goes uncaptured in between.
        for name in [
            CONNECT4_PROGRAM,
            CONNECT6_PROGRAM,
            DNS_QUERY_PROGRAM,
            DNS_ANSWER_PROGRAM,
            DNS_QUERY6_PROGRAM,
            DNS_ANSWER6_PROGRAM,
        ] {
            let connect: &mut CgroupSockAddr = program(&mut ebpf, name)?.try_into()?;
            connect.load()?;
            let link = connect.attach(&cgroup_dir, CgroupAttachMode::Single)?;
            pin_link(connect.take_link(link)?.try_into()?, &links_dir.join(name))?;
        }
        let sockops: &mut SockOps = program(&mut ebpf, SOCKOPS_PROGRAM)?.try_into()?;
        sockops.load()?;
        let link = sockops.attach(&cgroup_dir, CgroupAttachMode::Single)?;
        pin_link(
            sockops.take_link(link)?.try_into()?,
            &links_dir.join(SOCKOPS_PROGRAM),
        )?;
        let inbound: &mut SkLookup = program(&mut ebpf, INBOUND_LOOKUP_PROGRAM)?.try_into()?;
        inbound.load()?;
        let relay_members: SockHash<MapData, u64> = take_map(&mut ebpf, RELAYED_MAP)?;
        let verdict: &mut SkSkb = program(&mut ebpf, RELAY_VERDICT_PROGRAM)?.try_into()?;
        verdict.load()?;
        verdict.attach(relay_members.fd())?;
        let release: &mut Iter = program(&mut ebpf, RELAY_RELEASE_PROGRAM)?.try_into()?;
        release.load("tcp", &Btf::parse(&kernel_btf, Endianness::default())?)?;
        let release_link = iterator_link(release.fd()?.as_fd()).map_err(CaptureError::Iterator)?;

        let connection_maps = ConnectionMaps {
            original_dst: Mutex::new(take_map(&mut ebpf, ORIGINAL_DST_MAP)?),
            original_dst6: Mutex::new(take_map(&mut ebpf, ORIGINAL_DST6_MAP)?),
            agent_sources: Mutex::new(take_map(&mut ebpf, AGENT_SOURCES_MAP)?),
            agent_sources6: Mutex::new(take_map(&mut ebpf, AGENT_SOURCES6_MAP)?),
            relay: Arc::new(RelayMaps {
                peers: Mutex::new(take_map(&mut ebpf, RELAY_PEERS_MAP)?),
                members: Mutex::new(relay_members),
                states: Mutex::new(take_map(&mut ebpf, RELAY_STATES_MAP)?),
                handovers: Mutex::new(Some(take_map(&mut ebpf, RELAY_HANDOVERS_MAP)?)),
                handover_waiters: Mutex::default(),
                releases: Mutex::new(take_map(&mut ebpf, RELAY_RELEASES_MAP)?),
                release_link,
                room: tokio::sync::Semaphore::new(if kernel_relay {
                    MAX_RELAYED_SOCKETS as usize / 2
                } else {
                    0
                }),
            }),
        };
        let capture = Self {
            links_dir,
            redirects: take_map(&mut ebpf, REDIRECTS_MAP)?,
            inbound_listeners: take_map(&mut ebpf, INBOUND_LISTENERS_MAP)?,
            inbound_listeners6: take_map(&mut ebpf, INBOUND_LISTENERS6_MAP)?,
            ebpf,
        };
        Ok((capture, connection_maps))
    }

    /// Starts capturing a pod: its outbound connections go to
    /// `outbound_listener` (an address inside its namespace; those to IPv6
    /// addresses to its port on `[::1]`), new inbound connections to its
    /// ports at `ips` go to the listener of their family in
    /// `inbound_listeners` (refused at an address of a family it lacks).
    pub fn enroll(
        &mut self,
        netns: &Netns,
        ips: &[IpAddr],
        outbound_listener: SocketAddrV4,
        inbound_listeners: &[tokio::net::TcpListener],
    ) -> Result<PodCapture, CaptureError> {
        let mut pod = PodCapture {
            netns_cookie: netns.cookie(),
            ips: Vec::new(),
            inbound_link: self
                .links_dir
                .join(format!("{INBOUND_LOOKUP_PROGRAM}-{}", netns.cookie())),
        };
        for ip in ips {
            let listener = (inbound_listeners.iter()).find(|listener| {
                listener
                    .local_addr()
                    .is_ok_and(|at| at.is_ipv4() == ip.is_ipv4())
            });
            let Some(listener) = listener else {
                continue;
            };
            let fd = listener.as_raw_fd();
            let inserted = match ip {
                IpAddr::V4(ip) => {
                    self.inbound_listeners
                        .insert(u32::from_ne_bytes(ip.octets()), fd, 0)
                }
                IpAddr::V6(ip) => {
                    self.inbound_listeners6
                        .insert(Addr6::new(ip.octets(), 0).ip, fd, 0)
                }
            };
            if let Err(error) = inserted {
                // Never leave a pod half captured.
                let _ = self.forget_addresses(&pod.ips);
                return Err(error.into());
            }
            pod.ips.push(*ip);
        }
        let inbound_link = pod.inbound_link.clone();
        let inbound: &mut SkLookup = program(&mut self.ebpf, INBOUND_LOOKUP_PROGRAM)?.try_into()?;
        let attached = inbound
            .attach(netns.as_fd())
            .and_then(|link| inbound.take_link(link))
            .map_err(CaptureError::from)
            .and_then(|link| pin_link(link.into(), &inbound_link));
        if let Err(error) = attached {
            let _ = self.forget_addresses(&pod.ips);
            return Err(error);
        }
        let target = Addr4::new(outbound_listener.ip().octets(), outbound_listener.port());
        if let Err(error) = self.redirects.insert(netns.cookie(), target, 0) {
            let _ = self.release(pod);
            return Err(error.into());
        }
        Ok(pod)
    }

    /// Stops capturing a pod's new connections; established ones go on.
    pub fn release(&mut self, pod: PodCapture) -> Result<(), CaptureError> {
        // The inbound program goes first: without the listener's entry it
        // would refuse the pod's connections rather than leave them be.
        // (Connections steered just before wait in the listener's queue,
        // which stays open a while.)
        unpin(&pod.inbound_link)?;
        self.forget_addresses(&pod.ips)?;
        ignore_missing(self.redirects.remove(&pod.netns_cookie))?;
        Ok(())
    }

    /// Takes the inbound listeners' entries of a pod's addresses out.
    fn forget_addresses(&mut self, ips: &[IpAddr]) -> Result<(), CaptureError> {
        for ip in ips {
            ignore_missing(match ip {
                IpAddr::V4(ip) => self
                    .inbound_listeners
                    .remove(&u32::from_ne_bytes(ip.octets())),
                IpAddr::V6(ip) => self
                    .inbound_listeners6
                    .remove(&Addr6::new(ip.octets(), 0).ip),
            })?;
        }
        Ok(())
    }
}

impl ConnectionMaps {
    /// Where a redirected connection was going: the one accepted in the
    /// namespace with `netns_cookie` from `client` (on loopback, of the
    /// family it was dialled in). Each answer is given once.
    pub fn take_original_dst(&self, netns_cookie: u64, client: SocketAddr) -> Option<SocketAddr> {
        let key = ConnectionKey::new(netns_cookie, client.port());
        match client {
            SocketAddr::V4(_) => {
                let found = take(&mut lock(&self.original_dst), &key)?;
                Some((Ipv4Addr::from(found.octets()), found.port()).into())
            }
            SocketAddr::V6(_) => {
                let found = take(&mut lock(&self.original_dst6), &key)?;
                Some((Ipv6Addr::from(found.octets()), found.port()).into())
            }
        }
    }

    /// Marks `source` as the agent's own connection to a local app until the
    /// returned guard is dropped, so `inbound_lookup` does not steer it back.
    pub fn agent_source(&self, source: SocketAddr) -> Result<AgentSource<'_>, CaptureError> {
        let key = match source {
            SocketAddr::V4(source) => {
                let key = Addr4::new(source.ip().octets(), source.port());
                lock(&self.agent_sources).insert(key, 1, 0)?;
                SourceKey::V4(key)
            }
            SocketAddr::V6(source) => {
                let key = Addr6::new(source.ip().octets(), source.port());
                lock(&self.agent_sources6).insert(key, 1, 0)?;
                SourceKey::V6(key)
            }
        };
        Ok(AgentSource { maps: self, key })
    }
}

impl RelayMaps {
    /// Room for one more pair, unless the maps are full.
    pub fn reserve(&self) -> Option<RelaySlot<'_>> {
        let _permit = self.room.try_acquire().ok()?;
        Some(RelaySlot { _permit })
    }

    /// Pairs two connected TCP sockets, identified by their cookies, to
    /// which `written_before` bytes have been written so far: from then on
    /// the kernel sends what either receives out of the other, including
    /// what is already queued once the socket is next woken.
    /// Both are filed as peers before either becomes a member, so a member's
    /// bytes always have somewhere to go. Only established sockets can join:
    /// one whose peer has already ended cannot.
    pub fn pair(
        &self,
        _slot: &RelaySlot<'_>,
        (a, a_cookie): (impl AsFd, u64),
        (b, b_cookie): (impl AsFd, u64),
        written_before: [u64; 2],
    ) -> Result<(), PairError> {
        let (a, b) = (a.as_fd(), b.as_fd());
        {
            let state = |peer_written_before| RelayState {
                peer_written_before,
                ..RelayState::default()
            };
            let mut states = lock(&self.states);
            let filed = states
                .insert(a_cookie, state(written_before[1]), 0)
                .and_then(|()| states.insert(b_cookie, state(written_before[0]), 0));
            if let Err(error) = filed {
                drop(states);
                self.forget([a_cookie, b_cookie]);
                return Err(PairError::NotJoined(os_error(error)));
            }
        }
        {
            let mut peers = lock(&self.peers);
            let filed = peers
                .insert(a_cookie, b, 0)
                .and_then(|()| peers.insert(b_cookie, a, 0));
            if let Err(error) = filed {
                for cookie in [a_cookie, b_cookie] {
                    let _ = peers.remove(&cookie);
                }
                drop(peers);
                self.forget([a_cookie, b_cookie]);
                return Err(PairError::NotJoined(os_error(error)));
            }
        }
        let mut members = lock(&self.members);
        // The upstream first: it is the one a server may close at once.
        if let Err(error) = members.insert(b_cookie, b, 0) {
            drop(members);
            let mut peers = lock(&self.peers);
            for cookie in [a_cookie, b_cookie] {
                let _ = peers.remove(&cookie);
            }
            drop(peers);
            self.forget([a_cookie, b_cookie]);
            return Err(PairError::NotJoined(os_error(error)));
        }
        members
            .insert(a_cookie, a, 0)
            .map_err(|error| PairError::Halfway(os_error(error)))
    }
}

impl RelayMaps {
    /// Notified when the relayed socket `cookie` reaches its kernel budget
    /// and the agent should take the pair back. Ask before pairing.
    pub fn handover_signal(&self, cookie: u64) -> Arc<tokio::sync::Notify> {
        lock(&self.handover_waiters)
            .entry(cookie)
            .or_default()
            .clone()
    }

    /// Stops relaying what `cookie`'s peer receives into `cookie`: from now
    /// on the peer's bytes stay with the peer, for the agent to read.
    pub fn unpeer(&self, peer_of: u64) -> std::io::Result<()> {
        lock(&self.peers).remove(&peer_of).map_err(os_error)
    }

    /// Takes the relayed socket `cookie`, which lives in `netns`, out of
    /// the relay without losing anything it received: `relay_release`
    /// removes it under the socket's lock. Its peer must no longer send
    /// into it (see [`RelayMaps::unpeer`]) and what it did send must have
    /// been written.
    ///
    /// Runs on a blocking thread: the iterator walks the kernel's whole
    /// table of TCP connections (2-6 ms at 256 Ki buckets here; the table
    /// grows with the node's memory), which would hold up every connection
    /// a runtime thread carries.
    pub async fn release(self: &Arc<Self>, cookie: u64, netns: &Arc<Netns>) -> std::io::Result<()> {
        let (maps, netns) = (Arc::clone(self), Arc::clone(netns));
        tokio::task::spawn_blocking(move || maps.release_now(cookie, &netns))
            .await
            .map_err(std::io::Error::other)?
    }

    fn release_now(&self, cookie: u64, netns: &Netns) -> std::io::Result<()> {
        let mut releases = lock(&self.releases);
        releases
            .insert(cookie, RELEASE_PENDING, 0)
            .map_err(os_error)?;
        let ran = netns
            .run(|| run_iterator(self.release_link.as_fd()))
            .map_err(std::io::Error::other)
            .and_then(|ran| ran);
        let result = releases.get(&cookie, 0).map_err(os_error);
        let _ = releases.remove(&cookie);
        ran?;
        match result? {
            0 => Ok(()),
            RELEASE_PENDING => Err(std::io::Error::other(
                "the relay's iterator did not find the socket in its namespace",
            )),
            errno => Err(std::io::Error::from_raw_os_error(-errno as i32)),
        }
    }

    /// What the kernel did with a relayed socket's bytes so far.
    pub fn state(&self, cookie: u64) -> std::io::Result<RelayState> {
        lock(&self.states).get(&cookie, 0).map_err(os_error)
    }

    /// Drops what was kept for relayed sockets that are done.
    pub fn forget(&self, cookies: [u64; 2]) {
        let mut waiters = lock(&self.handover_waiters);
        let mut states = lock(&self.states);
        for cookie in cookies {
            waiters.remove(&cookie);
            let _ = states.remove(&cookie);
        }
    }

    /// Wakes the waiters of sockets past their budget, for as long as the agent
    /// runs. A second call returns at once.
    pub async fn dispatch_handovers(&self) -> std::io::Result<()> {
        let Some(ring) = lock(&self.handovers).take() else {
            return Ok(());
        };
        // SAFETY: the `AsyncFd` owns the ring buffer, whose descriptor stays
        // open and the same until the `AsyncFd` is dropped.
        let mut ring = unsafe { tokio::io::unix::AsyncFd::register(ring) }?;
        loop {
            let mut ready = ring.readable_mut().await?;
            let ring = ready.get_inner_mut();
            while let Some(item) = ring.next() {
                let Ok(cookie) = <[u8; 8]>::try_from(&*item).map(u64::from_ne_bytes) else {
                    continue;
                };
                if let Some(waiter) = lock(&self.handover_waiters).get(&cookie) {
                    waiter.notify_one();
                }
            }
            ready.clear_ready();
        }
    }
}

/// Pins `link` at `path`, in place of the link a previous agent pinned
/// there: the new one is attached before the old one goes (pinned beside,
/// then renamed over it), so capture never lapses. From then on only the
/// pin holds the link.
fn pin_link(link: FdLink, path: &Path) -> Result<(), CaptureError> {
    // bpffs refuses names with a dot.
    let mut beside = path.as_os_str().to_owned();
    beside.push("-new");
    let beside = PathBuf::from(beside);
    unpin(&beside)?;
    let _pinned = link.pin(&beside)?;
    std::fs::rename(&beside, path).map_err(|source| CaptureError::PinLink {
        path: path.to_path_buf(),
        source,
    })
}

/// Removes the pin at `path`, if there is one: its link detaches unless
/// something else holds it.
fn unpin(path: &Path) -> Result<(), CaptureError> {
    match std::fs::remove_file(path) {
        Err(source) if source.kind() != std::io::ErrorKind::NotFound => {
            Err(CaptureError::PinLink {
                path: path.to_path_buf(),
                source,
            })
        }
        _ => Ok(()),
    }
}

/// A link for the TCP iterator program `program` (BPF_LINK_CREATE).
fn iterator_link(program: BorrowedFd<'_>) -> std::io::Result<OwnedFd> {
    const BPF_LINK_CREATE: nix::libc::c_long = 28;
    const BPF_TRACE_ITER: u32 = 28;
    // union bpf_attr, link_create: prog_fd, target_fd, attach_type, flags,
    // then no iterator parameters.
    let mut attr = [0u32; 16];
    attr[0] = program.as_raw_fd() as u32;
    attr[2] = BPF_TRACE_ITER;
    bpf(BPF_LINK_CREATE, &mut attr)
}

/// Runs the iterator behind `link` once, over the TCP sockets of the
/// current thread's namespace (BPF_ITER_CREATE, then reading it through).
fn run_iterator(link: BorrowedFd<'_>) -> std::io::Result<()> {
    const BPF_ITER_CREATE: nix::libc::c_long = 33;
    let mut attr = [0u32; 16];
    attr[0] = link.as_raw_fd() as u32;
    let iterator = bpf(BPF_ITER_CREATE, &mut attr)?;
    let mut output = Vec::new();
    File::from(iterator).read_to_end(&mut output)?;
    Ok(())
}

/// The bpf(2) system call for commands that return a new descriptor.
fn bpf(command: nix::libc::c_long, attr: &mut [u32; 16]) -> std::io::Result<OwnedFd> {
    // SAFETY: `attr` is a zeroed, large enough `union bpf_attr` for the
    // command, and outlives the call.
    let fd = unsafe {
        nix::libc::syscall(
            nix::libc::SYS_bpf,
            command,
            attr.as_mut_ptr(),
            std::mem::size_of_val(attr),
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: the command returned a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Why [`RelayMaps::pair`] failed.
#[derive(Debug)]
pub enum PairError {
    /// Neither socket joined and nothing was forwarded: the pair can be
    /// relayed in user space instead.
    NotJoined(std::io::Error),
    /// The second socket (`a`) could not join after the first (`b`) had:
    /// its peer's FIN may arrive in between. `b` may have forwarded bytes
    /// into `a`, so the pair must be taken back the careful way.
    Halfway(std::io::Error),
}

/// The system's own error where there is one: it names what went wrong.
fn os_error(error: aya::maps::MapError) -> std::io::Error {
    match error {
        aya::maps::MapError::SyscallError(aya::sys::SyscallError { io_error, .. }) => io_error,
        other => std::io::Error::other(other),
    }
}

/// See [`ConnectionMaps::agent_source`].
pub struct AgentSource<'a> {
    maps: &'a ConnectionMaps,
    key: SourceKey,
}

enum SourceKey {
    V4(Addr4),
    V6(Addr6),
}

impl Drop for AgentSource<'_> {
    fn drop(&mut self) {
        let _ = match &self.key {
            SourceKey::V4(key) => lock(&self.maps.agent_sources).remove(key),
            SourceKey::V6(key) => lock(&self.maps.agent_sources6).remove(key),
        };
    }
}

/// The entry at `key`, removed.
fn take<V: aya::Pod>(
    map: &mut HashMap<MapData, ConnectionKey, V>,
    key: &ConnectionKey,
) -> Option<V> {
    let found = map.get(key, 0).ok()?;
    let _ = map.remove(key);
    Some(found)
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn program<'a>(
    ebpf: &'a mut Ebpf,
    name: &'static str,
) -> Result<&'a mut aya::programs::Program, CaptureError> {
    ebpf.program_mut(name).ok_or(CaptureError::Missing(name))
}

fn take_map<T: TryFrom<aya::maps::Map, Error = aya::maps::MapError>>(
    ebpf: &mut Ebpf,
    name: &'static str,
) -> Result<T, CaptureError> {
    Ok(ebpf
        .take_map(name)
        .ok_or(CaptureError::Missing(name))?
        .try_into()?)
}

/// Removing what is already gone is done.
fn ignore_missing(result: Result<(), aya::maps::MapError>) -> Result<(), CaptureError> {
    match result {
        Err(aya::maps::MapError::KeyNotFound) => Ok(()),
        other => Ok(other?),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_object_names_the_command_that_builds_it() {
        let error = locate_object(Some(Path::new("/nonexistent/ambit.bpf.o"))).unwrap_err();
        let message = error.to_string();
        assert!(message.contains("cargo xtask build-ebpf"), "{message}");
        assert!(message.contains("/nonexistent/ambit.bpf.o"), "{message}");
    }
}
