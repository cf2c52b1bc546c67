//! The Prometheus text exposition format (0.0.4): one `# HELP` and
//! `# TYPE` line per family, sanitised names, escaped label values.

use std::collections::BTreeMap;
use std::fmt::Write;

/// A metric name as Prometheus accepts it (`[a-zA-Z_:][a-zA-Z0-9_:]*`):
/// every other character becomes `_`, and a leading digit gets a `_` before it.
pub fn sanitize_name(name: &str) -> String {
    let mut out: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == ':' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if out.is_empty() || out.starts_with(|c: char| c.is_ascii_digit()) {
        out.insert(0, '_');
    }
    out
}

/// A label name (`[a-zA-Z_][a-zA-Z0-9_]*`, not `__`-prefixed, which
/// Prometheus reserves; `quantile` is the summary's own label).
fn sanitize_label(name: &str) -> String {
    let mut out = sanitize_name(name).replace(':', "_");
    while out.starts_with("__") {
        out.remove(0);
    }
    if out == "quantile" {
        out.push('_');
    }
    out
}

fn escape_value(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn number(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v == f64::INFINITY {
        "+Inf".into()
    } else if v == f64::NEG_INFINITY {
        "-Inf".into()
    } else {
        format!("{v}")
    }
}

fn label_set(labels: &BTreeMap<String, String>, extra: Option<(&str, String)>) -> String {
    let mut pairs: BTreeMap<String, String> = labels
        .iter()
        .map(|(k, v)| (sanitize_label(k), escape_value(v)))
        .collect();
    if let Some((k, v)) = extra {
        pairs.insert(k.to_owned(), v);
    }
    if pairs.is_empty() {
        return String::new();
    }
    let inner: Vec<String> = pairs.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
    format!("{{{}}}", inner.join(","))
}

/// Families in name order, each with its type and sample lines.
#[derive(Default)]
pub(crate) struct Exposition {
    families: BTreeMap<String, (&'static str, String, Vec<String>)>,
}

impl Exposition {
    fn family(
        &mut self,
        name: String,
        kind: &'static str,
        help: String,
    ) -> Option<&mut Vec<String>> {
        let entry = self
            .families
            .entry(name)
            .or_insert_with(|| (kind, help, Vec::new()));
        // Two names that sanitise to one family of another type: the first wins.
        (entry.0 == kind).then_some(&mut entry.2)
    }

    pub(crate) fn counter(&mut self, name: &str, labels: &BTreeMap<String, String>, total: f64) {
        let mut family = sanitize_name(name);
        if !family.ends_with("_total") {
            family.push_str("_total");
        }
        let line = format!("{family}{} {}", label_set(labels, None), number(total));
        if let Some(lines) = self.family(family, "counter", format!("Counter {name}.")) {
            lines.push(line);
        }
    }

    pub(crate) fn gauge(&mut self, name: &str, labels: &BTreeMap<String, String>, value: f64) {
        let family = sanitize_name(name);
        let line = format!("{family}{} {}", label_set(labels, None), number(value));
        if let Some(lines) = self.family(family, "gauge", format!("Gauge {name}.")) {
            lines.push(line);
        }
    }

    /// A timing in seconds: quantiles (NaN when unknown), sum and count.
    pub(crate) fn summary(
        &mut self,
        name: &str,
        labels: &BTreeMap<String, String>,
        quantiles: &[(f64, Option<f64>)],
        sum: f64,
        count: u64,
    ) {
        let mut family = sanitize_name(name);
        if !family.ends_with("_seconds") {
            family.push_str("_seconds");
        }
        let mut lines = Vec::with_capacity(quantiles.len() + 2);
        for (q, v) in quantiles {
            lines.push(format!(
                "{family}{} {}",
                label_set(labels, Some(("quantile", q.to_string()))),
                number(v.unwrap_or(f64::NAN))
            ));
        }
        let set = label_set(labels, None);
        lines.push(format!("{family}_sum{set} {}", number(sum)));
        lines.push(format!("{family}_count{set} {count}"));
        if let Some(out) = self.family(family, "summary", format!("Timing {name}, in seconds.")) {
            out.extend(lines);
        }
    }

    pub(crate) fn finish(self) -> String {
        let mut out = String::new();
        for (name, (kind, help, lines)) in self.families {
            let help = help.replace('\\', "\\\\").replace('\n', "\\n");
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} {kind}");
            for line in lines {
                let _ = writeln!(out, "{line}");
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_values() {
        assert_eq!(sanitize_name("api.calls-v2"), "api_calls_v2");
        assert_eq!(sanitize_name("9lives"), "_9lives");
        assert_eq!(sanitize_label("__x"), "_x");
        assert_eq!(escape_value("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
        assert_eq!(number(f64::INFINITY), "+Inf");
    }
}
