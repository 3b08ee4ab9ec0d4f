//! The file registry, weft's embedded default: a directory of YAML (or JSON) files holding
//! `Service`, `TrafficPolicy` and Gateway API `HTTPRoute` documents, several per file if `---`-separated, re-read when
//! their content changes.
//!
//! A file that fails to parse or validate, or cannot be read as text (permissions, bytes that
//! are not UTF-8), keeps its last good content in force (nothing registered is lost because of
//! a bad edit); the error names the file, the object and the field. Only a file that is gone
//! is removed. Files are read in name order; when two define the same service or policy, the first
//! wins and the second is reported.

use std::{collections::BTreeMap, path::PathBuf, sync::Arc, time::Duration};

use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::{API_VERSION, Service, ServiceSpec, Snapshot};
use crate::gateway::{self, GrpcRoute, HttpRoute};
use crate::policy::{self, Metadata, TrafficPolicy};

/// A `Service` document.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct ServiceDoc {
    api_version: String,
    kind: String,
    metadata: Metadata,
    spec: ServiceSpec,
}

/// What one file (or etcd key) contributed the last time it was good.
#[derive(Debug, Clone, Default)]
pub struct Contents {
    pub services: Vec<Service>,
    pub policies: Vec<TrafficPolicy>,
    pub http_routes: Vec<HttpRoute>,
    pub grpc_routes: Vec<GrpcRoute>,
}

#[derive(Debug)]
struct FileState {
    /// The text last read, to notice changes.
    text: String,
    /// The last good contents; `None` if the file has never been good.
    good: Option<Contents>,
    /// Why the current text is not in force.
    error: Option<String>,
}

#[derive(Debug)]
pub struct FileRegistry {
    dir: PathBuf,
    files: BTreeMap<PathBuf, FileState>,
    /// Problems with the current files (bad files, duplicates), for logs and status.
    pub errors: Vec<String>,
}

impl FileRegistry {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        FileRegistry {
            dir: dir.into(),
            files: BTreeMap::new(),
            errors: Vec::new(),
        }
    }

    /// Reads the directory again and returns the snapshot it now gives.
    pub fn scan(&mut self) -> std::io::Result<Snapshot> {
        let mut seen = Vec::new();
        for entry in std::fs::read_dir(&self.dir)? {
            let path = entry?.path();
            let is_doc = matches!(
                path.extension().and_then(|e| e.to_str()),
                Some("yaml" | "yml" | "json")
            );
            if !is_doc || !path.is_file() {
                continue;
            }
            // A file that vanished between listing and reading counts as gone; one that cannot
            // be read as text keeps its last good content, as a bad document does.
            let text = match std::fs::read(&path).map(String::from_utf8) {
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Ok(Ok(text)) => text,
                unreadable => {
                    let why = match unreadable {
                        Err(e) => format!("cannot be read: {e}"),
                        _ => "is not UTF-8 text".into(),
                    };
                    let state = self.files.entry(path.clone()).or_insert(FileState {
                        text: String::new(),
                        good: None,
                        error: None,
                    });
                    // Forget the text: once readable, the file is parsed again.
                    state.text.clear();
                    state.error = Some(format!("{}: {why}", path.display()));
                    seen.push(path);
                    continue;
                }
            };
            seen.push(path.clone());
            if self.files.get(&path).is_some_and(|f| f.text == text) {
                continue;
            }
            let (good, error) = match parse_documents(&path.display().to_string(), &text) {
                Ok(c) => (Some(c), None),
                Err(e) => (self.files.get(&path).and_then(|f| f.good.clone()), Some(e)),
            };
            self.files.insert(path, FileState { text, good, error });
        }
        self.files.retain(|p, _| seen.contains(p));
        Ok(self.assemble())
    }

    fn assemble(&mut self) -> Snapshot {
        let (snap, errors) = assemble(
            self.files
                .iter()
                .map(|(p, f)| (p.display().to_string(), f.good.as_ref(), f.error.as_deref())),
        );
        self.errors = errors;
        snap
    }

    /// Scans every `poll` and publishes each new snapshot on `tx` until every receiver is gone.
    /// `on_errors` hears the problems in force after every scan that changed them.
    pub async fn run(
        mut self,
        poll: Duration,
        tx: watch::Sender<Arc<Snapshot>>,
        on_errors: impl Fn(&[String]) + Send + 'static,
    ) {
        let mut tick = tokio::time::interval(poll);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut reported = Vec::new();
        loop {
            tick.tick().await;
            if tx.is_closed() {
                return;
            }
            let snap = match self.scan() {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(dir = %self.dir.display(), error = %e, "cannot read the registry directory; keeping what is registered");
                    continue;
                }
            };
            if self.errors != reported {
                for e in &self.errors {
                    tracing::warn!(error = %e, "file registry");
                }
                on_errors(&self.errors);
                reported = self.errors.clone();
            }
            tx.send_if_modified(|cur| {
                let changed = **cur != snap;
                if changed {
                    *cur = Arc::new(snap);
                }
                changed
            });
        }
    }
}

/// Merges what each source (a file, an etcd key), in order, contributes into one snapshot;
/// returns the problems: sources whose current text is bad (their last good contents stay),
/// and services or policies defined twice (the first wins).
pub(super) fn assemble<'a>(
    sources: impl Iterator<Item = (String, Option<&'a Contents>, Option<&'a str>)>,
) -> (Snapshot, Vec<String>) {
    let mut snap = Snapshot::default();
    let mut errors = Vec::new();
    let mut origin: BTreeMap<String, String> = BTreeMap::new();
    for (name, good, error) in sources {
        if let Some(e) = error {
            let kept = if good.is_some() {
                "its last good content stays in force"
            } else {
                "nothing from it is in force"
            };
            errors.push(format!("{e} ({kept})"));
        }
        let Some(c) = good else { continue };
        for s in &c.services {
            let authority = s.authority();
            if let Some(first) = origin.get(&authority) {
                errors.push(format!(
                    "{name}: service {}: `{authority}` is already registered by {first}",
                    s.key
                ));
                continue;
            }
            origin.insert(authority.clone(), name.clone());
            snap.services.insert(authority, s.clone());
        }
        let mut twice = |kind: &str, key: String| {
            errors.push(format!(
                "{name}: {kind} {key} is defined in another file too; the first stays"
            ))
        };
        for p in &c.policies {
            first_wins(&mut snap.policies, p.key(), p).unwrap_or_else(|k| twice("policy", k));
        }
        for r in &c.http_routes {
            first_wins(&mut snap.http_routes, r.key(), r).unwrap_or_else(|k| twice("HTTPRoute", k));
        }
        for r in &c.grpc_routes {
            first_wins(&mut snap.grpc_routes, r.key(), r).unwrap_or_else(|k| twice("GRPCRoute", k));
        }
    }
    (snap, errors)
}

/// Puts `item` under `key` unless an earlier source put one there; the key back when one did.
fn first_wins<T: Clone>(
    into: &mut BTreeMap<String, T>,
    key: String,
    item: &T,
) -> Result<(), String> {
    match into.entry(key) {
        std::collections::btree_map::Entry::Occupied(e) => Err(e.key().clone()),
        std::collections::btree_map::Entry::Vacant(e) => {
            e.insert(item.clone());
            Ok(())
        }
    }
}

/// Splits a YAML text into its documents, each padded with blank lines so that line numbers in
/// errors are the file's.
fn documents(text: &str) -> Vec<String> {
    let mut docs = Vec::new();
    let (mut start, mut body) = (0usize, String::new());
    for (i, line) in text.lines().enumerate() {
        if line.trim_end() == "---" {
            docs.push("\n".repeat(start) + &body);
            start = i + 1;
            body.clear();
            continue;
        }
        body.push_str(line);
        body.push('\n');
    }
    docs.push("\n".repeat(start) + &body);
    docs.retain(|d| !d.trim().is_empty());
    docs
}

/// Parses the `Service`, `TrafficPolicy` and `HTTPRoute` documents of one source; `name` names it in errors.
pub fn parse_documents(name: &str, text: &str) -> Result<Contents, String> {
    let name = name.to_string();
    let mut c = Contents::default();
    for doc in documents(text) {
        #[derive(Deserialize)]
        struct Kind {
            kind: Option<String>,
        }
        let kind = serde_yaml_ng::from_str::<Kind>(&doc)
            .map_err(|e| format!("{name}: {e}"))?
            .kind;
        match kind.as_deref() {
            Some(policy::KIND) => {
                c.policies
                    .extend(policy::parse(&name, &doc).map_err(|e| e.to_string())?);
            }
            Some("Service") => {
                let d: ServiceDoc =
                    serde_yaml_ng::from_str(&doc).map_err(|e| format!("{name}: {e}"))?;
                c.services.push(check_service(&name, d)?);
            }
            Some(gateway::HTTP_ROUTE) => {
                c.http_routes
                    .extend(gateway::parse(&name, &doc).map_err(|e| e.to_string())?);
            }
            Some(gateway::GRPC_ROUTE) => {
                c.grpc_routes
                    .extend(gateway::parse_grpc(&name, &doc).map_err(|e| e.to_string())?);
            }
            Some(other) => {
                return Err(format!(
                    "{name}: kind: `{other}` is none of `Service`, `TrafficPolicy`, `HTTPRoute`, `GRPCRoute`"
                ));
            }
            None => return Err(format!("{name}: a document without `kind`")),
        }
    }
    Ok(c)
}

fn valid_host(h: &str) -> bool {
    !h.is_empty()
        && h.len() <= 253
        && h.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
}

/// Validates a `Service` document; every problem is named with its field.
fn check_service(file: &str, d: ServiceDoc) -> Result<Service, String> {
    let ns = d.metadata.namespace.as_deref().unwrap_or("default");
    let key = format!("{ns}/{}", d.metadata.name);
    let mut errs: Vec<String> = Vec::new();
    if d.api_version != API_VERSION {
        errs.push(format!(
            "apiVersion: `{}`: expected `{API_VERSION}`",
            d.api_version
        ));
    }
    if !valid_host(&d.metadata.name) {
        errs.push(format!(
            "metadata.name: `{}` is not a name",
            d.metadata.name
        ));
    }
    let host = d
        .spec
        .host
        .clone()
        .unwrap_or_else(|| format!("{}.{ns}.svc.cluster.local", d.metadata.name));
    if !valid_host(&host) {
        errs.push(format!("spec.host: `{host}` is not a lower-case host name"));
    }
    if d.spec.port == 0 {
        errs.push("spec.port: must be between 1 and 65535".into());
    }
    for (i, a) in d.spec.aliases.iter().enumerate() {
        if !valid_host(a) {
            errs.push(format!(
                "spec.aliases[{i}]: `{a}` is not a lower-case host name"
            ));
        }
    }
    for (i, e) in d.spec.endpoints.iter().enumerate() {
        if let Some(id) = &e.identity
            && !id.starts_with("spiffe://")
        {
            errs.push(format!(
                "spec.endpoints[{i}].identity: `{id}` is not a SPIFFE id"
            ));
        }
    }
    if errs.is_empty() {
        Ok(Service {
            key,
            host,
            spec: d.spec,
        })
    } else {
        Err(format!("{file}: service {key}: {}", errs.join("; ")))
    }
}

#[cfg(test)]
mod tests;
