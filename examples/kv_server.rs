//! A RESP2 key-value server that redis-cli and redis-benchmark can talk to.
//!
//! ```text
//! cargo run --release --example kv_server -- [--addr 127.0.0.1:6380] [--workers N]
//! redis-cli -p 6380 SET a 1
//! redis-benchmark -p 6380 -t ping,set,get,incr,mset -q
//! printf 'PING\r\n' | nc -q 1 127.0.0.1 6380        # inline commands work too
//! ```
//!
//! Commands: PING, ECHO, SET (EX, PX), GET, DEL, EXISTS, INCR, MGET, MSET, COMMAND, CONFIG GET
//! (what redis-benchmark asks at start), QUIT. A wrong type, arity or syntax gets an `-ERR`
//! reply and the connection stays open; a protocol violation gets an error reply, then a
//! clean close. The data is shared by every worker, behind sharded locks.
//!
//! `SET`'s `EX`/`PX` follow redis-server: an expiry that is not positive, or whose unix time
//! in milliseconds would overflow an i64, gets `-ERR invalid expire time in 'set' command`
//! and the key is left as it was; any other is kept, however far (`EX 4294967296` is 136
//! years). One too far ahead for the platform's `Instant` never comes: on Linux, every valid
//! expiry fits.

use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::hash::BuildHasher;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

#[path = "support/protocol_main.rs"]
mod protocol_main;
#[path = "support/shutdown.rs"]
mod shutdown;

use reactor_pool::{AfterReply, Builder, Codec, Context, DecodeError, Decoded, Handler, Replies};

/// Largest bulk string accepted (redis allows 512 MiB; a demo needs less).
const MAX_BULK: usize = 8 * 1024 * 1024;
/// Most arguments in one command.
const MAX_ARGS: usize = 1024 * 1024;
/// Longest inline command line.
const MAX_INLINE: usize = 64 * 1024;

/// A RESP2 value, as replies are written.
#[derive(Debug, Clone, PartialEq)]
enum Value {
    Simple(&'static str),
    Error(String),
    Integer(i64),
    Bulk(Option<Vec<u8>>),
    Array(Vec<Value>),
}

/// A reply and whether the connection ends after it (QUIT).
#[derive(Debug)]
struct Reply {
    value: Value,
    then: AfterReply,
}

impl From<Value> for Reply {
    fn from(value: Value) -> Self {
        Reply {
            value,
            then: AfterReply::KeepOpen,
        }
    }
}

fn write_value(value: &Value, out: &mut Vec<u8>) {
    match value {
        Value::Simple(s) => {
            out.push(b'+');
            out.extend_from_slice(s.as_bytes());
        }
        Value::Error(e) => {
            out.push(b'-');
            out.extend_from_slice(e.as_bytes());
        }
        Value::Integer(n) => out.extend_from_slice(format!(":{n}").as_bytes()),
        Value::Bulk(None) => out.extend_from_slice(b"$-1"),
        Value::Bulk(Some(bytes)) => {
            out.extend_from_slice(format!("${}\r\n", bytes.len()).as_bytes());
            out.extend_from_slice(bytes);
        }
        Value::Array(items) => {
            out.extend_from_slice(format!("*{}\r\n", items.len()).as_bytes());
            for item in items {
                write_value(item, out);
            }
            return;
        }
    }
    out.extend_from_slice(b"\r\n");
}

/// Decodes RESP arrays of bulk strings and inline commands into argument lists.
///
/// `decode` is handed every unconsumed byte each time, so an unfinished request comes back
/// with more bytes after it. Rescanning it from its start each time was quadratic: a 7 MB
/// multibulk arriving in 64 KiB reads cost seconds. So the codec (each connection has its
/// own clone) keeps how far it got and what it parsed, and each byte is parsed about once.
#[derive(Debug, Clone, Default)]
struct RespCodec {
    /// Bytes at the front of the input already dealt with: skipped empty lines and empty
    /// multibulks, then the part of the current request that is parsed.
    parsed: usize,
    request: Partial,
}

/// The request being parsed when `decode` last needed more bytes.
#[derive(Debug, Clone, Default)]
enum Partial {
    /// None started yet: the next one starts at `parsed`.
    #[default]
    None,
    /// An inline command starting at `start`, with no `\n` before `parsed`.
    Inline { start: usize },
    /// A multibulk whose header and elements end at `parsed`; `left` elements follow.
    Multibulk { args: Vec<Vec<u8>>, left: usize },
}

/// Longest `*N` or `$N` line without its `\r\n`; an i64 fits with room to spare. The cap
/// keeps looking again at an unended one cheap, and turns endless digits into an error.
const MAX_LENGTH_LINE: usize = 32;

/// Fewest bytes an element takes (`$0\r\n\r\n`).
const MIN_ELEMENT: usize = 6;

/// The `*N` or `$N` line at `at` and the index after its `\r\n`, or `None` until that
/// arrives.
fn length_line<'a>(
    input: &'a [u8],
    at: usize,
    what: &str,
) -> Result<Option<(&'a [u8], usize)>, DecodeError> {
    let window = &input[at..input.len().min(at + MAX_LENGTH_LINE + 2)];
    match window.windows(2).position(|w| w == b"\r\n") {
        Some(end) => Ok(Some((&window[..end], at + end + 2))),
        None if window.len() == MAX_LENGTH_LINE + 2 => {
            Err(protocol(format!("invalid {what} length")))
        }
        None => Ok(None),
    }
}

fn protocol(why: impl Into<String>) -> DecodeError {
    DecodeError::Invalid(why.into())
}

fn parse_len(digits: &[u8], what: &str) -> Result<i64, DecodeError> {
    std::str::from_utf8(digits)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| protocol(format!("invalid {what} length")))
}

impl RespCodec {
    /// Parses on from where the previous call stopped; `input` starts with the bytes it saw.
    fn resume(&mut self, input: &[u8]) -> Result<Option<Decoded<Vec<Vec<u8>>>>, DecodeError> {
        loop {
            match &mut self.request {
                Partial::None => {
                    let Some(&first) = input.get(self.parsed) else {
                        return Ok(None);
                    };
                    if first != b'*' {
                        self.request = Partial::Inline { start: self.parsed };
                        continue;
                    }
                    let Some((header, next)) = length_line(input, self.parsed, "multibulk")? else {
                        return Ok(None);
                    };
                    let count = parse_len(&header[1..], "multibulk")?;
                    if count > MAX_ARGS as i64 {
                        return Err(protocol("invalid multibulk length"));
                    }
                    // `*0` and `*-1` are skipped like empty lines.
                    self.parsed = next;
                    if count > 0 {
                        let left = count as usize;
                        // Room for what the bytes at hand can hold, not for what the header
                        // announces: `*1048576\r\n` alone reserved 24 MiB. Pushing grows it.
                        let fit = (input.len() - next) / MIN_ELEMENT;
                        let args = Vec::with_capacity(left.min(fit));
                        self.request = Partial::Multibulk { args, left };
                    }
                }
                Partial::Inline { start } => {
                    // An inline command, as typed into nc or telnet: up to `\n`, `\r` optional.
                    let start = *start;
                    let Some(newline) = input[self.parsed..].iter().position(|&b| b == b'\n')
                    else {
                        if input.len() - start > MAX_INLINE {
                            return Err(protocol("too big inline request"));
                        }
                        self.parsed = input.len();
                        return Ok(None);
                    };
                    let next = self.parsed + newline + 1;
                    let line = &input[start..next - 1];
                    let line = line.strip_suffix(b"\r").unwrap_or(line);
                    let args: Vec<Vec<u8>> = line
                        .split(|b| b.is_ascii_whitespace())
                        .filter(|word| !word.is_empty())
                        .map(<[u8]>::to_vec)
                        .collect();
                    if !args.is_empty() {
                        return Ok(Some((args, next)));
                    }
                    // An empty line: nothing to do, look at what follows.
                    self.parsed = next;
                    self.request = Partial::None;
                }
                Partial::Multibulk { args, left } => {
                    while *left > 0 {
                        let Some((bulk_header, after)) = length_line(input, self.parsed, "bulk")?
                        else {
                            return Ok(None);
                        };
                        if bulk_header.first() != Some(&b'$') {
                            let got = bulk_header.first().map_or('?', |&b| b as char);
                            return Err(protocol(format!("expected '$', got '{got}'")));
                        }
                        let len = parse_len(&bulk_header[1..], "bulk")?;
                        if len < 0 || len as usize > MAX_BULK {
                            return Err(protocol("invalid bulk length"));
                        }
                        let end = after + len as usize;
                        if input.len() < end + 2 {
                            // Only this element's short header is looked at again.
                            return Ok(None);
                        }
                        if &input[end..end + 2] != b"\r\n" {
                            return Err(protocol("bulk string not ended by CRLF"));
                        }
                        args.push(input[after..end].to_vec());
                        *left -= 1;
                        self.parsed = end + 2;
                    }
                    return Ok(Some((std::mem::take(args), self.parsed)));
                }
            }
        }
    }
}

impl Codec for RespCodec {
    type Request = Vec<Vec<u8>>;
    type Response = Reply;

    fn decode(&mut self, input: &[u8]) -> Result<Option<Decoded<Vec<Vec<u8>>>>, DecodeError> {
        if input.len() < self.parsed {
            // Not the input the progress was made on (the framework never does this).
            *self = RespCodec::default();
        }
        let decoded = self.resume(input);
        if !matches!(decoded, Ok(None)) {
            // The next input starts after this request, or the connection is ending.
            *self = RespCodec::default();
        }
        decoded
    }

    fn encode(&mut self, reply: Reply, out: &mut Vec<u8>) -> AfterReply {
        write_value(&reply.value, out);
        reply.then
    }

    fn error_reply(&mut self, error: &DecodeError, out: &mut Vec<u8>) {
        let why = match error {
            DecodeError::FrameTooLarge { .. } => "request too large".to_string(),
            DecodeError::Invalid(why) => why.clone(),
            other => other.to_string(),
        };
        write_value(&Value::Error(format!("ERR Protocol error: {why}")), out);
    }
}

struct Entry {
    value: Vec<u8>,
    expires: Option<Instant>,
}

/// The data, split over shards so workers rarely wait on each other's lock.
struct Store {
    shards: Vec<Mutex<HashMap<Vec<u8>, Entry>>>,
    hasher: RandomState,
}

const SHARDS: usize = 64;

impl Store {
    fn new() -> Self {
        Store {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            hasher: RandomState::new(),
        }
    }

    /// Runs `f` on the shard holding `key`, with expired entries for `key` already gone.
    fn with_key<T>(&self, key: &[u8], f: impl FnOnce(&mut HashMap<Vec<u8>, Entry>) -> T) -> T {
        let shard = self.hasher.hash_one(key) as usize % SHARDS;
        let mut map = self.shards[shard].lock().unwrap_or_else(|e| e.into_inner());
        if map
            .get(key)
            .is_some_and(|e| e.expires.is_some_and(|at| at <= Instant::now()))
        {
            map.remove(key);
        }
        f(&mut map)
    }

    fn get(&self, key: &[u8]) -> Option<Vec<u8>> {
        self.with_key(key, |map| map.get(key).map(|e| e.value.clone()))
    }

    fn set(&self, key: &[u8], value: Vec<u8>, expires: Option<Instant>) {
        self.with_key(key, |map| {
            map.insert(key.to_vec(), Entry { value, expires })
        });
    }
}

struct Kv {
    store: Store,
}

fn error(message: impl Into<String>) -> Value {
    Value::Error(message.into())
}

fn arity(name: &str) -> Value {
    error(format!(
        "ERR wrong number of arguments for '{}' command",
        name.to_ascii_lowercase()
    ))
}

fn parse_int(bytes: &[u8]) -> Option<i64> {
    std::str::from_utf8(bytes).ok()?.parse().ok()
}

const NOT_AN_INTEGER: &str = "ERR value is not an integer or out of range";

/// When a key set to expire in `amount` units of `unit_ms` milliseconds expires: the rules
/// of redis-server (see the file's doc), in u64/i64 arithmetic that is checked, never cast
/// down (a `u32` cast once made `EX 4294967296` expire at once). `Ok(None)`: never.
fn deadline(amount: i64, unit_ms: i64) -> Result<Option<Instant>, Value> {
    let invalid = || error("ERR invalid expire time in 'set' command");
    if amount <= 0 {
        return Err(invalid());
    }
    let ms = amount.checked_mul(unit_ms).ok_or_else(invalid)?;
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_millis() as i64);
    now_ms.checked_add(ms).ok_or_else(invalid)?;
    Ok(Instant::now().checked_add(Duration::from_millis(ms as u64)))
}

impl Kv {
    fn set(&self, args: &[Vec<u8>]) -> Value {
        let mut expires = None;
        let mut options = args[2..].iter();
        while let Some(option) = options.next() {
            let unit_ms = match option.to_ascii_uppercase().as_slice() {
                b"EX" => 1000,
                b"PX" => 1,
                _ => return error("ERR syntax error"),
            };
            let Some(amount) = options.next() else {
                return error("ERR syntax error");
            };
            let Some(amount) = parse_int(amount) else {
                return error(NOT_AN_INTEGER);
            };
            match deadline(amount, unit_ms) {
                Ok(at) => expires = at,
                Err(invalid) => return invalid,
            }
        }
        self.store.set(&args[0], args[1].clone(), expires);
        Value::Simple("OK")
    }

    fn incr(&self, key: &[u8]) -> Value {
        self.store.with_key(key, |map| {
            let current = match map.get(key) {
                Some(entry) => match parse_int(&entry.value) {
                    Some(n) => n,
                    None => return error(NOT_AN_INTEGER),
                },
                None => 0,
            };
            let Some(next) = current.checked_add(1) else {
                return error("ERR increment or decrement would overflow");
            };
            let expires = map.get(key).and_then(|e| e.expires);
            let value = next.to_string().into_bytes();
            map.insert(key.to_vec(), Entry { value, expires });
            Value::Integer(next)
        })
    }

    fn count(&self, keys: &[Vec<u8>], remove: bool) -> Value {
        let found = keys
            .iter()
            .filter(|key| {
                self.store.with_key(key, |map| {
                    if remove {
                        map.remove(key.as_slice()).is_some()
                    } else {
                        map.contains_key(key.as_slice())
                    }
                })
            })
            .count();
        Value::Integer(found as i64)
    }

    fn run(&self, args: Vec<Vec<u8>>) -> Reply {
        let name = String::from_utf8_lossy(&args[0]).to_ascii_uppercase();
        let rest = &args[1..];
        let value = match (name.as_str(), rest.len()) {
            ("PING", 0) => Value::Simple("PONG"),
            ("PING", 1) => Value::Bulk(Some(rest[0].clone())),
            ("ECHO", 1) => Value::Bulk(Some(rest[0].clone())),
            ("GET", 1) => Value::Bulk(self.store.get(&rest[0])),
            ("SET", n) if n >= 2 => self.set(rest),
            ("DEL", n) if n >= 1 => self.count(rest, true),
            ("EXISTS", n) if n >= 1 => self.count(rest, false),
            ("INCR", 1) => self.incr(&rest[0]),
            ("MGET", n) if n >= 1 => Value::Array(
                rest.iter()
                    .map(|k| Value::Bulk(self.store.get(k)))
                    .collect(),
            ),
            ("MSET", n) if n >= 2 && n % 2 == 0 => {
                for pair in rest.chunks(2) {
                    self.store.set(&pair[0], pair[1].clone(), None);
                }
                Value::Simple("OK")
            }
            // redis-cli asks for command docs at start; an empty list is a valid answer.
            ("COMMAND", _) => Value::Array(Vec::new()),
            // redis-benchmark reads `save` and `appendonly` at start.
            ("CONFIG", 2) if rest[0].eq_ignore_ascii_case(b"GET") => Value::Array(vec![
                Value::Bulk(Some(rest[1].clone())),
                Value::Bulk(Some(Vec::new())),
            ]),
            ("QUIT", _) => {
                return Reply {
                    value: Value::Simple("OK"),
                    then: AfterReply::Close,
                }
            }
            (
                "PING" | "ECHO" | "GET" | "SET" | "DEL" | "EXISTS" | "INCR" | "MGET" | "MSET"
                | "CONFIG",
                _,
            ) => arity(&name),
            _ => error(format!(
                "ERR unknown command '{}'",
                String::from_utf8_lossy(&args[0])
            )),
        };
        value.into()
    }
}

impl Handler for Kv {
    type Request = Vec<Vec<u8>>;
    type Response = Reply;
    type Session = ();

    fn open(&self, _ctx: &Context, _greeting: &mut Replies<Reply>) {}

    fn call(&self, _: &mut (), args: Vec<Vec<u8>>, _: &Context, replies: &mut Replies<Reply>) {
        replies.send(self.run(args));
    }
}

/// Starts the server `main` runs on `addr`: `workers` worker threads and `reactors` reactor
/// threads, or the framework's defaults. Also used by the throughput bench, which includes
/// this file.
pub fn start(
    addr: SocketAddr,
    workers: Option<usize>,
    reactors: Option<usize>,
) -> std::io::Result<reactor_pool::ServerHandle> {
    let builder = Builder::bind(addr)
        .max_frame_size(MAX_BULK + MAX_INLINE)
        .max_connections(19_000)
        // redis-benchmark -P 16 pipelines 16 commands per connection.
        .max_in_flight_per_connection(64)
        .idle_timeout(None);
    protocol_main::with_threads(builder, workers, reactors).start(
        RespCodec::default(),
        Kv {
            store: Store::new(),
        },
    )
}

fn main() -> ExitCode {
    protocol_main::run_example("127.0.0.1:6380", start, |addr| {
        format!("kv_server listening on {addr}")
    })
}
