//! Where [`Codec::encode`](crate::Codec::encode) writes: bytes, and parts written after them
//! without passing through memory whole (a file region, a streamed body).

use std::collections::VecDeque;
use std::ops::{Deref, DerefMut};

use crate::body::{BodyStream, FileRegion, Framing};

/// A part of a connection's output that is not bytes in its buffer.
pub(crate) enum Part {
    /// Bytes encoded after a file or a stream, waiting for it to be written.
    Bytes(Vec<u8>),
    /// A file region, its offset and length advancing as it is written.
    File(FileRegion),
    /// A streamed body, pulled a piece at a time.
    Stream(Streaming),
}

/// A streamed body being written.
pub(crate) struct Streaming {
    /// `None` while a worker produces its next piece.
    pub stream: Option<BodyStream>,
    pub framing: Framing,
    /// Body bytes produced so far (before framing), to hold [`Framing::Length`] to its word.
    pub produced: u64,
}

/// Where a codec writes a response: it dereferences to the byte vector the next bytes go
/// to, so `output.extend_from_slice(..)` and `write!(output, ..)` work as on a `Vec<u8>`;
/// [`file`](Output::file) and [`stream`](Output::stream) add a body that is written after
/// the bytes before it without being copied into memory whole, and bytes added after them
/// are written after them.
///
/// What one `encode` call adds is one response: a connection writes it whole, in order,
/// before the next (a pushed response is never written inside another reply).
pub struct Output<'a> {
    head: &'a mut Vec<u8>,
    parts: &'a mut VecDeque<Part>,
}

/// An empty vector for [`Output`]'s `deref` when the next bytes will go to a part not made
/// yet.
static NO_BYTES: Vec<u8> = Vec::new();

impl<'a> Output<'a> {
    pub(crate) fn new(head: &'a mut Vec<u8>, parts: &'a mut VecDeque<Part>) -> Self {
        Output { head, parts }
    }

    /// Runs `encode` on an output that collects into a vector, and returns the bytes with
    /// what `encode` returned: for a codec's unit tests
    /// (`Output::capture(|out| codec.encode(response, out))`). The bodies of file regions
    /// and streams are left out; bytes added after them follow the bytes before them.
    pub fn capture<T>(encode: impl FnOnce(&mut Output<'_>) -> T) -> (Vec<u8>, T) {
        let (mut bytes, mut parts) = (Vec::new(), VecDeque::new());
        let result = encode(&mut Output::new(&mut bytes, &mut parts));
        for part in parts {
            if let Part::Bytes(more) = part {
                bytes.extend_from_slice(&more);
            }
        }
        (bytes, result)
    }

    /// Adds a file region: its bytes are written after everything added before it (with
    /// `sendfile(2)` on plain TCP and Unix sockets). An empty region adds nothing.
    pub fn file(&mut self, region: FileRegion) {
        if !region.is_empty() {
            self.parts.push_back(Part::File(region));
        }
    }

    /// Adds a streamed body, framed as `framing` says: its pieces are produced (on a worker)
    /// and written as the socket drains, after everything added before it.
    pub fn stream(&mut self, body: BodyStream, framing: Framing) {
        self.parts.push_back(Part::Stream(Streaming {
            stream: Some(body),
            framing,
            produced: 0,
        }));
    }
}

impl Deref for Output<'_> {
    type Target = Vec<u8>;

    fn deref(&self) -> &Vec<u8> {
        match self.parts.back() {
            None => self.head,
            Some(Part::Bytes(bytes)) => bytes,
            Some(_) => &NO_BYTES,
        }
    }
}

impl DerefMut for Output<'_> {
    fn deref_mut(&mut self) -> &mut Vec<u8> {
        if self.parts.is_empty() {
            return self.head;
        }
        if !matches!(self.parts.back(), Some(Part::Bytes(_))) {
            self.parts.push_back(Part::Bytes(Vec::new()));
        }
        match self.parts.back_mut() {
            Some(Part::Bytes(bytes)) => bytes,
            _ => unreachable!("a bytes part was just made last"),
        }
    }
}

impl std::io::Write for Output<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
