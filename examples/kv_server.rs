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

use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::hash::BuildHasher;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Mutex;
use std::time::{Duration, Instant};

#[path = "support/protocol_main.rs"]
mod protocol_main;
#[path = "support/shutdown.rs"]
mod shutdown;

use reactor_pool::{AfterReply, Builder, Codec, Context, DecodeError, Decoded, Handler};

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
#[derive(Debug, Clone, Default)]
struct RespCodec;

/// Finds the `\r\n`-ended line starting at `at`; returns the line and the index after it.
fn line_at(input: &[u8], at: usize) -> Option<(&[u8], usize)> {
    let end = input[at..].windows(2).position(|w| w == b"\r\n")?;
    Some((&input[at..at + end], at + end + 2))
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

impl Codec for RespCodec {
    type Request = Vec<Vec<u8>>;
    type Response = Reply;

    fn decode(&mut self, input: &[u8]) -> Result<Option<Decoded<Vec<Vec<u8>>>>, DecodeError> {
        let mut start = 0;
        loop {
            if start == input.len() {
                return Ok(None);
            }
            if input[start] != b'*' {
                // An inline command, as typed into nc or telnet: up to `\n`, `\r` optional.
                let Some(newline) = input[start..].iter().position(|&b| b == b'\n') else {
                    if input.len() - start > MAX_INLINE {
                        return Err(protocol("too big inline request"));
                    }
                    return Ok(None);
                };
                let next = start + newline + 1;
                let line = input[start..start + newline]
                    .strip_suffix(b"\r")
                    .unwrap_or(&input[start..start + newline]);
                let args: Vec<Vec<u8>> = line
                    .split(|b| b.is_ascii_whitespace())
                    .filter(|word| !word.is_empty())
                    .map(<[u8]>::to_vec)
                    .collect();
                if args.is_empty() {
                    // An empty line: nothing to do, look at what follows.
                    start = next;
                    continue;
                }
                return Ok(Some((args, next)));
            }
            let Some((header, mut at)) = line_at(input, start) else {
                return Ok(None);
            };
            let count = parse_len(&header[1..], "multibulk")?;
            if count > MAX_ARGS as i64 {
                return Err(protocol("invalid multibulk length"));
            }
            if count <= 0 {
                start = at;
                continue;
            }
            let mut args = Vec::with_capacity(count as usize);
            for _ in 0..count {
                let Some((bulk_header, after)) = line_at(input, at) else {
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
                    return Ok(None);
                }
                if &input[end..end + 2] != b"\r\n" {
                    return Err(protocol("bulk string not ended by CRLF"));
                }
                args.push(input[after..end].to_vec());
                at = end + 2;
            }
            return Ok(Some((args, at)));
        }
    }

    fn encode(&mut self, reply: Reply, out: &mut Vec<u8>) -> AfterReply {
        write_value(&reply.value, out);
        reply.then
    }

    fn error_reply(&mut self, error: &DecodeError, out: &mut Vec<u8>) {
        let why = match error {
            DecodeError::FrameTooLarge { .. } => "request too large".to_string(),
            DecodeError::Invalid(why) => why.clone(),
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

impl Kv {
    fn set(&self, args: &[Vec<u8>]) -> Value {
        let mut expires = None;
        let mut options = args[2..].iter();
        while let Some(option) = options.next() {
            let unit = match option.to_ascii_uppercase().as_slice() {
                b"EX" => Duration::from_secs(1),
                b"PX" => Duration::from_millis(1),
                _ => return error("ERR syntax error"),
            };
            let Some(amount) = options.next() else {
                return error("ERR syntax error");
            };
            match parse_int(amount) {
                Some(n) if n > 0 => expires = Some(Instant::now() + unit * n as u32),
                Some(_) => return error("ERR invalid expire time in 'set' command"),
                None => return error(NOT_AN_INTEGER),
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

    fn call(&self, args: Vec<Vec<u8>>, _ctx: &Context) -> Reply {
        self.run(args)
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
        RespCodec,
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
