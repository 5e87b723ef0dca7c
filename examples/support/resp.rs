//! RESP2 for examples/kv_server.rs: the values replies are made of, and the codec that turns
//! RESP arrays of bulk strings and inline commands into argument lists.

use reactor_pool::{AfterReply, Codec, DecodeError, Decoded, Output};

/// Largest bulk string accepted (redis allows 512 MiB; a demo needs less).
pub const MAX_BULK: usize = 8 * 1024 * 1024;
/// Most arguments in one command.
const MAX_ARGS: usize = 1024 * 1024;
/// Longest inline command line.
pub const MAX_INLINE: usize = 64 * 1024;

/// A RESP2 value, as replies are written.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Simple(&'static str),
    Error(String),
    Integer(i64),
    Bulk(Option<Vec<u8>>),
    Array(Vec<Value>),
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
pub struct RespCodec {
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
    type Response = Value;

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

    fn encode(&mut self, value: Value, out: &mut Output<'_>) -> AfterReply {
        write_value(&value, out);
        AfterReply::KeepOpen
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

/// An error reply.
pub fn error(message: impl Into<String>) -> Value {
    Value::Error(message.into())
}

/// The error for a wrong number of arguments to command `name` (`client|setname` for a
/// subcommand), in lower case as redis-server writes it.
pub fn arity(name: &str) -> Value {
    error(format!(
        "ERR wrong number of arguments for '{}' command",
        name.to_ascii_lowercase()
    ))
}

/// The error for an argument that should be an i64 and is not.
pub const NOT_AN_INTEGER: &str = "ERR value is not an integer or out of range";

/// `bytes` as an i64, if they are one as redis-server reads one (its `string2ll`): an
/// optional `-`, then digits without a leading zero, or `0` alone. Rust's `parse` also took
/// `+5`, `007` and `-0`, which redis-server refuses with [`NOT_AN_INTEGER`], so `INCR`,
/// `SELECT` and `SET`'s `EX`/`PX` accepted what redis-server does not.
pub fn parse_int(bytes: &[u8]) -> Option<i64> {
    let digits = bytes.strip_prefix(b"-").unwrap_or(bytes);
    let canonical = match digits {
        // Not `-0`: its only writing is `0`.
        [b'0'] => digits.len() == bytes.len(),
        [b'1'..=b'9', rest @ ..] => rest.iter().all(u8::is_ascii_digit),
        _ => false,
    };
    if !canonical {
        return None;
    }
    // ASCII, and only overflow is left to refuse (i64::MIN's digits included).
    std::str::from_utf8(bytes).ok()?.parse().ok()
}
