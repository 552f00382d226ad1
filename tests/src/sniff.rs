//! Captures what crosses the cluster's underlay (every frame on its
//! bridge and ports), so a test can check what an eavesdropper between
//! nodes would read.

use std::io::Read;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use nix::sys::socket::{
    setsockopt, socket, sockopt, AddressFamily, SockFlag, SockProtocol, SockType,
};
use nix::sys::time::TimeVal;

use crate::Place;

/// Most bytes kept: enough for any test's traffic.
const MAX_BYTES: usize = 256 << 20;

pub struct Sniffer {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<std::io::Result<Vec<u8>>>,
}

impl Sniffer {
    /// Starts capturing every frame seen in `place`'s network namespace.
    pub(crate) fn start(place: &Place) -> anyhow::Result<Self> {
        let socket: OwnedFd = place.in_netns(|| {
            socket(
                AddressFamily::Packet,
                SockType::Raw,
                SockFlag::SOCK_CLOEXEC,
                SockProtocol::EthAll,
            )
        })??;
        // Wakes the reader now and then to see whether to stop.
        setsockopt(&socket, sockopt::ReceiveTimeout, &TimeVal::new(0, 100_000))?;
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut file = std::fs::File::from(socket);
            let mut captured = Vec::new();
            let mut frame = vec![0u8; 65_536];
            while !stopping.load(Ordering::Acquire) {
                match file.read(&mut frame) {
                    Ok(n) if captured.len() + n <= MAX_BYTES => {
                        captured.extend_from_slice(&frame[..n])
                    }
                    Ok(_) => {}
                    Err(error)
                        if matches!(
                            error.kind(),
                            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                        ) => {}
                    Err(error) => return Err(error),
                }
            }
            Ok(captured)
        });
        Ok(Self { stop, thread })
    }

    /// Stops, returning every captured frame's bytes, one after another.
    pub fn stop(self) -> anyhow::Result<Vec<u8>> {
        self.stop.store(true, Ordering::Release);
        let captured = self
            .thread
            .join()
            .map_err(|_| anyhow::anyhow!("the capture thread panicked"))??;
        Ok(captured)
    }
}

/// Whether `needle` occurs in `haystack`.
pub fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack
        .windows(needle.len())
        .any(|window| window == needle)
}
