//! TLS on the reactor: a rustls server connection over a non-blocking socket, read and
//! written with the same edge-triggered contract as the plain socket.
//!
//! That contract, which the connection's [`Socket`](crate::conn::socket) relies on: a read or
//! write returns `WouldBlock`, or comes up short, only when the socket underneath said
//! `WouldBlock` (or ended). So a read fills the caller's buffer from as many records as it
//! takes, and a write encrypts and sends until the caller's bytes are taken or the socket is
//! full. Records encrypted but not yet sent (at most one write's worth, as rustls keeps them)
//! are "held": the connection's output is not done until they are flushed.

use std::fmt;
use std::io::{self, Read, Write};
use std::sync::Arc;

use rustls::{ServerConfig, ServerConnection};

use crate::transport::net::Transport;

/// A TLS connection's state above its socket.
pub(crate) struct Tls {
    conn: ServerConnection,
    records: RecordCursor,
    /// Bytes received from the peer so far, to tell a probe that sent nothing from a peer
    /// that gave up half-way.
    received: u64,
    /// Our close_notify is queued: the socket's write side shuts once it is flushed.
    fin_pending: bool,
    /// The last read stopped with plaintext or the peer's end still to give: the socket
    /// will announce nothing more, so the next read must come without an event.
    read_pending: bool,
}

impl Tls {
    pub fn new(config: &Arc<ServerConfig>) -> io::Result<Self> {
        let conn = ServerConnection::new(Arc::clone(config)).map_err(tls_error)?;
        Ok(Tls {
            conn,
            records: RecordCursor::default(),
            received: 0,
            fin_pending: false,
            read_pending: false,
        })
    }

    pub fn is_handshaking(&self) -> bool {
        self.conn.is_handshaking()
    }

    /// Reads plaintext into `buf`, taking records from `io` until `buf` is full, `io` says
    /// WouldBlock, or the peer closed. Handshake messages and alerts rustls wants to send
    /// are sent as they come (those that do not fit are held).
    ///
    /// Errors: [`io::ErrorKind::InvalidData`] for anything that is not TLS or fails its
    /// checks, and for a record cut short by the peer's FIN; `io`'s own errors.
    pub fn read<S: Transport>(&mut self, io: &mut S, buf: &mut [u8]) -> io::Result<usize> {
        self.read_pending = false;
        let result = self.read_records(io, buf);
        if matches!(result, Ok(0) | Err(_)) {
            self.read_pending = false;
        }
        result
    }

    /// Whether the last read left plaintext or the peer's end (close_notify, its FIN) to be
    /// read: it was cut short by `buf`'s size or came before the end.
    pub fn read_pending(&self) -> bool {
        self.read_pending
    }

    fn read_records<S: Transport>(&mut self, io: &mut S, buf: &mut [u8]) -> io::Result<usize> {
        let mut filled = 0;
        // The socket gave fewer bytes than asked: it is drained (the plain path's rule).
        let mut drained = false;
        loop {
            match self.conn.reader().read(&mut buf[filled..]) {
                // The peer's close_notify: the end of its stream, reported by the next read
                // if this one returns bytes.
                Ok(0) => {
                    self.read_pending = true;
                    return Ok(filled);
                }
                Ok(n) => {
                    filled += n;
                    if filled == buf.len() {
                        // More plaintext may be decrypted already.
                        self.read_pending = true;
                        return Ok(filled);
                    }
                    continue;
                }
                // Returning short saves the read that would only say WouldBlock; the caller
                // takes a short read as drained, and new bytes raise a new edge. (With nothing
                // to return yet, a record is split: read on.)
                Err(e) if e.kind() == io::ErrorKind::WouldBlock && drained && filled > 0 => {
                    return Ok(filled);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                    self.read_pending = true;
                    return if filled > 0 {
                        Ok(filled)
                    } else {
                        self.eof_without_close_notify()
                    };
                }
                Err(e) => return Err(e),
            }
            let mut tracked = Tracked {
                io: &mut *io,
                records: &mut self.records,
                short: false,
            };
            let read = self.conn.read_tls(&mut tracked);
            drained = tracked.short;
            match read {
                Ok(n) => self.received += n as u64,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    // What does not fit is held; a failure shows at the next write.
                    let _ = self.flush(io);
                    return if filled > 0 { Ok(filled) } else { Err(e) };
                }
                Err(e) => return Err(e),
            }
            let processed = self.conn.process_new_packets();
            // Handshake messages, or the alert that tells the peer what went wrong.
            // What does not fit is held; a failure shows at the next write.
            let _ = self.flush(io);
            if let Err(error) = processed {
                return Err(tls_error(error));
            }
        }
    }

    /// The socket ended without the peer's close_notify. A probe that sent nothing, or a
    /// peer that closed between records after the handshake, ends like a plain FIN (many
    /// clients close this way); a handshake or a record cut short is an error.
    fn eof_without_close_notify(&self) -> io::Result<usize> {
        if self.received == 0 {
            return Ok(0);
        }
        if self.conn.is_handshaking() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "TLS: the peer closed during the handshake",
            ));
        }
        if self.records.is_mid_record() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "TLS: a record was cut short by the peer's FIN",
            ));
        }
        log::debug!("TLS peer closed without close_notify, between records: taken as its FIN");
        Ok(0)
    }

    /// Encrypts `buf` and sends it; returns the plaintext bytes taken. Comes up short (or
    /// says WouldBlock) only when `io` is full.
    pub fn write<S: Transport>(&mut self, io: &mut S, buf: &[u8]) -> io::Result<usize> {
        self.flush(io)?;
        let mut taken = 0;
        while taken < buf.len() {
            let mut n = self.conn.writer().write(&buf[taken..])?;
            if n == 0 {
                // rustls takes nothing at a TLS 1.3 key update boundary; the update is
                // queued then, so once it is sent the next write goes through.
                match self.flush(io) {
                    Ok(()) => n = self.conn.writer().write(&buf[taken..])?,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) => return Err(e),
                }
                if n == 0 {
                    break;
                }
            }
            taken += n;
            match self.flush(io) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(e),
            }
        }
        if taken == 0 {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        Ok(taken)
    }

    /// Whether records (or our FIN after them) wait to be sent.
    pub fn holds_output(&self) -> bool {
        self.conn.wants_write() || self.fin_pending
    }

    /// Sends every held record, then the FIN if one is pending.
    pub fn flush<S: Transport>(&mut self, io: &mut S) -> io::Result<()> {
        while self.conn.wants_write() {
            match self.conn.write_tls(io) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        if self.fin_pending {
            self.fin_pending = false;
            io.shutdown_write()?;
        }
        Ok(())
    }

    /// Queues our close_notify and the FIN after it, and sends what fits now.
    pub fn shutdown_write<S: Transport>(&mut self, io: &mut S) -> io::Result<()> {
        self.conn.send_close_notify();
        self.fin_pending = true;
        match self.flush(io) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(()),
            other => other,
        }
    }

    /// Queues our close_notify and sends what fits: the socket closes next.
    pub fn close_notify<S: Transport>(&mut self, io: &mut S) {
        if !self.conn.is_handshaking() {
            self.conn.send_close_notify();
            // Best effort: the socket closes next.
            let _ = self.flush(io);
        }
    }
}

/// A rustls error as an I/O error of kind InvalidData, so the connection closes it as bad
/// input rather than as a reset.
fn tls_error(error: rustls::Error) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, TlsError(error))
}

#[derive(Debug)]
struct TlsError(rustls::Error);

impl fmt::Display for TlsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TLS: {}", self.0)
    }
}

impl std::error::Error for TlsError {}

/// Passes reads through to the socket while following the record boundaries in them.
struct Tracked<'a, S> {
    io: &'a mut S,
    records: &'a mut RecordCursor,
    /// The last read returned fewer bytes than asked for (but some).
    short: bool,
}

impl<S: Read> Read for Tracked<'_, S> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.io.read(buf)?;
        self.short = n > 0 && n < buf.len();
        self.records.advance(&buf[..n]);
        Ok(n)
    }
}

/// Where the bytes received so far end relative to TLS record boundaries (a record is a
/// 5-byte header whose last two bytes give the length of the body that follows). rustls does
/// not say whether the peer's FIN cut a record short; this does, at the cost of looking at
/// each record header once.
#[derive(Debug, Default)]
struct RecordCursor {
    /// Header bytes of the current record seen so far (0 to 4).
    header_seen: usize,
    /// The length field being assembled.
    length: usize,
    /// Body bytes of the current record still to come.
    body_left: usize,
}

impl RecordCursor {
    fn advance(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            if self.body_left > 0 {
                let skip = self.body_left.min(bytes.len());
                self.body_left -= skip;
                bytes = &bytes[skip..];
                continue;
            }
            // Header bytes 3 and 4 are the big-endian body length.
            if self.header_seen >= 3 {
                self.length = (self.length << 8) | usize::from(bytes[0]);
            }
            self.header_seen += 1;
            bytes = &bytes[1..];
            if self.header_seen == 5 {
                self.body_left = self.length;
                self.header_seen = 0;
                self.length = 0;
            }
        }
    }

    fn is_mid_record(&self) -> bool {
        self.header_seen > 0 || self.body_left > 0
    }
}

#[cfg(test)]
mod tests {
    use super::RecordCursor;

    #[test]
    fn the_record_cursor_finds_boundaries_however_bytes_are_split() {
        // Two records: a 3-byte body and an empty one.
        let stream = [22, 3, 3, 0, 3, 1, 2, 3, 23, 3, 3, 0, 0];
        let boundaries = [0, 8, 13];
        for split in 0..=stream.len() {
            let mut cursor = RecordCursor::default();
            cursor.advance(&stream[..split]);
            assert_eq!(
                cursor.is_mid_record(),
                !boundaries.contains(&split),
                "after {split} bytes"
            );
            cursor.advance(&stream[split..]);
            assert!(!cursor.is_mid_record());
        }
    }

    #[test]
    fn the_record_cursor_reads_two_byte_lengths() {
        let mut cursor = RecordCursor::default();
        cursor.advance(&[23, 3, 3, 0x01, 0x02]);
        cursor.advance(&vec![0; 0x0102 - 1]);
        assert!(cursor.is_mid_record());
        cursor.advance(&[0]);
        assert!(!cursor.is_mid_record());
    }
}
