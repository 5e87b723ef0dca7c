//! A byte buffer that is consumed from the front and appended at the back.

/// Bytes with a consumed prefix, so taking from the front does not move the rest.
#[derive(Debug, Default)]
pub(crate) struct Buffer {
    bytes: Vec<u8>,
    start: usize,
}

/// Buffers that grew past this are given back to the allocator once they empty, so an idle
/// connection holds almost no memory.
const KEEP_CAPACITY: usize = 64 * 1024;

impl Buffer {
    pub fn pending(&self) -> &[u8] {
        &self.bytes[self.start..]
    }

    pub fn len(&self) -> usize {
        self.bytes.len() - self.start
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn consume(&mut self, n: usize) {
        self.start += n;
        if self.start == self.bytes.len() {
            self.clear();
        }
    }

    /// Keeps only the first `len` pending bytes (`len` at most [`len`](Self::len)).
    pub fn truncate(&mut self, len: usize) {
        self.bytes.truncate(self.start + len);
    }

    pub fn clear(&mut self) {
        self.bytes.clear();
        self.start = 0;
        if self.bytes.capacity() > KEEP_CAPACITY {
            self.bytes = Vec::new();
        }
    }

    /// The vector to append to; the consumed prefix is dropped first when it is at least half.
    pub fn tail(&mut self) -> &mut Vec<u8> {
        if self.start > 0 && self.start >= self.bytes.len() / 2 {
            self.bytes.drain(..self.start);
            self.start = 0;
        }
        &mut self.bytes
    }
}
