//! A reader for the Prometheus text exposition format, enough to check what ztunnel reports:
//! samples with their labels, and sums over the samples that match some labels.

use std::collections::BTreeMap;

/// One sample line.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// Metric name (with any `_total`/`_bucket` suffix as exposed).
    pub name: String,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// Value.
    pub value: f64,
}

impl Sample {
    /// The value of a label, or "".
    pub fn label(&self, k: &str) -> &str {
        self.labels.get(k).map(String::as_str).unwrap_or("")
    }
}

/// Parses exposition text; comment lines are skipped, and so are lines that do not parse
/// (the caller asserts on what it expects to find, so a skipped line shows up there).
pub fn parse(text: &str) -> Vec<Sample> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(parse_line)
        .collect()
}

fn parse_line(line: &str) -> Option<Sample> {
    let (name, labels, rest) = match line.find('{') {
        Some(open) => {
            let (labels, close) = parse_labels(&line[open + 1..])?;
            (&line[..open], labels, &line[open + 1 + close..])
        }
        None => {
            let sp = line.find(char::is_whitespace)?;
            (&line[..sp], BTreeMap::new(), &line[sp..])
        }
    };
    let value = rest.split_whitespace().next()?;
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v.parse().ok()?,
    };
    Some(Sample {
        name: name.to_string(),
        labels,
        value,
    })
}

/// Parses `k="v",...}`; returns the labels and the offset just past the closing brace.
fn parse_labels(s: &str) -> Option<(BTreeMap<String, String>, usize)> {
    let mut labels = BTreeMap::new();
    let b = s.as_bytes();
    let mut i = 0;
    loop {
        while i < b.len() && (b[i] == b',' || b[i] == b' ') {
            i += 1;
        }
        if i < b.len() && b[i] == b'}' {
            return Some((labels, i + 1));
        }
        let eq = i + s[i..].find('=')?;
        let key = s[i..eq].trim().to_string();
        if b.get(eq + 1) != Some(&b'"') {
            return None;
        }
        let mut j = eq + 2;
        let mut val = String::new();
        loop {
            match *b.get(j)? {
                b'\\' => {
                    match *b.get(j + 1)? {
                        b'n' => val.push('\n'),
                        c => val.push(c as char),
                    }
                    j += 2;
                }
                b'"' => break,
                _ => {
                    let ch = s[j..].chars().next()?;
                    val.push(ch);
                    j += ch.len_utf8();
                }
            }
        }
        labels.insert(key, val);
        i = j + 1;
    }
}

/// Sum of the samples named `name` whose labels include every `(key, value)` of `want`.
pub fn sum(samples: &[Sample], name: &str, want: &[(&str, &str)]) -> f64 {
    matching(samples, name, want).map(|s| s.value).sum()
}

/// The samples named `name` whose labels include every `(key, value)` of `want`.
pub fn matching<'a>(
    samples: &'a [Sample],
    name: &'a str,
    want: &'a [(&'a str, &'a str)],
) -> impl Iterator<Item = &'a Sample> + 'a {
    samples
        .iter()
        .filter(move |s| s.name == name && want.iter().all(|(k, v)| s.label(k) == *v))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_labels_values_and_escapes() {
        let text = "# HELP x help\n# TYPE x counter\n\
            istio_tcp_connections_opened_total{reporter=\"destination\",source_principal=\"spiffe://cluster.local/ns/default/sa/sleep\",q=\"a\\\"b\"} 3\n\
            istio_build{component=\"ztunnel\",tag=\"0.1.0\"} 1\n\
            plain 2.5\n\
            broken{x=1} 4\n";
        let s = parse(text);
        assert_eq!(s.len(), 3, "{s:?}");
        assert_eq!(
            s[0].label("source_principal"),
            "spiffe://cluster.local/ns/default/sa/sleep"
        );
        assert_eq!(s[0].label("q"), "a\"b");
        assert_eq!(s[2].value, 2.5);
        assert_eq!(
            sum(
                &s,
                "istio_tcp_connections_opened_total",
                &[("reporter", "destination")]
            ),
            3.0
        );
        assert_eq!(
            sum(
                &s,
                "istio_tcp_connections_opened_total",
                &[("reporter", "source")]
            ),
            0.0
        );
    }
}
