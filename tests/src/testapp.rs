//! What the test app says, shared by the app and the tests that read it.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The body of every HTTP response the test app's server sends.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub app: String,
    pub version: String,
    /// The client address the server saw (`ip:port`).
    pub peer: String,
    /// `HTTP/1.1` or `HTTP/2.0`.
    pub protocol: String,
}

/// What the test app's HTTP client prints after its requests.
#[derive(Serialize, Deserialize, Debug, Default, Clone, PartialEq, Eq)]
pub struct HttpSummary {
    pub requests: usize,
    /// Responses by status code.
    pub statuses: BTreeMap<u16, usize>,
    /// Responses by answering `app/version` (`unknown` when the body was not
    /// a test-app reply).
    pub versions: BTreeMap<String, usize>,
    /// Peer addresses (IP only) the servers reported seeing.
    pub peers: BTreeMap<String, usize>,
    /// Requests that got no response at all.
    pub errors: usize,
    pub first_error: Option<String>,
}

impl HttpSummary {
    /// Number of responses with this status code.
    pub fn status(&self, code: u16) -> usize {
        self.statuses.get(&code).copied().unwrap_or(0)
    }
}
