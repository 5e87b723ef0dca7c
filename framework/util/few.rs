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
        assert_eq!(few.into_iter().collect::<Vec<_>>(), [1, 2, 3]);
    }

    impl<T> Few<T> {
        fn extend_for_test(&mut self, items: impl IntoIterator<Item = T>) {
            for item in items {
                self.push(item);
            }
        }
    }
}
