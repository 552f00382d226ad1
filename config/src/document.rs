//! Kubernetes manifests (multi-document YAML) to typed Istio objects.
//!
//! Every document is read on its own: a malformed one yields a [`Problem`]
//! naming the object and the field path, and the others still come through,
//! the documents after a broken one included. A document that cannot be
//! read at all is still named where its text allows, so the object it
//! meant is rejected (a policy then denies) rather than forgotten. Kinds
//! Ambit does not read (Deployments, ConfigMaps, …) are skipped; Istio's
//! other kinds, and near misses of the kinds it reads (a typo in `kind` or
//! the API group), are reported, and a near miss of a security kind is
//! rejected as that kind.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::api::core::{
    ConfigMapBody, EndpointSliceBody, NamespaceBody, PodBody, ServiceBody, MESH_CONFIG_MAP,
};
use crate::api::meta::ObjectMeta;
use crate::api::networking::{
    DestinationRuleSpec, GatewaySpec, ServiceEntrySpec, VirtualServiceSpec,
};
use crate::api::security::{AuthorizationPolicySpec, PeerAuthenticationSpec};
use crate::api::{Issue, Spec};

/// Kinds read: (API group, kind, the versions served for it).
pub const KINDS: &[(&str, &str, &[&str])] = &[
    ("", "Namespace", &["v1"]),
    // Only Istio's mesh config (see `field_selector`).
    ("", "ConfigMap", &["v1"]),
    ("", "Pod", &["v1"]),
    ("", "Service", &["v1"]),
    ("discovery.k8s.io", "EndpointSlice", &["v1"]),
    (
        "networking.istio.io",
        "VirtualService",
        &["v1", "v1beta1", "v1alpha3"],
    ),
    (
        "networking.istio.io",
        "ServiceEntry",
        &["v1", "v1beta1", "v1alpha3"],
    ),
    (
        "networking.istio.io",
        "Gateway",
        &["v1", "v1beta1", "v1alpha3"],
    ),
    (
        "networking.istio.io",
        "DestinationRule",
        &["v1", "v1beta1", "v1alpha3"],
    ),
    (
        "security.istio.io",
        "AuthorizationPolicy",
        &["v1", "v1beta1"],
    ),
    (
        "security.istio.io",
        "PeerAuthentication",
        &["v1", "v1beta1"],
    ),
];

/// Namespace of an object whose manifest names none.
pub const DEFAULT_NAMESPACE: &str = "default";

/// Largest document read: the API server stores no object over 1.5 MiB.
pub const MAX_DOCUMENT_BYTES: usize = 3 << 19;
/// Deepest nesting of collections read. Real manifests nest a dozen deep;
/// a hostile document nests deep to make parsing slow.
pub const MAX_DEPTH: usize = 64;
/// Most nodes that aliases (`*name`) may repeat in one document: real
/// manifests rarely use them, and a few nested ones expand exponentially.
pub const MAX_ALIAS_EVENTS: usize = 100_000;

/// Kinds whose objects decide who may connect: one that cannot be read
/// must not let through what it was meant to stop.
const SECURITY_KINDS: &[&str] = &["AuthorizationPolicy", "PeerAuthentication"];

/// Names an object in messages: `AuthorizationPolicy shop/allow-read`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjectRef {
    pub kind: String,
    pub namespace: String,
    pub name: String,
}

impl ObjectRef {
    /// A namespaced object without a namespace is in `default`; a
    /// cluster-scoped one (a Namespace) has none.
    pub fn new(kind: &str, namespace: Option<&str>, name: &str) -> Self {
        let namespace = match kind {
            "Namespace" => "",
            _ => namespace.unwrap_or(DEFAULT_NAMESPACE),
        };
        Self {
            kind: kind.to_string(),
            namespace: namespace.to_string(),
            name: name.to_string(),
        }
    }
}

impl std::fmt::Display for ObjectRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.namespace.as_str() {
            "" => write!(f, "{} {}", self.kind, self.name),
            namespace => write!(f, "{} {namespace}/{}", self.kind, self.name),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Severity {
    /// The object is not applied.
    Error,
    /// The object is applied; something in it deserves a look.
    Warning,
}

/// One problem in a manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Which of the sources given to [`parse_sources`] (0 for [`parse_manifests`]).
    pub source: usize,
    /// Position of the document in its source, from 0.
    pub document: usize,
    /// The object, when the document got far enough to name one.
    pub object: Option<ObjectRef>,
    /// Field path from the object's root (`spec.rules[0].from[0]…`).
    pub path: String,
    pub message: String,
    pub severity: Severity,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let severity = match self.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        match &self.object {
            Some(object) => write!(f, "{severity}: {object}")?,
            None => write!(f, "{severity}: document {}", self.document)?,
        }
        if !self.path.is_empty() {
            write!(f, ": {}", self.path)?;
        }
        write!(f, ": {}", self.message)
    }
}

/// An object of one of Istio's kinds, as the manifest gave it.
#[derive(Debug, Clone, PartialEq)]
pub struct Object<S> {
    /// Which source, and which document of it, the object came from.
    pub source: usize,
    pub document: usize,
    pub api_version: String,
    pub metadata: ObjectMeta,
    pub spec: S,
}

impl<S> Object<S> {
    pub fn namespace(&self) -> &str {
        self.metadata
            .namespace
            .as_deref()
            .unwrap_or(DEFAULT_NAMESPACE)
    }

    pub fn object_ref(&self, kind: &str) -> ObjectRef {
        ObjectRef::new(
            kind,
            self.metadata.namespace.as_deref(),
            &self.metadata.name,
        )
    }
}

/// The fully qualified name of a host as a resource in `namespace` writes
/// it: a short name (no dot) is a Service of that namespace.
pub fn qualify_host(host: &str, namespace: &str) -> String {
    if host.contains('.') || host == "*" {
        host.to_string()
    } else {
        format!("{host}.{namespace}.svc.cluster.local")
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Resource {
    Namespace(Object<NamespaceBody>),
    Pod(Object<PodBody>),
    Service(Object<ServiceBody>),
    EndpointSlice(Object<EndpointSliceBody>),
    VirtualService(Object<VirtualServiceSpec>),
    DestinationRule(Object<DestinationRuleSpec>),
    ServiceEntry(Object<ServiceEntrySpec>),
    Gateway(Object<GatewaySpec>),
    AuthorizationPolicy(Object<AuthorizationPolicySpec>),
    PeerAuthentication(Object<PeerAuthenticationSpec>),
    /// Istio's mesh config, the ConfigMap `istio`.
    MeshConfig(Object<ConfigMapBody>),
}

/// The resource name the API server serves `kind` under (its plural).
pub fn plural(kind: &str) -> String {
    let lower = kind.to_ascii_lowercase();
    match lower.strip_suffix('y') {
        // policy -> policies, gateway -> gateways
        Some(stem) if !stem.ends_with(['a', 'e', 'o', 'u']) => format!("{stem}ies"),
        _ => format!("{lower}s"),
    }
}

/// The objects of `kind` a source watches, when not all of them: of
/// ConfigMaps only Istio's mesh config (a cluster holds many others, and
/// they are not the mesh's to read).
pub fn field_selector(kind: &str) -> Option<String> {
    (kind == "ConfigMap").then(|| format!("metadata.name={MESH_CONFIG_MAP}"))
}

impl Resource {
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Namespace(_) => "Namespace",
            Self::Pod(_) => "Pod",
            Self::Service(_) => "Service",
            Self::EndpointSlice(_) => "EndpointSlice",
            Self::VirtualService(_) => "VirtualService",
            Self::DestinationRule(_) => "DestinationRule",
            Self::ServiceEntry(_) => "ServiceEntry",
            Self::Gateway(_) => "Gateway",
            Self::AuthorizationPolicy(_) => "AuthorizationPolicy",
            Self::PeerAuthentication(_) => "PeerAuthentication",
            Self::MeshConfig(_) => "ConfigMap",
        }
    }

    /// The object's API version, kind, namespace and name, whatever its kind.
    pub fn describe(&self) -> (&str, ObjectRef) {
        match self {
            Self::Namespace(o) => (&o.api_version, o.object_ref(self.kind())),
            Self::Pod(o) => (&o.api_version, o.object_ref(self.kind())),
            Self::Service(o) => (&o.api_version, o.object_ref(self.kind())),
            Self::EndpointSlice(o) => (&o.api_version, o.object_ref(self.kind())),
            Self::VirtualService(o) => (&o.api_version, o.object_ref(self.kind())),
            Self::DestinationRule(o) => (&o.api_version, o.object_ref(self.kind())),
            Self::ServiceEntry(o) => (&o.api_version, o.object_ref(self.kind())),
            Self::Gateway(o) => (&o.api_version, o.object_ref(self.kind())),
            Self::AuthorizationPolicy(o) => (&o.api_version, o.object_ref(self.kind())),
            Self::PeerAuthentication(o) => (&o.api_version, o.object_ref(self.kind())),
            Self::MeshConfig(o) => (&o.api_version, o.object_ref(self.kind())),
        }
    }
}

/// What a stream of manifests held: the objects that passed, and every
/// problem found (objects with an error are not among the resources).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Parsed {
    pub resources: Vec<Resource>,
    pub problems: Vec<Problem>,
}

/// The manifest files (`.yaml`, `.yml`, `.json`) under `dir`, depth first
/// in name order. Hidden entries are skipped, among them the `..data`
/// directories Kubernetes mounts a ConfigMap with (its files are reached
/// through the top-level links). A directory reached a second time (a
/// symbolic link loop) is not entered again.
pub fn manifest_files(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut seen = BTreeSet::new();
    manifest_files_within(dir, &mut seen)
}

fn manifest_files_within(
    dir: &Path,
    seen: &mut BTreeSet<(u64, u64)>,
) -> std::io::Result<Vec<PathBuf>> {
    use std::os::unix::fs::MetadataExt;
    let metadata = std::fs::metadata(dir)?;
    if !seen.insert((metadata.dev(), metadata.ino())) {
        return Ok(Vec::new());
    }
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)?
        .map(|entry| entry.map(|e| e.path()))
        .collect::<Result<_, _>>()?;
    entries.sort();
    let mut files = Vec::new();
    for entry in entries {
        let hidden = entry
            .file_name()
            .and_then(|n| n.to_str())
            .is_none_or(|n| n.starts_with('.'));
        if hidden {
            continue;
        }
        if entry.is_dir() {
            files.extend(manifest_files_within(&entry, seen)?);
        } else if entry
            .extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| matches!(e, "yaml" | "yml" | "json"))
        {
            files.push(entry);
        }
    }
    Ok(files)
}

/// Reads every document of a YAML stream.
pub fn parse_manifests(text: &str) -> Parsed {
    parse_sources(&[text])
}

/// Reads several YAML streams (files) as one configuration: references
/// between objects are checked across all of them.
pub fn parse_sources(texts: &[&str]) -> Parsed {
    let mut parsed = Parsed::default();
    for (source, text) in texts.iter().enumerate() {
        read_stream(source, text, &mut parsed);
    }
    parsed.problems.extend(check_references(&parsed.resources));
    parsed
}

/// Reads one YAML stream of a configuration kept in several: references to
/// other streams' objects are left to [`check_references`].
pub fn parse_stream(text: &str) -> Parsed {
    let mut parsed = Parsed::default();
    read_stream(0, text, &mut parsed);
    parsed
}

/// Reads one object as an API server returns it (JSON). `Ok(None)` for a
/// kind Ambit does not read; problems name the object and field.
pub fn parse_object(object: Value) -> Result<Option<Resource>, Vec<Problem>> {
    let mut resources = Vec::new();
    read_document((0, 0), object, &mut resources).map_err(|found| problems((0, 0), found))?;
    Ok(resources.pop())
}

/// The objects that could not be read, each with its errors
/// (`path: message`): a source holds them, but the model cannot use them.
pub fn rejections(problems: &[Problem]) -> Vec<(ObjectRef, Vec<String>)> {
    let mut rejected: std::collections::BTreeMap<ObjectRef, Vec<String>> = Default::default();
    for problem in problems {
        if let (Severity::Error, Some(object)) = (problem.severity, &problem.object) {
            rejected
                .entry(object.clone())
                .or_default()
                .push(format!("{}: {}", problem.path, problem.message));
        }
    }
    rejected.into_iter().collect()
}

/// The problems found in one document, errors first.
fn problems((source, document): (usize, usize), found: Vec<Found>) -> Vec<Problem> {
    let mut problems: Vec<Problem> = found
        .into_iter()
        .map(|(object, path, message, severity)| Problem {
            source,
            document,
            object,
            path,
            message,
            severity,
        })
        .collect();
    problems.sort_by_key(|problem| problem.severity);
    problems
}

fn read_stream(source: usize, text: &str, parsed: &mut Parsed) {
    for (document, yaml) in documents(text).enumerate() {
        let value = read_yaml(yaml);
        let found = match value {
            Ok(Value::Null) => continue,
            Ok(value) => match read_document((source, document), value, &mut parsed.resources) {
                Ok(()) => continue,
                Err(found) => found,
            },
            // Named from its text where it can be, so the object it meant
            // is rejected rather than silently gone.
            Err(message) => vec![(named_in_text(yaml), String::new(), message, Severity::Error)],
        };
        parsed.problems.extend(problems((source, document), found));
    }
}

/// The documents of a YAML stream, split at its `---` lines. Each is parsed
/// on its own, so one that is broken does not hide the ones after it (a
/// YAML parser cannot resynchronise past a syntax error; a line that
/// starts with `---` cannot be inside any scalar, so this split is exact).
/// Text before a leading `---` is a document only if it holds anything.
fn documents(text: &str) -> impl Iterator<Item = &str> {
    let mut starts = vec![0];
    let mut offset = 0;
    for line in text.split_inclusive('\n') {
        let separator = line
            .strip_prefix("---")
            .is_some_and(|rest| rest.is_empty() || rest.starts_with([' ', '\t', '\n', '\r']));
        if separator {
            starts.push(offset);
        }
        offset += line.len();
    }
    starts.push(text.len());
    let first_is_blank = starts.len() > 2
        && text[..starts[1]]
            .lines()
            .all(|line| line.trim().is_empty() || line.trim_start().starts_with('#'));
    let chunks: Vec<&str> = starts
        .windows(2)
        .map(|bounds| &text[bounds[0]..bounds[1]])
        .collect();
    chunks
        .into_iter()
        .skip(usize::from(first_is_blank))
        .map(|chunk| chunk.strip_prefix("---").unwrap_or(chunk))
}

/// Reads one YAML document as a tree, within budgets that keep a hostile
/// document cheap: the API server's object size, and nesting, node count
/// and alias expansion well past any real manifest's. YAML 1.2's core
/// schema, as Istio's tools read it: `yes` and `on` are strings.
fn read_yaml(yaml: &str) -> Result<Value, String> {
    if yaml.len() > MAX_DOCUMENT_BYTES {
        return Err(format!(
            "a document of {} bytes is over the {MAX_DOCUMENT_BYTES} read",
            yaml.len()
        ));
    }
    let options = serde_saphyr::options! {
        budget: serde_saphyr::budget! {
            max_depth: MAX_DEPTH,
            flow_nesting_limit: MAX_DEPTH,
            max_documents: 1,
        },
        alias_limits: serde_saphyr::alias_limits! {
            max_total_replayed_events: MAX_ALIAS_EVENTS,
        },
        strict_booleans: true,
        with_snippet: false,
    };
    serde_saphyr::from_str_with_options(yaml, options).map_err(|error| {
        // The cause, under the wrappers that only add where it happened.
        let mut cause = &error;
        while let serde_saphyr::Error::AliasError { error, .. } = cause {
            cause = error;
        }
        match cause {
            serde_saphyr::Error::Budget { .. }
            | serde_saphyr::Error::AliasReplayLimitExceeded { .. }
            | serde_saphyr::Error::AliasReplayStackDepthExceeded { .. } => {
                format!("too costly to read: {error}")
            }
            _ => format!("not valid YAML: {error}"),
        }
    })
}

/// The object a document that YAML cannot read was meant to be, from its
/// top-level `kind:` and its `metadata:`'s `name:` and `namespace:` lines;
/// only for the kinds Ambit reads.
fn named_in_text(yaml: &str) -> Option<ObjectRef> {
    let (mut kind, mut name, mut namespace) = (None, None, None);
    let mut in_metadata = false;
    let value = |line: &str, key: &str| {
        let rest = line.trim_start().strip_prefix(key)?.strip_prefix(':')?;
        let value = rest.split(" #").next()?.trim().trim_matches(['"', '\'']);
        (!value.is_empty()).then(|| value.to_string())
    };
    for line in yaml.lines() {
        let top_level = !line.starts_with([' ', '\t']);
        if top_level {
            in_metadata = line.trim_end() == "metadata:";
            kind = kind.or_else(|| value(line, "kind"));
        } else if in_metadata {
            name = name.or_else(|| value(line, "name"));
            namespace = namespace.or_else(|| value(line, "namespace"));
        }
    }
    let kind = kind?;
    KINDS.iter().any(|(_, known, _)| *known == kind).then(|| {
        ObjectRef::new(
            &kind,
            namespace.as_deref(),
            name.as_deref().unwrap_or_default(),
        )
    })
}

/// Checks references between objects: warns about routes to subsets that
/// no DestinationRule defines, as traffic sent there finds no endpoint.
pub fn check_references<'a>(
    resources: impl IntoIterator<Item = &'a Resource> + Clone,
) -> Vec<Problem> {
    let mut defined: std::collections::HashMap<String, BTreeSet<&str>> =
        std::collections::HashMap::new();
    for resource in resources.clone() {
        if let Resource::DestinationRule(rule) = resource {
            let names = defined
                .entry(qualify_host(&rule.spec.host, rule.namespace()))
                .or_default();
            names.extend(rule.spec.subsets.iter().map(|subset| subset.name.as_str()));
        }
    }
    let mut problems = Vec::new();
    for resource in resources {
        let Resource::VirtualService(service) = resource else {
            continue;
        };
        let spec = &service.spec;
        let http = spec.http.iter().enumerate().flat_map(|(i, route)| {
            let to = route
                .route
                .iter()
                .enumerate()
                .map(move |(j, r)| (format!("spec.http[{i}].route[{j}]"), &r.destination));
            let mirror = route
                .mirror
                .iter()
                .map(move |d| (format!("spec.http[{i}].mirror"), d));
            let mirrors = route
                .mirrors
                .iter()
                .enumerate()
                .map(move |(j, m)| (format!("spec.http[{i}].mirrors[{j}]"), &m.destination));
            to.chain(mirror).chain(mirrors)
        });
        let tcp = spec.tcp.iter().enumerate().flat_map(|(i, route)| {
            route
                .route
                .iter()
                .enumerate()
                .map(move |(j, r)| (format!("spec.tcp[{i}].route[{j}]"), &r.destination))
        });
        let tls = spec.tls.iter().enumerate().flat_map(|(i, route)| {
            route
                .route
                .iter()
                .enumerate()
                .map(move |(j, r)| (format!("spec.tls[{i}].route[{j}]"), &r.destination))
        });
        for (at, destination) in http.chain(tcp).chain(tls) {
            let Some(subset) = &destination.subset else {
                continue;
            };
            let host = qualify_host(&destination.host, service.namespace());
            if !defined
                .get(&host)
                .is_some_and(|names| names.contains(subset.as_str()))
            {
                problems.push(Problem {
                    source: service.source,
                    document: service.document,
                    object: Some(service.object_ref("VirtualService")),
                    path: format!("{at}.destination.subset"),
                    message: format!("subset {subset:?} of {host} is not defined by any DestinationRule: traffic to it fails"),
                    severity: Severity::Warning,
                });
            }
        }
    }
    problems
}

type Found = (Option<ObjectRef>, String, String, Severity);

/// Reads one document into `resources`; returns what was wrong with it.
fn read_document(
    (source, document): (usize, usize),
    value: Value,
    resources: &mut Vec<Resource>,
) -> Result<(), Vec<Found>> {
    let text = |field: &str| value.get(field).and_then(Value::as_str).map(str::to_string);
    // The name and namespace as far as they can be read, to name the
    // object even when the rest of it is broken.
    let named = |kind: &str| {
        let field = |key: &str| value.get("metadata")?.get(key)?.as_str();
        ObjectRef::new(kind, field("namespace"), field("name").unwrap_or_default())
    };
    let (Some(api_version), Some(kind)) = (text("apiVersion"), text("kind")) else {
        let known = text("kind").filter(|kind| KINDS.iter().any(|(_, k, _)| k == kind));
        return Err(vec![(
            known.map(|kind| named(&kind)),
            String::new(),
            "apiVersion and kind are required".into(),
            Severity::Error,
        )]);
    };
    let (group, version) = api_version
        .split_once('/')
        .unwrap_or(("", api_version.as_str()));
    let Some((_, _, served)) = KINDS.iter().find(|(g, k, _)| *g == group && *k == kind) else {
        return unread_kind(&api_version, group, &kind, named);
    };
    let metadata: ObjectMeta = value
        .get("metadata")
        .cloned()
        .map(serde_json::from_value)
        .transpose()
        .map_err(|error| {
            vec![(
                Some(named(&kind)),
                "metadata".to_string(),
                error.to_string(),
                Severity::Error,
            )]
        })?
        .unwrap_or_default();
    let object = ObjectRef::new(&kind, metadata.namespace.as_deref(), &metadata.name);
    let error = |path: &str, message: String| {
        (
            Some(object.clone()),
            path.to_string(),
            message,
            Severity::Error,
        )
    };
    if metadata.name.is_empty() {
        return Err(vec![error("metadata.name", "is required".into())]);
    }
    if !served.contains(&version) {
        return Err(vec![error(
            "apiVersion",
            format!(
                "{api_version} is not served for {kind} (served: {})",
                served.join(", ")
            ),
        )]);
    }
    // Kubernetes' own kinds are read whole and leniently (their many other
    // fields do not matter); Istio's kinds by their spec, strictly.
    let kubernetes_kind = matches!(group, "" | "discovery.k8s.io");
    let body = if kubernetes_kind {
        value
    } else {
        value
            .get("spec")
            .cloned()
            .unwrap_or(Value::Object(Default::default()))
    };
    let raw = Raw {
        source,
        document,
        strict: !kubernetes_kind,
        api_version,
        metadata,
        body,
    };
    let resource = match kind.as_str() {
        "Namespace" => Resource::Namespace(read_object(raw, &object)?),
        "Pod" => Resource::Pod(read_object(raw, &object)?),
        "Service" => Resource::Service(read_object(raw, &object)?),
        "EndpointSlice" => Resource::EndpointSlice(read_object(raw, &object)?),
        "VirtualService" => Resource::VirtualService(read_object(raw, &object)?),
        "DestinationRule" => Resource::DestinationRule(read_object(raw, &object)?),
        "ServiceEntry" => Resource::ServiceEntry(read_object(raw, &object)?),
        "Gateway" => Resource::Gateway(read_object(raw, &object)?),
        "AuthorizationPolicy" => Resource::AuthorizationPolicy(read_object(raw, &object)?),
        "PeerAuthentication" => Resource::PeerAuthentication(read_object(raw, &object)?),
        // Istio's mesh config alone: other ConfigMaps are not the mesh's.
        "ConfigMap" if object.name == MESH_CONFIG_MAP => {
            Resource::MeshConfig(read_object(raw, &object)?)
        }
        _ => return Ok(()),
    };
    resources.push(resource);
    Ok(())
}

/// What becomes of a document of a kind Ambit does not read: nothing for
/// other projects' kinds (a Deployment), a warning for Istio's other kinds,
/// and for a near miss of a kind Ambit reads (a typo in `kind` or in the
/// API group) a warning, or for a security kind an error that rejects the
/// object as that kind: a mistyped policy must not silently stop applying.
fn unread_kind(
    api_version: &str,
    group: &str,
    kind: &str,
    named: impl Fn(&str) -> ObjectRef,
) -> Result<(), Vec<Found>> {
    let meant = KINDS.iter().find(|(known_group, known_kind, _)| {
        let close = |a: &str, b: &str| edit_distance(a, b) <= (b.len() / 6).max(1);
        (kind == *known_kind || close(kind, known_kind))
            && (group == *known_group || close(group, known_group))
    });
    let found = match meant {
        Some((known_group, known_kind, _)) if SECURITY_KINDS.contains(known_kind) => (
            Some(named(known_kind)),
            "kind".to_string(),
            format!(
                "{api_version} {kind} is not a kind Ambit reads; taken for a {known_group} {known_kind} that cannot be read, which fails closed"
            ),
            Severity::Error,
        ),
        Some((known_group, known_kind, _)) => (
            Some(named(kind)),
            "kind".to_string(),
            format!("{api_version} {kind} is not a kind Ambit reads; did you mean {known_group} {known_kind}?"),
            Severity::Warning,
        ),
        None if group == "security.istio.io" && kind == "RequestAuthentication" => (
            Some(named(kind)),
            "kind".to_string(),
            format!("{api_version} {kind} is not a kind Ambit reads: {JWT_NOT_VALIDATED}"),
            Severity::Warning,
        ),
        None if group.ends_with("istio.io") => (
            Some(named(kind)),
            "kind".to_string(),
            format!("{api_version} {kind} is not a kind Ambit reads; it has no effect"),
            Severity::Warning,
        ),
        None => return Ok(()),
    };
    Err(vec![found])
}

/// What becomes of JWT authentication, which Ambit leaves out.
pub const JWT_NOT_VALIDATED: &str = "Ambit does not validate JWTs, so AuthorizationPolicy \
     rules on request principals or request.auth claims fail closed: in ALLOW and AUDIT \
     they never match, in DENY and CUSTOM they always do";

/// Levenshtein distance between two short names.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let substituted = diagonal + usize::from(ca != *cb);
            diagonal = row[j + 1];
            row[j + 1] = substituted.min(row[j] + 1).min(diagonal + 1);
        }
    }
    row[b.len()]
}

/// A document of a known kind, before its spec is read.
struct Raw {
    source: usize,
    document: usize,
    /// Unknown fields are errors, and paths start at `spec`.
    strict: bool,
    api_version: String,
    metadata: ObjectMeta,
    body: Value,
}

fn read_object<S: Spec>(raw: Raw, object: &ObjectRef) -> Result<Object<S>, Vec<Found>> {
    let spec: S = typed(raw.body, object, raw.strict)?;
    check(spec.validate(), object)?;
    Ok(Object {
        source: raw.source,
        document: raw.document,
        api_version: raw.api_version,
        metadata: raw.metadata,
        spec,
    })
}

/// Deserializes a body, reporting the path of a bad field. With `strict`
/// (Istio's kinds) every field the type does not know is an error too: in a
/// policy, a field Ambit ignored could be the one meant to restrict access.
fn typed<S: DeserializeOwned>(
    spec: Value,
    object: &ObjectRef,
    strict: bool,
) -> Result<S, Vec<Found>> {
    let root = if strict { "spec" } else { "" };
    let mut unknown = Vec::new();
    let mut track = serde_path_to_error::Track::new();
    let parsed = serde_ignored::deserialize(
        serde_path_to_error::Deserializer::new(spec, &mut track),
        |path| unknown.push(field_path(root, &path.to_string())),
    );
    let found =
        |path: String, message: String| (Some(object.clone()), path, message, Severity::Error);
    match parsed {
        Err(error) => Err(vec![found(
            field_path(root, &track.path().to_string()),
            error.to_string(),
        )]),
        Ok(_) if strict && !unknown.is_empty() => Err(unknown
            .into_iter()
            .map(|path| found(path, "unknown field".into()))
            .collect()),
        Ok(spec) => Ok(spec),
    }
}

fn check(issues: Vec<Issue>, object: &ObjectRef) -> Result<(), Vec<Found>> {
    if issues.is_empty() {
        return Ok(());
    }
    Err(issues
        .into_iter()
        .map(|issue| {
            (
                Some(object.clone()),
                issue.path,
                issue.message,
                Severity::Error,
            )
        })
        .collect())
}

/// `root` plus a path written `a.0.b` or `a[0].b`: `spec.a[0].b`.
fn field_path(root: &str, inner: &str) -> String {
    let mut path = String::from(root);
    for segment in inner.split('.').filter(|s| !s.is_empty() && *s != "?") {
        if segment.starts_with('[') || segment.bytes().all(|b| b.is_ascii_digit()) {
            let index = segment.trim_start_matches('[').trim_end_matches(']');
            path.push_str(&format!("[{index}]"));
        } else {
            if !path.is_empty() {
                path.push('.');
            }
            path.push_str(segment);
        }
    }
    path
}

#[cfg(test)]
mod tests;
