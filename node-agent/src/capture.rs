//! Traffic capture: loads Ambit's BPF programs and attaches them where the
//! pods' connections are made.

use std::fs::File;
use std::net::SocketAddrV4;
use std::path::{Path, PathBuf};

use ambit_ebpf_common::{Redirect, CONNECT4_PROGRAM, REDIRECTS_MAP};
use aya::maps::{HashMap, MapData};
use aya::programs::{CgroupAttachMode, CgroupSockAddr};
use aya::Ebpf;

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
    #[error("loading the BPF object {path}: {source}")]
    Load {
        path: PathBuf,
        source: Box<aya::EbpfError>,
    },
    #[error("the BPF object has no {0}; rebuild it with `cargo xtask build-ebpf`")]
    Missing(&'static str),
    #[error("loading BPF program {CONNECT4_PROGRAM}: {0}")]
    Program(#[from] aya::programs::ProgramError),
    #[error("opening cgroup {path}: {source}")]
    OpenCgroup {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("updating BPF map {REDIRECTS_MAP}: {0}")]
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

/// The loaded programs and their maps. Dropping it detaches the programs.
pub struct Capture {
    /// Owns the programs and their links; kept alive for as long as capture runs.
    _ebpf: Ebpf,
    redirects: HashMap<MapData, u64, Redirect>,
}

impl Capture {
    /// Loads the BPF object at `object` and attaches `connect4` to the cgroup
    /// v2 directory `cgroup`: from then on, connections made by processes in
    /// that cgroup tree pass through it.
    pub fn attach(object: &Path, cgroup: &Path) -> Result<Self, CaptureError> {
        let bytes = std::fs::read(object).map_err(|source| CaptureError::ReadObject {
            path: object.to_path_buf(),
            source,
        })?;
        let mut ebpf = Ebpf::load(&bytes).map_err(|source| CaptureError::Load {
            path: object.to_path_buf(),
            source: Box::new(source),
        })?;
        let cgroup_dir = File::open(cgroup).map_err(|source| CaptureError::OpenCgroup {
            path: cgroup.to_path_buf(),
            source,
        })?;
        let connect4: &mut CgroupSockAddr = ebpf
            .program_mut(CONNECT4_PROGRAM)
            .ok_or(CaptureError::Missing(CONNECT4_PROGRAM))?
            .try_into()?;
        connect4.load()?;
        connect4.attach(cgroup_dir, CgroupAttachMode::Single)?;
        let redirects = ebpf
            .take_map(REDIRECTS_MAP)
            .ok_or(CaptureError::Missing(REDIRECTS_MAP))?
            .try_into()?;
        Ok(Self {
            _ebpf: ebpf,
            redirects,
        })
    }

    /// Sends new outbound TCP connections made in the network namespace with
    /// cookie `netns_cookie` to `target` instead of where they were going.
    pub fn redirect(
        &mut self,
        netns_cookie: u64,
        target: SocketAddrV4,
    ) -> Result<(), CaptureError> {
        let value = Redirect::new(target.ip().octets(), target.port());
        self.redirects.insert(netns_cookie, value, 0)?;
        Ok(())
    }

    /// Stops redirecting the namespace's new connections.
    pub fn release(&mut self, netns_cookie: u64) -> Result<(), CaptureError> {
        self.redirects.remove(&netns_cookie)?;
        Ok(())
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
