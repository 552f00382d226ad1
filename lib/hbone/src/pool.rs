//! HBONE connections reused across streams, by key (for the node agent,
//! the source identity, the destination identity and the destination
//! address), so many proxied TCP connections share one mutual TLS
//! handshake. A connection carries at most as many streams as its peer
//! allows (`SETTINGS_MAX_CONCURRENT_STREAMS`: 200 for Ambit and ztunnel, 100
//! for Envoy) and [`MAX_STREAMS_PER_CONNECTION`]: past that the key gets
//! a further connection, rather than a stream that waits for one to end.
//! A new connection takes one stream until the peer's limit is known (a
//! round trip), so a burst never opens more than the peer allows. A
//! connection that has gone away is replaced on next use, and dropped from
//! the pool when any new connection is made.

use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::client::{Connection, HboneError, StreamCount};
use crate::{Caller, TunnelStream};

/// The most streams the pool opens on one connection, whatever its peer
/// allows: past it, a connection of its own spreads the load, as ztunnel
/// does at 100.
pub const MAX_STREAMS_PER_CONNECTION: usize = 100;

/// A pool of connections by key. Each remembers the credential `C` it was
/// made with (for the node agent, the certificate's expiry): once the
/// caller holds a newer one, the next stream gets a new connection, so a
/// renewed certificate is in use at once; streams on the old connection
/// finish undisturbed.
pub struct Pool<K, C = ()> {
    connections: Mutex<HashMap<K, Vec<Pooled<C>>>>,
    gates: Mutex<HashMap<K, Arc<DialGate>>>,
}

/// What the pooled connections of a key offer a new stream.
enum Reservation {
    Taken(Connection, StreamCount),
    /// None has room yet; this one may, once its peer's limit is known.
    Settling(Connection),
    Full,
}

/// Held while a connection for a key is made; holds the last dial's failure.
type DialGate = tokio::sync::Mutex<Option<(Instant, String)>>;

struct Pooled<C> {
    connection: Connection,
    made_with: C,
    /// When a stream was last opened on it.
    last_opened: Instant,
}

impl<K, C> Default for Pool<K, C> {
    fn default() -> Self {
        Self {
            connections: Mutex::new(HashMap::new()),
            gates: Mutex::new(HashMap::new()),
        }
    }
}

impl<K: Hash + Eq + Clone, C: PartialEq + Clone> Pool<K, C> {
    /// A stream to `target` for `source`, on the pooled connection for
    /// `key` made with `credential`, or on a new one from `connect` when
    /// there is none, it has gone away, or it was made with another
    /// credential.
    pub async fn open<F, Fut>(
        &self,
        key: &K,
        credential: &C,
        target: SocketAddr,
        source: impl Into<Caller<'_>>,
        connect: F,
    ) -> Result<TunnelStream, HboneError>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Connection, HboneError>>,
    {
        let source = source.into();
        if let Some((connection, place)) = self.pooled_place(key, credential).await {
            match connection.open_reserved(place, target, source).await {
                // The peer answered: the connection works, whatever it said.
                Ok(stream) => return Ok(stream),
                Err(refused @ HboneError::Refused(_)) => return Err(refused),
                Err(error) => {
                    tracing::debug!(%error, "pooled HBONE connection gone; connecting again");
                    if let Some(pooled) = self.lock().get_mut(key) {
                        pooled.retain(|pooled| !pooled.connection.same_as(&connection));
                    }
                }
            }
        }
        // One dial at a time per key: those who wait then take a place on
        // the connection it made, or its failure, rather than each dialling.
        let asked = Instant::now();
        let gate = self.gate(key);
        let mut last_failure = gate.lock().await;
        if let Some((failed_at, error)) = &*last_failure {
            if *failed_at >= asked {
                return Err(HboneError::DialFailed(error.clone()));
            }
        }
        if let Some((connection, place)) = self.pooled_place(key, credential).await {
            drop(last_failure);
            return connection.open_reserved(place, target, source).await;
        }
        let connection = match connect().await {
            Ok(connection) => connection,
            Err(error) => {
                *last_failure = Some((Instant::now(), error.to_string()));
                return Err(error);
            }
        };
        *last_failure = None;
        let place = connection.reserve(MAX_STREAMS_PER_CONNECTION);
        {
            let mut pooled = self.lock();
            // Connections to peers that went away (a deleted pod) go with
            // them, and those made with an older credential.
            for connections in pooled.values_mut() {
                connections.retain(|pooled| !pooled.connection.is_closed());
            }
            let connections = pooled.entry(key.clone()).or_default();
            connections.retain(|pooled| pooled.made_with == *credential);
            connections.push(Pooled {
                connection: connection.clone(),
                made_with: credential.clone(),
                last_opened: Instant::now(),
            });
            pooled.retain(|_, connections| !connections.is_empty());
        }
        drop(last_failure);
        match place {
            Some(place) => connection.open_reserved(place, target, source).await,
            None => Err(HboneError::NoRoom),
        }
    }

    /// A place on a pooled connection for `key` made with `credential`,
    /// waiting for connections still learning their peer's stream limit
    /// rather than dialling beside them; none when all are full.
    async fn pooled_place(&self, key: &K, credential: &C) -> Option<(Connection, StreamCount)> {
        loop {
            match self.reserve(key, credential) {
                Reservation::Taken(connection, place) => return Some((connection, place)),
                Reservation::Settling(connection) => connection.settled().await,
                Reservation::Full => return None,
            }
        }
    }

    /// A place on a pooled connection for `key` made with `credential` that
    /// has room, taken at once so that concurrent openers do not all pick
    /// the same one; else a connection that may have room once its peer's
    /// limit is known.
    fn reserve(&self, key: &K, credential: &C) -> Reservation {
        let mut pooled = self.lock();
        let mut settling = None;
        let usable = pooled
            .get_mut(key)
            .into_iter()
            .flatten()
            .filter(|pooled| pooled.made_with == *credential && !pooled.connection.is_closed());
        for pooled in usable {
            if let Some(place) = pooled.connection.reserve(MAX_STREAMS_PER_CONNECTION) {
                pooled.last_opened = Instant::now();
                return Reservation::Taken(pooled.connection.clone(), place);
            }
            if pooled.connection.is_settling() {
                settling = Some(pooled.connection.clone());
            }
        }
        settling.map_or(Reservation::Full, Reservation::Settling)
    }

    /// The dial gate of `key`: held while a connection for it is made.
    fn gate(&self, key: &K) -> Arc<DialGate> {
        let mut gates = self
            .gates
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        // Gates nobody waits at go, once in a while.
        if gates.len() > 64 {
            gates.retain(|_, gate| Arc::strong_count(gate) > 1);
        }
        gates.entry(key.clone()).or_default().clone()
    }

    /// Lets go of connections that carry no stream and have opened none for
    /// `idle`, and of those that have ended. A connection closes once the
    /// pool lets go of it and its last stream ends.
    pub fn release_idle(&self, idle: Duration) {
        let mut pooled = self.lock();
        for connections in pooled.values_mut() {
            connections.retain(|pooled| {
                !pooled.connection.is_closed()
                    && (pooled.connection.has_streams() || pooled.last_opened.elapsed() < idle)
            });
        }
        pooled.retain(|_, connections| !connections.is_empty());
    }

    /// How many connections are pooled.
    pub fn len(&self) -> usize {
        self.lock().values().map(Vec::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<K, Vec<Pooled<C>>>> {
        self.connections
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}
