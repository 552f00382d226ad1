//! What a route does besides choosing a destination, as Istio has Envoy do
//! it: answer by itself (`directResponse`, `redirect`), rewrite the request
//! (`rewrite`), and edit headers (`headers`).

use ambit_config::api::networking::{
    HeaderOperations, HttpDirectResponse, HttpRedirect, HttpRewrite, RedirectPortSelection,
};
use http::{HeaderMap, HeaderName, HeaderValue};
use regex::Regex;
use serde::Serialize;

use crate::matching::{as_pattern, Matcher};

/// An answer the route gives without any upstream.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum Respond {
    Direct { status: u16, body: Vec<u8> },
    Redirect(Redirect),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Redirect {
    pub status: u16,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scheme: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    pub port: RedirectPort,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<RedirectPath>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum RedirectPath {
    /// `uri`: the whole path, with a query of its own or keeping the request's.
    Whole(String),
    /// `prefixRewrite`: replaces what the match's `uri` matched, as a
    /// rewrite does.
    Prefix(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum RedirectPort {
    /// The one the request named, if any.
    AsAsked,
    Fixed(u16),
    /// None: the scheme's own.
    SchemeDefault,
    /// The port the request arrived at.
    Arrived,
}

impl Respond {
    pub fn direct(spec: &HttpDirectResponse) -> Result<Self, String> {
        let status = u16::try_from(spec.status)
            .ok()
            .filter(|s| (200..=599).contains(s))
            .ok_or_else(|| format!("directResponse.status {}: not from 200 to 599", spec.status))?;
        let body = match spec.body.as_ref().map(|b| (&b.string, &b.bytes)) {
            None | Some((None, None)) => Vec::new(),
            Some((Some(text), None)) => text.clone().into_bytes(),
            Some((None, Some(encoded))) => {
                use base64::Engine as _;
                base64::engine::general_purpose::STANDARD
                    .decode(encoded)
                    .map_err(|e| format!("directResponse.body.bytes: not base64: {e}"))?
            }
            Some((Some(_), Some(_))) => {
                return Err("directResponse.body: both string and bytes".to_string())
            }
        };
        Ok(Self::Direct { status, body })
    }

    pub fn redirect(spec: &HttpRedirect) -> Result<Self, String> {
        let status = match spec.redirect_code {
            None => 301,
            Some(code @ (301 | 302 | 303 | 307 | 308)) => code as u16,
            Some(code) => {
                return Err(format!(
                    "redirect.redirectCode {code}: not 301, 302, 303, 307 or 308"
                ))
            }
        };
        let port = match (spec.port, spec.derive_port) {
            (Some(port), _) => RedirectPort::Fixed(
                u16::try_from(port)
                    .ok()
                    .filter(|p| *p > 0)
                    .ok_or_else(|| format!("redirect.port {port}: not a port"))?,
            ),
            (None, Some(RedirectPortSelection::FromProtocolDefault)) => RedirectPort::SchemeDefault,
            (None, Some(RedirectPortSelection::FromRequestPort)) => RedirectPort::Arrived,
            (None, None) => RedirectPort::AsAsked,
        };
        let path = match (&spec.uri, &spec.prefix_rewrite) {
            (Some(_), Some(_)) => {
                return Err("redirect: both uri and prefixRewrite".to_string());
            }
            (Some(uri), None) => Some(RedirectPath::Whole(uri.clone())),
            (None, Some(prefix)) => Some(RedirectPath::Prefix(prefix.clone())),
            (None, None) => None,
        };
        Ok(Self::Redirect(Redirect {
            status,
            scheme: spec.scheme.clone(),
            host: spec.authority.clone(),
            port,
            path,
        }))
    }
}

impl Redirect {
    /// The `Location` for a request to `authority` and `path_and_query`,
    /// which arrived in `scheme` at port `arrived` and whose path
    /// `matched_uri` matched.
    pub fn location(
        &self,
        scheme: &str,
        authority: &str,
        path_and_query: &str,
        arrived: u16,
        matched_uri: Option<&Matcher>,
    ) -> String {
        let scheme = self.scheme.as_deref().unwrap_or(scheme);
        let (asked_host, asked_port) = match authority.rsplit_once(':') {
            Some((host, port)) if port.parse::<u16>().is_ok() => (host, Some(port)),
            _ => (authority, None),
        };
        let host = self.host.as_deref().unwrap_or(asked_host);
        let port = match self.port {
            RedirectPort::AsAsked => asked_port.map(str::to_string),
            RedirectPort::Fixed(port) => Some(port.to_string()),
            RedirectPort::SchemeDefault => None,
            RedirectPort::Arrived => Some(arrived.to_string()),
        };
        let (asked_path, query) = match path_and_query.split_once('?') {
            Some((path, query)) => (path, Some(query)),
            None => (path_and_query, None),
        };
        let path = match &self.path {
            Some(RedirectPath::Whole(path)) if path.contains('?') => path.clone(),
            Some(RedirectPath::Whole(path)) => with_query(path, query),
            Some(RedirectPath::Prefix(prefix)) => {
                with_query(&replace_matched(prefix, asked_path, matched_uri), query)
            }
            None => path_and_query.to_string(),
        };
        match port {
            Some(port) => format!("{scheme}://{host}:{port}{path}"),
            None => format!("{scheme}://{host}{path}"),
        }
    }
}

/// `path` with `query`, if there is one.
pub fn with_query(path: &str, query: Option<&str>) -> String {
    match query {
        Some(query) => format!("{path}?{query}"),
        None => path.to_string(),
    }
}

/// `path` with what the match's `uri` matched (its prefix, or the exact
/// path) replaced by `replacement`; when it matched on something else,
/// its leading `/`, as Envoy is told.
fn replace_matched(replacement: &str, path: &str, matched_uri: Option<&Matcher>) -> String {
    let matched = match matched_uri {
        Some(Matcher::Prefix(prefix)) => prefix.len().min(path.len()),
        Some(Matcher::Exact(_)) => path.len(),
        _ => usize::from(path.starts_with('/')),
    };
    format!("{replacement}{}", &path[matched..])
}

/// A route's `rewrite`.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Rewrite {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uri: Option<UriRewrite>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub authority: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum UriRewrite {
    /// Replaces what the match's `uri` prefix (or exact path) matched; `/`
    /// when it matched on something else, as Envoy is told.
    Prefix(String),
    Regex {
        #[serde(serialize_with = "as_pattern")]
        pattern: Regex,
        substitution: String,
    },
}

impl Rewrite {
    pub fn from_spec(spec: &HttpRewrite) -> Result<Self, String> {
        let uri = match (&spec.uri, &spec.uri_regex_rewrite) {
            (Some(_), Some(_)) => return Err("rewrite: both uri and uriRegexRewrite".to_string()),
            (Some(uri), None) => Some(UriRewrite::Prefix(uri.clone())),
            (None, Some(regex)) => Some(UriRewrite::Regex {
                pattern: Regex::new(&regex.pattern).map_err(|e| {
                    format!("rewrite.uriRegexRewrite.match {:?}: {e}", regex.pattern)
                })?,
                substitution: regex.rewrite.clone(),
            }),
            (None, None) => None,
        };
        Ok(Self {
            uri,
            authority: spec.authority.clone(),
        })
    }

    /// The new path of a request to `path` (without its query) that
    /// `matched_uri` matched.
    pub fn path(&self, path: &str, matched_uri: Option<&Matcher>) -> Option<String> {
        Some(match self.uri.as_ref()? {
            UriRewrite::Prefix(replacement) => replace_matched(replacement, path, matched_uri),
            // Envoy's `regex_rewrite`: every match replaced, `\1` naming a group.
            UriRewrite::Regex {
                pattern,
                substitution,
            } => {
                let substitution = backslash_groups(substitution);
                pattern
                    .replace_all(path, substitution.as_str())
                    .into_owned()
            }
        })
    }
}

/// RE2's `\1` group references as the regex crate writes them (`${1}`).
fn backslash_groups(substitution: &str) -> String {
    let mut out = String::with_capacity(substitution.len());
    let mut chars = substitution.chars().peekable();
    while let Some(c) = chars.next() {
        match (c, chars.peek()) {
            ('\\', Some(digit)) if digit.is_ascii_digit() => {
                out.push_str(&format!("${{{digit}}}"));
                chars.next();
            }
            ('$', _) => out.push_str("$$"),
            _ => out.push(c),
        }
    }
    out
}

/// `headers.request` or `headers.response`: set, then add, then remove.
#[derive(Debug, Clone, Default, Serialize)]
pub struct HeaderEdits {
    #[serde(skip_serializing_if = "Vec::is_empty", serialize_with = "pairs")]
    pub set: Vec<(HeaderName, HeaderValue)>,
    #[serde(skip_serializing_if = "Vec::is_empty", serialize_with = "pairs")]
    pub add: Vec<(HeaderName, HeaderValue)>,
    #[serde(skip_serializing_if = "Vec::is_empty", serialize_with = "names")]
    pub remove: Vec<HeaderName>,
}

fn pairs<S: serde::Serializer>(
    pairs: &[(HeaderName, HeaderValue)],
    serializer: S,
) -> Result<S::Ok, S::Error> {
    serializer.collect_map(
        pairs
            .iter()
            .map(|(name, value)| (name.as_str(), value.to_str().unwrap_or("?"))),
    )
}

fn names<S: serde::Serializer>(names: &[HeaderName], serializer: S) -> Result<S::Ok, S::Error> {
    serializer.collect_seq(names.iter().map(HeaderName::as_str))
}

impl HeaderEdits {
    /// The edits of `spec`, at `at` (`headers.request`) for errors.
    pub fn from_spec(spec: &HeaderOperations, at: &str) -> Result<Self, String> {
        let name = |name: &str| {
            HeaderName::try_from(name).map_err(|_| format!("{at}: {name:?} is not a header name"))
        };
        let pair = |(key, value): (&String, &String)| {
            let value = HeaderValue::try_from(value.as_str())
                .map_err(|_| format!("{at}: the value of {key} is not a header value"))?;
            Ok::<_, String>((name(key)?, value))
        };
        Ok(Self {
            set: spec.set.iter().map(pair).collect::<Result<_, _>>()?,
            add: spec.add.iter().map(pair).collect::<Result<_, _>>()?,
            remove: spec
                .remove
                .iter()
                .map(|n| name(n))
                .collect::<Result<_, _>>()?,
        })
    }

    pub fn is_empty(&self) -> bool {
        self.set.is_empty() && self.add.is_empty() && self.remove.is_empty()
    }

    pub fn apply(&self, headers: &mut HeaderMap) {
        for (name, value) in &self.set {
            headers.insert(name.clone(), value.clone());
        }
        for (name, value) in &self.add {
            headers.append(name.clone(), value.clone());
        }
        for name in &self.remove {
            headers.remove(name);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn redirect(spec: HttpRedirect) -> Redirect {
        match Respond::redirect(&spec).unwrap() {
            Respond::Redirect(redirect) => redirect,
            Respond::Direct { .. } => unreachable!(),
        }
    }

    #[test]
    fn a_redirect_replaces_what_it_names_and_keeps_the_rest() {
        let to = |spec: HttpRedirect| {
            redirect(spec).location("http", "reviews:9080", "/a?x=1", 9080, None)
        };
        assert_eq!(
            to(HttpRedirect {
                uri: Some("/b".into()),
                ..Default::default()
            }),
            "http://reviews:9080/b?x=1"
        );
        assert_eq!(
            to(HttpRedirect {
                uri: Some("/b?y=2".into()),
                authority: Some("ratings".into()),
                scheme: Some("https".into()),
                derive_port: Some(RedirectPortSelection::FromProtocolDefault),
                ..Default::default()
            }),
            "https://ratings/b?y=2"
        );
        assert_eq!(
            to(HttpRedirect {
                port: Some(8443),
                ..Default::default()
            }),
            "http://reviews:8443/a?x=1"
        );
        let arrived = redirect(HttpRedirect {
            derive_port: Some(RedirectPortSelection::FromRequestPort),
            ..Default::default()
        });
        assert_eq!(
            arrived.location("http", "reviews", "/", 9080, None),
            "http://reviews:9080/"
        );
        let prefix = redirect(HttpRedirect {
            prefix_rewrite: Some("/v2/".into()),
            ..Default::default()
        });
        let api = Matcher::Prefix("/api/".into());
        assert_eq!(
            prefix.location("http", "reviews", "/api/items?x=1", 80, Some(&api)),
            "http://reviews/v2/items?x=1"
        );
        assert!(Respond::redirect(&HttpRedirect {
            uri: Some("/b".into()),
            prefix_rewrite: Some("/c".into()),
            ..Default::default()
        })
        .is_err());
        assert_eq!(redirect(HttpRedirect::default()).status, 301);
        assert!(Respond::redirect(&HttpRedirect {
            redirect_code: Some(200),
            ..Default::default()
        })
        .is_err());
    }

    #[test]
    fn a_rewrite_replaces_what_the_match_matched() {
        let prefix = Rewrite::from_spec(&HttpRewrite {
            uri: Some("/v2/".into()),
            ..Default::default()
        })
        .unwrap();
        let by = |m: Matcher| Some(m);
        assert_eq!(
            prefix.path("/api/items", by(Matcher::Prefix("/api/".into())).as_ref()),
            Some("/v2/items".into())
        );
        assert_eq!(
            prefix.path("/login", by(Matcher::Exact("/login".into())).as_ref()),
            Some("/v2/".into())
        );
        // Matched on something else: Envoy's prefix is `/`.
        assert_eq!(prefix.path("/items", None), Some("/v2/items".into()));
        let regex = Rewrite::from_spec(&HttpRewrite {
            uri_regex_rewrite: Some(ambit_config::api::networking::RegexRewrite {
                pattern: "^/service/([^/]+)(/.*)$".into(),
                rewrite: "\\2/instance/\\1".into(),
            }),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(
            regex.path("/service/foo/v1/api", None),
            Some("/v1/api/instance/foo".into())
        );
    }

    #[test]
    fn header_edits_set_then_add_then_remove() {
        let spec = HeaderOperations {
            set: [("x-a".to_string(), "1".to_string())].into(),
            add: [("x-b".to_string(), "2".to_string())].into(),
            remove: vec!["x-c".into()],
        };
        let edits = HeaderEdits::from_spec(&spec, "headers.request").unwrap();
        let mut headers = HeaderMap::new();
        headers.insert("x-a", HeaderValue::from_static("0"));
        headers.insert("x-b", HeaderValue::from_static("1"));
        headers.insert("x-c", HeaderValue::from_static("gone"));
        edits.apply(&mut headers);
        assert_eq!(headers.get_all("x-a").iter().count(), 1);
        assert_eq!(headers["x-a"], "1");
        assert_eq!(headers.get_all("x-b").iter().count(), 2);
        assert!(!headers.contains_key("x-c"));
        let bad = HeaderOperations {
            set: [("bad name".to_string(), "1".to_string())].into(),
            ..Default::default()
        };
        assert!(HeaderEdits::from_spec(&bad, "headers.request").is_err());
    }

    #[test]
    fn a_direct_response_answers_with_its_body() {
        let direct = |body: Option<ambit_config::api::networking::HttpBody>| {
            Respond::direct(&HttpDirectResponse { status: 503, body })
        };
        assert_eq!(
            direct(Some(ambit_config::api::networking::HttpBody {
                string: Some("down".into()),
                bytes: None
            }))
            .unwrap(),
            Respond::Direct {
                status: 503,
                body: b"down".to_vec()
            }
        );
        assert_eq!(
            direct(Some(ambit_config::api::networking::HttpBody {
                string: None,
                bytes: Some("aGk=".into())
            }))
            .unwrap(),
            Respond::Direct {
                status: 503,
                body: b"hi".to_vec()
            }
        );
        assert!(Respond::direct(&HttpDirectResponse {
            status: 42,
            body: None
        })
        .is_err());
    }
}
