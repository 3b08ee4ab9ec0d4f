//! Logging with `tracing` for weft's binaries: a filter that can be changed at run time (the
//! proxy's admin server does), plain or JSON lines on stderr.

use std::{io::IsTerminal, sync::Mutex};

use tracing_subscriber::{
    EnvFilter, Registry, layer::SubscriberExt, reload, util::SubscriberInitExt,
};

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
pub enum LogFormat {
    Plain,
    Json,
}

/// Changes the log filter of the running process.
pub struct LogHandle {
    reload: reload::Handle<EnvFilter, Registry>,
    current: Mutex<String>,
}

impl std::fmt::Debug for LogHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogHandle")
            .field("current", &self.current)
            .finish()
    }
}

impl LogHandle {
    /// The filter in force.
    pub fn level(&self) -> String {
        self.current.lock().expect("log lock").clone()
    }

    /// Replaces the filter; a filter that does not parse changes nothing.
    pub fn set_level(&self, filter: &str) -> Result<(), String> {
        let f = parse(filter)?;
        self.reload.reload(f).map_err(|e| e.to_string())?;
        *self.current.lock().expect("log lock") = filter.trim().to_string();
        Ok(())
    }
}

fn parse(filter: &str) -> Result<EnvFilter, String> {
    let filter = filter.trim();
    if filter.is_empty() {
        return Err("empty log filter".into());
    }
    EnvFilter::builder()
        .parse(filter)
        .map_err(|e| format!("invalid log filter `{filter}`: {e}"))
}

/// Installs the global subscriber. Logs go to stderr.
pub fn init(filter: &str, format: LogFormat) -> Result<LogHandle, String> {
    let (layer, reload) = reload::Layer::new(parse(filter)?);
    let json = format == LogFormat::Json;
    tracing_subscriber::registry()
        .with(layer)
        .with(json.then(|| {
            tracing_subscriber::fmt::layer()
                .json()
                .with_current_span(false)
                .with_writer(std::io::stderr)
        }))
        .with((!json).then(|| {
            tracing_subscriber::fmt::layer()
                .with_ansi(std::io::stderr().is_terminal())
                .with_writer(std::io::stderr)
        }))
        .try_init()
        .map_err(|e| e.to_string())?;
    Ok(LogHandle {
        reload,
        current: Mutex::new(filter.trim().to_string()),
    })
}
