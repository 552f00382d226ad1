//! The resource types served, and request paths as the API server lays
//! them out (`/api/v1/namespaces/{ns}/pods/{name}`,
//! `/apis/{group}/{version}/…`).

/// A resource type: where it is served and what its objects are called.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResourceType {
    pub group: &'static str,
    pub versions: &'static [&'static str],
    pub plural: &'static str,
    pub kind: &'static str,
    pub namespaced: bool,
}

const ISTIO_VERSIONS: &[&str] = &["v1", "v1beta1", "v1alpha3"];

pub const RESOURCE_TYPES: &[ResourceType] = &[
    core("namespaces", "Namespace", false),
    core("pods", "Pod", true),
    core("services", "Service", true),
    core("secrets", "Secret", true),
    core("configmaps", "ConfigMap", true),
    ResourceType {
        group: "apps",
        versions: &["v1"],
        plural: "daemonsets",
        kind: "DaemonSet",
        namespaced: true,
    },
    ResourceType {
        group: "discovery.k8s.io",
        versions: &["v1"],
        plural: "endpointslices",
        kind: "EndpointSlice",
        namespaced: true,
    },
    istio(
        "networking.istio.io",
        ISTIO_VERSIONS,
        "virtualservices",
        "VirtualService",
    ),
    istio(
        "networking.istio.io",
        ISTIO_VERSIONS,
        "destinationrules",
        "DestinationRule",
    ),
    istio(
        "networking.istio.io",
        ISTIO_VERSIONS,
        "serviceentries",
        "ServiceEntry",
    ),
    istio("networking.istio.io", ISTIO_VERSIONS, "gateways", "Gateway"),
    istio(
        "security.istio.io",
        &["v1", "v1beta1"],
        "authorizationpolicies",
        "AuthorizationPolicy",
    ),
    istio(
        "security.istio.io",
        &["v1", "v1beta1"],
        "peerauthentications",
        "PeerAuthentication",
    ),
];

const fn core(plural: &'static str, kind: &'static str, namespaced: bool) -> ResourceType {
    ResourceType {
        group: "",
        versions: &["v1"],
        plural,
        kind,
        namespaced,
    }
}

const fn istio(
    group: &'static str,
    versions: &'static [&'static str],
    plural: &'static str,
    kind: &'static str,
) -> ResourceType {
    ResourceType {
        group,
        versions,
        plural,
        kind,
        namespaced: true,
    }
}

impl ResourceType {
    pub fn by_kind(api_version: &str, kind: &str) -> Option<&'static Self> {
        let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
        RESOURCE_TYPES
            .iter()
            .find(|t| t.kind == kind && t.group == group && t.versions.contains(&version))
    }

    pub fn api_version(&self, version: &str) -> String {
        if self.group.is_empty() {
            version.to_string()
        } else {
            format!("{}/{version}", self.group)
        }
    }
}

/// What a request path names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub resource: &'static ResourceType,
    pub version: String,
    /// The namespace in the path; none for a cluster-wide request.
    pub namespace: Option<String>,
    pub name: Option<String>,
}

/// Reads a path; `None` when it names nothing served.
pub fn parse_path(path: &str) -> Option<Target> {
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (group, version, rest) = match segments.as_slice() {
        ["api", version, rest @ ..] => ("", *version, rest),
        ["apis", group, version, rest @ ..] => (*group, *version, rest),
        _ => return None,
    };
    let find = |plural: &str| {
        RESOURCE_TYPES
            .iter()
            .find(|t| t.group == group && t.plural == plural && t.versions.contains(&version))
    };
    let target = |resource, namespace: Option<&str>, name: Option<&str>| {
        Some(Target {
            resource,
            version: version.to_string(),
            namespace: namespace.map(str::to_string),
            name: name.map(str::to_string),
        })
    };
    match rest {
        [plural] => target(find(plural)?, None, None),
        // A Namespace itself: /api/v1/namespaces/{name}.
        ["namespaces", name] if group.is_empty() => target(find("namespaces")?, None, Some(name)),
        [plural, name] if !find(plural)?.namespaced => target(find(plural)?, None, Some(name)),
        ["namespaces", namespace, plural] => target(
            find(plural).filter(|t| t.namespaced)?,
            Some(namespace),
            None,
        ),
        ["namespaces", namespace, plural, name] => target(
            find(plural).filter(|t| t.namespaced)?,
            Some(namespace),
            Some(name),
        ),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_name_their_resource_namespace_and_object() {
        let pods = parse_path("/api/v1/namespaces/default/pods/web").unwrap();
        assert_eq!(
            (
                pods.resource.kind,
                pods.namespace.as_deref(),
                pods.name.as_deref()
            ),
            ("Pod", Some("default"), Some("web"))
        );
        let namespace = parse_path("/api/v1/namespaces/shop").unwrap();
        assert_eq!(
            (namespace.resource.kind, namespace.name.as_deref()),
            ("Namespace", Some("shop"))
        );
        let all = parse_path("/apis/networking.istio.io/v1beta1/virtualservices").unwrap();
        assert_eq!((all.resource.kind, all.namespace), ("VirtualService", None));
        assert_eq!(
            parse_path("/apis/security.istio.io/v1alpha3/peerauthentications"),
            None
        );
        assert_eq!(
            parse_path("/api/v1/namespaces/default/persistentvolumeclaims"),
            None
        );
    }
}
