//! What the example servers' `main`s share: logging, the exit code, and a graceful shutdown
//! on SIGINT and SIGTERM.

use std::process::ExitCode;

use reactor_pool::ServerHandle;
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

/// Signal handlers installed before the server starts, so a signal sent as soon as it
/// listens is handled rather than killing the process.
pub struct OnSignal(Signals);

impl OnSignal {
    /// Installs the handlers for SIGINT and SIGTERM.
    pub fn install() -> std::io::Result<Self> {
        Ok(OnSignal(Signals::new([SIGINT, SIGTERM])?))
    }

    /// Runs `server` until a signal arrives, then shuts it down gracefully.
    pub fn serve(mut self, server: ServerHandle) {
        let trigger = server.shutdown_trigger();
        std::thread::spawn(move || {
            if let Some(signal) = self.0.forever().next() {
                log::info!("signal {signal}: shutting down");
                trigger.fire();
            }
        });
        server.join();
    }
}

/// Runs an example server's `main`: env_logger at `info` unless RUST_LOG says otherwise,
/// then `run`; an error is logged and the process exits with failure.
pub fn run_main(run: impl FnOnce() -> Result<(), Box<dyn std::error::Error>>) -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            log::error!("{e}");
            ExitCode::FAILURE
        }
    }
}
