//! The `main` the protocol examples (http_hello, kv_server) share.

use std::process::ExitCode;

use reactor_pool::{Builder, ServerHandle};

use super::shutdown::OnSignal;
use super::transport::Listen;

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

/// The `main` of a protocol example: the listening flags of [`Listen`] (`--addr`, default
/// `default_addr`; `--unix`, `--tls-cert`/`--tls-key`, `--proxy-protocol`) and
/// `--workers N` and `--reactors N` (the framework's defaults otherwise), plus the example's own, which `flags` takes from the arguments (`|_|
/// Ok(())` when there are none); any other argument is an error. Then
/// `start(listen flags, (workers, reactors), what flags returned)`, env_logger at `info` unless RUST_LOG
/// says otherwise, the line `{name} listening on {scheme}://{address}` (the socket path for
/// a Unix socket; `tls_scheme` over TLS) once it listens, and a graceful shutdown on a
/// signal.
pub fn run_example<T>(
    name: &str,
    default_addr: &str,
    (scheme, tls_scheme): (&str, &str),
    flags: impl FnOnce(&mut pico_args::Arguments) -> Result<T, pico_args::Error>,
    start: impl FnOnce(&Listen, (Option<usize>, Option<usize>), T) -> std::io::Result<ServerHandle>,
) -> ExitCode {
    super::shutdown::run_main(|| {
        let mut args = pico_args::Arguments::from_env();
        let listen = Listen::from_args(&mut args, default_addr)?;
        let workers: Option<usize> = args.opt_value_from_str("--workers")?;
        let reactors: Option<usize> = args.opt_value_from_str("--reactors")?;
        let own = flags(&mut args)?;
        let rest = args.finish();
        if !rest.is_empty() {
            return Err(format!("unknown arguments: {rest:?}").into());
        }
        let on_signal = OnSignal::install()?;
        let server = start(&listen, (workers, reactors), own)?;
        let scheme = if listen.is_tls() { tls_scheme } else { scheme };
        log::info!("{name} listening on {}", listen.describe(&server, scheme));
        on_signal.serve(server);
        Ok(())
    })
}
