//! The seed's echo server: whatever a client sends comes back, through the worker pool.
//!
//! ```text
//! cargo run --release --example echo_server -- [--addr 127.0.0.1:20000] [--workers N] [--reactors N]
//!     [--max-connections N] [--idle-timeout-secs N] [--stats-secs N]
//!     [--unix PATH] [--tls-cert PEM --tls-key PEM] [--proxy-protocol]
//! ```
//!
//! The listening flags are in `support/transport.rs` (TLS needs `--features tls`); started
//! with a socket passed by systemd (`LISTEN_FDS`), it serves that one.
//!
//! `--idle-timeout-secs 0` disables the idle timeout; `--stats-secs N` logs the server's
//! counters every N seconds.
//!
//! Logs (env_logger, `info` unless RUST_LOG says otherwise) the listening address, each
//! accepted peer, and each close with the connection's request count. SIGINT or SIGTERM
//! shuts it down gracefully and it exits 0.

use std::process::ExitCode;
use std::time::Duration;

use reactor_pool::{handler_fn, Context, RawCodec};
use shutdown::OnSignal;

#[path = "support/shutdown.rs"]
mod shutdown;
#[path = "support/transport.rs"]
mod transport;

fn main() -> ExitCode {
    shutdown::run_main(run)
}

fn run() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = pico_args::Arguments::from_env();
    let listen = transport::Listen::from_args(&mut args, "127.0.0.1:20000")?;
    let workers: Option<usize> = args.opt_value_from_str("--workers")?;
    let reactors: Option<usize> = args.opt_value_from_str("--reactors")?;
    let max_connections: Option<usize> = args.opt_value_from_str("--max-connections")?;
    let idle_timeout_secs: Option<u64> = args.opt_value_from_str("--idle-timeout-secs")?;
    let stats_secs: Option<u64> = args.opt_value_from_str("--stats-secs")?;
    let rest = args.finish();
    if !rest.is_empty() {
        return Err(format!("unknown arguments: {rest:?}").into());
    }

    let mut builder = listen.builder()?.connection_log_level(log::Level::Info);
    if let Some(n) = workers {
        builder = builder.workers(n);
    }
    if let Some(n) = reactors {
        builder = builder.reactors(n);
    }
    if let Some(n) = max_connections {
        builder = builder.max_connections(n);
    }
    if let Some(secs) = idle_timeout_secs {
        builder = builder.idle_timeout((secs > 0).then(|| Duration::from_secs(secs)));
    }
    let on_signal = OnSignal::install()?;
    let echo = handler_fn(|request: Vec<u8>, _ctx: &Context| request);
    let server = builder.start(RawCodec::new(), echo)?;
    log::info!("echo server listening on {}", listen.describe(&server, ""));

    let (stop_stats, stats_stopped) = crossbeam_channel::bounded::<()>(0);
    let stats_thread = stats_secs.filter(|&secs| secs > 0).map(|secs| {
        let server = server.stats_reader();
        std::thread::spawn(move || {
            // Wakes every `secs` until the sender is dropped at shutdown.
            while let Err(crossbeam_channel::RecvTimeoutError::Timeout) =
                stats_stopped.recv_timeout(Duration::from_secs(secs))
            {
                log::info!("stats: {:?}", server.stats());
            }
        })
    });
    on_signal.serve(server);
    drop(stop_stats);
    if let Some(thread) = stats_thread {
        let _ = thread.join();
    }
    log::info!("echo server stopped");
    Ok(())
}
