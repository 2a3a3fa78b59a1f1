//! The one query-string parser. The event builders (v1, 2.0), the Lambda
//! authorizer event and identity sources, and the Invoke API's `Qualifier`
//! all read the query through it, so a value reaches each of them the same.
//!
//! Decoding follows API Gateway: `+` is a space (form encoding), then
//! `%XX` escapes are decoded. A query that is not UTF-8 once decoded is
//! refused with 400 before anything parses it ([`is_utf8`], called by
//! `crate::edge`; robustness H4), so the U+FFFD fallback below never
//! reaches an event.
//! Empty pairs (`a=1&&b=2`) are skipped; a name without `=` has the value
//! `""`.

use std::borrow::Cow;

use percent_encoding::percent_decode;

/// Decoded parameters in order of first appearance, every value kept in
/// order (robustness H6).
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Query(pub Vec<(String, Vec<String>)>);

impl Query {
    /// Parses a raw query string (without `?`).
    pub(crate) fn parse(raw: &str) -> Self {
        let mut out: Vec<(String, Vec<String>)> = Vec::new();
        for pair in raw.split('&').filter(|p| !p.is_empty()) {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            let name = decode_component(name);
            let value = decode_component(value);
            match out.iter_mut().find(|(n, _)| *n == name) {
                Some((_, values)) => values.push(value),
                None => out.push((name, vec![value])),
            }
        }
        Self(out)
    }

    /// The last value of `name` (the single-value map's rule).
    pub(crate) fn last(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(n, _)| n == name)
            .and_then(|(_, v)| v.last())
            .map(String::as_str)
    }
}

/// Whether the whole raw query is UTF-8 after percent-decoding (`&`, `=`
/// and `+` are ASCII, so this holds for every name and value exactly when
/// it holds for the whole).
pub(crate) fn is_utf8(raw: &str) -> bool {
    !raw.contains('%')
        || percent_encoding::percent_decode_str(raw)
            .decode_utf8()
            .is_ok()
}

/// One name or value: `+` → space, then percent-decoding.
pub(crate) fn decode_component(s: &str) -> String {
    let plus_decoded: Cow<'_, [u8]> = if s.contains('+') {
        Cow::Owned(s.replace('+', " ").into_bytes())
    } else {
        Cow::Borrowed(s.as_bytes())
    };
    percent_decode(&plus_decoded)
        .decode_utf8_lossy()
        .into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plus_is_a_space_and_percent_is_decoded() {
        let q = Query::parse("token=a+b&x=%2B&y=a%20b&flag&&k=1&k=2");
        assert_eq!(q.last("token"), Some("a b"));
        assert_eq!(q.last("x"), Some("+"));
        assert_eq!(q.last("y"), Some("a b"));
        assert_eq!(q.last("flag"), Some(""));
        assert_eq!(q.last("k"), Some("2"));
        assert_eq!(q.0[4], ("k".to_string(), vec!["1".into(), "2".into()]));
        assert!(Query::parse("").0.is_empty());
    }

    #[test]
    fn invalid_utf8_is_detected() {
        assert!(!is_utf8("a=%FF"));
        assert!(!is_utf8("a=%C3&b=%A9"));
        assert!(is_utf8("a=%C3%A9&b=%2B+c"));
        assert_eq!(Query::parse("a=%FF").last("a"), Some("\u{fffd}"));
    }
}
