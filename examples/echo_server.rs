//! The seed's echo server: whatever a client sends comes back, through the worker pool.
//!
//! ```text
//! cargo run --release --example echo_server -- [--addr 127.0.0.1:20000] [--workers N]
//! ```
//!
//! Logs (env_logger, `info` unless RUST_LOG says otherwise) the listening address, each
//! accepted peer, and each close with the connection's request count. SIGINT or SIGTERM
//! shuts it down gracefully and it exits 0.

use std::net::SocketAddr;
use std::process::ExitCode;

use reactor_pool::{handler_fn, Builder, Context, RawCodec};
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            log::error!("{e}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = pico_args::Arguments::from_env();
    let addr: SocketAddr = args
        .opt_value_from_str("--addr")?
        .unwrap_or_else(|| "127.0.0.1:20000".parse().expect("valid default"));
    let workers: Option<usize> = args.opt_value_from_str("--workers")?;
    let rest = args.finish();
    if !rest.is_empty() {
        return Err(format!("unknown arguments: {rest:?}").into());
    }

    let mut builder = Builder::bind(addr).connection_log_level(log::Level::Info);
    if let Some(n) = workers {
        builder = builder.workers(n);
    }
    let echo = handler_fn(|request: Vec<u8>, _ctx: &Context| request);
    let server = builder.start(RawCodec::new(), echo)?;
    log::info!("echo server listening on {}", server.local_addr());

    let trigger = server.shutdown_trigger();
    let mut signals = Signals::new([SIGINT, SIGTERM])?;
    std::thread::spawn(move || {
        if let Some(signal) = signals.forever().next() {
            log::info!("signal {signal}: shutting down");
            trigger.fire();
        }
    });
    server.join();
    log::info!("echo server stopped");
    Ok(())
}
