//! A route's `corsPolicy`, as Envoy's CORS filter applies what Istio tells
//! it: a preflight from an allowed origin is answered by the waypoint with
//! the policy's headers; an actual request from one goes on and its answer
//! gets `access-control-allow-origin` (and credentials, exposed headers);
//! a request from any other origin is left alone, except that a preflight
//! is answered without CORS headers when `unmatchedPreflights: IGNORE`.

use ambit_config::api::networking::{CorsPolicy, UnmatchedPreflights};
use http::header::{self, HeaderMap, HeaderValue};
use http::request::Parts;
use http::Method;
use serde::Serialize;

use crate::matching::Matcher;

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Cors {
    pub allow_origins: Vec<Matcher>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub allow_methods: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub allow_headers: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expose_headers: Option<String>,
    /// Seconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_age: Option<u64>,
    pub allow_credentials: bool,
    /// Whether a preflight from an origin not allowed goes on to the
    /// upstream (Istio's default, FORWARD) or is answered here (IGNORE).
    pub forward_unmatched_preflights: bool,
}

/// What the CORS policy makes of a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CorsVerdict {
    /// Not a cross-origin request the policy speaks to: on as it is.
    PassOn,
    /// A preflight the waypoint answers (200) with these headers.
    Answer(HeaderMap),
    /// On to the upstream; these headers join its answer.
    Annotate(HeaderMap),
}

impl Cors {
    pub fn from_spec(spec: &CorsPolicy) -> Result<Self, String> {
        let mut allow_origins = Vec::new();
        for (i, origin) in spec.allow_origins.iter().enumerate() {
            allow_origins.push(
                Matcher::compile(origin)
                    .map_err(|e| format!("corsPolicy.allowOrigins[{i}]: {e}"))?,
            );
        }
        // The deprecated form: exact origins.
        allow_origins.extend(spec.allow_origin.iter().cloned().map(Matcher::Exact));
        let list = |values: &[String]| (!values.is_empty()).then(|| values.join(","));
        Ok(Self {
            allow_origins,
            allow_methods: list(&spec.allow_methods),
            allow_headers: list(&spec.allow_headers),
            expose_headers: list(&spec.expose_headers),
            max_age: spec.max_age.map(|age| age.0.as_secs()),
            allow_credentials: spec.allow_credentials == Some(true),
            forward_unmatched_preflights: spec.unmatched_preflights
                != Some(UnmatchedPreflights::Ignore),
        })
    }

    pub fn verdict(&self, request: &Parts) -> CorsVerdict {
        let Some(origin) = request.headers.get(header::ORIGIN) else {
            return CorsVerdict::PassOn;
        };
        let preflight = request.method == Method::OPTIONS
            && request
                .headers
                .contains_key(header::ACCESS_CONTROL_REQUEST_METHOD);
        let allowed = origin
            .to_str()
            .is_ok_and(|o| self.allow_origins.iter().any(|m| m.matches(o)));
        let mut headers = HeaderMap::new();
        match (allowed, preflight) {
            (false, true) if !self.forward_unmatched_preflights => CorsVerdict::Answer(headers),
            (false, _) => CorsVerdict::PassOn,
            (true, true) => {
                headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
                self.credentials(&mut headers);
                let fields = [
                    (header::ACCESS_CONTROL_ALLOW_METHODS, &self.allow_methods),
                    (header::ACCESS_CONTROL_ALLOW_HEADERS, &self.allow_headers),
                ];
                for (name, value) in fields {
                    if let Some(value) =
                        value.as_deref().and_then(|v| HeaderValue::from_str(v).ok())
                    {
                        headers.insert(name, value);
                    }
                }
                if let Some(age) = self.max_age {
                    headers.insert(header::ACCESS_CONTROL_MAX_AGE, HeaderValue::from(age));
                }
                CorsVerdict::Answer(headers)
            }
            (true, false) => {
                headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
                self.credentials(&mut headers);
                let exposed = self.expose_headers.as_deref();
                if let Some(value) = exposed.and_then(|v| HeaderValue::from_str(v).ok()) {
                    headers.insert(header::ACCESS_CONTROL_EXPOSE_HEADERS, value);
                }
                CorsVerdict::Annotate(headers)
            }
        }
    }

    fn credentials(&self, headers: &mut HeaderMap) {
        if self.allow_credentials {
            headers.insert(
                header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
                HeaderValue::from_static("true"),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use ambit_config::api::types::{Duration as SpecDuration, StringMatch};

    use super::*;

    fn request(method: &str, origin: Option<&str>, preflight: bool) -> Parts {
        let mut request = http::Request::builder().method(method).uri("/");
        if let Some(origin) = origin {
            request = request.header("origin", origin);
        }
        if preflight {
            request = request.header("access-control-request-method", "PUT");
        }
        request.body(()).unwrap().into_parts().0
    }

    fn policy(unmatched: Option<UnmatchedPreflights>) -> Cors {
        Cors::from_spec(&CorsPolicy {
            allow_origins: vec![StringMatch {
                regex: Some(r"https://.*\.example\.com".into()),
                ..Default::default()
            }],
            allow_origin: vec!["https://legacy.org".into()],
            allow_methods: vec!["GET".into(), "PUT".into()],
            allow_headers: vec!["x-user".into()],
            expose_headers: vec!["x-trace".into()],
            max_age: Some(SpecDuration(Duration::from_secs(86400))),
            allow_credentials: Some(true),
            unmatched_preflights: unmatched,
        })
        .unwrap()
    }

    fn header(verdict: &CorsVerdict, name: &str) -> Option<String> {
        let headers = match verdict {
            CorsVerdict::Answer(headers) | CorsVerdict::Annotate(headers) => headers,
            CorsVerdict::PassOn => return None,
        };
        Some(headers.get(name)?.to_str().ok()?.to_string())
    }

    #[test]
    fn an_allowed_preflight_is_answered_with_the_policy() {
        let cors = policy(None);
        let verdict = cors.verdict(&request("OPTIONS", Some("https://app.example.com"), true));
        assert!(matches!(verdict, CorsVerdict::Answer(_)));
        let expected = [
            ("access-control-allow-origin", "https://app.example.com"),
            ("access-control-allow-methods", "GET,PUT"),
            ("access-control-allow-headers", "x-user"),
            ("access-control-max-age", "86400"),
            ("access-control-allow-credentials", "true"),
        ];
        for (name, value) in expected {
            assert_eq!(header(&verdict, name).as_deref(), Some(value), "{name}");
        }
        // The deprecated exact form allows too.
        let legacy = cors.verdict(&request("OPTIONS", Some("https://legacy.org"), true));
        assert_eq!(
            header(&legacy, "access-control-allow-origin").as_deref(),
            Some("https://legacy.org")
        );
    }

    #[test]
    fn an_allowed_request_goes_on_and_its_answer_is_annotated() {
        let verdict = policy(None).verdict(&request("GET", Some("https://app.example.com"), false));
        assert!(matches!(verdict, CorsVerdict::Annotate(_)));
        assert_eq!(
            header(&verdict, "access-control-expose-headers").as_deref(),
            Some("x-trace")
        );
        assert_eq!(header(&verdict, "access-control-allow-methods"), None);
    }

    #[test]
    fn other_origins_are_left_alone_unless_unmatched_preflights_are_ignored() {
        let stranger = request("OPTIONS", Some("https://evil.example.org"), true);
        assert_eq!(policy(None).verdict(&stranger), CorsVerdict::PassOn);
        assert_eq!(
            policy(Some(UnmatchedPreflights::Forward)).verdict(&stranger),
            CorsVerdict::PassOn
        );
        assert_eq!(
            policy(Some(UnmatchedPreflights::Ignore)).verdict(&stranger),
            CorsVerdict::Answer(HeaderMap::new())
        );
        // Not cross-origin at all.
        assert_eq!(
            policy(None).verdict(&request("GET", None, false)),
            CorsVerdict::PassOn
        );
    }
}
