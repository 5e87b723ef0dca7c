//! A connection's output: the bytes to write, then the parts queued behind them (a file
//! region, a streamed body, and the bytes encoded after those), written in that order.
//!
//! The common case, a response of bytes, never leaves the byte buffer: parts exist only
//! while a file or a stream is being written.

use std::collections::VecDeque;

use crate::codec::{Output, Part};
use crate::util::buffer::Buffer;

/// Where a codec call started writing, to cut off what it half-wrote if it panics.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Mark {
    bytes: usize,
    parts: usize,
    /// The length of the last part, when it is bytes.
    last_bytes: Option<usize>,
}

/// The bytes to write first, and the parts behind them.
#[derive(Default)]
pub(crate) struct Outgoing {
    pub bytes: Buffer,
    pub parts: VecDeque<Part>,
}

impl Outgoing {
    /// Whether nothing is left to write.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty() && self.parts.is_empty()
    }

    /// Bytes held in memory: the buffer and the bytes parts.
    pub fn len(&self) -> usize {
        self.bytes.len()
            + self
                .parts
                .iter()
                .map(|part| match part {
                    Part::Bytes(bytes) => bytes.len(),
                    Part::File(_) | Part::Stream(_) => 0,
                })
                .sum::<usize>()
    }

    /// Whether a file or a stream is being written: replies behind it wait unencoded (so a
    /// body that fails drops no reply that was counted as written).
    #[inline]
    pub fn has_body(&self) -> bool {
        !self.parts.is_empty()
            && self
                .parts
                .iter()
                .any(|part| matches!(part, Part::File(_) | Part::Stream(_)))
    }

    /// What counts against the output high-water mark: the bytes held, and the whole mark
    /// while a file or a stream is being written (the connection takes no new request
    /// until the body is out, so replies do not pile up behind it).
    #[inline]
    pub fn weight(&self, high_water: usize) -> usize {
        if self.parts.is_empty() {
            return self.bytes.len();
        }
        self.len() + if self.has_body() { high_water } else { 0 }
    }

    /// Where a codec writes next.
    #[inline]
    pub fn output(&mut self) -> Output<'_> {
        Output::new(self.bytes.tail(), &mut self.parts)
    }

    /// Where the next codec call starts writing.
    #[inline]
    pub fn mark(&self) -> Mark {
        Mark {
            bytes: self.bytes.len(),
            parts: self.parts.len(),
            last_bytes: match self.parts.back() {
                Some(Part::Bytes(bytes)) => Some(bytes.len()),
                _ => None,
            },
        }
    }

    /// Cuts off what was written since `mark`.
    pub fn truncate(&mut self, mark: Mark) {
        self.parts.truncate(mark.parts);
        if let (Some(len), Some(Part::Bytes(bytes))) = (mark.last_bytes, self.parts.back_mut()) {
            bytes.truncate(len);
        }
        self.bytes.truncate(mark.bytes);
    }

    /// Once the buffer is written out, the bytes parts at the front move into it.
    pub fn promote(&mut self) {
        while self.bytes.is_empty() {
            match self.parts.front_mut() {
                Some(Part::Bytes(bytes)) => {
                    let bytes = std::mem::take(bytes);
                    self.parts.pop_front();
                    self.bytes.replace(bytes);
                }
                _ => return,
            }
        }
    }

    /// Drops the parts (a body failed: nothing after it can be written).
    pub fn drop_parts(&mut self) {
        self.parts.clear();
    }

    /// The connection went idle: the buffer keeps little memory.
    pub fn shrink_idle(&mut self) {
        self.bytes.shrink_idle();
    }
}
