//! A short list that keeps its first item inline: the usual single request of a batch, or
//! the usual single response of a call, costs no allocation.

use std::iter::Chain;

/// Items in order; the first is stored inline, the rest in a vector.
#[derive(Debug)]
pub(crate) struct Few<T> {
    first: Option<T>,
    rest: Vec<T>,
}

impl<T> Few<T> {
    pub const fn new() -> Self {
        Few {
            first: None,
            rest: Vec::new(),
        }
    }

    /// Room for `n` items without growing (the first is inline, so `n - 1` in the vector).
    pub fn with_capacity(n: usize) -> Self {
        Few {
            first: None,
            rest: Vec::with_capacity(n.saturating_sub(1)),
        }
    }

    pub fn push(&mut self, item: T) {
        if self.first.is_none() {
            self.first = Some(item);
        } else {
            self.rest.push(item);
        }
    }

    pub fn len(&self) -> usize {
        usize::from(self.first.is_some()) + self.rest.len()
    }

    pub fn is_empty(&self) -> bool {
        self.first.is_none()
    }

    pub fn first(&self) -> Option<&T> {
        self.first.as_ref()
    }
}

impl<T> Default for Few<T> {
    fn default() -> Self {
        Few::new()
    }
}

impl<T> IntoIterator for Few<T> {
    type Item = T;
    type IntoIter = Chain<std::option::IntoIter<T>, std::vec::IntoIter<T>>;

    fn into_iter(self) -> Self::IntoIter {
        self.first.into_iter().chain(self.rest)
    }
}

impl<T> FromIterator<T> for Few<T> {
    fn from_iter<I: IntoIterator<Item = T>>(items: I) -> Self {
        let mut few = Few::new();
        for item in items {
            few.push(item);
        }
        few
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn items_come_back_in_order_with_the_first_inline() {
        let mut few: Few<u8> = Few::new();
        assert!(few.is_empty());
        few.push(1);
        assert_eq!(
            (few.len(), few.rest.capacity()),
            (1, 0),
            "one item allocates nothing"
        );
        few.extend_for_test([2, 3]);
        assert_eq!(few.first(), Some(&1));
        assert_eq!(few.into_iter().collect::<Vec<_>>(), [1, 2, 3]);
    }

    #[test]
    fn with_capacity_holds_that_many_without_growing() {
        let mut few: Few<u8> = Few::with_capacity(16);
        let room = few.rest.capacity();
        assert_eq!(room, 15, "the first is inline");
        few.extend_for_test(0..16);
        assert_eq!(few.rest.capacity(), room, "grew");
        assert_eq!(
            few.into_iter().collect::<Vec<_>>(),
            (0..16).collect::<Vec<_>>()
        );
        assert_eq!(Few::<u8>::with_capacity(0).rest.capacity(), 0);
    }

    impl<T> Few<T> {
        fn extend_for_test(&mut self, items: impl IntoIterator<Item = T>) {
            for item in items {
                self.push(item);
            }
        }
    }
}
