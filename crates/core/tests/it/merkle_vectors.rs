//! Known-answer and property tests for `claims_ledger_core::merkle` (RFC 6962 / RFC 9162 trees).
//!
//! Published vectors (data only, hex copied; no code copied):
//! - transparency-dev/merkle `testonly/constants.go`: the eight reference leaf inputs, every
//!   perfect-subtree hash of the 8-leaf tree, the roots of sizes 0..=8 and the compact ranges.
//!   The same inputs and roots appear in google/certificate-transparency
//!   `cpp/merkletree/merkle_tree_test.cc` (`kInputs`, `kSHA256Roots`).
//! - transparency-dev/merkle `proof/verify_test.go`: inclusion and consistency proofs with hashes,
//!   and the probes that must be rejected (`corruptInclusionProof`, `corruptConsistencyProof`,
//!   `TestVerifyConsistency`). The same paths are `kSHA256Paths` / `kSHA256Proofs` in the C++ file.
//! - transparency-dev/merkle `rfc6962/rfc6962_test.go`: empty root and leaf hash vectors.
//! - transparency-dev/merkle `proof/proof_test.go`: which stored nodes make up inclusion and
//!   consistency proofs for sizes up to 95 (node IDs plus "rehash" ranges).
//! - transparency-dev/merkle `testonly/vectors_test.go`: rolling SHA-256 digests over all subtree
//!   hashes and subtree inclusion proofs for trees up to 130 leaves, from the "Subtree Test
//!   Vectors" appendix of draft-ietf-plants-merkle-tree-certs.

use std::cell::RefCell;
use std::collections::HashMap;

use claims_ledger_core::merkle::{
    self, consistency_proof, consistency_proof_len, inclusion_proof, inclusion_proof_len,
    leaf_hash, node_hash, root, root_at, subtree_root, verify_consistency, verify_inclusion,
    Frontier, FrontierError, Hash, NodeStore, ProofError, ProofRequestError, TreeFull, EMPTY_ROOT,
};
use proptest::prelude::*;
use sha2::{Digest, Sha256};

fn h32(s: &str) -> Hash {
    let bytes = hex::decode(s).expect("valid hex in test vector");
    bytes.try_into().expect("32-byte hash in test vector")
}

// ---------------------------------------------------------------------------------------------
// Published data
// ---------------------------------------------------------------------------------------------

/// transparency-dev/merkle testonly/constants.go `LeafInputs()` (= CT C++ `kInputs`).
const INPUTS: [&str; 8] = [
    "",
    "00",
    "10",
    "2021",
    "3031",
    "40414243",
    "5051525354555657",
    "606162636465666768696a6b6c6d6e6f",
];

/// transparency-dev/merkle testonly/constants.go `NodeHashes()`: `[level][index]`.
const NODE_HASHES: [&[&str]; 4] = [
    &[
        "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
        "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
        "0298d122906dcfc10892cb53a73992fc5b9f493ea4c9badb27b791b4127a7fe7",
        "07506a85fd9dd2f120eb694f86011e5bb4662e5c415a62917033d4a9624487e7",
        "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
        "4271a26be0d8a84f0bd54c8c302e7cb3a3b5d1fa6780a40bcce2873477dab658",
        "b08693ec2e721597130641e8211e7eedccb4c26413963eee6c1e2ed16ffb1a5f",
        "46f6ffadd3d06a09ff3c5860d2755c8b9819db7df44251788c7d8e3180de8eb1",
    ],
    &[
        "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
        "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
        "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
        "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
    ],
    &[
        "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
    ],
    &["5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328"],
];

/// transparency-dev/merkle testonly/constants.go `RootHashes()`, sizes 0..=8
/// (= CT C++ `kSHA256EmptyTreeHash` + `kSHA256Roots`).
const ROOTS: [&str; 9] = [
    "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
    "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
    "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
    "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
];

/// transparency-dev/merkle testonly/constants.go `CompactTrees()`: the frontier of each size
/// 0..=8 as `(level, index)` into `NODE_HASHES`, largest first.
const COMPACT_TREES: [&[(usize, usize)]; 9] = [
    &[],
    &[(0, 0)],
    &[(1, 0)],
    &[(1, 0), (0, 2)],
    &[(2, 0)],
    &[(2, 0), (0, 4)],
    &[(2, 0), (1, 2)],
    &[(2, 0), (1, 2), (0, 6)],
    &[(3, 0)],
];

/// transparency-dev/merkle proof/verify_test.go `inclusionProofs` (= CT C++ `kSHA256Paths`).
/// The source numbers leaves from 1; converted here to 0-based `(index, size, path)`.
/// The source's first entry `{0, 0, nil}` is an invalid request and is tested separately.
const INCLUSION_VECTORS: &[(u64, u64, &[&str])] = &[
    (0, 1, &[]),
    (
        0,
        8,
        &[
            "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
        ],
    ),
    (
        5,
        8,
        &[
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        ],
    ),
    (
        2,
        3,
        &["fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125"],
    ),
    (
        1,
        5,
        &[
            "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
        ],
    ),
];

/// transparency-dev/merkle proof/verify_test.go `consistencyProofs` (the first four are also
/// CT C++ `kSHA256Proofs`): `(old_size, new_size, proof)`.
const CONSISTENCY_VECTORS: &[(u64, u64, &[&str])] = &[
    (1, 1, &[]),
    (
        1,
        8,
        &[
            "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
        ],
    ),
    (
        6,
        8,
        &[
            "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        ],
    ),
    (
        2,
        5,
        &[
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
        ],
    ),
    (
        6,
        7,
        &[
            "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
            "b08693ec2e721597130641e8211e7eedccb4c26413963eee6c1e2ed16ffb1a5f",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        ],
    ),
];

/// transparency-dev/merkle proof/verify_test.go `sha256SomeHash`: an arbitrary non-root hash.
const SOME_HASH: &str = "abacaba000000000000000000000000000000000000000000060061e00123456";

/// A verification call: `(index or old size, size or new size, leaf or old root, root or new
/// root, proof)`.
type Probe = (u64, u64, Hash, Hash, Vec<Hash>);

/// A [`Probe`] with the result it must give.
type Case = (u64, u64, Hash, Hash, Vec<Hash>, Result<(), ProofError>);

/// A node ID list plus an optional "rehash" range, as in transparency-dev/merkle proof/proof.go:
/// hashes in `[begin, end)` fold into one, each later one as the left child of the running hash.
type NodeShape = (&'static [(u32, u64)], Option<(usize, usize)>);

/// transparency-dev/merkle proof/proof_test.go `TestInclusion`: `(size, index, nodes)`.
const INCLUSION_NODE_VECTORS: &[(u64, u64, NodeShape)] = &[
    (1, 0, (&[], None)),
    (2, 0, (&[(0, 1)], None)),
    (2, 1, (&[(0, 0)], None)),
    (3, 1, (&[(0, 0), (0, 2)], None)),
    (7, 0, (&[(0, 1), (1, 1), (0, 6), (1, 2)], Some((2, 4)))),
    (7, 1, (&[(0, 0), (1, 1), (0, 6), (1, 2)], Some((2, 4)))),
    (7, 2, (&[(0, 3), (1, 0), (0, 6), (1, 2)], Some((2, 4)))),
    (7, 3, (&[(0, 2), (1, 0), (0, 6), (1, 2)], Some((2, 4)))),
    (7, 4, (&[(0, 5), (0, 6), (2, 0)], None)),
    (7, 5, (&[(0, 4), (0, 6), (2, 0)], None)),
    (7, 6, (&[(1, 2), (2, 0)], None)),
    (4, 2, (&[(0, 3), (1, 0)], None)),
    (5, 3, (&[(0, 2), (1, 0), (0, 4)], None)),
    (6, 3, (&[(0, 2), (1, 0), (1, 2)], None)),
    (6, 4, (&[(0, 5), (2, 0)], None)),
    (
        15,
        10,
        (&[(0, 11), (1, 4), (0, 14), (1, 6), (3, 0)], Some((2, 4))),
    ),
    (
        31,
        24,
        (
            &[(0, 25), (1, 13), (0, 30), (1, 14), (3, 2), (4, 0)],
            Some((2, 4)),
        ),
    ),
    (
        95,
        81,
        (
            &[
                (0, 80),
                (1, 41),
                (2, 21),
                (0, 94),
                (1, 46),
                (2, 22),
                (4, 4),
                (6, 0),
            ],
            Some((3, 6)),
        ),
    ),
];

/// transparency-dev/merkle proof/proof_test.go `TestInclusion` error cases: `(size, index)`.
const INCLUSION_NODE_ERRORS: &[(u64, u64)] = &[(0, 0), (0, 1), (1, 2), (0, 3), (7, 8)];

/// transparency-dev/merkle proof/proof_test.go `TestConsistency`: `(size1, size2, nodes)`.
const CONSISTENCY_NODE_VECTORS: &[(u64, u64, NodeShape)] = &[
    (1, 2, (&[(0, 1)], None)),
    (1, 4, (&[(0, 1), (1, 1)], None)),
    (1, 6, (&[(0, 1), (1, 1), (1, 2)], None)),
    (2, 3, (&[(0, 2)], None)),
    (2, 8, (&[(1, 1), (2, 1)], None)),
    (
        3,
        7,
        (&[(0, 2), (0, 3), (1, 0), (0, 6), (1, 2)], Some((3, 5))),
    ),
    (4, 7, (&[(0, 6), (1, 2)], Some((0, 2)))),
    (5, 7, (&[(0, 4), (0, 5), (0, 6), (2, 0)], None)),
    (6, 7, (&[(1, 2), (0, 6), (2, 0)], None)),
    (7, 8, (&[(0, 6), (0, 7), (1, 2), (2, 0)], None)),
    (1, 1, (&[], None)),
    (2, 2, (&[], None)),
    (3, 3, (&[], None)),
    (4, 4, (&[], None)),
    (5, 5, (&[], None)),
    (7, 7, (&[], None)),
    (8, 8, (&[], None)),
    (2, 4, (&[(1, 1)], None)),
    (3, 5, (&[(0, 2), (0, 3), (1, 0), (0, 4)], None)),
    (3, 6, (&[(0, 2), (0, 3), (1, 0), (1, 2)], None)),
    (4, 6, (&[(1, 2)], None)),
    (1, 7, (&[(0, 1), (1, 1), (0, 6), (1, 2)], Some((2, 4)))),
    (
        10,
        15,
        (&[(1, 4), (1, 5), (0, 14), (1, 6), (3, 0)], Some((2, 4))),
    ),
    (
        24,
        31,
        (&[(3, 2), (0, 30), (1, 14), (2, 6), (4, 0)], Some((1, 4))),
    ),
    (
        81,
        95,
        (
            &[
                (0, 80),
                (0, 81),
                (1, 41),
                (2, 21),
                (0, 94),
                (1, 46),
                (2, 22),
                (4, 4),
                (6, 0),
            ],
            Some((4, 7)),
        ),
    ),
];

/// transparency-dev/merkle proof/proof_test.go `TestConsistency` error cases: `(size1, size2)`.
const CONSISTENCY_NODE_ERRORS: &[(u64, u64)] = &[(5, 0), (9, 8)];

/// transparency-dev/merkle testonly/vectors_test.go (from draft-ietf-plants-merkle-tree-certs,
/// "Subtree Test Vectors"): leaves `d[i] = [i]` for `i < 130`.
const SUBTREE_VECTOR_MAX: u64 = 130;
const SUBTREE_HASH_DIGEST: &str =
    "94a95384a8c69acea9b50d035a58285b3a777cb7a724005faa5e1f1e1190007f";
const SUBTREE_INCLUSION_DIGEST: &str =
    "ac2a8f989e44d99e399db448050ff5f19757df53cfb716aa81015d3955d8163f";

// ---------------------------------------------------------------------------------------------
// In-memory node store, filled by an appender
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, PartialEq, Eq)]
enum StoreError {
    Missing {
        level: u32,
        index: u64,
    },
    /// The node exists in the store but is not complete at the size this view stands for.
    Future {
        level: u32,
        index: u64,
        size: u64,
    },
}

#[derive(Debug, Default)]
struct MemStore {
    nodes: HashMap<(u32, u64), Hash>,
}

impl NodeStore for MemStore {
    type Error = StoreError;
    fn node(&self, level: u32, index: u64) -> Result<Hash, StoreError> {
        self.nodes
            .get(&(level, index))
            .copied()
            .ok_or(StoreError::Missing { level, index })
    }
}

/// A writer: keeps the frontier and records each perfect subtree as it completes.
#[derive(Debug, Default)]
struct Appender {
    frontier: Frontier,
    store: MemStore,
    leaves: Vec<Hash>,
}

impl Appender {
    fn from_leaves(leaves: &[Hash]) -> Self {
        let mut a = Self::default();
        for l in leaves {
            a.push(*l);
        }
        a
    }

    fn push(&mut self, leaf: Hash) {
        let nodes = &mut self.store.nodes;
        self.frontier
            .push_with(leaf, |level, index, hash| {
                let previous = nodes.insert((level, index), *hash);
                assert!(
                    previous.is_none(),
                    "node ({level}, {index}) completed twice"
                );
            })
            .expect("tree not full");
        self.leaves.push(leaf);
    }

    /// The store as it looked when the tree had `size` leaves: later nodes are refused, so a
    /// proof for an old size cannot lean on anything appended after it.
    fn at(&self, size: u64) -> AtSize<'_> {
        AtSize {
            store: &self.store,
            size,
        }
    }
}

struct AtSize<'a> {
    store: &'a MemStore,
    size: u64,
}

impl NodeStore for AtSize<'_> {
    type Error = StoreError;
    fn node(&self, level: u32, index: u64) -> Result<Hash, StoreError> {
        let end = (u128::from(index) + 1) << level;
        if end > u128::from(self.size) {
            return Err(StoreError::Future {
                level,
                index,
                size: self.size,
            });
        }
        self.store.node(level, index)
    }
}

/// Counts lookups, to hold proof generation to its documented cost.
struct Counting<S> {
    inner: S,
    lookups: std::cell::Cell<u64>,
}

impl<S: NodeStore> NodeStore for Counting<S> {
    type Error = S::Error;
    fn node(&self, level: u32, index: u64) -> Result<Hash, S::Error> {
        self.lookups.set(self.lookups.get() + 1);
        self.inner.node(level, index)
    }
}

fn ceil_log2(n: u64) -> u64 {
    u64::from(64 - n.saturating_sub(1).leading_zeros())
}

/// The subtree `[start, ..)` of a store seen as a tree of its own (start aligned).
struct Shifted<'a> {
    store: &'a MemStore,
    start: u64,
}

impl NodeStore for Shifted<'_> {
    type Error = StoreError;
    fn node(&self, level: u32, index: u64) -> Result<Hash, StoreError> {
        self.store.node(level, index + (self.start >> level))
    }
}

// ---------------------------------------------------------------------------------------------
// Independent references, written straight from the RFC 9162 recursive definitions
// ---------------------------------------------------------------------------------------------

fn largest_pow2_below(n: usize) -> usize {
    let mut k = 1;
    while k * 2 < n {
        k *= 2;
    }
    k
}

/// The recursive definitions of RFC 9162 §2.1.1, §2.1.3.1 and §2.1.4.1 over a list of leaf
/// hashes, built from `node_hash` alone. `MTH` of each range is memoized so that checking every
/// proof of a 300-leaf tree stays fast in debug builds; the recursion itself is the RFC's.
struct Reference<'a> {
    d: &'a [Hash],
    memo: RefCell<HashMap<(usize, usize), Hash>>,
}

impl<'a> Reference<'a> {
    fn new(d: &'a [Hash]) -> Self {
        Self {
            d,
            memo: RefCell::new(HashMap::new()),
        }
    }

    /// `MTH(D[a:b])`.
    fn mth(&self, a: usize, b: usize) -> Hash {
        match b - a {
            0 => return EMPTY_ROOT,
            1 => return self.d[a],
            _ => {}
        }
        if let Some(h) = self.memo.borrow().get(&(a, b)) {
            return *h;
        }
        let k = largest_pow2_below(b - a);
        let h = node_hash(&self.mth(a, a + k), &self.mth(a + k, b));
        self.memo.borrow_mut().insert((a, b), h);
        h
    }

    /// `PATH(m, D[a:b])`, `m` relative to `a`.
    fn path(&self, m: usize, a: usize, b: usize) -> Vec<Hash> {
        let n = b - a;
        if n <= 1 {
            return vec![];
        }
        let k = largest_pow2_below(n);
        if m < k {
            let mut p = self.path(m, a, a + k);
            p.push(self.mth(a + k, b));
            p
        } else {
            let mut p = self.path(m - k, a + k, b);
            p.push(self.mth(a, a + k));
            p
        }
    }

    /// `SUBPROOF(m, D[a:b], flag)`, `m` relative to `a`.
    fn subproof(&self, m: usize, a: usize, b: usize, flag: bool) -> Vec<Hash> {
        let n = b - a;
        if m == n {
            return if flag { vec![] } else { vec![self.mth(a, b)] };
        }
        let k = largest_pow2_below(n);
        if m <= k {
            let mut p = self.subproof(m, a, a + k, flag);
            p.push(self.mth(a + k, b));
            p
        } else {
            let mut p = self.subproof(m - k, a + k, b, false);
            p.push(self.mth(a, a + k));
            p
        }
    }

    /// Inclusion proof of leaf `m` in the tree of the first `n` leaves.
    fn inclusion(&self, m: u64, n: u64) -> Vec<Hash> {
        self.path(m as usize, 0, n as usize)
    }

    /// `PROOF(m, D[n])`; empty for `m == 0` and `m == n`.
    fn consistency(&self, m: u64, n: u64) -> Vec<Hash> {
        if m == 0 || m == n {
            return vec![];
        }
        self.subproof(m as usize, 0, n as usize, true)
    }

    fn root(&self, n: u64) -> Hash {
        self.mth(0, n as usize)
    }
}

/// The sequence of combining steps the RFC 9162 §2.1.3.2 verifier performs for `(index, size)`
/// (`true`: the proof hash goes on the left), run without hashing until `sn` reaches 0. Two claims
/// with equal shapes hash the same proof identically, so the verifier cannot tell them apart.
fn inclusion_shape(index: u64, size: u64) -> Option<Vec<bool>> {
    if index >= size {
        return None;
    }
    let (mut fnode, mut snode) = (index, size - 1);
    let mut shape = vec![];
    while snode != 0 {
        let left = fnode & 1 == 1 || fnode == snode;
        if left && fnode & 1 == 0 {
            while fnode & 1 == 0 && fnode != 0 {
                fnode >>= 1;
                snode >>= 1;
            }
        }
        shape.push(left);
        fnode >>= 1;
        snode >>= 1;
    }
    Some(shape)
}

/// Like [`inclusion_shape`] for RFC 9162 §2.1.4.2 with `0 < old < new`: whether the old root is
/// the seed, then per proof hash whether it updates both roots (`true`) or only the new one.
fn consistency_shape(old: u64, new: u64) -> Option<(bool, Vec<bool>)> {
    if old == 0 || old >= new {
        return None;
    }
    let (mut fnode, mut snode) = (old - 1, new - 1);
    while fnode & 1 == 1 {
        fnode >>= 1;
        snode >>= 1;
    }
    let mut ops = vec![];
    while snode != 0 {
        let both = fnode & 1 == 1 || fnode == snode;
        if both && fnode & 1 == 0 {
            while fnode & 1 == 0 && fnode != 0 {
                fnode >>= 1;
                snode >>= 1;
            }
        }
        ops.push(both);
        fnode >>= 1;
        snode >>= 1;
    }
    Some((old.is_power_of_two(), ops))
}

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

fn reference_leaves() -> Vec<Hash> {
    INPUTS
        .iter()
        .map(|s| leaf_hash(&hex::decode(s).expect("hex")))
        .collect()
}

fn hexes(v: &[&str]) -> Vec<Hash> {
    v.iter().map(|s| h32(s)).collect()
}

/// Leaves that depend on a seed, so different seeds give different trees.
fn seeded_leaves(seed: u64, n: usize) -> Vec<Hash> {
    (0..n as u64)
        .map(|i| {
            let mut data = seed.to_be_bytes().to_vec();
            data.extend_from_slice(&i.to_be_bytes());
            leaf_hash(&data)
        })
        .collect()
}

fn flip(h: &Hash, byte: usize) -> Hash {
    let mut h = *h;
    h[byte % 32] ^= 0x10;
    h
}

/// Hash of stored node `(level, index)` computed from the leaves alone.
fn node_from_leaves(leaves: &[Hash], level: u32, index: u64) -> Hash {
    let start = (index << level) as usize;
    let end = ((index + 1) << level) as usize;
    root(&leaves[start..end])
}

/// Expands a proof/proof.go node list into hashes, folding the rehash range.
fn expand_shape(leaves: &[Hash], shape: &NodeShape) -> Vec<Hash> {
    let (ids, rehash) = shape;
    let hashes: Vec<Hash> = ids
        .iter()
        .map(|&(l, i)| node_from_leaves(leaves, l, i))
        .collect();
    let Some((begin, end)) = *rehash else {
        return hashes;
    };
    let mut out = hashes[..begin].to_vec();
    let mut acc = hashes[begin];
    for h in &hashes[begin + 1..end] {
        acc = node_hash(h, &acc);
    }
    out.push(acc);
    out.extend_from_slice(&hashes[end..]);
    out
}

/// All the tamperings of a proof that change only the proof: each element with a flipped byte,
/// the last element dropped, an element appended (garbage and root), an element prepended, and
/// each pair of adjacent distinct elements swapped. Every one must be rejected.
fn tampered_proofs(proof: &[Hash], root_hash: &Hash) -> Vec<(String, Vec<Hash>)> {
    let mut out = vec![];
    for i in 0..proof.len() {
        let mut p = proof.to_vec();
        p[i] = flip(&p[i], i * 7);
        out.push((format!("flipped byte in element {i}"), p));
    }
    if let Some((_, init)) = proof.split_last() {
        out.push(("last element removed".into(), init.to_vec()));
        out.push(("first element removed".into(), proof[1..].to_vec()));
    }
    for (what, extra) in [("zero hash", [0u8; 32]), ("root", *root_hash)] {
        let mut p = proof.to_vec();
        p.push(extra);
        out.push((format!("trailing {what}"), p));
        let mut p = vec![extra];
        p.extend_from_slice(proof);
        out.push((format!("preceding {what}"), p));
    }
    if let Some(first) = proof.first() {
        let mut p = vec![*first];
        p.extend_from_slice(proof);
        out.push(("first element duplicated".into(), p));
    }
    for i in 1..proof.len() {
        if proof[i - 1] != proof[i] {
            let mut p = proof.to_vec();
            p.swap(i - 1, i);
            out.push((format!("elements {} and {i} swapped", i - 1), p));
        }
    }
    out
}

/// Checks one honest inclusion proof: it verifies, and every tampering is refused, except a
/// changed index or size whose verifier shape is identical (the size is authenticated by the
/// signed head, not by the proof; see `size_is_bound_by_the_head_not_the_proof`).
fn check_inclusion(leaves: &[Hash], index: u64, size: u64, proof: &[Hash], root_hash: &Hash) {
    let leaf = leaves[index as usize];
    assert_eq!(
        verify_inclusion(&leaf, index, size, proof, root_hash),
        Ok(()),
        "honest proof ({index}, {size})"
    );
    assert_eq!(inclusion_proof_len(index, size), Some(proof.len()));
    for (what, bad) in tampered_proofs(proof, root_hash) {
        assert!(
            verify_inclusion(&leaf, index, size, &bad, root_hash).is_err(),
            "({index}, {size}): accepted proof with {what}"
        );
    }
    // Wrong leaf: another leaf of the tree, and a hash that is no leaf at all.
    let other = leaves[((index + 1) % size) as usize];
    if other != leaf {
        assert_eq!(
            verify_inclusion(&other, index, size, proof, root_hash),
            Err(ProofError::RootMismatch)
        );
    }
    assert_eq!(
        verify_inclusion(&flip(&leaf, 3), index, size, proof, root_hash),
        Err(ProofError::RootMismatch)
    );
    // Wrong root.
    for bad_root in [flip(root_hash, 0), EMPTY_ROOT, h32(SOME_HASH)] {
        assert_eq!(
            verify_inclusion(&leaf, index, size, proof, &bad_root),
            Err(ProofError::RootMismatch)
        );
    }
    // Wrong index or size.
    let honest = inclusion_shape(index, size);
    let claims = [
        (index.wrapping_sub(1), size),
        (index + 1, size),
        (index ^ 2, size),
        (index, size - 1),
        (index, size + 1),
        (index, size * 2),
        (index, size / 2),
    ];
    for (i, s) in claims {
        let got = verify_inclusion(&leaf, i, s, proof, root_hash);
        if inclusion_shape(i, s) == honest {
            assert_eq!(got, Ok(()), "same-shape claim ({i}, {s})");
        } else {
            assert!(got.is_err(), "({index}, {size}) accepted as ({i}, {s})");
        }
    }
}

/// Roots of every prefix of a tree and of two forks of it, computed incrementally once so that
/// checking all `(old, new)` pairs stays cheap.
struct Roots {
    /// `prefix[n]`: root of the first `n` leaves.
    prefix: Vec<Hash>,
    /// `fork_first[n]`: root of the first `n` leaves with leaf 0 altered.
    fork_first: Vec<Hash>,
    /// `fork_last[n]`: root of the first `n` leaves with leaf `n - 1` altered.
    fork_last: Vec<Hash>,
}

impl Roots {
    fn new(leaves: &[Hash]) -> Self {
        let mut f = Frontier::new();
        let mut g = Frontier::new();
        let (mut prefix, mut fork_first, mut fork_last) =
            (vec![EMPTY_ROOT], vec![EMPTY_ROOT], vec![EMPTY_ROOT]);
        for (i, l) in leaves.iter().enumerate() {
            let mut h = f.clone();
            h.push(flip(l, 9)).expect("not full");
            fork_last.push(h.root());
            f.push(*l).expect("not full");
            g.push(if i == 0 { flip(l, 9) } else { *l })
                .expect("not full");
            prefix.push(f.root());
            fork_first.push(g.root());
        }
        Self {
            prefix,
            fork_first,
            fork_last,
        }
    }
}

/// Checks one honest consistency proof like [`check_inclusion`], plus forks: an old root from a
/// history that differs before `old`, and a new root from one that differs after it.
fn check_consistency(roots: &Roots, old: u64, new: u64, proof: &[Hash]) {
    let old_root = roots.prefix[old as usize];
    let new_root = roots.prefix[new as usize];
    assert_eq!(
        verify_consistency(old, new, &old_root, &new_root, proof),
        Ok(()),
        "honest proof ({old}, {new})"
    );
    assert_eq!(consistency_proof_len(old, new), Some(proof.len()));
    if old == 0 || old == new {
        assert!(proof.is_empty());
        return;
    }
    for (what, bad) in tampered_proofs(proof, &new_root) {
        assert!(
            verify_consistency(old, new, &old_root, &new_root, &bad).is_err(),
            "({old}, {new}): accepted proof with {what}"
        );
    }
    assert!(
        verify_consistency(old, new, &old_root, &new_root, &[]).is_err(),
        "empty proof"
    );
    // Wrong roots.
    for bad in [flip(&old_root, 5), EMPTY_ROOT, h32(SOME_HASH), new_root] {
        if bad != old_root {
            assert!(verify_consistency(old, new, &bad, &new_root, proof).is_err());
        }
    }
    for bad in [flip(&new_root, 5), EMPTY_ROOT, h32(SOME_HASH), old_root] {
        if bad != new_root {
            assert!(verify_consistency(old, new, &old_root, &bad, proof).is_err());
        }
    }
    assert!(verify_consistency(old, new, &new_root, &old_root, proof).is_err());
    // Forks: the old tree differs in its first leaf, or the new tree differs after the old one.
    let got = verify_consistency(old, new, &roots.fork_first[old as usize], &new_root, proof);
    assert!(
        matches!(
            got,
            Err(ProofError::OldRootMismatch | ProofError::NewRootMismatch)
        ),
        "fork before {old} accepted: {got:?}"
    );
    assert_eq!(
        verify_consistency(old, new, &old_root, &roots.fork_last[new as usize], proof),
        Err(ProofError::NewRootMismatch),
        "fork after {old}"
    );
    // Wrong sizes.
    let honest = consistency_shape(old, new);
    let claims = [
        (old - 1, new),
        (old + 1, new),
        (old ^ 2, new),
        (old, new - 1),
        (old, new + 1),
        (old, new * 2),
        (old, new / 2),
    ];
    for (o, n) in claims {
        let got = verify_consistency(o, n, &old_root, &new_root, proof);
        if consistency_shape(o, n).is_some() && consistency_shape(o, n) == honest {
            assert_eq!(got, Ok(()), "same-shape claim ({o}, {n})");
        } else {
            assert!(got.is_err(), "({old}, {new}) accepted as ({o}, {n})");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Known-answer tests
// ---------------------------------------------------------------------------------------------

/// transparency-dev/merkle rfc6962/rfc6962_test.go `TestRFC6962Hasher`.
#[test]
fn rfc6962_hasher_vectors() {
    assert_eq!(
        EMPTY_ROOT,
        h32("e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855")
    );
    let sha_empty: Hash = Sha256::digest(b"").into();
    assert_eq!(EMPTY_ROOT, sha_empty);
    assert_eq!(
        leaf_hash(b""),
        h32("6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d")
    );
    assert_eq!(
        leaf_hash(b"L123456"),
        h32("395aa064aa4c29f7010acfe3f25db9485bbd4b91897b6ad7ad547639252b4d56")
    );
    // The published node vector hashes 4-byte children; check the 0x01 framing on 32-byte ones.
    let (l, r) = (leaf_hash(b"a"), leaf_hash(b"b"));
    let mut framed = vec![0x01];
    framed.extend_from_slice(&l);
    framed.extend_from_slice(&r);
    let want: Hash = Sha256::digest(&framed).into();
    assert_eq!(node_hash(&l, &r), want);
    assert_ne!(node_hash(&l, &r), node_hash(&r, &l));
    assert_ne!(node_hash(&l, &r), leaf_hash(&framed[1..]));
}

#[test]
fn reference_tree_leaf_and_node_hashes() {
    let leaves = reference_leaves();
    let a = Appender::from_leaves(&leaves);
    let mut expected = 0;
    for (level, row) in NODE_HASHES.iter().enumerate() {
        for (index, want) in row.iter().enumerate() {
            assert_eq!(
                a.store.node(level as u32, index as u64),
                Ok(h32(want)),
                "node ({level}, {index})"
            );
            expected += 1;
        }
    }
    // Exactly the completed perfect subtrees were written: 2n - popcount(n).
    assert_eq!(a.store.nodes.len(), expected);
    assert_eq!(expected, 2 * 8 - 1);
}

#[test]
fn reference_tree_roots_and_frontiers() {
    let leaves = reference_leaves();
    let full = Appender::from_leaves(&leaves);
    let nh: Vec<Vec<Hash>> = NODE_HASHES.iter().map(|row| hexes(row)).collect();
    let mut f = Frontier::new();
    for n in 0..=8usize {
        let want = h32(ROOTS[n]);
        assert_eq!(root(&leaves[..n]), want, "root() of {n}");
        assert_eq!(f.root(), want, "frontier root of {n}");
        assert_eq!(f.size(), n as u64);
        assert_eq!(
            root_at(&full.at(n as u64), n as u64),
            Ok(want),
            "root_at {n}"
        );
        let compact: Vec<Hash> = COMPACT_TREES[n].iter().map(|&(l, i)| nh[l][i]).collect();
        assert_eq!(f.hashes(), compact.as_slice(), "compact range of {n}");
        assert_eq!(
            Frontier::from_store(&full.at(n as u64), n as u64).as_ref(),
            Ok(&f)
        );
        assert_eq!(Frontier::from_bytes(&f.to_bytes()).as_ref(), Ok(&f));
        if n > 0 {
            assert_eq!(subtree_root(&full.store, 0, n as u64), Ok(want));
        }
        if n < 8 {
            f.push(leaves[n]).expect("not full");
        }
    }
}

#[test]
fn inclusion_known_answers() {
    let leaves = reference_leaves();
    let a = Appender::from_leaves(&leaves);
    for &(index, size, path) in INCLUSION_VECTORS {
        let want = hexes(path);
        let got = inclusion_proof(&a.at(size), index, size).expect("proof");
        assert_eq!(got, want, "inclusion ({index}, {size})");
        assert_eq!(Reference::new(&leaves).inclusion(index, size), want);
        let root_hash = h32(ROOTS[size as usize]);
        check_inclusion(&leaves, index, size, &want, &root_hash);
        // proof/verify_test.go corruptInclusionProof: these specific probes are all refused.
        let leaf = leaves[index as usize];
        let probes: Vec<Probe> = vec![
            (index.wrapping_sub(1), size, leaf, root_hash, want.clone()),
            (index + 1, size, leaf, root_hash, want.clone()),
            (index ^ 2, size, leaf, root_hash, want.clone()),
            (index, size * 2, leaf, root_hash, want.clone()),
            (index, size / 2, leaf, root_hash, want.clone()),
            (
                index,
                size,
                leaf_hash(b"WrongLeaf"),
                root_hash,
                want.clone(),
            ),
            (index, size, leaf, EMPTY_ROOT, want.clone()),
            (index, size, leaf, h32(SOME_HASH), want.clone()),
        ];
        for (i, s, l, r, p) in probes {
            assert!(
                verify_inclusion(&l, i, s, &p, &r).is_err(),
                "probe ({i}, {s}) accepted for vector ({index}, {size})"
            );
        }
    }
    // proof/verify_test.go `{0, 0, nil}` and TestVerifyInclusion: impossible requests.
    for (index, size) in [(0u64, 0u64), (1, 0), (2, 1)] {
        assert_eq!(
            inclusion_proof(&a.store, index, size),
            Err(ProofRequestError::IndexOutOfRange { index, size })
        );
        for (leaf, r) in [
            (h32(SOME_HASH), EMPTY_ROOT),
            (EMPTY_ROOT, EMPTY_ROOT),
            (h32(SOME_HASH), h32(SOME_HASH)),
        ] {
            assert_eq!(
                verify_inclusion(&leaf, index, size, &[], &r),
                Err(ProofError::IndexOutOfRange { index, size })
            );
        }
    }
    // TestVerifyInclusion probe (0, 1): a lone leaf is its own root, nothing else is.
    assert_eq!(
        verify_inclusion(&h32(SOME_HASH), 0, 1, &[], &EMPTY_ROOT),
        Err(ProofError::RootMismatch)
    );
    // TestVerifyInclusionSingleEntry.
    let data = leaf_hash(b"data");
    assert_eq!(verify_inclusion(&data, 0, 1, &[], &data), Ok(()));
    assert_eq!(
        verify_inclusion(&data, 0, 1, &[], &EMPTY_ROOT),
        Err(ProofError::RootMismatch)
    );
    assert_eq!(
        verify_inclusion(&EMPTY_ROOT, 0, 1, &[], &data),
        Err(ProofError::RootMismatch)
    );
}

#[test]
fn consistency_known_answers() {
    let leaves = reference_leaves();
    let a = Appender::from_leaves(&leaves);
    for &(old, new, path) in CONSISTENCY_VECTORS {
        let want = hexes(path);
        let got = consistency_proof(&a.at(new), old, new).expect("proof");
        assert_eq!(got, want, "consistency ({old}, {new})");
        assert_eq!(Reference::new(&leaves).consistency(old, new), want);
        let (r1, r2) = (h32(ROOTS[old as usize]), h32(ROOTS[new as usize]));
        assert_eq!(verify_consistency(old, new, &r1, &r2, &want), Ok(()));
        check_consistency(&Roots::new(&leaves), old, new, &want);
        if want.is_empty() {
            continue;
        }
        // proof/verify_test.go corruptConsistencyProof: these specific probes are all refused.
        let some = h32(SOME_HASH);
        let mut probes: Vec<Probe> = vec![
            (old - 1, new, r1, r2, want.clone()),
            (old + 1, new, r1, r2, want.clone()),
            (old ^ 2, new, r1, r2, want.clone()),
            (old, new * 2, r1, r2, want.clone()),
            (old, new / 2, r1, r2, want.clone()),
            (old, new, some, r2, want.clone()),
            (old, new, r1, some, want.clone()),
            (old, new, r2, r1, want.clone()),
            (old, new, r1, r2, vec![]),
            (old, new, r1, r2, want[..want.len() - 1].to_vec()),
        ];
        for extra in [[0u8; 32], r1, r2] {
            let mut p = want.clone();
            p.push(extra);
            probes.push((old, new, r1, r2, p));
            let mut p = vec![extra];
            p.extend_from_slice(&want);
            probes.push((old, new, r1, r2, p));
        }
        let mut p = vec![want[0]];
        p.extend_from_slice(&want);
        probes.push((old, new, r1, r2, p));
        for i in 0..want.len() {
            let mut p = want.clone();
            p[i][0] ^= 16;
            probes.push((old, new, r1, r2, p));
        }
        for (o, n, a1, a2, p) in probes {
            assert!(
                verify_consistency(o, n, &a1, &a2, &p).is_err(),
                "probe ({o}, {n}) accepted for vector ({old}, {new})"
            );
        }
    }
}

/// proof/verify_test.go `TestVerifyConsistency` table, with one deliberate difference: for an
/// old size of 0 this verifier also requires the old root to be the empty-tree root.
#[test]
fn consistency_edge_cases() {
    let r1 = h32(SOME_HASH);
    let r2 = flip(&r1, 0);
    let e = EMPTY_ROOT;
    use ProofError::*;
    let cases: Vec<Case> = vec![
        (0, 0, r1, r2, vec![], Err(RootsDifferAtSameSize { size: 0 })),
        (1, 1, r1, r2, vec![], Err(RootsDifferAtSameSize { size: 1 })),
        // Always consistent (given the empty root for size 0).
        (0, 0, e, e, vec![], Ok(())),
        (0, 1, e, r2, vec![], Ok(())),
        (1, 1, r2, r2, vec![], Ok(())),
        // Stricter than the Go library: a size-0 tree has exactly one root.
        (0, 0, r1, r1, vec![], Err(OldRootMismatch)),
        (0, 1, r1, r2, vec![], Err(OldRootMismatch)),
        // Time travel to the past.
        (1, 0, r1, r2, vec![], Err(OldSizeGreater { old: 1, new: 0 })),
        (2, 1, r1, r2, vec![], Err(OldSizeGreater { old: 2, new: 1 })),
        // Empty proof.
        (
            1,
            2,
            r1,
            r2,
            vec![],
            Err(WrongProofLength {
                expected: 1,
                actual: 0,
            }),
        ),
        // Roots don't match.
        (0, 0, e, r2, vec![], Err(RootsDifferAtSameSize { size: 0 })),
        (1, 1, e, r2, vec![], Err(RootsDifferAtSameSize { size: 1 })),
        // Roots match but the proof is not empty.
        (
            0,
            0,
            e,
            e,
            vec![e],
            Err(WrongProofLength {
                expected: 0,
                actual: 1,
            }),
        ),
        (
            0,
            1,
            e,
            e,
            vec![e],
            Err(WrongProofLength {
                expected: 0,
                actual: 1,
            }),
        ),
        (
            1,
            1,
            e,
            e,
            vec![e],
            Err(WrongProofLength {
                expected: 0,
                actual: 1,
            }),
        ),
    ];
    for (old, new, a, b, proof, want) in cases {
        assert_eq!(
            verify_consistency(old, new, &a, &b, &proof),
            want,
            "({old}, {new})"
        );
    }
    let store = MemStore::default();
    assert_eq!(
        consistency_proof(&store, 3, 2),
        Err(ProofRequestError::OldSizeGreater { old: 3, new: 2 })
    );
    assert_eq!(consistency_proof(&store, 0, 5), Ok(vec![]));
    assert_eq!(consistency_proof(&store, 5, 5), Ok(vec![]));
}

#[test]
fn proof_node_ids_match_transparency_dev() {
    let leaves = seeded_leaves(95, 95);
    let a = Appender::from_leaves(&leaves);
    for (size, index, shape) in INCLUSION_NODE_VECTORS {
        let want = expand_shape(&leaves, shape);
        assert_eq!(
            inclusion_proof(&a.at(*size), *index, *size),
            Ok(want),
            "inclusion ({index}, {size})"
        );
    }
    for &(size, index) in INCLUSION_NODE_ERRORS {
        assert_eq!(
            inclusion_proof(&a.at(size), index, size),
            Err(ProofRequestError::IndexOutOfRange { index, size })
        );
    }
    for (old, new, shape) in CONSISTENCY_NODE_VECTORS {
        let want = expand_shape(&leaves, shape);
        assert_eq!(
            consistency_proof(&a.at(*new), *old, *new),
            Ok(want),
            "consistency ({old}, {new})"
        );
    }
    for &(old, new) in CONSISTENCY_NODE_ERRORS {
        assert_eq!(
            consistency_proof(&a.store, old, new),
            Err(ProofRequestError::OldSizeGreater { old, new })
        );
    }
}

fn subtree_valid(start: u64, end: u64) -> bool {
    // testonly/tree.go isSubtreeValid, restated.
    start < end && (start == 0 || start % (end - start).next_power_of_two() == 0)
}

#[test]
fn draft_plants_subtree_hash_and_inclusion_vectors() {
    let leaves: Vec<Hash> = (0..SUBTREE_VECTOR_MAX)
        .map(|i| leaf_hash(&[i as u8]))
        .collect();
    let a = Appender::from_leaves(&leaves);
    let mut hashes = Sha256::new();
    let mut proofs = Sha256::new();
    for end in 1..=SUBTREE_VECTOR_MAX {
        for start in 0..end {
            assert_eq!(merkle::is_subtree(start, end), subtree_valid(start, end));
            if !subtree_valid(start, end) {
                assert_eq!(
                    subtree_root(&a.store, start, end),
                    Err(ProofRequestError::NotASubtree { start, end })
                );
                continue;
            }
            let h = subtree_root(&a.store, start, end).expect("subtree");
            assert_eq!(h, root(&leaves[start as usize..end as usize]));
            hashes.update(format!("[{start}, {end}) {}\n", hex::encode(h)));
            let view = Shifted {
                store: &a.store,
                start,
            };
            for index in start..end {
                let proof = inclusion_proof(&view, index - start, end - start).expect("proof");
                let mut line = format!("{index} [{start}, {end})");
                for p in &proof {
                    line.push(' ');
                    line.push_str(&hex::encode(p));
                }
                line.push('\n');
                proofs.update(line);
            }
        }
    }
    assert_eq!(hex::encode(hashes.finalize()), SUBTREE_HASH_DIGEST);
    assert_eq!(hex::encode(proofs.finalize()), SUBTREE_INCLUSION_DIGEST);
}

// ---------------------------------------------------------------------------------------------
// Frontier encoding and limits
// ---------------------------------------------------------------------------------------------

#[test]
fn frontier_encoding_is_strict() {
    let leaves = reference_leaves();
    let a = Appender::from_leaves(&leaves[..7]);
    let bytes = a.frontier.to_bytes();
    assert_eq!(bytes.len(), 8 + 3 * 32);
    assert_eq!(&bytes[..8], &7u64.to_be_bytes());
    assert_eq!(
        Frontier::from_bytes(&bytes).map(|f| f.root()),
        Ok(h32(ROOTS[7]))
    );
    assert_eq!(
        Frontier::from_bytes(&bytes[..5]),
        Err(FrontierError::Truncated { len: 5 })
    );
    assert_eq!(
        Frontier::from_bytes(&bytes[..bytes.len() - 1]),
        Err(FrontierError::RaggedHashes { trailing: 31 })
    );
    assert_eq!(
        Frontier::from_bytes(&bytes[..bytes.len() - 32]),
        Err(FrontierError::WrongHashCount {
            size: 7,
            expected: 3,
            actual: 2
        })
    );
    let mut longer = bytes.clone();
    longer.extend_from_slice(&[0; 32]);
    assert!(matches!(
        Frontier::from_bytes(&longer),
        Err(FrontierError::WrongHashCount { .. })
    ));
    assert_eq!(
        Frontier::from_bytes(&0u64.to_be_bytes()),
        Ok(Frontier::new())
    );
    assert_eq!(Frontier::new().root(), EMPTY_ROOT);
}

#[test]
fn full_tree_refuses_more_leaves() {
    let mut f = Frontier::from_parts(u64::MAX, vec![EMPTY_ROOT; 64]).expect("parts");
    let before = f.clone();
    let mut called = false;
    assert_eq!(
        f.push_with(EMPTY_ROOT, |_, _, _| called = true),
        Err(TreeFull)
    );
    assert!(!called);
    assert_eq!(f, before);
}

#[test]
fn store_errors_propagate() {
    let leaves = reference_leaves();
    let a = Appender::from_leaves(&leaves[..4]);
    // Asking about size 5 of a 4-leaf store needs leaf 4, which does not exist.
    assert_eq!(
        inclusion_proof(&a.store, 0, 5),
        Err(ProofRequestError::Store(StoreError::Missing {
            level: 0,
            index: 4
        }))
    );
    assert!(matches!(
        root_at(&a.at(3), 4),
        Err(ProofRequestError::Store(StoreError::Future { .. }))
    ));
    assert!(Frontier::from_store(&a.store, 6).is_err());
}

/// The RFC 9162 verifier checks the leaf against the root, not the size: leaf 0's path in the
/// 3-leaf tree has the same shape as in a 4-leaf tree, so it also passes with a claimed size of
/// 4. A head must therefore authenticate size and root together.
#[test]
fn size_is_bound_by_the_head_not_the_proof() {
    let leaves = reference_leaves();
    let a = Appender::from_leaves(&leaves);
    let proof = inclusion_proof(&a.at(3), 0, 3).expect("proof");
    let r3 = h32(ROOTS[3]);
    assert_eq!(verify_inclusion(&leaves[0], 0, 3, &proof, &r3), Ok(()));
    assert_eq!(verify_inclusion(&leaves[0], 0, 4, &proof, &r3), Ok(()));
    // With the real size-4 root the same proof fails.
    assert_eq!(
        verify_inclusion(&leaves[0], 0, 4, &proof, &h32(ROOTS[4])),
        Err(ProofError::RootMismatch)
    );
}

/// Sizes near 2^64: lengths are right, nothing overflows, and garbage is refused.
#[test]
fn huge_sizes_do_not_overflow() {
    let big = (1u64 << 63) + 1;
    assert_eq!(inclusion_proof_len(0, big), Some(64));
    assert_eq!(inclusion_proof_len(big - 1, big), Some(1));
    assert_eq!(inclusion_proof_len(u64::MAX - 1, u64::MAX), Some(63));
    assert_eq!(inclusion_proof_len(u64::MAX, u64::MAX), None);
    assert_eq!(consistency_proof_len(1, big), Some(64));
    assert_eq!(consistency_proof_len(1 << 63, big), Some(1));
    assert_eq!(consistency_proof_len(u64::MAX - 1, u64::MAX), Some(64));
    let leaf = leaf_hash(b"x");
    let garbage = vec![h32(SOME_HASH); 64];
    assert_eq!(
        verify_inclusion(&leaf, 0, big, &garbage, &EMPTY_ROOT),
        Err(ProofError::RootMismatch)
    );
    assert_eq!(
        verify_inclusion(&leaf, 0, big, &garbage[..63], &EMPTY_ROOT),
        Err(ProofError::WrongProofLength {
            expected: 64,
            actual: 63
        })
    );
    assert!(matches!(
        verify_consistency(1, big, &leaf, &EMPTY_ROOT, &garbage),
        Err(ProofError::NewRootMismatch)
    ));
    assert!(matches!(
        verify_consistency(u64::MAX - 1, u64::MAX, &leaf, &EMPTY_ROOT, &garbage),
        Err(ProofError::OldRootMismatch | ProofError::NewRootMismatch)
    ));
}

/// Every (index, size) and every (old, new) up to 64 leaves, exhaustively.
#[test]
fn exhaustive_small_trees() {
    const N: usize = 64;
    let leaves = seeded_leaves(7, N);
    let a = Appender::from_leaves(&leaves);
    let roots = Roots::new(&leaves);
    let reference = Reference::new(&leaves);
    for size in 1..=N as u64 {
        let view = a.at(size);
        let root_hash = reference.root(size);
        assert_eq!(root(&leaves[..size as usize]), root_hash);
        assert_eq!(root_at(&view, size), Ok(root_hash));
        let counting = Counting {
            inner: a.at(size),
            lookups: std::cell::Cell::new(0),
        };
        for index in 0..size {
            let proof = inclusion_proof(&view, index, size).expect("proof");
            assert_eq!(proof, reference.inclusion(index, size));
            // Documented cost: at most ceil(log2 n) + popcount(n) lookups.
            counting.lookups.set(0);
            assert_eq!(inclusion_proof(&counting, index, size).as_ref(), Ok(&proof));
            assert!(
                counting.lookups.get() <= ceil_log2(size) + u64::from(size.count_ones()),
                "({index}, {size}): {} lookups",
                counting.lookups.get()
            );
            assert_eq!(
                inclusion_shape(index, size).map(|s| s.len()),
                Some(proof.len())
            );
            check_inclusion(&leaves, index, size, &proof, &root_hash);
        }
        for old in 0..=size {
            let proof = consistency_proof(&view, old, size).expect("proof");
            assert_eq!(proof, reference.consistency(old, size));
            counting.lookups.set(0);
            assert_eq!(consistency_proof(&counting, old, size).as_ref(), Ok(&proof));
            assert!(
                counting.lookups.get() <= ceil_log2(size) + u64::from(size.count_ones()) + 1,
                "({old}, {size}): {} lookups",
                counting.lookups.get()
            );
            check_consistency(&roots, old, size, &proof);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Property tests
// ---------------------------------------------------------------------------------------------

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// Proof lengths computed from the sizes match the RFC verifier's own walk, for any sizes,
    /// and a proof of the right length but made-up hashes is refused without panicking.
    #[test]
    fn proof_lengths_match_the_rfc_walk(x in any::<u64>(), y in any::<u64>(), junk in any::<[u8; 32]>()) {
        let (lo, hi) = (x.min(y), x.max(y));
        let shape = inclusion_shape(lo, hi);
        prop_assert_eq!(inclusion_proof_len(lo, hi), shape.as_ref().map(|s| s.len()));
        if let Some(len) = inclusion_proof_len(lo, hi) {
            let r = verify_inclusion(&junk, lo, hi, &vec![junk; len], &EMPTY_ROOT);
            prop_assert_eq!(r, Err(ProofError::RootMismatch));
        }
        if let Some((pow2, ops)) = consistency_shape(lo, hi) {
            let want = ops.len() + usize::from(!pow2);
            prop_assert_eq!(consistency_proof_len(lo, hi), Some(want));
            let r = verify_consistency(lo, hi, &junk, &EMPTY_ROOT, &vec![junk; want]);
            prop_assert!(r.is_err());
        }
    }

    /// Incremental roots equal `root()` at every size; the frontier round-trips through bytes and
    /// can be rebuilt from the store; the store holds exactly 2n - popcount(n) nodes.
    #[test]
    fn frontier_matches_root(data in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..40), 0..300)) {
        let leaves: Vec<Hash> = data.iter().map(|d| leaf_hash(d)).collect();
        let reference = Reference::new(&leaves);
        let mut a = Appender::default();
        prop_assert_eq!(a.frontier.root(), EMPTY_ROOT);
        for (i, l) in leaves.iter().enumerate() {
            a.push(*l);
            let n = i as u64 + 1;
            prop_assert_eq!(a.frontier.size(), n);
            prop_assert_eq!(a.frontier.root(), reference.root(n));
            prop_assert_eq!(a.frontier.hashes().len(), n.count_ones() as usize);
            prop_assert_eq!(a.store.nodes.len() as u64, 2 * n - u64::from(n.count_ones()));
        }
        let n = leaves.len() as u64;
        prop_assert_eq!(Frontier::from_bytes(&a.frontier.to_bytes()), Ok(a.frontier.clone()));
        prop_assert_eq!(Frontier::from_store(&a.at(n), n), Ok(a.frontier.clone()));
        prop_assert_eq!(root(&leaves), reference.root(n));
        prop_assert_eq!(root_at(&a.at(n), n), Ok(reference.root(n)));
        // Historical roots and frontiers, without touching later nodes.
        for size in 0..=n {
            prop_assert_eq!(root_at(&a.at(size), size), Ok(reference.root(size)));
            let f = Frontier::from_store(&a.at(size), size).expect("frontier");
            prop_assert_eq!(f.root(), reference.root(size));
        }
    }

}

// Each case below checks every proof of one tree (up to ~45k verifications in debug builds), so
// fewer cases; `exhaustive_small_trees` already covers every size up to 64.
proptest! {
    #![proptest_config(ProptestConfig::with_cases(16))]

    /// For a random tree of up to 300 leaves: every inclusion proof at that size matches the RFC
    /// reference, verifies, and is refused under every tampering.
    #[test]
    fn every_inclusion_proof_verifies_and_tampering_fails(seed in any::<u64>(), size in 1u64..=300) {
        let leaves = seeded_leaves(seed, size as usize + 5);
        let a = Appender::from_leaves(&leaves);
        let view = a.at(size);
        let reference = Reference::new(&leaves);
        let root_hash = reference.root(size);
        for index in 0..size {
            let proof = inclusion_proof(&view, index, size).expect("proof");
            prop_assert_eq!(&proof, &reference.inclusion(index, size));
            check_inclusion(&leaves, index, size, &proof, &root_hash);
        }
    }

    /// For a random tree of up to 300 leaves: the consistency proof from every smaller size matches
    /// the RFC reference, verifies, and is refused under every tampering and fork.
    #[test]
    fn every_consistency_proof_verifies_and_tampering_fails(seed in any::<u64>(), new in 1u64..=300) {
        let leaves = seeded_leaves(seed, new as usize + 5);
        let a = Appender::from_leaves(&leaves);
        let view = a.at(new);
        let roots = Roots::new(&leaves);
        let reference = Reference::new(&leaves);
        for old in 0..=new {
            let proof = consistency_proof(&view, old, new).expect("proof");
            prop_assert_eq!(&proof, &reference.consistency(old, new));
            check_consistency(&roots, old, new, &proof);
        }
    }

    /// Proofs for random historical sizes of one bigger tree only use nodes that existed then.
    #[test]
    fn historical_proofs_from_a_grown_store(seed in any::<u64>(), n in 1u64..=300, a_frac in 0.0f64..=1.0, b_frac in 0.0f64..=1.0) {
        let leaves = seeded_leaves(seed, n as usize);
        let a = Appender::from_leaves(&leaves);
        let x = ((n as f64) * a_frac) as u64;
        let y = ((n as f64) * b_frac) as u64;
        let (old, new) = (x.min(y), x.max(y).max(1));
        let old_root = root(&leaves[..old as usize]);
        let new_root = root(&leaves[..new as usize]);
        prop_assert_eq!(root_at(&a.store, new), Ok(new_root));
        let proof = consistency_proof(&a.at(new), old, new).expect("proof");
        prop_assert_eq!(verify_consistency(old, new, &old_root, &new_root, &proof), Ok(()));
        let index = old.min(new - 1);
        let path = inclusion_proof(&a.at(new), index, new).expect("path");
        prop_assert_eq!(verify_inclusion(&leaves[index as usize], index, new, &path, &new_root), Ok(()));
    }
}
