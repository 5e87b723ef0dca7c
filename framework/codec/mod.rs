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
    ///
    /// # Errors
    ///
    /// A [`DecodeError`] when the input breaks the protocol: the connection writes the
    /// replies it owes and [`error_reply`](Codec::error_reply), then closes cleanly; or
    /// [`DecodeError::Refused`] for one bad request the codec answers itself.
    fn decode(&mut self, input: &[u8]) -> Result<Option<Decoded<Self::Request>>, DecodeError>;

    /// Appends the wire form of `response` to `output`: bytes (`output` dereferences to a
    /// `Vec<u8>`), and, for a large body, a file region ([`Output::file`]) or a streamed
    /// body ([`Output::stream`]) that the connection writes without holding it in memory.
    fn encode(&mut self, response: Self::Response, output: &mut Output<'_>) -> AfterReply;

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
    ///
    /// # Errors
    ///
    /// As [`decode`](Codec::decode).
    fn decode_eof(&mut self, input: &[u8]) -> Result<Option<Decoded<Self::Request>>, DecodeError> {
        let _ = input;
        Ok(None)
    }
}

mod builtin;
mod output;

pub use builtin::{LengthPrefixedCodec, LineCodec, RawCodec, DEFAULT_MAX_FRAME};
pub use output::Output;
pub(crate) use output::Part;
