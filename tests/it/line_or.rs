//! A codec for the tests whose replies are a line or something framed around one (a file
//! region, a streamed body): lines in, the line or the framed reply out.

use std::marker::PhantomData;

use reactor_pool::{AfterReply, Codec, DecodeError, Decoded, LineCodec, Output};

/// A reply: a line, or a `T` that frames itself.
pub enum Reply<T> {
    Line(Vec<u8>),
    Framed(T),
}

/// What a [`Reply::Framed`] writes.
pub trait Frame: Send + 'static {
    fn encode(self, output: &mut Output<'_>);
}

/// Lines in; a line (with its `\n`) or a [`Frame`] out, the connection kept open.
pub struct LineOrCodec<T>(LineCodec, PhantomData<fn() -> T>);

impl<T> Clone for LineOrCodec<T> {
    fn clone(&self) -> Self {
        LineOrCodec(self.0.clone(), PhantomData)
    }
}

impl<T> Default for LineOrCodec<T> {
    fn default() -> Self {
        LineOrCodec(LineCodec::default(), PhantomData)
    }
}

impl<T: Frame> Codec for LineOrCodec<T> {
    type Request = Vec<u8>;
    type Response = Reply<T>;

    fn decode(&mut self, input: &[u8]) -> Result<Option<Decoded<Vec<u8>>>, DecodeError> {
        self.0.decode(input)
    }

    fn encode(&mut self, reply: Reply<T>, output: &mut Output<'_>) -> AfterReply {
        match reply {
            Reply::Line(line) => {
                output.extend_from_slice(&line);
                output.push(b'\n');
            }
            Reply::Framed(framed) => framed.encode(output),
        }
        AfterReply::KeepOpen
    }
}
