//! The write buffer's side of a flush: what it takes out of the shards,
//! and what it puts back when the flush commits or fails.

use std::sync::Arc;

use super::{Hashed, Pending, Shards};

/// What one flush takes out of the shards.
#[derive(Default)]
pub(crate) struct Batch {
    pub(crate) sets: Vec<(Arc<str>, Pending)>,
    pub(crate) touches: Vec<(Arc<str>, i64)>,
}

impl Batch {
    pub(crate) fn is_empty(&self) -> bool {
        self.sets.is_empty() && self.touches.is_empty()
    }
}

impl Shards {
    /// Whether anything waits for L2.
    pub(crate) fn dirty(&self) -> bool {
        self.each()
            .any(|s| !s.pending.is_empty() || !s.touched.is_empty())
    }

    /// Moves every pending write into `flushing` and returns a copy to write.
    /// The caller holds the writer, so no other flush is under way.
    pub(crate) fn begin_flush(&self) -> Batch {
        let mut batch = Batch::default();
        for mut guard in self.each() {
            let shard = &mut *guard;
            // Left over only by a flush whose future was dropped before it
            // finished (its transaction rolled back): write it again.
            for (k, p) in std::mem::take(&mut shard.flushing) {
                shard.pending.entry(k).or_insert(p);
            }
            shard.flushing = std::mem::take(&mut shard.pending);
            shard.pending_bytes = 0;
            batch.sets.extend(
                shard
                    .flushing
                    .iter()
                    .map(|(k, p)| (k.text().clone(), p.clone())),
            );
            batch
                .touches
                .extend(shard.touched.drain().map(|(k, t)| (k.text().clone(), t)));
        }
        batch
    }

    /// The flush committed: L2 now has what `flushing` held.
    pub(crate) fn end_flush(&self) {
        for mut shard in self.each() {
            shard.flushing.clear();
        }
    }

    /// The flush failed: put back what it took, unless a newer set replaced it.
    pub(crate) fn abort_flush(&self, touches: Vec<(Arc<str>, i64)>) {
        for mut guard in self.each() {
            let shard = &mut *guard;
            for (k, p) in shard.flushing.drain() {
                if !shard.pending.contains_key(&k) {
                    shard.pending_bytes += p.item.value.len();
                    shard.pending.insert(k, p);
                }
            }
        }
        for (k, t) in touches {
            let key = Hashed::new(k);
            self.shard(&key).touched.entry(key).or_insert(t);
        }
    }
}
