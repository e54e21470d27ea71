//! The ledger: a replicated map every node of a mesh converges on. Each entry is written and
//! signed (ed25519) by its owner and lives under `(owner, key)`, so only the owner can write
//! it: an entry whose signature does not check out is refused, whoever relays it. Merging
//! is a join on a per-entry order (higher version wins; equal versions, which only an
//! equivocating owner produces, are decided by the larger digest), so it is commutative,
//! associative and idempotent: replicas that have seen the same entries hold the same map,
//! whatever the order. Deletion is a tombstone (an entry with no value) that wins like any
//! newer version. Replicas compare [`Ledger::head`] and exchange what the other lacks
//! ([`Ledger::versions`], [`Ledger::newer_than`]): anti-entropy.
//!
//! A ledger may be capped to the `cap` best-ranked owners ([`Ledger::with_owner_cap`]; rank:
//! the larger FNV-32a of the owner's name, [`crate::mesh::roles::key_fnv`], then the smaller
//! key): entries of an owner ranked below the cap are refused, and an owner pushed below it is
//! evicted with all its entries. The kept set is the top `cap` of every owner seen, which is
//! again a join (top-k of a union), so capped replicas converge the same way; what an
//! election needs of the membership (the best-ranked members) is always kept, and a mesh of
//! any size replicates a bounded map.
//!
//! Pure: no clock, no IO. Signature checks go through a [`Crypto`], the node's pure
//! crypto work, so a simulator can memoize the same check across thousands of simulated
//! nodes (the check still happens once), and share one copy of each entry among the
//! ledgers that hold it (entries are immutable: a ledger holds them behind an [`Arc`]).

use std::cmp::{Ordering, Reverse};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use ed25519_dalek::{Signer, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

pub type PeerKey = [u8; 32];

/// Longest key accepted.
pub const KEY_BYTES_MAX: usize = 256;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub owner: PeerKey,
    pub key: String,
    pub version: u64,
    /// `None` is a tombstone.
    #[serde(with = "serde_bytes")]
    pub value: Option<Vec<u8>>,
    #[serde(with = "serde_bytes")]
    pub sig: [u8; 64],
}

fn signed_bytes(owner: &PeerKey, key: &str, version: u64, value: Option<&[u8]>) -> Vec<u8> {
    let mut b = Vec::with_capacity(64 + key.len() + value.map_or(0, <[u8]>::len));
    b.extend_from_slice(b"bootyard/ledger/v1");
    b.extend_from_slice(owner);
    b.extend_from_slice(&(key.len() as u64).to_be_bytes());
    b.extend_from_slice(key.as_bytes());
    b.extend_from_slice(&version.to_be_bytes());
    match value {
        None => b.push(0),
        Some(v) => {
            b.push(1);
            b.extend_from_slice(&(v.len() as u64).to_be_bytes());
            b.extend_from_slice(v);
        }
    }
    b
}

/// An entry as it travels, borrowed from the message it came in (or from an [`Entry`]):
/// the same bytes on the wire. Copies of what a ledger already holds, most of what a node
/// hears, are recognised without allocating; only an entry that changes the ledger is
/// copied into it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct EntryRef<'a> {
    pub owner: PeerKey,
    pub key: &'a str,
    pub version: u64,
    #[serde(borrow, with = "serde_bytes")]
    pub value: Option<&'a [u8]>,
    #[serde(with = "serde_bytes")]
    pub sig: [u8; 64],
}

impl EntryRef<'_> {
    pub fn to_entry(&self) -> Entry {
        Entry {
            owner: self.owner,
            key: self.key.to_string(),
            version: self.version,
            value: self.value.map(<[u8]>::to_vec),
            sig: self.sig,
        }
    }

    pub fn signed_bytes(&self) -> Vec<u8> {
        signed_bytes(&self.owner, self.key, self.version, self.value)
    }

    /// As [`Entry::digest`].
    pub fn digest(&self) -> [u8; 32] {
        digest_of(&self.signed_bytes(), &self.sig)
    }
}

/// SHA-256 of an entry's signed bytes and its signature.
fn digest_of(signed: &[u8], sig: &[u8; 64]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(signed);
    h.update(sig);
    h.finalize().into()
}

impl Entry {
    pub fn as_ref(&self) -> EntryRef<'_> {
        EntryRef {
            owner: self.owner,
            key: &self.key,
            version: self.version,
            value: self.value.as_deref(),
            sig: self.sig,
        }
    }

    /// A new entry (or tombstone, with `value: None`) signed by `signer`.
    pub fn signed(signer: &SigningKey, key: &str, version: u64, value: Option<Vec<u8>>) -> Self {
        let owner = signer.verifying_key().to_bytes();
        let sig = signer
            .sign(&signed_bytes(&owner, key, version, value.as_deref()))
            .to_bytes();
        Self {
            owner,
            key: key.to_string(),
            version,
            value,
            sig,
        }
    }

    pub fn signed_bytes(&self) -> Vec<u8> {
        self.as_ref().signed_bytes()
    }

    /// SHA-256 of the signed bytes and the signature: names this exact entry.
    pub fn digest(&self) -> [u8; 32] {
        self.as_ref().digest()
    }
}

/// The pure crypto work a node asks for: checking signatures and opening sealed
/// rendezvous records. Implementations may remember results (the same bytes give the same
/// answer); they may not skip the check or the decryption.
pub trait Crypto {
    fn verify(&mut self, owner: &PeerKey, msg: &[u8], sig: &[u8; 64]) -> bool;

    /// As [`Crypto::verify`], for an entry's signed bytes (which hold `owner`) whose
    /// [`Entry::digest`] the caller computed already: it names the check as well.
    fn verify_entry(
        &mut self,
        digest: &[u8; 32],
        owner: &PeerKey,
        signed: &[u8],
        sig: &[u8; 64],
    ) -> bool {
        let _ = digest;
        self.verify(owner, signed, sig)
    }

    /// The digest of `e` ([`Entry::digest`]), and the entry as a ledger stores it if its
    /// signature checks out (`None` if not). Implementations may hand out one shared copy
    /// per distinct entry.
    fn admit(&mut self, e: EntryRef<'_>) -> ([u8; 32], Option<Arc<Entry>>) {
        admit_afresh(self, e)
    }

    /// Opens a sealed record (`nonce ‖ ciphertext ‖ tag`) with `key`.
    fn open_record(&mut self, key: &[u8; 32], sealed: &[u8]) -> Option<Vec<u8>> {
        crate::mesh::token::open(key, sealed)
    }
}

/// [`Crypto::admit`] done in full: hash, check (through `v`'s [`Crypto::verify_entry`]),
/// copy.
fn admit_afresh<C: Crypto + ?Sized>(v: &mut C, e: EntryRef<'_>) -> ([u8; 32], Option<Arc<Entry>>) {
    let signed = e.signed_bytes();
    let digest = digest_of(&signed, &e.sig);
    let ok = v.verify_entry(&digest, &e.owner, &signed, &e.sig);
    (digest, ok.then(|| Arc::new(e.to_entry())))
}

/// Does every check and every decryption afresh (the real driver's).
#[derive(Debug, Default)]
pub struct FreshCrypto;

impl Crypto for FreshCrypto {
    fn verify(&mut self, owner: &PeerKey, msg: &[u8], sig: &[u8; 64]) -> bool {
        let Ok(key) = VerifyingKey::from_bytes(owner) else {
            return false;
        };
        key.verify_strict(msg, &ed25519_dalek::Signature::from_bytes(sig))
            .is_ok()
    }
}

/// Remembers each (owner, message, signature) verdict, each entry admitted (one copy
/// shared by every ledger that holds it, found by its signature and compared in full), and
/// each record opened: the simulator shares one across simulated nodes, which all check
/// the same entries and open the same records. The memos are bounded: a full one starts
/// over (the work is done again, the answers stay the same).
#[derive(Debug)]
pub struct MemoCrypto {
    seen: HashMap<[u8; 32], bool>,
    seen_max: usize,
    /// Admitted entries by signature, with their digests.
    admitted: HashMap<[u8; 64], ([u8; 32], Arc<Entry>)>,
    /// Per key: sealed record -> what it opened to (looked up by slice, no copy on a hit).
    opened: HashMap<[u8; 32], Opened>,
    opened_len: usize,
    opened_max: usize,
    pub checks: u64,
    pub hits: u64,
}

impl Default for MemoCrypto {
    fn default() -> Self {
        Self::bounded(SEEN_MAX, OPENED_MAX)
    }
}

impl MemoCrypto {
    /// A memo of at most `seen_max` signature verdicts and `opened_max` records.
    pub fn bounded(seen_max: usize, opened_max: usize) -> Self {
        Self {
            seen: HashMap::new(),
            seen_max,
            admitted: HashMap::new(),
            opened: HashMap::new(),
            opened_len: 0,
            opened_max,
            checks: 0,
            hits: 0,
        }
    }

    /// The verdict remembered under `id`, or checked and remembered.
    fn verify_as(&mut self, id: [u8; 32], owner: &PeerKey, msg: &[u8], sig: &[u8; 64]) -> bool {
        if let Some(v) = self.seen.get(&id) {
            self.hits += 1;
            return *v;
        }
        self.checks += 1;
        let v = FreshCrypto.verify(owner, msg, sig);
        if self.seen.len() >= self.seen_max {
            self.seen.clear();
        }
        self.seen.insert(id, v);
        v
    }
}

/// Sealed record -> its plaintext, or `None` when it did not open.
type Opened = HashMap<Vec<u8>, Option<Vec<u8>>>;

/// Signature verdicts and records remembered at most by default.
const SEEN_MAX: usize = 1 << 20;
const OPENED_MAX: usize = 1 << 18;

impl Crypto for MemoCrypto {
    fn verify(&mut self, owner: &PeerKey, msg: &[u8], sig: &[u8; 64]) -> bool {
        let mut h = Sha256::new();
        h.update(owner);
        h.update(sig);
        h.update(msg);
        let id: [u8; 32] = h.finalize().into();
        self.verify_as(id, owner, msg, sig)
    }

    fn verify_entry(
        &mut self,
        digest: &[u8; 32],
        owner: &PeerKey,
        signed: &[u8],
        sig: &[u8; 64],
    ) -> bool {
        // Another hash than `verify`'s ids (SHA-256 of the signed bytes, which begin with a
        // fixed label and hold the owner, then the signature): the two kinds never meet.
        self.verify_as(*digest, owner, signed, sig)
    }

    fn admit(&mut self, e: EntryRef<'_>) -> ([u8; 32], Option<Arc<Entry>>) {
        // The same signature over other contents (a forgery relayed by someone) is no
        // copy: it is checked afresh, and fails.
        if let Some((digest, held)) = self.admitted.get(&e.sig) {
            if Entry::as_ref(held) == e {
                self.hits += 1;
                return (*digest, Some(held.clone()));
            }
        }
        let (digest, held) = admit_afresh(self, e);
        if let Some(held) = &held {
            if self.admitted.len() >= self.seen_max {
                self.admitted.clear();
            }
            self.admitted.insert(e.sig, (digest, held.clone()));
        }
        (digest, held)
    }

    fn open_record(&mut self, key: &[u8; 32], sealed: &[u8]) -> Option<Vec<u8>> {
        if let Some(v) = self.opened.get(key).and_then(|m| m.get(sealed)) {
            return v.clone();
        }
        if self.opened_len >= self.opened_max {
            self.opened.clear();
            self.opened_len = 0;
        }
        let v = crate::mesh::token::open(key, sealed);
        self.opened
            .entry(*key)
            .or_default()
            .insert(sealed.to_vec(), v.clone());
        self.opened_len += 1;
        v
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Applied {
    /// The entry is new or newer: the map changed.
    Changed,
    /// The ledger already had it or something newer.
    Stale,
    /// The owner ranks below the ledger's owner cap.
    Outranked,
}

/// What [`Ledger::apply_shared`] did with an entry: its [`Applied`], with the copy the
/// ledger now holds when the entry changed the map.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Taken {
    Changed(Arc<Entry>),
    Stale,
    Outranked,
}

impl Taken {
    pub fn applied(&self) -> Applied {
        match self {
            Taken::Changed(_) => Applied::Changed,
            Taken::Stale => Applied::Stale,
            Taken::Outranked => Applied::Outranked,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LedgerError {
    #[error("entry {key:?} is not signed by its owner")]
    BadSignature { key: String },
    #[error("entry key is {0} bytes; at most {KEY_BYTES_MAX}")]
    KeyTooLong(usize),
    #[error("entry {key:?} carries {bytes} bytes; at most {max}")]
    ValueTooLarge {
        key: String,
        bytes: usize,
        max: usize,
    },
}

/// Entries are grouped into this many buckets by their owner's first byte; each bucket keeps
/// the XOR of its entries' digests, so replicas can compare 16 small digests and exchange
/// summaries of only the buckets that differ.
pub const BUCKETS: usize = 16;

fn bucket_of(owner: &PeerKey) -> usize {
    usize::from(owner[0] >> 4)
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Ledger {
    /// Each entry with its digest, computed once, by owner then key.
    entries: BTreeMap<PeerKey, OwnerEntries>,
    len: usize,
    /// Per bucket, XOR of the entries' digests: kept up to date in O(1) per change.
    xor: [[u8; 32]; BUCKETS],
    value_bytes_max: usize,
    /// At most this many owners are kept (`usize::MAX`: no cap).
    owner_cap: usize,
    /// Kept owners by rank, best first (maintained only under a cap).
    ranked: BTreeSet<OwnerRank>,
    /// Owners evicted since [`Ledger::take_evicted`] was last called.
    evicted: Vec<PeerKey>,
}

/// One owner's entries with their digests, sorted by key. An owner holds a handful of keys,
/// and a B-tree's smallest node has room for 11 (about 2 KB here, per owner, per replica):
/// a sorted vector keeps the simulator's thousands of replicas small. Each key's first
/// bytes ride along as a number ([`key_tag`]), so a search compares numbers and reads a key's
/// bytes (another allocation) only to break a tie of longer keys.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct OwnerEntries(Vec<(u64, Arc<Entry>, [u8; 32])>);

/// A key's first 8 bytes, big-endian, zero-padded: ordered as the keys are (a key that
/// runs out is a prefix of the other, and so the smaller), equal only when the keys agree
/// that far.
fn key_tag(key: &str) -> u64 {
    let mut b = [0u8; 8];
    let n = key.len().min(8);
    b[..n].copy_from_slice(&key.as_bytes()[..n]);
    u64::from_be_bytes(b)
}

/// Orders a held key against a sought one (with their tags), as `str` orders them.
fn cmp_key(tag: u64, held: &str, sought_tag: u64, sought: &str) -> Ordering {
    match tag.cmp(&sought_tag) {
        // Both within the tag: one is the other zero-padded, or they are the same.
        Ordering::Equal if held.len() <= 8 && sought.len() <= 8 => held.len().cmp(&sought.len()),
        Ordering::Equal => held.cmp(sought),
        o => o,
    }
}

impl OwnerEntries {
    fn find(&self, key: &str) -> Result<usize, usize> {
        self.find_tagged(key_tag(key), key)
    }

    fn find_tagged(&self, t: u64, key: &str) -> Result<usize, usize> {
        self.0
            .binary_search_by(|(tag, e, _)| cmp_key(*tag, &e.key, t, key))
    }

    fn get(&self, key: &str) -> Option<(&Arc<Entry>, &[u8; 32])> {
        self.find(key).ok().map(|i| {
            let (_, e, d) = &self.0[i];
            (e, d)
        })
    }

    /// Puts the entry under its key; what it replaced, if anything.
    fn insert(&mut self, (e, d): (Arc<Entry>, [u8; 32])) -> Option<(Arc<Entry>, [u8; 32])> {
        let item = (key_tag(&e.key), e, d);
        match self.find_tagged(item.0, &item.1.key) {
            Ok(i) => {
                let (_, e, d) = std::mem::replace(&mut self.0[i], item);
                Some((e, d))
            }
            Err(i) => {
                // Room for exactly one more (most owners hold one or two keys).
                self.0.reserve_exact(1);
                self.0.insert(i, item);
                None
            }
        }
    }

    /// In key order.
    fn values(&self) -> impl Iterator<Item = (&Arc<Entry>, &[u8; 32])> {
        self.0.iter().map(|(_, e, d)| (e, d))
    }

    fn len(&self) -> usize {
        self.0.len()
    }
}

/// Best first: larger FNV-32a, then smaller key ([`crate::mesh::roles::key_rank`]).
type OwnerRank = (Reverse<u32>, PeerKey);

use crate::mesh::roles::key_rank as owner_rank;

impl Ledger {
    /// An empty ledger refusing values over `value_bytes_max` (the token's max_message_size).
    pub fn new(value_bytes_max: usize) -> Self {
        Self {
            entries: BTreeMap::new(),
            len: 0,
            xor: [[0; 32]; BUCKETS],
            value_bytes_max,
            owner_cap: usize::MAX,
            ranked: BTreeSet::new(),
            evicted: Vec::new(),
        }
    }

    /// An empty ledger that keeps the entries of the `cap` best-ranked owners only.
    pub fn with_owner_cap(value_bytes_max: usize, cap: usize) -> Self {
        Self {
            owner_cap: cap.max(1),
            ..Self::new(value_bytes_max)
        }
    }

    pub fn owner_cap(&self) -> usize {
        self.owner_cap
    }

    /// Owners with entries here.
    pub fn owners(&self) -> usize {
        self.entries.len()
    }

    /// Whether an entry of `owner` would be refused for its rank.
    pub fn outranked(&self, owner: &PeerKey) -> bool {
        !self.entries.contains_key(owner) && self.outranks_unheld(owner)
    }

    /// [`Ledger::outranked`] for an owner known to hold nothing here.
    fn outranks_unheld(&self, owner: &PeerKey) -> bool {
        self.owner_cap != usize::MAX
            && self.entries.len() >= self.owner_cap
            && self
                .ranked
                .last()
                .is_some_and(|worst| owner_rank(owner) > *worst)
    }

    /// The owners evicted (with all their entries) since the last call.
    pub fn take_evicted(&mut self) -> Vec<PeerKey> {
        std::mem::take(&mut self.evicted)
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The live value under `(owner, key)`; tombstoned or unknown entries have none.
    pub fn get(&self, owner: &PeerKey, key: &str) -> Option<&[u8]> {
        self.entry(owner, key).and_then(|e| e.value.as_deref())
    }

    pub fn entry(&self, owner: &PeerKey, key: &str) -> Option<&Entry> {
        self.entries.get(owner)?.get(key).map(|(e, _)| &**e)
    }

    /// Every entry (tombstones too), in (owner, key) order.
    pub fn entries(&self) -> impl Iterator<Item = &Entry> {
        self.entries
            .values()
            .flat_map(|m| m.values().map(|(e, _)| &**e))
    }

    /// The entries of one owner.
    pub fn entries_of(&self, owner: &PeerKey) -> impl Iterator<Item = &Entry> {
        self.entries
            .get(owner)
            .into_iter()
            .flat_map(|m| m.values().map(|(e, _)| &**e))
    }

    /// Live entries, in (owner, key) order.
    pub fn live(&self) -> impl Iterator<Item = &Entry> {
        self.entries().filter(|e| e.value.is_some())
    }

    /// Checks and merges one entry. A copy of what is already held (same version and
    /// signature) or anything older is recognised without hashing or verifying.
    /// The entry is copied only when it changes the ledger.
    pub fn apply(&mut self, e: &Entry, v: &mut dyn Crypto) -> Result<Applied, LedgerError> {
        self.apply_ref(e.as_ref(), v)
    }

    /// As [`Ledger::apply`], for an entry borrowed from a message.
    pub fn apply_ref(
        &mut self,
        e: EntryRef<'_>,
        v: &mut dyn Crypto,
    ) -> Result<Applied, LedgerError> {
        self.apply_shared(e, v).map(|t| t.applied())
    }

    /// As [`Ledger::apply_ref`], with the entry as the ledger now holds it when it changed
    /// the map.
    pub fn apply_shared(
        &mut self,
        e: EntryRef<'_>,
        v: &mut dyn Crypto,
    ) -> Result<Taken, LedgerError> {
        if e.key.len() > KEY_BYTES_MAX {
            return Err(LedgerError::KeyTooLong(e.key.len()));
        }
        if let Some(bytes) = e.value.map(<[u8]>::len) {
            if bytes > self.value_bytes_max {
                return Err(LedgerError::ValueTooLarge {
                    key: e.key.to_string(),
                    bytes,
                    max: self.value_bytes_max,
                });
            }
        }
        let mine = self.entries.get(&e.owner);
        if mine.is_none() && self.outranks_unheld(&e.owner) {
            return Ok(Taken::Outranked);
        }
        let held = mine.and_then(|m| m.get(e.key));
        if let Some((have, _)) = held {
            if have.version > e.version || (have.version == e.version && have.sig == e.sig) {
                return Ok(Taken::Stale);
            }
        }
        let (digest, admitted) = v.admit(e);
        if let Some((have, d)) = held {
            if (have.version, *d) >= (e.version, digest) {
                return Ok(Taken::Stale);
            }
        }
        let Some(entry) = admitted else {
            return Err(LedgerError::BadSignature {
                key: e.key.to_string(),
            });
        };
        let b = bucket_of(&e.owner);
        let owner = e.owner;
        match self
            .entries
            .entry(owner)
            .or_default()
            .insert((entry.clone(), digest))
        {
            Some((_, old)) => xor_into(&mut self.xor[b], &old),
            None => self.len += 1,
        }
        xor_into(&mut self.xor[b], &digest);
        if self.owner_cap != usize::MAX && self.ranked.insert(owner_rank(&owner)) {
            while self.entries.len() > self.owner_cap {
                let Some((_, worst)) = self.ranked.pop_last() else {
                    break;
                };
                self.evict(&worst);
            }
        }
        Ok(Taken::Changed(entry))
    }

    fn evict(&mut self, owner: &PeerKey) {
        let Some(m) = self.entries.remove(owner) else {
            return;
        };
        let b = bucket_of(owner);
        for (_, d) in m.values() {
            xor_into(&mut self.xor[b], d);
        }
        self.len -= m.len();
        self.evicted.push(*owner);
    }

    /// Merges everything `other` holds (already verified there, verified again here).
    pub fn merge(&mut self, other: &Ledger, v: &mut dyn Crypto) -> usize {
        other
            .entries()
            .filter(|e| matches!(self.apply(e, v), Ok(Applied::Changed)))
            .count()
    }

    /// A digest of the whole map: equal heads, equal ledgers (a hash over the entry count
    /// and the buckets' XORs, so it costs O(1)).
    pub fn head(&self) -> [u8; 32] {
        let mut h = Sha256::new();
        h.update((self.len as u64).to_be_bytes());
        for x in &self.xor {
            h.update(x);
        }
        h.finalize().into()
    }

    /// Entries per bucket.
    pub fn bucket_sizes(&self) -> [usize; BUCKETS] {
        let mut out = [0; BUCKETS];
        for (o, m) in &self.entries {
            out[bucket_of(o)] += m.len();
        }
        out
    }

    /// A short digest per bucket, for a peer to find which buckets differ.
    pub fn bucket_digests(&self) -> [u64; BUCKETS] {
        let mut out = [0u64; BUCKETS];
        for (o, x) in out.iter_mut().zip(&self.xor) {
            *o = u64::from_be_bytes(x[..8].try_into().expect("8 bytes"));
        }
        out
    }

    /// What this replica holds in the buckets of `mask` (bit i: bucket i), each entry's
    /// version and digest, for a peer to answer with what ranks higher.
    pub fn versions(&self, mask: u16) -> Vec<Version> {
        self.entries
            .iter()
            .filter(|(o, _)| mask & (1 << bucket_of(o)) != 0)
            .flat_map(|(_, m)| m.values())
            .map(|(e, digest)| Version {
                owner: e.owner,
                key: e.key.clone(),
                version: e.version,
                digest: *digest,
            })
            .collect()
    }

    /// Entries in the buckets of `mask` that rank above what `theirs` holds, or that they
    /// lack. An equivocating owner's two entries with one version differ in digest, so they
    /// are sent too.
    pub fn newer_than(&self, theirs: &[Version], mask: u16) -> Vec<Arc<Entry>> {
        let known: BTreeMap<(&PeerKey, &str), (u64, [u8; 32])> = theirs
            .iter()
            .map(|v| ((&v.owner, v.key.as_str()), (v.version, v.digest)))
            .collect();
        self.entries
            .iter()
            .filter(|(o, _)| mask & (1 << bucket_of(o)) != 0)
            .flat_map(|(_, m)| m.values())
            .filter(|(e, d)| {
                known
                    .get(&(&e.owner, e.key.as_str()))
                    .is_none_or(|theirs| (e.version, **d) > *theirs)
            })
            .map(|(e, _)| e.clone())
            .collect()
    }

    /// Whether `theirs` names anything that ranks above what this replica holds.
    pub fn lacks_any(&self, theirs: &[Version]) -> bool {
        theirs.iter().any(
            |v| match self.entries.get(&v.owner).and_then(|m| m.get(&v.key)) {
                None => !self.outranked(&v.owner),
                Some((e, d)) => (v.version, v.digest) > (e.version, *d),
            },
        )
    }
}

/// Every bucket.
pub const ALL_BUCKETS: u16 = u16::MAX;

fn xor_into(acc: &mut [u8; 32], d: &[u8; 32]) {
    for (a, b) in acc.iter_mut().zip(d) {
        *a ^= b;
    }
}

/// One line of an anti-entropy summary.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Version {
    pub owner: PeerKey,
    pub key: String,
    pub version: u64,
    pub digest: [u8; 32],
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn signer(n: u8) -> SigningKey {
        SigningKey::from_bytes(&[n; 32])
    }

    proptest! {
        /// Keys compared through their tags order exactly as the strings do (NULs, one a
        /// prefix of the other, lengths either side of the tag's 8 bytes).
        #[test]
        fn key_tags_order_keys_as_strings_do(
            a in "[\\x00ab]{0,10}",
            b in "[\\x00ab]{0,10}",
        ) {
            prop_assert_eq!(cmp_key(key_tag(&a), &a, key_tag(&b), &b), a.as_str().cmp(&b));
        }
    }

    #[test]
    fn an_entry_and_its_borrowed_view_are_the_same_bytes_on_the_wire() {
        for value in [Some(vec![1, 2, 3]), Some(Vec::new()), None] {
            let e = Entry::signed(&signer(7), "member", 3, value);
            let owned = postcard::to_allocvec(&e).unwrap();
            assert_eq!(postcard::to_allocvec(&e.as_ref()).unwrap(), owned);
            let back: EntryRef = postcard::from_bytes(&owned).unwrap();
            assert_eq!(back, e.as_ref());
            assert_eq!(back.to_entry(), e);
            assert_eq!(back.digest(), e.digest());
        }
    }

    #[test]
    fn remembered_records_open_as_fresh_ones_do() {
        use crate::mesh::token::{open, seal};
        let (key, other) = ([7u8; 32], [8u8; 32]);
        let good = seal(&key, [1; 12], b"record");
        let mut tampered = good.clone();
        *tampered.last_mut().expect("not empty") ^= 1;
        let mut memo = MemoCrypto::default();
        for _ in 0..2 {
            for (k, sealed) in [(&key, &good), (&other, &good), (&key, &tampered)] {
                assert_eq!(memo.open_record(k, sealed), open(k, sealed));
            }
        }
        assert_eq!(
            memo.open_record(&key, &good).as_deref(),
            Some(&b"record"[..])
        );
        assert_eq!(memo.open_record(&key, &good[..20]), None);
    }

    #[test]
    fn owners_write_their_own_entries_only() {
        let (a, b) = (signer(1), signer(2));
        let mut l = Ledger::new(1024);
        let mut v = FreshCrypto;
        let e = Entry::signed(&a, "role", 1, Some(b"master".to_vec()));
        assert_eq!(l.apply(&e, &mut v), Ok(Applied::Changed));
        assert_eq!(l.apply(&e, &mut v), Ok(Applied::Stale));
        // b re-signs a's entry under a's name: refused.
        let mut forged = Entry::signed(&b, "role", 2, Some(b"worker".to_vec()));
        forged.owner = a.verifying_key().to_bytes();
        assert_eq!(
            l.apply(&forged, &mut v),
            Err(LedgerError::BadSignature { key: "role".into() })
        );
        // A tampered value breaks the signature.
        let mut tampered = Entry::signed(&a, "role", 3, Some(b"master".to_vec()));
        tampered.value = Some(b"worker".to_vec());
        assert!(l.apply(&tampered, &mut v).is_err());
        assert_eq!(
            l.get(&a.verifying_key().to_bytes(), "role"),
            Some(&b"master"[..])
        );
        // A tombstone deletes.
        let t = Entry::signed(&a, "role", 4, None);
        assert_eq!(l.apply(&t, &mut v), Ok(Applied::Changed));
        assert_eq!(l.get(&a.verifying_key().to_bytes(), "role"), None);
        assert_eq!(l.live().count(), 0);
        let big = Entry::signed(&a, "blob", 5, Some(vec![0; 2048]));
        assert!(matches!(
            l.apply(&big, &mut v),
            Err(LedgerError::ValueTooLarge { .. })
        ));
    }

    #[test]
    fn the_memo_checks_each_signature_once() {
        let a = signer(3);
        let e = Entry::signed(&a, "k", 1, Some(b"v".to_vec()));
        let mut memo = MemoCrypto::default();
        for _ in 0..5 {
            let mut l = Ledger::new(1024);
            l.apply(&e, &mut memo).unwrap();
        }
        assert_eq!((memo.checks, memo.hits), (1, 4));
    }

    #[test]
    fn ledgers_share_one_admitted_copy_and_a_reused_signature_is_no_copy() {
        let a = signer(4);
        let e = Entry::signed(&a, "k", 1, Some(b"v".to_vec()));
        let mut memo = MemoCrypto::default();
        let (mut l1, mut l2) = (Ledger::new(1024), Ledger::new(1024));
        let Ok(Taken::Changed(x1)) = l1.apply_shared(e.as_ref(), &mut memo) else {
            panic!("changed");
        };
        let Ok(Taken::Changed(x2)) = l2.apply_shared(e.as_ref(), &mut memo) else {
            panic!("changed");
        };
        assert!(Arc::ptr_eq(&x1, &x2));
        assert_eq!(*x1, e);
        // The remembered signature over other contents (a relay's forgery) is checked
        // afresh, and refused, whatever field it changes.
        let mut forgeries = vec![e.clone(), e.clone(), e.clone(), e.clone()];
        forgeries[0].value = Some(b"w".to_vec());
        forgeries[1].version = 2;
        forgeries[2].key = "j".into();
        forgeries[3].value = None;
        for f in &forgeries {
            let mut l = Ledger::new(1024);
            assert_eq!(
                l.apply(f, &mut memo),
                Err(LedgerError::BadSignature { key: f.key.clone() })
            );
            assert!(l.is_empty());
        }
        assert_eq!(memo.admitted.len(), 1);
    }

    #[test]
    fn a_full_memo_starts_over_and_answers_the_same() {
        use crate::mesh::token::seal;
        let mut memo = MemoCrypto::bounded(2, 2);
        let entries: Vec<Entry> = (1..=3)
            .map(|i| Entry::signed(&signer(i), "k", 1, Some(vec![i])))
            .collect();
        let mut forged = entries[0].clone();
        forged.value = Some(b"forged".to_vec());
        for e in entries.iter().chain([&forged]).chain(&entries) {
            let good = !std::ptr::eq(e, &forged);
            assert_eq!(memo.verify(&e.owner, &e.signed_bytes(), &e.sig), good);
            assert!(memo.seen.len() <= 2);
        }
        // Four distinct checks fill a memo of two twice over: nothing is remembered long
        // enough for a hit.
        assert_eq!((memo.checks, memo.hits), (7, 0));
        // Admitted copies start over the same way, and a forgery is still refused.
        let mut memo = MemoCrypto::bounded(2, 2);
        for e in entries.iter().chain([&forged]).chain(&entries) {
            let good = !std::ptr::eq(e, &forged);
            let (digest, held) = memo.admit(e.as_ref());
            assert_eq!(digest, e.digest());
            assert_eq!(held.as_deref(), good.then_some(e));
            assert!(memo.admitted.len() <= 2);
        }
        let key = [9u8; 32];
        let records: Vec<Vec<u8>> = (0..3u8).map(|i| seal(&key, [i; 12], &[i])).collect();
        for r in records.iter().chain(&records) {
            assert_eq!(memo.open_record(&key, r), Some(vec![r[0]]));
            assert!(memo.opened_len <= 2);
        }
    }

    /// Signed entries over `owners` owners and `keys` keys, with colliding versions (below
    /// `versions`) and tombstones.
    fn signed_entries(
        owners: u8,
        keys: usize,
        versions: u64,
        len: usize,
    ) -> impl Strategy<Value = Vec<Entry>> {
        let signers: Vec<SigningKey> = (1..=owners).map(signer).collect();
        proptest::collection::vec(
            (
                0..usize::from(owners),
                0..keys,
                0..versions,
                proptest::option::of(0u8..4),
            ),
            0..len,
        )
        .prop_map(move |specs| {
            specs
                .into_iter()
                .map(|(o, k, ver, val)| {
                    Entry::signed(&signers[o], &format!("k{k}"), ver, val.map(|x| vec![x]))
                })
                .collect()
        })
    }

    fn entries() -> impl Strategy<Value = Vec<Entry>> {
        signed_entries(3, 3, 4, 24)
    }

    fn ledger(es: &[Entry], v: &mut MemoCrypto) -> Ledger {
        let mut l = Ledger::new(16);
        for e in es {
            let _ = l.apply(e, v);
        }
        l
    }

    fn merged(a: &Ledger, b: &Ledger, v: &mut MemoCrypto) -> Ledger {
        let mut m = a.clone();
        m.merge(b, v);
        m
    }

    /// Signed entries over 6 owners, for ledgers capped below that.
    fn capped_entries() -> impl Strategy<Value = Vec<Entry>> {
        signed_entries(6, 2, 3, 30)
    }

    fn capped(es: &[Entry], v: &mut MemoCrypto) -> Ledger {
        let mut l = Ledger::with_owner_cap(16, 3);
        for e in es {
            let _ = l.apply(e, v);
        }
        l
    }

    /// What a replica holds, for comparing capped replicas (their eviction logs differ).
    fn held(l: &Ledger) -> ([u8; 32], Vec<Entry>) {
        (l.head(), l.entries().cloned().collect())
    }

    #[test]
    fn a_capped_ledger_keeps_the_best_ranked_owners() {
        let signers: Vec<SigningKey> = (1..=6).map(signer).collect();
        let mut owners: Vec<PeerKey> = signers
            .iter()
            .map(|s| s.verifying_key().to_bytes())
            .collect();
        owners.sort_by_key(owner_rank);
        let mut v = FreshCrypto;
        let mut l = Ledger::with_owner_cap(16, 3);
        // Worst first: each better owner evicts the worst held once the cap is reached.
        for o in owners.iter().rev() {
            let s = signers
                .iter()
                .find(|s| s.verifying_key().to_bytes() == *o)
                .unwrap();
            l.apply(&Entry::signed(s, "a", 1, Some(vec![1])), &mut v)
                .unwrap();
            l.apply(&Entry::signed(s, "b", 1, Some(vec![2])), &mut v)
                .unwrap();
        }
        let kept: Vec<PeerKey> = l.entries().map(|e| e.owner).collect();
        assert_eq!(l.owners(), 3);
        assert_eq!(l.len(), 6);
        assert!(owners[..3].iter().all(|o| kept.contains(o)));
        assert_eq!(
            l.take_evicted(),
            owners[3..].iter().rev().copied().collect::<Vec<_>>()
        );
        // The worst owner is refused now, without a signature check, and a summary naming
        // only it does not make the ledger ask for it.
        let worst = signers
            .iter()
            .find(|s| s.verifying_key().to_bytes() == owners[5])
            .unwrap();
        let mut e = Entry::signed(worst, "a", 2, Some(vec![3]));
        e.sig = [0; 64];
        assert_eq!(l.apply(&e, &mut v), Ok(Applied::Outranked));
        let mut lw = Ledger::new(16);
        lw.apply(&Entry::signed(worst, "a", 2, Some(vec![3])), &mut v)
            .unwrap();
        assert!(!l.lacks_any(&lw.versions(ALL_BUCKETS)));
        // Evicting keeps the head consistent with what is held.
        let mut fresh = Ledger::with_owner_cap(16, 3);
        fresh.merge(&l, &mut v);
        assert_eq!(fresh.head(), l.head());
    }

    proptest! {
        #[test]
        fn merge_is_commutative_associative_idempotent(
            a in entries(), b in entries(), c in entries()
        ) {
            let mut v = MemoCrypto::default();
            let (la, lb, lc) = (ledger(&a, &mut v), ledger(&b, &mut v), ledger(&c, &mut v));
            prop_assert_eq!(merged(&la, &lb, &mut v), merged(&lb, &la, &mut v));
            prop_assert_eq!(
                merged(&merged(&la, &lb, &mut v), &lc, &mut v),
                merged(&la, &merged(&lb, &lc, &mut v), &mut v)
            );
            prop_assert_eq!(merged(&la, &la, &mut v), la.clone());
            // The order entries arrive in does not matter either.
            let mut rev = a.clone();
            rev.reverse();
            prop_assert_eq!(ledger(&rev, &mut v).head(), la.head());
        }

        /// Capped to the best 3 of 6 owners, merging is still a join: the kept set is the
        /// top 3 of every owner seen, whatever the order or grouping.
        #[test]
        fn capped_merge_is_a_join_too(a in capped_entries(), b in capped_entries(), c in capped_entries()) {
            let mut v = MemoCrypto::default();
            let (la, lb, lc) = (capped(&a, &mut v), capped(&b, &mut v), capped(&c, &mut v));
            prop_assert_eq!(held(&merged(&la, &lb, &mut v)), held(&merged(&lb, &la, &mut v)));
            prop_assert_eq!(
                held(&merged(&merged(&la, &lb, &mut v), &lc, &mut v)),
                held(&merged(&la, &merged(&lb, &lc, &mut v), &mut v))
            );
            prop_assert_eq!(held(&merged(&la, &la, &mut v)), held(&la));
            let mut rev = a.clone();
            rev.reverse();
            prop_assert_eq!(held(&capped(&rev, &mut v)), held(&la));
            // The same as an uncapped ledger restricted to the best 3 owners seen.
            let full = ledger(&a, &mut v);
            let mut owners: Vec<PeerKey> = a.iter().map(|e| e.owner).collect();
            owners.sort_by_key(owner_rank);
            owners.dedup();
            owners.truncate(3);
            let want: Vec<Entry> = full.entries().filter(|e| owners.contains(&e.owner)).cloned().collect();
            prop_assert_eq!(la.entries().cloned().collect::<Vec<_>>(), want);
        }

        #[test]
        fn anti_entropy_converges_two_replicas(a in entries(), b in entries()) {
            let mut v = MemoCrypto::default();
            let (mut la, mut lb) = (ledger(&a, &mut v), ledger(&b, &mut v));
            for e in lb.newer_than(&la.versions(ALL_BUCKETS), ALL_BUCKETS) {
                let _ = la.apply(&e, &mut v);
            }
            for e in la.newer_than(&lb.versions(ALL_BUCKETS), ALL_BUCKETS) {
                let _ = lb.apply(&e, &mut v);
            }
            prop_assert_eq!(la.head(), lb.head());
            prop_assert_eq!(la, lb);
        }

        /// Replicas that exchange summaries of only the buckets whose digests differ end up
        /// equal, and then every bucket digest agrees.
        #[test]
        fn exchanging_only_differing_buckets_converges(a in entries(), b in entries()) {
            let mut v = MemoCrypto::default();
            let (mut la, mut lb) = (ledger(&a, &mut v), ledger(&b, &mut v));
            let (da, db) = (la.bucket_digests(), lb.bucket_digests());
            let mask = (0..BUCKETS).filter(|&i| da[i] != db[i]).fold(0u16, |m, i| m | (1 << i));
            let (va, vb) = (la.versions(mask), lb.versions(mask));
            prop_assert_eq!(lb.lacks_any(&va), !la.newer_than(&vb, mask).is_empty());
            for e in lb.newer_than(&va, mask) {
                let _ = la.apply(&e, &mut v);
            }
            for e in la.newer_than(&vb, mask) {
                let _ = lb.apply(&e, &mut v);
            }
            prop_assert_eq!(la.bucket_digests(), lb.bucket_digests());
            prop_assert_eq!(la, lb);
        }
    }
}
