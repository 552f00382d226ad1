//! HBONE connections reused across streams: one per key (for the node
//! agent, the source identity, the destination identity and the
//! destination address), so many proxied TCP connections share one mutual
//! TLS handshake. A connection that has gone away is replaced on next use.

use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::net::{IpAddr, SocketAddr};
use std::sync::Mutex;

use crate::client::{Connection, HboneError};
use crate::TunnelStream;

pub struct Pool<K> {
    connections: Mutex<HashMap<K, Connection>>,
}

impl<K> Default for Pool<K> {
    fn default() -> Self {
        Self {
            connections: Mutex::new(HashMap::new()),
        }
    }
}

impl<K: Hash + Eq + Clone> Pool<K> {
    /// A stream to `target` for `source`, on the pooled connection for
    /// `key`, or on a new one from `connect` when there is none or it has
    /// gone away.
    pub async fn open<F, Fut>(
        &self,
        key: &K,
        target: SocketAddr,
        source: IpAddr,
        connect: F,
    ) -> Result<TunnelStream, HboneError>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Connection, HboneError>>,
    {
        let pooled = self.lock().get(key).cloned();
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
        self.lock().insert(key.clone(), connection.clone());
        connection.open(target, source).await
    }

    /// How many connections are pooled.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<K, Connection>> {
        self.connections
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}
