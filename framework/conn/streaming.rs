//! A connection's output beyond its byte buffer: file regions (`sendfile(2)`, or read a piece
//! at a time under TLS), streamed bodies pulled from a worker as the socket drains, pushed
//! responses, and what ends a connection whose body failed. Part of [`Connection`]; the
//! common case (a response of bytes, no push) never comes here.

use std::io;
use std::os::unix::fs::FileExt;
use std::time::Instant;

use super::{Connection, Env, State};
use crate::body::{BodyStream, FileRegion, Framing};
use crate::codec::{Codec, Part};
use crate::conn::pipeline::EndReason;
use crate::conn::socket::FileSent;
use crate::conn::work::{Dispatched, PullFailed, Work};
use crate::handler::CloseReason;
use crate::stats::Counters;
use crate::transport::net::Transport;

/// A streamed body's next piece is asked for while fewer bytes than this wait in front of
/// it: enough to keep the socket busy while a worker makes the piece, little enough that a
/// connection holds about one piece at a time.
const PULL_AHEAD: usize = 64 * 1024;

/// A file region read through memory (TLS) is read this much at a time.
const FILE_PIECE: usize = 64 * 1024;

impl<C: Codec, S, T: Transport> Connection<C, S, T> {
    /// Writes what lies behind the byte buffer, in order, until the socket is full or a
    /// stream's piece is awaited; encodes pushes that waited for the output to drain.
    /// Returns whether anything was written (or the connection failed).
    pub(super) fn write_parts(&mut self, env: &mut Env<'_, C, S>) -> bool {
        let mut progress = false;
        loop {
            if self.pipeline.has_encodable() && self.encodes() {
                self.encode_ready(env.counters, env.now);
            }
            self.output.promote();
            if !self.output.bytes.is_empty() {
                match self.socket.write(&mut self.output.bytes) {
                    Ok(wrote) => progress |= wrote,
                    Err(e) => {
                        self.fail(e, env.counters);
                        return true;
                    }
                }
                if !self.output.bytes.is_empty() {
                    // The socket is full; a stream next in line may make its piece meanwhile.
                    if self.output.bytes.len() < PULL_AHEAD {
                        self.pull(env);
                    }
                    return progress;
                }
                continue;
            }
            match self.output.parts.front_mut() {
                None => return progress,
                Some(Part::Bytes(_)) => unreachable!("promoted above"),
                Some(Part::File(region)) => match self.socket.send_file(region) {
                    Ok(FileSent::Progress) => {
                        progress = true;
                        if region.is_empty() {
                            self.output.parts.pop_front();
                        }
                    }
                    Ok(FileSent::Blocked) => return progress,
                    Ok(FileSent::FileEnded) => {
                        let left = region.len();
                        self.body_failed(&format!("file ended {left} bytes early"), env.counters);
                        return true;
                    }
                    Ok(FileSent::Unsupported) => {
                        if let Err(e) = read_piece(region, self.output.bytes.tail()) {
                            self.body_failed(&format!("file: {e}"), env.counters);
                            return true;
                        }
                        if region.is_empty() {
                            self.output.parts.pop_front();
                        }
                    }
                    Err(e) if crate::sys::is_peer_gone_on_write(&e) => {
                        self.fail(e, env.counters);
                        return true;
                    }
                    Err(e) => {
                        self.body_failed(&format!("sending a file: {e}"), env.counters);
                        return true;
                    }
                },
                Some(Part::Stream(_)) => {
                    progress |= self.pull(env);
                    // The piece comes back through the mailbox, or (inline) it is here now.
                    if self.output.bytes.is_empty() {
                        return progress;
                    }
                }
            }
        }
    }

    /// Whether replies and pushes may still be encoded.
    fn encodes(&self) -> bool {
        matches!(
            self.state,
            State::Open | State::ReadClosed | State::Ending { .. }
        )
    }

    /// Sends the stream at the front of the parts to a worker for its next piece, unless it
    /// is away already. Returns whether it went (or, inline, came back).
    fn pull(&mut self, env: &mut Env<'_, C, S>) -> bool {
        let Some(Part::Stream(streaming)) = self.output.parts.front_mut() else {
            return false;
        };
        let Some(stream) = streaming.stream.take() else {
            return false;
        };
        self.pull_stalled = false;
        let work = Work::Pull {
            reactor: env.reactor,
            key: self.key,
            stream,
        };
        match env.dispatch.dispatch(work) {
            Dispatched::Queued => true,
            Dispatched::Ran(answers) => {
                for done in answers {
                    self.on_done(done, env.counters, env.now);
                }
                true
            }
            Dispatched::Full(Work::Pull { stream, .. }) => {
                if let Some(Part::Stream(streaming)) = self.output.parts.front_mut() {
                    streaming.stream = Some(stream);
                }
                self.pull_stalled = true;
                false
            }
            Dispatched::Full(_) | Dispatched::Gone(_) => {
                // Only while the server is torn down: nobody is left to make the piece.
                self.state = State::Closed;
                true
            }
        }
    }

    /// A streamed body's piece came back: frame it into the output (or end the body).
    pub(super) fn pulled(
        &mut self,
        stream: BodyStream,
        piece: Result<Option<Vec<u8>>, PullFailed>,
        counters: &Counters,
    ) {
        let Some(Part::Stream(streaming)) = self.output.parts.front_mut() else {
            // The body was dropped (the connection failed) while the piece was made.
            return;
        };
        let framing = streaming.framing;
        match piece {
            Ok(Some(mut piece)) => {
                streaming.stream = Some(stream);
                let produced = streaming.produced + piece.len() as u64;
                let over = match framing {
                    Framing::Length(len) if produced > len => {
                        let keep = piece.len() as u64 - (produced - len);
                        piece.truncate(usize::try_from(keep).unwrap_or(0));
                        Some(len)
                    }
                    _ => None,
                };
                streaming.produced = produced.min(over.unwrap_or(u64::MAX));
                if !piece.is_empty() {
                    if framing == Framing::Chunked || !self.output.bytes.is_empty() {
                        framing.piece(&piece, self.output.bytes.tail());
                    } else {
                        self.output.bytes.replace(piece);
                    }
                }
                if let Some(len) = over {
                    let why = format!("streamed body ran past its length of {len} bytes");
                    self.body_failed(&why, counters);
                }
            }
            Ok(None) => {
                if let Framing::Length(len) = framing {
                    if streaming.produced != len {
                        let why = format!(
                            "streamed body ended after {} of its {len} bytes",
                            streaming.produced
                        );
                        self.body_failed(&why, counters);
                        return;
                    }
                }
                framing.end(self.output.bytes.tail());
                self.output.parts.pop_front();
            }
            Err(PullFailed::Error(e)) => {
                self.body_failed(&format!("streamed body failed: {e}"), counters);
            }
            Err(PullFailed::Panicked) => self.body_failed("streamed body panicked", counters),
        }
    }

    /// A response's body failed mid-way: what is already in the byte buffer is still
    /// written (the peer sees the body cut short), nothing after it; then a clean close.
    fn body_failed(&mut self, why: &str, counters: &Counters) {
        log::warn!(
            "connection {} ({}): {why}; closing it",
            self.ctx.connection_id,
            self.ctx.peer
        );
        Counters::add(&counters.body_errors, 1);
        self.output.drop_parts();
        self.ended.get_or_insert(CloseReason::BodyFailed);
        if self.encodes() {
            self.end(self.pipeline.write_seq(), EndReason::BodyFailed, counters);
        }
    }

    /// Whether the output waits for a streamed body's piece being made on a worker.
    pub(super) fn waits_for_piece(&self) -> bool {
        self.output.bytes.is_empty()
            && matches!(
                self.output.parts.front(),
                Some(Part::Stream(streaming)) if streaming.stream.is_none()
            )
    }

    /// A response pushed from another thread: written after the replies to the first
    /// `after` requests (those decoded when it was pushed).
    pub fn on_push(
        &mut self,
        after: u64,
        response: C::Response,
        counters: &Counters,
        now: Instant,
    ) {
        if self.encodes() {
            self.pipeline.pushed(after, response);
            self.encode_ready(counters, now);
        } else {
            self.link.release(1);
        }
    }

    /// A pusher closed the connection: after the replies owed now and the pushes before.
    pub fn on_push_close(&mut self, counters: &Counters) {
        if self.takes_requests() {
            self.end(
                self.pipeline.next_seq(),
                EndReason::CloseRequested,
                counters,
            );
        }
    }
}

/// Reads the next piece of `region` (at most [`FILE_PIECE`]) onto the end of `out`.
fn read_piece(region: &mut FileRegion, out: &mut Vec<u8>) -> io::Result<()> {
    let want = usize::try_from(region.len).map_or(FILE_PIECE, |len| len.min(FILE_PIECE));
    let start = out.len();
    out.resize(start + want, 0);
    let read = loop {
        match region.file.read_at(&mut out[start..], region.offset) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            other => break other,
        }
    };
    match read {
        Ok(0) => {
            out.truncate(start);
            Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("it ended {} bytes early", region.len),
            ))
        }
        Ok(n) => {
            out.truncate(start + n);
            region.offset += n as u64;
            region.len -= n as u64;
            Ok(())
        }
        Err(e) => {
            out.truncate(start);
            Err(e)
        }
    }
}
