//! Who is asking: the node an agent's credential speaks for, or the pod
//! of a workload that proxies for itself (a waypoint). Standalone, a
//! per-node bootstrap token; in Kubernetes, a projected service account
//! token checked by the API server (TokenReview): the node agent's service
//! account bound to a pod on a node, or any other bound to its own pod.

use std::collections::BTreeMap;
use std::path::Path;

use ambit_config::model::{Key, Mesh};
use anyhow::Context;
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec, UserInfo};
use kube::api::{Api, PostParams};

/// The audience agents' projected tokens are minted for: a token for the
/// CA is of no use against the API server, nor the other way round.
pub const TOKEN_AUDIENCE: &str = "ambit-ca";

/// Extra fields of a pod-bound service account token's user.
const NODE_NAME_EXTRA: &str = "authentication.kubernetes.io/node-name";
const POD_NAME_EXTRA: &str = "authentication.kubernetes.io/pod-name";

/// Who asks for certificates, and so which identities it may hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Requester {
    /// A node agent: the identities of its node's pods.
    Node(String),
    /// A workload that proxies for itself (a waypoint), with the token of
    /// its own pod: its own identity only.
    Workload { pod: Key, service_account: String },
}

impl std::fmt::Display for Requester {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Node(node) => write!(f, "the agent of node {node}"),
            Self::Workload { pod, .. } => write!(f, "the pod {pod}"),
        }
    }
}

pub enum Authenticator {
    NodeTokens(NodeTokens),
    TokenReview {
        client: kube::Client,
        /// The node agents' namespace, where their pods are.
        namespace: String,
        /// `system:serviceaccount:NAMESPACE:NAME` of the node agents.
        agent_username: String,
    },
}

impl Authenticator {
    pub fn token_review(client: kube::Client, namespace: &str, service_account: &str) -> Self {
        Self::TokenReview {
            client,
            namespace: namespace.to_string(),
            agent_username: format!("system:serviceaccount:{namespace}:{service_account}"),
        }
    }

    /// Who `bearer` speaks for, or why it is not accepted.
    pub async fn requester(&self, bearer: &str, mesh: &Mesh) -> Result<Requester, String> {
        match self {
            Self::NodeTokens(tokens) => tokens
                .node_of(bearer)
                .map(|node| Requester::Node(node.to_string()))
                .ok_or_else(|| "unknown bootstrap token".to_string()),
            Self::TokenReview {
                client,
                namespace,
                agent_username,
            } => {
                let user = review(client, bearer).await?;
                if user.username.as_deref() == Some(agent_username) {
                    return node_of_user(&user, namespace, mesh).map(Requester::Node);
                }
                workload_of_user(&user).ok_or_else(|| {
                    format!(
                        "{} is neither the node agent's service account ({agent_username}) nor bound to a pod",
                        user.username.as_deref().unwrap_or("an unnamed user")
                    )
                })
            }
        }
    }
}

/// The pod a pod-bound service account token speaks for, and its account.
fn workload_of_user(user: &UserInfo) -> Option<Requester> {
    let username = user.username.as_deref()?;
    let (namespace, service_account) = username
        .strip_prefix("system:serviceaccount:")?
        .split_once(':')?;
    let pod = extra(user, POD_NAME_EXTRA)?;
    Some(Requester::Workload {
        pod: Key::new(namespace, pod),
        service_account: service_account.to_string(),
    })
}

fn extra(user: &UserInfo, key: &str) -> Option<String> {
    user.extra
        .as_ref()
        .and_then(|extra| extra.get(key))
        .and_then(|values| values.first().cloned())
}

/// What the API server says of `token`.
async fn review(client: &kube::Client, token: &str) -> Result<UserInfo, String> {
    let request = TokenReview {
        spec: TokenReviewSpec {
            token: token.to_string(),
            audiences: Some(vec![TOKEN_AUDIENCE.to_string()]),
        },
        ..TokenReview::default()
    };
    let reviewed = Api::<TokenReview>::all(client.clone())
        .create(&PostParams::default(), &request)
        .await
        .map_err(|error| {
            tracing::error!(%error, "TokenReview failed");
            format!("the token could not be reviewed: {error}")
        })?;
    let status = reviewed.status.unwrap_or_default();
    match (status.authenticated, status.user) {
        (Some(true), Some(user)) => Ok(user),
        _ => Err(format!(
            "the API server does not accept the token{}",
            status.error.map(|e| format!(": {e}")).unwrap_or_default()
        )),
    }
}

/// The node a pod-bound token's user is on: named by the token, or else
/// the node of the pod (in `namespace`) it is bound to.
fn node_of_user(user: &UserInfo, namespace: &str, mesh: &Mesh) -> Result<String, String> {
    if let Some(node) = extra(user, NODE_NAME_EXTRA) {
        return Ok(node);
    }
    extra(user, POD_NAME_EXTRA)
        .and_then(|pod| mesh.workloads.get(&Key::new(namespace, pod))?.node.clone())
        .ok_or_else(|| "the token is not bound to a pod on a known node".to_string())
}

/// Bootstrap credentials of node agents in standalone mode: one secret
/// token per node, from a file of `NODE TOKEN` lines (`#` comments).
#[derive(Debug, Default)]
pub struct NodeTokens(BTreeMap<String, String>);

impl NodeTokens {
    pub fn read(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading the node tokens {}", path.display()))?;
        let mut tokens = BTreeMap::new();
        for (number, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            match line.split_whitespace().collect::<Vec<_>>()[..] {
                [node, token] if token.len() >= 16 => {
                    tokens.insert(node.to_string(), token.to_string());
                }
                _ => anyhow::bail!(
                    "{}:{}: expected `NODE TOKEN` with a token of at least 16 characters",
                    path.display(),
                    number + 1
                ),
            }
        }
        Ok(Self(tokens))
    }

    /// The node whose token `presented` is. Every token is compared in
    /// full, so timing does not tell how much of a guess was right.
    fn node_of(&self, presented: &str) -> Option<&str> {
        let mut found = None;
        for (node, token) in &self.0 {
            if constant_time_eq(token.as_bytes(), presented.as_bytes()) {
                found = Some(node.as_str());
            }
        }
        found
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
