//! The built-in codecs: [`RawCodec`] (whatever arrived: echo), [`LineCodec`] (lines) and
//! [`LengthPrefixedCodec`] (a u32 big-endian length, then the frame).

use super::{AfterReply, Codec, DecodeError, Decoded, Output};

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
    #[must_use]
    pub fn new() -> Self {
        Self::with_max_frame(DEFAULT_MAX_FRAME)
    }

    /// A raw codec whose requests are at most `max_frame` bytes (at least 1).
    #[must_use]
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

    fn encode(&mut self, response: Vec<u8>, output: &mut Output<'_>) -> AfterReply {
        if output.is_empty() {
            // Hand the response's own buffer over instead of copying it.
            **output = response;
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
    #[must_use]
    pub fn new() -> Self {
        Self::with_max_frame(DEFAULT_MAX_FRAME)
    }

    /// A line codec accepting lines of up to `max_line` bytes.
    #[must_use]
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
        if let Some(offset) = input[from..].iter().position(|&b| b == b'\n') {
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
        } else {
            self.scanned = input.len();
            // Past the limit, only the `\r` of a line exactly at the limit may wait.
            // (`max_line` may be usize::MAX: compare without adding to it.)
            let may_end_at_limit =
                input.len().checked_sub(1) == Some(self.max_line) && input.last() == Some(&b'\r');
            if input.len() > self.max_line && !may_end_at_limit {
                return Err(DecodeError::FrameTooLarge {
                    size: input.len(),
                    max: self.max_line,
                });
            }
            Ok(None)
        }
    }

    fn encode(&mut self, response: Vec<u8>, output: &mut Output<'_>) -> AfterReply {
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
    #[must_use]
    pub fn new() -> Self {
        Self::with_max_frame(DEFAULT_MAX_FRAME)
    }

    /// A length-prefixed codec accepting payloads of up to `max_frame` bytes (at most
    /// `u32::MAX`, the largest length the prefix can carry).
    #[must_use]
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
    fn encode(&mut self, response: Vec<u8>, output: &mut Output<'_>) -> AfterReply {
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
        let (mut output, mut parts) = (Vec::new(), std::collections::VecDeque::new());
        let huge = vec![0u8; u32::MAX as usize + 1];
        let mut out = Output::new(&mut output, &mut parts);
        assert_eq!(codec.encode(huge, &mut out), AfterReply::Close);
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
