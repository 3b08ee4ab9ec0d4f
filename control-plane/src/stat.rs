//! `weftctl stat`: live traffic per service, route, backend or caller, as `linkerd viz stat`
//! shows it: success rate, requests per second and latency percentiles, from the Prometheus
//! that scrapes the sidecars (`docs/observability.md`).
//!
//! What is asked of Prometheus is built here from the sidecars' series (`docs/metrics.md`);
//! `weftctl` sends the queries and prints [`table`].

use std::{collections::BTreeMap, time::Duration};

/// How rows are grouped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum By {
    /// One row per service (what callers' sidecars saw, outbound).
    Service,
    /// One row per route of each service.
    Route,
    /// One row per backend of each route (a canary's backends apart).
    Backend,
    /// One row per caller identity (inbound, mutual TLS): requests per second only, as the
    /// inbound series by caller carry no status or latency.
    Caller,
}

/// One `weftctl stat`: a service (or all), the grouping, and the window rates are taken over.
#[derive(Debug, Clone)]
pub struct Stat {
    /// `host:port`, or a host (every port of it); `None`: every service.
    pub service: Option<String>,
    pub by: By,
    pub window: Duration,
}

/// What a row shows, one query each.
pub const COLUMNS: [&str; 5] = [
    "RPS",
    "SUCCESS",
    "LATENCY_P50",
    "LATENCY_P95",
    "LATENCY_P99",
];

impl Stat {
    /// A `weftctl stat`; the error names what cannot be asked: a service with `--by caller`
    /// (the inbound series by caller name no service, so its rows would be every service's).
    pub fn new(service: Option<String>, by: By, window: Duration) -> Result<Self, String> {
        if let (Some(svc), By::Caller) = (&service, by) {
            return Err(format!(
                "--by caller counts every caller of every meshed workload: it cannot be limited to {svc}; leave the service out"
            ));
        }
        if window.is_zero() {
            return Err("--window must be longer than 0s".into());
        }
        Ok(Stat {
            service,
            by,
            window,
        })
    }

    /// The labels rows are grouped by.
    fn labels(&self) -> &'static [&'static str] {
        match self.by {
            By::Service => &["target"],
            By::Route => &["target", "route"],
            By::Backend => &["target", "route", "backend"],
            By::Caller => &["client_id"],
        }
    }

    /// The selector of the series counted: outbound responses of the service (of its routed
    /// requests, grouped by route or backend).
    fn selector(&self, extra: &str) -> String {
        let mut s = String::from(r#"direction="outbound""#);
        if let Some(svc) = &self.service {
            // A host alone means each of its ports.
            let re = if svc.contains(':') {
                regex_quote(svc)
            } else {
                format!("{}:[0-9]+", regex_quote(svc))
            };
            s += &format!(r#",target=~"{}""#, promql_string(&re));
        }
        if matches!(self.by, By::Route | By::Backend) {
            s += r#",route!="""#;
        }
        s + extra
    }

    /// The five queries, in [`COLUMNS`]' order; for `--by caller` only the first (requests per
    /// second), the rest `None`.
    pub fn queries(&self) -> [Option<String>; 5] {
        let w = prom_duration(self.window);
        let by = self.labels().join(", ");
        if self.by == By::Caller {
            let rps = format!(
                r#"sum by ({by}) (rate(weft_inbound_peer_requests_total{{tls="true"}}[{w}]))"#
            );
            return [Some(rps), None, None, None, None];
        }
        let all = self.selector("");
        let rate = |sel: &str| format!("sum by ({by}) (rate(weft_response_total{{{sel}}}[{w}]))");
        // A failure: a 5xx, or a gRPC status other than OK.
        let good = self.selector(r#",status_code!~"5..",grpc_status=~"|0""#);
        let quantile = |q: &str| {
            format!(
                "histogram_quantile({q}, sum by ({by}, le) (rate(weft_response_latency_seconds_bucket{{{all}}}[{w}])))"
            )
        };
        [
            Some(rate(&all)),
            // A group without one good response has no series on the left: `or` makes it 0.
            Some(format!(
                "({} or 0 * {}) / {}",
                rate(&good),
                rate(&all),
                rate(&all)
            )),
            Some(quantile("0.5")),
            Some(quantile("0.95")),
            Some(quantile("0.99")),
        ]
    }
}

/// A row's key: its grouping labels' values.
type Key = Vec<String>;

/// The rows of the five answers (Prometheus' `/api/v1/query` JSON, `None` where no query was
/// made), joined on the grouping labels, as a table. The error names what was not understood.
pub fn table(stat: &Stat, answers: &[Option<serde_json::Value>; 5]) -> Result<String, String> {
    let labels = stat.labels();
    let mut rows: BTreeMap<Key, [Option<f64>; 5]> = BTreeMap::new();
    for (i, answer) in answers.iter().enumerate() {
        let Some(answer) = answer else { continue };
        if answer["status"] != "success" {
            return Err(format!(
                "Prometheus refused the {} query: {}",
                COLUMNS[i],
                answer["error"].as_str().unwrap_or("no reason given")
            ));
        }
        let result = answer["data"]["result"]
            .as_array()
            .ok_or_else(|| format!("the {} answer has no data.result", COLUMNS[i]))?;
        for sample in result {
            let key: Key = labels
                .iter()
                .map(|l| sample["metric"][*l].as_str().unwrap_or("").to_string())
                .collect();
            let value = sample["value"][1]
                .as_str()
                .and_then(|v| v.parse::<f64>().ok())
                .filter(|v| v.is_finite());
            rows.entry(key).or_default()[i] = value;
        }
    }
    let mut out = vec![
        labels
            .iter()
            .map(|l| match *l {
                "target" => "SERVICE".to_string(),
                "client_id" => "CALLER".to_string(),
                l => l.to_uppercase(),
            })
            .chain(COLUMNS.iter().map(|c| c.to_string()))
            .collect::<Vec<_>>(),
    ];
    for (key, v) in rows {
        let mut row: Vec<String> = key
            .into_iter()
            .map(|k| if k.is_empty() { "-".into() } else { k })
            .collect();
        row.push(v[0].map_or("-".into(), |r| format!("{r:.2}")));
        row.push(v[1].map_or("-".into(), |s| format!("{:.2}%", s * 100.0)));
        for q in &v[2..] {
            row.push(q.map_or("-".into(), |secs| format!("{:.1}ms", secs * 1000.0)));
        }
        out.push(row);
    }
    Ok(columns(out))
}

/// Rows with their cells padded to each column's width.
fn columns(rows: Vec<Vec<String>>) -> String {
    let widths: Vec<usize> = (0..rows[0].len())
        .map(|c| rows.iter().map(|r| r[c].len()).max().unwrap_or(0))
        .collect();
    rows.iter()
        .map(|r| {
            let cells: Vec<String> = r
                .iter()
                .zip(&widths)
                .map(|(cell, w)| format!("{cell:<w$}"))
                .collect();
            cells.join("  ").trim_end().to_string()
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// A window as PromQL writes durations: whole seconds (at least one).
fn prom_duration(d: Duration) -> String {
    format!("{}s", d.as_secs().max(1))
}

/// `s` matched literally inside an RE2 regular expression.
fn regex_quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if "\\.+*?()|[]{}^$".contains(c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// `s` inside a double-quoted PromQL string.
fn promql_string(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"")
}

/// `s` as a URL query component (RFC 3986 unreserved characters kept).
pub fn url_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests;
