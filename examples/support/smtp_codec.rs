//! SMTP framing for examples/smtp_server.rs: command lines, and after `354` the message
//! itself, dot-unstuffed and handed on in pieces, until the line holding only `.`.
//!
//! The codec is per connection (each gets its own clone), so it keeps which of the two
//! modes the connection is in. Decoding `DATA` holds decoding
//! ([`Codec::holds_decoding`]) until DATA's reply is encoded: a `354` switches the codec to
//! data mode, so what a pipelining client sent after `DATA` is read as the message; any
//! other reply (`503`) leaves it reading commands. Decoding the terminating dot switches it
//! back.
//!
//! The message is never buffered whole: each decode hands on what arrived (at most
//! [`CHUNK`] bytes) as a [`Request::Chunk`] for the handler to write out. The codec counts
//! the bytes, and past the size limit it hands on nothing more: it skips the rest of the
//! message up to the dot as it arrives ([`Codec::skip`], so no request goes through the
//! pool for it) and reports it as oversized.
//!
//! Only `<CRLF>.<CRLF>` ends a message: a bare LF or CR is data, so no line-ending trick
//! (SMTP smuggling) makes this server see a message end where a relay saw none.

use std::sync::Arc;

use reactor_pool::{AfterReply, Codec, DecodeError, Decoded, Farewell, Output};

/// Longest command line accepted, without its line end (RFC 5321 asks for 512 at least).
/// A longer one gets `500 5.5.6 Line too long` and the connection closes.
pub const MAX_LINE: usize = 4096;

/// Most message bytes handed on in one [`Request::Chunk`].
pub const CHUNK: usize = 64 * 1024;

/// What the handler gets: a command, or part of a message.
#[derive(Debug, PartialEq, Eq)]
pub enum Request {
    /// `HELO name` (`extended: false`) or `EHLO name`.
    Hello {
        name: String,
        extended: bool,
    },
    /// `MAIL FROM:<path>`, with the `SIZE=` parameter if given. `<>` is the empty path.
    Mail {
        from: String,
        size: Option<u64>,
    },
    /// `RCPT TO:<path>`.
    Rcpt {
        to: String,
    },
    Data,
    Rset,
    Noop,
    Quit,
    /// Bytes of the message, dot-unstuffed.
    Chunk(Vec<u8>),
    /// The terminating dot: the message ended, and whether it went over the size limit.
    EndOfData {
        oversized: bool,
    },
}

/// A reply: a code and one or more lines of text (several make a multiline reply).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub code: u16,
    pub lines: Vec<String>,
}

impl Reply {
    pub fn new(code: u16, text: impl Into<String>) -> Self {
        Reply {
            code,
            lines: vec![text.into()],
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Command,
    Data {
        /// The next byte starts a line (where a dot means something).
        at_line_start: bool,
        /// Message bytes handed on so far.
        size: usize,
        /// Over the limit: the rest is skipped up to the dot.
        oversized: bool,
    },
}

/// The SMTP codec; `host` is named in the `421` farewell, `max_size` bounds a message.
#[derive(Debug, Clone)]
pub struct SmtpCodec {
    host: Arc<str>,
    max_size: usize,
    mode: Mode,
}

impl SmtpCodec {
    pub fn new(host: &str, max_size: usize) -> Self {
        SmtpCodec {
            host: host.into(),
            max_size,
            mode: Mode::Command,
        }
    }

    fn decode_command(&mut self, input: &[u8]) -> Result<Option<Decoded<Request>>, DecodeError> {
        let window = &input[..input.len().min(MAX_LINE + 2)];
        let Some(newline) = window.iter().position(|&b| b == b'\n') else {
            // Only `\r\n` may still follow MAX_LINE bytes.
            if input.len() > MAX_LINE + 1 {
                return Err(DecodeError::FrameTooLarge {
                    size: input.len(),
                    max: MAX_LINE,
                });
            }
            return Ok(None);
        };
        // Commands end with CRLF; a bare LF is taken too, for people typing into nc.
        let line = &input[..newline];
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.len() > MAX_LINE {
            let (size, max) = (line.len(), MAX_LINE);
            return Err(DecodeError::FrameTooLarge { size, max });
        }
        let consumed = newline + 1;
        match parse_command(line) {
            Ok(request) => Ok(Some((request, consumed))),
            Err(reply) => Err(DecodeError::Refused {
                consumed,
                reason: reply,
            }),
        }
    }

    /// Message bytes from the front of `input`: how many are used, and the unstuffed
    /// bytes to hand on (none once the message is oversized). Stops before the terminating
    /// dot, after [`CHUNK`] bytes kept, and where the size limit is passed (the bytes past
    /// it are then skipped, not kept).
    fn scan_data(&mut self, input: &[u8]) -> (usize, Vec<u8>) {
        let Mode::Data {
            mut at_line_start,
            mut size,
            mut oversized,
        } = self.mode
        else {
            unreachable!("scan_data runs in data mode only")
        };
        let mut chunk = Vec::new();
        let mut pos = 0;
        // Kept bytes go on in chunks of at most CHUNK; skipped ones all at once.
        while pos < input.len() && (oversized || pos < CHUNK) {
            let rest = &input[pos..];
            if at_line_start {
                if b".\r\n".starts_with(&rest[..rest.len().min(3)]) {
                    // The end (decode answers it), or perhaps the end: wait for more.
                    break;
                }
                if rest[0] == b'.' {
                    pos += 1; // Dot-unstuffing: `..x` is `.x`.
                }
                at_line_start = false;
                continue;
            }
            let end = if oversized {
                input.len()
            } else {
                input.len().min(CHUNK)
            };
            let window = &input[pos..end];
            let (take, ends_line) = match window.windows(2).position(|w| w == b"\r\n") {
                Some(at) => (at + 2, true),
                // No line end here: all of it but a last `\r`, which may begin one.
                None => (
                    window.len() - usize::from(window.last() == Some(&b'\r')),
                    false,
                ),
            };
            if take == 0 {
                break;
            }
            if !oversized {
                if size.saturating_add(take) > self.max_size {
                    // What was kept goes on; from here on, bytes are skipped.
                    oversized = true;
                    break;
                }
                chunk.extend_from_slice(&window[..take]);
                size += take;
            }
            pos += take;
            at_line_start = ends_line;
        }
        self.mode = Mode::Data {
            at_line_start,
            size,
            oversized,
        };
        (pos, chunk)
    }

    fn decode_data(&mut self, input: &[u8]) -> Result<Option<Decoded<Request>>, DecodeError> {
        if let Mode::Data {
            at_line_start: true,
            oversized,
            ..
        } = self.mode
        {
            if input.starts_with(b".\r\n") {
                self.mode = Mode::Command;
                return Ok(Some((Request::EndOfData { oversized }, 3)));
            }
        }
        if matches!(
            self.mode,
            Mode::Data {
                oversized: true,
                ..
            }
        ) {
            return Ok(None); // `skip` takes these bytes.
        }
        let before = self.mode;
        let (pos, chunk) = self.scan_data(input);
        if let (
            true,
            Mode::Data {
                at_line_start,
                size,
                ..
            },
        ) = (chunk.is_empty(), before)
        {
            if let Mode::Data {
                oversized: true, ..
            } = self.mode
            {
                // Over the limit with nothing kept: `skip` takes these bytes, from where
                // this scan began.
                self.mode = Mode::Data {
                    at_line_start,
                    size,
                    oversized: true,
                };
                return Ok(None);
            }
        }
        Ok((pos > 0).then_some((Request::Chunk(chunk), pos)))
    }
}

impl Codec for SmtpCodec {
    type Request = Request;
    type Response = Reply;

    fn decode(&mut self, input: &[u8]) -> Result<Option<Decoded<Request>>, DecodeError> {
        match self.mode {
            Mode::Command => self.decode_command(input),
            Mode::Data { .. } => self.decode_data(input),
        }
    }

    /// The rest of an oversized message, up to its dot: consumed as it arrives, never
    /// handed on.
    fn skip(&mut self, input: &[u8]) -> usize {
        match self.mode {
            Mode::Data {
                oversized: true, ..
            } => self.scan_data(input).0,
            _ => 0,
        }
    }

    fn encode(&mut self, reply: Reply, out: &mut Output<'_>) -> AfterReply {
        let last = reply.lines.len().saturating_sub(1);
        for (i, line) in reply.lines.iter().enumerate() {
            let separator = if i == last { ' ' } else { '-' };
            out.extend_from_slice(format!("{}{separator}{line}\r\n", reply.code).as_bytes());
        }
        if reply.code == 354 {
            // Only DATA is answered 354: what follows is the message.
            self.mode = Mode::Data {
                at_line_start: true,
                size: 0,
                oversized: false,
            };
        }
        AfterReply::KeepOpen
    }

    fn error_reply(&mut self, error: &DecodeError, out: &mut Vec<u8>) {
        let text = match error {
            // The refusal's reason is the whole reply line.
            DecodeError::Refused { reason, .. } => reason.as_str(),
            DecodeError::FrameTooLarge { .. } => "500 5.5.6 Line too long",
            _ => "500 5.5.2 Syntax error",
        };
        out.extend_from_slice(text.as_bytes());
        out.extend_from_slice(b"\r\n");
    }

    fn farewell(&mut self, _why: Farewell, out: &mut Vec<u8>) {
        let line = format!("421 4.4.2 {} closing connection\r\n", self.host);
        out.extend_from_slice(line.as_bytes());
    }

    fn holds_decoding(&self, request: &Request) -> bool {
        // What follows DATA is the message if the reply is 354, commands if not.
        *request == Request::Data
    }
}

/// `rest` without `prefix`, matched case-insensitively.
fn strip_prefix_nocase<'a>(rest: &'a str, prefix: &str) -> Option<&'a str> {
    let head = rest.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| &rest[prefix.len()..])
}

/// `FROM:<path> params` (after `prefix`): the path and the parameters, or `None`. A space
/// after the colon is tolerated, as most servers do.
fn path_and_params<'a>(arg: &'a str, prefix: &str) -> Option<(&'a str, &'a str)> {
    let rest = strip_prefix_nocase(arg, prefix)?.trim_start();
    let rest = rest.strip_prefix('<')?;
    let (path, params) = rest.split_once('>')?;
    let valid = |c: char| !(c.is_whitespace() || c.is_control() || c == '<');
    let separated = params.is_empty() || params.starts_with(' ');
    (path.chars().all(valid) && separated).then_some((path, params.trim()))
}

/// Parses one command line; `Err` is the reply line refusing it (`500` or `501`).
fn parse_command(line: &[u8]) -> Result<Request, String> {
    let line = std::str::from_utf8(line)
        .map_err(|_| "500 5.5.2 Syntax error: 8-bit command".to_string())?;
    if line.chars().any(|c| c.is_control() && c != '\t') {
        return Err("501 5.5.2 Syntax error: control characters".into());
    }
    let (verb, arg) = line.split_once(' ').unwrap_or((line, ""));
    let (verb, arg) = (verb.to_ascii_uppercase(), arg.trim());
    let no_argument = |request: Request| match arg.is_empty() {
        true => Ok(request),
        false => Err(format!("501 5.5.4 Syntax: {verb} takes no argument")),
    };
    match verb.as_str() {
        "HELO" | "EHLO" => match arg.split_whitespace().next() {
            Some(name) => Ok(Request::Hello {
                name: name.into(),
                extended: verb == "EHLO",
            }),
            None => Err(format!("501 5.5.4 Syntax: {verb} hostname")),
        },
        "MAIL" => {
            let syntax = || "501 5.5.4 Syntax: MAIL FROM:<address>".to_string();
            let (from, params) = path_and_params(arg, "FROM:").ok_or_else(syntax)?;
            let mut size = None;
            for param in params.split_whitespace() {
                let (key, value) = param.split_once('=').unwrap_or((param, ""));
                match key.to_ascii_uppercase().as_str() {
                    "SIZE" => match value.parse() {
                        Ok(n) => size = Some(n),
                        Err(_) => return Err("501 5.5.4 Syntax: SIZE=<bytes>".into()),
                    },
                    "BODY"
                        if ["7BIT", "8BITMIME"].contains(&value.to_ascii_uppercase().as_str()) => {}
                    _ => return Err(format!("555 5.5.4 Unsupported parameter {key}")),
                }
            }
            Ok(Request::Mail {
                from: from.into(),
                size,
            })
        }
        "RCPT" => match path_and_params(arg, "TO:") {
            Some((to, "")) if !to.is_empty() => Ok(Request::Rcpt { to: to.into() }),
            Some((_, params)) if !params.is_empty() => {
                Err("555 5.5.4 RCPT parameters are not supported".into())
            }
            _ => Err("501 5.5.4 Syntax: RCPT TO:<address>".into()),
        },
        "DATA" => no_argument(Request::Data),
        "RSET" => no_argument(Request::Rset),
        "QUIT" => no_argument(Request::Quit),
        "NOOP" => Ok(Request::Noop),
        "" => Err("500 5.5.2 Syntax error: empty command".into()),
        _ => Err("500 5.5.2 Command unrecognized".into()),
    }
}
