//! A RESP2 key-value server that redis-cli and redis-benchmark can talk to.
//!
//! ```text
//! cargo run --release --example kv_server -- [--addr 127.0.0.1:6380] [--workers N] [--reactors N] [--requirepass PASS]
//!     [--unix PATH] [--tls-cert PEM --tls-key PEM] [--proxy-protocol]   (see support/transport.rs)
//! redis-cli -p 6380 SET a 1
//! redis-cli -p 6380 -n 3 SET a 1                        # database 3: redis-cli sends SELECT 3
//! redis-cli -p 6380 -a PASS PING                        # with --requirepass PASS: sends AUTH PASS
//! printf 'MULTI\nSET a 1\nINCR a\nEXEC\n' | redis-cli -p 6380   # a transaction
//! printf 'CLIENT SETNAME me\nCLIENT GETNAME\n' | redis-cli -p 6380
//! redis-benchmark -p 6380 -t ping,set,get,incr,mset -q
//! printf 'PING\r\n' | nc -q 1 127.0.0.1 6380            # inline commands work too
//! ```
//!
//! Flags: `--addr` (default `127.0.0.1:6380`), `--workers N`, `--requirepass PASS` (every
//! connection must `AUTH PASS`, or `AUTH default PASS`, first; empty: no password).
//!
//! Commands: PING, ECHO, SET (EX, PX), GET, DEL, EXISTS, INCR, MGET, MSET, COMMAND, CONFIG GET
//! (what redis-benchmark asks at start), QUIT, and per connection: SELECT (databases 0 to
//! 15), AUTH, MULTI / EXEC / DISCARD, CLIENT SETNAME / GETNAME. A wrong type, arity or syntax
//! and an unknown command get an `-ERR` reply and the connection stays open; a protocol
//! violation gets an error reply, then a clean close. The data is shared by every worker,
//! behind sharded locks (`support/kv_store.rs`).
//!
//! Each connection has a session: its database, whether it authenticated, its name, and its
//! transaction. The framework runs one connection's commands one after another in arrival
//! order, so a pipelined `SET k 1` / `GET k` reads its own write. The replies follow
//! redis-server 7's texts, including the order of its checks: an unknown command or a
//! wrong number of arguments is reported before `-NOAUTH`; inside MULTI, either error
//! discards the transaction (EXEC answers `-EXECABORT`), while an error a queued command
//! meets when EXEC runs it is just that command's reply. EXEC is atomic with respect to
//! other connections: it runs its commands with every shard locked. (MGET, MSET, DEL and
//! EXISTS with several keys still lock one key's shard at a time, so unlike redis-server's
//! they are not atomic themselves: a transaction may see half of an MSET.) A failed AUTH
//! leaves an authenticated connection authenticated, as in redis-server.
//!
//! Integer arguments (SELECT's index, SET's `EX`/`PX`, and the value INCR reads) are read as
//! redis-server reads them: an optional `-`, then digits with no leading zero, in an i64.
//! `+5`, `007`, `-0`, ` 5` and `1e3` get `-ERR value is not an integer or out of range`.
//!
//! `SET`'s options are checked as redis-server checks them, every word before any value: a
//! word that is no option, options that do not go together (`EX` with `PX`; also `NX` with
//! `XX`, `KEEPTTL` with an expiry, ...) and a missing value are `-ERR syntax error`, even
//! when a value is bad too; `EX` or `PX` given twice is allowed, and only the last value is
//! read. The options kv_server does not implement (NX, XX, GET, KEEPTTL, EXAT, PXAT) get
//! `-ERR syntax error`, as ever, but only after those checks and after the `EX`/`PX` value
//! is read: where redis-server refuses such a command (a syntax error, a bad expiry), the
//! reply is its reply; where it would act on them, it is kv_server's `-ERR syntax error`,
//! and the key is left as it was.
//!
//! `SET`'s `EX`/`PX` follow redis-server: an expiry that is not positive, or whose unix time
//! in milliseconds would overflow an i64, gets `-ERR invalid expire time in 'set' command`
//! and the key is left as it was; any other is kept, however far (`EX 4294967296` is 136
//! years). One too far ahead for the platform's `Instant` never comes: on Linux, every valid
//! expiry fits.

use std::process::ExitCode;

#[path = "support/allocator.rs"]
mod allocator;
#[path = "support/kv_store.rs"]
mod kv_store;
#[path = "support/protocol_main.rs"]
mod protocol_main;
#[path = "support/resp.rs"]
mod resp;
#[path = "support/shutdown.rs"]
mod shutdown;
#[path = "support/transport.rs"]
pub mod transport;

use kv_store::{Db, Keys, Store, DATABASES};
use reactor_pool::{Context, Handler, Replies};
use resp::{arity, error, parse_int, RespCodec, Value, MAX_BULK, MAX_INLINE, NOT_AN_INTEGER};

/// Commands about the connection's transaction or its end: never queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Flow {
    Multi,
    Exec,
    Discard,
    Quit,
}

/// Commands that run now, or at EXEC when queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Run {
    Ping,
    Echo,
    Get,
    Set,
    Del,
    Exists,
    Incr,
    MGet,
    MSet,
    Command,
    Config,
    Auth,
    Select,
    ClientSetName,
    ClientGetName,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cmd {
    Flow(Flow),
    Run(Run),
}

/// Whether `argc` (the name included) fits `arity`, redis-server's convention: `n` exactly
/// n, `-n` at least n.
fn fits(argc: usize, arity: i32) -> bool {
    match usize::try_from(arity) {
        Ok(exact) => argc == exact,
        Err(_) => argc >= arity.unsigned_abs() as usize,
    }
}

/// `name` in upper case, if it is short enough to be a command (no allocation).
fn upper<'b>(name: &[u8], buf: &'b mut [u8; 16]) -> &'b [u8] {
    if name.len() > buf.len() {
        return &[];
    }
    let buf = &mut buf[..name.len()];
    buf.copy_from_slice(name);
    buf.make_ascii_uppercase();
    buf
}

/// The command `args` names, if it exists and has a number of arguments it can take: what
/// redis-server checks before `NOAUTH` and before queueing. Other argument errors are the
/// command's own, met when it runs.
fn command(args: &[Vec<u8>]) -> Result<Cmd, Value> {
    use {Flow::*, Run::*};
    let mut buf = [0u8; 16];
    let (cmd, arity) = match upper(&args[0], &mut buf) {
        b"PING" => (Cmd::Run(Ping), -1),
        b"ECHO" => (Cmd::Run(Echo), 2),
        b"GET" => (Cmd::Run(Get), 2),
        b"SET" => (Cmd::Run(Set), -3),
        b"DEL" => (Cmd::Run(Del), -2),
        b"EXISTS" => (Cmd::Run(Exists), -2),
        b"INCR" => (Cmd::Run(Incr), 2),
        b"MGET" => (Cmd::Run(MGet), -2),
        b"MSET" => (Cmd::Run(MSet), -3),
        b"COMMAND" => (Cmd::Run(Command), -1),
        b"CONFIG" => (Cmd::Run(Config), -2),
        b"AUTH" => (Cmd::Run(Auth), -2),
        b"SELECT" => (Cmd::Run(Select), 2),
        b"CLIENT" => return client_command(args),
        b"MULTI" => (Cmd::Flow(Multi), 1),
        b"EXEC" => (Cmd::Flow(Exec), 1),
        b"DISCARD" => (Cmd::Flow(Discard), 1),
        b"QUIT" => (Cmd::Flow(Quit), -1),
        _ => {
            let name = String::from_utf8_lossy(&args[0]);
            return Err(error(format!("ERR unknown command '{name}'")));
        }
    };
    if !fits(args.len(), arity) {
        return Err(arity_of(&args[0]));
    }
    Ok(cmd)
}

fn arity_of(name: &[u8]) -> Value {
    arity(&String::from_utf8_lossy(name))
}

/// `CLIENT SETNAME name` and `CLIENT GETNAME`.
fn client_command(args: &[Vec<u8>]) -> Result<Cmd, Value> {
    let Some(sub) = args.get(1) else {
        return Err(arity_of(&args[0]));
    };
    let mut buf = [0u8; 16];
    let (run, argc) = match upper(sub, &mut buf) {
        b"SETNAME" => (Run::ClientSetName, 3),
        b"GETNAME" => (Run::ClientGetName, 2),
        _ => {
            let sub = String::from_utf8_lossy(sub);
            return Err(error(format!(
                "ERR unknown subcommand '{sub}'. Try CLIENT HELP."
            )));
        }
    };
    if args.len() != argc {
        let name = String::from_utf8_lossy(&args[0]);
        return Err(arity(&format!("{name}|{}", String::from_utf8_lossy(sub))));
    }
    Ok(Cmd::Run(run))
}

/// Commands queued after MULTI.
#[derive(Debug, Default)]
struct Transaction {
    queued: Vec<(Run, Vec<Vec<u8>>)>,
    /// A command could not be queued (unknown, or a wrong number of arguments): EXEC
    /// discards the transaction.
    aborted: bool,
}

/// What one connection remembers between its commands.
#[derive(Debug)]
struct Session {
    /// The selected database.
    db: usize,
    authenticated: bool,
    /// `CLIENT SETNAME`'s, if any.
    name: Option<Vec<u8>>,
    /// Since MULTI, until EXEC or DISCARD.
    multi: Option<Transaction>,
}

const NOAUTH: &str = "NOAUTH Authentication required.";
const WRONGPASS: &str = "WRONGPASS invalid username-password pair or user is disabled.";
const NO_PASSWORD: &str = "ERR AUTH <password> called without any password configured for \
    the default user. Are you sure your configuration is correct?";

/// Whether two secrets are equal, in a time that depends on their length only.
fn same_secret(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0, |diff, (x, y)| diff | (x ^ y)) == 0
}

struct Kv {
    store: Store,
    /// `--requirepass`'s.
    password: Option<Vec<u8>>,
}

impl Kv {
    /// Serves a known command with a number of arguments it can take.
    fn serve(
        &self,
        session: &mut Session,
        cmd: Cmd,
        args: Vec<Vec<u8>>,
        replies: &mut Replies<Value>,
    ) -> Value {
        if !session.authenticated {
            match cmd {
                Cmd::Run(Run::Auth) | Cmd::Flow(Flow::Quit) => {}
                // redis-server words a refused EXEC this way.
                Cmd::Flow(Flow::Exec) => {
                    return error(format!(
                        "EXECABORT Transaction discarded because of: {NOAUTH}"
                    ))
                }
                _ => return error(NOAUTH),
            }
        }
        let run = match (cmd, &mut session.multi) {
            // Not queued: it ends the connection, and the transaction with it.
            (Cmd::Flow(Flow::Quit), _) => {
                replies.close();
                return Value::Simple("OK");
            }
            (Cmd::Flow(Flow::Multi), Some(_)) => return error("ERR MULTI calls can not be nested"),
            (Cmd::Flow(Flow::Multi), None) => {
                session.multi = Some(Transaction::default());
                return Value::Simple("OK");
            }
            (Cmd::Flow(Flow::Discard), None) => return error("ERR DISCARD without MULTI"),
            (Cmd::Flow(Flow::Discard), Some(_)) => {
                session.multi = None;
                return Value::Simple("OK");
            }
            (Cmd::Flow(Flow::Exec), None) => return error("ERR EXEC without MULTI"),
            (Cmd::Flow(Flow::Exec), Some(_)) => return self.exec(session),
            (Cmd::Run(run), Some(transaction)) => {
                transaction.queued.push((run, args));
                return Value::Simple("QUEUED");
            }
            (Cmd::Run(run), None) => run,
        };
        self.run(session, &mut &self.store, run, &args)
    }

    /// Runs the transaction's commands with every shard locked: no other connection's
    /// command runs between them.
    fn exec(&self, session: &mut Session) -> Value {
        let Some(transaction) = session.multi.take() else {
            return error("ERR EXEC without MULTI");
        };
        if transaction.aborted {
            return error("EXECABORT Transaction discarded because of previous errors.");
        }
        let mut all = self.store.lock_all();
        let replies = transaction
            .queued
            .into_iter()
            .map(|(run, args)| self.run(session, &mut all, run, &args))
            .collect();
        Value::Array(replies)
    }

    /// Runs one command on the keys `keys` reaches.
    fn run<K: Keys>(
        &self,
        session: &mut Session,
        keys: &mut K,
        run: Run,
        args: &[Vec<u8>],
    ) -> Value {
        let mut db = Db::new(keys, session.db);
        let rest = &args[1..];
        match run {
            Run::Ping => match rest {
                [] => Value::Simple("PONG"),
                [message] => Value::Bulk(Some(message.clone())),
                _ => arity_of(&args[0]),
            },
            Run::Echo => Value::Bulk(Some(rest[0].clone())),
            Run::Get => db.get(&rest[0]),
            Run::Set => db.set(rest),
            Run::Del => db.count(rest, true),
            Run::Exists => db.count(rest, false),
            Run::Incr => db.incr(&rest[0]),
            Run::MGet => db.mget(rest),
            Run::MSet if rest.len() % 2 == 0 => db.mset(rest),
            Run::MSet => arity_of(&args[0]),
            // redis-cli asks for command docs at start; an empty list is a valid answer.
            Run::Command => Value::Array(Vec::new()),
            // redis-benchmark reads `save` and `appendonly` at start.
            Run::Config => match rest {
                [get, name] if get.eq_ignore_ascii_case(b"GET") => Value::Array(vec![
                    Value::Bulk(Some(name.clone())),
                    Value::Bulk(Some(Vec::new())),
                ]),
                _ => arity_of(&args[0]),
            },
            Run::Auth => self.auth(session, rest),
            Run::Select => match parse_int(&rest[0]) {
                None => error(NOT_AN_INTEGER),
                Some(n) if (0..DATABASES as i64).contains(&n) => {
                    session.db = n as usize;
                    Value::Simple("OK")
                }
                Some(_) => error("ERR DB index is out of range"),
            },
            Run::ClientSetName => {
                let name = &rest[1];
                // redis-server's rule: printable ASCII without spaces; empty clears it.
                if !name.iter().all(|b| (b'!'..=b'~').contains(b)) {
                    return error(
                        "ERR Client names cannot contain spaces, newlines or special characters.",
                    );
                }
                session.name = (!name.is_empty()).then(|| name.clone());
                Value::Simple("OK")
            }
            Run::ClientGetName => Value::Bulk(session.name.clone()),
        }
    }

    /// `AUTH password` or `AUTH username password` (only `default` exists).
    fn auth(&self, session: &mut Session, args: &[Vec<u8>]) -> Value {
        let (user, password) = match args {
            [password] => (None, password),
            [user, password] => (Some(user), password),
            _ => return error("ERR syntax error"),
        };
        if user.is_some_and(|user| user != b"default") {
            return error(WRONGPASS);
        }
        match &self.password {
            // Without a password the default user takes any, but not in the short form.
            None if user.is_none() => error(NO_PASSWORD),
            Some(expected) if !same_secret(expected, password) => error(WRONGPASS),
            _ => {
                session.authenticated = true;
                Value::Simple("OK")
            }
        }
    }
}

impl Handler for Kv {
    type Request = Vec<Vec<u8>>;
    type Response = Value;
    type Session = Session;

    fn open(&self, _: &Context, _: &mut Replies<Value>) -> Session {
        Session {
            db: 0,
            authenticated: self.password.is_none(),
            name: None,
            multi: None,
        }
    }

    fn call(
        &self,
        session: &mut Session,
        args: Vec<Vec<u8>>,
        _: &Context,
        replies: &mut Replies<Value>,
    ) {
        let reply = match command(&args) {
            Ok(cmd) => self.serve(session, cmd, args, replies),
            Err(refused) => {
                // Unknown, or a wrong number of arguments: as redis-server, this discards
                // the transaction, if one is open.
                if let Some(transaction) = &mut session.multi {
                    transaction.aborted = true;
                }
                refused
            }
        };
        replies.send(reply);
    }
}

/// Starts the server `main` runs on `addr` without a password: `workers` worker threads and
/// `reactors` reactor threads, or the framework's defaults. Also used by the throughput
/// bench, which includes this file.
pub fn start(
    listen: impl Into<transport::Listen>,
    workers: Option<usize>,
    reactors: Option<usize>,
) -> std::io::Result<reactor_pool::ServerHandle> {
    start_with_password(listen, workers, reactors, None)
}

/// [`start`], with every connection required to `AUTH` with `password` first when it is
/// set and not empty (redis-server's `requirepass`).
pub fn start_with_password(
    listen: impl Into<transport::Listen>,
    workers: Option<usize>,
    reactors: Option<usize>,
    password: Option<String>,
) -> std::io::Result<reactor_pool::ServerHandle> {
    let builder = listen
        .into()
        .builder()?
        .max_frame_size(MAX_BULK + MAX_INLINE)
        .max_connections(19_000)
        // redis-benchmark -P 16 pipelines 16 commands per connection.
        .max_in_flight_per_connection(64)
        .idle_timeout(None);
    let kv = Kv {
        store: Store::default(),
        password: password.filter(|p| !p.is_empty()).map(String::into_bytes),
    };
    protocol_main::with_threads(builder, workers, reactors).start(RespCodec::default(), kv)
}

fn main() -> ExitCode {
    protocol_main::run_example(
        "kv_server",
        "127.0.0.1:6380",
        ("", ""),
        |args| args.opt_value_from_str("--requirepass"),
        |listen, (workers, reactors), password| {
            start_with_password(listen.clone(), workers, reactors, password)
        },
    )
}
