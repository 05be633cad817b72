//! The Grafana dashboard (`deploy/grafana/relay.json`) queries only what the relay
//! exports: every PromQL expression's metrics, label matchers (with their literal values)
//! and grouping labels are looked up in a real `/metrics` scrape of the daemon, run in the
//! namespace topology with everything that adds metric families on (the XDP fast path on
//! both NICs, TCP listeners). And the dashboard imports anywhere: its data source is the
//! `DS_PROMETHEUS` input and variable, never a fixed one.
//!
//! Needs root, nftables and `target/debug/relay` (`cargo build -p relay-user`).

use std::{collections::BTreeSet, path::Path, time::Duration};

use relay_tests::{
    Topology, TopologyOptions,
    fixture::{Deployment, Listen, RelayConfig, start_relay},
    promql::Scrape,
};
use relay_tools::status::AdminClient;
use serde_json::Value;

const ADMIN: &str = "127.0.0.1:9641";
const TOKEN: &str = "grafana-test-token";
/// The data source every panel and query must name.
const DATASOURCE_UID: &str = "${DS_PROMETHEUS}";
/// Labels Prometheus adds to every series it scrapes.
const ADDED_LABELS: &[&str] = &["instance", "job"];

fn dashboard() -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/grafana/relay.json");
    let text =
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()))
}

/// Every panel, those inside collapsed rows included.
fn panels(dash: &Value) -> Vec<&Value> {
    let mut out = Vec::new();
    for p in dash["panels"].as_array().expect("panels") {
        out.push(p);
        if let Some(inner) = p["panels"].as_array() {
            out.extend(inner);
        }
    }
    out
}

/// `(where, expr)` of every PromQL query: panel targets and the query variables
/// (`label_values(metric, label)` checked as its metric).
fn queries(dash: &Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for p in panels(dash) {
        for t in p["targets"].as_array().into_iter().flatten() {
            let expr = t["expr"]
                .as_str()
                .unwrap_or_else(|| panic!("panel {}: a target without expr: {t}", p["title"]));
            out.push((format!("panel {}", p["title"]), expr.to_owned()));
        }
    }
    for v in dash["templating"]["list"].as_array().expect("templating") {
        if v["type"] != "query" {
            continue;
        }
        let q = v["query"]["query"]
            .as_str()
            .or(v["query"].as_str())
            .expect("a query variable's query");
        let expr = q
            .strip_prefix("label_values(")
            .and_then(|r| r.rsplit_once(','))
            .map_or(q, |(metric, _label)| metric);
        out.push((format!("variable {}", v["name"]), expr.to_owned()));
    }
    out
}

#[test]
fn the_dashboard_imports_anywhere() {
    let dash = dashboard();
    let inputs = dash["__inputs"].as_array().expect("__inputs");
    assert!(
        inputs
            .iter()
            .any(|i| i["name"] == "DS_PROMETHEUS" && i["pluginId"] == "prometheus"),
        "{inputs:?}"
    );
    assert!(
        dash["templating"]["list"]
            .as_array()
            .unwrap()
            .iter()
            .any(|v| v["name"] == "DS_PROMETHEUS" && v["type"] == "datasource"),
        "no DS_PROMETHEUS data source variable (file provisioning ignores __inputs)"
    );
    let mut ids = BTreeSet::new();
    for p in panels(&dash) {
        let title = &p["title"];
        assert!(
            ids.insert(p["id"].as_u64().expect("id")),
            "id twice: {title}"
        );
        let g = &p["gridPos"];
        let (x, w) = (g["x"].as_u64().unwrap(), g["w"].as_u64().unwrap());
        assert!(x + w <= 24 && g["h"].as_u64().unwrap() > 0, "{title}: {g}");
        if p["type"] == "row" {
            continue;
        }
        assert!(
            p["description"].as_str().is_some_and(|d| !d.is_empty()),
            "{title}: say what the panel answers"
        );
        assert_eq!(p["datasource"]["uid"], DATASOURCE_UID, "{title}");
        let targets = p["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "{title}");
        for t in targets {
            assert_eq!(t["datasource"]["uid"], DATASOURCE_UID, "{title}: {t}");
        }
    }
}

#[test]
fn every_dashboard_query_names_what_metrics_exports() {
    let dash = dashboard();
    let queries = queries(&dash);
    assert!(queries.len() >= 20, "{queries:?}");

    let config = |t: &Topology| {
        let a = t.addrs;
        RelayConfig {
            listen: Listen::both_nics(&a, 3478, &["udp", "tcp"]),
            sections: format!(
                "[admin]\naddress = \"{ADMIN}\"\ntoken = \"{TOKEN}\"\n\n\
                 [xdp]\ninterfaces = [\"{}\", \"{}\"]\nmode = \"native\"\nforwarding = \"auto\"\n",
                t.relay_external_if, t.relay_internal_if
            ),
            ..RelayConfig::deployment(&a)
        }
        .to_string()
    };
    let env = Deployment::start_kernel_path(TopologyOptions::default(), |t| {
        start_relay(&t.relay, &config(t))
    });
    env.relay
        .wait_for_log("admin API listening", Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("{e}"));
    let client = AdminClient::new(ADMIN.parse().unwrap(), Some(TOKEN.to_owned()));
    let (code, text) = env
        .topo
        .relay
        .run(move || client.get("/metrics"))
        .expect("enter relay namespace")
        .unwrap_or_else(|e| panic!("{}", env.with_log(format!("/metrics: {e}"))));
    assert_eq!(code, 200, "{text}");
    let scrape = Scrape::parse(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    // The families that exist only with the fast path and TCP on are there: the check
    // below sees every family the dashboard may use.
    for family in ["relay_xdp_packets_total", "relay_tcp_connections_open"] {
        assert!(scrape.series.contains_key(family), "{family}:\n{text}");
    }

    let problems: Vec<String> = queries
        .iter()
        .flat_map(|(place, expr)| {
            scrape
                .missing(expr, ADDED_LABELS)
                .into_iter()
                .map(move |m| format!("{place}: {m}\n    {expr}"))
        })
        .collect();
    assert!(
        problems.is_empty(),
        "the dashboard queries what /metrics lacks:\n{}\n----- /metrics -----\n{text}",
        problems.join("\n")
    );
}
