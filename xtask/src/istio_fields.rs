//! `cargo xtask istio-fields`: the field paths and enum values of Istio's
//! published CRD schemas, for the kinds Ambit reads, written to the
//! fixture `config/tests/fixtures/istio-fields.txt`. The test beside it
//! builds a document for every line and fails if Ambit refuses one, so
//! valid Istio YAML is never rejected for a field Ambit does not know.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use anyhow::{bail, Context};
use serde_json::Value;

use crate::Workspace;

/// Where the fixture lives in the workspace.
const FIXTURE: &str = "config/tests/fixtures/istio-fields.txt";

/// Istio's kinds that Ambit reads (the others are only warned about).
const KINDS: &[&str] = &[
    "VirtualService",
    "DestinationRule",
    "ServiceEntry",
    "Gateway",
    "AuthorizationPolicy",
    "PeerAuthentication",
];

pub fn write(workspace: &Workspace, crds: &Path) -> anyhow::Result<()> {
    let text =
        std::fs::read_to_string(crds).with_context(|| format!("reading {}", crds.display()))?;
    let documents: Vec<Value> = serde_saphyr::from_multiple(&text)
        .with_context(|| format!("reading {} as YAML", crds.display()))?;
    let mut out = format!(
        "# The fields and enum values of Istio's CRD schemas for the kinds Ambit reads.\n\
         # Written by `cargo xtask istio-fields --crds {}`; do not edit by hand.\n\
         # A section per kind (and the versions sharing one schema), then a line per leaf:\n\
         # its path (`[]` an array's item, `{{}}` a map's value) and its type, with an\n\
         # enum's values or a number's bounds; `required PATH FIELD...` names the fields\n\
         # an object at PATH must hold.\n",
        crds.file_name().unwrap_or_default().to_string_lossy()
    );
    for kind in KINDS {
        let crd = documents
            .iter()
            .find(|d| d["spec"]["names"]["kind"] == *kind)
            .with_context(|| format!("{} has no CRD for {kind}", crds.display()))?;
        let group = crd["spec"]["group"].as_str().context("a CRD's group")?;
        // Versions with the same schema share a section.
        let mut sections: Vec<(Vec<&str>, Vec<String>)> = Vec::new();
        for version in crd["spec"]["versions"].as_array().context("versions")? {
            let name = version["name"].as_str().context("a version's name")?;
            let spec = &version["schema"]["openAPIV3Schema"]["properties"]["spec"];
            let mut leaves = Vec::new();
            walk(spec, "spec", &mut leaves)?;
            match sections.iter_mut().find(|(_, l)| *l == leaves) {
                Some((versions, _)) => versions.push(name),
                None => sections.push((vec![name], leaves)),
            }
        }
        for (versions, leaves) in sections {
            writeln!(out, "\nkind {kind} {group} {}", versions.join(" "))?;
            for leaf in leaves {
                writeln!(out, "{leaf}")?;
            }
        }
    }
    let fixture = workspace.root.join(FIXTURE);
    std::fs::write(&fixture, out).with_context(|| format!("writing {}", fixture.display()))?;
    println!("wrote {}", fixture.display());
    Ok(())
}

/// Every leaf under `schema`, as `path type [details]`.
fn walk(schema: &Value, path: &str, leaves: &mut Vec<String>) -> anyhow::Result<()> {
    if schema["x-kubernetes-int-or-string"] == true {
        leaves.push(format!("{path} int-or-string"));
        return Ok(());
    }
    if let Some(values) = schema["enum"].as_array() {
        let values: Vec<&str> = values.iter().filter_map(Value::as_str).collect();
        leaves.push(format!("{path} enum {}", values.join(" ")));
        return Ok(());
    }
    let kind = schema["type"].as_str().unwrap_or_default();
    match kind {
        "object" => {
            if let Some(required) = schema["required"].as_array().filter(|r| !r.is_empty()) {
                let names: Vec<&str> = required.iter().filter_map(Value::as_str).collect();
                leaves.push(format!("required {path} {}", names.join(" ")));
            }
            if let Some(properties) = schema["properties"].as_object() {
                let sorted: BTreeMap<_, _> = properties.iter().collect();
                for (name, property) in sorted {
                    walk(property, &format!("{path}.{name}"), leaves)?;
                }
                Ok(())
            } else if schema["additionalProperties"].is_object() {
                walk(
                    &schema["additionalProperties"],
                    &format!("{path}{{}}"),
                    leaves,
                )
            } else if schema["x-kubernetes-preserve-unknown-fields"] == true {
                leaves.push(format!("{path} any"));
                Ok(())
            } else {
                bail!("{path}: an object with neither properties nor additionalProperties")
            }
        }
        "array" => walk(&schema["items"], &format!("{path}[]"), leaves),
        "string" => {
            let duration = schema["x-kubernetes-validations"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|v| v["rule"].as_str().is_some_and(|r| r.contains("duration(")));
            let kind = match (duration, schema["format"].as_str()) {
                (true, _) => "duration",
                (false, Some("byte")) => "bytes",
                (false, _) => "string",
            };
            leaves.push(format!("{path} {kind}"));
            Ok(())
        }
        "integer" | "number" => {
            let bound = |name: &str| schema[name].as_f64().map(|b| format!(" {name}={b}"));
            leaves.push(format!(
                "{path} {kind}{}{}",
                bound("minimum").unwrap_or_default(),
                bound("maximum").unwrap_or_default()
            ));
            Ok(())
        }
        "boolean" => {
            leaves.push(format!("{path} boolean"));
            Ok(())
        }
        other => bail!("{path}: a schema of type {other:?}"),
    }
}
