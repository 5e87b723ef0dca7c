//! Framing: turning a connection's bytes into requests and responses into bytes.
//!
//! A [`Codec`] runs on a reactor thread, so it must be cheap and must never block. Every
//! connection gets its own clone of the codec the server was started with, so a codec may keep
//! per-connection parsing state.

use std::fmt;

/// Why a codec could not decode a connection's input.
///
/// Most decode errors are protocol errors: the connection gets the replies it was already
/// owed, the codec's [`error_reply`](Codec::error_reply) (if it writes one), and then a clean
/// close. No other connection notices. [`DecodeError::Refused`] is the exception: the codec
/// answers that one request itself and the connection reads on.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum DecodeError {
    /// A frame is (or is announced to be) longer than the codec's maximum frame size.
    FrameTooLarge {
        /// The frame's size as far as it is known: its announced length, or the bytes
        /// received so far without the frame ending.
        size: usize,
        /// The codec's maximum frame size.
        max: usize,
    },
    /// The bytes do not follow the protocol.
    Invalid(String),
    /// A bad but recoverable request: its `consumed` bytes (at least one, at most what the
    /// codec was given) are skipped and answered, in order with the replies to the requests
    /// around it, by the codec's [`error_reply`](Codec::error_reply) for this error. It never
    /// reaches the handler, and the connection stays open (Redis's `-ERR unknown command`,
    /// SMTP's `500`).
    Refused {
        /// Bytes the refused request used.
        consumed: usize,
        /// Why, for the error reply and the log.
        reason: String,
    },
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DecodeError::FrameTooLarge { size, max } => {
                write!(f, "frame of {size} bytes exceeds the maximum of {max}")
            }
            DecodeError::Invalid(why) => write!(f, "invalid input: {why}"),
            DecodeError::Refused { reason, .. } => write!(f, "request refused: {reason}"),
        }
    }
}

impl std::error::Error for DecodeError {}

/// What the connection does after a response has been encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AfterReply {
    /// Keep reading requests (the usual case).
    KeepOpen,
    /// This was the last reply: write it and everything before it, then close the connection
    /// cleanly. Requests after this one get no reply, and those not yet handed to the
    /// handler are not run; but the connection decodes ahead, so requests after it may
    /// already have run by the time this reply is encoded. When the request alone tells
    /// that it is the last (HTTP's `Connection: close`, a `QUIT`), say so in
    /// [`Codec::closes_after`] instead: then nothing after it ever runs.
    Close,
}

/// A decoded request and how many input bytes it used.
pub type Decoded<R> = (R, usize);

/// Why the server is ending a connection that did nothing wrong, for
/// [`Codec::farewell`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Farewell {
    /// Nothing arrived for the idle timeout.
    IdleTimeout,
    /// A request started arriving and did not finish within the partial-frame timeout.
    PartialFrameTimeout,
    /// The server is shutting down.
    Shutdown,
}

/// Turns a byte stream into requests and responses into bytes.
///
/// Runs on a reactor thread: it must be cheap and must never block. Each connection gets
/// its own clone of the codec the server was started with.
pub trait Codec: Clone + Send + 'static {
    /// What [`decode`](Codec::decode) produces and the handler receives.
    type Request: Send + 'static;
    /// What the handler returns and [`encode`](Codec::encode) writes.
    type Response: Send + 'static;

    /// Decodes one request from the front of `input`.
    ///
    /// Returns `Ok(Some((request, consumed)))` when `input` starts with a whole request that
    /// used `consumed` bytes (at least one), `Ok(None)` when more bytes are needed, and an
    /// error when the input can never become a valid request. `input` holds every byte that
    /// arrived and was not yet consumed, so a codec need not remember partial frames.
    fn decode(&mut self, input: &[u8]) -> Result<Option<Decoded<Self::Request>>, DecodeError>;

    /// Appends the wire form of `response` to `output`.
    fn encode(&mut self, response: Self::Response, output: &mut Vec<u8>) -> AfterReply;

    /// Appends the protocol's error reply for `error` to `output`, if the protocol has one.
    /// For [`DecodeError::Refused`] it answers that request and the connection reads on;
    /// for any other error it is the last thing written before a clean close.
    ///
    /// The default writes nothing.
    fn error_reply(&mut self, error: &DecodeError, output: &mut Vec<u8>) {
        let _ = (error, output);
    }

    /// Appends what the protocol says to a peer the server is disconnecting through no fault
    /// of the peer's (SMTP's `421`), written after every reply the peer is owed and before
    /// the server's FIN.
    ///
    /// The default writes nothing.
    fn farewell(&mut self, why: Farewell, output: &mut Vec<u8>) {
        let _ = (why, output);
    }

    /// Whether decoding stops after `request` until its replies have been encoded, so that
    /// the bytes after it are decoded in whatever mode encoding that reply switched the
    /// codec to (SMTP's `DATA`, HTTP's `Upgrade`, `STARTTLS`). Until then the connection
    /// reads no further: bytes already read wait undecoded in its buffer, the rest in the
    /// kernel's.
    ///
    /// The default is `false`.
    fn holds_decoding(&self, request: &Self::Request) -> bool {
        let _ = request;
        false
    }

    /// Whether `request` is the connection's last (HTTP/1.1's `Connection: close`, an
    /// HTTP/1.0 request without keep-alive, a protocol's `QUIT`): asked as soon as it is
    /// decoded, before it is handed to the handler. When `true`, nothing after it is decoded
    /// or run (the input after it is discarded), its replies and every earlier one are
    /// written, and the connection closes cleanly ([`CloseReason::Requested`]).
    ///
    /// The default is `false`.
    ///
    /// [`CloseReason::Requested`]: crate::CloseReason::Requested
    fn closes_after(&self, request: &Self::Request) -> bool {
        let _ = request;
        false
    }

    /// How many bytes at the front of `input` to drop before decoding, without producing a
    /// request: the rest of a message the codec has decided to refuse after it started
    /// (memcached's over-limit data block, an SMTP message over its size limit), consumed as
    /// it arrives instead of buffered whole. Asked before every [`decode`](Codec::decode),
    /// and again when `decode` returns `Ok(None)` (so `decode` may decide to skip what it
    /// was given); skipped bytes are consumed and the codec is asked again, so it may skip a
    /// little at a time. Skipped bytes reach neither the handler nor the pool. A codec that skips must
    /// itself bound how long it does (the connection's partial-frame timeout does not run
    /// while bytes are being consumed).
    ///
    /// Returns at most `input.len()` (more is a contract violation, handled as
    /// [`DecodeError::Invalid`]). The default is `0`.
    fn skip(&mut self, input: &[u8]) -> usize {
        let _ = input;
        0
    }

    /// The peer ended its input (FIN) with `input` left over that
    /// [`decode`](Codec::decode) could not make a request of: the start of a frame cut short.
    /// Return a request to serve it anyway (a last line without its newline), an error to
    /// answer it with [`error_reply`](Codec::error_reply) before the close (or, for
    /// [`DecodeError::Refused`], to answer it and go on), or `Ok(None)` to drop it. Asked
    /// again while it returns requests and input is left. Every reply owed is written
    /// whatever it returns.
    ///
    /// The default drops the bytes (`Ok(None)`; logged at debug level).
    fn decode_eof(&mut self, input: &[u8]) -> Result<Option<Decoded<Self::Request>>, DecodeError> {
        let _ = input;
        Ok(None)
    }
}

/// The default maximum frame size of the built-in codecs: 1 MiB.
pub const DEFAULT_MAX_FRAME: usize = 1 << 20;

/// Whatever arrived is one request: the echo protocol.
///
/// A request is every byte available when the codec is asked, up to the maximum frame
/// size (default [`DEFAULT_MAX_FRAME`]); a longer burst becomes several requests. The
/// response is written back as is. This codec never fails.
#[derive(Debug, Clone)]
pub struct RawCodec {
    max_frame: usize,
}

impl RawCodec {
    /// A raw codec whose requests are at most [`DEFAULT_MAX_FRAME`] bytes.
    pub fn new() -> Self {
        Self::with_max_frame(DEFAULT_MAX_FRAME)
    }

    /// A raw codec whose requests are at most `max_frame` bytes (at least 1).
    pub fn with_max_frame(max_frame: usize) -> Self {
        RawCodec {
            max_frame: max_frame.max(1),
        }
    }
}

impl Default for RawCodec {
    fn default() -> Self {
        Self::new()
    }
}

impl Codec for RawCodec {
    type Request = Vec<u8>;
    type Response = Vec<u8>;

    fn decode(&mut self, input: &[u8]) -> Result<Option<Decoded<Vec<u8>>>, DecodeError> {
        if input.is_empty() {
            return Ok(None);
        }
        let take = input.len().min(self.max_frame);
        Ok(Some((input[..take].to_vec(), take)))
    }

    fn encode(&mut self, response: Vec<u8>, output: &mut Vec<u8>) -> AfterReply {
        if output.is_empty() {
            // Hand the response's own buffer over instead of copying it.
            *output = response;
        } else {
            output.extend_from_slice(&response);
        }
        AfterReply::KeepOpen
    }
}

/// Lines ended by `\n`, with an optional `\r` before it.
///
/// A request is the line without its terminator; a response gets `\n` appended. A line
/// longer than the maximum (default [`DEFAULT_MAX_FRAME`], not counting the terminator)
/// is a [`DecodeError::FrameTooLarge`], detected as soon as that many bytes arrived
/// without a newline.
#[derive(Debug, Clone)]
pub struct LineCodec {
    max_line: usize,
    /// How far the previous call already searched for `\n`, so a long line arriving in
    /// many small reads is scanned once, not once per read.
    scanned: usize,
}

impl LineCodec {
    /// A line codec accepting lines of up to [`DEFAULT_MAX_FRAME`] bytes.
    pub fn new() -> Self {
        Self::with_max_frame(DEFAULT_MAX_FRAME)
    }

    /// A line codec accepting lines of up to `max_line` bytes.
    pub fn with_max_frame(max_line: usize) -> Self {
        LineCodec {
            max_line,
            scanned: 0,
        }
    }
}

impl Default for LineCodec {
    fn default() -> Self {
        Self::new()
    }
}

impl Codec for LineCodec {
    type Request = Vec<u8>;
    type Response = Vec<u8>;

    fn decode(&mut self, input: &[u8]) -> Result<Option<Decoded<Vec<u8>>>, DecodeError> {
        let from = self.scanned.min(input.len());
        match input[from..].iter().position(|&b| b == b'\n') {
            Some(offset) => {
                self.scanned = 0;
                let newline = from + offset;
                let line = match input[..newline].last() {
                    Some(b'\r') => &input[..newline - 1],
                    _ => &input[..newline],
                };
                if line.len() > self.max_line {
                    return Err(DecodeError::FrameTooLarge {
                        size: line.len(),
                        max: self.max_line,
                    });
                }
                Ok(Some((line.to_vec(), newline + 1)))
            }
            None => {
                self.scanned = input.len();
                // Past the limit, only the `\r` of a line exactly at the limit may wait.
                // (`max_line` may be usize::MAX: compare without adding to it.)
                let may_end_at_limit = input.len().checked_sub(1) == Some(self.max_line)
                    && input.last() == Some(&b'\r');
                if input.len() > self.max_line && !may_end_at_limit {
                    return Err(DecodeError::FrameTooLarge {
                        size: input.len(),
                        max: self.max_line,
                    });
                }
                Ok(None)
            }
        }
    }

    fn encode(&mut self, response: Vec<u8>, output: &mut Vec<u8>) -> AfterReply {
        output.extend_from_slice(&response);
        output.push(b'\n');
        AfterReply::KeepOpen
    }
}

/// Frames of a 4-byte big-endian length followed by that many bytes.
///
/// A request is the frame's payload; a response is written with its own length prefix. A
/// length over the maximum (default [`DEFAULT_MAX_FRAME`]) is a
/// [`DecodeError::FrameTooLarge`] as soon as the prefix arrives, before the payload is
/// buffered.
#[derive(Debug, Clone)]
pub struct LengthPrefixedCodec {
    max_frame: usize,
}

impl LengthPrefixedCodec {
    /// A length-prefixed codec accepting payloads of up to [`DEFAULT_MAX_FRAME`] bytes.
    pub fn new() -> Self {
        Self::with_max_frame(DEFAULT_MAX_FRAME)
    }

    /// A length-prefixed codec accepting payloads of up to `max_frame` bytes (at most
    /// `u32::MAX`, the largest length the prefix can carry).
    pub fn with_max_frame(max_frame: usize) -> Self {
        LengthPrefixedCodec {
            max_frame: max_frame.min(u32::MAX as usize),
        }
    }
}

impl Default for LengthPrefixedCodec {
    fn default() -> Self {
        Self::new()
    }
}

const LENGTH_PREFIX: usize = 4;

impl Codec for LengthPrefixedCodec {
    type Request = Vec<u8>;
    type Response = Vec<u8>;

    fn decode(&mut self, input: &[u8]) -> Result<Option<Decoded<Vec<u8>>>, DecodeError> {
        let Some(prefix) = input.get(..LENGTH_PREFIX) else {
            return Ok(None);
        };
        let len = u32::from_be_bytes(prefix.try_into().expect("slice of 4 bytes")) as usize;
        if len > self.max_frame {
            return Err(DecodeError::FrameTooLarge {
                size: len,
                max: self.max_frame,
            });
        }
        match input.get(LENGTH_PREFIX..LENGTH_PREFIX + len) {
            Some(payload) => Ok(Some((payload.to_vec(), LENGTH_PREFIX + len))),
            None => Ok(None),
        }
    }

    /// A response longer than `u32::MAX` bytes, which the prefix cannot express, is not
    /// written: it is logged and the connection is closed after the replies before it.
    fn encode(&mut self, response: Vec<u8>, output: &mut Vec<u8>) -> AfterReply {
        let Ok(len) = u32::try_from(response.len()) else {
            log::error!(
                "a response of {} bytes does not fit a u32 length prefix; closing the connection",
                response.len()
            );
            return AfterReply::Close;
        };
        output.extend_from_slice(&len.to_be_bytes());
        output.extend_from_slice(&response);
        AfterReply::KeepOpen
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_codec_strips_crlf_and_lf() {
        let mut codec = LineCodec::new();
        assert_eq!(
            codec.decode(b"ab\r\ncd\n").unwrap(),
            Some((b"ab".to_vec(), 4))
        );
        assert_eq!(codec.decode(b"cd\n").unwrap(), Some((b"cd".to_vec(), 3)));
        assert_eq!(codec.decode(b"cd").unwrap(), None);
    }

    #[test]
    fn line_codec_rejects_a_line_over_the_limit_before_its_end_arrives() {
        let mut codec = LineCodec::with_max_frame(4);
        assert_eq!(codec.decode(b"abcd\r").unwrap(), None);
        assert_eq!(
            codec.decode(b"abcd\r\n").unwrap(),
            Some((b"abcd".to_vec(), 6))
        );
        assert!(matches!(
            codec.decode(b"abcdef"),
            Err(DecodeError::FrameTooLarge { max: 4, .. })
        ));
    }

    #[test]
    fn line_one_byte_over_the_limit_that_is_not_cr_is_rejected_at_once() {
        let mut codec = LineCodec::with_max_frame(4);
        assert!(matches!(
            codec.decode(b"abcde"),
            Err(DecodeError::FrameTooLarge { size: 5, max: 4 })
        ));
    }

    /// Regression (bug 7): `max_line + 1` overflowed for `usize::MAX`.
    #[test]
    fn line_codec_with_no_limit_does_not_overflow() {
        let mut codec = LineCodec::with_max_frame(usize::MAX);
        assert_eq!(codec.decode(b"abc").unwrap(), None);
        assert_eq!(codec.decode(b"abc\n").unwrap(), Some((b"abc".to_vec(), 4)));
    }

    /// Regression (bug 1): a reply the prefix cannot express panicked (`expect`) on the
    /// reactor. Now it closes the connection. (The 4 GiB buffer is zeroed pages the
    /// kernel maps lazily, and the codec never touches it.)
    #[test]
    #[cfg(target_pointer_width = "64")]
    fn length_prefixed_closes_instead_of_panicking_on_a_reply_over_4_gib() {
        let mut codec = LengthPrefixedCodec::new();
        let mut output = Vec::new();
        let huge = vec![0u8; u32::MAX as usize + 1];
        assert_eq!(codec.encode(huge, &mut output), AfterReply::Close);
        assert!(output.is_empty());
    }

    #[test]
    fn length_prefixed_rejects_an_oversized_prefix_without_its_payload() {
        let mut codec = LengthPrefixedCodec::with_max_frame(8);
        assert_eq!(
            codec.decode(&9u32.to_be_bytes()),
            Err(DecodeError::FrameTooLarge { size: 9, max: 8 })
        );
        let mut frame = 3u32.to_be_bytes().to_vec();
        frame.extend_from_slice(b"abc");
        assert_eq!(codec.decode(&frame).unwrap(), Some((b"abc".to_vec(), 7)));
        assert_eq!(codec.decode(&frame[..6]).unwrap(), None);
    }
}
