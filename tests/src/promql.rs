//! What a PromQL expression asks of a Prometheus scrape: the metric names it selects, the
//! label matchers on them and the labels it groups by, checked against a real `/metrics`
//! text, so a dashboard that names a metric or label value the relay does not export fails
//! a test instead of drawing an empty panel.
//!
//! Not a PromQL parser: a tokenizer that knows which identifiers are functions, keywords
//! and label lists, which is all a metric name check needs.

use std::collections::{BTreeMap, BTreeSet};

/// One label matcher of a selector: `label op "value"`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Matcher {
    pub label: String,
    /// `=`, `!=`, `=~` or `!~`.
    pub op: String,
    pub value: String,
}

/// `metric{matchers}` as the expression names it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Selector {
    pub metric: String,
    pub matchers: Vec<Matcher>,
}

/// What one expression selects and groups by.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Query {
    pub selectors: Vec<Selector>,
    /// Labels of `by (…)`, `without (…)`, `on (…)`, `ignoring (…)`, `group_left (…)`.
    pub grouping: Vec<String>,
}

/// Aggregation operators, binary keywords and literals: identifiers that are not metrics.
const KEYWORDS: &[&str] = &[
    "sum",
    "avg",
    "min",
    "max",
    "count",
    "stddev",
    "stdvar",
    "topk",
    "bottomk",
    "quantile",
    "count_values",
    "group",
    "limitk",
    "limit_ratio",
    "and",
    "or",
    "unless",
    "bool",
    "offset",
    "atan2",
    "inf",
    "nan",
];

/// Keywords followed by a parenthesised list of label names.
const LABEL_LISTS: &[&str] = &[
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
];

fn is_ident_start(c: char) -> bool {
    c.is_ascii_alphabetic() || c == '_' || c == ':'
}

fn is_ident(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == ':'
}

/// The metric selectors and grouping labels of `expr`.
pub fn parse(expr: &str) -> Result<Query, String> {
    let s: Vec<char> = expr.chars().collect();
    let mut q = Query::default();
    let mut i = 0;
    let skip_ws = |mut i: usize| {
        while i < s.len() && s[i].is_whitespace() {
            i += 1;
        }
        i
    };
    while i < s.len() {
        let c = s[i];
        if c.is_whitespace() {
            i += 1;
        } else if c == '"' || c == '\'' || c == '`' {
            i = string_end(&s, i)?;
        } else if c == '[' {
            // A range or subquery: durations and variables only.
            i = s[i..]
                .iter()
                .position(|&c| c == ']')
                .map(|p| i + p + 1)
                .ok_or_else(|| format!("unclosed [ in {expr}"))?;
        } else if c == '{' {
            // A selector without a metric name ({__name__=…}): not used by our dashboards.
            return Err(format!("a selector without a metric name in {expr}"));
        } else if c == '$' {
            // Grafana variables: $__rate_interval, ${x}, $instance.
            i += 1;
            if i < s.len() && s[i] == '{' {
                while i < s.len() && s[i] != '}' {
                    i += 1;
                }
                i += 1;
            } else {
                while i < s.len() && is_ident(s[i]) {
                    i += 1;
                }
            }
        } else if c.is_ascii_digit() || (c == '.' && s.get(i + 1).is_some_and(char::is_ascii_digit))
        {
            // Numbers and durations (5m, 1e3, 0.5).
            while i < s.len() && (s[i].is_ascii_alphanumeric() || s[i] == '.') {
                i += 1;
            }
        } else if is_ident_start(c) {
            let start = i;
            while i < s.len() && is_ident(s[i]) {
                i += 1;
            }
            let word: String = s[start..i].iter().collect();
            let next = skip_ws(i);
            let lower = word.to_ascii_lowercase();
            if LABEL_LISTS.contains(&lower.as_str()) {
                if s.get(next) == Some(&'(') {
                    let end = s[next..]
                        .iter()
                        .position(|&c| c == ')')
                        .map(|p| next + p)
                        .ok_or_else(|| format!("unclosed ( after {word} in {expr}"))?;
                    let list: String = s[next + 1..end].iter().collect();
                    q.grouping.extend(
                        list.split(',')
                            .map(str::trim)
                            .filter(|l| !l.is_empty())
                            .map(str::to_owned),
                    );
                    i = end + 1;
                }
            } else if KEYWORDS.contains(&lower.as_str()) || s.get(next) == Some(&'(') {
                // An aggregation, a keyword or a function call.
            } else {
                let mut matchers = Vec::new();
                if s.get(next) == Some(&'{') {
                    i = matchers_end(&s, next + 1, &mut matchers)
                        .map_err(|e| format!("{e} in {expr}"))?;
                }
                q.selectors.push(Selector {
                    metric: word,
                    matchers,
                });
            }
        } else {
            // Operators, parentheses, commas.
            i += 1;
        }
    }
    Ok(q)
}

/// The index after the string literal starting at `i`.
fn string_end(s: &[char], i: usize) -> Result<usize, String> {
    let quote = s[i];
    let mut j = i + 1;
    while j < s.len() {
        if s[j] == '\\' && quote != '`' {
            j += 2;
        } else if s[j] == quote {
            return Ok(j + 1);
        } else {
            j += 1;
        }
    }
    Err("unclosed string".to_owned())
}

/// Parses `label op "value", …}` from `i` (after `{`); the index after `}`.
fn matchers_end(s: &[char], mut i: usize, out: &mut Vec<Matcher>) -> Result<usize, String> {
    loop {
        while i < s.len() && (s[i].is_whitespace() || s[i] == ',') {
            i += 1;
        }
        match s.get(i) {
            None => return Err("unclosed {".to_owned()),
            Some('}') => return Ok(i + 1),
            Some(_) => {}
        }
        let start = i;
        while i < s.len() && is_ident(s[i]) {
            i += 1;
        }
        let label: String = s[start..i].iter().collect();
        while i < s.len() && s[i].is_whitespace() {
            i += 1;
        }
        let op_start = i;
        while i < s.len() && "=!~".contains(s[i]) {
            i += 1;
        }
        let op: String = s[op_start..i].iter().collect();
        while i < s.len() && s[i].is_whitespace() {
            i += 1;
        }
        if label.is_empty() || !["=", "!=", "=~", "!~"].contains(&op.as_str()) {
            return Err(format!("bad label matcher at `{label}{op}`"));
        }
        if !matches!(s.get(i), Some('"' | '\'' | '`')) {
            return Err(format!("label {label}: value is not a string"));
        }
        let end = string_end(s, i)?;
        let value: String = s[i + 1..end - 1].iter().collect();
        out.push(Matcher { label, op, value });
        i = end;
    }
}

/// The samples of a Prometheus or OpenMetrics text: per sample name (`relay_packets_total`,
/// `x_bucket`, as PromQL sees them), each label with the values it takes.
#[derive(Debug, Default)]
pub struct Scrape {
    pub series: BTreeMap<String, BTreeMap<String, BTreeSet<String>>>,
}

impl Scrape {
    pub fn parse(text: &str) -> Result<Scrape, String> {
        let mut scrape = Scrape::default();
        for line in text
            .lines()
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
        {
            let name_end = line.find(['{', ' ']).unwrap_or(line.len());
            let labels = scrape
                .series
                .entry(line[..name_end].to_owned())
                .or_default();
            if line[name_end..].starts_with('{') {
                let s: Vec<char> = line[name_end..].chars().collect();
                let mut matchers = Vec::new();
                matchers_end(&s, 1, &mut matchers).map_err(|e| format!("{e}: {line}"))?;
                for m in matchers {
                    labels.entry(m.label).or_default().insert(m.value);
                }
            }
        }
        Ok(scrape)
    }

    /// What in `expr` this scrape lacks, one line each; empty when it has all of it.
    /// `added` are labels Prometheus adds to every series (`instance`, `job`).
    pub fn missing(&self, expr: &str, added: &[&str]) -> Vec<String> {
        let q = match parse(expr) {
            Ok(q) => q,
            Err(e) => return vec![e],
        };
        let mut out = Vec::new();
        if q.selectors.is_empty() {
            out.push(format!("no metric in `{expr}`"));
        }
        let mut labels_seen = BTreeSet::new();
        for sel in &q.selectors {
            let Some(labels) = self.series.get(&sel.metric) else {
                out.push(format!(
                    "`{}` is not in /metrics{}",
                    sel.metric,
                    self.hint(&sel.metric)
                ));
                continue;
            };
            labels_seen.extend(labels.keys().cloned());
            for m in sel.matchers.iter().filter(|m| !added.contains(&&*m.label)) {
                let Some(values) = labels.get(&m.label) else {
                    out.push(format!("`{}` has no label `{}`", sel.metric, m.label));
                    continue;
                };
                for v in literal_values(m) {
                    if !values.contains(v) {
                        out.push(format!(
                            "`{}` has no {}=\"{v}\" (it has {values:?})",
                            sel.metric, m.label
                        ));
                    }
                }
            }
        }
        // A label no selected metric has (only judged when all of them exist).
        let all_found = out.is_empty();
        for l in &q.grouping {
            if all_found && !added.contains(&l.as_str()) && !labels_seen.contains(l) {
                out.push(format!("no metric of `{expr}` has the label `{l}`"));
            }
        }
        out
    }

    /// Names a counter or histogram sample would have, for a name given without the suffix.
    fn hint(&self, name: &str) -> String {
        let near: Vec<&str> = self
            .series
            .keys()
            .filter(|k| k.starts_with(name) || name.starts_with(k.as_str()))
            .map(String::as_str)
            .collect();
        if near.is_empty() {
            String::new()
        } else {
            format!(" (did you mean {near:?}?)")
        }
    }
}

/// The exact values a matcher names: its value for `=`/`!=`, the alternatives of a
/// regex that is a plain `a|b|c` list; nothing for a pattern or a Grafana variable.
fn literal_values(m: &Matcher) -> Vec<&str> {
    if m.value.contains('$') || m.value.is_empty() {
        return Vec::new();
    }
    match m.op.as_str() {
        "=" | "!=" => vec![m.value.as_str()],
        _ if m.value.chars().all(|c| is_ident(c) || c == '|') => m.value.split('|').collect(),
        _ => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SCRAPE: &str = "# TYPE relay_packets counter\n\
        relay_packets_total{path=\"xdp\",direction=\"to_peer\"} 3\n\
        relay_packets_total{path=\"udp\",direction=\"to_peer\"} 1\n\
        # TYPE relay_draining gauge\n\
        relay_draining 0\n\
        # TYPE rtt histogram\n\
        rtt_bucket{le=\"0.1\"} 1\n\
        rtt_sum 0.05\n\
        rtt_count 1\n\
        # EOF\n";

    fn names(expr: &str) -> Vec<String> {
        parse(expr)
            .unwrap()
            .selectors
            .into_iter()
            .map(|s| s.metric)
            .collect()
    }

    #[test]
    fn metrics_are_told_from_functions_keywords_and_labels() {
        assert_eq!(
            names(
                "sum by (path) (rate(relay_packets_total{path=\"xdp\",instance=~\"$instance\"}[$__rate_interval])) \
                 / on(instance) group_left max without (shard) (relay_allocations_max offset 5m) > bool 0.5"
            ),
            ["relay_packets_total", "relay_allocations_max"]
        );
        assert_eq!(
            names("histogram_quantile(0.99, sum by (le) (rate(rtt_bucket[5m:1m])))"),
            ["rtt_bucket"]
        );
        assert_eq!(
            names("8 * sum(increase(relay_bytes_total{reason!~\"a|b\"}[1h])) or vector(0)"),
            ["relay_bytes_total"]
        );
        let q = parse("sum by (reason, code) (x{a=\"1\", b!=\"two words\"})").unwrap();
        assert_eq!(q.grouping, ["reason", "code"]);
        assert_eq!(
            q.selectors[0].matchers[1],
            Matcher {
                label: "b".into(),
                op: "!=".into(),
                value: "two words".into()
            }
        );
    }

    #[test]
    fn a_metric_or_label_the_scrape_lacks_is_reported() {
        let s = Scrape::parse(SCRAPE).unwrap();
        let added = ["instance", "job"];
        assert!(
            s.missing(
                "sum by (instance, path) (rate(relay_packets_total{path=~\"xdp|udp\",instance=~\"$instance\"}[5m]))",
                &added
            )
            .is_empty()
        );
        assert!(
            s.missing("rate(rtt_sum[5m]) / rate(rtt_count[5m])", &added)
                .is_empty()
        );
        assert!(s.missing("max(relay_draining)", &added).is_empty());
        // A counter without its suffix, a histogram without its, a misspelt name.
        for expr in ["rate(relay_packets[5m])", "rtt", "relay_drainin"] {
            let m = s.missing(expr, &added);
            assert!(
                m.len() == 1 && m[0].contains("is not in /metrics"),
                "{expr}: {m:?}"
            );
        }
        let m = s.missing("relay_packets_total{path=\"tcp\"}", &added);
        assert!(m[0].contains("no path=\"tcp\""), "{m:?}");
        let m = s.missing("relay_packets_total{reason!~\"x\"}", &added);
        assert!(m[0].contains("no label `reason`"), "{m:?}");
        let m = s.missing("sum by (reason) (relay_packets_total)", &added);
        assert!(m[0].contains("the label `reason`"), "{m:?}");
        assert_eq!(s.missing("vector(1)", &added), ["no metric in `vector(1)`"]);
    }

    proptest::proptest! {
        #[test]
        fn any_text_is_parsed_or_refused_without_panicking(text in "\\PC{0,80}") {
            let _ = parse(&text);
            let _ = Scrape::parse(&text);
        }

        #[test]
        fn a_selector_in_an_aggregation_is_found_with_its_matcher(
            metric in "[a-z_][a-z0-9_]{0,20}",
            label in "[a-z_][a-z0-9_]{0,10}",
            value in "[a-z0-9_ |.]{0,12}",
            op in proptest::sample::select(vec!["=", "!=", "=~", "!~"]),
        ) {
            proptest::prop_assume!(
                !KEYWORDS.contains(&metric.as_str()) && !LABEL_LISTS.contains(&metric.as_str())
            );
            let expr = format!("sum by ({label}) (rate({metric}{{{label}{op}\"{value}\"}}[$__rate_interval])) * 8");
            let q = parse(&expr).unwrap();
            proptest::prop_assert_eq!(q.grouping, vec![label.clone()]);
            proptest::prop_assert_eq!(
                q.selectors,
                vec![Selector { metric, matchers: vec![Matcher { label, op: op.to_owned(), value }] }]
            );
        }
    }
}
