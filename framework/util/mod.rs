//! Small tools every layer uses: a byte buffer consumed from the front, a short list that
//! keeps its first item inline, deadlines that saturate, and a caught panic's message. Imports nothing of the crate.

pub(crate) mod buffer;
pub(crate) mod clock;
pub(crate) mod few;
pub(crate) mod panic;
