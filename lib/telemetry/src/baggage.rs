//! What a caller tells of its workload on each HBONE stream, as ztunnel
//! does: a W3C `baggage` header with OpenTelemetry's keys
//! (`k8s.cluster.name`, `k8s.namespace.name`, `k8s.deployment.name` or
//! `k8s.pod.name`, `service.name`, `service.version`). The callee names the
//! caller by it in its metrics when its own view of the mesh does not know
//! the caller (a pod of another cluster, ztunnel's "derived" source); it is
//! never used for policy.

use ambit_config::model::{Key, Workload};
use ambit_identity::Identity;

use crate::labels::{canonical_names, workload_name, CLUSTER};

/// The longest value taken from a claim: a Kubernetes name's limit.
const MAX_VALUE: usize = 253;

/// A caller's account of itself, as received.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Baggage {
    pub cluster: Option<String>,
    pub namespace: Option<String>,
    pub workload_name: Option<String>,
    pub service_name: Option<String>,
    pub revision: Option<String>,
}

/// The `baggage` a pod's streams carry: its workload as Istio names it.
pub fn header_value(key: &Key, workload: &Workload) -> String {
    let (name, owned) = workload_name(key, workload);
    let (service, revision) = canonical_names(workload, &name);
    let kind = if owned { "deployment" } else { "pod" };
    format!(
        "k8s.cluster.name={CLUSTER},k8s.namespace.name={},k8s.{kind}.name={name},service.name={service},service.version={revision}",
        key.namespace
    )
}

impl Baggage {
    /// What a stream's `baggage` (its headers joined by commas) claims,
    /// if the caller proved `identity` and claims a workload of that
    /// identity's namespace: a peer names no workload elsewhere.
    pub fn claimed(baggage: &str, identity: &Identity) -> Option<Self> {
        let claim = Self::parse(baggage);
        (claim.workload_name.is_some() && claim.namespace.as_deref() == Some(&identity.namespace))
            .then_some(claim)
    }

    /// The members of a `baggage` value Ambit and ztunnel know; others,
    /// and values that are no plain names, are left out.
    pub fn parse(baggage: &str) -> Self {
        let mut parsed = Self::default();
        for member in baggage.split(',') {
            // A member's properties (`;…`) say nothing Ambit reads.
            let member = member.split(';').next().unwrap_or_default();
            let Some((key, value)) = member.split_once('=') else {
                continue;
            };
            let value = value.trim();
            let plain = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_');
            if value.is_empty() || value.len() > MAX_VALUE || !value.bytes().all(plain) {
                continue;
            }
            let field = match key.trim() {
                "k8s.cluster.name" => &mut parsed.cluster,
                "k8s.namespace.name" => &mut parsed.namespace,
                "k8s.deployment.name" | "k8s.cronjob.name" | "k8s.pod.name" | "k8s.job.name" => {
                    &mut parsed.workload_name
                }
                "service.name" => &mut parsed.service_name,
                "service.version" => &mut parsed.revision,
                _ => continue,
            };
            *field = Some(value.to_string());
        }
        parsed
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::labels::tests::pod;

    #[test]
    fn a_pod_tells_its_workload_as_ztunnel_reads_it() {
        let (key, deployed) = pod(
            "reviews-v2-7d8f9c6b5-x2k4q",
            &[
                ("pod-template-hash", "7d8f9c6b5"),
                ("app", "reviews"),
                ("version", "v2"),
            ],
        );
        let header = header_value(&key, &deployed);
        assert_eq!(
            header,
            "k8s.cluster.name=Kubernetes,k8s.namespace.name=shop,k8s.deployment.name=reviews-v2,service.name=reviews,service.version=v2"
        );
        assert_eq!(
            Baggage::parse(&header),
            Baggage {
                cluster: Some("Kubernetes".into()),
                namespace: Some("shop".into()),
                workload_name: Some("reviews-v2".into()),
                service_name: Some("reviews".into()),
                revision: Some("v2".into()),
            }
        );
        let (key, bare) = pod("debug", &[]);
        let bare = header_value(&key, &bare);
        assert!(bare.contains("k8s.pod.name=debug,service.name=debug,service.version=latest"));
    }

    #[test]
    fn a_claim_is_read_as_far_as_it_is_plain_and_of_the_callers_namespace() {
        // ztunnel's own example, two headers joined, with a property and
        // a member Ambit does not know.
        let claim = "k8s.cluster.name=K1,k8s.namespace.name=NS1;prop=1,\
                     k8s.job.name=N1, service.name=N2,service.version=V1,cloud.region=r";
        let parsed = Baggage::parse(claim);
        assert_eq!(parsed.workload_name.as_deref(), Some("N1"));
        assert_eq!(parsed.service_name.as_deref(), Some("N2"));
        assert_eq!(parsed.namespace.as_deref(), Some("NS1"));
        // Values that are no plain names, or too long, are dropped.
        let odd = format!(
            "k8s.pod.name=a b,service.name={},service.version=\"v\"",
            "x".repeat(254)
        );
        let odd = Baggage::parse(&odd);
        assert_eq!(odd, Baggage::default());
        let caller = Identity::new("cluster.local", "NS1", "sa");
        assert_eq!(Baggage::claimed(claim, &caller), Some(parsed));
        let elsewhere = Identity::new("cluster.local", "other", "sa");
        assert_eq!(Baggage::claimed(claim, &elsewhere), None);
        assert_eq!(Baggage::claimed("service.name=x", &caller), None);
    }
}
