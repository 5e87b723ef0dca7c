//! The `main` the protocol examples (http_hello, kv_server) share.

use std::net::SocketAddr;
use std::process::ExitCode;

use reactor_pool::{Builder, ServerHandle};

use super::shutdown::OnSignal;

/// Applies a protocol example's thread counts to `builder`; `None` keeps the default.
pub fn with_threads(builder: Builder, workers: Option<usize>, reactors: Option<usize>) -> Builder {
    let builder = match workers {
        Some(n) => builder.workers(n),
        None => builder,
    };
    match reactors {
        Some(n) => builder.reactors(n),
        None => builder,
    }
}

/// The `main` of a protocol example: flags `--addr` (default `default_addr`) and
/// `--workers N`, plus the example's own, which `flags` takes from the arguments (`|_|
/// Ok(())` when there are none); any other argument is an error. Then
/// `start(address, workers, what flags returned)`, env_logger at `info` unless RUST_LOG
/// says otherwise, the line that `listening(local address)` returns once it listens, and a
/// graceful shutdown on a signal.
pub fn run_example<T>(
    default_addr: &str,
    flags: impl FnOnce(&mut pico_args::Arguments) -> Result<T, pico_args::Error>,
    start: impl FnOnce(SocketAddr, Option<usize>, T) -> std::io::Result<ServerHandle>,
    listening: fn(SocketAddr) -> String,
) -> ExitCode {
    super::shutdown::run_main(|| {
        let mut args = pico_args::Arguments::from_env();
        let addr: SocketAddr = match args.opt_value_from_str("--addr")? {
            Some(addr) => addr,
            None => default_addr.parse()?,
        };
        let workers: Option<usize> = args.opt_value_from_str("--workers")?;
        let own = flags(&mut args)?;
        let rest = args.finish();
        if !rest.is_empty() {
            return Err(format!("unknown arguments: {rest:?}").into());
        }
        let on_signal = OnSignal::install()?;
        let server = start(addr, workers, own)?;
        log::info!("{}", listening(server.local_addr()));
        on_signal.serve(server);
        Ok(())
    })
}
