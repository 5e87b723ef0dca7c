//! Small tools every layer uses: a byte buffer consumed from the front, a short list that
//! keeps its first item inline, and deadlines that saturate. Imports nothing of the crate.

pub(crate) mod buffer;
pub(crate) mod clock;
pub(crate) mod few;
