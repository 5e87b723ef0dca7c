//! An SMTP server (a subset of RFC 5321) that stores every message it accepts in a maildir.
//!
//! ```text
//! cargo run --release --example smtp_server -- [--addr 127.0.0.1:2525] [--maildir DIR]
//!     [--max-size BYTES] [--workers N] [--reactors N] [--hostname NAME] [--idle-timeout SECS]
//!     [--unix PATH] [--tls-cert PEM --tls-key PEM] [--proxy-protocol]
//! swaks --server 127.0.0.1:2525 --to a@example.org,b@example.org --pipeline
//! printf 'EHLO me\r\nQUIT\r\n' | nc -C -q 1 127.0.0.1 2525
//! ```
//!
//! Commands: EHLO (advertising PIPELINING, SIZE, 8BITMIME, ENHANCEDSTATUSCODES), HELO,
//! MAIL FROM (parameters SIZE and BODY), RCPT TO (up to 100 recipients), DATA, RSET, NOOP,
//! QUIT. A command out of sequence gets `503 5.5.1 Bad sequence of commands`; an unknown
//! command `500`, a malformed one `501`, and the connection stays open. A message over the
//! size limit (default 10 MiB) gets `552` and is not stored; the connection stays usable.
//!
//! Each accepted message is written by a worker to `DIR/tmp/ID` while it arrives (blocking
//! file writes: what the framework's worker pool is for), synced, renamed to `DIR/new/ID`,
//! and answered `250 2.0.0 OK queued as ID`. The file starts with a `Return-Path:` header
//! (the envelope sender), one `X-Envelope-To:` header per recipient and a `Received:` header,
//! then the message as sent, dot-unstuffed. The envelope is reset after each message, so one
//! connection may send many. The default `DIR` is `reactor-pool-smtp` in the system's
//! temporary directory.
//!
//! A connection idle for the idle timeout (default 300 s, RFC 5321's), or still connected
//! when the server shuts down (SIGINT, SIGTERM), gets `421 4.4.2 HOST closing connection`.
//! Framing (command lines, the message after `354`) is in `support/smtp_codec.rs`.
//!
//! With `--tls-cert`/`--tls-key` (build with `--features tls`) it speaks SMTP over TLS from
//! the first byte (implicit TLS, RFC 8314's "submissions", as on port 465; `swaks --tlsc`).
//! STARTTLS is not offered: upgrading a connection mid-stream is not something the
//! framework's transports do.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

#[path = "support/shutdown.rs"]
mod shutdown;
#[path = "support/smtp_codec.rs"]
pub mod smtp_codec;
#[path = "support/smtp_maildir.rs"]
mod smtp_maildir;
#[path = "support/transport.rs"]
pub mod transport;

use reactor_pool::{CloseReason, Context, Handler, Replies, ServerHandle};
use smtp_codec::{Reply, Request, SmtpCodec};
use smtp_maildir::{Incoming, Maildir};

/// Recipients accepted for one message (RFC 5321 section 4.5.3.1.8 asks for 100 at least).
const MAX_RECIPIENTS: usize = 100;

const USAGE: &str = "usage: smtp_server [--addr 127.0.0.1:2525] [--maildir DIR] \
[--max-size BYTES] [--workers N] [--reactors N] [--hostname NAME] [--idle-timeout SECS] \
[--unix PATH] [--tls-cert PEM --tls-key PEM] [--proxy-protocol]";

/// How to run the server; [`Config::new`] gives the defaults.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where and how to listen (TCP address, Unix socket, TLS, PROXY protocol).
    pub listen: transport::Listen,
    /// Created if missing, with `tmp/`, `new/` and `cur/` in it.
    pub maildir: PathBuf,
    /// Largest message accepted, in bytes (as sent, after dot-unstuffing).
    pub max_size: usize,
    /// Named in the greeting, EHLO reply, `Received:` header and `421`.
    pub hostname: String,
    /// Worker threads; `None`: the framework's default.
    pub workers: Option<usize>,
    /// Reactor threads; `None`: the framework's default.
    pub reactors: Option<usize>,
    /// A connection with no command (or no message bytes) for this long gets `421`.
    pub idle_timeout: Duration,
}

impl Config {
    pub fn new(addr: SocketAddr, maildir: PathBuf) -> Self {
        Config {
            listen: addr.into(),
            maildir,
            max_size: 10 * 1024 * 1024,
            hostname: system_hostname(),
            workers: None,
            reactors: None,
            idle_timeout: Duration::from_secs(300),
        }
    }
}

fn system_hostname() -> String {
    ["/proc/sys/kernel/hostname", "/etc/hostname"]
        .iter()
        .filter_map(|path| std::fs::read_to_string(path).ok())
        .map(|name| name.trim().to_string())
        .find(|name| !name.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

/// The handler: one per server, shared by every worker.
struct Smtp {
    host: String,
    max_size: usize,
    maildir: Maildir,
}

/// One connection's state.
#[derive(Debug, Default)]
struct Session {
    /// The HELO/EHLO name, once greeted, and whether it was EHLO.
    hello: Option<(String, bool)>,
    from: Option<String>,
    to: Vec<String>,
    /// The message after `354`, until its dot.
    message: Option<Incoming>,
    /// Messages started on this connection.
    started: u64,
}

impl Session {
    /// Forgets the envelope (RSET, EHLO, after each message).
    fn reset(&mut self) {
        self.from = None;
        self.to.clear();
    }
}

fn bad_sequence() -> Reply {
    Reply::new(503, "5.5.1 Bad sequence of commands")
}

impl Smtp {
    fn hello(&self, session: &mut Session, name: String, extended: bool) -> Reply {
        session.reset();
        let reply = if extended {
            let lines = vec![
                format!("{} greets {name}", self.host),
                "PIPELINING".into(),
                format!("SIZE {}", self.max_size),
                "8BITMIME".into(),
                "ENHANCEDSTATUSCODES".into(),
            ];
            Reply { code: 250, lines }
        } else {
            Reply::new(250, &self.host)
        };
        session.hello = Some((name, extended));
        reply
    }

    fn mail(&self, session: &mut Session, from: String, size: Option<u64>) -> Reply {
        if session.hello.is_none() || session.from.is_some() {
            return bad_sequence();
        }
        if size.is_some_and(|size| size > self.max_size as u64) {
            return Reply::new(552, "5.3.4 Message size exceeds fixed maximum message size");
        }
        session.from = Some(from);
        Reply::new(250, "2.1.0 Sender OK")
    }

    fn rcpt(&self, session: &mut Session, to: String) -> Reply {
        if session.from.is_none() {
            return bad_sequence();
        }
        if session.to.len() >= MAX_RECIPIENTS {
            return Reply::new(452, "4.5.3 Too many recipients");
        }
        session.to.push(to);
        Reply::new(250, "2.1.5 Recipient OK")
    }

    /// DATA: starts the message file and answers 354, which switches the codec to the
    /// message.
    fn data(&self, session: &mut Session, ctx: &Context) -> Reply {
        let (Some(from), Some((hello, extended))) = (&session.from, &session.hello) else {
            return bad_sequence();
        };
        if session.to.is_empty() {
            return bad_sequence();
        }
        session.started += 1;
        let id = smtp_maildir::message_id(ctx.connection_id(), session.started);
        let mut header = format!("Return-Path: <{from}>\r\n");
        for to in &session.to {
            header.push_str(&format!("X-Envelope-To: <{to}>\r\n"));
        }
        header.push_str(&format!(
            "Received: from {hello} ({})\r\n\tby {} (reactor-pool) with {} id {id};\r\n\t{}\r\n",
            match ctx.peer_addr() {
                Some(addr) => format!("[{}]", addr.ip()),
                None => "local".to_string(),
            },
            self.host,
            if *extended { "ESMTP" } else { "SMTP" },
            smtp_maildir::rfc5322_date(SystemTime::now()),
        ));
        match self.maildir.begin(id, header.as_bytes()) {
            Ok(message) => {
                session.message = Some(message);
                Reply::new(354, "End data with <CR><LF>.<CR><LF>")
            }
            Err(e) => {
                log::error!(
                    "connection {}: starting a message: {e}",
                    ctx.connection_id()
                );
                session.reset();
                Reply::new(451, "4.3.0 Local error: cannot store the message")
            }
        }
    }

    /// The terminating dot: stores the message (or not) and resets the envelope.
    fn end_of_data(&self, session: &mut Session, oversized: bool, ctx: &Context) -> Reply {
        let recipients = session.to.len();
        session.reset();
        let Some(message) = session.message.take() else {
            return bad_sequence(); // Cannot happen: the codec reads a message after 354 only.
        };
        if oversized {
            message.discard();
            return Reply::new(552, "5.3.4 Message size exceeds fixed maximum message size");
        }
        match message.commit() {
            Ok(id) => {
                log::info!(
                    "connection {}: queued {id} for {recipients} recipient(s)",
                    ctx.connection_id()
                );
                Reply::new(250, format!("2.0.0 OK queued as {id}"))
            }
            Err(e) => {
                log::error!("connection {}: storing a message: {e}", ctx.connection_id());
                Reply::new(451, "4.3.0 Local error: cannot store the message")
            }
        }
    }
}

impl Handler for Smtp {
    type Request = Request;
    type Response = Reply;
    type Session = Session;

    fn open(&self, _ctx: &Context, greeting: &mut Replies<Reply>) -> Session {
        greeting.send(Reply::new(220, format!("{} ESMTP reactor-pool", self.host)));
        Session::default()
    }

    fn call(
        &self,
        session: &mut Session,
        request: Request,
        ctx: &Context,
        replies: &mut Replies<Reply>,
    ) {
        let reply = match request {
            Request::Chunk(bytes) => {
                if let Some(message) = &mut session.message {
                    message.write(&bytes);
                }
                return; // Message bytes get no reply; the dot does.
            }
            Request::EndOfData { oversized } => self.end_of_data(session, oversized, ctx),
            Request::Hello { name, extended } => self.hello(session, name, extended),
            Request::Mail { from, size } => self.mail(session, from, size),
            Request::Rcpt { to } => self.rcpt(session, to),
            Request::Data => self.data(session, ctx),
            Request::Rset => {
                session.reset();
                Reply::new(250, "2.0.0 OK")
            }
            Request::Noop => Reply::new(250, "2.0.0 OK"),
            Request::Quit => {
                replies.send(Reply::new(
                    221,
                    format!("2.0.0 {} closing connection", self.host),
                ));
                replies.close();
                return;
            }
        };
        replies.send(reply);
    }

    fn close(&self, session: Session, ctx: &Context, reason: CloseReason) {
        if let Some(message) = session.message {
            log::info!(
                "connection {} ended ({reason:?}) during a message: dropping it",
                ctx.connection_id()
            );
            message.discard();
        }
    }
}

/// Starts the server `config` describes (also used by tests/it/smtp_server_clients.rs).
pub fn start(config: &Config) -> std::io::Result<ServerHandle> {
    let maildir = Maildir::create(&config.maildir)?;
    let builder = config
        .listen
        .builder()?
        .idle_timeout(Some(config.idle_timeout))
        .partial_frame_timeout(Some(config.idle_timeout))
        .thread_name("smtp");
    let builder = match config.workers {
        Some(n) => builder.workers(n),
        None => builder,
    };
    let builder = match config.reactors {
        Some(n) => builder.reactors(n),
        None => builder,
    };
    let handler = Smtp {
        host: config.hostname.clone(),
        max_size: config.max_size,
        maildir,
    };
    builder.start(SmtpCodec::new(&config.hostname, config.max_size), handler)
}

fn parse_args() -> Result<Option<Config>, Box<dyn std::error::Error>> {
    let mut args = pico_args::Arguments::from_env();
    if args.contains(["-h", "--help"]) {
        println!("{USAGE}");
        return Ok(None);
    }
    let listen = transport::Listen::from_args(&mut args, "127.0.0.1:2525")?;
    let maildir: Option<PathBuf> = args.opt_value_from_str("--maildir")?;
    let maildir = maildir.unwrap_or_else(|| std::env::temp_dir().join("reactor-pool-smtp"));
    let mut config = Config::new(listen.addr, maildir);
    config.listen = listen;
    if let Some(bytes) = args.opt_value_from_str("--max-size")? {
        config.max_size = bytes;
    }
    config.workers = args.opt_value_from_str("--workers")?;
    config.reactors = args.opt_value_from_str("--reactors")?;
    if let Some(name) = args.opt_value_from_str("--hostname")? {
        config.hostname = name;
    }
    if let Some(secs) = args.opt_value_from_str("--idle-timeout")? {
        config.idle_timeout = Duration::from_secs(secs);
    }
    let rest = args.finish();
    if !rest.is_empty() {
        return Err(format!("unknown arguments: {rest:?}\n{USAGE}").into());
    }
    Ok(Some(config))
}

fn main() -> ExitCode {
    shutdown::run_main(|| {
        let Some(config) = parse_args()? else {
            return Ok(());
        };
        let on_signal = shutdown::OnSignal::install()?;
        let server = start(&config)?;
        log::info!(
            "smtp_server listening on {} (maildir {}, messages up to {} bytes)",
            config.listen.describe(&server, ""),
            config.maildir.display(),
            config.max_size
        );
        on_signal.serve(server);
        Ok(())
    })
}
