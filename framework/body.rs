//! Response bodies that are not written from memory in one piece: a region of a file (sent
//! with `sendfile(2)` where the transport allows) and a body produced in pieces as the socket
//! drains ([`BodyStream`]). A codec places them in its output with
//! [`Output::file`](crate::Output::file) and [`Output::stream`](crate::Output::stream).

use std::fmt;
use std::fs::File;
use std::io::{self, Read};

/// A range of a file, written to the socket by the reactor: with `sendfile(2)` on plain TCP
/// and Unix sockets (no copy through user space), read and encrypted a bounded piece at a
/// time over TLS. Memory does not grow with its length.
///
/// A file that turns out shorter than the region when it is written (it shrank), or that
/// fails to read, ends the connection cleanly after the bytes already written (the peer sees
/// the body cut short), counted in [`Stats::body_errors`](crate::Stats::body_errors).
pub struct FileRegion {
    pub(crate) file: File,
    pub(crate) offset: u64,
    pub(crate) len: u64,
}

impl FileRegion {
    /// `len` bytes of `file` from `offset`.
    #[must_use]
    pub fn new(file: File, offset: u64, len: u64) -> Self {
        FileRegion { file, offset, len }
    }

    /// The whole of `file`, as long as it is now.
    ///
    /// # Errors
    ///
    /// The file's metadata cannot be read.
    pub fn whole(file: File) -> io::Result<Self> {
        let len = file.metadata()?.len();
        Ok(FileRegion::new(file, 0, len))
    }

    /// The region's length in bytes.
    #[must_use]
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether the region is empty.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Where the region starts in the file.
    #[must_use]
    pub fn offset(&self) -> u64 {
        self.offset
    }
}

impl fmt::Debug for FileRegion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FileRegion")
            .field("offset", &self.offset)
            .field("len", &self.len)
            .finish_non_exhaustive()
    }
}

/// The producer behind a [`BodyStream`]: asked for one piece at a time.
type Producer = Box<dyn FnMut() -> io::Result<Option<Vec<u8>>> + Send>;

/// A body produced in pieces, pulled as the socket drains: the next piece is asked for only
/// when what was written before it has (nearly) left, so a connection holds about one piece
/// and its output high-water mark, whatever the body's length, and a peer that reads slowly
/// holds no worker. Producing a piece runs on a worker thread (on the reactor in
/// [`Mode::Inline`](crate::Mode::Inline)) and may block: a database cursor, a file, a
/// computation.
///
/// The producer returns `Ok(Some(piece))` for each piece (an empty piece is skipped),
/// `Ok(None)` at the end, and `Err` to abandon the body: the connection then ends cleanly
/// after the bytes already written, so the peer sees the body cut short (no terminating
/// chunk, or fewer bytes than its length), counted in
/// [`Stats::body_errors`](crate::Stats::body_errors). A panic in it is handled the same way
/// and counted in [`Stats::panics`](crate::Stats::panics) too.
pub struct BodyStream {
    pub(crate) producer: Producer,
}

impl BodyStream {
    /// A body from a producer called once per piece.
    pub fn new<F>(producer: F) -> Self
    where
        F: FnMut() -> io::Result<Option<Vec<u8>>> + Send + 'static,
    {
        BodyStream {
            producer: Box::new(producer),
        }
    }

    /// A body whose pieces an iterator yields.
    pub fn from_pieces<I>(pieces: I) -> Self
    where
        I: IntoIterator<Item = Vec<u8>>,
        I::IntoIter: Send + 'static,
    {
        let mut pieces = pieces.into_iter();
        BodyStream::new(move || Ok(pieces.next()))
    }

    /// A body read from `reader`, `piece_size` bytes at a time (at least 1).
    pub fn from_reader<R: Read + Send + 'static>(mut reader: R, piece_size: usize) -> Self {
        let piece_size = piece_size.max(1);
        BodyStream::new(move || {
            let mut piece = vec![0; piece_size];
            let n = loop {
                match reader.read(&mut piece) {
                    Ok(n) => break n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                }
            };
            if n == 0 {
                return Ok(None);
            }
            piece.truncate(n);
            Ok(Some(piece))
        })
    }

    /// The next piece (run by the worker that pulls it).
    pub(crate) fn next_piece(&mut self) -> io::Result<Option<Vec<u8>>> {
        (self.producer)()
    }
}

impl fmt::Debug for BodyStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("BodyStream")
    }
}

/// How the pieces of a [`BodyStream`] are framed on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Framing {
    /// As they are, one after another; the body ends when the stream does. (A protocol
    /// that delimits the body some other way, or a connection that closes after it.)
    Raw,
    /// As they are, and exactly this many bytes in all (HTTP's `Content-Length`): a stream
    /// that ends short of it, or runs past it, ends the connection after what was written
    /// (the bytes past it are not sent), counted in
    /// [`Stats::body_errors`](crate::Stats::body_errors).
    Length(u64),
    /// HTTP/1.1 chunked transfer coding: each piece as a chunk (`{len:x}\r\n`, the piece,
    /// `\r\n`), and the last chunk (`0\r\n\r\n`) when the stream ends.
    Chunked,
}

impl Framing {
    /// Appends the frame of one non-empty `piece` to `out`.
    pub(crate) fn piece(self, piece: &[u8], out: &mut Vec<u8>) {
        match self {
            Framing::Raw | Framing::Length(_) => out.extend_from_slice(piece),
            Framing::Chunked => {
                use std::io::Write;
                let _ = write!(out, "{:x}\r\n", piece.len());
                out.extend_from_slice(piece);
                out.extend_from_slice(b"\r\n");
            }
        }
    }

    /// Appends what ends the body to `out`.
    pub(crate) fn end(self, out: &mut Vec<u8>) {
        if let Framing::Chunked = self {
            out.extend_from_slice(b"0\r\n\r\n");
        }
    }
}

/// A response body as a protocol's response type may hold it: bytes in memory, a file
/// region, or a stream of pieces. For a codec's convenience; the library itself sees only
/// what the codec puts in its [`Output`](crate::Output).
#[derive(Debug)]
pub enum Body {
    /// Bytes in memory.
    Bytes(Vec<u8>),
    /// A range of a file ([`FileRegion`]).
    File(FileRegion),
    /// A body produced in pieces ([`BodyStream`]); its length is not known in advance.
    Stream(BodyStream),
}

impl Body {
    /// The body's length, when it is known before it is written (not for a stream).
    #[must_use]
    pub fn len(&self) -> Option<u64> {
        match self {
            Body::Bytes(bytes) => Some(bytes.len() as u64),
            Body::File(region) => Some(region.len),
            Body::Stream(_) => None,
        }
    }

    /// Whether the body is known to be empty.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len() == Some(0)
    }
}

impl From<Vec<u8>> for Body {
    fn from(bytes: Vec<u8>) -> Self {
        Body::Bytes(bytes)
    }
}

impl From<FileRegion> for Body {
    fn from(region: FileRegion) -> Self {
        Body::File(region)
    }
}

impl From<BodyStream> for Body {
    fn from(stream: BodyStream) -> Self {
        Body::Stream(stream)
    }
}
