//! Prometheus text exposition format (0.0.4) helpers.

use std::borrow::Cow;

/// The content type of a `/metrics` answer.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// A label value escaped per the format: backslash, double quote and
/// newline. Borrowed when there is nothing to escape, as in nearly every
/// value: a page of 10,000 endpoints escapes 20,000.
pub fn escape(s: &str) -> Cow<'_, str> {
    if !s.contains(['\\', '"', '\n']) {
        return Cow::Borrowed(s);
    }
    Cow::Owned(
        s.replace('\\', "\\\\")
            .replace('"', "\\\"")
            .replace('\n', "\\n"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_what_the_format_requires() {
        assert_eq!(escape("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
        assert_eq!(escape("plain"), "plain");
        assert!(
            matches!(escape("10.0.0.11"), Cow::Borrowed(_)),
            "nothing to escape, nothing allocated"
        );
    }
}
