//! A map that forgets its oldest keys: the shape of every per-request memory the server keeps
//! (sessions, unsettled charges, recent predictions), so none of them grows without bound.

use std::collections::{HashMap, VecDeque};

/// At most `capacity` keys, oldest inserted forgotten first.
#[derive(Debug)]
pub struct BoundedMap<V> {
    capacity: usize,
    map: HashMap<String, V>,
    /// Keys in insertion order; may still name keys already removed (skipped when evicted).
    order: VecDeque<String>,
}

impl<V> BoundedMap<V> {
    /// An empty map keeping at most `capacity` keys.
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity,
            map: HashMap::new(),
            order: VecDeque::new(),
        }
    }

    /// Inserts or replaces. A new key evicts the oldest one when the map is full; replacing a
    /// value keeps the key's place. Returns whether a key still held was evicted.
    pub fn insert(&mut self, key: &str, value: V) -> bool {
        let mut evicted = false;
        if !self.map.contains_key(key) {
            if self.order.len() >= self.capacity
                && let Some(oldest) = self.order.pop_front()
            {
                evicted = self.map.remove(&oldest).is_some();
            }
            self.order.push_back(key.to_owned());
        }
        self.map.insert(key.to_owned(), value);
        evicted
    }

    /// The value of `key`, if still remembered.
    pub fn get(&self, key: &str) -> Option<&V> {
        self.map.get(key)
    }

    /// The value of `key` to change in place, if still remembered.
    pub fn get_mut(&mut self, key: &str) -> Option<&mut V> {
        self.map.get_mut(key)
    }

    /// Takes `key` out.
    pub fn remove(&mut self, key: &str) -> Option<V> {
        self.map.remove(key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oldest_keys_are_forgotten_first() {
        let mut m = BoundedMap::new(2);
        m.insert("a", 1);
        m.insert("b", 2);
        m.insert("a", 3);
        m.insert("c", 4);
        assert_eq!(m.get("a"), None);
        assert_eq!((m.get("b"), m.get("c")), (Some(&2), Some(&4)));
        assert_eq!(m.remove("b"), Some(2));
        assert_eq!(m.get("b"), None);
    }
}
