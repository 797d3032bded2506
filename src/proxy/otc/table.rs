//! The OTC session table's storage (seed 002; no thesis section: a port
//! decision, `docs/otc.md`), allocated whole at start as the thesis's
//! client pool is (§3.5.2, `client_t` slots): `otc.max_sessions` slots,
//! written once so their pages are the process's from the start, a free
//! list, and an index from the client's session id to its slot reserved
//! for twice as many entries (why twice: `Table::new`).
//!
//! Why not a `HashMap` of sessions: a flood of sessions grows a map by
//! doubling, each step a larger copy, and what it frees afterwards the
//! allocator keeps; the proxy's RSS after a flood was its high-water mark
//! (`make attack`, otc-session-flood). With the slots allocated at start,
//! a flood uses memory that was already there and leaves nothing behind.

use std::collections::HashMap;

/// Entries by `u32` id, at most the capacity given at start.
#[derive(Debug)]
pub struct Table<T> {
    slots: Vec<Option<T>>,
    /// Free slots, the next one to use last.
    free: Vec<u32>,
    /// Session id → slot.
    index: HashMap<u32, u32>,
}

/// Why an entry was not added.
#[derive(Debug, PartialEq, Eq)]
pub enum InsertError {
    /// Every slot is taken.
    Full,
    /// The id is live.
    Taken,
}

impl<T> Table<T> {
    /// `max` slots, every one written now.
    ///
    /// The index is reserved for `2 * max + 2` entries, not `max`: a
    /// removal leaves a tombstone in the map, and once tombstones have used
    /// its room the map rehashes, in place only while the live entries are
    /// at most half its room, or else into a map twice the size. With room
    /// for twice the most live entries, churn near a full table rehashes in
    /// place and never grows it.
    pub fn new(max: usize) -> Table<T> {
        Table {
            slots: (0..max).map(|_| None).collect(),
            free: (0..max as u32).rev().collect(),
            index: HashMap::with_capacity(2 * max + 2),
        }
    }

    /// Bytes reserved at start: the slots, the free list and the index (its
    /// buckets estimated as the standard map lays them out: a power of two
    /// over 8/7 of its room, each an entry and a control byte).
    pub fn reserved_bytes(&self) -> usize {
        let slots = self.slots.capacity() * std::mem::size_of::<Option<T>>();
        let free = self.free.capacity() * std::mem::size_of::<u32>();
        let buckets = (self.index.capacity() * 8 / 7).next_power_of_two();
        slots + free + buckets * (std::mem::size_of::<(u32, u32)>() + 1)
    }

    /// Live entries.
    pub fn len(&self) -> usize {
        self.index.len()
    }

    /// No live entry.
    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    /// Most entries.
    pub fn capacity(&self) -> usize {
        self.slots.len()
    }

    /// The entry of `id`.
    pub fn get(&self, id: u32) -> Option<&T> {
        let &slot = self.index.get(&id)?;
        self.slots[slot as usize].as_ref()
    }

    /// The entry of `id`, to change.
    pub fn get_mut(&mut self, id: u32) -> Option<&mut T> {
        let &slot = self.index.get(&id)?;
        self.slots[slot as usize].as_mut()
    }

    /// Adds `entry` as `id`'s, in a free slot.
    pub fn insert(&mut self, id: u32, entry: T) -> Result<(), InsertError> {
        if self.index.contains_key(&id) {
            return Err(InsertError::Taken);
        }
        let slot = self.free.pop().ok_or(InsertError::Full)?;
        self.slots[slot as usize] = Some(entry);
        self.index.insert(id, slot);
        Ok(())
    }

    /// Takes `id`'s entry out; its slot is free again.
    pub fn remove(&mut self, id: u32) -> Option<T> {
        let slot = self.index.remove(&id)?;
        self.free.push(slot);
        self.slots[slot as usize].take()
    }

    /// The live ids.
    pub fn ids(&self) -> impl Iterator<Item = u32> + '_ {
        self.index.keys().copied()
    }

    /// The live entries with their ids.
    pub fn iter(&self) -> impl Iterator<Item = (u32, &T)> + '_ {
        self.index
            .iter()
            .filter_map(|(&id, &slot)| Some((id, self.slots[slot as usize].as_ref()?)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_fill_the_slots_given_at_start_and_free_ones_are_reused() {
        let mut t = Table::new(2);
        assert_eq!(t.capacity(), 2);
        t.insert(7, "a").unwrap();
        assert_eq!(t.insert(7, "again"), Err(InsertError::Taken));
        t.insert(9, "b").unwrap();
        assert_eq!(t.insert(11, "c"), Err(InsertError::Full));
        assert_eq!(t.len(), 2);
        assert_eq!(t.get(7), Some(&"a"));
        *t.get_mut(9).unwrap() = "b2";
        assert_eq!(t.remove(7), Some("a"));
        assert_eq!(t.remove(7), None);
        assert_eq!(t.get(7), None);
        t.insert(11, "c").unwrap();
        let mut live: Vec<_> = t.iter().collect();
        live.sort();
        assert_eq!(live, [(9, &"b2"), (11, &"c")]);
        let mut ids: Vec<_> = t.ids().collect();
        ids.sort();
        assert_eq!(ids, [9, 11]);
    }

    #[test]
    fn a_flood_of_entries_leaves_the_table_as_it_was() {
        let mut t = Table::new(4096);
        let index_room = t.index.capacity();
        for round in 0..3u32 {
            for id in 0..4096 {
                t.insert(round << 16 | id, id).unwrap();
            }
            assert_eq!(t.insert(u32::MAX, 0), Err(InsertError::Full));
            for id in 0..4096 {
                assert_eq!(t.remove(round << 16 | id), Some(id));
            }
            assert!(t.is_empty());
        }
        // Nothing grew: the index is still the one reserved at start (its
        // capacity would double if it had; deleted entries lower it).
        assert!(t.index.capacity() <= index_room);
        assert_eq!(t.free.len(), 4096);
    }

    #[test]
    fn churn_near_a_full_table_rehashes_in_place() {
        // 90% full, then one session ends and another begins, many times
        // over: the tombstones this leaves make the map rehash again and
        // again. Reserved for only `max` entries it would double here (live
        // entries over half its room); reserved for `2 * max + 2`, never.
        let max = 4096;
        let live = max * 9 / 10;
        let mut t = Table::new(max);
        let index_room = t.index.capacity();
        for id in 0..live as u32 {
            t.insert(id, ()).unwrap();
        }
        for id in live as u32..200_000 {
            t.remove(id - live as u32).unwrap();
            t.insert(id, ()).unwrap();
            assert!(t.index.capacity() <= index_room, "grew at id {id}");
        }
        assert_eq!(t.len(), live);
    }
}
