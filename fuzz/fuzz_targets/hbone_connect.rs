//! The HBONE server's side of a connection from a peer that completed mutual
//! TLS: HTTP/2 frames as it sends them, each CONNECT request read and
//! answered.
#![no_main]

use std::time::Duration;

use ambit_hbone::server::{serve, Refusal};
use libfuzzer_sys::fuzz_target;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fuzz_target!(|frames: &[u8]| {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("a runtime");
    runtime.block_on(async {
        let (mut peer, ours) = tokio::io::duplex(1 << 16);
        let serving = serve(ours, |request, responder| async move {
            // A request that got this far names an address: answer it both ways.
            match request.target.port() % 2 {
                0 => responder.refuse(Refusal::Denied),
                _ => responder.refuse(Refusal::Unreachable),
            }
        });
        let sending = async move {
            let _ = peer.write_all(frames).await;
            let _ = peer.shutdown().await;
            let mut answers = Vec::new();
            let _ = peer.read_to_end(&mut answers).await;
        };
        let both = async { tokio::join!(serving, sending) };
        let _ = tokio::time::timeout(Duration::from_secs(5), both).await;
    });
});
