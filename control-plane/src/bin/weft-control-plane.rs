//! The `weft-control-plane` binary: flags, logging and the runtime; the rest is in the library.

use std::process::ExitCode;

use clap::Parser;
use weft_control_plane::config::Config;

// Every connected proxy's stream builds and drops responses of every resource it is sent;
// glibc's malloc keeps the peak of a push to 1,000 streams as fragmented free memory, mimalloc
// gives it back (tests/bench/xds, docs/benchmarks.md).
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cfg = Config::parse();
    if let Err(e) = weft_core::log::init(&cfg.log_level, cfg.log_format) {
        eprintln!("weft-control-plane: --log-level: {e}");
        return ExitCode::from(2);
    }
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("weft-control-plane: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(weft_control_plane::server::run(cfg)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("weft-control-plane: error: {e}");
            ExitCode::FAILURE
        }
    }
}
