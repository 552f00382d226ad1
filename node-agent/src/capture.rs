//! Traffic capture: loads Ambit's BPF programs, attaches them where pods'
//! connections are made, and keeps their maps in step with enrollment.

use std::fs::File;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use ambit_ebpf_common::{
    Addr4, ConnectionKey, AGENT_SOURCES_MAP, CONNECT4_PROGRAM, CONNECT6_PROGRAM,
    INBOUND_LISTENERS_MAP, INBOUND_LOOKUP_PROGRAM, ORIGINAL_DST_MAP, REDIRECTS_MAP,
    SOCKOPS_PROGRAM,
};
use aya::maps::{HashMap, MapData, SockHash};
use aya::programs::sk_lookup::SkLookupLinkId;
use aya::programs::{CgroupAttachMode, CgroupSockAddr, SkLookup, SockOps};
use aya::{Ebpf, EbpfLoader};

use crate::netns::Netns;

/// File name of the BPF object `cargo xtask build-ebpf` writes.
pub const OBJECT_NAME: &str = "ambit.bpf.o";
/// Where a packaged agent finds the object.
const INSTALLED_DIR: &str = "/usr/lib/ambit";

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

/// The loaded programs and the maps enrollment changes. Dropping it detaches
/// the programs; the maps stay pinned, so a restarted agent finds them.
pub struct Capture {
    ebpf: Ebpf,
    redirects: HashMap<MapData, u64, Addr4>,
    inbound_listeners: SockHash<MapData, u32>,
}

/// The maps the data path uses on every connection.
pub struct ConnectionMaps {
    original_dst: Mutex<HashMap<MapData, ConnectionKey, Addr4>>,
    agent_sources: Mutex<HashMap<MapData, Addr4, u8>>,
}

/// What capture holds for one enrolled pod.
pub struct PodCapture {
    netns_cookie: u64,
    ip: Ipv4Addr,
    inbound_link: SkLookupLinkId,
}

impl Capture {
    /// Loads the BPF object, with its maps pinned under `pin_dir` (reused
    /// when a previous agent left them), and attaches the outbound programs
    /// to the cgroup v2 directory `cgroup`: from then on, connections made by
    /// processes in that cgroup tree pass through them.
    pub fn attach(
        object: &Path,
        cgroup: &Path,
        pin_dir: &Path,
    ) -> Result<(Self, ConnectionMaps), CaptureError> {
        let bytes = std::fs::read(object).map_err(|source| CaptureError::ReadObject {
            path: object.to_path_buf(),
            source,
        })?;
        std::fs::create_dir_all(pin_dir).map_err(|source| CaptureError::PinDir {
            path: pin_dir.to_path_buf(),
            source,
        })?;
        let mut ebpf = EbpfLoader::new()
            .default_map_pin_directory(pin_dir)
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
        for name in [CONNECT4_PROGRAM, CONNECT6_PROGRAM] {
            let connect: &mut CgroupSockAddr = program(&mut ebpf, name)?.try_into()?;
            connect.load()?;
            connect.attach(&cgroup_dir, CgroupAttachMode::Single)?;
        }
        let sockops: &mut SockOps = program(&mut ebpf, SOCKOPS_PROGRAM)?.try_into()?;
        sockops.load()?;
        sockops.attach(&cgroup_dir, CgroupAttachMode::Single)?;
        let inbound: &mut SkLookup = program(&mut ebpf, INBOUND_LOOKUP_PROGRAM)?.try_into()?;
        inbound.load()?;

        let connection_maps = ConnectionMaps {
            original_dst: Mutex::new(take_map(&mut ebpf, ORIGINAL_DST_MAP)?),
            agent_sources: Mutex::new(take_map(&mut ebpf, AGENT_SOURCES_MAP)?),
        };
        let capture = Self {
            redirects: take_map(&mut ebpf, REDIRECTS_MAP)?,
            inbound_listeners: take_map(&mut ebpf, INBOUND_LISTENERS_MAP)?,
            ebpf,
        };
        Ok((capture, connection_maps))
    }

    /// Starts capturing a pod: its outbound connections go to
    /// `outbound_listener` (an address inside its namespace), new inbound
    /// connections to its ports go to `inbound_listener`.
    pub fn enroll(
        &mut self,
        netns: &Netns,
        ip: Ipv4Addr,
        outbound_listener: SocketAddrV4,
        inbound_listener: &impl AsRawFd,
    ) -> Result<PodCapture, CaptureError> {
        let ip_key = u32::from_ne_bytes(ip.octets());
        self.inbound_listeners
            .insert(ip_key, inbound_listener.as_raw_fd(), 0)?;
        let inbound: &mut SkLookup = program(&mut self.ebpf, INBOUND_LOOKUP_PROGRAM)?.try_into()?;
        let inbound_link = match inbound.attach(netns.as_fd()) {
            Ok(link) => link,
            Err(error) => {
                // Never leave a pod half captured.
                let _ = self.inbound_listeners.remove(&ip_key);
                return Err(error.into());
            }
        };
        let pod = PodCapture {
            netns_cookie: netns.cookie(),
            ip,
            inbound_link,
        };
        let target = Addr4::new(outbound_listener.ip().octets(), outbound_listener.port());
        if let Err(error) = self.redirects.insert(netns.cookie(), target, 0) {
            let _ = self.release(pod);
            return Err(error.into());
        }
        Ok(pod)
    }

    /// Stops capturing a pod's new connections; established ones go on.
    pub fn release(&mut self, pod: PodCapture) -> Result<(), CaptureError> {
        // Map entries go first so that nothing is steered to a listener that
        // is about to close.
        ignore_missing(self.redirects.remove(&pod.netns_cookie))?;
        ignore_missing(
            self.inbound_listeners
                .remove(&u32::from_ne_bytes(pod.ip.octets())),
        )?;
        let inbound: &mut SkLookup = program(&mut self.ebpf, INBOUND_LOOKUP_PROGRAM)?.try_into()?;
        inbound.detach(pod.inbound_link)?;
        Ok(())
    }
}

impl ConnectionMaps {
    /// Where a redirected connection was going: the one accepted in the
    /// namespace with `netns_cookie` from source port `client_port`. Each
    /// answer is given once.
    pub fn take_original_dst(&self, netns_cookie: u64, client_port: u16) -> Option<SocketAddrV4> {
        let key = ConnectionKey::new(netns_cookie, client_port);
        let mut map = lock(&self.original_dst);
        let found = map.get(&key, 0).ok()?;
        let _ = map.remove(&key);
        Some(SocketAddrV4::new(
            Ipv4Addr::from(found.octets()),
            found.port(),
        ))
    }

    /// Marks `source` as the agent's own connection to a local app until the
    /// returned guard is dropped, so `inbound_lookup` does not steer it back.
    pub fn agent_source(&self, source: SocketAddrV4) -> Result<AgentSource<'_>, CaptureError> {
        let key = Addr4::new(source.ip().octets(), source.port());
        lock(&self.agent_sources).insert(key, 1, 0)?;
        Ok(AgentSource { maps: self, key })
    }
}

/// See [`ConnectionMaps::agent_source`].
pub struct AgentSource<'a> {
    maps: &'a ConnectionMaps,
    key: Addr4,
}

impl Drop for AgentSource<'_> {
    fn drop(&mut self) {
        let _ = lock(&self.maps.agent_sources).remove(&self.key);
    }
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
