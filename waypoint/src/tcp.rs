//! Connections carried whole: a waypoint's TCP ports and a gateway's
//! PASSTHROUGH servers. One endpoint of a weighted destination is chosen
//! per connection, and bytes are copied both ways until both sides end.

use std::net::IpAddr;

use ambit_config::model::Mesh;
use ambit_route::compile::WeightedBackend;
use ambit_route::lb::pick_weighted;
use ambit_route::Backend;
use tokio::io::{AsyncRead, AsyncWrite};

use crate::http::upstream::{InFlight, Stream, Unresolved, Upstream};

/// Each direction's buffer: several HTTP/2 DATA frames a turn, where
/// tokio's default (8 KiB) takes half of one (2 GiB through the waypoint:
/// 4.5 Gbit/s with 8 KiB, 5.0 with 64 KiB, for the same CPU).
const COPY_BUFFER: usize = 64 << 10;

/// A connection from `from` to an endpoint of one of `destinations`,
/// chosen by weight, then by its load balancer (by `client`'s address
/// when it hashes); counted in flight while the guard lives.
pub async fn connect(
    upstream: &Upstream,
    mesh: &Mesh,
    from: IpAddr,
    client: Option<IpAddr>,
    destinations: &[WeightedBackend],
) -> Result<(Box<dyn Stream>, InFlight), String> {
    let chosen = pick_weighted(destinations.iter().map(|d| d.weight), fastrand::u64(..))
        .ok_or("no destination with weight")?;
    let mut backend: &Backend = &destinations[chosen].backend;
    // Endpoints that are names: found now (a connection names no host, so
    // a DYNAMIC_DNS entry is reached by HTTP only).
    let resolved;
    if let Some(resolve) = &backend.resolve {
        resolved = upstream
            .resolved(backend, resolve, "")
            .await
            .map_err(|(Unresolved::NotTaken(why) | Unresolved::Failed(why))| why)?;
        backend = &resolved;
    }
    let key = backend.load_balancer.connection_key(client);
    let (endpoint, in_flight) = upstream
        .pick(backend, key)
        .ok_or_else(|| format!("{}: no endpoint", backend.cluster))?;
    let stream = upstream
        .stream(mesh, from, endpoint, (backend, None))
        .await
        .map_err(|error| format!("{endpoint}: {error}"))?;
    Ok((stream, in_flight))
}

/// Copies bytes both ways until both sides are done.
pub async fn join<A, B>(a: &mut A, b: &mut B)
where
    A: AsyncRead + AsyncWrite + Unpin + ?Sized,
    B: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    let _ = tokio::io::copy_bidirectional_with_sizes(a, b, COPY_BUFFER, COPY_BUFFER).await;
}
