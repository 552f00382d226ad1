//! Host names as Istio matches them: in any case, `*.example.com` taking
//! every name under `example.com` and `*` every name.

/// Whether the host pattern `pattern` takes every name `host` does.
pub fn covers(pattern: &str, host: &str) -> bool {
    pattern == "*"
        || pattern.eq_ignore_ascii_case(host)
        || pattern.strip_prefix('*').is_some_and(|suffix| {
            // Compared as bytes, in any case, with no copy: on each request.
            let (host, suffix) = (host.as_bytes(), suffix.as_bytes());
            suffix.starts_with(b".")
                && host.len() > suffix.len()
                && host[host.len() - suffix.len()..].eq_ignore_ascii_case(suffix)
        })
}

/// How specifically `pattern` names `host`, as Envoy picks virtual hosts:
/// an exact name over any wildcard, a longer suffix over a shorter one,
/// `*` last; none when it does not name it.
pub fn rank(pattern: &str, host: &str) -> Option<usize> {
    if pattern.eq_ignore_ascii_case(host) {
        Some(usize::MAX)
    } else if covers(pattern, host) {
        Some(pattern.len())
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wildcard_takes_the_names_under_it_and_an_exact_name_ranks_first() {
        assert!(covers("*.example.com", "API.Example.com"));
        assert!(covers("*.example.com", "a.b.example.com"));
        assert!(!covers("*.example.com", "example.com"));
        assert!(!covers("*.example.com", "badexample.com"));
        assert!(covers("*", "anything"));
        assert!(
            rank("api.example.com", "API.example.com") > rank("*.example.com", "api.example.com")
        );
        assert!(
            rank("*.api.example.com", "v1.api.example.com")
                > rank("*.example.com", "v1.api.example.com")
        );
        assert!(rank("*", "x") < rank("*.x.y", "a.x.y"));
        assert_eq!(rank("other.com", "api.example.com"), None);
    }
}
