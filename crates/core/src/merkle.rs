//! RFC 6962 / RFC 9162 Merkle trees over the log, for tamper evidence.
//!
//! Hashing is the Certificate Transparency scheme: a leaf hashes as `SHA-256(0x00 || bytes)`, an
//! interior node as `SHA-256(0x01 || left || right)`, and the empty tree's root is `SHA-256("")`.
//! The tree over `n` leaves is the Merkle Tree Hash `MTH` of RFC 9162 §2.1.1: split at the
//! largest power of two below `n`, so every tree is a run of *perfect* subtrees, largest first.
//!
//! The pieces:
//! - [`root`]: the MTH of a slice of leaf hashes, for tests and small trees.
//! - [`Frontier`]: the compact range `[0, n)`, i.e. the O(log n) perfect-subtree hashes on the
//!   right edge. A writer pushes leaf hashes one at a time, reads the current root, and persists
//!   the frontier with its head ([`Frontier::to_bytes`]) instead of rereading leaves.
//! - [`NodeStore`]: read access to stored perfect-subtree hashes, addressed by `(level, index)`.
//!   An appender can write each one as soon as it completes ([`Frontier::push_with`]).
//! - [`inclusion_proof`], [`consistency_proof`], [`root_at`], [`subtree_root`]: proofs and
//!   historical roots computed from a [`NodeStore`] alone (RFC 9162 §2.1.3.1, §2.1.4.1).
//! - [`verify_inclusion`], [`verify_consistency`]: verification that trusts nothing but its
//!   arguments (RFC 9162 §2.1.3.2, §2.1.4.2), with one error variant per way to fail.
//!
//! The module is pure: it does no I/O, holds no locks and never panics on any input; storage is
//! the caller's, reached only through [`NodeStore`].

use sha2::{Digest, Sha256};

/// A SHA-256 digest: a leaf hash, a node hash or a root.
pub type Hash = [u8; 32];

/// Root of the empty tree: `SHA-256("")` (RFC 9162 §2.1.1).
pub const EMPTY_ROOT: Hash = [
    0xe3, 0xb0, 0xc4, 0x42, 0x98, 0xfc, 0x1c, 0x14, 0x9a, 0xfb, 0xf4, 0xc8, 0x99, 0x6f, 0xb9, 0x24,
    0x27, 0xae, 0x41, 0xe4, 0x64, 0x9b, 0x93, 0x4c, 0xa4, 0x95, 0x99, 0x1b, 0x78, 0x52, 0xb8, 0x55,
];

// Domain-separation prefixes: a leaf can never be mistaken for an interior node (second preimage).
const LEAF_PREFIX: u8 = 0x00;
const NODE_PREFIX: u8 = 0x01;

/// Leaf hash: `SHA-256(0x00 || data)`.
pub fn leaf_hash(data: &[u8]) -> Hash {
    let mut h = Sha256::new();
    h.update([LEAF_PREFIX]);
    h.update(data);
    h.finalize().into()
}

/// Interior node hash: `SHA-256(0x01 || left || right)`.
pub fn node_hash(left: &Hash, right: &Hash) -> Hash {
    let mut h = Sha256::new();
    h.update([NODE_PREFIX]);
    h.update(left);
    h.update(right);
    h.finalize().into()
}

/// The Merkle Tree Hash of a list of *leaf hashes* (already `leaf_hash`ed), per RFC 9162 §2.1.1.
///
/// Hashes every interior node once: O(n) time, O(log n) stack. Meant for tests and small trees;
/// a writer should keep a [`Frontier`] instead.
pub fn root(leaves: &[Hash]) -> Hash {
    match leaves.len() {
        0 => EMPTY_ROOT,
        1 => leaves[0],
        n => {
            let k = split_point(n as u64) as usize;
            node_hash(&root(&leaves[..k]), &root(&leaves[k..]))
        }
    }
}

/// Largest power of two strictly less than `n`; `n` must be at least 2.
fn split_point(n: u64) -> u64 {
    debug_assert!(n >= 2);
    1u64 << (63 - (n - 1).leading_zeros())
}

// ---------------------------------------------------------------------------------------------
// Frontier (compact range [0, n))
// ---------------------------------------------------------------------------------------------

/// The right edge of a growing tree: one perfect-subtree hash per set bit of `size`.
///
/// `hashes[0]` covers the leftmost (largest) perfect subtree, the last one the rightmost
/// (smallest). Pushing a leaf merges equal-sized neighbours like a binary counter carry, so a push
/// costs amortized one node hash and the frontier never holds more than 64 hashes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Frontier {
    size: u64,
    hashes: Vec<Hash>,
}

/// A tree already holds `u64::MAX` leaves; one more cannot be addressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the Merkle tree is full ({} leaves)", u64::MAX)]
pub struct TreeFull;

/// Why bytes or parts do not make a [`Frontier`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrontierError {
    /// Fewer than the 8 bytes of the size prefix.
    #[error("frontier encoding is {len} bytes, shorter than its 8-byte size prefix")]
    Truncated { len: usize },
    /// The number of hashes does not match the number of set bits in the size.
    #[error("a frontier of size {size} has {expected} hashes, got {actual}")]
    WrongHashCount {
        size: u64,
        expected: usize,
        actual: usize,
    },
    /// The bytes after the size prefix are not a whole number of hashes.
    #[error("frontier encoding has {trailing} stray bytes after its hashes")]
    RaggedHashes { trailing: usize },
}

impl Frontier {
    /// The empty tree.
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of leaves pushed so far.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The perfect-subtree hashes, largest (leftmost) first; one per set bit of `size()`.
    pub fn hashes(&self) -> &[Hash] {
        &self.hashes
    }

    /// Rebuilds a frontier from its size and hashes, checking only that the count fits the size.
    ///
    /// The hashes are trusted as they are: compare [`Frontier::root`] with a root you trust (for
    /// example the persisted head's) if they come from storage that might be damaged.
    pub fn from_parts(size: u64, hashes: Vec<Hash>) -> Result<Self, FrontierError> {
        let expected = size.count_ones() as usize;
        if hashes.len() != expected {
            return Err(FrontierError::WrongHashCount {
                size,
                expected,
                actual: hashes.len(),
            });
        }
        Ok(Self { size, hashes })
    }

    /// Appends one leaf hash.
    pub fn push(&mut self, leaf_hash: Hash) -> Result<(), TreeFull> {
        self.push_with(leaf_hash, |_, _, _| {})
    }

    /// Appends one leaf hash and reports every perfect subtree this leaf completes, as
    /// `(level, index, hash)` in increasing level: first the leaf itself at `(0, old_size)`, then
    /// each merged parent. These are exactly the nodes a [`NodeStore`] must hold; a leaf completes
    /// `1 + trailing_ones(old_size)` of them, about 2 on average.
    ///
    /// Nothing is reported and nothing changes if the tree is full.
    pub fn push_with<F>(&mut self, leaf_hash: Hash, mut on_complete: F) -> Result<(), TreeFull>
    where
        F: FnMut(u32, u64, &Hash),
    {
        let old_size = self.size;
        let new_size = old_size.checked_add(1).ok_or(TreeFull)?;
        on_complete(0, old_size, &leaf_hash);
        let mut hash = leaf_hash;
        let mut level = 0u32;
        // Each set low bit of the old size is a finished sibling on our left: merge and carry.
        while (old_size >> level) & 1 == 1 {
            let Some(left) = self.hashes.pop() else {
                // Unreachable: the invariant hashes.len() == popcount(size) guarantees a sibling.
                break;
            };
            hash = node_hash(&left, &hash);
            level += 1;
            on_complete(level, old_size >> level, &hash);
        }
        self.hashes.push(hash);
        self.size = new_size;
        Ok(())
    }

    /// The current root: the perfect subtrees folded right to left, as MTH nests them.
    pub fn root(&self) -> Hash {
        let mut iter = self.hashes.iter().rev();
        let Some(last) = iter.next() else {
            return EMPTY_ROOT;
        };
        iter.fold(*last, |acc, left| node_hash(left, &acc))
    }

    /// Encoding for persisting next to the head: `size` as 8 bytes big-endian, then the hashes
    /// largest first, 32 bytes each (`8 + 32 * popcount(size)` bytes in all).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(8 + 32 * self.hashes.len());
        out.extend_from_slice(&self.size.to_be_bytes());
        for h in &self.hashes {
            out.extend_from_slice(h);
        }
        out
    }

    /// Decodes [`Frontier::to_bytes`], rejecting any length that does not fit the size exactly.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, FrontierError> {
        let Some((size_bytes, rest)) = bytes.split_first_chunk::<8>() else {
            return Err(FrontierError::Truncated { len: bytes.len() });
        };
        let size = u64::from_be_bytes(*size_bytes);
        let chunks = rest.chunks_exact(32);
        if !chunks.remainder().is_empty() {
            return Err(FrontierError::RaggedHashes {
                trailing: chunks.remainder().len(),
            });
        }
        let mut hashes = Vec::with_capacity(chunks.len());
        for chunk in chunks {
            let mut h = [0u8; 32];
            h.copy_from_slice(chunk);
            hashes.push(h);
        }
        Self::from_parts(size, hashes)
    }

    /// Rebuilds the frontier of a historical (or the current) size from stored perfect subtrees:
    /// `popcount(size)` lookups.
    pub fn from_store<S: NodeStore>(store: &S, size: u64) -> Result<Self, S::Error> {
        let mut hashes = Vec::with_capacity(size.count_ones() as usize);
        for_each_perfect(0, size, |level, index| {
            hashes.push(store.node(level, index)?);
            Ok(())
        })?;
        Ok(Self { size, hashes })
    }
}

// ---------------------------------------------------------------------------------------------
// Proof generation from stored perfect subtrees
// ---------------------------------------------------------------------------------------------

/// Read access to stored perfect-subtree hashes.
///
/// `node(level, index)` is the hash of the perfect subtree over leaves
/// `[index * 2^level, (index + 1) * 2^level)`; level 0 is the leaf hashes themselves. Such a node
/// never changes once complete, so one stored copy serves every later tree size. The functions
/// below only ask for nodes that are complete in the tree size they were given, so a store filled
/// up to that size is enough. A store should return an error, not a made-up hash, for a node it
/// does not have.
pub trait NodeStore {
    /// Why a lookup failed (missing node, I/O, ...).
    type Error;

    /// The hash of perfect subtree `(level, index)`.
    fn node(&self, level: u32, index: u64) -> Result<Hash, Self::Error>;
}

impl<S: NodeStore + ?Sized> NodeStore for &S {
    type Error = S::Error;

    fn node(&self, level: u32, index: u64) -> Result<Hash, Self::Error> {
        (**self).node(level, index)
    }
}

/// Why a proof or historical root could not be produced.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProofRequestError<E> {
    /// Inclusion asked for a leaf the tree does not have.
    #[error("leaf index {index} is not below tree size {size}")]
    IndexOutOfRange { index: u64, size: u64 },
    /// Consistency asked to go back in time.
    #[error("old tree size {old} is larger than new tree size {new}")]
    OldSizeGreater { old: u64, new: u64 },
    /// `[start, end)` is not a subtree: empty, or `start` not a multiple of the smallest power of
    /// two at least `end - start`.
    #[error("[{start}, {end}) is not an aligned subtree range")]
    NotASubtree { start: u64, end: u64 },
    /// The store could not produce a node.
    #[error("node store lookup failed: {0}")]
    Store(E),
}

/// Calls `f(level, index)` for each perfect subtree of the aligned range `[start, end)`, largest
/// (leftmost) first. The range must satisfy [`is_subtree`] or be empty.
fn for_each_perfect<E, F>(start: u64, end: u64, mut f: F) -> Result<(), E>
where
    F: FnMut(u32, u64) -> Result<(), E>,
{
    let len = end - start;
    let mut pos = start;
    // Because start is aligned to the range's bit_ceil, its perfect subtrees are the set bits of
    // the length, high to low, each starting at a multiple of its own size.
    for level in (0..64u32).rev() {
        if (len >> level) & 1 == 1 {
            f(level, pos >> level)?;
            pos += 1u64 << level;
        }
    }
    Ok(())
}

/// Whether `[start, end)` is a subtree that MTH recursion can reach: non-empty, and `start` a
/// multiple of the smallest power of two at least `end - start`. Every range in RFC 9162 proofs is
/// one of these, and its hash is the fold of at most 64 stored perfect subtrees.
pub fn is_subtree(start: u64, end: u64) -> bool {
    if start >= end {
        return false;
    }
    if start == 0 {
        return true;
    }
    let len = end - start;
    // bit_ceil(len) exceeds 2^63 only when len > 2^63, and then no non-zero start fits.
    match len.checked_next_power_of_two() {
        Some(bc) => start & (bc - 1) == 0,
        None => false,
    }
}

/// MTH of the leaves `[start, end)` of an aligned range (or `EMPTY_ROOT` when empty), folded from
/// `popcount(end - start)` stored perfect subtrees.
fn range_hash<S: NodeStore>(store: &S, start: u64, end: u64) -> Result<Hash, S::Error> {
    let mut parts = Vec::with_capacity((end - start).count_ones() as usize);
    for_each_perfect(start, end, |level, index| {
        parts.push(store.node(level, index)?);
        Ok(())
    })?;
    let mut iter = parts.iter().rev();
    let Some(last) = iter.next() else {
        return Ok(EMPTY_ROOT);
    };
    Ok(iter.fold(*last, |acc, left| node_hash(left, &acc)))
}

/// Hash of one perfect subtree `[start, start + len)`, `len` a power of two: one lookup.
fn perfect_hash<S: NodeStore>(store: &S, start: u64, len: u64) -> Result<Hash, S::Error> {
    let level = len.trailing_zeros();
    store.node(level, start >> level)
}

/// Root of the tree as it was at `size` leaves: `popcount(size)` lookups.
pub fn root_at<S: NodeStore>(store: &S, size: u64) -> Result<Hash, ProofRequestError<S::Error>> {
    range_hash(store, 0, size).map_err(ProofRequestError::Store)
}

/// MTH of the leaves `[start, end)` for an aligned subtree range (see [`is_subtree`]):
/// `popcount(end - start)` lookups. `root_at(store, n)` is `subtree_root(store, 0, n)` for `n > 0`.
pub fn subtree_root<S: NodeStore>(
    store: &S,
    start: u64,
    end: u64,
) -> Result<Hash, ProofRequestError<S::Error>> {
    if !is_subtree(start, end) {
        return Err(ProofRequestError::NotASubtree { start, end });
    }
    range_hash(store, start, end).map_err(ProofRequestError::Store)
}

/// Inclusion proof (audit path) for leaf `index` in the tree of `size` leaves, RFC 9162 §2.1.3.1
/// `PATH(m, D[n])`, ordered from the leaf's sibling up to the root's child.
///
/// Cost: only one sibling on the path can be a non-perfect subtree (the right part where the path
/// first turns left; below that turn every subtree is perfect), so the proof takes at most
/// `ceil(log2 size) + popcount(size)` lookups, O(log n), not O(log² n).
pub fn inclusion_proof<S: NodeStore>(
    store: &S,
    index: u64,
    size: u64,
) -> Result<Vec<Hash>, ProofRequestError<S::Error>> {
    let expected = inclusion_proof_len(index, size)
        .ok_or(ProofRequestError::IndexOutOfRange { index, size })?;
    let mut path = Vec::with_capacity(expected);
    let (mut start, mut end) = (0u64, size);
    // Walk down from the root; siblings come out root-first, so reverse at the end.
    while end - start > 1 {
        let k = split_point(end - start);
        let mid = start + k;
        let sibling = if index < mid {
            let h = range_hash(store, mid, end);
            end = mid;
            h
        } else {
            let h = perfect_hash(store, start, k);
            start = mid;
            h
        };
        path.push(sibling.map_err(ProofRequestError::Store)?);
    }
    path.reverse();
    Ok(path)
}

/// Consistency proof from the tree of `old_size` leaves to the tree of `new_size` leaves, RFC 9162
/// §2.1.4.1 `PROOF(m, D[n])`, ordered from the bottom up as the RFC's `SUBPROOF` emits it.
///
/// Empty when `old_size == new_size` or `old_size == 0` (every tree extends the empty tree).
/// Cost as for [`inclusion_proof`]: at most one non-perfect subtree hash, so
/// `ceil(log2 new_size) + popcount(new_size) + 1` lookups at most.
pub fn consistency_proof<S: NodeStore>(
    store: &S,
    old_size: u64,
    new_size: u64,
) -> Result<Vec<Hash>, ProofRequestError<S::Error>> {
    let expected =
        consistency_proof_len(old_size, new_size).ok_or(ProofRequestError::OldSizeGreater {
            old: old_size,
            new: new_size,
        })?;
    let mut proof = Vec::with_capacity(expected);
    if old_size == 0 || old_size == new_size {
        return Ok(proof);
    }
    let m = old_size;
    let (mut start, mut end) = (0u64, new_size);
    // `whole_old_root`: the current subtree still starts at leaf 0, so when the old tree is
    // exactly this subtree the verifier already knows its hash (the old root) and it is omitted.
    let mut whole_old_root = true;
    loop {
        if m == end {
            if !whole_old_root {
                // [start, end) is perfect here: `end` only moves to a left half, which is perfect.
                let h = range_hash(store, start, end).map_err(ProofRequestError::Store)?;
                proof.push(h);
            }
            break;
        }
        let k = split_point(end - start);
        let mid = start + k;
        let h = if m <= mid {
            let h = range_hash(store, mid, end);
            end = mid;
            h
        } else {
            let h = perfect_hash(store, start, k);
            start = mid;
            whole_old_root = false;
            h
        };
        proof.push(h.map_err(ProofRequestError::Store)?);
    }
    proof.reverse();
    Ok(proof)
}

// ---------------------------------------------------------------------------------------------
// Verification (trusts nothing but its arguments)
// ---------------------------------------------------------------------------------------------

/// Why a proof did not verify. Every variant means "do not believe the claim".
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ProofError {
    /// The leaf index is not below the tree size (RFC 9162 §2.1.3.2 step 1).
    #[error("leaf index {index} is not below tree size {size}")]
    IndexOutOfRange { index: u64, size: u64 },
    /// Consistency from a larger tree to a smaller one.
    #[error("old tree size {old} is larger than new tree size {new}")]
    OldSizeGreater { old: u64, new: u64 },
    /// The proof has the wrong number of hashes for these sizes (too short, too long, or for
    /// another shape of tree). Checked before any hashing.
    #[error("proof has {actual} hashes, sizes require {expected}")]
    WrongProofLength { expected: usize, actual: usize },
    /// Inclusion: the root recomputed from leaf and path differs from the given root.
    #[error("inclusion proof leads to a different root")]
    RootMismatch,
    /// Consistency: the old root recomputed from the proof differs from the given old root (for
    /// example the old root belongs to another history: a fork).
    #[error("consistency proof leads to a different old root")]
    OldRootMismatch,
    /// Consistency: the new root recomputed from the proof differs from the given new root.
    #[error("consistency proof leads to a different new root")]
    NewRootMismatch,
    /// Consistency between equal sizes with different roots: two histories of the same length.
    #[error("two different roots for the same tree size {size}")]
    RootsDifferAtSameSize { size: u64 },
}

/// Number of hashes in the inclusion proof of `index` in a tree of `size`, or `None` if
/// `index >= size`. A function of the sizes alone, so verifiers can reject bad lengths up front.
pub fn inclusion_proof_len(index: u64, size: u64) -> Option<usize> {
    if index >= size {
        return None;
    }
    // Levels where the paths to `index` and to the last leaf still differ take one sibling each;
    // above them, each set bit of the shifted index is one left sibling on the right border.
    let inner = 64 - (index ^ (size - 1)).leading_zeros();
    // `checked_shr`: `inner` can be 64 for sizes above 2^63, where `>>` would overflow.
    let border = index.checked_shr(inner).unwrap_or(0).count_ones();
    Some((inner + border) as usize)
}

/// Number of hashes in the consistency proof from `old_size` to `new_size`, or `None` if
/// `old_size > new_size`.
pub fn consistency_proof_len(old_size: u64, new_size: u64) -> Option<usize> {
    if old_size > new_size {
        return None;
    }
    if old_size == 0 || old_size == new_size {
        return Some(0);
    }
    // Like an inclusion path of the old tree's last leaf, minus the levels inside the perfect
    // subtree that ends the old tree, plus that subtree's own hash unless it is the whole old tree.
    let inner = 64 - ((old_size - 1) ^ (new_size - 1)).leading_zeros();
    let border = (old_size - 1).checked_shr(inner).unwrap_or(0).count_ones();
    let shift = old_size.trailing_zeros();
    let seed = u32::from(!old_size.is_power_of_two());
    Some((inner - shift + border + seed) as usize)
}

/// Recomputes the root from a leaf hash and its inclusion proof, RFC 9162 §2.1.3.2 steps 1–4 plus
/// the `sn == 0` check of step 5. The caller compares the result with a root it trusts.
pub fn root_from_inclusion_proof(
    leaf_hash: &Hash,
    index: u64,
    size: u64,
    proof: &[Hash],
) -> Result<Hash, ProofError> {
    // Step 1.
    let expected =
        inclusion_proof_len(index, size).ok_or(ProofError::IndexOutOfRange { index, size })?;
    if proof.len() != expected {
        return Err(ProofError::WrongProofLength {
            expected,
            actual: proof.len(),
        });
    }
    // Steps 2–3.
    let mut fnode = index;
    let mut snode = size - 1;
    let mut r = *leaf_hash;
    // Step 4.
    for p in proof {
        if snode == 0 {
            // Unreachable after the length check; kept because the RFC makes it a failure.
            return Err(ProofError::WrongProofLength {
                expected,
                actual: proof.len(),
            });
        }
        if fnode & 1 == 1 || fnode == snode {
            r = node_hash(p, &r);
            if fnode & 1 == 0 {
                while fnode & 1 == 0 && fnode != 0 {
                    fnode >>= 1;
                    snode >>= 1;
                }
            }
        } else {
            r = node_hash(&r, p);
        }
        fnode >>= 1;
        snode >>= 1;
    }
    // Step 5, first half.
    if snode != 0 {
        return Err(ProofError::WrongProofLength {
            expected,
            actual: proof.len(),
        });
    }
    Ok(r)
}

/// Verifies that `leaf_hash` is leaf `index` of the tree of `size` leaves whose root is `root`,
/// RFC 9162 §2.1.3.2.
///
/// The proof binds the leaf to the root, not the size to the root: a proof for size `n` can also
/// pass for another size whose path has the same shape. The size must come from the same
/// authenticated head as the root.
pub fn verify_inclusion(
    leaf_hash: &Hash,
    index: u64,
    size: u64,
    proof: &[Hash],
    root: &Hash,
) -> Result<(), ProofError> {
    let computed = root_from_inclusion_proof(leaf_hash, index, size, proof)?;
    if computed != *root {
        return Err(ProofError::RootMismatch);
    }
    Ok(())
}

/// Verifies that the tree of `new_size` leaves with root `new_root` extends the tree of
/// `old_size` leaves with root `old_root`, RFC 9162 §2.1.4.2.
///
/// The RFC algorithm covers `0 < old_size < new_size`; the edges are decided here as:
/// - `old_size > new_size`: [`ProofError::OldSizeGreater`].
/// - `old_size == new_size`: the proof must be empty and the roots equal.
/// - `old_size == 0`: the proof must be empty and `old_root` must be [`EMPTY_ROOT`] (stricter
///   than implementations that ignore the old root here).
pub fn verify_consistency(
    old_size: u64,
    new_size: u64,
    old_root: &Hash,
    new_root: &Hash,
    proof: &[Hash],
) -> Result<(), ProofError> {
    let expected = consistency_proof_len(old_size, new_size).ok_or(ProofError::OldSizeGreater {
        old: old_size,
        new: new_size,
    })?;
    if proof.len() != expected {
        return Err(ProofError::WrongProofLength {
            expected,
            actual: proof.len(),
        });
    }
    if old_size == new_size {
        if old_root != new_root {
            return Err(ProofError::RootsDifferAtSameSize { size: old_size });
        }
        if old_size == 0 && *old_root != EMPTY_ROOT {
            return Err(ProofError::OldRootMismatch);
        }
        return Ok(());
    }
    if old_size == 0 {
        if *old_root != EMPTY_ROOT {
            return Err(ProofError::OldRootMismatch);
        }
        return Ok(());
    }
    let wrong_length = ProofError::WrongProofLength {
        expected,
        actual: proof.len(),
    };
    // Step 1: an empty path fails (cannot happen here: expected > 0 for 0 < old < new).
    let Some((first, rest)) = proof.split_first() else {
        return Err(wrong_length);
    };
    // Step 2: if the old size is a power of two, the old root is itself the first path element.
    let (seed, rest) = if old_size.is_power_of_two() {
        (*old_root, proof)
    } else {
        (*first, rest)
    };
    // Step 3.
    let mut fnode = old_size - 1;
    let mut snode = new_size - 1;
    // Step 4: skip the levels inside the perfect subtree that ends the old tree.
    while fnode & 1 == 1 {
        fnode >>= 1;
        snode >>= 1;
    }
    // Step 5.
    let mut fr = seed;
    let mut sr = seed;
    // Step 6.
    for c in rest {
        if snode == 0 {
            return Err(wrong_length);
        }
        if fnode & 1 == 1 || fnode == snode {
            fr = node_hash(c, &fr);
            sr = node_hash(c, &sr);
            if fnode & 1 == 0 {
                while fnode & 1 == 0 && fnode != 0 {
                    fnode >>= 1;
                    snode >>= 1;
                }
            }
        } else {
            sr = node_hash(&sr, c);
        }
        fnode >>= 1;
        snode >>= 1;
    }
    // Step 7.
    if snode != 0 {
        return Err(wrong_length);
    }
    if fr != *old_root {
        return Err(ProofError::OldRootMismatch);
    }
    if sr != *new_root {
        return Err(ProofError::NewRootMismatch);
    }
    Ok(())
}
