//! A byte buffer that is consumed from the front and appended at the back.

/// Bytes with a consumed prefix, so taking from the front does not move the rest.
#[derive(Debug, Default)]
pub(crate) struct Buffer {
    bytes: Vec<u8>,
    start: usize,
}

/// Buffers that grew past this are given back to the allocator as soon as they empty: one
/// large exchange does not pin its buffer while the connection stays busy.
const KEEP_CAPACITY: usize = 64 * 1024;

/// What an idle connection's buffer may keep ([`Buffer::shrink_idle`]): enough for the
/// next small exchange without an allocation, little enough that 10,000 idle connections
/// hold at most 40 MiB each way, whatever they last exchanged.
pub(crate) const IDLE_CAPACITY: usize = 4 * 1024;

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

    /// Takes `bytes` as its content; the buffer must be empty.
    pub fn replace(&mut self, bytes: Vec<u8>) {
        debug_assert!(self.is_empty());
        self.bytes = bytes;
        self.start = 0;
    }

    /// The connection went idle: an empty buffer keeps at most [`IDLE_CAPACITY`] bytes.
    pub fn shrink_idle(&mut self) {
        if self.is_empty() && self.bytes.capacity() > IDLE_CAPACITY {
            self.bytes = Vec::new();
            self.start = 0;
        }
    }

    /// Bytes allocated, used or not.
    #[cfg(test)]
    pub fn capacity(&self) -> usize {
        self.bytes.capacity()
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
