//! Istio's `HTTPMatchRequest` over a request's head and its caller, with
//! Envoy's semantics for what Istio tells it: the URI is matched without
//! its query string, a regex must match the whole value (RE2), header
//! names are case-insensitive, and within one match every condition must
//! hold while a route's matches are alternatives.

use std::collections::BTreeMap;

use ambit_config::api::types::{StringMatch, MAX_REGEX_SIZE};
use http::request::Parts;
use http::HeaderName;
use regex::Regex;
use serde::Serialize;

/// Who sends a request, as the waypoint knows it: the calling workload
/// found by its address (Istio's own waypoint drops `sourceLabels` and
/// `sourceNamespace`; Ambit honours them).
#[derive(Debug, Clone, Copy, Default)]
pub struct Caller<'a> {
    pub namespace: Option<&'a str>,
    pub labels: Option<&'a BTreeMap<String, String>>,
}

/// A string condition, compiled.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum Matcher {
    Exact(String),
    Prefix(String),
    Regex(#[serde(serialize_with = "as_pattern")] Regex),
    /// `{}` in headers and query parameters: only that it is there.
    Present,
}

/// A regex as its pattern, for the config dump.
pub(crate) fn as_pattern<S: serde::Serializer>(
    regex: &Regex,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(regex.as_str())
}

impl Matcher {
    /// Compiles `matched`; a regex matches the whole value.
    pub fn compile(matched: &StringMatch) -> Result<Self, regex::Error> {
        Ok(match (&matched.exact, &matched.prefix, &matched.regex) {
            (Some(exact), _, _) => Self::Exact(exact.clone()),
            (_, Some(prefix), _) => Self::Prefix(prefix.clone()),
            (_, _, Some(regex)) => Self::Regex(
                regex::RegexBuilder::new(&format!("^(?:{regex})$"))
                    .size_limit(MAX_REGEX_SIZE)
                    .build()?,
            ),
            (None, None, None) => Self::Present,
        })
    }

    pub fn matches(&self, value: &str) -> bool {
        match self {
            Self::Exact(exact) => value == exact,
            Self::Prefix(prefix) => value.starts_with(prefix.as_str()),
            Self::Regex(regex) => regex.is_match(value),
            Self::Present => true,
        }
    }

    /// Exact and prefix without regard to ASCII case (`ignoreUriCase`).
    fn matches_ignoring_case(&self, value: &str) -> bool {
        match self {
            Self::Exact(exact) => value.eq_ignore_ascii_case(exact),
            Self::Prefix(prefix) => value
                .get(..prefix.len())
                .is_some_and(|start| start.eq_ignore_ascii_case(prefix)),
            other => other.matches(value),
        }
    }
}

/// One `HTTPMatchRequest`, compiled: all of its conditions must hold.
#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RequestMatch {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uri: Option<Matcher>,
    pub ignore_uri_case: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scheme: Option<Matcher>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub method: Option<Matcher>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub authority: Option<Matcher>,
    #[serde(skip_serializing_if = "Vec::is_empty", serialize_with = "header_pairs")]
    pub headers: Vec<(HeaderName, Matcher)>,
    #[serde(skip_serializing_if = "Vec::is_empty", serialize_with = "header_pairs")]
    pub without_headers: Vec<(HeaderName, Matcher)>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub query_params: Vec<(String, Matcher)>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub source_labels: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source_namespace: Option<String>,
}

fn header_pairs<S: serde::Serializer>(
    pairs: &[(HeaderName, Matcher)],
    serializer: S,
) -> Result<S::Ok, S::Error> {
    serializer.collect_seq(pairs.iter().map(|(name, matcher)| (name.as_str(), matcher)))
}

/// What a match is checked against besides the request: the Service port
/// it came to.
#[derive(Debug, Clone, Copy)]
pub struct Arrival<'a> {
    pub port: u16,
    /// `http` or `https`, as the request arrived.
    pub scheme: &'a str,
}

impl RequestMatch {
    pub fn matches(&self, request: &Parts, arrival: Arrival<'_>, caller: Caller<'_>) -> bool {
        let uri = |matcher: &Matcher| {
            let path = request.uri.path();
            if self.ignore_uri_case {
                matcher.matches_ignoring_case(path)
            } else {
                matcher.matches(path)
            }
        };
        let scheme = request.uri.scheme_str().unwrap_or(arrival.scheme);
        self.port.is_none_or(|port| port == arrival.port)
            && self.uri.as_ref().is_none_or(uri)
            && self.scheme.as_ref().is_none_or(|m| m.matches(scheme))
            && self
                .method
                .as_ref()
                .is_none_or(|m| m.matches(request.method.as_str()))
            && self
                .authority
                .as_ref()
                .is_none_or(|m| m.matches(authority(request)))
            && self
                .headers
                .iter()
                .all(|(name, matcher)| header_matches(request, name, matcher))
            && !self
                .without_headers
                .iter()
                .any(|(name, matcher)| header_matches(request, name, matcher))
            && self
                .query_params
                .iter()
                .all(|(name, matcher)| query_matches(request, name, matcher))
            && self.source_matches(caller)
    }

    fn source_matches(&self, caller: Caller<'_>) -> bool {
        let namespace = self
            .source_namespace
            .as_deref()
            .is_none_or(|wanted| caller.namespace == Some(wanted));
        let labels = self.source_labels.is_empty()
            || caller.labels.is_some_and(|labels| {
                self.source_labels
                    .iter()
                    .all(|(key, value)| labels.get(key) == Some(value))
            });
        namespace && labels
    }
}

/// `:authority` in HTTP/2, `Host` in HTTP/1.1.
/// `path` (without its query) with its `.` and `..` segments resolved as
/// RFC 3986 resolves them, as Istio has Envoy normalize paths before
/// routing and authorization: `/public/../admin` is `/admin` to both, so a
/// policy on `/admin` cannot be walked around.
pub fn normalized_path(path: &str) -> std::borrow::Cow<'_, str> {
    let dotted = path
        .split('/')
        .any(|segment| segment == "." || segment == "..");
    if !dotted {
        return path.into();
    }
    let mut kept: Vec<&str> = Vec::new();
    let segments: Vec<&str> = path.split('/').skip(1).collect();
    for (i, segment) in segments.iter().enumerate() {
        let last = i + 1 == segments.len();
        match *segment {
            "." => {
                if last {
                    kept.push("");
                }
            }
            ".." => {
                kept.pop();
                if last {
                    kept.push("");
                }
            }
            other => kept.push(other),
        }
    }
    format!("/{}", kept.join("/")).into()
}

pub fn authority(request: &Parts) -> &str {
    authority_of(&request.uri, &request.headers)
}

/// [`authority`] of a request's URI and headers.
pub fn authority_of<'a>(uri: &'a http::Uri, headers: &'a http::HeaderMap) -> &'a str {
    uri.authority()
        .map(|authority| authority.as_str())
        .or_else(|| {
            headers
                .get(http::header::HOST)
                .and_then(|host| host.to_str().ok())
        })
        .unwrap_or_default()
}

/// Whether any value of the header `name` matches (Envoy joins repeated
/// headers with commas for matching; a match on either value is the common
/// intent and what Istio's tests exercise).
fn header_matches(request: &Parts, name: &HeaderName, matcher: &Matcher) -> bool {
    let mut values = request.headers.get_all(name).iter().peekable();
    if values.peek().is_none() {
        return false;
    }
    if matches!(matcher, Matcher::Present) {
        return true;
    }
    let joined: Vec<&str> = values.filter_map(|value| value.to_str().ok()).collect();
    joined.iter().any(|value| matcher.matches(value)) || matcher.matches(&joined.join(","))
}

/// Query parameters match by exact value or regex (Istio has no prefix for
/// them) on the first occurrence, as Envoy does; values are not decoded.
fn query_matches(request: &Parts, name: &str, matcher: &Matcher) -> bool {
    query_parameter(request, name).is_some_and(|value| matcher.matches(value))
}

/// The first value of the query parameter `name`, as written.
pub fn query_parameter<'a>(request: &'a Parts, name: &str) -> Option<&'a str> {
    let query = request.uri.query()?;
    query.split('&').find_map(|pair| {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        (key == name).then_some(value)
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn dot_segments_are_resolved_as_rfc_3986_resolves_them() {
        for (path, normalized) in [
            ("/a/b", "/a/b"),
            ("/public/../admin", "/admin"),
            ("/a/./b/", "/a/b/"),
            ("/a/b/..", "/a/"),
            ("/../../etc", "/etc"),
            ("/a/.", "/a/"),
            ("/a/..b/c", "/a/..b/c"),
        ] {
            assert_eq!(super::normalized_path(path), normalized, "{path}");
        }
    }
}
