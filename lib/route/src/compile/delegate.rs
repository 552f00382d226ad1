//! VirtualService delegation, as Istio merges it: a root route that names a
//! `delegate` stands for the delegate VirtualService's routes, each with
//! the root's match conditions folded into its own. A delegate match must
//! narrow a root match (a prefix within the root's prefix, the same exact
//! value, no other header value); a delegate route whose every match
//! widens the root's is dropped, as Istio drops it.

use std::collections::BTreeMap;

use ambit_config::api::networking::{HttpMatchRequest, HttpRoute};
use ambit_config::api::types::StringMatch;

/// The delegate's `routes` as they stand in for `root`.
pub fn merge_routes(root: &HttpRoute, routes: &[HttpRoute]) -> Vec<HttpRoute> {
    routes
        .iter()
        .filter_map(|route| merge_route(root, route))
        .collect()
}

fn merge_route(root: &HttpRoute, delegate: &HttpRoute) -> Option<HttpRoute> {
    let mut merged = delegate.clone();
    merged.matches = merge_matches(&root.matches, &delegate.matches)?;
    merged.name = joined_name(root.name.as_deref(), delegate.name.as_deref());
    // What the delegate leaves unset, the root gives.
    macro_rules! inherit {
        ($($field:ident),*) => {$(
            if merged.$field.is_none() {
                merged.$field = root.$field.clone();
            }
        )*};
    }
    inherit!(
        rewrite,
        direct_response,
        timeout,
        retries,
        fault,
        mirror,
        mirror_percent,
        mirror_percentage,
        cors_policy,
        headers
    );
    if merged.mirrors.is_empty() {
        merged.mirrors = root.mirrors.clone();
    }
    Some(merged)
}

/// `root.delegate` when both are named, else whichever is.
fn joined_name(root: Option<&str>, delegate: Option<&str>) -> Option<String> {
    match (root, delegate) {
        (Some(root), Some(delegate)) => Some(format!("{root}-{delegate}")),
        (root, delegate) => delegate.or(root).map(str::to_string),
    }
}

/// Every delegate match with every root match it narrows; none when a
/// delegate match narrows no root match (the route is dropped).
fn merge_matches(
    root: &[HttpMatchRequest],
    delegate: &[HttpMatchRequest],
) -> Option<Vec<HttpMatchRequest>> {
    if root.is_empty() {
        return Some(delegate.to_vec());
    }
    if delegate.is_empty() {
        return Some(root.to_vec());
    }
    let mut merged = Vec::new();
    for leaf in delegate {
        let narrowed: Vec<HttpMatchRequest> = root
            .iter()
            .filter(|root| narrows(root, leaf))
            .map(|root| merge_match(root, leaf))
            .collect();
        if narrowed.is_empty() {
            return None;
        }
        merged.extend(narrowed);
    }
    Some(merged)
}

fn merge_match(root: &HttpMatchRequest, leaf: &HttpMatchRequest) -> HttpMatchRequest {
    let mut merged = leaf.clone();
    merged.name = joined_name(root.name.as_deref(), leaf.name.as_deref());
    for (field, from_root) in [
        (&mut merged.uri, &root.uri),
        (&mut merged.scheme, &root.scheme),
        (&mut merged.method, &root.method),
        (&mut merged.authority, &root.authority),
    ] {
        if field.is_none() {
            field.clone_from(from_root);
        }
    }
    merged.headers = union(&root.headers, &leaf.headers);
    merged.without_headers = union(&root.without_headers, &leaf.without_headers);
    merged.query_params = union(&root.query_params, &leaf.query_params);
    merged.source_labels = union(&root.source_labels, &leaf.source_labels);
    merged.port = leaf.port.or(root.port);
    if merged.source_namespace.is_none() {
        merged.source_namespace.clone_from(&root.source_namespace);
    }
    if merged.gateways.is_empty() {
        merged.gateways.clone_from(&root.gateways);
    }
    if merged.stat_prefix.is_none() {
        merged.stat_prefix.clone_from(&root.stat_prefix);
    }
    merged
}

/// The root's entries, with the leaf's over them.
fn union<V: Clone>(root: &BTreeMap<String, V>, leaf: &BTreeMap<String, V>) -> BTreeMap<String, V> {
    let mut merged = root.clone();
    merged.extend(leaf.iter().map(|(key, value)| (key.clone(), value.clone())));
    merged
}

/// Whether `leaf` only narrows `root`: it asks nothing `root` rules out.
fn narrows(root: &HttpMatchRequest, leaf: &HttpMatchRequest) -> bool {
    let strings = [
        (&root.uri, &leaf.uri),
        (&root.scheme, &leaf.scheme),
        (&root.method, &leaf.method),
        (&root.authority, &leaf.authority),
    ];
    let maps = [
        (&root.headers, &leaf.headers),
        (&root.without_headers, &leaf.without_headers),
        (&root.query_params, &leaf.query_params),
    ];
    strings
        .into_iter()
        .all(|(root, leaf)| within(root.as_ref(), leaf.as_ref()))
        && maps.into_iter().all(|(root, leaf)| {
            leaf.iter()
                .all(|(key, leaf)| within(root.get(key), Some(leaf)))
        })
        && root.ignore_uri_case == leaf.ignore_uri_case
        && !matches!((root.port, leaf.port), (Some(r), Some(l)) if r != l)
        && root
            .source_namespace
            .as_ref()
            .is_none_or(|namespace| leaf.source_namespace.as_ref() == Some(namespace))
        && leaf
            .source_labels
            .iter()
            .all(|(key, value)| root.source_labels.get(key).is_none_or(|v| v == value))
        && (root.gateways.is_empty()
            || leaf.gateways.is_empty()
            || leaf.gateways.iter().all(|g| root.gateways.contains(g)))
}

/// Whether the strings `leaf` matches are among those `root` matches: a
/// regex on either side admits no other condition on the other; an exact
/// root value only the same value; a prefix only values under it.
fn within(root: Option<&StringMatch>, leaf: Option<&StringMatch>) -> bool {
    let (Some(root), Some(leaf)) = (root, leaf) else {
        return true;
    };
    match (root, leaf) {
        (StringMatch { regex: Some(_), .. }, _) | (_, StringMatch { regex: Some(_), .. }) => false,
        (
            StringMatch {
                exact: Some(exact), ..
            },
            leaf,
        ) => leaf.prefix.is_none() && leaf.exact.as_ref() == Some(exact),
        (
            StringMatch {
                prefix: Some(prefix),
                ..
            },
            leaf,
        ) => leaf
            .prefix
            .as_ref()
            .or(leaf.exact.as_ref())
            .is_some_and(|value| value.starts_with(prefix.as_str())),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    fn route(route: Value) -> HttpRoute {
        serde_json::from_value(route).expect("an HTTPRoute")
    }

    fn to(subset: &str) -> Value {
        json!([{ "destination": { "host": "reviews", "subset": subset } }])
    }

    #[test]
    fn delegate_routes_take_the_roots_conditions_and_settings() {
        let root = route(json!({
            "name": "reviews",
            "match": [{ "name": "api", "uri": { "prefix": "/api" }, "headers": { "tenant": { "exact": "a" } } }],
            "timeout": "5s",
        }));
        let delegate = [
            route(
                json!({ "name": "v2", "match": [{ "uri": { "prefix": "/api/v2" } }], "route": to("v2") }),
            ),
            route(json!({
                "match": [{ "uri": { "exact": "/api/v1" }, "headers": { "end-user": { "exact": "jason" } } }],
                "timeout": "1s",
                "route": to("v1"),
            })),
            // Widens the root's prefix: dropped.
            route(json!({ "match": [{ "uri": { "prefix": "/other" } }], "route": to("v1") })),
            route(json!({ "route": to("v1") })),
        ];
        let merged = merge_routes(&root, &delegate);
        assert_eq!(merged.len(), 3);
        assert_eq!(merged[0].name.as_deref(), Some("reviews-v2"));
        let first = &merged[0].matches[0];
        assert_eq!(first.name.as_deref(), Some("api"));
        assert_eq!(
            first.uri.as_ref().and_then(|u| u.prefix.as_deref()),
            Some("/api/v2")
        );
        assert_eq!(first.headers.keys().collect::<Vec<_>>(), ["tenant"]);
        assert_eq!(merged[0].timeout, root.timeout, "inherited");
        assert_eq!(merged[0].route[0].destination.subset.as_deref(), Some("v2"));
        let second = &merged[1].matches[0];
        assert_eq!(
            second.headers.keys().collect::<Vec<_>>(),
            ["end-user", "tenant"]
        );
        assert_ne!(merged[1].timeout, root.timeout, "the delegate's own");
        // A delegate route without a match takes the root's.
        assert_eq!(merged[2].matches, root.matches);
    }

    #[test]
    fn a_delegate_match_may_only_narrow_the_roots() {
        let string = |kind: &str, value: &str| -> StringMatch {
            serde_json::from_value(json!({ kind: value })).expect("a StringMatch")
        };
        let cases = [
            (("prefix", "/a"), ("prefix", "/a/b"), true),
            (("prefix", "/a/b"), ("prefix", "/a"), false),
            (("prefix", "/a"), ("exact", "/a/x"), true),
            (("exact", "/a"), ("exact", "/a"), true),
            (("exact", "/a"), ("exact", "/b"), false),
            (("exact", "/a"), ("prefix", "/a"), false),
            (("regex", "/a.*"), ("exact", "/a"), false),
            (("prefix", "/a"), ("regex", "/a.*"), false),
        ];
        for ((root_kind, root), (leaf_kind, leaf), expected) in cases {
            let (root, leaf) = (string(root_kind, root), string(leaf_kind, leaf));
            assert_eq!(
                within(Some(&root), Some(&leaf)),
                expected,
                "{root:?} then {leaf:?}"
            );
        }
        let matched = |value: Value| -> HttpMatchRequest { serde_json::from_value(value).unwrap() };
        assert!(!narrows(
            &matched(json!({ "port": 80 })),
            &matched(json!({ "port": 81 }))
        ));
        assert!(!narrows(
            &matched(json!({ "sourceNamespace": "a" })),
            &matched(json!({ "sourceNamespace": "b" }))
        ));
        assert!(narrows(
            &matched(json!({ "sourceLabels": { "app": "a" } })),
            &matched(json!({ "sourceLabels": { "app": "a", "version": "v1" } }))
        ));
        assert!(!narrows(
            &matched(json!({ "gateways": ["mesh"] })),
            &matched(json!({ "gateways": ["edge"] }))
        ));
    }
}
