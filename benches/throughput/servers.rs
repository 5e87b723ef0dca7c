//! The echo servers compared, as they run in their own child process (`--serve KIND`).
//!
//! Every kind listens on a socket made the same way ([`listen`]: SO_REUSEADDR, backlog
//! [`BACKLOG`]), sets TCP_NODELAY on each accepted connection, echoes what it reads and, in the
//! blocking workload, sleeps `sleep` per request in a thread that may block:
//!
//! - `reactor-pool`: this crate, [`RawCodec`] and a handler that (sleeps and) returns the
//!   request, on `reactors` reactor threads and `workers` worker threads;
//! - `rp-inline`: the same in inline mode (`Builder::inline`): the handler runs on the
//!   `reactors` reactor threads, no worker; echo scenarios only (it must not block);
//! - `rp-concurrent`: the pool path with `Mode::Concurrent`: one connection's
//!   pipelined requests may run at once on different workers (the opt-in for stateless
//!   handlers; `reactor-pool` is the in-order default); echo scenarios only;
//! - `thread-per-conn`: the blocking model, one std thread per connection (small stacks);
//! - `tokio`: a multi-thread runtime with `threads` worker threads; the sleep runs in
//!   `spawn_blocking`, at most `blocking` such threads.
//!
//! With `--tls` (feature `tls`, the TLS scenarios, no sleep) `reactor-pool` serves every
//! connection over TLS (`Builder::tls`, the handshake and records on its reactors, no
//! handshake timeout, like the other timeouts the bench turns off) and `tokio` becomes
//! `tokio-rustls`: the same runtime, each connection's task running
//! `tokio_rustls::TlsAcceptor::accept` and then the echo loop, which answers the client's
//! close_notify with its own, as reactor-pool does. Both build their configuration with
//! [`crate::tls::server_config`].
//!
//! The child prints its bound address as the first line of stdout, then serves until its
//! stdin closes (the parent exited or dropped it), SIGTERM, or `max_lifetime`.

use std::io::{self, BufRead, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::thread;
use std::time::Duration;

use reactor_pool::{handler_fn, Builder, Context, Mode, RawCodec};
use socket2::{Domain, Protocol, Socket, Type};

/// Listen backlog of every server kind (the kernel caps it at net.core.somaxconn).
pub const BACKLOG: i32 = 4096;
/// Bytes each connection of the `thread-per-conn` and `tokio` servers reads at a time.
const CONN_BUFFER: usize = 16 * 1024;
/// Pause after a failed accept (out of descriptors...), so the accept loop never spins.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(10);

/// A server implementation under test.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    ReactorPool,
    ReactorPoolInline,
    ReactorPoolConcurrent,
    Threads,
    Tokio,
    /// The echo_server example binary exactly as the README starts it (every setting at
    /// its default, its info logging on), on a free port.
    EchoExample,
}

impl Kind {
    pub const ALL: [Kind; 6] = [
        Kind::ReactorPool,
        Kind::ReactorPoolInline,
        Kind::ReactorPoolConcurrent,
        Kind::Threads,
        Kind::Tokio,
        Kind::EchoExample,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Kind::ReactorPool => "reactor-pool",
            Kind::ReactorPoolInline => "rp-inline",
            Kind::ReactorPoolConcurrent => "rp-concurrent",
            Kind::Threads => "thread-per-conn",
            Kind::Tokio => "tokio",
            Kind::EchoExample => "echo_server",
        }
    }

    pub fn parse(name: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.name() == name)
    }
}

/// How a child server is configured; mirrored by [`ServeArgs::to_args`] and the parser in
/// `main`.
#[derive(Debug, Clone)]
pub struct ServeArgs {
    pub kind: Kind,
    pub addr: SocketAddr,
    /// Tokio's worker threads.
    pub threads: usize,
    /// reactor-pool's reactor threads.
    pub reactors: usize,
    /// reactor-pool's worker threads.
    pub workers: usize,
    /// Tokio's cap on `spawn_blocking` threads.
    pub blocking: usize,
    /// Sleep per request (the blocking workload); zero for plain echo.
    pub sleep: Duration,
    /// Stack size of each thread of the `thread-per-conn` server.
    pub stack_kib: usize,
    /// The child exits after this long whatever happens.
    pub max_lifetime: Duration,
    /// Serve over TLS (`reactor-pool` and `tokio` only; feature `tls`).
    pub tls: bool,
}

impl ServeArgs {
    /// The command-line arguments that make a child run this server.
    pub fn to_args(&self) -> Vec<String> {
        let mut args: Vec<String> = vec![
            "--serve".into(),
            self.kind.name().into(),
            "--addr".into(),
            self.addr.to_string(),
            "--threads".into(),
            self.threads.to_string(),
            "--reactors".into(),
            self.reactors.to_string(),
            "--workers".into(),
            self.workers.to_string(),
            "--blocking".into(),
            self.blocking.to_string(),
            "--sleep-us".into(),
            self.sleep.as_micros().to_string(),
            "--stack-kib".into(),
            self.stack_kib.to_string(),
            "--max-lifetime".into(),
            self.max_lifetime.as_secs().to_string(),
        ];
        if self.tls {
            args.push("--tls".into());
        }
        args
    }
}

/// The child's main: binds, announces the address, serves until told to stop.
pub fn serve(args: &ServeArgs) -> io::Result<()> {
    crate::raise_fd_limit();
    let listener = listen(args.addr)?;
    let addr = listener.local_addr()?;
    // Each arm keeps its server alive until `announce_and_wait` returns; then the process
    // exits (dropping a ServerHandle would not stop the server anyway).
    match args.kind {
        Kind::ReactorPool | Kind::ReactorPoolInline | Kind::ReactorPoolConcurrent => {
            let _handle = start_reactor_pool(listener, args)?;
            announce_and_wait(addr, args.max_lifetime)
        }
        Kind::Threads => {
            start_threads(listener, args)?;
            announce_and_wait(addr, args.max_lifetime)
        }
        Kind::Tokio => {
            let _runtime = start_tokio(listener, args)?;
            announce_and_wait(addr, args.max_lifetime)
        }
        Kind::EchoExample => Err(io::Error::other(
            "the echo_server example runs as its own binary, not as a bench child",
        )),
    }
}

/// Prints the bound address as stdout's first line, then waits for the end of the child.
pub fn announce_and_wait(addr: SocketAddr, max_lifetime: Duration) -> io::Result<()> {
    {
        let mut stdout = io::stdout().lock();
        writeln!(stdout, "{addr}")?;
        stdout.flush()?;
    }
    wait_for_exit(max_lifetime);
    Ok(())
}

/// Returns when stdin reaches EOF (the parent is gone or done) or after `max_lifetime`.
fn wait_for_exit(max_lifetime: Duration) {
    let (tx, rx) = mpsc::channel::<()>();
    let _ = thread::Builder::new()
        .name("stdin-watch".into())
        .stack_size(64 * 1024)
        .spawn(move || {
            let mut line = String::new();
            let mut stdin = io::stdin().lock();
            // Each read_line blocks until a line or EOF; the parent never writes, so the
            // first return is EOF. Bounded by the process lifetime below.
            while matches!(stdin.read_line(&mut line), Ok(n) if n > 0) {
                line.clear();
            }
            let _ = tx.send(());
        });
    let _ = rx.recv_timeout(max_lifetime);
}

/// A listening socket bound to `addr` (which must be on 127.0.0.0/8).
pub fn listen(addr: SocketAddr) -> io::Result<TcpListener> {
    if !addr.ip().is_loopback() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{addr}: the bench only listens on loopback"),
        ));
    }
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.bind(&addr.into())?;
    socket.listen(BACKLOG)?;
    Ok(socket.into())
}

fn start_reactor_pool(
    listener: TcpListener,
    args: &ServeArgs,
) -> io::Result<reactor_pool::ServerHandle> {
    let sleep = args.sleep;
    let builder = Builder::from_listener(listener)
        .reactors(args.reactors)
        .workers(args.workers)
        .mode(match args.kind {
            Kind::ReactorPoolInline => Mode::Inline,
            Kind::ReactorPoolConcurrent => Mode::Concurrent,
            _ => Mode::Pool,
        })
        // Generous limits: the bench measures throughput, not limits.
        .max_connections(20_000)
        .job_queue_capacity(32 * 1024)
        .idle_timeout(None)
        .partial_frame_timeout(None)
        .write_stall_timeout(None)
        .thread_name("rp");
    #[cfg(feature = "tls")]
    let builder = if args.tls {
        builder
            .tls(crate::tls::server_config()?)
            .handshake_timeout(None)
    } else {
        builder
    };
    let echo = handler_fn(move |request: Vec<u8>, _: &Context| {
        if !sleep.is_zero() {
            thread::sleep(sleep);
        }
        request
    });
    builder.start(RawCodec::new(), echo)
}

fn start_threads(listener: TcpListener, args: &ServeArgs) -> io::Result<()> {
    let sleep = args.sleep;
    let stack = args.stack_kib.max(16) * 1024;
    let spawn_failures = Arc::new(AtomicU64::new(0));
    thread::Builder::new()
        .name("acceptor".into())
        .spawn(move || {
            // Runs for the process lifetime, which `wait_for_exit` bounds.
            loop {
                match listener.accept() {
                    Ok((stream, _)) => {
                        let _ = stream.set_nodelay(true);
                        let spawned = thread::Builder::new()
                            .stack_size(stack)
                            .spawn(move || echo_blocking(stream, sleep));
                        if let Err(e) = spawned {
                            // The connection is dropped: its client counts it as lost.
                            let n = spawn_failures.fetch_add(1, Ordering::Relaxed);
                            if n == 0 {
                                eprintln!("thread-per-conn server: cannot spawn a thread: {e}");
                            }
                        }
                    }
                    Err(_) => thread::sleep(ACCEPT_BACKOFF),
                }
            }
        })?;
    Ok(())
}

/// One connection of the thread-per-connection server: read, (sleep), write back, until EOF.
fn echo_blocking(mut stream: TcpStream, sleep: Duration) {
    let mut buf = vec![0u8; CONN_BUFFER];
    loop {
        let n = match stream.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if !sleep.is_zero() {
            thread::sleep(sleep);
        }
        if stream.write_all(&buf[..n]).is_err() {
            return;
        }
    }
}

fn start_tokio(listener: TcpListener, args: &ServeArgs) -> io::Result<tokio::runtime::Runtime> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.threads.max(1))
        .max_blocking_threads(args.blocking.max(1))
        .thread_name("tokio")
        .enable_io()
        .enable_time()
        .build()?;
    listener.set_nonblocking(true)?;
    let sleep = args.sleep;
    let listener = {
        let _guard = runtime.enter();
        tokio::net::TcpListener::from_std(listener)?
    };
    #[cfg(feature = "tls")]
    if args.tls {
        let acceptor = tokio_rustls::TlsAcceptor::from(crate::tls::server_config()?);
        runtime.spawn(async move {
            // As the plain accept loop below.
            loop {
                match listener.accept().await {
                    Ok((stream, _)) => {
                        let _ = stream.set_nodelay(true);
                        tokio::spawn(echo_tokio_tls(acceptor.clone(), stream));
                    }
                    Err(_) => tokio::time::sleep(ACCEPT_BACKOFF).await,
                }
            }
        });
        return Ok(runtime);
    }
    runtime.spawn(async move {
        // Runs for the process lifetime, which `wait_for_exit` bounds.
        loop {
            match listener.accept().await {
                Ok((stream, _)) => {
                    let _ = stream.set_nodelay(true);
                    tokio::spawn(echo_tokio(stream, sleep));
                }
                Err(_) => tokio::time::sleep(ACCEPT_BACKOFF).await,
            }
        }
    });
    Ok(runtime)
}

async fn echo_tokio(mut stream: tokio::net::TcpStream, sleep: Duration) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = vec![0u8; CONN_BUFFER];
    loop {
        let n = match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if !sleep.is_zero()
            && tokio::task::spawn_blocking(move || thread::sleep(sleep))
                .await
                .is_err()
        {
            return;
        }
        if stream.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

/// One connection of the tokio-rustls server: the handshake, then read, write back and
/// flush until the client's close_notify, which is answered with ours (then our FIN).
#[cfg(feature = "tls")]
async fn echo_tokio_tls(acceptor: tokio_rustls::TlsAcceptor, stream: tokio::net::TcpStream) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Ok(mut stream) = acceptor.accept(stream).await else {
        return;
    };
    let mut buf = vec![0u8; CONN_BUFFER];
    loop {
        let n = match stream.read(&mut buf).await {
            Ok(0) => {
                let _ = stream.shutdown().await;
                return;
            }
            Err(_) => return,
            Ok(n) => n,
        };
        if stream.write_all(&buf[..n]).await.is_err() || stream.flush().await.is_err() {
            return;
        }
    }
}
