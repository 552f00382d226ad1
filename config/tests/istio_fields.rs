//! Every field and enum value of Istio's published CRD schemas (1.32), for
//! the kinds Ambit reads, is accepted: valid Istio YAML is never refused.
//! The fixture is derived from Istio's `crd-all.gen.yaml` by
//! `cargo xtask istio-fields`; each line becomes a document holding that
//! one field, read as the API server would hand it over.

use ambit_config::document::{parse_object, Severity};
use serde_json::{json, Value};

const FIXTURE: &str = include_str!("fixtures/istio-fields.txt");

/// One kind's schema as the fixture gives it.
struct Kind<'a> {
    name: &'a str,
    api_versions: Vec<String>,
    /// Each leaf's path, type and details, in order.
    leaves: Vec<(&'a str, &'a str, Vec<&'a str>)>,
    /// Objects' paths and the fields they must hold.
    required: Vec<(&'a str, Vec<&'a str>)>,
}

fn kinds() -> Vec<Kind<'static>> {
    let mut kinds: Vec<Kind<'static>> = Vec::new();
    for line in FIXTURE.lines() {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let words: Vec<&str> = line.split(' ').collect();
        match &words[..] {
            ["kind", name, group, versions @ ..] => kinds.push(Kind {
                name,
                api_versions: versions.iter().map(|v| format!("{group}/{v}")).collect(),
                leaves: Vec::new(),
                required: Vec::new(),
            }),
            ["required", path, fields @ ..] => {
                let kind = kinds.last_mut().expect("a kind line first");
                kind.required.push((path, fields.to_vec()));
            }
            [path, kind_of_value, details @ ..] => {
                let kind = kinds.last_mut().expect("a kind line first");
                kind.leaves.push((path, kind_of_value, details.to_vec()));
            }
            _ => panic!("a line is `path type …`: {line:?}"),
        }
    }
    kinds
}

impl Kind<'_> {
    /// The document of this kind holding `value` at the leaf `path`, with
    /// every object on the way holding what its schema requires; and the
    /// path as Ambit names it in its problems.
    fn document(&self, api_version: &str, path: &str, value: Value) -> (Value, String) {
        let mut object = json!({});
        put(&mut object, path, value);
        // Requirements met can bring in objects with requirements of their own.
        loop {
            let mut added = false;
            for (parent, fields) in &self.required {
                if present(&object, parent).is_none() {
                    continue;
                }
                for field in fields {
                    let child = format!("{parent}.{field}");
                    if present(&object, &child).is_some() {
                        continue;
                    }
                    put(&mut object, &child, self.sample_at(&child));
                    added = true;
                }
            }
            if !added {
                break;
            }
        }
        object["apiVersion"] = json!(api_version);
        object["kind"] = json!(self.name);
        object["metadata"] = json!({ "name": "fields", "namespace": "shop" });
        (object, concrete(path))
    }

    /// A value for the field at `path`: a leaf's first sample, a list of
    /// one, or an object.
    fn sample_at(&self, path: &str) -> Value {
        let leaf = |path: &str| self.leaves.iter().find(|(p, _, _)| *p == path);
        if let Some((path, kind_of_value, details)) = leaf(path) {
            return samples(path, kind_of_value, details).remove(0);
        }
        let item = format!("{path}[]");
        match leaf(&item) {
            Some((item, kind_of_value, details)) => {
                json!([samples(item, kind_of_value, details).remove(0)])
            }
            None if self.leaves.iter().any(|(p, _, _)| p.starts_with(&item)) => json!([{}]),
            None => json!({}),
        }
    }
}

/// A fixture path's parts: `spec`, `.name`, `[]`, `{}`.
fn segments(path: &str) -> Vec<&str> {
    let mut segments = Vec::new();
    let mut rest = path;
    while !rest.is_empty() {
        let end = rest[1..]
            .find(['.', '[', '{'])
            .map_or(rest.len(), |i| i + 1);
        segments.push(&rest[..end]);
        rest = &rest[end..];
    }
    segments
}

/// The path as Ambit names it: the first item, the key `k`.
fn concrete(path: &str) -> String {
    segments(path)
        .iter()
        .map(|segment| match *segment {
            "[]" => "[0]",
            "{}" => ".k",
            name => name,
        })
        .collect()
}

/// The value at `path` in `object`, if it is there.
fn present<'v>(object: &'v Value, path: &str) -> Option<&'v Value> {
    segments(path)
        .iter()
        .try_fold(object, |value, segment| match *segment {
            "[]" => value.get(0),
            "{}" => value.get("k"),
            name => value.get(name.trim_start_matches('.')),
        })
}

/// Puts `value` at `path` in `object`, making what is on the way.
fn put(object: &mut Value, path: &str, value: Value) {
    let segments = segments(path);
    let mut here = object;
    for (i, segment) in segments.iter().enumerate() {
        let last = i + 1 == segments.len();
        let next = |value: Value| if last { value } else { Value::Null };
        here = match *segment {
            "[]" => {
                if !here.is_array() {
                    *here = json!([]);
                }
                let items = here.as_array_mut().expect("an array");
                if items.is_empty() {
                    items.push(Value::Null);
                }
                &mut items[0]
            }
            name => {
                let key = if name == "{}" {
                    "k"
                } else {
                    name.trim_start_matches('.')
                };
                if !here.is_object() {
                    *here = json!({});
                }
                let fields = here.as_object_mut().expect("an object");
                fields.entry(key).or_insert(Value::Null)
            }
        };
        if last {
            *here = next(value);
            return;
        }
    }
}

/// Values a user would write for the field: each of an enum's, else one
/// that is valid for what the field holds.
fn samples(path: &str, kind_of_value: &str, details: &[&str]) -> Vec<Value> {
    let name = path
        .rsplit(['.', '[', '{'])
        .find(|s| !s.is_empty() && !s.ends_with([']', '}']));
    let name = name.unwrap_or_default();
    match kind_of_value {
        "enum" => details.iter().map(|v| json!(v)).collect(),
        "duration" => vec![json!("1.5s")],
        "bytes" => vec![json!("aGVsbG8=")],
        "boolean" => vec![json!(true)],
        "integer" | "number" | "int-or-string" => vec![json!(number_for(name))],
        "any" => vec![json!({"a": "b"})],
        "string" if name == "protocol" => ISTIO_PROTOCOLS.iter().map(|p| json!(p)).collect(),
        // Durations whose schema does not say so.
        "string"
            if ["Timeout", "Period", "Interval"]
                .iter()
                .any(|end| name.ends_with(end))
                || name == "ttl" =>
        {
            vec![json!("1.5s")]
        }
        "string" => vec![json!(string_for(path, name))],
        other => panic!("{path}: unknown type {other} in the fixture"),
    }
}

/// The protocols Istio names for a port (its `protocol` package).
const ISTIO_PROTOCOLS: &[&str] = &[
    "HTTP",
    "HTTPS",
    "GRPC",
    "GRPC-Web",
    "HTTP2",
    "HTTP_PROXY",
    "Mongo",
    "MySQL",
    "Redis",
    "TCP",
    "TLS",
    "UDP",
];

fn number_for(name: &str) -> u32 {
    match name {
        "number" | "port" | "targetPort" | "containerPort" => 8080,
        "httpStatus" | "status" => 503,
        "redirectCode" => 301,
        "value" => 50,
        _ => 3,
    }
}

fn string_for(path: &str, name: &str) -> String {
    let value = match name {
        "ipBlocks" | "notIpBlocks" | "remoteIpBlocks" | "notRemoteIpBlocks" | "addresses"
        | "destinationSubnets" | "sourceSubnet" => "10.1.0.0/16",
        "address" | "bind" => "10.1.2.3",
        "ports" | "notPorts" => "8080",
        "key" => "request.headers[x-user]",
        "grpcStatus" => "UNAVAILABLE",
        "http2Error" => "REFUSED_STREAM",
        "retryOn" => "5xx,reset",
        "mode" if path.contains(".tls") => "SIMPLE",
        "uri" | "exact" | "prefix" | "path" if path.contains("uri") => "/api",
        "regex" | "match" => "^/v[0-9]+",
        "scheme" => "https",
        "methods" | "notMethods" => "GET",
        "paths" | "notPaths" => "/api/*",
        "principals" | "notPrincipals" => "cluster.local/ns/shop/sa/cart",
        "trustDomains" | "notTrustDomains" => "cluster.local",
        "serviceAccounts" | "notServiceAccounts" => "shop/cart",
        "host" | "hosts" | "notHosts" | "authority" => "reviews.shop.svc.cluster.local",
        _ => "x",
    };
    value.into()
}

/// Serde's words for a document it could not read as Ambit's types.
const UNREADABLE: [&str; 4] = [
    "unknown field",
    "unknown variant",
    "missing field",
    "invalid type",
];

#[test]
fn every_field_and_enum_value_of_istios_schema_is_accepted() {
    let kinds = kinds();
    let leaves: usize = kinds.iter().map(|kind| kind.leaves.len()).sum();
    assert!(leaves > 400, "the fixture lists Istio's fields");
    let mut refused = Vec::new();
    let mut read = 0;
    for kind in &kinds {
        for (path, kind_of_value, details) in &kind.leaves {
            for sample in samples(path, kind_of_value, details) {
                for api_version in &kind.api_versions {
                    let (object, concrete) = kind.document(api_version, path, sample.clone());
                    read += 1;
                    let Err(problems) = parse_object(object) else {
                        continue;
                    };
                    // A rule tying this field to others left out says
                    // nothing about it; a document that cannot be read as
                    // Ambit's types, or a problem with the field, does.
                    refused.extend(
                        problems
                            .iter()
                            .filter(|p| p.severity == Severity::Error)
                            .filter(|p| {
                                p.path.starts_with(&concrete)
                                    || UNREADABLE.iter().any(|words| p.message.contains(words))
                            })
                            .map(|p| {
                                format!("{api_version} {} {concrete} = {sample}: {p}", kind.name)
                            }),
                    );
                }
            }
        }
    }
    refused.dedup();
    assert!(read > 1000, "every line was tried");
    assert!(
        refused.is_empty(),
        "{} refusals of valid Istio YAML:\n{}",
        refused.len(),
        refused.join("\n")
    );
}
