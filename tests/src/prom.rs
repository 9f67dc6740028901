//! A strict reader of the Prometheus text exposition format (0.0.4), for
//! tests that check what `/metrics` says: every line must be a comment, a
//! `# HELP`/`# TYPE`/`# UNIT` line, or a well-formed sample of a family
//! declared by a `# TYPE` line before it. Anything else is an error, so a
//! test that reads the metrics also proves that a Prometheus server could.

use std::collections::{BTreeMap, HashMap};

/// One sample: metric name, labels, value.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// The sample's name (`portcullis_requests_total`).
    pub name: String,
    /// Its labels.
    pub labels: BTreeMap<String, String>,
    /// Its value.
    pub value: f64,
}

/// A parsed scrape.
#[derive(Debug, Clone, Default)]
pub struct Scrape {
    /// Every sample, in order.
    pub samples: Vec<Sample>,
    /// Family name to its type (`counter`, `gauge`, `histogram`...).
    pub types: HashMap<String, String>,
}

/// The suffixes a family's samples may add to its name.
const SUFFIXES: [&str; 7] = [
    "", "_total", "_count", "_sum", "_bucket", "_created", "_info",
];

fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

fn parse_value(text: &str) -> Option<f64> {
    match text {
        "+Inf" | "Inf" => Some(f64::INFINITY),
        "-Inf" => Some(f64::NEG_INFINITY),
        "NaN" => Some(f64::NAN),
        _ => text.parse().ok(),
    }
}

/// Parses `{a="x",b="y"}` at the start of `rest`; returns the labels and
/// what follows the closing brace.
fn parse_labels(rest: &str) -> Result<(BTreeMap<String, String>, &str), String> {
    let mut labels = BTreeMap::new();
    let mut rest = rest.strip_prefix('{').ok_or("labels must start with `{`")?;
    loop {
        rest = rest.trim_start_matches(' ');
        if let Some(after) = rest.strip_prefix('}') {
            return Ok((labels, after));
        }
        let eq = rest.find('=').ok_or("a label without `=`")?;
        let name = &rest[..eq];
        if !valid_name(name) || name.contains(':') {
            return Err(format!("bad label name `{name}`"));
        }
        rest = rest[eq + 1..]
            .strip_prefix('"')
            .ok_or("a label value must be quoted")?;
        let mut value = String::new();
        let mut chars = rest.char_indices();
        let end = loop {
            match chars.next() {
                Some((i, '"')) => break i,
                Some((_, '\\')) => match chars.next() {
                    Some((_, '\\')) => value.push('\\'),
                    Some((_, '"')) => value.push('"'),
                    Some((_, 'n')) => value.push('\n'),
                    other => return Err(format!("bad escape in a label value: {other:?}")),
                },
                Some((_, '\n')) | None => return Err("unterminated label value".into()),
                Some((_, c)) => value.push(c),
            }
        };
        if labels.insert(name.to_owned(), value).is_some() {
            return Err(format!("label `{name}` twice"));
        }
        rest = &rest[end + 1..];
        if let Some(after) = rest.strip_prefix(',') {
            rest = after;
        } else if !rest.starts_with('}') {
            return Err("labels must be separated by `,`".into());
        }
    }
}

impl Scrape {
    /// Parses a whole exposition; an error names the line.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut scrape = Scrape::default();
        for (n, line) in text.lines().enumerate() {
            scrape
                .line(line)
                .map_err(|e| format!("line {}: {e}: {line:?}", n + 1))?;
        }
        Ok(scrape)
    }

    fn line(&mut self, line: &str) -> Result<(), String> {
        if line.is_empty() {
            return Ok(());
        }
        if let Some(comment) = line.strip_prefix('#') {
            let mut words = comment.trim_start().splitn(3, ' ');
            let (kind, name, rest) = (words.next(), words.next(), words.next());
            match (kind, name) {
                (Some("TYPE"), Some(name)) => {
                    if !valid_name(name) {
                        return Err(format!("bad family name `{name}`"));
                    }
                    let kind = rest.unwrap_or("");
                    if ![
                        "counter",
                        "gauge",
                        "histogram",
                        "summary",
                        "untyped",
                        "info",
                        "stateset",
                        "unknown",
                    ]
                    .contains(&kind)
                    {
                        return Err(format!("unknown type `{kind}`"));
                    }
                    if self
                        .types
                        .insert(name.to_owned(), kind.to_owned())
                        .is_some()
                    {
                        return Err(format!("`{name}` declared twice"));
                    }
                }
                (Some("HELP" | "UNIT"), Some(name)) if !valid_name(name) => {
                    return Err(format!("bad family name `{name}`"));
                }
                _ => {}
            }
            return Ok(());
        }
        let name_end = line.find(['{', ' ']).ok_or("a sample without a value")?;
        let name = &line[..name_end];
        if !valid_name(name) {
            return Err(format!("bad metric name `{name}`"));
        }
        let family = SUFFIXES
            .iter()
            .filter_map(|s| name.strip_suffix(s))
            .find(|f| self.types.contains_key(*f))
            .ok_or_else(|| format!("`{name}` belongs to no family declared by # TYPE"))?;
        let (labels, rest) = if line[name_end..].starts_with('{') {
            parse_labels(&line[name_end..])?
        } else {
            (BTreeMap::new(), &line[name_end..])
        };
        let mut fields = rest.split_whitespace();
        let value = fields
            .next()
            .and_then(parse_value)
            .ok_or("a sample without a valid value")?;
        if let Some(ts) = fields.next()
            && ts.parse::<i64>().is_err()
        {
            return Err(format!("bad timestamp `{ts}`"));
        }
        if fields.next().is_some() {
            return Err("trailing text after the sample".into());
        }
        let kind = self.types.get(family).map(String::as_str).unwrap_or("");
        if kind == "counter" && (value.is_nan() || value < 0.0) {
            return Err(format!("counter `{name}` is {value}"));
        }
        self.samples.push(Sample {
            name: name.to_owned(),
            labels,
            value,
        });
        Ok(())
    }

    /// The sum of the samples named `name` whose labels include every one
    /// of `labels` (0 when there is none).
    pub fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.matching(name, labels).map(|s| s.value).sum()
    }

    /// The samples named `name` whose labels include every one of `labels`.
    pub fn matching<'a>(
        &'a self,
        name: &'a str,
        labels: &'a [(&'a str, &'a str)],
    ) -> impl Iterator<Item = &'a Sample> + 'a {
        self.samples.iter().filter(move |s| {
            s.name == name
                && labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).is_some_and(|x| x == v))
        })
    }

    /// The one sample named `name` with exactly `labels`; panics naming
    /// what is there when there is none.
    #[track_caller]
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let wanted: BTreeMap<String, String> = labels
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        match self
            .samples
            .iter()
            .find(|s| s.name == name && s.labels == wanted)
        {
            Some(s) => s.value,
            None => panic!(
                "no sample {name}{wanted:?}; samples of that name: {:?}",
                self.samples
                    .iter()
                    .filter(|s| s.name == name)
                    .map(|s| &s.labels)
                    .collect::<Vec<_>>()
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_families_samples_and_escapes() {
        let text = "# HELP x_total Things.\n# TYPE x counter\nx_total{a=\"1\",b=\"q\\\"\\\\\"} 3\n# TYPE h histogram\nh_bucket{le=\"+Inf\"} 2\nh_count 2\nh_sum 0.5\n";
        let scrape = Scrape::parse(text).expect("parses");
        assert_eq!(scrape.value("x_total", &[("a", "1"), ("b", "q\"\\")]), 3.0);
        assert_eq!(scrape.sum("h_count", &[]), 2.0);
        assert_eq!(scrape.sum("h_bucket", &[("le", "+Inf")]), 2.0);
    }

    #[test]
    fn refuses_what_prometheus_would_refuse() {
        for bad in [
            "undeclared 1",
            "# TYPE x counter\nx_total 1 2 3",
            "# TYPE x counter\nx_total{a=1} 1",
            "# TYPE x counter\nx_total{a=\"1\" 1",
            "# TYPE x counter\nx_total -1",
            "# TYPE x counter\nx_total one",
            "# TYPE x nonsense",
            "# TYPE 1x counter",
        ] {
            assert!(Scrape::parse(bad).is_err(), "{bad:?} was accepted");
        }
    }
}
