//! An in-memory journal: positions and a bounded dedupe window, no retained events.

use std::collections::{HashMap, VecDeque};

use super::{Appended, Cursor, Journal, StoreError};

/// Keeps the ids of the last `dedupe_window` events to recognise re-sends; retains no events.
///
/// Memory is bounded by the window: when it is full the oldest id is forgotten, so a re-send
/// older than the window is stored again (the durable journal widens this by time).
#[derive(Debug)]
pub struct MemoryJournal {
    epoch: u64,
    head: u64,
    dedupe_window: usize,
    /// id → position, for the ids in `order`.
    recent: HashMap<Box<str>, u64>,
    /// Ids in arrival order, oldest first, to evict from `recent`.
    order: VecDeque<Box<str>>,
}

impl MemoryJournal {
    /// A new, empty journal with a random epoch.
    pub fn new(dedupe_window: usize) -> Self {
        Self::with_epoch(rand::random(), dedupe_window)
    }

    /// A new, empty journal with the given epoch (tests).
    pub fn with_epoch(epoch: u64, dedupe_window: usize) -> Self {
        Self {
            epoch,
            head: 0,
            dedupe_window,
            recent: HashMap::new(),
            order: VecDeque::new(),
        }
    }

    fn cursor(&self, position: u64) -> Cursor {
        Cursor {
            epoch: self.epoch,
            position,
        }
    }

    fn remember(&mut self, id: &str, position: u64) {
        if self.dedupe_window == 0 {
            return;
        }
        if self.order.len() == self.dedupe_window
            && let Some(oldest) = self.order.pop_front()
        {
            self.recent.remove(&oldest);
        }
        let id: Box<str> = id.into();
        self.recent.insert(id.clone(), position);
        self.order.push_back(id);
    }
}

impl Journal for MemoryJournal {
    fn append(&mut self, ids: &[&str]) -> Result<Vec<Appended>, StoreError> {
        let mut outcomes = Vec::with_capacity(ids.len());
        for id in ids {
            if let Some(&position) = self.recent.get(*id) {
                outcomes.push(Appended {
                    cursor: self.cursor(position),
                    duplicate: true,
                });
                continue;
            }
            self.head += 1;
            let position = self.head;
            self.remember(id, position);
            outcomes.push(Appended {
                cursor: self.cursor(position),
                duplicate: false,
            });
        }
        Ok(outcomes)
    }

    fn head(&self) -> Cursor {
        self.cursor(self.head)
    }

    fn oldest_resumable(&self) -> Cursor {
        // Nothing is retained: only a client already at the head can resume without a gap.
        self.head()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_increase_and_duplicates_keep_their_first_position() {
        let mut journal = MemoryJournal::with_epoch(7, 10);
        let out = journal.append(&["a", "b", "a"]).expect("append");
        assert_eq!(out[0].cursor.position, 1);
        assert_eq!(out[1].cursor.position, 2);
        assert_eq!(
            out[2],
            Appended {
                cursor: out[0].cursor,
                duplicate: true
            }
        );
        assert_eq!(journal.head().position, 2);
        assert_eq!(journal.head().epoch, 7);
    }

    #[test]
    fn the_dedupe_window_is_bounded() {
        let mut journal = MemoryJournal::with_epoch(1, 2);
        journal.append(&["a", "b", "c"]).expect("append");
        assert_eq!(journal.recent.len(), 2);
        // "a" fell out of the window, so it is stored again; "c" is still known.
        let out = journal.append(&["a", "c"]).expect("append");
        assert!(!out[0].duplicate);
        assert!(out[1].duplicate);
    }
}
