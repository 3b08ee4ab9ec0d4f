//! `weftctl`: the operator's CLI for weft's control plane.
//!
//! It talks to the control plane's API (HTTP/JSON, see `docs/weftctl.md`); `apply` validates
//! policies locally first, so a bad file is refused before anything is sent.

use std::{path::PathBuf, process::ExitCode, time::Duration};

use clap::{Parser, Subcommand, ValueEnum};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use weft_control_plane::check::printable;
use weft_control_plane::stat;

#[derive(Debug, Parser)]
#[command(name = "weftctl", version, about = "Operate weft's control plane")]
struct Cli {
    /// The control plane's API address.
    #[arg(
        long,
        global = true,
        env = "WEFT_CONTROL_PLANE",
        default_value = "127.0.0.1:15015"
    )]
    control_plane: String,
    /// Output format for `get` and `proxy-status`.
    #[arg(long, short, global = true, value_enum, default_value = "table")]
    output: Output,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Output {
    Table,
    Json,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Validate and apply TrafficPolicies and HTTPRoutes from a file or every YAML/JSON file of
    /// a directory.
    Apply {
        #[arg(short = 'f', long = "filename")]
        file: PathBuf,
    },
    /// List what the registry holds.
    Get {
        #[arg(value_enum)]
        what: What,
    },
    /// Delete a policy or an HTTPRoute applied with weftctl: `weftctl delete policy
    /// <namespace>/<name>`, `weftctl delete httproute <namespace>/<name>`.
    Delete {
        #[arg(value_parser = ["policy", "httproute", "grpcroute"])]
        kind: String,
        name: String,
    },
    /// Each proxy connected to the control plane: versions acknowledged, last rejection.
    ProxyStatus,
    /// One proxy as the control plane sees it (JSON): per resource type the versions sent and
    /// acknowledged, the last rejection, and the resources served to it now.
    ConfigDump {
        /// The node id, as `proxy-status` lists it.
        node: String,
    },
    /// What is wrong with the mesh, each problem with what to do: the registry's unreadable
    /// documents, policies naming unknown services or empty subsets, routes that can never
    /// match, proxies that rejected or lag the configuration, the CA's expiry. Exit status 1
    /// when there is a problem.
    Check,
    /// Live traffic per service, route, backend or caller: success rate, requests per second
    /// and latency percentiles, from the Prometheus that scrapes the sidecars.
    Stat {
        /// A service (`host:port`, or a host for each of its ports); every service if left out.
        service: Option<String>,
        /// What a row is.
        #[arg(long, value_enum, default_value = "service")]
        by: stat::By,
        /// The window rates and percentiles are taken over.
        #[arg(long, default_value = "1m", value_parser = weft_core::duration::parse)]
        window: Duration,
        /// Print again every 2 seconds until interrupted.
        #[arg(long)]
        watch: bool,
        /// The Prometheus server's HTTP API (plain HTTP).
        #[arg(long, env = "WEFT_PROMETHEUS", default_value = "http://127.0.0.1:9090")]
        prometheus: String,
    },
}

#[path = "weftctl/get.rs"]
mod get;
use get::{get, s};

#[derive(Debug, Clone, Copy, ValueEnum)]
enum What {
    Policies,
    /// Gateway API HTTPRoutes, with their Accepted and ResolvedRefs conditions.
    Httproutes,
    /// Gateway API GRPCRoutes, likewise.
    Grpcroutes,
    /// Both kinds of Gateway API routes, each named with its kind.
    Routes,
    Services,
    Endpoints,
}

/// A failed command: the message to print.
struct Fail(String);

type Result<T> = std::result::Result<T, Fail>;

async fn call(cp: &str, method: &str, path: &str, body: String) -> Result<(u16, String)> {
    let hint = "is weft-control-plane running? set --control-plane or WEFT_CONTROL_PLANE";
    request(("the control plane", hint), cp, method, path, body).await
}

/// One HTTP/1.1 request to `server` (`[http://]host:port`), named `who` (and how to point
/// weftctl elsewhere) when it cannot be reached.
async fn request(
    (who, hint): (&str, &str),
    server: &str,
    method: &str,
    path: &str,
    body: String,
) -> Result<(u16, String)> {
    let addr = server.trim_start_matches("http://").trim_end_matches('/');
    let unreachable =
        |e: &dyn std::fmt::Display| Fail(format!("cannot reach {who} at {addr}: {e} ({hint})"));
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| unreachable(&e))?;
    let (mut tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .map_err(|e| unreachable(&e))?;
    tokio::spawn(conn);
    let req = http::Request::builder()
        .method(method)
        .uri(path)
        .header("host", addr)
        .header("content-type", "application/yaml")
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| Fail(e.to_string()))?;
    let rsp = tx.send_request(req).await.map_err(|e| unreachable(&e))?;
    let status = rsp.status().as_u16();
    let body = rsp
        .into_body()
        .collect()
        .await
        .map_err(|e| unreachable(&e))?
        .to_bytes();
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

/// The API's answer, or its error text as the failure.
async fn ok(cp: &str, method: &str, path: &str, body: String) -> Result<String> {
    match call(cp, method, path, body).await? {
        (200, text) => Ok(text),
        (_, text) => Err(Fail(text.trim_end().to_string())),
    }
}

fn files(path: &PathBuf) -> Result<Vec<PathBuf>> {
    if !path.is_dir() {
        return Ok(vec![path.clone()]);
    }
    let mut out: Vec<PathBuf> = std::fs::read_dir(path)
        .map_err(|e| Fail(format!("{}: {e}", path.display())))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            matches!(
                p.extension().and_then(|e| e.to_str()),
                Some("yaml" | "yml" | "json")
            )
        })
        .collect();
    out.sort();
    Ok(out)
}

async fn apply(cp: &str, path: &PathBuf) -> Result<String> {
    // Everything is read and validated before anything is sent.
    let mut texts = Vec::new();
    for f in files(path)? {
        let text =
            std::fs::read_to_string(&f).map_err(|e| Fail(format!("{}: {e}", f.display())))?;
        let name = f.display().to_string();
        let found =
            weft_control_plane::registry::file::parse_documents(&name, &text).map_err(Fail)?;
        if !found.services.is_empty() {
            return Err(Fail(format!(
                "{name}: `Service` documents are registrations: write them into the registry (weftctl applies TrafficPolicy and HTTPRoute documents)"
            )));
        }
        if found.policies.is_empty() && found.http_routes.is_empty() && found.grpc_routes.is_empty()
        {
            return Err(Fail(format!(
                "{name}: no TrafficPolicy, HTTPRoute or GRPCRoute in the file"
            )));
        }
        texts.push(text);
    }
    let mut out = Vec::new();
    for t in texts {
        out.push(
            ok(cp, "PUT", "/api/v1/policies", t)
                .await?
                .trim_end()
                .to_string(),
        );
    }
    Ok(out.join("\n"))
}

fn table(rows: Vec<Vec<String>>) -> String {
    let widths: Vec<usize> = (0..rows[0].len())
        .map(|c| rows.iter().map(|r| r[c].len()).max().unwrap_or(0))
        .collect();
    rows.iter()
        .map(|r| {
            r.iter()
                .zip(&widths)
                .map(|(cell, w)| format!("{cell:<w$}"))
                .collect::<Vec<_>>()
                .join("  ")
                .trim_end()
                .to_string()
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn proxy_status(status: &serde_json::Value) -> String {
    const TYPES: [(&str, &str); 4] = [
        ("CDS", weft_xds_proto::type_url::CLUSTER),
        ("EDS", weft_xds_proto::type_url::ENDPOINT),
        ("LDS", weft_xds_proto::type_url::LISTENER),
        ("RDS", weft_xds_proto::type_url::ROUTE),
    ];
    let mut header = vec!["NODE".to_string(), "CONNECTED".into(), "STREAM".into()];
    header.extend(TYPES.iter().map(|(n, _)| format!("{n} ACKED")));
    header.push("LAST NACK".into());
    let mut rows = vec![header];
    for (node, n) in status.as_object().into_iter().flatten() {
        let mut row = vec![
            if node.is_empty() {
                "(no id)".into()
            } else {
                node.clone()
            },
            s(&n["connected"]),
            if n["delta"] == true {
                "delta".into()
            } else {
                "sotw".into()
            },
        ];
        let mut nacks = Vec::new();
        for (name, url) in TYPES {
            let t = &n["types"][url];
            row.push(if t.is_null() {
                "-".into()
            } else {
                s(&t["acked"])
            });
            if let Some(nack) = t["lastNack"].as_object() {
                nacks.push(format!(
                    "{name} {}: {}",
                    s(&nack["version"]),
                    s(&nack["error"])
                ));
            }
        }
        row.push(if nacks.is_empty() {
            "-".into()
        } else {
            nacks.join("; ")
        });
        rows.push(row);
    }
    table(rows)
}

async fn run(cli: Cli) -> Result<String> {
    let cp = cli.control_plane.as_str();
    let json = |text: &str| -> Result<serde_json::Value> {
        serde_json::from_str(text).map_err(|e| {
            Fail(format!(
                "the control plane answered something other than JSON: {e}"
            ))
        })
    };
    match cli.command {
        Cmd::Apply { file } => apply(cp, &file).await,
        Cmd::Delete { kind, name } => Ok(ok(
            cp,
            "DELETE",
            &match kind.as_str() {
                "httproute" => format!("/api/v1/httproutes/{name}"),
                "grpcroute" => format!("/api/v1/grpcroutes/{name}"),
                _ => format!("/api/v1/policies/{name}"),
            },
            String::new(),
        )
        .await?
        .trim_end()
        .to_string()),
        Cmd::Get { what } => {
            let text = ok(cp, "GET", "/api/v1/registry", String::new()).await?;
            Ok(match cli.output {
                Output::Json => text.trim_end().to_string(),
                Output::Table => get(what, &json(&text)?),
            })
        }
        Cmd::ConfigDump { node } => {
            if node.is_empty() || node.contains('/') {
                return Err(Fail(format!("`{node}` is not a node id")));
            }
            let text = ok(
                cp,
                "GET",
                &format!("/api/v1/proxies/{node}/config"),
                String::new(),
            )
            .await?;
            Ok(text.trim_end().to_string())
        }
        Cmd::Stat {
            service,
            by,
            window,
            watch,
            prometheus,
        } => {
            let s = stat::Stat::new(service, by, window).map_err(Fail)?;
            if !watch {
                return stat_once(&prometheus, &s).await;
            }
            loop {
                println!("{}\n", stat_once(&prometheus, &s).await?);
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
        }
        Cmd::Check => {
            let text = ok(cp, "GET", "/api/v1/check", String::new()).await?;
            let findings = json(&text)?;
            let problems = findings
                .as_array()
                .map_or(0, |f| f.iter().filter(|f| f["ok"] == false).count());
            let out = match cli.output {
                Output::Json => text.trim_end().to_string(),
                Output::Table => check(cp, &findings, problems),
            };
            if problems > 0 {
                // The report on stdout, as without problems; the exit status says there are.
                println!("{out}");
                return Err(Fail(format!("check found {problems} problem(s)")));
            }
            Ok(out)
        }
        Cmd::ProxyStatus => {
            let text = ok(cp, "GET", "/api/v1/proxy-status", String::new()).await?;
            Ok(match cli.output {
                Output::Json => text.trim_end().to_string(),
                Output::Table => proxy_status(&json(&text)?),
            })
        }
    }
}

/// `weftctl check`'s report: one line per finding, each problem's fix under it.
fn check(cp: &str, findings: &serde_json::Value, problems: usize) -> String {
    let mut lines = vec![format!(
        "control-plane  ok       answering at {cp}, registry loaded"
    )];
    for f in findings.as_array().into_iter().flatten() {
        let mark = if f["ok"] == true { "ok" } else { "PROBLEM" };
        // Details quote what the mesh was given (file names, error texts, node ids): printed
        // with their control characters escaped, so none can move the cursor or forge a line.
        lines.push(format!(
            "{:<13}  {mark:<7}  {}",
            printable(&s(&f["check"])),
            printable(&s(&f["detail"]))
        ));
        if let Some(fix) = f["fix"].as_str() {
            lines.push(format!("{:<13}  {:<7}  fix: {}", "", "", printable(fix)));
        }
    }
    lines.push(match problems {
        0 => "no problem found".into(),
        1 => "1 problem".into(),
        n => format!("{n} problems"),
    });
    lines.join("\n")
}

/// `weftctl stat`: the five queries to Prometheus, as a table.
async fn stat_once(prometheus: &str, s: &stat::Stat) -> Result<String> {
    let hint = "set --prometheus or WEFT_PROMETHEUS to the server that scrapes the sidecars";
    let mut answers: [Option<serde_json::Value>; 5] = Default::default();
    // Every query at one instant: a scrape landing between two of them changes nothing.
    let at = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis();
    let time = format!("{}.{:03}", at / 1000, at % 1000);
    for (q, a) in s.queries().into_iter().zip(answers.iter_mut()) {
        let Some(q) = q else { continue };
        let path = format!("/api/v1/query?query={}&time={time}", stat::url_encode(&q));
        let (_, text) = request(
            ("Prometheus", hint),
            prometheus,
            "GET",
            &path,
            String::new(),
        )
        .await?;
        *a = Some(serde_json::from_str(&text).map_err(|e| {
            Fail(format!(
                "Prometheus answered something other than JSON: {e}"
            ))
        })?);
    }
    stat::table(s, &answers).map_err(Fail)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    match rt.block_on(run(cli)) {
        Ok(out) => {
            println!("{out}");
            ExitCode::SUCCESS
        }
        Err(Fail(msg)) => {
            eprintln!("weftctl: {msg}");
            ExitCode::FAILURE
        }
    }
}
