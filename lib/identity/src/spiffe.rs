//! SPIFFE IDs of workloads, as Istio writes them:
//! `spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>`.

use std::fmt;
use std::str::FromStr;

/// Istio's default trust domain.
pub const DEFAULT_TRUST_DOMAIN: &str = "cluster.local";

/// A workload's identity: the service account it runs as.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Identity {
    pub trust_domain: String,
    pub namespace: String,
    pub service_account: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{0:?} is not a workload's SPIFFE ID (spiffe://TRUST_DOMAIN/ns/NAMESPACE/sa/SERVICE_ACCOUNT)"
)]
pub struct NotAnIdentity(pub String);

impl Identity {
    pub fn new(
        trust_domain: impl Into<String>,
        namespace: impl Into<String>,
        service_account: impl Into<String>,
    ) -> Self {
        Self {
            trust_domain: trust_domain.into(),
            namespace: namespace.into(),
            service_account: service_account.into(),
        }
    }
}

impl Identity {
    /// The identity as Istio's policies name principals: the SPIFFE ID
    /// without its scheme, `TRUST_DOMAIN/ns/NAMESPACE/sa/SERVICE_ACCOUNT`.
    pub fn principal(&self) -> String {
        format!(
            "{}/ns/{}/sa/{}",
            self.trust_domain, self.namespace, self.service_account
        )
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "spiffe://{}", self.principal())
    }
}

impl serde::Serialize for Identity {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl FromStr for Identity {
    type Err = NotAnIdentity;

    fn from_str(uri: &str) -> Result<Self, Self::Err> {
        let fail = || NotAnIdentity(uri.to_string());
        let path = uri.strip_prefix("spiffe://").ok_or_else(fail)?;
        match path.split('/').collect::<Vec<_>>()[..] {
            [trust_domain, "ns", namespace, "sa", service_account]
                if [trust_domain, namespace, service_account]
                    .iter()
                    .all(|part| !part.is_empty()) =>
            {
                Ok(Self::new(trust_domain, namespace, service_account))
            }
            _ => Err(fail()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identities_read_and_print_as_istio_writes_them() {
        let uri = "spiffe://cluster.local/ns/shop/sa/cart";
        let identity: Identity = uri.parse().unwrap();
        assert_eq!(identity, Identity::new("cluster.local", "shop", "cart"));
        assert_eq!(identity.to_string(), uri);
        for bad in [
            "https://cluster.local/ns/shop/sa/cart",
            "spiffe://cluster.local/ns/shop",
            "spiffe://cluster.local/ns//sa/cart",
            "spiffe://cluster.local/sa/cart/ns/shop",
            "spiffe://cluster.local/ns/shop/sa/cart/extra",
        ] {
            assert_eq!(
                bad.parse::<Identity>(),
                Err(NotAnIdentity(bad.into())),
                "{bad}"
            );
        }
    }
}
