//! Taking one parameter out of a raw query string.

/// Finds the parameter `name` in `query` (a raw query string, without the
/// `?`) and removes it.
///
/// Returns the first value of the parameter, percent-decoded (`+` read as a
/// space), and, if the parameter occurs at all, the query without any of its
/// occurrences. Names are compared after decoding, so `api%6Bey=...` is the
/// parameter `apikey`. The other parameters are kept byte for byte and in
/// order; empty segments (`a=1&&b=2`) are dropped from the rewritten query.
/// The rewritten query is empty when nothing else remains.
pub(crate) fn take_param(query: &str, name: &str) -> (Option<String>, Option<String>) {
    let mut value = None;
    let mut found = false;
    let mut kept = Vec::new();
    for segment in query.split('&').filter(|s| !s.is_empty()) {
        match form_urlencoded::parse(segment.as_bytes()).next() {
            Some((key, val)) if key == name => {
                found = true;
                value.get_or_insert_with(|| val.into_owned());
            }
            _ => kept.push(segment),
        }
    }
    (value, found.then(|| kept.join("&")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn take(query: &str) -> (Option<String>, Option<String>) {
        take_param(query, "apikey")
    }

    fn some(s: &str) -> Option<String> {
        Some(s.to_owned())
    }

    #[test]
    fn the_parameter_is_removed_and_the_rest_kept_byte_for_byte() {
        assert_eq!(take("apikey=k&page=2"), (some("k"), some("page=2")));
        assert_eq!(take("page=2&apikey=k"), (some("k"), some("page=2")));
        assert_eq!(
            take("sort=name%20asc&apikey=k&q=a+b&x=%2F"),
            (some("k"), some("sort=name%20asc&q=a+b&x=%2F"))
        );
    }

    #[test]
    fn a_query_left_empty_is_empty() {
        assert_eq!(take("apikey=k"), (some("k"), some("")));
        assert_eq!(take("apikey=k&apikey=other"), (some("k"), some("")));
    }

    #[test]
    fn values_and_names_are_decoded() {
        assert_eq!(take("apikey=a%2Bb%20c+d"), (some("a+b c d"), some("")));
        assert_eq!(take("api%6Bey=k&z=1"), (some("k"), some("z=1")));
        assert_eq!(take("apikey&z=1"), (some(""), some("z=1")));
        assert_eq!(take("apikey=&z=1"), (some(""), some("z=1")));
    }

    #[test]
    fn the_first_value_wins_and_every_occurrence_goes() {
        assert_eq!(
            take("apikey=one&a=1&apikey=two"),
            (some("one"), some("a=1"))
        );
    }

    #[test]
    fn a_query_without_the_parameter_is_left_alone() {
        assert_eq!(take("page=2&apikeys=k&xapikey=k"), (None, None));
        assert_eq!(take(""), (None, None));
        assert_eq!(take("APIKEY=k"), (None, None), "names are case-sensitive");
    }

    #[test]
    fn empty_segments_are_dropped_when_rewriting() {
        assert_eq!(take("a=1&&apikey=k&&b=2&"), (some("k"), some("a=1&b=2")));
    }
}
