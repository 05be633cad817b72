//! The relay's `/metrics` as numbers, for tests that read counters (before and after what
//! they do: the flood's drop reasons, the abuse test's rate-limit drops, the admin API's
//! series).

use std::collections::BTreeMap;

use relay_tools::status::AdminClient;

use crate::Netns;

/// The samples of a Prometheus or OpenMetrics text, by series (`name{labels}` as printed).
#[derive(Clone, Debug, Default)]
pub struct Metrics(pub BTreeMap<String, f64>);

impl Metrics {
    /// `GET /metrics` from the admin API at `admin` (an address inside `ns`), with
    /// `token` if the API has one.
    pub fn scrape(ns: &Netns, admin: &str, token: Option<&str>) -> Metrics {
        let client = AdminClient::new(
            admin
                .parse()
                .unwrap_or_else(|e| panic!("admin address {admin}: {e}")),
            token.map(str::to_owned),
        );
        let (code, text) = ns
            .run(move || client.get("/metrics"))
            .expect("enter the relay's namespace")
            .unwrap_or_else(|e| panic!("/metrics from {admin}: {e}"));
        assert_eq!(code, 200, "/metrics from {admin}: {text}");
        Metrics::parse(&text)
    }

    pub fn parse(text: &str) -> Metrics {
        let samples = text
            .lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
            .filter_map(|l| {
                let (series, value) = l.rsplit_once(' ')?;
                Some((series.to_owned(), value.parse().ok()?))
            })
            .collect();
        Metrics(samples)
    }

    /// The value of `series`, which must be there.
    pub fn get(&self, series: &str) -> f64 {
        *self
            .0
            .get(series)
            .unwrap_or_else(|| panic!("no series {series} in {:?}", self.0.keys()))
    }

    /// The value of `series`, 0 if absent (a counter not yet touched).
    pub fn value(&self, series: &str) -> f64 {
        self.0.get(series).copied().unwrap_or(0.0)
    }

    /// Sum over every series of metric `name`.
    pub fn sum(&self, name: &str) -> f64 {
        self.0
            .iter()
            .filter(|(s, _)| *s == name || s.starts_with(&format!("{name}{{")))
            .map(|(_, v)| v)
            .sum()
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn series_values_and_sums() {
        let m = super::Metrics::parse(
            "# HELP relay_allocations_active x\n\
             relay_allocations_active{thread=\"0\"} 3\n\
             relay_allocations_active{thread=\"1\"} 4\n\
             relay_allocations_active_max 9\n\
             relay_drops_total{reason=\"a b\"} 1.5\n",
        );
        assert_eq!(m.get("relay_drops_total{reason=\"a b\"}"), 1.5);
        assert_eq!(m.value("relay_drops_total{reason=\"c\"}"), 0.0);
        assert_eq!(m.sum("relay_allocations_active"), 7.0);
    }
}
