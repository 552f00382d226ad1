//! Value types Istio's APIs share: durations, percentages, string matches.

use std::time::Duration as StdDuration;

use serde::{Deserialize, Serialize};

use super::Issue;

/// A duration as Istio's YAML writes it: `10s`, `1.5s`, `100ms`, `1h30m`.
#[derive(Serialize, Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
#[serde(into = "String")]
pub struct Duration(pub StdDuration);

impl From<Duration> for String {
    fn from(duration: Duration) -> Self {
        format!("{}s", duration.0.as_secs_f64())
    }
}

/// In a schema, what Istio's CRDs say of a duration: a string.
impl schemars::JsonSchema for Duration {
    fn schema_name() -> String {
        "Duration".into()
    }

    fn json_schema(generator: &mut schemars::gen::SchemaGenerator) -> schemars::schema::Schema {
        String::json_schema(generator)
    }
}

impl<'de> Deserialize<'de> for Duration {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        parse_duration(&text)
            .map(Duration)
            .map_err(serde::de::Error::custom)
    }
}

/// Go's duration syntax: one or more `<decimal><unit>`, units ns, us (µs),
/// ms, s, m, h.
pub fn parse_duration(text: &str) -> Result<StdDuration, String> {
    let invalid = || format!("{text:?} is not a duration like 10s, 1.5s, 100ms or 1h30m");
    let mut rest = text.trim();
    if rest.is_empty() {
        return Err(invalid());
    }
    let mut total = 0f64;
    while !rest.is_empty() {
        let number_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(invalid)?;
        let (number, after) = rest.split_at(number_len);
        let value: f64 = number.parse().map_err(|_| invalid())?;
        let unit_len = after
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(after.len());
        let (unit, next) = after.split_at(unit_len);
        let seconds = match unit {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return Err(invalid()),
        };
        total += value * seconds;
        rest = next;
    }
    StdDuration::try_from_secs_f64(total).map_err(|_| invalid())
}

/// A percentage, 0 to 100.
#[derive(Serialize, Deserialize, schemars::JsonSchema, Debug, Clone, Copy, Default, PartialEq)]
pub struct Percent {
    #[serde(default)]
    pub value: f64,
}

impl Percent {
    pub(crate) fn validate(&self, path: &str, issues: &mut Vec<Issue>) {
        if !(0.0..=100.0).contains(&self.value) {
            issues.push(Issue::new(
                format!("{path}.value"),
                format!("{} is not a percentage from 0 to 100", self.value),
            ));
        }
    }
}

/// Matches a string exactly, by prefix, or by an RE2 regular expression:
/// exactly one of the three.
#[derive(Serialize, Deserialize, schemars::JsonSchema, Debug, Clone, Default, PartialEq, Eq)]
pub struct StringMatch {
    pub exact: Option<String>,
    pub prefix: Option<String>,
    pub regex: Option<String>,
}

impl StringMatch {
    pub(crate) fn validate(&self, path: &str, issues: &mut Vec<Issue>) {
        if self.is_presence() {
            issues.push(Issue::new(
                path,
                "set exactly one of exact, prefix and regex",
            ));
        }
        self.validate_or_presence(path, issues);
    }

    /// As a header or query parameter match, where an empty match asks
    /// only that the header or parameter be present.
    pub(crate) fn validate_or_presence(&self, path: &str, issues: &mut Vec<Issue>) {
        let set = [&self.exact, &self.prefix, &self.regex]
            .iter()
            .filter(|v| v.is_some())
            .count();
        if set > 1 {
            issues.push(Issue::new(
                path,
                "set exactly one of exact, prefix and regex",
            ));
        }
        if let Some(regex) = &self.regex {
            check_regex(&format!("{path}.regex"), regex, issues);
        }
    }

    /// An empty match: in `headers`, `withoutHeaders` and `queryParams`, that
    /// the header or parameter is present.
    pub fn is_presence(&self) -> bool {
        self.exact.is_none() && self.prefix.is_none() && self.regex.is_none()
    }
}

/// Longest regular expression read, in bytes: longer ones are refused
/// before they are compiled (Istio's routes carry a few dozen).
pub const MAX_REGEX_LEN: usize = 1024;
/// The most memory one compiled regular expression may take: a pattern
/// like `(a{100}){100}` is short but compiles to megabytes, and time.
pub const MAX_REGEX_SIZE: usize = 256 << 10;

/// Checks a regular expression in RE2 syntax (which Rust's `regex` speaks:
/// no look-around, no back-references), within [`MAX_REGEX_LEN`] and
/// [`MAX_REGEX_SIZE`].
pub(crate) fn check_regex(path: &str, regex: &str, issues: &mut Vec<Issue>) {
    if regex.len() > MAX_REGEX_LEN {
        issues.push(Issue::new(
            path,
            format!(
                "a regular expression of {} bytes is over the {MAX_REGEX_LEN} read",
                regex.len()
            ),
        ));
        return;
    }
    let compiled = regex::RegexBuilder::new(regex)
        .size_limit(MAX_REGEX_SIZE)
        .build();
    if let Err(error) = compiled {
        let reason = error
            .to_string()
            .lines()
            .last()
            .unwrap_or_default()
            .trim()
            .to_string();
        issues.push(Issue::new(
            path,
            format!("invalid RE2 regular expression {regex:?}: {reason}"),
        ));
    }
}

/// A port number that must be 1 to 65535.
pub(crate) fn check_port_number(path: &str, port: u32, issues: &mut Vec<Issue>) {
    if !(1..=65535).contains(&port) {
        issues.push(Issue::new(
            path,
            format!("port {port} is not a number from 1 to 65535"),
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_in_go_syntax() {
        let ok = [
            ("10s", 10.0),
            ("1.5s", 1.5),
            ("100ms", 0.1),
            ("1h30m", 5400.0),
            ("250us", 0.00025),
            ("3m", 180.0),
        ];
        for (text, seconds) in ok {
            assert_eq!(
                parse_duration(text).map(|d| d.as_secs_f64()),
                Ok(seconds),
                "{text}"
            );
        }
        for bad in ["", "10", "s", "10x", "-1s", "1.2.3s"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn string_matches_need_one_kind_and_valid_re2() {
        let mut issues = Vec::new();
        StringMatch {
            exact: Some("a".into()),
            prefix: Some("b".into()),
            regex: None,
        }
        .validate("m", &mut issues);
        StringMatch {
            regex: Some("(?=look)ahead".into()),
            ..Default::default()
        }
        .validate("n", &mut issues);
        StringMatch::default().validate("o", &mut issues);
        let paths: Vec<&str> = issues.iter().map(|i| i.path.as_str()).collect();
        assert_eq!(paths, ["m", "n.regex", "o"]);
        assert!(
            issues[1].message.contains("invalid RE2"),
            "{}",
            issues[1].message
        );
    }
}
