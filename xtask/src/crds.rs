//! `cargo xtask crds`: CustomResourceDefinitions for the Istio kinds Ambit
//! reads, generated from Ambit's own types (`ambit_config::api`), for
//! clusters without Istio's: the same groups, kinds, plurals and served
//! versions as Istio's, with structural schemas that take everything Ambit
//! takes (and prune what it does not read). Written into the chart's
//! `crds/`, which Helm installs only where no CRD of that name exists.

use ambit_config::api::networking::{
    DestinationRuleSpec, GatewaySpec, ServiceEntrySpec, VirtualServiceSpec,
};
use ambit_config::api::security::{AuthorizationPolicySpec, PeerAuthenticationSpec};
use ambit_config::document::{plural, KINDS};
use anyhow::Context;
use schemars::gen::SchemaSettings;
use serde_json::{json, Map, Value};

use crate::Workspace;

/// Where the chart keeps them.
pub const CRDS: &str = "deploy/charts/ambit/crds/istio.yaml";

pub fn write(workspace: &Workspace) -> anyhow::Result<()> {
    let path = workspace.root.join(CRDS);
    std::fs::write(&path, render()?).with_context(|| format!("writing {}", path.display()))?;
    println!("wrote {CRDS}");
    Ok(())
}

/// Fails when the chart's CRDs are not what the types make now.
pub fn check(workspace: &Workspace) -> anyhow::Result<()> {
    let path = workspace.root.join(CRDS);
    let held = std::fs::read_to_string(&path).unwrap_or_default();
    anyhow::ensure!(
        held == render()?,
        "{CRDS} is not what Ambit's types make: run `cargo xtask crds`"
    );
    Ok(())
}

/// Every CRD, as one multi-document YAML file.
pub fn render() -> anyhow::Result<String> {
    let mut text = String::from(
        "# Istio's kinds as Ambit reads them, generated from Ambit's types by\n\
         # `cargo xtask crds` (do not edit). Helm installs a CRD only where none\n\
         # of its name exists: beside Istio's own, these are skipped.\n",
    );
    for (group, kind, versions) in KINDS
        .iter()
        .filter(|(group, _, _)| group.ends_with("istio.io"))
    {
        let spec = spec_schema(kind).with_context(|| format!("no spec type for {kind}"))?;
        text.push_str("---\n");
        text.push_str(&serde_saphyr::to_string(&crd(group, kind, versions, spec))?);
    }
    Ok(text)
}

/// The spec schema of `kind`, made structural.
fn spec_schema(kind: &str) -> Option<Value> {
    let settings = SchemaSettings::openapi3().with(|s| s.inline_subschemas = true);
    let generator = settings.into_generator();
    let root = match kind {
        "VirtualService" => generator.into_root_schema_for::<VirtualServiceSpec>(),
        "DestinationRule" => generator.into_root_schema_for::<DestinationRuleSpec>(),
        "ServiceEntry" => generator.into_root_schema_for::<ServiceEntrySpec>(),
        "Gateway" => generator.into_root_schema_for::<GatewaySpec>(),
        "AuthorizationPolicy" => generator.into_root_schema_for::<AuthorizationPolicySpec>(),
        "PeerAuthentication" => generator.into_root_schema_for::<PeerAuthenticationSpec>(),
        _ => return None,
    };
    let schema = serde_json::to_value(root.schema).ok()?;
    Some(structural(schema))
}

fn crd(group: &str, kind: &str, versions: &[&str], spec: Value) -> Value {
    let plural = plural(kind);
    let schema = json!({
        "type": "object",
        "properties": {
            "spec": spec,
            // Istio's controllers write status; Ambit never reads it.
            "status": { "type": "object", "x-kubernetes-preserve-unknown-fields": true },
        },
    });
    let versions: Vec<Value> = versions
        .iter()
        .enumerate()
        .map(|(i, version)| {
            json!({
                "name": version,
                "served": true,
                // v1 is stored, as in Istio's CRDs.
                "storage": i == 0,
                "schema": { "openAPIV3Schema": schema },
                "subresources": { "status": {} },
            })
        })
        .collect();
    json!({
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": format!("{plural}.{group}"),
            "labels": { "app.kubernetes.io/part-of": "ambit" },
        },
        "spec": {
            "group": group,
            "names": {
                "kind": kind,
                "listKind": format!("{kind}List"),
                "plural": plural,
                "singular": kind.to_ascii_lowercase(),
                "categories": [group.split('.').next().unwrap_or(group), "istio-io"],
            },
            "scope": "Namespaced",
            "versions": versions,
        },
    })
}

/// A schema as Kubernetes takes it (a structural schema): every node
/// typed, no `$ref`, `oneOf` of object variants (Rust enums with data, as
/// Istio's `oneof` fields) merged into one object with all their fields,
/// `nullable` rather than null types, and none of what Kubernetes refuses
/// (`additionalProperties: false` beside `properties`, defaults, formats it
/// does not know, titles).
fn structural(schema: Value) -> Value {
    let Value::Object(mut node) = schema else {
        // `true` (anything): a field whose value Ambit keeps as it is.
        return json!({ "x-kubernetes-preserve-unknown-fields": true });
    };
    for key in [
        "$schema",
        "title",
        "definitions",
        "default",
        "examples",
        "readOnly",
    ] {
        node.remove(key);
    }
    if let Some(Value::String(format)) = node.get("format") {
        if !["int32", "int64", "float", "double"].contains(&format.as_str()) {
            let integer = format.starts_with("int") || format.starts_with("uint");
            node.remove("format");
            if integer && node.get("type") == Some(&json!("integer")) {
                node.insert("format".into(), json!("int64"));
            }
        }
    }
    // `allOf` of one schema (an Option of a struct): that schema.
    if let Some(Value::Array(all)) = node.remove("allOf") {
        for part in all {
            if let Value::Object(part) = structural(part) {
                merge(&mut node, part);
            }
        }
    }
    for key in ["oneOf", "anyOf"] {
        if let Some(Value::Array(variants)) = node.remove(key) {
            for variant in variants {
                if let Value::Object(variant) = structural(variant) {
                    merge(&mut node, variant);
                }
            }
        }
    }
    if let Some(Value::Object(properties)) = node.remove("properties") {
        let properties: Map<String, Value> = properties
            .into_iter()
            .map(|(name, schema)| (name, structural(schema)))
            .collect();
        node.insert("properties".into(), Value::Object(properties));
        node.remove("additionalProperties");
        node.remove("required");
    }
    match node.remove("additionalProperties") {
        Some(Value::Bool(false)) | None => {}
        Some(other) => {
            node.insert("additionalProperties".into(), structural(other));
        }
    }
    if let Some(items) = node.remove("items") {
        node.insert("items".into(), structural(items));
    }
    // A null is no member of an enum: Kubernetes would refuse the pair.
    if node.contains_key("enum") {
        node.remove("nullable");
    }
    if !node.contains_key("type") {
        let typed = if node.contains_key("properties") || node.contains_key("additionalProperties")
        {
            Some("object")
        } else if node.contains_key("items") {
            Some("array")
        } else if node
            .get("enum")
            .is_some_and(|e| e.as_array().is_some_and(|e| e.iter().all(Value::is_string)))
        {
            Some("string")
        } else {
            None
        };
        match typed {
            Some(typed) => {
                node.insert("type".into(), json!(typed));
            }
            None => {
                node.insert("x-kubernetes-preserve-unknown-fields".into(), json!(true));
            }
        }
    }
    Value::Object(node)
}

/// Adds `other`'s fields to `node`: properties joined, the rest kept where
/// `node` has none (a unit variant's `enum` of names is dropped: the
/// variants with data make the node an object).
fn merge(node: &mut Map<String, Value>, other: Map<String, Value>) {
    for (key, value) in other {
        match (node.get_mut(&key), value) {
            (Some(Value::Object(held)), Value::Object(more)) if key == "properties" => {
                held.extend(more);
            }
            (Some(_), _) => {}
            (None, value) => {
                node.insert(key, value);
            }
        }
    }
    if node.get("type") == Some(&json!("object")) {
        node.remove("enum");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_charts_crds_are_what_the_types_make() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("..")
            .join(CRDS);
        let held = std::fs::read_to_string(&path).unwrap();
        assert!(
            held == render().unwrap(),
            "{CRDS} is out of date: run `cargo xtask crds`"
        );
    }

    #[test]
    fn each_istio_kind_gets_a_crd_at_every_version_istio_serves() {
        let text = render().unwrap();
        let crds: Vec<Value> = serde_saphyr::from_multiple(&text).unwrap();
        let served: Vec<(String, Vec<String>)> = crds
            .iter()
            .map(|crd| {
                let versions = crd["spec"]["versions"].as_array().unwrap();
                (
                    crd["metadata"]["name"].as_str().unwrap().to_string(),
                    versions
                        .iter()
                        .map(|v| v["name"].as_str().unwrap().to_string())
                        .collect(),
                )
            })
            .collect();
        let networking = ["v1", "v1beta1", "v1alpha3"].map(String::from).to_vec();
        let security = ["v1", "v1beta1"].map(String::from).to_vec();
        assert_eq!(
            served,
            [
                (
                    "virtualservices.networking.istio.io".to_string(),
                    networking.clone()
                ),
                (
                    "serviceentries.networking.istio.io".to_string(),
                    networking.clone()
                ),
                (
                    "gateways.networking.istio.io".to_string(),
                    networking.clone()
                ),
                (
                    "destinationrules.networking.istio.io".to_string(),
                    networking
                ),
                (
                    "authorizationpolicies.security.istio.io".to_string(),
                    security.clone()
                ),
                (
                    "peerauthentications.security.istio.io".to_string(),
                    security
                ),
            ]
        );
    }
}
