//! Label and field selectors, with the syntax the API server accepts.

use serde_json::Value;

/// One requirement of a selector.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Requirement {
    Equals(String, String),
    NotEquals(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    DoesNotExist(String),
}

/// A parsed selector; every requirement must hold.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Selector(Vec<Requirement>);

impl Selector {
    /// A label selector: `a=b`, `a==b`, `a!=b`, `a in (x,y)`, `a notin (x)`,
    /// `a`, `!a`, joined by commas.
    pub fn labels(text: &str) -> Result<Self, String> {
        let mut requirements = Vec::new();
        for term in split_terms(text) {
            let term = term.trim();
            if term.is_empty() {
                continue;
            }
            let requirement = if let Some((key, values)) = split_set(term, " notin ") {
                Requirement::NotIn(key, values?)
            } else if let Some((key, values)) = split_set(term, " in ") {
                Requirement::In(key, values?)
            } else {
                equality(term).unwrap_or_else(|| match term.strip_prefix('!') {
                    Some(key) => Requirement::DoesNotExist(key.trim().to_string()),
                    None => Requirement::Exists(term.to_string()),
                })
            };
            requirements.push(requirement);
        }
        Ok(Self(requirements))
    }

    /// A field selector: `field=value`, `field==value`, `field!=value`, for
    /// the fields the API server indexes (`metadata.name`,
    /// `metadata.namespace`, and for pods `spec.nodeName`).
    pub fn fields(text: &str, kind: &str) -> Result<Self, String> {
        let mut requirements = Vec::new();
        for term in text.split(',').map(str::trim).filter(|t| !t.is_empty()) {
            let requirement =
                equality(term).ok_or_else(|| format!("invalid field selector term {term:?}"))?;
            let (Requirement::Equals(field, _) | Requirement::NotEquals(field, _)) = &requirement
            else {
                unreachable!("equality() builds only these")
            };
            let supported = matches!(field.as_str(), "metadata.name" | "metadata.namespace")
                || (kind == "Pod" && matches!(field.as_str(), "spec.nodeName" | "status.phase"));
            if !supported {
                return Err(format!("field label not supported: {field} (for {kind})"));
            }
            requirements.push(requirement);
        }
        Ok(Self(requirements))
    }

    /// Whether the labels of `object` match.
    pub fn matches_labels(&self, object: &Value) -> bool {
        let labels = &object["metadata"]["labels"];
        self.matches(|key| labels.get(key).and_then(Value::as_str))
    }

    /// Whether the fields of `object` match.
    pub fn matches_fields(&self, object: &Value) -> bool {
        self.matches(|field| {
            let value = field
                .split('.')
                .try_fold(object, |value, part| value.get(part))
                .and_then(Value::as_str);
            // An absent field compares as the empty string, as in Kubernetes.
            Some(value.unwrap_or(""))
        })
    }

    fn matches<'a>(&self, get: impl Fn(&str) -> Option<&'a str>) -> bool {
        self.0.iter().all(|requirement| match requirement {
            Requirement::Equals(key, value) => get(key) == Some(value.as_str()),
            Requirement::NotEquals(key, value) => get(key) != Some(value.as_str()),
            Requirement::In(key, values) => get(key).is_some_and(|v| values.iter().any(|x| x == v)),
            Requirement::NotIn(key, values) => {
                !get(key).is_some_and(|v| values.iter().any(|x| x == v))
            }
            Requirement::Exists(key) => get(key).is_some(),
            Requirement::DoesNotExist(key) => get(key).is_none(),
        })
    }
}

/// Splits on commas outside parentheses.
fn split_terms(text: &str) -> Vec<&str> {
    let mut terms = Vec::new();
    let (mut depth, mut start) = (0, 0);
    for (i, c) in text.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                terms.push(&text[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    terms.push(&text[start..]);
    terms
}

fn split_set(term: &str, operator: &str) -> Option<(String, Result<Vec<String>, String>)> {
    let (key, set) = term.split_once(operator)?;
    let values = set
        .trim()
        .strip_prefix('(')
        .and_then(|s| s.strip_suffix(')'))
        .map(|inner| inner.split(',').map(|v| v.trim().to_string()).collect())
        .ok_or_else(|| format!("invalid set in selector term {term:?}"));
    Some((key.trim().to_string(), values))
}

fn equality(term: &str) -> Option<Requirement> {
    if let Some((key, value)) = term.split_once("!=") {
        return Some(Requirement::NotEquals(
            key.trim().into(),
            value.trim().into(),
        ));
    }
    let (key, value) = term.split_once("==").or_else(|| term.split_once('='))?;
    Some(Requirement::Equals(key.trim().into(), value.trim().into()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn label_selectors_follow_kubernetes_syntax() {
        let pod = json!({"metadata": {"labels": {"app": "web", "tier": "front"}}});
        let cases = [
            ("app=web", true),
            ("app==web,tier=front", true),
            ("app!=web", false),
            ("app in (api, web)", true),
            ("app notin (web)", false),
            ("tier", true),
            ("!tier", false),
            ("version", false),
            ("", true),
        ];
        for (selector, expected) in cases {
            assert_eq!(
                Selector::labels(selector).unwrap().matches_labels(&pod),
                expected,
                "{selector}"
            );
        }
    }

    #[test]
    fn field_selectors_take_the_indexed_fields_only() {
        let pod = json!({"metadata": {"name": "web", "namespace": "default"}, "spec": {"nodeName": "node-1"}});
        let on = |s| Selector::fields(s, "Pod").unwrap().matches_fields(&pod);
        assert!(on("spec.nodeName=node-1"));
        assert!(!on("spec.nodeName=node-2,metadata.name=web"));
        assert!(on("metadata.namespace!=kube-system"));
        assert!(Selector::fields("spec.nodeName=node-1", "Service").is_err());
        assert!(Selector::fields("spec.hostNetwork=true", "Pod").is_err());
    }
}
