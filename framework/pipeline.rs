//! One connection's requests between decoding and writing: sequence numbers, the limits on
//! what may be in flight, the reorder buffer, and every call into the user's codec, each
//! guarded so that a panic in it ends only its connection.
//!
//! The pipeline never touches the socket or the connection's state: it tells the
//! connection, with an [`EndReason`], when the connection has to end.

use std::any::Any;
use std::collections::VecDeque;
use std::panic::{self, AssertUnwindSafe};

use crate::buffer::Buffer;
use crate::codec::{AfterReply, Codec, DecodeError};
use crate::handler::{panic_message, Context};
use crate::stats::Counters;

/// Why a connection ends on the server's initiative. The pipeline reports the first three;
/// the connection and reactor the rest.
#[derive(Debug)]
pub(crate) enum EndReason {
    /// The input broke the protocol (or the codec broke its contract).
    Protocol(DecodeError),
    /// The codec panicked: nothing more can be decoded or encoded with it.
    CodecPanicked,
    /// A reply said it was the last ([`AfterReply::Close`]).
    CloseRequested,
    HandlerPanicked,
    Timeout(&'static str),
    ServerShutdown,
}

/// The in-flight limits the pipeline keeps.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Room {
    pub max_frame: usize,
    pub max_in_flight: usize,
    pub output_high_water: usize,
}

/// Requests decoded but not yet answered in writing, and the codec that frames them.
pub(crate) struct Pipeline<C: Codec> {
    codec: C,
    room: Room,
    /// Sequence number of the next request to dispatch.
    next_seq: u64,
    /// Sequence number of the next reply to write; `next_seq - write_seq` are in flight.
    write_seq: u64,
    /// Replies that came back before an earlier one; index 0 is `write_seq`.
    reorder: VecDeque<Option<C::Response>>,
    /// Input bytes of each request in flight, oldest first, and their sum.
    request_sizes: VecDeque<usize>,
    in_flight_bytes: usize,
    /// The size a reply still to come is assumed to have: the largest recent reply (halving
    /// with each smaller one). Output plus this much per request in flight stays under the
    /// high-water mark, so a peer that stops reading cannot pin many large replies.
    reply_estimate: usize,
}

impl<C: Codec> Pipeline<C> {
    pub fn new(codec: C, room: Room) -> Self {
        Pipeline {
            codec,
            room,
            next_seq: 0,
            write_seq: 0,
            reorder: VecDeque::new(),
            request_sizes: VecDeque::new(),
            in_flight_bytes: 0,
            // Before any reply is known, two requests fit under the mark.
            reply_estimate: room.output_high_water / 2,
        }
    }

    /// Sequence number the next decoded request gets (= requests decoded so far).
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// Sequence number of the next reply to write (= replies written or skipped so far).
    pub fn write_seq(&self) -> u64 {
        self.write_seq
    }

    pub fn in_flight(&self) -> usize {
        (self.next_seq - self.write_seq) as usize
    }

    /// Whether one more request may be dispatched with `output` bytes waiting to be written:
    /// fewer than the in-flight limit, and output plus the replies to come under the mark.
    pub fn has_room(&self, output: usize) -> bool {
        let in_flight = self.in_flight();
        let to_come = self
            .in_flight_bytes
            .max(in_flight.saturating_mul(self.reply_estimate));
        in_flight < self.room.max_in_flight
            && output.saturating_add(to_come) < self.room.output_high_water
    }

    /// Decodes one request from the front of `input`: `Ok(None)` when more bytes are needed.
    /// The request is numbered and counted in flight; the caller dispatches it.
    pub fn decode(
        &mut self,
        input: &[u8],
        ctx: &Context,
        counters: &Counters,
    ) -> Result<Option<(C::Request, u64, usize)>, EndReason> {
        let codec = &mut self.codec;
        let decoded = panic::catch_unwind(AssertUnwindSafe(|| codec.decode(input)))
            .map_err(|payload| codec_panicked("decode", &*payload, ctx, counters))?;
        let error = match decoded {
            Ok(Some((request, used))) if (1..=input.len()).contains(&used) => {
                let seq = self.next_seq;
                self.next_seq += 1;
                self.request_sizes.push_back(used);
                self.in_flight_bytes += used;
                return Ok(Some((request, seq, used)));
            }
            Ok(Some((_, used))) => DecodeError::Invalid(format!(
                "the codec reported using {used} of the {} bytes it was given",
                input.len()
            )),
            // The codec keeps waiting, but no request may be this large.
            Ok(None) if input.len() > self.room.max_frame => DecodeError::FrameTooLarge {
                size: input.len(),
                max: self.room.max_frame,
            },
            Ok(None) => return Ok(None),
            Err(error) => error,
        };
        Counters::add(&counters.protocol_errors, 1);
        Err(EndReason::Protocol(error))
    }

    /// Keeps the reply to request `seq` until every earlier one is written. Returns false
    /// when no reply for `seq` is expected (never dispatched, or already written).
    pub fn store(&mut self, seq: u64, response: C::Response) -> bool {
        if seq < self.write_seq || seq >= self.next_seq {
            return false;
        }
        let index = (seq - self.write_seq) as usize;
        if self.reorder.len() <= index {
            self.reorder.resize_with(index + 1, || None);
        }
        self.reorder[index] = Some(response);
        true
    }

    /// Encodes into `output` the stored replies that are next in order, up to request `cut`.
    pub fn encode_ready(
        &mut self,
        output: &mut Buffer,
        cut: u64,
        ctx: &Context,
        counters: &Counters,
    ) -> Result<(), EndReason> {
        while self.write_seq < cut {
            let Some(Some(_)) = self.reorder.front() else {
                return Ok(());
            };
            let response = self.reorder.pop_front().flatten().expect("checked above");
            self.write_seq += 1;
            self.in_flight_bytes -= self.request_sizes.pop_front().unwrap_or(0);
            let before = output.len();
            let codec = &mut self.codec;
            let tail = output.tail();
            match panic::catch_unwind(AssertUnwindSafe(|| codec.encode(response, tail))) {
                Ok(after) => {
                    Counters::add(&counters.responses, 1);
                    let size = output.len() - before;
                    self.reply_estimate = size.max(self.reply_estimate / 2);
                    if after == AfterReply::Close {
                        return Err(EndReason::CloseRequested);
                    }
                }
                Err(payload) => {
                    // Whatever the codec half-wrote is cut off.
                    output.truncate(before);
                    Counters::add(&counters.replies_dropped, 1);
                    return Err(codec_panicked("encode", &*payload, ctx, counters));
                }
            }
        }
        Ok(())
    }

    /// Drops the replies that arrived but will never be written (the connection ends before
    /// them), counting them so `in_flight` returns to zero.
    pub fn drop_unwritten(&mut self, counters: &Counters) {
        let unwritten = self.reorder.drain(..).flatten().count();
        Counters::add(&counters.replies_dropped, unwritten as u64);
    }

    /// Appends the codec's error reply for `error` to `output`.
    pub fn error_reply(
        &mut self,
        error: &DecodeError,
        output: &mut Buffer,
        ctx: &Context,
        counters: &Counters,
    ) {
        let before = output.len();
        let codec = &mut self.codec;
        let tail = output.tail();
        if let Err(payload) =
            panic::catch_unwind(AssertUnwindSafe(|| codec.error_reply(error, tail)))
        {
            output.truncate(before);
            codec_panicked("error_reply", &*payload, ctx, counters);
        }
    }
}

fn codec_panicked(
    during: &str,
    payload: &(dyn Any + Send),
    ctx: &Context,
    counters: &Counters,
) -> EndReason {
    Counters::add(&counters.panics, 1);
    log::error!(
        "connection {} ({}): codec panicked in {during}: {}; closing that connection",
        ctx.connection_id,
        ctx.peer,
        panic_message(payload)
    );
    EndReason::CodecPanicked
}
