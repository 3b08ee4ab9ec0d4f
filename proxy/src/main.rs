//! The `weft-proxy` binary: flags, logging and the runtime; the rest is in the library.

use std::{process::ExitCode, sync::Arc};

use clap::Parser;
use weft_proxy::config::{Cli, Command};

// The proxy allocates and frees small objects at a high rate on many threads (request state,
// HTTP/2 frames, tasks); mimalloc does this markedly faster than glibc's malloc, notably for the
// 128-byte-aligned task cells tokio allocates per stream.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Init(init)) => {
            return match weft_proxy::init::run(&init) {
                Ok(done) => {
                    print!("{done}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("weft-proxy init: {e}");
                    ExitCode::FAILURE
                }
            };
        }
        Some(Command::Wait(wait)) => {
            return match weft_proxy::admin::wait_ready(&wait) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("weft-proxy wait: {e}");
                    ExitCode::FAILURE
                }
            };
        }
        None => {}
    }
    let cfg = cli.run;
    let log = match weft_proxy::log::init(&cfg.log_level, cfg.log_format) {
        Ok(l) => Arc::new(l),
        Err(e) => {
            eprintln!("weft-proxy: --log-level: {e}");
            return ExitCode::from(2);
        }
    };
    let mut rt = if cfg.worker_threads == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        if cfg.worker_threads > 1 {
            b.worker_threads(cfg.worker_threads);
        }
        b
    };
    let rt = match rt.enable_all().thread_name("weft-proxy").build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("weft-proxy: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(weft_proxy::run(cfg, Some(log))) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "weft-proxy cannot start");
            eprintln!("weft-proxy: error: {e}");
            ExitCode::FAILURE
        }
    }
}
