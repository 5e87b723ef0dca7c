//! One connection's requests between decoding and writing: sequence numbers, the limits on
//! what may be in flight, the reorder buffer, and every call into the user's codec, each
//! guarded so that a panic in it ends only its connection.
//!
//! The pipeline never touches the socket or the connection's state: it tells the
//! connection, with an [`EndReason`], when the connection has to end.

use std::any::Any;
use std::collections::VecDeque;
use std::panic::{self, AssertUnwindSafe};

use crate::codec::{AfterReply, Codec, DecodeError, Farewell, Output};
use crate::conn::outgoing::Outgoing;
use crate::conn::work::Answer;
use crate::handler::{Context, Replies};
use crate::stats::Counters;
use crate::util::panic::message as panic_message;

/// Why a connection ends on the server's initiative. The pipeline reports the first three;
/// the connection and reactor the rest.
#[derive(Debug)]
pub(crate) enum EndReason {
    /// The input broke the protocol (or the codec broke its contract).
    Protocol(DecodeError),
    /// The codec panicked: nothing more can be decoded or encoded with it.
    CodecPanicked,
    /// A reply said it was the last ([`AfterReply::Close`] or [`Replies::close`]).
    CloseRequested,
    HandlerPanicked,
    Timeout(Farewell),
    ServerShutdown,
    /// A response's body failed mid-way (a file shrank or failed to read, a stream failed).
    BodyFailed,
}

/// The in-flight limits the pipeline keeps.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Room {
    pub max_frame: usize,
    pub max_in_flight: usize,
    pub output_high_water: usize,
}

/// What became of one request, by its sequence number.
enum Slot<R> {
    /// Handed on; its replies have not come back.
    Waiting,
    Replied(Replies<R>),
    /// The codec refused it ([`DecodeError::Refused`]): its error reply answers it.
    Refused(DecodeError),
}

/// What [`Pipeline::decode`] found at the front of the input.
pub(crate) enum Decoded<R> {
    /// A request for the handler, with its sequence number and size; `last` when the codec
    /// said nothing after it may run ([`Codec::closes_after`]).
    Request {
        request: R,
        seq: u64,
        size: usize,
        last: bool,
    },
    /// A request the codec refused and answers itself; its size.
    Refused(usize),
    /// Bytes the codec skipped without making a request of them ([`Codec::skip`]).
    Skipped(usize),
}

/// Requests decoded but not yet answered in writing, and the codec that frames them.
pub(crate) struct Pipeline<C: Codec> {
    codec: C,
    room: Room,
    /// Sequence number of the next request decoded.
    next_seq: u64,
    /// Sequence number of the next reply to write; `next_seq - write_seq` are in flight.
    write_seq: u64,
    /// Index 0 is `write_seq`.
    slots: VecDeque<Slot<C::Response>>,
    /// Input bytes of each request in flight, oldest first, and their sum.
    request_sizes: VecDeque<usize>,
    in_flight_bytes: usize,
    /// The size a reply still to come is assumed to have: the largest recent reply (halving
    /// with each smaller one). Output plus this much per request in flight stays under the
    /// high-water mark, so a peer that stops reading cannot pin many large replies.
    reply_estimate: usize,
    /// Decoding waits until the replies to this request are encoded (a framing switch).
    hold: Option<u64>,
    /// Pushed responses, each stamped with the sequence number of the first request it
    /// goes before (the requests decoded when it was made go before it), in that order.
    pushes: VecDeque<(u64, C::Response)>,
}

/// What [`Pipeline::encode_ready`] did besides encoding replies.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Encoded {
    /// Pushes encoded (they no longer count against the push limit).
    pub pushes: usize,
}

impl<C: Codec> Pipeline<C> {
    pub fn new(codec: C, room: Room) -> Self {
        Pipeline {
            codec,
            room,
            next_seq: 0,
            write_seq: 0,
            slots: VecDeque::new(),
            request_sizes: VecDeque::new(),
            in_flight_bytes: 0,
            // Before any reply is known, two requests fit under the mark.
            reply_estimate: room.output_high_water / 2,
            hold: None,
            pushes: VecDeque::new(),
        }
    }

    /// The output high-water mark.
    pub fn high_water(&self) -> usize {
        self.room.output_high_water
    }

    /// Sequence number the next decoded request gets (= requests decoded so far).
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// Sequence number of the next reply to write (= requests answered so far).
    pub fn write_seq(&self) -> u64 {
        self.write_seq
    }

    pub fn in_flight(&self) -> usize {
        // At most `max_in_flight` (a usize) apart: the conversion cannot fail.
        usize::try_from(self.next_seq - self.write_seq).unwrap_or(usize::MAX)
    }

    /// Whether one more request may be decoded with `output` bytes waiting to be written:
    /// no framing switch pending, fewer than the in-flight limit, and output plus the
    /// replies to come under the mark.
    pub fn has_room(&self, output: usize) -> bool {
        let in_flight = self.in_flight();
        let to_come = self
            .in_flight_bytes
            .max(in_flight.saturating_mul(self.reply_estimate));
        self.hold.is_none_or(|seq| self.write_seq > seq)
            && in_flight < self.room.max_in_flight
            && output.saturating_add(to_come) < self.room.output_high_water
    }

    /// Decodes one request from the front of `input` (with [`Codec::decode_eof`] when the
    /// peer's FIN came after it): `Ok(None)` when more bytes are needed. The request is
    /// numbered and counted in flight; the caller hands it on.
    pub fn decode(
        &mut self,
        input: &[u8],
        at_eof: bool,
        ctx: &Context,
        counters: &Counters,
    ) -> Result<Option<Decoded<C::Request>>, EndReason> {
        if let Some(skipped) = self.skip(input, ctx, counters)? {
            return Ok(Some(skipped));
        }
        let codec = &mut self.codec;
        let decoded = panic::catch_unwind(AssertUnwindSafe(|| {
            if at_eof {
                codec.decode_eof(input)
            } else {
                codec.decode(input)
            }
        }))
        .map_err(|payload| codec_panicked("decode", &*payload, ctx, counters))?;
        let error = match decoded {
            Ok(Some((request, used))) if (1..=input.len()).contains(&used) => {
                let codec = &self.codec;
                let (hold, last) = panic::catch_unwind(AssertUnwindSafe(|| {
                    (codec.holds_decoding(&request), codec.closes_after(&request))
                }))
                .map_err(|payload| {
                    codec_panicked("holds_decoding or closes_after", &*payload, ctx, counters)
                })?;
                let seq = self.number(used, Slot::Waiting);
                Counters::add(&counters.requests, 1);
                if hold {
                    self.hold = Some(seq);
                }
                return Ok(Some(Decoded::Request {
                    request,
                    seq,
                    size: used,
                    last,
                }));
            }
            Ok(Some((_, used))) => DecodeError::Invalid(format!(
                "the codec reported using {used} of the {} bytes it was given",
                input.len()
            )),
            // A codec that needs more may have decided to skip what it was given.
            Ok(None) => match self.skip(input, ctx, counters)? {
                Some(skipped) => return Ok(Some(skipped)),
                // The codec keeps waiting, but no request may be this large.
                None if input.len() > self.room.max_frame => DecodeError::FrameTooLarge {
                    size: input.len(),
                    max: self.room.max_frame,
                },
                None => return Ok(None),
            },
            Err(DecodeError::Refused { consumed, reason })
                if (1..=input.len()).contains(&consumed) =>
            {
                log::debug!(
                    "connection {} ({}): request refused: {reason}",
                    ctx.connection_id,
                    ctx.peer
                );
                Counters::add(&counters.requests, 1);
                Counters::add(&counters.refused, 1);
                self.number(
                    consumed,
                    Slot::Refused(DecodeError::Refused { consumed, reason }),
                );
                return Ok(Some(Decoded::Refused(consumed)));
            }
            Err(DecodeError::Refused { consumed, .. }) => DecodeError::Invalid(format!(
                "the codec refused a request of {consumed} of the {} bytes it was given",
                input.len()
            )),
            Err(error) => error,
        };
        Counters::add(&counters.protocol_errors, 1);
        Err(EndReason::Protocol(error))
    }

    /// Asks the codec how many bytes at the front of `input` to skip.
    fn skip(
        &mut self,
        input: &[u8],
        ctx: &Context,
        counters: &Counters,
    ) -> Result<Option<Decoded<C::Request>>, EndReason> {
        let codec = &mut self.codec;
        let skip = panic::catch_unwind(AssertUnwindSafe(|| codec.skip(input)))
            .map_err(|payload| codec_panicked("skip", &*payload, ctx, counters))?;
        match skip {
            0 => Ok(None),
            n if n <= input.len() => Ok(Some(Decoded::Skipped(n))),
            n => {
                Counters::add(&counters.protocol_errors, 1);
                Err(EndReason::Protocol(DecodeError::Invalid(format!(
                    "the codec skipped {n} of the {} bytes it was given",
                    input.len()
                ))))
            }
        }
    }

    /// A response pushed from outside: written after the replies to the first `after`
    /// requests (those decoded when it was made), before those to come. Pushes from
    /// different threads may arrive out of that order: each is put in its place.
    pub fn pushed(&mut self, after: u64, response: C::Response) {
        let stamp = after.min(self.next_seq);
        let at = self
            .pushes
            .iter()
            .rposition(|&(earlier, _)| earlier <= stamp)
            .map_or(0, |i| i + 1);
        self.pushes.insert(at, (stamp, response));
    }

    /// Whether pushed responses wait to be encoded.
    pub fn has_pushes(&self) -> bool {
        !self.pushes.is_empty()
    }

    /// Whether something waits to be encoded that may go once the output drains: a push,
    /// or an answer next in order (held behind a body being written).
    pub fn has_encodable(&self) -> bool {
        self.has_pushes()
            || matches!(
                self.slots.front(),
                Some(Slot::Replied(_) | Slot::Refused(_))
            )
    }

    fn number(&mut self, size: usize, slot: Slot<C::Response>) -> u64 {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.request_sizes.push_back(size);
        self.in_flight_bytes += size;
        self.slots.push_back(slot);
        seq
    }

    /// Keeps the replies to request `seq` until every earlier one is written. Returns false
    /// when none is expected for `seq` (never decoded, or already written).
    fn store(&mut self, seq: u64, replies: Replies<C::Response>) -> bool {
        let Some(index) = seq.checked_sub(self.write_seq) else {
            return false;
        };
        match usize::try_from(index)
            .ok()
            .and_then(|i| self.slots.get_mut(i))
        {
            Some(slot @ Slot::Waiting) => {
                *slot = Slot::Replied(replies);
                true
            }
            _ => false,
        }
    }

    /// Keeps request `seq`'s answer if it is still owed (before `cut`); counts it dropped
    /// otherwise. Returns how the connection must end because of it, if it must: after this
    /// request when its replies close the connection, before it when its handler panicked.
    pub fn answered(
        &mut self,
        seq: u64,
        answer: Answer<C::Response>,
        cut: u64,
        counters: &Counters,
    ) -> Option<(u64, EndReason)> {
        match answer {
            Answer::Replied(replies) if seq < cut => {
                let closes = replies.close;
                if self.store(seq, replies) {
                    return closes.then_some((seq + 1, EndReason::CloseRequested));
                }
            }
            Answer::Panicked if seq < cut => {
                Counters::add(&counters.replies_dropped, 1);
                return Some((seq, EndReason::HandlerPanicked));
            }
            _ => {}
        }
        Counters::add(&counters.replies_dropped, 1);
        None
    }

    /// Encodes into `output` the answers that are next in order, up to request `cut`, and
    /// the pushes due before each (those stamped at or before `cut` at the end). A push
    /// waits while the output is at its high-water mark (and so does everything after it):
    /// that is what bounds a flood of pushes to a peer that does not read.
    pub fn encode_ready(
        &mut self,
        output: &mut Outgoing,
        cut: u64,
        ctx: &Context,
        counters: &Counters,
    ) -> Result<Encoded, EndReason> {
        let mut encoded = Encoded::default();
        loop {
            while let Some(&(stamp, _)) = self.pushes.front() {
                if stamp > self.write_seq || stamp > cut {
                    break;
                }
                if output.weight(self.room.output_high_water) >= self.room.output_high_water {
                    return Ok(encoded);
                }
                let (_, response) = self.pushes.pop_front().expect("checked above");
                encoded.pushes += 1;
                Counters::add(&counters.pushes, 1);
                if self.encode(response, output, ctx, counters)? == AfterReply::Close {
                    return Err(EndReason::CloseRequested);
                }
            }
            if self.write_seq >= cut || output.has_body() {
                return Ok(encoded);
            }
            let answer = match self.slots.front() {
                Some(Slot::Waiting) | None => return Ok(encoded),
                Some(_) => self.slots.pop_front().expect("checked above"),
            };
            self.write_seq += 1;
            self.in_flight_bytes -= self.request_sizes.pop_front().unwrap_or(0);
            let before = output.len();
            let close = match answer {
                Slot::Replied(replies) => {
                    // A close the handler asked for already ended the connection after this
                    // request, when the answer was stored (`answered`): only the codec's
                    // `AfterReply::Close`, known now, is decided here.
                    let mut close = false;
                    for response in replies.into_responses() {
                        match self.encode(response, output, ctx, counters) {
                            Ok(AfterReply::KeepOpen) => {}
                            Ok(AfterReply::Close) => {
                                close = true;
                                break;
                            }
                            Err(reason) => {
                                Counters::add(&counters.replies_dropped, 1);
                                return Err(reason);
                            }
                        }
                    }
                    close
                }
                Slot::Refused(error) => {
                    self.error_reply(&error, output, ctx, counters);
                    false
                }
                Slot::Waiting => unreachable!("checked above"),
            };
            Counters::add(&counters.responses, 1);
            self.reply_estimate = output
                .len()
                .saturating_sub(before)
                .max(self.reply_estimate / 2);
            if close {
                return Err(EndReason::CloseRequested);
            }
        }
    }

    /// Encodes responses that answer no request (a greeting) straight into `output`.
    pub fn encode_unsolicited(
        &mut self,
        replies: Replies<C::Response>,
        output: &mut Outgoing,
        ctx: &Context,
        counters: &Counters,
    ) -> Result<(), EndReason> {
        let close = replies.close;
        for response in replies.into_responses() {
            if self.encode(response, output, ctx, counters)? == AfterReply::Close {
                return Err(EndReason::CloseRequested);
            }
        }
        if close {
            return Err(EndReason::CloseRequested);
        }
        Ok(())
    }

    fn encode(
        &mut self,
        response: C::Response,
        output: &mut Outgoing,
        ctx: &Context,
        counters: &Counters,
    ) -> Result<AfterReply, EndReason> {
        self.guarded("encode", output, ctx, counters, |codec, out| {
            codec.encode(response, out)
        })
    }

    /// Runs `write` (a codec call that appends to `output`), catching a panic: what it
    /// half-wrote is cut off, and the panic is logged and counted.
    fn guarded<T>(
        &mut self,
        during: &str,
        output: &mut Outgoing,
        ctx: &Context,
        counters: &Counters,
        write: impl FnOnce(&mut C, &mut Output<'_>) -> T,
    ) -> Result<T, EndReason> {
        let mark = output.mark();
        let codec = &mut self.codec;
        let mut out = output.output();
        let outcome = panic::catch_unwind(AssertUnwindSafe(|| write(codec, &mut out)));
        outcome.map_err(|payload| {
            output.truncate(mark);
            codec_panicked(during, &*payload, ctx, counters)
        })
    }

    /// Drops the answers that will never be written (the connection ends before them),
    /// counting each request as dropped so `in_flight` returns to zero. Requests still
    /// waiting for a worker are counted when their replies come back (or their work is
    /// dropped).
    /// Pushes not yet encoded are dropped too; returns how many.
    pub fn drop_unwritten(&mut self, counters: &Counters) -> usize {
        let unwritten = self
            .slots
            .drain(..)
            .filter(|slot| !matches!(slot, Slot::Waiting))
            .count();
        Counters::add(&counters.replies_dropped, unwritten as u64);
        let pushes = self.pushes.len();
        self.pushes.clear();
        pushes
    }

    /// Appends the codec's error reply for `error` to `output`.
    pub fn error_reply(
        &mut self,
        error: &DecodeError,
        output: &mut Outgoing,
        ctx: &Context,
        counters: &Counters,
    ) {
        // A panic here is logged and counted; the connection is ending or answers on.
        let _ = self.guarded("error_reply", output, ctx, counters, |codec, out| {
            codec.error_reply(error, out);
        });
    }

    /// Appends the codec's farewell to `output`.
    pub fn farewell(
        &mut self,
        why: Farewell,
        output: &mut Outgoing,
        ctx: &Context,
        counters: &Counters,
    ) {
        let _ = self.guarded("farewell", output, ctx, counters, |codec, out| {
            codec.farewell(why, out);
        });
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
