//! The log's Merkle tree stored as tiles (see `layout`): which tiles a run of new leaves fills or
//! extends, and any perfect subtree served to the proof code from them.
//!
//! Storing only every [`TILE_HEIGHT`]th level, 256 hashes to a key, costs a commit group about one
//! tile write instead of two node keys per event. The levels in between are recomputed on demand:
//! a node at `TILE_HEIGHT * L + s` folds `2^s` consecutive hashes of one tile, at most 255 hash
//! operations per proof step.
use super::layout::{tile_key, Stage, TILE_HEIGHT, TILE_WIDTH};
use super::record::Hash;
use super::LogError;
use claims_ledger_core::merkle::{self, Frontier};

/// The unfinished last tile of each tile level, for a tree of some size.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Tiles {
    /// `partial[L]`: the hashes (32 bytes each) of the last, not yet full tile at tile level `L`.
    partial: Vec<Vec<u8>>,
    /// Tile levels whose partial tile changed since [`Tiles::take_changed`].
    changed: Vec<bool>,
}

/// Number of nodes at tree level `TILE_HEIGHT * level` in a tree of `size` leaves.
fn nodes_at(size: u64, level: usize) -> u64 {
    size.checked_shr(TILE_HEIGHT * level as u32).unwrap_or(0)
}

impl Tiles {
    /// The partial tiles of the stored tree of `size` leaves, checked for their length.
    pub(crate) fn load(db: &sled::Db, size: u64) -> Result<Tiles, LogError> {
        let mut tiles = Tiles::default();
        let mut level = 0usize;
        while nodes_at(size, level) > 0 {
            let nodes = nodes_at(size, level);
            let count = (nodes % TILE_WIDTH) as usize;
            let bytes = if count == 0 {
                Vec::new()
            } else {
                let key = tile_key(level as u8, nodes / TILE_WIDTH);
                match db.get(key)? {
                    Some(v) if v.len() == count * 32 => v.to_vec(),
                    other => {
                        return Err(LogError::Corrupt {
                            position: size,
                            reason: format!(
                                "Merkle tile ({level}, {}) holds {} bytes where {} were expected",
                                nodes / TILE_WIDTH,
                                other.map_or(0, |v| v.len()),
                                count * 32
                            ),
                        })
                    }
                }
            };
            tiles.partial.push(bytes);
            tiles.changed.push(false);
            level += 1;
        }
        Ok(tiles)
    }

    /// Pushes one leaf onto `frontier`, and every tile-level subtree it completes onto its tile.
    /// `full` receives each tile that becomes full: (tile level, tile index, 256 hashes).
    pub(crate) fn push(
        &mut self,
        frontier: &mut Frontier,
        leaf: Hash,
        full: &mut impl FnMut(u8, u64, Vec<u8>),
    ) {
        // `TreeFull` needs 2^64 leaves; positions would overflow first.
        let _ = frontier.push_with(leaf, |level, index, hash| {
            if level % TILE_HEIGHT != 0 {
                return;
            }
            let l = (level / TILE_HEIGHT) as usize;
            if self.partial.len() <= l {
                self.partial.resize(l + 1, Vec::new());
                self.changed.resize(l + 1, false);
            }
            let tile = &mut self.partial[l];
            tile.extend_from_slice(hash);
            if tile.len() as u64 == TILE_WIDTH * 32 {
                full(l as u8, index / TILE_WIDTH, std::mem::take(tile));
                self.changed[l] = false;
            } else {
                self.changed[l] = true;
            }
        });
    }

    /// The partial tiles of a tree of `size` leaves that changed since the last call, with their
    /// keys; marks them unchanged.
    pub(crate) fn take_changed(&mut self, size: u64) -> Vec<([u8; 10], Vec<u8>)> {
        let mut out = Vec::new();
        for (l, changed) in self.changed.iter_mut().enumerate() {
            if std::mem::take(changed) && !self.partial[l].is_empty() {
                let key = tile_key(l as u8, nodes_at(size, l) / TILE_WIDTH);
                out.push((key, self.partial[l].clone()));
            }
        }
        out
    }

    /// Every non-empty partial tile of a tree of `size` leaves, with its key.
    pub(crate) fn partials(&self, size: u64) -> impl Iterator<Item = ([u8; 10], &[u8])> + '_ {
        self.partial
            .iter()
            .enumerate()
            .filter(|(_, t)| !t.is_empty())
            .map(move |(l, t)| {
                (
                    tile_key(l as u8, nodes_at(size, l) / TILE_WIDTH),
                    t.as_slice(),
                )
            })
    }
}

/// Pushes `leaves` onto copies of `frontier` and `tiles`, staging the tiles they fill or extend and
/// the new frontier in `batch`, so the tree is written atomically with the events. Returns the
/// copies, to keep once the batch is applied.
pub(crate) fn stage_tree(
    frontier: &Frontier,
    tiles: &Tiles,
    leaves: impl IntoIterator<Item = Hash>,
    batch: &mut impl Stage,
) -> (Frontier, Tiles) {
    let mut frontier = frontier.clone();
    let mut tiles = tiles.clone();
    for leaf in leaves {
        tiles.push(&mut frontier, leaf, &mut |level, index, hashes| {
            batch.put(&tile_key(level, index)[..], hashes.as_ref());
        });
    }
    for (key, hashes) in tiles.take_changed(frontier.size()) {
        batch.put(&key[..], hashes.as_ref());
    }
    batch.put(super::layout::FRONTIER_KEY, &frontier.to_bytes());
    (frontier, tiles)
}

/// The stored perfect subtrees, for proofs. Only ask for sizes the log has made durable.
pub(crate) struct TileNodes<'a>(pub(crate) &'a sled::Db);

impl merkle::NodeStore for TileNodes<'_> {
    type Error = LogError;

    fn node(&self, level: u32, index: u64) -> Result<Hash, LogError> {
        let missing = || LogError::Corrupt {
            position: index.checked_shl(level).unwrap_or(u64::MAX),
            reason: format!("Merkle node ({level}, {index}) is missing"),
        };
        let (tile_level, below) = (level / TILE_HEIGHT, level % TILE_HEIGHT);
        // The node is the root over 2^below consecutive hashes of one tile.
        let first = index.checked_shl(below).ok_or_else(missing)?;
        let (tile, slot) = (first / TILE_WIDTH, (first % TILE_WIDTH) as usize);
        let width = 1usize << below;
        let key = tile_key(u8::try_from(tile_level).map_err(|_| missing())?, tile);
        let bytes = self.0.get(key)?.ok_or_else(missing)?;
        let span = bytes
            .get(slot * 32..(slot + width) * 32)
            .ok_or_else(missing)?;
        let mut hashes: Vec<Hash> = span
            .chunks_exact(32)
            .filter_map(|c| c.try_into().ok())
            .collect();
        while hashes.len() > 1 {
            hashes = hashes
                .chunks_exact(2)
                .map(|p| merkle::node_hash(&p[0], &p[1]))
                .collect();
        }
        hashes.pop().ok_or_else(missing)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use claims_ledger_core::merkle::NodeStore;

    fn leaf(i: u64) -> Hash {
        merkle::leaf_hash(&i.to_be_bytes())
    }

    /// Every perfect subtree the tiles serve equals the one a frontier reports, at every level,
    /// for a tree spanning three tile levels and written in uneven groups.
    #[test]
    fn tiles_serve_every_perfect_subtree_the_frontier_completes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = sled::Config::new()
            .path(dir.path())
            .open()
            .expect("open sled");
        let n: u64 = 70_000;
        let (mut frontier, mut tiles) = (Frontier::new(), Tiles::default());
        let mut expected = Vec::new();
        let mut reference = Frontier::new();
        let mut at = 0;
        for group in [1u64, 3, 255, 1, 256, 4000, 60_000, 5484].iter().copied() {
            let mut batch = sled::Batch::default();
            let leaves: Vec<Hash> = (at..at + group).map(leaf).collect();
            for l in &leaves {
                let _ = reference.push_with(*l, |level, index, h| {
                    expected.push((level, index, *h));
                });
            }
            (frontier, tiles) = stage_tree(&frontier, &tiles, leaves, &mut batch);
            db.apply_batch(batch).expect("apply");
            at += group;
            // The partial tiles reload to what the writer holds.
            assert_eq!(Tiles::load(&db, at).expect("load").partial, tiles.partial);
        }
        assert_eq!(at, n);
        assert_eq!(frontier.root(), reference.root());
        let nodes = TileNodes(&db);
        for (level, index, h) in expected.iter().step_by(7) {
            assert_eq!(
                nodes.node(*level, *index).expect("node"),
                *h,
                "({level}, {index})"
            );
        }
        // Nodes not yet complete are missing, not made up.
        assert!(nodes.node(0, n).is_err());
        assert!(nodes.node(9, n >> 9).is_err());
    }
}
