//! `ambit analyze`: reads manifests as the proxies would and reports every
//! problem with its file, object and field path.

use std::io::Read;
use std::path::Path;

use ambit_config::document::{
    manifest_files, parse_sources, ObjectRef, Problem, Resource, Severity,
};
use anyhow::Context;

/// Analyzes `inputs`; returns whether no error was found.
pub fn run(inputs: &[String]) -> anyhow::Result<bool> {
    let mut names = Vec::new();
    let mut texts = Vec::new();
    for input in inputs {
        for (name, text) in read_input(input)? {
            names.push(name);
            texts.push(text);
        }
    }
    let parsed = parse_sources(&texts.iter().map(String::as_str).collect::<Vec<_>>());
    let mut refused = left_out_by_the_waypoint(&parsed.resources);
    refused.extend(jwt_rules(&parsed.resources));
    for problem in parsed.problems.iter().chain(&refused) {
        println!("{}: {problem}", names[problem.source]);
    }
    let errors = parsed
        .problems
        .iter()
        .filter(|p| p.severity == Severity::Error)
        .count();
    let warnings = parsed.problems.len() - errors + refused.len();
    println!(
        "{} objects in {} files: {errors} errors, {warnings} warnings",
        parsed.resources.len() + rejected_objects(&parsed),
        names.len()
    );
    Ok(errors == 0)
}

/// The fields of valid VirtualServices and DestinationRules that the
/// waypoint leaves out: a warning each, since their author meant something
/// by them.
fn left_out_by_the_waypoint(resources: &[Resource]) -> Vec<Problem> {
    let mut found = Vec::new();
    for resource in resources {
        let (kind, source, document, metadata, namespace, fields) = match resource {
            Resource::VirtualService(object) => (
                "VirtualService",
                object.source,
                object.document,
                &object.metadata,
                object.namespace(),
                ambit_route::left_out_fields(&object.spec),
            ),
            Resource::DestinationRule(object) => (
                "DestinationRule",
                object.source,
                object.document,
                &object.metadata,
                object.namespace(),
                ambit_route::left_out_destination_fields(&object.spec),
            ),
            _ => continue,
        };
        found.extend(fields.into_iter().map(|(path, why)| Problem {
            source,
            document,
            object: Some(ObjectRef::new(kind, Some(namespace), &metadata.name)),
            path,
            message: why.to_string(),
            severity: Severity::Warning,
        }));
    }
    found
}

/// The AuthorizationPolicy rules on request principals or JWT claims:
/// a warning each, since without JWT validation they fail closed.
fn jwt_rules(resources: &[Resource]) -> Vec<Problem> {
    let mut found = Vec::new();
    for resource in resources {
        let Resource::AuthorizationPolicy(object) = resource else {
            continue;
        };
        for (r, rule) in object.spec.rules.iter().enumerate() {
            let principals = rule.from.iter().enumerate().filter(|(_, from)| {
                !from.source.request_principals.is_empty()
                    || !from.source.not_request_principals.is_empty()
            });
            let claims = rule
                .when
                .iter()
                .enumerate()
                .filter(|(_, condition)| condition.key.starts_with("request.auth."));
            let paths = principals
                .map(|(f, _)| format!("spec.rules[{r}].from[{f}].source"))
                .chain(claims.map(|(w, _)| format!("spec.rules[{r}].when[{w}]")));
            found.extend(paths.map(|path| Problem {
                source: object.source,
                document: object.document,
                object: Some(ObjectRef::new(
                    "AuthorizationPolicy",
                    Some(object.namespace()),
                    &object.metadata.name,
                )),
                path,
                message: ambit_config::document::JWT_NOT_VALIDATED.to_string(),
                severity: Severity::Warning,
            }));
        }
    }
    found
}

/// Documents that were rejected (each counted once).
fn rejected_objects(parsed: &ambit_config::document::Parsed) -> usize {
    let mut rejected: Vec<(usize, usize)> = parsed
        .problems
        .iter()
        .filter(|p| p.severity == Severity::Error)
        .map(|p| (p.source, p.document))
        .collect();
    rejected.sort_unstable();
    rejected.dedup();
    rejected.len()
}

/// The (name, text) of every manifest an input names.
fn read_input(input: &str) -> anyhow::Result<Vec<(String, String)>> {
    if input == "-" {
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .context("reading standard input")?;
        return Ok(vec![("<stdin>".to_string(), text)]);
    }
    let path = Path::new(input);
    let files = if path.is_dir() {
        manifest_files(path).with_context(|| format!("listing {}", path.display()))?
    } else {
        vec![path.to_path_buf()]
    };
    files
        .into_iter()
        .map(|file| {
            let text = std::fs::read_to_string(&file)
                .with_context(|| format!("reading {}", file.display()))?;
            Ok((file.display().to_string(), text))
        })
        .collect()
}
