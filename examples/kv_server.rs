//! A RESP2 key-value server that redis-cli and redis-benchmark can talk to.
//!
//! ```text
//! cargo run --release --example kv_server -- [--addr 127.0.0.1:6380] [--workers N] [--reactors N] [--requirepass PASS]
//!     [--timeout SECS] [--push-limit N]
//!     [--unix PATH] [--tls-cert PEM --tls-key PEM] [--proxy-protocol]   (see support/transport.rs)
//! redis-cli -p 6380 SET a 1
//! redis-cli -p 6380 -n 3 SET a 1                        # database 3: redis-cli sends SELECT 3
//! redis-cli -p 6380 -a PASS PING                        # with --requirepass PASS: sends AUTH PASS
//! printf 'MULTI\nSET a 1\nINCR a\nEXEC\n' | redis-cli -p 6380   # a transaction
//! printf 'CLIENT SETNAME me\nCLIENT GETNAME\n' | redis-cli -p 6380
//! redis-benchmark -p 6380 -t ping,set,get,incr,mset -q
//! printf 'PING\r\n' | nc -q 1 127.0.0.1 6380            # inline commands work too
//! redis-cli -p 6380 SUBSCRIBE news                      # then, from another terminal:
//! redis-cli -p 6380 PUBLISH news hello                  # prints 1: one receiver
//! redis-cli -p 6380 PSUBSCRIBE 'news.*'                 # glob patterns, as redis's
//! ```
//!
//! Flags: `--addr` (default `127.0.0.1:6380`), `--workers N`, `--requirepass PASS` (every
//! connection must `AUTH PASS`, or `AUTH default PASS`, first; empty: no password),
//! `--timeout SECS` (redis's `timeout`: close a connection idle that long, subscribers
//! excepted; default 0, never), `--push-limit N` (messages a subscriber may have waiting to
//! be written before it is closed; default 1,024).
//!
//! Commands: PING, ECHO, SET (EX, PX), GET, DEL, EXISTS, INCR, MGET, MSET, COMMAND, CONFIG GET
//! (what redis-benchmark asks at start), QUIT, RESET, PUBLISH, PUBSUB CHANNELS / NUMSUB /
//! NUMPAT, and per connection: SELECT (databases 0 to 15), AUTH, MULTI / EXEC / DISCARD,
//! CLIENT SETNAME / GETNAME, (P)SUBSCRIBE and (P)UNSUBSCRIBE. A wrong type, arity or syntax
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
//!
//! **Pub/sub** (`support/pubsub.rs`) answers as redis-server 7 does in RESP2: one
//! `subscribe` (`psubscribe`, ...) confirmation per channel with the connection's count of
//! channels and patterns; a message as `message channel payload`, or `pmessage pattern
//! channel payload` for a pattern subscription (a connection subscribed to the channel and
//! to a matching pattern gets both, and PUBLISH counts it twice); UNSUBSCRIBE with no
//! channel undoes every one (in sorted order; redis-server's is its hash table's), or
//! answers `unsubscribe nil count` when there is none. While a connection has a
//! subscription it is in subscribed mode: only (P)SUBSCRIBE, (P)UNSUBSCRIBE, PING (which
//! answers `pong message`), QUIT and RESET run, anything else gets redis-server's `Can't
//! execute` error; and the idle timeout spares it (restored when its last subscription
//! goes). Messages are pushed to the subscriber's connection (`Pusher::push`) after the
//! replies it owes. **A subscriber that does not read** is closed once `--push-limit`
//! messages wait for it, as redis-server closes a pub/sub client past its
//! `client-output-buffer-limit`: it leaves its channels at once (the PUBLISH that found it
//! full still counts it), gets what it was owed if it reads again, then the end of the
//! connection (or the write-stall timeout's, if it never reads). A transaction may subscribe
//! (MULTI, SUBSCRIBE, EXEC), as in redis-server, with two differences in bytes: EXEC's
//! array holds one reply per channel where redis-server's header counts one per command,
//! and a message the transaction publishes to itself follows EXEC's reply instead of
//! sitting inside it.

use std::process::ExitCode;
use std::time::Duration;

#[path = "support/allocator.rs"]
mod allocator;
#[path = "support/kv_commands.rs"]
mod kv_commands;
#[path = "support/kv_store.rs"]
mod kv_store;
#[path = "support/protocol_main.rs"]
mod protocol_main;
#[path = "support/pubsub.rs"]
mod pubsub;
#[path = "support/resp.rs"]
mod resp;
#[path = "support/shutdown.rs"]
mod shutdown;
#[path = "support/transport.rs"]
pub mod transport;

use kv_commands::{allowed_when_subscribed, arity_of, command, full_name, Cmd, Flow, Run};
use kv_store::{Db, Keys, Store, DATABASES};
use pubsub::{Hub, Subscriber};
use reactor_pool::{CloseReason, Context, Handler, Replies};
use resp::{error, parse_int, RespCodec, Value, MAX_BULK, MAX_INLINE, NOT_AN_INTEGER};

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
    /// Its channels and patterns.
    subscriber: Subscriber,
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
    hub: Hub,
    /// `--timeout`'s: the idle timeout of a connection that subscribes to nothing.
    idle_timeout: Option<Duration>,
}

impl Kv {
    /// Serves a known command with a number of arguments it can take.
    fn serve(
        &self,
        session: &mut Session,
        cmd: Cmd,
        args: Vec<Vec<u8>>,
        replies: &mut Replies<Value>,
    ) {
        match self.admit(session, cmd, args, replies) {
            Ok((run, args)) => match self.subscription(session, run, &args, replies) {
                Some(confirmations) => confirmations.into_iter().for_each(|c| replies.send(c)),
                None => replies.send(self.run(session, &mut &self.store, run, &args)),
            },
            Err(reply) => replies.send(reply),
        }
    }

    /// What a known command does before it runs: refused (NOAUTH, or not in subscribed
    /// mode), queued, or a transaction's or the connection's own command, all answered
    /// with `Err(reply)`; `Ok` hands back a command to run now.
    fn admit(
        &self,
        session: &mut Session,
        cmd: Cmd,
        args: Vec<Vec<u8>>,
        replies: &mut Replies<Value>,
    ) -> Result<(Run, Vec<Vec<u8>>), Value> {
        if cmd == Cmd::Flow(Flow::Reset) {
            // Needs no AUTH, is never queued, and is allowed in subscribed mode.
            self.reset(session);
            return Err(Value::Simple("RESET"));
        }
        let refused = if !session.authenticated
            && !matches!(cmd, Cmd::Run(Run::Auth) | Cmd::Flow(Flow::Quit))
        {
            Some((error(NOAUTH), NOAUTH.to_string()))
        } else if session.subscriber.is_subscribed() && !allowed_when_subscribed(cmd) {
            let why = format!(
                "Can't execute '{}': only (P|S)SUBSCRIBE / (P|S)UNSUBSCRIBE / PING / QUIT / \
                 RESET are allowed in this context",
                full_name(&args)
            );
            Some((error(format!("ERR {why}")), why))
        } else {
            None
        };
        if let Some((reply, why)) = refused {
            // redis-server words a refused EXEC this way.
            return Err(match cmd {
                Cmd::Flow(Flow::Exec) => {
                    error(format!("EXECABORT Transaction discarded because of: {why}"))
                }
                _ => reply,
            });
        }
        Err(match (cmd, &mut session.multi) {
            // Not queued: it ends the connection, and the transaction with it.
            (Cmd::Flow(Flow::Quit), _) => {
                replies.close();
                Value::Simple("OK")
            }
            (Cmd::Flow(Flow::Reset), _) => unreachable!("answered above"),
            (Cmd::Flow(Flow::Multi), Some(_)) => error("ERR MULTI calls can not be nested"),
            (Cmd::Flow(Flow::Multi), None) => {
                session.multi = Some(Transaction::default());
                Value::Simple("OK")
            }
            (Cmd::Flow(Flow::Discard), None) => error("ERR DISCARD without MULTI"),
            (Cmd::Flow(Flow::Discard), Some(_)) => {
                session.multi = None;
                Value::Simple("OK")
            }
            (Cmd::Flow(Flow::Exec), None) => error("ERR EXEC without MULTI"),
            (Cmd::Flow(Flow::Exec), Some(_)) => self.exec(session, replies),
            (Cmd::Run(run), Some(transaction)) => {
                transaction.queued.push((run, args));
                Value::Simple("QUEUED")
            }
            (Cmd::Run(run), None) => return Ok((run, args)),
        })
    }

    /// Runs the transaction's commands with every shard locked: no other connection's
    /// command runs between them. A (P)(UN)SUBSCRIBE adds one reply per channel.
    fn exec(&self, session: &mut Session, replies: &mut Replies<Value>) -> Value {
        let Some(transaction) = session.multi.take() else {
            return error("ERR EXEC without MULTI");
        };
        if transaction.aborted {
            return error("EXECABORT Transaction discarded because of previous errors.");
        }
        let mut all = self.store.lock_all();
        let mut results = Vec::with_capacity(transaction.queued.len());
        for (run, args) in transaction.queued {
            match self.subscription(session, run, &args, replies) {
                Some(confirmations) => results.extend(confirmations),
                None => results.push(self.run(session, &mut all, run, &args)),
            }
        }
        Value::Array(results)
    }

    /// (P)SUBSCRIBE and (P)UNSUBSCRIBE, which answer once per channel; `None` for other
    /// commands.
    fn subscription(
        &self,
        session: &mut Session,
        run: Run,
        args: &[Vec<u8>],
        replies: &mut Replies<Value>,
    ) -> Option<Vec<Value>> {
        let subscriber = &mut session.subscriber;
        match run {
            Run::Subscribe(kind) => Some(self.hub.subscribe(subscriber, kind, &args[1..], replies)),
            Run::Unsubscribe(kind) => Some(self.hub.unsubscribe(subscriber, kind, &args[1..])),
            _ => None,
        }
    }

    /// RESET: the connection as it was when it connected, its subscriptions gone.
    fn reset(&self, session: &mut Session) {
        self.hub.leave(&mut session.subscriber);
        session.db = 0;
        session.authenticated = self.password.is_none();
        session.name = None;
        session.multi = None;
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
            // In subscribed mode, redis-server's PING answers like a message.
            Run::Ping => match (rest, session.subscriber.is_subscribed()) {
                ([], false) => Value::Simple("PONG"),
                ([message], false) => Value::Bulk(Some(message.clone())),
                ([], true) => pong(b""),
                ([message], true) => pong(message),
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
            Run::Publish => Value::Integer(self.hub.publish(&rest[0], &rest[1])),
            Run::PubSubChannels => match rest {
                [_] => self.hub.channels(None),
                [_, pattern] => self.hub.channels(Some(pattern)),
                _ => error(format!(
                    "ERR unknown subcommand or wrong number of arguments for '{}'. \
                     Try PUBSUB HELP.",
                    String::from_utf8_lossy(&rest[0])
                )),
            },
            Run::PubSubNumSub => self.hub.numsub(&rest[1..]),
            Run::PubSubNumPat => self.hub.numpat(),
            Run::Subscribe(_) | Run::Unsubscribe(_) => unreachable!("Kv::subscription's"),
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
            subscriber: Subscriber::default(),
        }
    }

    fn call(
        &self,
        session: &mut Session,
        args: Vec<Vec<u8>>,
        _: &Context,
        replies: &mut Replies<Value>,
    ) {
        let subscribed = session.subscriber.is_subscribed();
        match command(&args) {
            Ok(cmd) => self.serve(session, cmd, args, replies),
            Err(refused) => {
                // Unknown, or a wrong number of arguments: as redis-server, this discards
                // the transaction, if one is open.
                if let Some(transaction) = &mut session.multi {
                    transaction.aborted = true;
                }
                replies.send(refused);
            }
        }
        // A subscriber waits for messages as long as it takes: redis-server's `timeout`
        // spares it too.
        match (subscribed, session.subscriber.is_subscribed()) {
            (false, true) => replies.set_idle_timeout(None),
            (true, false) => replies.set_idle_timeout(self.idle_timeout),
            _ => {}
        }
    }

    fn close(&self, mut session: Session, _: &Context, _: CloseReason) {
        self.hub.leave(&mut session.subscriber);
    }
}

/// PING's answer in subscribed mode.
fn pong(message: &[u8]) -> Value {
    Value::Array(vec![
        Value::Bulk(Some(b"pong".to_vec())),
        Value::Bulk(Some(message.to_vec())),
    ])
}

/// What kv_server's own flags set.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// `--requirepass`: every connection must `AUTH` with it first (none or empty: no
    /// password), as with redis-server's `requirepass`.
    pub password: Option<String>,
    /// `--timeout`: the idle timeout of a connection without subscriptions (none: never).
    pub timeout: Option<Duration>,
    /// `--push-limit`: the messages a subscriber may have waiting before it is closed
    /// (none: the framework's default, 1,024).
    pub push_limit: Option<usize>,
}

/// Starts the server `main` runs on `addr` without a password: `workers` worker threads and
/// `reactors` reactor threads, or the framework's defaults. Also used by the throughput
/// bench, which includes this file.
pub fn start(
    listen: impl Into<transport::Listen>,
    workers: Option<usize>,
    reactors: Option<usize>,
) -> std::io::Result<reactor_pool::ServerHandle> {
    start_with(listen, workers, reactors, Options::default())
}

/// [`start`], with every connection required to `AUTH` with `password` first when it is
/// set and not empty (redis-server's `requirepass`).
pub fn start_with_password(
    listen: impl Into<transport::Listen>,
    workers: Option<usize>,
    reactors: Option<usize>,
    password: Option<String>,
) -> std::io::Result<reactor_pool::ServerHandle> {
    let options = Options {
        password,
        ..Options::default()
    };
    start_with(listen, workers, reactors, options)
}

/// [`start`], with the [`Options`] kv_server's flags set.
pub fn start_with(
    listen: impl Into<transport::Listen>,
    workers: Option<usize>,
    reactors: Option<usize>,
    options: Options,
) -> std::io::Result<reactor_pool::ServerHandle> {
    let mut builder = listen
        .into()
        .builder()?
        .max_frame_size(MAX_BULK + MAX_INLINE)
        .max_connections(19_000)
        // redis-benchmark -P 16 pipelines 16 commands per connection.
        .max_in_flight_per_connection(64)
        .idle_timeout(options.timeout);
    if let Some(limit) = options.push_limit {
        builder = builder.push_limit(limit);
    }
    let kv = Kv {
        store: Store::default(),
        password: options
            .password
            .filter(|p| !p.is_empty())
            .map(String::into_bytes),
        hub: Hub::default(),
        idle_timeout: options.timeout,
    };
    protocol_main::with_threads(builder, workers, reactors).start(RespCodec::default(), kv)
}

fn main() -> ExitCode {
    protocol_main::run_example(
        "kv_server",
        "127.0.0.1:6380",
        ("", ""),
        |args| {
            let timeout: Option<u64> = args.opt_value_from_str("--timeout")?;
            Ok(Options {
                password: args.opt_value_from_str("--requirepass")?,
                timeout: timeout.filter(|&secs| secs > 0).map(Duration::from_secs),
                push_limit: args.opt_value_from_str("--push-limit")?,
            })
        },
        |listen, (workers, reactors), options| {
            start_with(listen.clone(), workers, reactors, options)
        },
    )
}
