//! A connection's stream under edge-triggered readiness: which direction may still have
//! something for us, and the read and write calls that keep that knowledge current.
//!
//! Readiness is edge-triggered (mio's model): once a direction is drained nothing more is
//! announced until new data (or room) arrives, so the socket remembers whether the last
//! call drained it, and skips the call that would only say WouldBlock.

use std::io;

use crate::body::FileRegion;
use crate::transport::net::Transport;
use crate::util::buffer::Buffer;

/// Whether a direction may still have something for us.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Readiness {
    /// There may be more: a short read or write means the socket is drained.
    Ready,
    /// The poll also reported the peer's FIN: read until `read()` returns 0, however short
    /// the reads, because no further event will announce that end of stream.
    ReadyToEof,
    /// Drained: wait for the next event.
    Exhausted,
}

/// What one read found.
pub(crate) enum Read {
    /// `n` bytes arrived.
    Data(usize),
    /// The peer's FIN: no more bytes will come.
    Eof,
    /// Nothing now; the next event announces more.
    Drained,
    /// The stream failed (a reset, most often).
    Failed(io::Error),
}

/// What one attempt to send a file region found.
pub(crate) enum FileSent {
    /// Bytes went out (the region advanced by them).
    Progress,
    /// The socket is full: wait for room.
    Blocked,
    /// The file ended before the region did: it shrank.
    FileEnded,
    /// The transport cannot send from the file itself (TLS): read it and write the bytes.
    Unsupported,
}

/// A stream and what the poll has said about it.
pub(crate) struct Socket<T> {
    stream: T,
    read: Readiness,
    write: Readiness,
}

impl<T: Transport> Socket<T> {
    pub fn new(stream: T) -> Self {
        Socket {
            stream,
            read: Readiness::Ready,
            write: Readiness::Ready,
        }
    }

    pub fn stream_mut(&mut self) -> &mut T {
        &mut self.stream
    }

    /// Readiness reported by the poll; `read_closed` when it also reported the peer's FIN.
    pub fn on_event(&mut self, readable: bool, read_closed: bool, writable: bool) {
        if read_closed {
            self.read = Readiness::ReadyToEof;
        } else if readable && self.read == Readiness::Exhausted {
            self.read = Readiness::Ready;
        }
        if writable {
            self.write = Readiness::Ready;
        }
    }

    /// Whether a read may find something.
    pub fn may_read(&self) -> bool {
        self.read != Readiness::Exhausted || self.stream.read_pending()
    }

    /// The peer's FIN may be waiting although no event said so (after our own shutdown):
    /// read until the stream says otherwise.
    pub fn expect_eof(&mut self) {
        self.read = Readiness::ReadyToEof;
    }

    /// One read into `buf`.
    pub fn read(&mut self, buf: &mut [u8]) -> Read {
        loop {
            return match self.stream.read(buf) {
                Ok(0) => {
                    self.read = Readiness::Exhausted;
                    Read::Eof
                }
                Ok(n) => {
                    if n < buf.len() && self.read == Readiness::Ready {
                        // A short read drained the socket: skip the read that would only
                        // say WouldBlock. New data raises a new edge.
                        self.read = Readiness::Exhausted;
                    }
                    Read::Data(n)
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.read = Readiness::Exhausted;
                    Read::Drained
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => Read::Failed(e),
            };
        }
    }

    /// Writes from `output` until it is empty or the socket is full, then what the stream
    /// itself holds (encrypted records); returns whether anything was written.
    pub fn write(&mut self, output: &mut Buffer) -> io::Result<bool> {
        let mut progress = false;
        while !output.is_empty() && self.write == Readiness::Ready {
            match self.stream.write(output.pending()) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => {
                    if n < output.len() {
                        // A short write filled the socket buffer: wait for room.
                        self.write = Readiness::Exhausted;
                    }
                    output.consume(n);
                    progress = true;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.write = Readiness::Exhausted;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        if output.is_empty() && self.write == Readiness::Ready && self.stream.holds_output() {
            match self.stream.flush_held() {
                Ok(()) => progress = true,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.write = Readiness::Exhausted;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(progress)
    }

    /// Sends as much of `region` as one `sendfile` takes, straight from the file.
    ///
    /// # Errors
    ///
    /// The stream failed (the peer left) or the file could not be read.
    pub fn send_file(&mut self, region: &mut FileRegion) -> io::Result<FileSent> {
        if self.write != Readiness::Ready {
            return Ok(FileSent::Blocked);
        }
        let count = usize::try_from(region.len).unwrap_or(usize::MAX);
        loop {
            return match self
                .stream
                .send_file(&region.file, &mut region.offset, count)
            {
                Ok(0) => Ok(FileSent::FileEnded),
                Ok(n) => {
                    // Short at the socket's room or at the file's end alike: the caller
                    // sends again, and WouldBlock (full) or 0 (the file ended) tells which.
                    // Taking short for full, as a write does, waited for a writable event
                    // that never came when the file had ended.
                    region.len -= n as u64;
                    Ok(FileSent::Progress)
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.write = Readiness::Exhausted;
                    Ok(FileSent::Blocked)
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == io::ErrorKind::Unsupported => Ok(FileSent::Unsupported),
                Err(e) => Err(e),
            };
        }
    }

    /// Whether written bytes still wait inside the stream.
    pub fn holds_output(&self) -> bool {
        self.stream.holds_output()
    }

    /// Whether the stream's preamble (PROXY header, TLS handshake) is over.
    pub fn is_established(&self) -> bool {
        self.stream.is_established()
    }

    /// Sends our FIN (the peer can still send to us); a failure changes nothing we do next.
    pub fn shutdown_write(&mut self) {
        let _ = self.stream.shutdown_write();
    }
}
