//! A small HTTP/1.1 server: keep-alive, pipelining, bodies by Content-Length, the error
//! replies a real client expects, static files sent with sendfile(2) and a streamed body.
//! Parsing is httparse's; framing and the rules are the codec's.
//!
//! ```text
//! cargo run --release --example http_hello -- [--addr 127.0.0.1:8080] [--workers N] [--reactors N]
//!     [--root DIR] [--unix PATH] [--tls-cert PEM --tls-key PEM] [--proxy-protocol]
//! curl -v http://127.0.0.1:8080/
//! curl -O http://127.0.0.1:8080/files/big.iso          # with --root DIR holding big.iso
//! curl -r 0-99 http://127.0.0.1:8080/files/big.iso     # the first 100 bytes, 206
//! curl --raw http://127.0.0.1:8080/stream?bytes=100000 # a chunked body
//! curl --cacert ca.pem https://localhost:8443/        # with --features tls and --tls-*
//! wrk -t2 -c100 -d5s http://127.0.0.1:8080/
//! ab -k -n 10000 -c 50 http://127.0.0.1:8080/
//! ```
//!
//! Routes: `GET /` (and `HEAD /`) → 200 `Hello, world!`; `POST /echo` → 200 with the request
//! body; any other path → 404; any other method → 405. A query (`?...`) is not part of the
//! path. A malformed request → 400, headers over the limit → 431, a body over the limit →
//! 413, chunked request bodies → 501; each is followed by a clean close. A request with
//! `Connection: close` (or HTTP/1.0 without keep-alive) gets its reply and then a clean
//! close, and nothing the client pipelined after it is run (RFC 9112 §9.6; the codec says so
//! in `Codec::closes_after`, before the handler runs).
//!
//! `GET /stream?bytes=N` (and `HEAD`) → 200 with N bytes: the line `0-9a-zA-Z` and a newline
//! (63 bytes) repeated, cut at N bytes, made 16 KiB at a time on a worker as the socket drains
//! (a `BodyStream`). HTTP/1.1 gets it `Transfer-Encoding: chunked`; HTTP/1.0 gets it as it is,
//! ended by the connection's close (`Connection: close`). A missing or bad N → 400.
//!
//! `GET /files/PATH` (and `HEAD`), with `--root DIR` only (without it `/files/...` is a 404
//! like any unknown path): the regular file DIR/PATH, opened by the handler on a worker and
//! sent as a `FileRegion` (sendfile(2) on plain TCP and Unix sockets, 64 KiB reads under TLS),
//! with `Content-Length`, `Accept-Ranges: bytes` and a Content-Type by extension (`.html`,
//! `.txt`, `.css`, `.js`, `.json`, `.png`, `.jpg`; else application/octet-stream). A `GET`
//! with one `Range: bytes=a-b`, `bytes=a-` or `bytes=-n` → 206 with `Content-Range`; a range
//! starting past the end (or `bytes=-0`) → 416 with `Content-Range: bytes */LEN`; several
//! ranges, another unit or a malformed value → the whole file, 200. Missing files,
//! directories and anything not a regular file → 404. No escape from DIR: a `..` or `.`
//! segment, an empty one (`//`, an absolute path), a NUL or backslash, a `%` encoding `.`,
//! `/`, `\` or NUL → 400; a path that resolves (through symbolic links) outside DIR → 404.
//! A file that shrinks during its download ends that connection after the bytes it still
//! had (the client sees the body cut short). The route is `examples/support/static_files.rs`.
//!
//! A body's length must be unambiguous (RFC 9112 section 6.3), or the request gets a 400 and
//! the close: Content-Length values (repeated headers, or a list in one) that differ, one that
//! is not all digits (`+5`) or is too big for a u64 (a valid length over the limit is a
//! 413), and Transfer-Encoding together with Content-Length or with a final coding other
//! than chunked. Identical Content-Length values count as one.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

#[path = "support/protocol_main.rs"]
mod protocol_main;
#[path = "support/shutdown.rs"]
mod shutdown;
#[path = "support/static_files.rs"]
mod static_files;
#[path = "support/transport.rs"]
pub mod transport;

use reactor_pool::{
    AfterReply, Body, BodyStream, Codec, Context, DecodeError, Decoded, Framing, Handler, Output,
    Replies,
};

/// Bytes of request line plus headers accepted before answering 431.
const MAX_HEADER_BYTES: usize = 8 * 1024;
/// Headers accepted before answering 431.
const MAX_HEADERS: usize = 64;
/// Request body bytes accepted before answering 413.
const MAX_BODY: usize = 1024 * 1024;

/// One parsed request.
#[derive(Debug)]
struct Request {
    method: String,
    path: String,
    /// The `Range` header, for the file route.
    range: Option<String>,
    body: Vec<u8>,
    /// The connection's last request (`Connection: close`, or HTTP/1.0 without
    /// keep-alive): RFC 9112 §9.6, nothing the client sent after it is processed.
    close: bool,
}

/// What the handler answers.
#[derive(Debug)]
struct Response {
    status: u16,
    content_type: &'static str,
    /// More header lines, each ending in CRLF (the file route's `Content-Range`).
    headers: String,
    /// Bytes, a file region (sendfile), or a stream: HTTP/1.1 gets it chunked, HTTP/1.0 raw
    /// with a close after it.
    body: Body,
}

impl Response {
    fn text(status: u16, body: &str) -> Response {
        Response {
            status,
            content_type: "text/plain",
            headers: String::new(),
            body: Body::Bytes(body.as_bytes().to_vec()),
        }
    }
}

/// How a request wants its connection treated, remembered in request order so `encode`
/// (which gets responses in that same order) can honour it.
#[derive(Debug, Clone, Copy)]
struct ReplyShape {
    /// HTTP/1.0 (status line and keep-alive rules differ).
    http10: bool,
    close: bool,
    head: bool,
}

#[derive(Debug, Clone, Default)]
struct HttpCodec {
    pending: VecDeque<ReplyShape>,
    /// The status of the error reply for the decode error just returned.
    error_status: u16,
}

impl HttpCodec {
    fn reject(&mut self, status: u16, why: &str) -> DecodeError {
        self.error_status = status;
        DecodeError::Invalid(format!("{status} {}: {why}", reason(status)))
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        206 => "Partial Content",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        413 => "Content Too Large",
        416 => "Range Not Satisfiable",
        431 => "Request Header Fields Too Large",
        501 => "Not Implemented",
        _ => "Unknown",
    }
}

/// One Content-Length value (or list element): `1*DIGIT` around optional whitespace, as RFC
/// 9112 section 6.3 demands; `+5` or `5 5` is `None`. So is a number too big for a u64:
/// it is no length this server can hold, and RFC 9112 section 6.3 makes a Content-Length
/// that cannot be parsed an invalid message (400), not a large body (413).
fn content_length_value(value: &[u8]) -> Option<u64> {
    let digits = value.trim_ascii();
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    digits.iter().try_fold(0u64, |len, &digit| {
        len.checked_mul(10)?.checked_add(u64::from(digit - b'0'))
    })
}

fn header_is(value: &[u8], token: &str) -> bool {
    value
        .split(|&b| b == b',')
        .any(|part| part.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
}

/// The status line and the headers but `Connection`. A body of unknown length (`len` is
/// `None`, a stream) is chunked for HTTP/1.1, and for HTTP/1.0 ends with the connection.
fn write_head(out: &mut Vec<u8>, http10: bool, status: u16, content_type: &str, len: Option<u64>) {
    let version = if http10 { "HTTP/1.0" } else { "HTTP/1.1" };
    out.extend_from_slice(
        format!(
            "{version} {status} {}\r\nServer: reactor-pool\r\nContent-Type: {content_type}\r\n",
            reason(status)
        )
        .as_bytes(),
    );
    match len {
        Some(len) => out.extend_from_slice(format!("Content-Length: {len}\r\n").as_bytes()),
        None if !http10 => out.extend_from_slice(b"Transfer-Encoding: chunked\r\n"),
        None => {}
    }
}

impl Codec for HttpCodec {
    type Request = Request;
    type Response = Response;

    fn decode(&mut self, input: &[u8]) -> Result<Option<Decoded<Request>>, DecodeError> {
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut parsed = httparse::Request::new(&mut headers);
        let head_len = match parsed.parse(input) {
            Ok(httparse::Status::Complete(len)) => len,
            Ok(httparse::Status::Partial) if input.len() > MAX_HEADER_BYTES => {
                return Err(self.reject(431, "headers too long"));
            }
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(httparse::Error::TooManyHeaders) => {
                return Err(self.reject(431, "too many headers"))
            }
            Err(e) => return Err(self.reject(400, &e.to_string())),
        };
        if head_len > MAX_HEADER_BYTES {
            return Err(self.reject(431, "headers too long"));
        }
        let http10 = parsed.version == Some(0);
        let mut close = http10;
        let mut content_length = None;
        let mut range = None;
        // Once a Transfer-Encoding header was seen: whether the final coding named is chunked.
        let mut ends_chunked = None;
        for header in parsed.headers.iter() {
            if header.name.eq_ignore_ascii_case("content-length") {
                for value in header.value.split(|&b| b == b',') {
                    let len = content_length_value(value)
                        .ok_or_else(|| self.reject(400, "bad Content-Length"))?;
                    // Where the body ends must not depend on which value a reader believes:
                    // trusting the last one answered a request smuggled in the body.
                    if content_length.is_some_and(|seen| seen != len) {
                        return Err(self.reject(400, "differing Content-Length values"));
                    }
                    content_length = Some(len);
                }
            } else if header.name.eq_ignore_ascii_case("transfer-encoding") {
                // The headers make one list, whose empty elements name no coding.
                let named = header
                    .value
                    .split(|&b| b == b',')
                    .map(<[u8]>::trim_ascii)
                    .rfind(|coding| !coding.is_empty());
                ends_chunked = Some(match named {
                    Some(coding) => coding.eq_ignore_ascii_case(b"chunked"),
                    None => ends_chunked.unwrap_or(false),
                });
            } else if header.name.eq_ignore_ascii_case("range") {
                range = Some(String::from_utf8_lossy(header.value).into_owned());
            } else if header.name.eq_ignore_ascii_case("connection") {
                if header_is(header.value, "close") {
                    close = true;
                } else if header_is(header.value, "keep-alive") {
                    close = false;
                }
            }
        }
        if let Some(ends_chunked) = ends_chunked {
            // RFC 9112 section 6.3: with Content-Length too, or when chunked is not the
            // final coding, the length is unreliable and the request ought to be an error.
            if content_length.is_some() {
                return Err(self.reject(400, "Transfer-Encoding with Content-Length"));
            }
            if !ends_chunked {
                return Err(self.reject(400, "Transfer-Encoding not ending in chunked"));
            }
            return Err(self.reject(501, "Transfer-Encoding is not supported"));
        }
        let body_len = match content_length.map(usize::try_from) {
            None => 0,
            Some(Ok(len)) if len <= MAX_BODY => len,
            Some(_) => return Err(self.reject(413, "body too large")),
        };
        let Some(body) = input.get(head_len..head_len + body_len) else {
            return Ok(None);
        };
        let method = parsed.method.unwrap_or_default().to_string();
        self.pending.push_back(ReplyShape {
            http10,
            close,
            head: method == "HEAD",
        });
        let request = Request {
            method,
            path: parsed.path.unwrap_or_default().to_string(),
            range,
            body: body.to_vec(),
            close,
        };
        Ok(Some((request, head_len + body_len)))
    }

    fn encode(&mut self, response: Response, out: &mut Output<'_>) -> AfterReply {
        let shape = self.pending.pop_front().unwrap_or(ReplyShape {
            http10: false,
            close: true,
            head: false,
        });
        // Body::len is None for a stream only: its length is not known in advance.
        let len = response.body.len();
        // An HTTP/1.0 client knows a stream has ended when the connection does.
        let close = shape.close || (len.is_none() && shape.http10);
        write_head(
            out,
            shape.http10,
            response.status,
            response.content_type,
            len,
        );
        out.extend_from_slice(response.headers.as_bytes());
        if close {
            out.extend_from_slice(b"Connection: close\r\n\r\n");
        } else if shape.http10 {
            out.extend_from_slice(b"Connection: keep-alive\r\n\r\n");
        } else {
            out.extend_from_slice(b"\r\n");
        }
        if !shape.head {
            match response.body {
                Body::Bytes(bytes) => out.extend_from_slice(&bytes),
                Body::File(region) => out.file(region),
                Body::Stream(stream) if shape.http10 => out.stream(stream, Framing::Raw),
                Body::Stream(stream) => out.stream(stream, Framing::Chunked),
            }
        }
        if close {
            AfterReply::Close
        } else {
            AfterReply::KeepOpen
        }
    }

    /// Decided before the handler runs, so a request pipelined after `Connection: close`
    /// is never run.
    fn closes_after(&self, request: &Request) -> bool {
        request.close
    }

    fn error_reply(&mut self, error: &DecodeError, out: &mut Vec<u8>) {
        let status = match error {
            DecodeError::FrameTooLarge { .. } => 431,
            _ => self.error_status,
        };
        let body = format!("{}\n", reason(status));
        write_head(out, false, status, "text/plain", Some(body.len() as u64));
        out.extend_from_slice(b"Connection: close\r\n\r\n");
        out.extend_from_slice(body.as_bytes());
    }
}

/// The line a streamed body repeats (`GET /stream?bytes=N`), cut at N bytes.
const STREAM_LINE: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ\n";
/// Bytes a streamed body's producer makes at a time.
const STREAM_PIECE: usize = 16 * 1024;

struct Hello {
    /// `--root`: where `/files/` is served from.
    root: Option<static_files::Root>,
}

impl Handler for Hello {
    type Request = Request;
    type Response = Response;
    type Session = ();

    fn open(&self, _ctx: &Context, _greeting: &mut Replies<Response>) {}

    fn call(&self, _: &mut (), request: Request, _: &Context, replies: &mut Replies<Response>) {
        replies.send(self.respond(request));
    }
}

impl Hello {
    fn respond(&self, request: Request) -> Response {
        let (path, query) = request
            .path
            .split_once('?')
            .unwrap_or((request.path.as_str(), ""));
        let get = request.method == "GET";
        let get_or_head = get || request.method == "HEAD";
        if let (Some(root), Some(file)) = (&self.root, path.strip_prefix("/files/")) {
            return if get_or_head {
                root.serve(file, request.range.as_deref(), get)
            } else {
                Response::text(405, "Method Not Allowed\n")
            };
        }
        match path {
            "/" if get_or_head => Response::text(200, "Hello, world!"),
            "/echo" if request.method == "POST" => Response {
                status: 200,
                content_type: "application/octet-stream",
                headers: String::new(),
                body: Body::Bytes(request.body),
            },
            "/stream" if get_or_head => match stream_length(query) {
                Some(len) => Response {
                    status: 200,
                    content_type: "text/plain",
                    headers: String::new(),
                    body: Body::Stream(stream_body(len)),
                },
                None => Response::text(400, "Bad Request: /stream?bytes=N\n"),
            },
            "/" | "/echo" | "/stream" => Response::text(405, "Method Not Allowed\n"),
            _ => Response::text(404, "Not Found\n"),
        }
    }
}

/// The `bytes=N` of a query.
fn stream_length(query: &str) -> Option<u64> {
    let value = query
        .split('&')
        .find_map(|pair| pair.strip_prefix("bytes="))?;
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    value.parse().ok()
}

/// `len` bytes of [`STREAM_LINE`] repeated, made [`STREAM_PIECE`] bytes at a time on a worker
/// as the socket drains.
fn stream_body(len: u64) -> BodyStream {
    let mut made = 0u64;
    BodyStream::new(move || {
        let n = (len - made).min(STREAM_PIECE as u64);
        if n == 0 {
            return Ok(None);
        }
        let piece = (made..made + n)
            .map(|at| STREAM_LINE[(at % STREAM_LINE.len() as u64) as usize])
            .collect();
        made += n;
        Ok(Some(piece))
    })
}

/// Starts the server `main` runs on `listen`: `workers` worker threads and `reactors`
/// reactor threads, or the framework's defaults; `/files/` served from `root` when given.
///
/// # Errors
///
/// The server cannot listen, or `root` is no directory.
pub fn start(
    listen: impl Into<transport::Listen>,
    workers: Option<usize>,
    reactors: Option<usize>,
    root: Option<&Path>,
) -> std::io::Result<reactor_pool::ServerHandle> {
    let root = root.map(static_files::Root::new).transpose()?;
    let builder = listen
        .into()
        .builder()?
        .max_frame_size(MAX_HEADER_BYTES + MAX_BODY)
        .max_connections(19_000);
    protocol_main::with_threads(builder, workers, reactors)
        .start(HttpCodec::default(), Hello { root })
}

fn main() -> ExitCode {
    protocol_main::run_example(
        "http_hello",
        "127.0.0.1:8080",
        ("http", "https"),
        |args| args.opt_value_from_str::<_, PathBuf>("--root"),
        |listen, (workers, reactors), root| {
            start(listen.clone(), workers, reactors, root.as_deref())
        },
    )
}
