//! Every field and enum value of Istio's published CRD schemas (1.32), for
//! the kinds Ambit reads, is accepted: valid Istio YAML is never refused.
//! The fixture is derived from Istio's `crd-all.gen.yaml` by
//! `cargo xtask istio-fields`; each line becomes a document holding that
//! one field, read as the API server would hand it over.

use ambit_config::document::{parse_object, Severity};
use serde_json::{json, Value};

const FIXTURE: &str = include_str!("fixtures/istio-fields.txt");

/// One field of one kind, with the versions that serve it.
struct Leaf<'a> {
    kind: &'a str,
    api_versions: Vec<String>,
    path: &'a str,
    samples: Vec<Value>,
}

fn leaves() -> Vec<Leaf<'static>> {
    let mut leaves = Vec::new();
    let mut section: Option<(&str, Vec<String>)> = None;
    for line in FIXTURE.lines() {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let words: Vec<&str> = line.split(' ').collect();
        if let ["kind", kind, group, versions @ ..] = &words[..] {
            let api_versions = versions.iter().map(|v| format!("{group}/{v}")).collect();
            section = Some((kind, api_versions));
            continue;
        }
        let (kind, api_versions) = section.clone().expect("a leaf after a kind line");
        let [path, kind_of_value, details @ ..] = &words[..] else {
            panic!("a leaf line is `path type …`: {line:?}");
        };
        leaves.push(Leaf {
            kind,
            api_versions,
            path,
            samples: samples(path, kind_of_value, details),
        });
    }
    leaves
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
        "string" if name.ends_with("Timeout") || name == "ttl" => vec![json!("1.5s")],
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

/// The document holding `value` at `path`: one item per array, key `k` per
/// map, and the path as Ambit names it in its problems.
fn document(leaf: &Leaf<'_>, api_version: &str, value: Value) -> (Value, String) {
    let mut segments = Vec::new();
    let mut rest = leaf.path;
    while !rest.is_empty() {
        let end = rest[1..]
            .find(['.', '[', '{'])
            .map_or(rest.len(), |i| i + 1);
        segments.push(&rest[..end]);
        rest = &rest[end..];
    }
    let mut nested = value;
    for segment in segments.iter().rev() {
        nested = match *segment {
            "[]" => json!([nested]),
            "{}" => json!({ "k": nested }),
            name => json!({ name.trim_start_matches('.'): nested }),
        };
    }
    let concrete = segments.iter().fold(String::new(), |mut path, segment| {
        match *segment {
            "[]" => path.push_str("[0]"),
            "{}" => path.push_str(".k"),
            name => path.push_str(name),
        }
        path
    });
    let mut object = nested;
    object["apiVersion"] = json!(api_version);
    object["kind"] = json!(leaf.kind);
    object["metadata"] = json!({ "name": "fields", "namespace": "shop" });
    (object, concrete)
}

#[test]
fn every_field_and_enum_value_of_istios_schema_is_accepted() {
    let leaves = leaves();
    assert!(leaves.len() > 400, "the fixture lists Istio's fields");
    let mut refused = Vec::new();
    let mut read = 0;
    for leaf in &leaves {
        for api_version in &leaf.api_versions {
            for sample in &leaf.samples {
                let (object, concrete) = document(leaf, api_version, sample.clone());
                let Err(problems) = parse_object(object) else {
                    read += 1;
                    continue;
                };
                // Problems elsewhere (a sibling a real object would hold)
                // say nothing about this field.
                refused.extend(
                    problems
                        .iter()
                        .filter(|p| p.severity == Severity::Error)
                        .filter(|p| {
                            p.path.starts_with(&concrete)
                                || p.message.contains("unknown field")
                                || p.message.contains("unknown variant")
                        })
                        .map(|p| format!("{api_version} {} {concrete} = {sample}: {p}", leaf.kind)),
                );
                read += 1;
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
