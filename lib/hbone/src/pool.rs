//! HBONE connections reused across streams: one per key (for the node
//! agent, the source identity, the destination identity and the
//! destination address), so many proxied TCP connections share one mutual
//! TLS handshake. A connection that has gone away is replaced on next use,
//! and dropped from the pool when any new connection is made.

use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::net::{IpAddr, SocketAddr};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::client::{Connection, HboneError};
use crate::TunnelStream;

/// A pool of connections by key. Each remembers the credential `C` it was
/// made with (for the node agent, the certificate's expiry): once the
/// caller holds a newer one, the next stream gets a new connection, so a
/// renewed certificate is in use at once; streams on the old connection
/// finish undisturbed.
pub struct Pool<K, C = ()> {
    connections: Mutex<HashMap<K, Pooled<C>>>,
}

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
        source: IpAddr,
        connect: F,
    ) -> Result<TunnelStream, HboneError>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Connection, HboneError>>,
    {
        let pooled = self
            .lock()
            .get_mut(key)
            .filter(|pooled| pooled.made_with == *credential)
            .map(|pooled| {
                pooled.last_opened = Instant::now();
                pooled.connection.clone()
            });
        if let Some(connection) = pooled {
            match connection.open(target, source).await {
                // The peer answered: the connection works, whatever it said.
                Ok(stream) => return Ok(stream),
                Err(refused @ HboneError::Refused(_)) => return Err(refused),
                Err(error) => {
                    tracing::debug!(%error, "pooled HBONE connection gone; connecting again");
                    self.lock().remove(key);
                }
            }
        }
        let connection = connect().await?;
        {
            let mut pooled = self.lock();
            // Connections to peers that went away (a deleted pod) go with them.
            pooled.retain(|_, pooled| !pooled.connection.is_closed());
            pooled.insert(
                key.clone(),
                Pooled {
                    connection: connection.clone(),
                    made_with: credential.clone(),
                    last_opened: Instant::now(),
                },
            );
        }
        connection.open(target, source).await
    }

    /// Lets go of connections that carry no stream and have opened none for
    /// `idle`, and of those that have ended. A connection closes once the
    /// pool lets go of it and its last stream ends.
    pub fn release_idle(&self, idle: Duration) {
        self.lock().retain(|_, pooled| {
            !pooled.connection.is_closed()
                && (pooled.connection.has_streams() || pooled.last_opened.elapsed() < idle)
        });
    }

    /// How many connections are pooled.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<K, Pooled<C>>> {
        self.connections
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}
