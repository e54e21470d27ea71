//! One mesh node's coordination logic, sans IO, in the style of quinn-proto: the driver feeds
//! it what happened (`handle_*(now, ...)`), takes what it wants done (`poll_action`), what
//! it decided (`poll_event`), and calls [`Node::handle_timeout`] at [`Node::poll_timeout`].
//! `now` is the node's own clock; all randomness comes from the [`Rng`] it was built with.
//!
//! ## What it does
//! - **Discovery**: dials the bootstrap nodes (rendezvous + relay + AutoNAT servers),
//!   registers a sealed record under the token's current rendezvous key and discovers others
//!   there; asks mDNS on the LAN; learns every member's reachability from the ledger.
//! - **Reachability**: AutoNAT probes through the bootstrap nodes. A node that is not
//!   reachable reserves a slot on a relay, renews it at 3/4 of its TTL, and picks another
//!   relay when one refuses or goes away.
//! - **Paths**: the peers a node wants (all of them in a small mesh; in a large one its two
//!   successors and predecessors on the ring of ids plus the best by rendezvous hashing, so
//!   the overlay is connected) are dialed directly when they are public or on the same LAN,
//!   else through their relay; the side that accepts a relayed connection hole-punches
//!   (DCUtR); once a direct connection exists the relayed one is closed.
//! - **Token gate**: the first message on a connection (Hello) is sealed (ChaCha20-Poly1305)
//!   with the token's sealing key for the current window (the previous and next are
//!   accepted, for skewed clocks); a connection whose Hello does not open is closed and the
//!   peer marked foreign. Nothing else is sent on a connection until the peer's Hello opened,
//!   and nothing else is acted on before (a plain frame that overtakes the Hello waits for
//!   it, at most `HELD_FRAMES_MAX` per connection): the connection is then the peer's, as
//!   libp2p's transport (Noise, authenticated by peer id, end to end through relays too)
//!   keeps it, so later messages travel as plain frames inside it. A peer without the token
//!   reads nothing but a sealed Hello and changes nothing.
//! - **Ledger**: owner-signed entries merged as a CRDT; fresh entries are pushed (batched)
//!   250 ms after they arrive, to a random ~ln N + 1 token peers, who pass them on. One end
//!   of each connection sends its 16 bucket digests every 10 s while anything changes
//!   (backing off to 40 s when quiet); differing buckets start a push-pull exchange of
//!   version summaries, one pull at a time (a head heard meanwhile is compared when the pull
//!   is answered), in bounded batches.
//! - **Roles**: Kairos-compatible mode, or the default quorum mode (see [`Mode`]).
//!
//! ## How it maps to libp2p (for the real driver)
//! | core | libp2p |
//! |---|---|
//! | `Action::Dial` | `Swarm::dial` with `DialOpts::peer_id(..).addresses(..)` (QUIC, port reuse) |
//! | `Action::DialRelayed` | `Swarm::dial` of `/ip4/../p2p/RELAY/p2p-circuit/p2p/TARGET` |
//! | `Action::Reserve` | `Swarm::listen_on(/p2p/RELAY/p2p-circuit)`; `relay::client::Event::ReservationReqAccepted` -> `handle_reserved` |
//! | hole punching | `dcutr::Behaviour` runs by itself; `dcutr::Event` -> `handle_hole_punch` |
//! | `Action::AutoNatProbe` | `autonat::Behaviour` probes; `autonat::Event::StatusChanged` -> `handle_autonat` |
//! | `Action::MdnsQuery` | `mdns::tokio::Behaviour` (queries on its own interval); `mdns::Event::Discovered` -> `handle_mdns` |
//! | `Action::Register` / `Discover` | `rendezvous::client::Behaviour::register` / `discover`; `Event::Discovered` -> `handle_discovered` |
//! | `Action::Send` | `request_response` (or a raw stream) on protocol `/bootyard/mesh/1`, bytes as given |
//! | `Action::Close` | `Swarm::close_connection` |
//! | `handle_connected` / `handle_closed` / `handle_dial_failed` | `SwarmEvent::ConnectionEstablished` (`endpoint` tells relayed from direct; `identify::Event::Received.observed_addr` gives `observed`) / `ConnectionClosed` / `OutgoingConnectionError` |
//!
//! Peers are named by [`NetId`], the transport's id (libp2p: the `PeerId`; the simulator:
//! the host); the ledger names owners by their ed25519 key.

use std::borrow::Cow;
use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::SocketAddrV4 as Addr;
use std::rc::Rc;
use std::sync::Arc;

use bootyard_sim::{Duration, Instant, Rng};
use ed25519_dalek::SigningKey;
use serde::{Deserialize, Serialize};

use super::ledger::{Crypto, Entry, EntryRef, Ledger, PeerKey, Taken, Version, BUCKETS};
use super::roles::{fnv32a, kairos_assign, kairos_leader, key_fnv, key_rank, Assignment, Role};
use super::token::{self, NetworkToken};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct NetId(pub u64);

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ConnRef(pub u64);

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PathKind {
    Direct,
    Relayed { relay: NetId },
}

/// How to reach a node: its direct addresses (listen and observed), whether AutoNAT found it
/// reachable, and the relay it holds a reservation on.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Reach {
    pub direct: Vec<Addr>,
    pub public: bool,
    pub relay: Option<(NetId, Addr)>,
}

/// A bootstrap node: rendezvous server, relay and AutoNAT server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bootstrap {
    pub net: NetId,
    pub addr: Addr,
}

/// How roles are elected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// Kairos's algorithm: once `minimum_nodes` are seen, the largest FNV-32a id leads and
    /// assigns roles at random. Two leaders with different views assign twice (split brain),
    /// and nothing heals a lost master.
    Kairos,
    /// The default. Founding: once `minimum_nodes` (M) members are seen and the view has
    /// settled, each node votes (a signed ledger entry, one per epoch) for the largest FNV-32a
    /// id among the M largest it sees; a candidate with votes from a strict majority of those
    /// M writes the founding record and is the cluster-init master. Every later epoch needs a
    /// majority of the same founding electorate, so after founding two sides of a partition
    /// can never both elect. The leader and masters renew signed leases (not stored; sent to
    /// the council, the leader, masters and electorate, who hold paths to each other and pass
    /// them on among themselves); when the leader's lease stops moving, the electorate votes
    /// for the best master whose lease is fresh, in a new epoch; the leader replaces masters
    /// whose leases stop.
    /// The highest epoch descending from the founding wins. Caveat: the founding itself is
    /// only as safe as views agree: groups that never saw each other (each with M members)
    /// can each found a cluster; the lowest epoch is then followed everywhere once they meet.
    Quorum,
}

#[derive(Debug, Clone)]
pub struct NodeConfig {
    pub net: NetId,
    pub token: Arc<NetworkToken>,
    /// Seconds since the Unix epoch at the node's `Instant::ZERO` (token windows are
    /// wall-clock windows).
    pub epoch_secs: u64,
    pub mode: Mode,
    pub minimum_nodes: usize,
    pub ha_masters: usize,
    pub bootstrap: Vec<Bootstrap>,
    pub mdns: bool,
    /// Peers a node keeps paths to (all of them, when the mesh is no bigger).
    pub target_peers: usize,
    pub k3s_port: u16,
    pub lease_interval: Duration,
    pub lease_timeout: Duration,
    pub discover_interval: Duration,
    pub head_interval: Duration,
    /// The addresses the driver listens on (libp2p: the swarm's listen addresses).
    pub listen: Vec<Addr>,
    /// Bootstrap nodes a node keeps connections to, registers and discovers at (the best
    /// by rendezvous hashing of the pair, so the load spreads over the list).
    pub bootstrap_conns: usize,
    /// Owners whose entries the ledger keeps (the best-ranked; 0: the default, see
    /// [`NodeConfig::ledger_owner_cap`]).
    pub ledger_owners: usize,
}

impl NodeConfig {
    pub fn new(net: NetId, token: Arc<NetworkToken>) -> Self {
        Self {
            net,
            token,
            epoch_secs: 1_800_000_000,
            mode: Mode::Quorum,
            minimum_nodes: 3,
            ha_masters: 2,
            bootstrap: Vec::new(),
            mdns: true,
            target_peers: 8,
            k3s_port: 6443,
            lease_interval: Duration::from_secs(10),
            lease_timeout: Duration::from_secs(45),
            discover_interval: Duration::from_secs(30),
            head_interval: Duration::from_secs(10),
            listen: Vec::new(),
            bootstrap_conns: 3,
            ledger_owners: 0,
        }
    }

    /// The ledger's owner cap: Kairos mode keeps every member (its leader assigns a role to
    /// each, as Kairos does); the quorum mode needs the best-ranked members only (the
    /// electorate, and candidates for masters), so a mesh of any size replicates a bounded
    /// ledger: by default four times what an election reads, and at least 32.
    pub fn ledger_owner_cap(&self) -> usize {
        match (self.mode, self.ledger_owners) {
            (Mode::Kairos, _) => usize::MAX,
            (Mode::Quorum, 0) => (4 * self.minimum_nodes.max(self.ha_masters + 1)).max(32),
            (Mode::Quorum, n) => n,
        }
    }
}

/// What the node wants its driver to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Dial {
        peer: NetId,
        addrs: Vec<Addr>,
    },
    DialRelayed {
        relay: NetId,
        target: NetId,
    },
    Reserve {
        relay: NetId,
    },
    Send {
        conn: ConnRef,
        bytes: Vec<u8>,
    },
    Close {
        conn: ConnRef,
    },
    MdnsQuery,
    Register {
        server: NetId,
        ns: u64,
        ttl: Duration,
        record: Vec<u8>,
    },
    Discover {
        server: NetId,
        ns: u64,
        limit: u32,
    },
    AutoNatProbe {
        server: NetId,
    },
}

/// The K3s server address and join token every worker needs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinData {
    pub server: String,
    pub token: String,
}

/// What the node decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeEvent {
    /// Start K3s as the cluster-init master (happens at most once per node).
    ClusterInit,
    Role {
        role: Role,
        epoch: u64,
    },
    Join(JoinData),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Member {
    net: NetId,
    name: String,
    reach: Reach,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Vote {
    epoch: u64,
    candidate: PeerKey,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cluster {
    pub epoch: u64,
    /// The epoch the cluster was founded in (its leader then ran cluster-init).
    pub founded: u64,
    pub leader: PeerKey,
    pub electorate: Vec<PeerKey>,
    pub masters: Vec<PeerKey>,
    pub join: JoinData,
}

impl Cluster {
    /// The council: the leader, masters and electorate, the nodes that read leases.
    pub fn in_council(&self, k: &PeerKey) -> bool {
        self.leader == *k || self.masters.contains(k) || self.electorate.contains(k)
    }
}

/// Entries travel borrowed (see [`EntryRef`]): decoding a message allocates for what changes
/// the ledger only.
#[derive(Debug, Clone, Serialize, Deserialize)]
enum Wire<'a> {
    /// Our key, how to reach us, and our ledger's bucket digests.
    Hello {
        key: PeerKey,
        reach: Reach,
        buckets: [u64; BUCKETS],
    },
    Head([u64; BUCKETS]),
    /// A summary of the buckets in `mask`; `reply` marks the answer to one (not answered).
    Versions {
        versions: Vec<Version>,
        mask: u16,
        reply: bool,
    },
    /// Entries: pushed as fresh news (`push`, passed on), or answering a pull (not passed on:
    /// the rest of the mesh has them).
    Entries {
        #[serde(borrow)]
        entries: Vec<EntryRef<'a>>,
        push: bool,
    },
    /// A master's signed lease renewal (key `lease`, version = its clock in ms). Leases are
    /// soft state, never stored in the ledger (a converged ledger stays still), and go to
    /// the council only: the leader, masters and electorate are the only readers.
    Lease(Entry),
}

/// The first byte of a message: a sealed Hello, or a plain frame on a verified connection.
const FRAME_SEALED: u8 = 0;
const FRAME_PLAIN: u8 = 1;

/// A rendezvous record: sealed, so only token holders can read it.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Record {
    net: NetId,
    reach: Reach,
}

const K_MEMBER: &str = "member";
const K_VOTE: &str = "vote";
const K_CLUSTER: &str = "cluster";
const K_LEASE: &str = "lease";
const K_ROLES: &str = "kairos/roles";
const K_JOIN: &str = "kairos/join";

/// Bootstrap nodes (configured, plus relays peers hold reservations on) a node keeps track of.
pub const INFRA_MAX: usize = 64;

/// A sync reply carries at most this many bytes of entries (a relayed circuit may be capped at
/// 128 KiB); what does not fit follows in the next round.
pub const SYNC_BATCH_BYTES: usize = 64 << 10;

/// A summary covers at most this many entries; further differing buckets wait for the next
/// round.
pub const SYNC_VERSIONS_MAX: usize = 600;

/// A node publishes its member entry once its reachability is known, or after this long
/// (founding waits for it).
pub const PUBLISH_GRACE: Duration = Duration::from_secs(10);

/// Peers a node keeps track of from discovery (connected peers and ledger members come on
/// top): enough to pick paths from, bounded however large the mesh.
pub const PEERS_MAX: usize = 128;

/// Failed dials in a row after which a peer stops being wanted (until news of it arrives).
pub const PEER_FAILURES_MAX: u32 = 3;

/// How long news waits before it is pushed on, so that what arrives together travels
/// together (one batch per peer).
pub const FLUSH_DELAY: Duration = Duration::from_millis(250);

/// Plain frames held per connection while the peer's Hello has not opened.
pub const HELD_FRAMES_MAX: usize = 8;

/// A message or record larger than this is refused before it is opened.
pub const SEALED_BYTES_MAX: usize = 4 << 20;

#[derive(Debug, Default)]
struct Peer {
    key: Option<PeerKey>,
    reach: Reach,
    /// Its connections, in id order (one or two: a small vector, not a tree).
    conns: Vec<PeerConn>,
    dialing: bool,
    failures: u32,
    next_try: Instant,
    /// Found by mDNS: on our LAN, its listen address works.
    lan: Option<Addr>,
    /// Sent something that did not open with our token.
    foreign: bool,
    /// The last hole punch with it failed: only a relay connects us.
    punch_failed: bool,
    /// The nonce of its rendezvous record we opened last.
    record: Option<u64>,
}

#[derive(Debug, Clone, Copy)]
struct PeerConn {
    conn: ConnRef,
    path: PathKind,
    /// The conn's first message opened with the token.
    verified: bool,
}

impl Peer {
    /// Its best verified connection (direct before relayed, then the older) and that path's
    /// kind.
    fn best_verified(&self) -> Option<(ConnRef, PathKind)> {
        self.conns
            .iter()
            .filter(|c| c.verified)
            .min_by_key(|c| c.path)
            .map(|c| (c.conn, c.path))
    }

    fn any_verified(&self) -> bool {
        self.conns.iter().any(|c| c.verified)
    }

    fn conn(&self, conn: ConnRef) -> Option<&PeerConn> {
        self.conns.iter().find(|c| c.conn == conn)
    }

    fn conn_mut(&mut self, conn: ConnRef) -> Option<&mut PeerConn> {
        self.conns.iter_mut().find(|c| c.conn == conn)
    }
}

#[derive(Debug, Default)]
struct Infra {
    addr: Option<Addr>,
    conn: Option<ConnRef>,
    dialing: bool,
    next_try: Instant,
    autonat: Option<bool>,
    /// The rendezvous namespace and reachability we registered (and `reach_gen` then).
    registered: Option<(u64, u64, Reach)>,
    next_discover: Instant,
    /// Discovery starts eager and backs off to `discover_interval`.
    discover_gap: Duration,
    /// One of the node's home bootstrap nodes (kept connected, registered and discovered
    /// at); any other is dialed only while a wanted peer's relay needs it.
    home: bool,
    needed_until: Instant,
}

#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize)]
pub struct NodeStats {
    pub messages_sent: u64,
    pub bytes_sent: u64,
    pub messages_refused: u64,
    pub entries_applied: u64,
    pub hole_punches: u64,
    pub hole_punches_ok: u64,
    /// Messages and bytes sent per kind: hello, head, versions, entries, lease.
    pub messages_by_kind: [u64; 5],
    pub bytes_by_kind: [u64; 5],
}

pub struct Node {
    cfg: NodeConfig,
    signer: SigningKey,
    me: PeerKey,
    name: String,
    rng: Rng,
    ledger: Ledger,
    /// Looked up by binary search over the ids alone, walked in id order like a map, and
    /// in two allocations (a B-tree's nodes have room for 11 values each, mostly empty).
    peers: VecMap<NetId, Peer>,
    infra: BTreeMap<NetId, Infra>,
    /// Each connection's peer, with the peer's slot in `peers` as a look-up hint.
    conn_peer: VecMap<ConnRef, (NetId, u32)>,
    /// Peer connections whose first message has not opened yet, since when.
    unverified: BTreeMap<ConnRef, Instant>,
    /// Connections the peer has not yet shown it opened our Hello on (by a plain frame),
    /// with when we last sent it: a Hello lost or overtaken is sent again.
    hello_unacked: BTreeMap<ConnRef, Instant>,
    /// Plain frames that arrived before the peer's Hello opened, per connection (at most
    /// `HELD_FRAMES_MAX` each and `SEALED_BYTES_MAX` in all), and their bytes.
    held: BTreeMap<ConnRef, Vec<Vec<u8>>>,
    held_bytes: usize,
    reach: Reach,
    /// Bumped whenever `reach` changes (see [`Node::set_reach`]).
    reach_gen: u64,
    relay: Option<(NetId, Instant)>,
    reserving: Option<NetId>,
    relay_next_try: Instant,
    actions: VecDeque<Action>,
    events: VecDeque<NodeEvent>,
    /// Entries changed since the last push, with the peers known to hold them already (the
    /// one it came from, and any that pushed us a copy before the flush).
    outbox: Vec<(Arc<Entry>, Vec<NetId>)>,
    flush_at: Option<Instant>,
    next_maintenance: Instant,
    next_head: Instant,
    /// The gap to the next head round: `head_interval`, doubling (up to 4x) while nothing
    /// changes, back to `head_interval` on any change or differing head.
    head_gap: Duration,
    next_mdns: Instant,
    /// When peers dropped for failing are looked at again.
    next_revive: Instant,
    next_lease: Instant,
    lease_version: u64,
    /// Per owner of a lease: the version seen and when (our clock) it last moved.
    leases: BTreeMap<PeerKey, (u64, Instant)>,
    started: Instant,
    cluster_init_done: bool,
    my_role: Option<(Role, u64)>,
    my_join: Option<JoinData>,
    /// Our latest vote's epoch and when we cast it (a vote that led nowhere for a lease
    /// timeout moves on to the next epoch).
    vote_cast: Option<(u64, Instant)>,
    /// Candidates that never claimed an epoch we voted them in.
    skipped: BTreeSet<PeerKey>,
    /// The decision's epoch `skipped` was collected under.
    skipped_epoch: u64,
    member_version: u64,
    seal_cache: Option<(u64, [[u8; 32]; 3])>,
    ns_cache: Option<(u64, u64)>,
    /// A pull (summary sent, entries awaited) is outstanding until then.
    pull_until: Option<Instant>,
    /// A differing head heard while a pull was outstanding (the latest), compared once
    /// the pull is answered.
    deferred: Option<(ConnRef, [u64; BUCKETS])>,
    head_cache: Memo<[u8; 32]>,
    /// Bumped on every ledger change; what is derived from the ledger is cached per value.
    gen: u64,
    /// Members, kept up to date entry by entry; those changed since the peer table last
    /// looked.
    member_table: BTreeMap<PeerKey, Member>,
    member_changed: BTreeSet<PeerKey>,
    /// Bumped when a vote, cluster or Kairos entry changes.
    roles_gen: u64,
    members_stable_since: Instant,
    members_grew: bool,
    cluster_cache: Memo<Option<Arc<Cluster>>>,
    /// Bumped whenever what decides the wanted peers changes.
    peers_gen: u64,
    wanted_cache: Memo<Rc<[NetId]>, (u64, u64)>,
    /// Peers at [`PEER_FAILURES_MAX`] failed dials or more (see [`set_failures`]).
    failed_peers: usize,
    /// Bumped whenever a peer connection opens, closes or is verified.
    conns_gen: u64,
    connected_cache: Memo<Rc<[(NetId, ConnRef)]>>,
    unpathed_cache: Memo<Rc<[NetId]>, (u64, u64)>,
    /// Per (ledger, reach) generation: whether the ledger holds our member entry as it
    /// should read now, whether it holds one at all, and whether our rank keeps us out.
    publish_cache: Memo<(bool, bool, bool), (u64, u64)>,
    /// Per ledger generation: the members in election rank order, best first.
    ranked_cache: Memo<Rc<[PeerKey]>>,
    /// Per (ledger, peers, connections) generation: whether a peer we talk to would rank
    /// into the electorate but has not published yet (see [`Node::elect_quorum`]).
    coming_cache: Memo<bool, (u64, u64, u64)>,
    pub stats: NodeStats,
}

/// A map for the node's tables of a few hundred entries at most: a sorted vector of keys,
/// each with the slot of its value in an unsorted vector. A look-up searches the small
/// keys (a few cache lines) and touches one value; an insert shifts keys, never values;
/// walks go in key order. Contiguous, and cheap to drop.
#[derive(Debug)]
struct VecMap<K, V> {
    keys: Vec<(K, u32)>,
    slots: Vec<(K, V)>,
}

impl<K, V> Default for VecMap<K, V> {
    fn default() -> Self {
        Self {
            keys: Vec::new(),
            slots: Vec::new(),
        }
    }
}

impl<K: Ord + Copy, V> VecMap<K, V> {
    fn find(&self, k: &K) -> Result<usize, usize> {
        self.keys.binary_search_by(|(x, _)| x.cmp(k))
    }

    fn slot(&self, i: usize) -> usize {
        self.keys[i].1 as usize
    }

    fn get(&self, k: &K) -> Option<&V> {
        self.find(k).ok().map(|i| &self.slots[self.slot(i)].1)
    }

    fn get_mut(&mut self, k: &K) -> Option<&mut V> {
        let i = self.find(k).ok()?;
        let s = self.slot(i);
        Some(&mut self.slots[s].1)
    }

    /// As [`VecMap::get`], straight to the slot when the hint still holds `k`.
    fn get_hinted(&self, k: &K, hint: u32) -> Option<&V> {
        match self.slots.get(hint as usize) {
            Some((x, v)) if x == k => Some(v),
            _ => self.get(k),
        }
    }

    fn get_mut_hinted(&mut self, k: &K, hint: u32) -> Option<&mut V> {
        match self.slots.get(hint as usize) {
            Some((x, _)) if x == k => Some(&mut self.slots[hint as usize].1),
            _ => self.get_mut(k),
        }
    }

    fn get_or_default(&mut self, k: K) -> &mut V
    where
        V: Default,
    {
        self.get_or_default_slot(k).1
    }

    /// As [`VecMap::get_or_default`], with the value's slot: a hint for
    /// [`VecMap::get_hinted`] (slots move only when a removal fills the gap with the last).
    fn get_or_default_slot(&mut self, k: K) -> (u32, &mut V)
    where
        V: Default,
    {
        let i = match self.find(&k) {
            Ok(i) => i,
            Err(i) => {
                self.insert_at(i, k, V::default());
                i
            }
        };
        let s = self.keys[i].1;
        (s, &mut self.slots[s as usize].1)
    }

    fn insert(&mut self, k: K, v: V) {
        match self.find(&k) {
            Ok(i) => {
                let s = self.slot(i);
                self.slots[s].1 = v;
            }
            Err(i) => self.insert_at(i, k, v),
        }
    }

    /// A new key at position `i` of the keys (where `find` said it belongs).
    fn insert_at(&mut self, i: usize, k: K, v: V) {
        // Grown by a quarter, not doubled: a peer table settles at one or two hundred
        // entries, where doubling left up to half of it empty (at 1,000 nodes the state
        // estimate fell from 65 to 55 KB a node).
        if self.slots.len() == self.slots.capacity() {
            let more = (self.slots.len() / 4).max(4);
            self.slots.reserve_exact(more);
            self.keys.reserve_exact(more);
        }
        let s = self.slots.len();
        self.slots.push((k, v));
        self.keys
            .insert(i, (k, u32::try_from(s).expect("a node's table fits u32")));
    }

    fn contains_key(&self, k: &K) -> bool {
        self.find(k).is_ok()
    }

    fn remove(&mut self, k: &K) -> Option<V> {
        let i = self.find(k).ok()?;
        let s = self.slot(i);
        self.keys.remove(i);
        let (_, v) = self.slots.swap_remove(s);
        // The value that filled the slot keeps its key's pointer right.
        if let Some((moved, _)) = self.slots.get(s) {
            let j = self.find(moved).expect("every slot has its key");
            self.keys[j].1 = s as u32;
        }
        Some(v)
    }

    fn len(&self) -> usize {
        self.keys.len()
    }

    /// The bytes the two vectors hold (their capacity).
    fn heap_bytes(&self) -> usize {
        self.keys.capacity() * std::mem::size_of::<(K, u32)>()
            + self.slots.capacity() * std::mem::size_of::<(K, V)>()
    }

    fn iter(&self) -> impl Iterator<Item = (&K, &V)> {
        self.keys.iter().map(|&(_, s)| {
            let (k, v) = &self.slots[s as usize];
            (k, v)
        })
    }

    fn values(&self) -> impl Iterator<Item = &V> {
        self.iter().map(|(_, v)| v)
    }

    /// In no particular order.
    fn values_mut_unordered(&mut self) -> impl Iterator<Item = &mut V> {
        self.slots.iter_mut().map(|(_, v)| v)
    }
}

/// A value derived from state that carries a generation (a counter, or a tuple of them):
/// recomputed only when the generation moved.
struct Memo<T, G = u64>(RefCell<Option<(G, T)>>);

impl<T, G> Default for Memo<T, G> {
    fn default() -> Self {
        Self(RefCell::new(None))
    }
}

impl<T: Clone, G: PartialEq> Memo<T, G> {
    /// The value last computed, whatever its generation.
    fn peek(&self) -> Option<T> {
        self.0.borrow().as_ref().map(|(_, v)| v.clone())
    }

    /// The value, if computed for this generation.
    fn fresh(&self, generation: &G) -> Option<T> {
        self.0
            .borrow()
            .as_ref()
            .filter(|(g, _)| g == generation)
            .map(|(_, v)| v.clone())
    }

    fn get(&self, generation: G, compute: impl FnOnce() -> T) -> T {
        if let Some(v) = self.fresh(&generation) {
            return v;
        }
        let v = compute();
        *self.0.borrow_mut() = Some((generation, v.clone()));
        v
    }
}

fn name_of(key: &PeerKey) -> String {
    hex::encode(&key[..8])
}

fn secs(cfg: &NodeConfig, now: Instant) -> u64 {
    cfg.epoch_secs + now.as_micros() / 1_000_000
}

impl Node {
    pub fn new(cfg: NodeConfig, signer: SigningKey, mut rng: Rng, now: Instant) -> Self {
        let me = signer.verifying_key().to_bytes();
        let mut by_score: Vec<(u64, NetId)> = cfg
            .bootstrap
            .iter()
            .map(|b| (pair_score(cfg.net, b.net), b.net))
            .collect();
        by_score.sort();
        let home: BTreeSet<NetId> = by_score
            .iter()
            .take(cfg.bootstrap_conns.max(1))
            .map(|(_, n)| *n)
            .collect();
        let infra = cfg
            .bootstrap
            .iter()
            .map(|b| {
                (
                    b.net,
                    Infra {
                        addr: Some(b.addr),
                        home: home.contains(&b.net),
                        ..Infra::default()
                    },
                )
            })
            .collect();
        let ledger = Ledger::with_owner_cap(
            cfg.token.max_message_size.min(1 << 20) as usize,
            cfg.ledger_owner_cap(),
        );
        let jitter = Duration::from_millis(rng.below(1000));
        Self {
            name: name_of(&me),
            me,
            signer,
            rng,
            ledger,
            peers: VecMap::default(),
            infra,
            conn_peer: VecMap::default(),
            unverified: BTreeMap::new(),
            hello_unacked: BTreeMap::new(),
            held: BTreeMap::new(),
            held_bytes: 0,
            reach: Reach {
                direct: cfg.listen.clone(),
                ..Reach::default()
            },
            reach_gen: 0,
            relay: None,
            reserving: None,
            relay_next_try: now,
            actions: VecDeque::new(),
            events: VecDeque::new(),
            outbox: Vec::new(),
            flush_at: None,
            next_maintenance: now,
            next_head: now + cfg.head_interval + jitter,
            head_gap: cfg.head_interval,
            next_mdns: now,
            next_revive: now,
            next_lease: now,
            lease_version: 0,
            leases: BTreeMap::new(),
            started: now,
            cluster_init_done: false,
            my_role: None,
            my_join: None,
            vote_cast: None,
            skipped: BTreeSet::new(),
            skipped_epoch: 0,
            member_version: 0,
            seal_cache: None,
            ns_cache: None,
            pull_until: None,
            deferred: None,
            head_cache: Memo::default(),
            gen: 0,
            member_table: BTreeMap::new(),
            member_changed: BTreeSet::new(),
            roles_gen: 0,
            members_stable_since: now,
            members_grew: false,
            cluster_cache: Memo::default(),
            peers_gen: 0,
            wanted_cache: Memo::default(),
            failed_peers: 0,
            conns_gen: 0,
            connected_cache: Memo::default(),
            unpathed_cache: Memo::default(),
            publish_cache: Memo::default(),
            ranked_cache: Memo::default(),
            coming_cache: Memo::default(),
            stats: NodeStats::default(),
            cfg,
        }
    }

    /// Takes back the ledger a previous run of this node kept on disk (its own votes and
    /// entries must survive a restart: a node never votes twice in one epoch).
    pub fn restore(&mut self, ledger: Ledger) {
        self.ledger = ledger;
        self.gen += 1;
        let all: Vec<Entry> = self.ledger.entries().cloned().collect();
        for e in &all {
            self.entry_changed(e);
        }
        self.member_version = self
            .ledger
            .entry(&self.me, K_MEMBER)
            .map_or(0, |e| e.version);
        // K3s was started with --cluster-init before the restart if we wrote a founding
        // record; a vote we cast before still times out like a fresh one.
        self.cluster_init_done = self
            .ledger
            .entries_of(&self.me)
            .filter(|e| e.key.starts_with(K_CLUSTER))
            .filter_map(|e| postcard::from_bytes::<Cluster>(e.value.as_deref()?).ok())
            .any(|c| c.founded == c.epoch);
        if self.cluster_init_done {
            self.my_role = Some((Role::ClusterInit, 0));
        }
        self.vote_cast = self.my_vote().map(|v| (v.epoch, self.started));
    }

    /// Handles a lease renewal: a newer, correctly signed one is recorded and passed on.
    fn on_lease(&mut self, now: Instant, from: NetId, e: Entry, crypto: &mut dyn Crypto) {
        if e.key != K_LEASE || e.value.is_some() {
            return;
        }
        // Only the current leader and masters hold leases; anything else is noise.
        let Some(c) = self.valid_cluster() else {
            return;
        };
        if c.leader != e.owner && !c.masters.contains(&e.owner) {
            return;
        }
        if self
            .leases
            .get(&e.owner)
            .is_some_and(|(v, _)| *v >= e.version)
        {
            return;
        }
        if !crypto.verify(&e.owner, &e.signed_bytes(), &e.sig) {
            self.stats.messages_refused += 1;
            return;
        }
        self.leases.insert(e.owner, (e.version, now));
        self.forward_lease(now, Some(from), &e);
    }

    /// Passes a lease on to every council member we have a path to (but its owner and where
    /// it came from). The council wants paths to each other (see `compute_wanted`), so a
    /// lease reaches every member directly or through another.
    fn forward_lease(&mut self, now: Instant, from: Option<NetId>, e: &Entry) {
        let Some(c) = self.valid_cluster() else {
            return;
        };
        let targets: Vec<ConnRef> = self
            .connected_best()
            .iter()
            .filter(|(n, _)| Some(*n) != from)
            .filter(|(n, _)| {
                self.peers
                    .get(n)
                    .and_then(|p| p.key)
                    .is_some_and(|k| k != e.owner && c.in_council(&k))
            })
            .map(|(_, c)| *c)
            .collect();
        let (kind, bytes) = self.encode(now, &Wire::Lease(e.clone()));
        for c in targets {
            self.send_encoded(c, kind, bytes.clone());
        }
    }

    /// Rough bytes of state this node holds (ledger, peer table), for per-node memory metrics.
    pub fn approx_bytes(&self) -> usize {
        // Per entry: key and value, owner, version, signature, digest, key tag, and the
        // maps' overhead (what a real node holds; simulated nodes share one copy of an
        // entry's contents).
        let ledger: usize = self
            .ledger
            .entries()
            .map(|e| e.key.len() + e.value.as_ref().map_or(0, Vec::len) + 32 + 8 + 64 + 32 + 8 + 96)
            .sum();
        let peers: usize = self.peers.heap_bytes()
            + self
                .peers
                .values()
                .map(|p| {
                    p.reach.direct.capacity() * std::mem::size_of::<Addr>()
                        + p.conns.capacity() * std::mem::size_of::<PeerConn>()
                })
                .sum::<usize>();
        std::mem::size_of::<Self>()
            + ledger
            + peers
            + self.conn_peer.heap_bytes()
            + self.outbox.len() * 256
            + self.held_bytes
    }

    pub fn key(&self) -> PeerKey {
        self.me
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn ledger(&self) -> &Ledger {
        &self.ledger
    }

    pub fn role(&self) -> Option<(Role, u64)> {
        self.my_role
    }

    pub fn join_data(&self) -> Option<&JoinData> {
        self.my_join.as_ref()
    }

    pub fn reach(&self) -> &Reach {
        &self.reach
    }

    /// Changes our reachability; the generation moves when it did change (what compares
    /// against it looks again).
    fn set_reach(&mut self, change: impl FnOnce(&mut Reach)) {
        let before = self.reach.clone();
        change(&mut self.reach);
        if self.reach != before {
            self.reach_gen += 1;
        }
    }

    pub fn did_cluster_init(&self) -> bool {
        self.cluster_init_done
    }

    /// Members in the ledger, by key.
    pub fn members(&self) -> BTreeMap<PeerKey, NetId> {
        self.member_table.iter().map(|(k, m)| (*k, m.net)).collect()
    }

    /// Keeps what is derived from the ledger current after `e` was applied (and owners it
    /// pushed below the ledger's cap were evicted).
    fn entry_changed(&mut self, e: &Entry) {
        self.gen += 1;
        for owner in self.ledger.take_evicted() {
            self.member_table.remove(&owner);
            self.member_changed.remove(&owner);
            self.roles_gen += 1;
        }
        if e.key == K_MEMBER {
            match e
                .value
                .as_deref()
                .and_then(|b| postcard::from_bytes::<Member>(b).ok())
            {
                Some(m) => {
                    if self.member_table.insert(e.owner, m).is_none() {
                        self.members_grew = true;
                    }
                }
                None => {
                    self.member_table.remove(&e.owner);
                }
            }
            self.member_changed.insert(e.owner);
        } else if e.key.starts_with(K_VOTE)
            || e.key.starts_with(K_CLUSTER)
            || e.key.starts_with("kairos/")
        {
            self.roles_gen += 1;
        }
    }

    /// The cluster record this node follows (quorum mode), if any.
    pub fn cluster(&self) -> Option<Arc<Cluster>> {
        self.valid_cluster()
    }

    /// Peers this node wants a path to, and whether it has one to each. For observers:
    /// looking changes nothing (see [`Node::wanted_unremembered`]).
    pub fn wanted_paths(&self) -> Vec<(NetId, Option<PathKind>)> {
        self.paths_of(&self.wanted_unremembered())
    }

    fn paths_of(&self, wanted: &[NetId]) -> Vec<(NetId, Option<PathKind>)> {
        wanted
            .iter()
            .map(|&n| {
                let best = self.peers.get(&n).and_then(Peer::best_verified);
                (n, best.map(|(_, k)| k))
            })
            .collect()
    }

    /// The wanted peers with no verified path (what convergence looks at). For observers,
    /// as [`Node::wanted_paths`].
    pub fn wanted_without_path(&self) -> Rc<[NetId]> {
        match self.unpathed_cache.fresh(&self.wanted_gen()) {
            Some(u) => u,
            None => unpathed(self.paths_of(&self.wanted_unremembered())),
        }
    }

    /// The wanted peers with no verified path, as the node's own maintenance sees them.
    fn unpathed(&self) -> Rc<[NetId]> {
        self.unpathed_cache.get(self.wanted_gen(), || {
            unpathed(self.paths_of(&self.wanted()))
        })
    }

    /// Every path this node has to a token peer, by peer.
    pub fn paths(&self) -> BTreeMap<NetId, PathKind> {
        self.peers
            .iter()
            .filter_map(|(n, p)| p.best_verified().map(|(_, k)| (*n, k)))
            .collect()
    }

    /// One line on what this node knows of `peer` (for diagnostics).
    pub fn describe_peer(&self, peer: NetId) -> String {
        match self.peers.get(&peer) {
            None => "unknown".into(),
            Some(p) => format!(
                "key {} reach {:?} conns {:?} verified {} dialing {} failures {} lan {:?} foreign {}",
                p.key.is_some(), p.reach, p.conns, p.conns.iter().filter(|c| c.verified).count(), p.dialing, p.failures, p.lan, p.foreign
            ),
        }
    }

    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    pub fn poll_event(&mut self) -> Option<NodeEvent> {
        self.events.pop_front()
    }

    pub fn poll_timeout(&self) -> Instant {
        let mut t = self.next_maintenance;
        if let Some(f) = self.flush_at {
            t = t.min(f);
        }
        t
    }

    // ---- inputs ----

    pub fn handle_connected(
        &mut self,
        now: Instant,
        conn: ConnRef,
        peer: NetId,
        path: PathKind,
        observed: Option<Addr>,
    ) {
        // Observed addresses count only from bootstrap nodes (a peer could claim anything,
        // and the join address is built from these); the oldest goes when full.
        if let Some(o) = observed.filter(|_| self.infra.contains_key(&peer)) {
            if !self.reach.direct.contains(&o) {
                self.reach_gen += 1;
                if self.reach.direct.len() >= 8 {
                    let listen = &self.cfg.listen;
                    if let Some(i) = self.reach.direct.iter().position(|a| !listen.contains(a)) {
                        self.reach.direct.remove(i);
                    }
                }
                self.reach.direct.push(o);
            }
        }
        if let Some(inf) = self.infra.get_mut(&peer) {
            inf.conn = Some(conn);
            inf.dialing = false;
            self.actions
                .push_back(Action::AutoNatProbe { server: peer });
            inf.next_discover = now;
            self.next_maintenance = now;
            // A bootstrap node is not in the peer table: no slot to remember.
            self.conn_peer.insert(conn, (peer, u32::MAX));
            return;
        }
        self.peers_gen += 1;
        self.conns_gen += 1;
        self.unverified.insert(conn, now);
        let (slot, p) = self.peers.get_or_default_slot(peer);
        match p.conns.binary_search_by_key(&conn, |c| c.conn) {
            Ok(i) => p.conns[i].path = path,
            Err(i) => p.conns.insert(
                i,
                PeerConn {
                    conn,
                    path,
                    verified: false,
                },
            ),
        }
        p.dialing = false;
        self.conn_peer.insert(conn, (peer, slot));
        self.hello_unacked.insert(conn, now);
        self.send_hello(now, conn);
    }

    fn send_hello(&mut self, now: Instant, conn: ConnRef) {
        let hello = Wire::Hello {
            key: self.me,
            reach: self.reach.clone(),
            buckets: self.ledger.bucket_digests(),
        };
        self.send(now, conn, &hello);
    }

    pub fn handle_closed(&mut self, now: Instant, conn: ConnRef) {
        self.unverified.remove(&conn);
        self.hello_unacked.remove(&conn);
        if let Some(held) = self.held.remove(&conn) {
            self.held_bytes -= held.iter().map(Vec::len).sum::<usize>();
        }
        let Some((peer, _)) = self.conn_peer.remove(&conn) else {
            return;
        };
        if let Some(inf) = self.infra.get_mut(&peer) {
            if inf.conn == Some(conn) {
                inf.conn = None;
                inf.next_try = now + Duration::from_secs(2);
                inf.registered = None;
            }
            if self.relay.is_some_and(|(r, _)| r == peer) || self.reserving == Some(peer) {
                self.relay = None;
                self.reserving = None;
                self.set_reach(|r| r.relay = None);
            }
        }
        if let Some(p) = self.peers.get_mut(&peer) {
            p.conns.retain(|c| c.conn != conn);
            self.peers_gen += 1;
            self.conns_gen += 1;
        }
        self.next_maintenance = self.next_maintenance.min(now + Duration::from_millis(100));
    }

    pub fn handle_dial_failed(&mut self, now: Instant, peer: NetId) {
        if let Some(inf) = self.infra.get_mut(&peer) {
            inf.dialing = false;
            inf.next_try = now + Duration::from_secs(5);
            return;
        }
        if let Some(p) = self.peers.get_mut(&peer) {
            p.dialing = false;
            set_failures(p, p.failures + 1, &mut self.failed_peers);
            p.next_try = now + backoff(p.failures);
            if p.failures == PEER_FAILURES_MAX {
                self.peers_gen += 1;
            }
        }
    }

    pub fn handle_mdns(&mut self, now: Instant, peer: NetId, addr: Addr) {
        if peer == self.cfg.net || self.infra.contains_key(&peer) {
            return;
        }
        self.peers_gen += 1;
        let p = self.peers.get_or_default(peer);
        p.lan = Some(addr);
        if p.failures > 0 {
            p.next_try = now; // a LAN address is worth a fresh try
        }
        self.next_maintenance = now;
    }

    pub fn handle_discovered(
        &mut self,
        now: Instant,
        records: Vec<(NetId, Vec<u8>)>,
        crypto: &mut dyn Crypto,
    ) {
        for (net, sealed) in records {
            if net == self.cfg.net {
                continue;
            }
            // The record's nonce names it: the one we opened last time is not opened again.
            let nonce = sealed
                .get(..8)
                .map_or(0, |b| u64::from_le_bytes(b.try_into().expect("8 bytes")));
            match self
                .peers
                .get(&net)
                .map(|p| p.foreign || p.record == Some(nonce))
            {
                Some(true) => continue,
                Some(false) => {}
                None => {
                    if !self.make_room() {
                        continue;
                    }
                }
            }
            let Some(bytes) = self.open_record(now, &sealed, crypto) else {
                continue; // another mesh's record, or garbage
            };
            let Ok(r) = postcard::from_bytes::<Record>(&bytes) else {
                continue;
            };
            if r.net != net {
                continue;
            }
            let p = self.peers.get_or_default(net);
            p.record = Some(nonce);
            if !p.foreign && p.reach != r.reach {
                p.reach = r.reach;
                set_failures(p, 0, &mut self.failed_peers);
                p.next_try = now;
                self.peers_gen += 1;
            }
        }
        self.next_maintenance = now;
    }

    /// Whether the peer table has room for one more discovered peer, after dropping one
    /// that is no use (no connection, and dropped for failing) if it is full.
    fn make_room(&mut self) -> bool {
        if self.peers.len() < PEERS_MAX {
            return true;
        }
        // Only a peer dropped for failing is of no use: none, no walk over the table.
        if self.failed_peers == 0 {
            return false;
        }
        let useless = self
            .peers
            .iter()
            .find(|(_, p)| p.conns.is_empty() && !p.foreign && p.failures >= PEER_FAILURES_MAX)
            .map(|(n, _)| *n);
        match useless {
            Some(n) => {
                self.peers.remove(&n);
                self.failed_peers -= 1;
                self.peers_gen += 1;
                true
            }
            None => false,
        }
    }

    pub fn handle_reserved(&mut self, now: Instant, relay: NetId, ttl: Duration) {
        self.reserving = None;
        let renew = now + Duration::from_micros(ttl.as_micros() / 4 * 3);
        self.relay = Some((relay, renew));
        let addr = self.infra.get(&relay).and_then(|i| i.addr);
        if let Some(addr) = addr {
            self.set_reach(|r| r.relay = Some((relay, addr)));
        }
        self.next_maintenance = now;
    }

    pub fn handle_reservation_failed(&mut self, now: Instant, relay: NetId) {
        if self.reserving == Some(relay) || self.relay.is_some_and(|(r, _)| r == relay) {
            self.reserving = None;
            self.relay = None;
            self.set_reach(|r| r.relay = None);
        }
        if let Some(i) = self.infra.get_mut(&relay) {
            i.next_try = now + Duration::from_secs(30);
        }
        self.relay_next_try = now + Duration::from_secs(5);
    }

    /// The relay refused the circuit (no reservation for the target there, or its limits):
    /// what we know of the peer is stale or useless, so it stops being wanted until news of
    /// it arrives.
    pub fn handle_relayed_dial_failed(&mut self, now: Instant, target: NetId) {
        if let Some(p) = self.peers.get_mut(&target) {
            set_failures(
                p,
                p.failures.max(PEER_FAILURES_MAX - 1),
                &mut self.failed_peers,
            );
        }
        self.handle_dial_failed(now, target);
    }

    pub fn handle_hole_punch(&mut self, _now: Instant, peer: NetId, ok: bool) {
        self.stats.hole_punches += 1;
        self.stats.hole_punches_ok += u64::from(ok);
        if let Some(p) = self.peers.get_mut(&peer) {
            p.punch_failed = !ok;
        }
        self.peers_gen += 1;
    }

    pub fn handle_autonat(&mut self, now: Instant, server: NetId, reachable: bool) {
        if let Some(i) = self.infra.get_mut(&server) {
            i.autonat = Some(reachable);
        }
        let answers: Vec<bool> = self.infra.values().filter_map(|i| i.autonat).collect();
        let yes = answers.iter().filter(|a| **a).count();
        self.set_reach(|r| r.public = yes * 2 > answers.len());
        self.next_maintenance = now;
    }

    pub fn handle_message(
        &mut self,
        now: Instant,
        conn: ConnRef,
        bytes: &[u8],
        crypto: &mut dyn Crypto,
    ) {
        if self.receive(now, conn, bytes, crypto) {
            // The peer's Hello opened just now: the plain frames that overtook it follow.
            for held in self.held.remove(&conn).unwrap_or_default() {
                self.held_bytes -= held.len();
                self.receive(now, conn, &held, crypto);
            }
        }
    }

    /// Handles one message; true when it is the one that showed the connection's peer
    /// holds the token (its Hello opened).
    fn receive(
        &mut self,
        now: Instant,
        conn: ConnRef,
        bytes: &[u8],
        crypto: &mut dyn Crypto,
    ) -> bool {
        let Some(&(peer, hint)) = self.conn_peer.get(&conn) else {
            return false;
        };
        let verified = self
            .peers
            .get_hinted(&peer, hint)
            .and_then(|p| p.conn(conn))
            .is_some_and(|c| c.verified);
        let plain = match bytes.split_first() {
            Some((&FRAME_SEALED, sealed)) => self.open(now, sealed).map(Cow::Owned),
            // Plain frames only on a connection whose Hello opened.
            Some((&FRAME_PLAIN, plain)) if verified => {
                // The peer sends plain frames only once our Hello opened there.
                self.hello_unacked.remove(&conn);
                Some(Cow::Borrowed(plain))
            }
            // One that overtook the peer's Hello (messages on separate streams arrive in
            // any order) waits for it, within bounds; beyond them it is dropped (the head
            // rounds repair what it carried).
            Some((&FRAME_PLAIN, _)) => {
                let held = self.held.entry(conn).or_default();
                if held.len() < HELD_FRAMES_MAX && self.held_bytes + bytes.len() <= SEALED_BYTES_MAX
                {
                    held.push(bytes.to_vec());
                    self.held_bytes += bytes.len();
                } else {
                    self.stats.messages_refused += 1;
                }
                return false;
            }
            _ => None,
        };
        let Some(plain) = plain else {
            self.stats.messages_refused += 1;
            if !verified {
                if let Some(p) = self.peers.get_mut(&peer) {
                    // Not one of us: stop talking to it.
                    p.foreign = true;
                    self.peers_gen += 1;
                    self.actions.push_back(Action::Close { conn });
                }
            }
            return false;
        };
        let Ok(msg) = postcard::from_bytes::<Wire>(&plain) else {
            self.stats.messages_refused += 1;
            return false;
        };
        let Some(p) = self.peers.get_mut_hinted(&peer, hint) else {
            return false;
        };
        let opened = p
            .conn_mut(conn)
            .is_some_and(|c| !std::mem::replace(&mut c.verified, true));
        if opened {
            self.peers_gen += 1;
            self.conns_gen += 1;
        }
        self.unverified.remove(&conn);
        if p.foreign {
            self.peers_gen += 1;
        }
        p.foreign = false;
        set_failures(p, 0, &mut self.failed_peers);
        match msg {
            Wire::Hello {
                key,
                reach,
                buckets,
            } => {
                if p.key != Some(key) || p.reach != reach {
                    self.peers_gen += 1;
                }
                p.key = Some(key);
                p.reach = reach;
                // A direct path makes relayed ones to the same peer redundant.
                let direct = p
                    .conns
                    .iter()
                    .any(|c| c.path == PathKind::Direct && c.verified);
                if direct {
                    let relayed: Vec<ConnRef> = p
                        .conns
                        .iter()
                        .filter(|c| c.path != PathKind::Direct)
                        .map(|c| c.conn)
                        .collect();
                    for c in relayed {
                        self.actions.push_back(Action::Close { conn: c });
                    }
                }
                // A plain frame back tells the peer its Hello opened (see `hello_unacked`):
                // the summary that starts a sync, or else our head.
                if !self.compare(now, conn, &buckets) {
                    let ours = self.ledger.bucket_digests();
                    self.send(now, conn, &Wire::Head(ours));
                }
            }
            Wire::Head(buckets) => {
                self.compare(now, conn, &buckets);
            }
            Wire::Versions {
                versions,
                mask,
                reply,
            } => {
                let mut newer = self.ledger.newer_than(&versions, mask);
                let mut budget = SYNC_BATCH_BYTES;
                let keep = newer
                    .iter()
                    .take_while(|e| {
                        let n = 160 + e.key.len() + e.value.as_ref().map_or(0, Vec::len);
                        let fits = n <= budget;
                        budget = budget.saturating_sub(n);
                        fits
                    })
                    .count()
                    .max(1);
                newer.truncate(keep);
                if !newer.is_empty() {
                    self.send(
                        now,
                        conn,
                        &Wire::Entries {
                            entries: newer.iter().map(|e| Entry::as_ref(e)).collect(),
                            push: false,
                        },
                    );
                }
                if !reply && self.ledger.lacks_any(&versions) {
                    let mine = self.ledger.versions(mask);
                    self.send(
                        now,
                        conn,
                        &Wire::Versions {
                            versions: mine,
                            mask,
                            reply: true,
                        },
                    );
                }
                // The answer to our summary ends with theirs (after any entries we lacked).
                if reply {
                    self.pull_answered(now);
                }
            }
            Wire::Lease(e) => self.on_lease(now, peer, e, crypto),
            Wire::Entries { entries, push } => {
                let mut changed = false;
                for e in entries {
                    match self.ledger.apply_shared(e, crypto) {
                        Ok(Taken::Changed(e)) => {
                            self.entry_changed(&e);
                            self.stats.entries_applied += 1;
                            if push {
                                self.outbox.push((e, vec![peer]));
                            }
                            changed = true;
                        }
                        // A copy of news we are about to pass on: not to this peer, then.
                        Ok(Taken::Stale) if push => {
                            if let Some((_, holders)) = self.outbox.iter_mut().find(|(x, _)| {
                                x.owner == e.owner
                                    && x.version == e.version
                                    && x.sig == e.sig
                                    && x.key == e.key
                            }) {
                                holders.push(peer);
                            }
                        }
                        _ => {}
                    }
                }
                if changed {
                    self.ledger_changed(now);
                }
                if !push {
                    self.pull_answered(now);
                }
            }
        }
        opened
    }

    pub fn handle_timeout(&mut self, now: Instant, crypto: &mut dyn Crypto) {
        if self.flush_at.is_some_and(|f| f <= now) {
            self.flush(now);
        }
        if now < self.next_maintenance {
            return;
        }
        self.next_maintenance = now + Duration::from_secs(1);
        if std::mem::take(&mut self.members_grew) {
            self.members_stable_since = now;
        }
        // A connection that never says anything we can open is closed: it is half-made (a
        // relayed dial the other side gave up on) or not one of us.
        let stale: Vec<ConnRef> = self
            .unverified
            .iter()
            .filter(|(_, t)| now.since(**t) > Duration::from_secs(15))
            .map(|(c, _)| *c)
            .collect();
        for c in stale {
            self.unverified.remove(&c);
            self.actions.push_back(Action::Close { conn: c });
        }
        // A peer dropped for failing gets another try once its backoff is over (it may be
        // back, or reachable again after a partition).
        if now >= self.next_revive {
            self.next_revive = now + Duration::from_secs(10);
            debug_assert_eq!(
                self.failed_peers,
                self.peers
                    .values()
                    .filter(|p| p.failures >= PEER_FAILURES_MAX)
                    .count()
            );
            // (The walk over the table is skipped when no peer is dropped.)
            if self.failed_peers > 0 {
                for p in self.peers.values_mut_unordered() {
                    if p.failures >= PEER_FAILURES_MAX && now >= p.next_try && p.conns.is_empty() {
                        set_failures(p, PEER_FAILURES_MAX - 1, &mut self.failed_peers);
                        self.peers_gen += 1;
                    }
                }
            }
        }
        let resend: Vec<ConnRef> = self
            .hello_unacked
            .iter()
            .filter(|(_, t)| now.since(**t) >= Duration::from_secs(2))
            .map(|(c, _)| *c)
            .collect();
        for c in resend {
            self.hello_unacked.insert(c, now);
            self.send_hello(now, c);
        }
        self.maintain_infra(now);
        self.maintain_relay(now);
        self.publish_member(now, crypto);
        self.maintain_paths(now);
        if now >= self.next_head {
            self.next_head = now + self.head_gap;
            self.head_gap = Duration::from_micros(
                (self.head_gap.as_micros() * 2).min(self.cfg.head_interval.as_micros() * 4),
            );
            // One end of each connection sends the round (see `heads_from`): a head that
            // differs starts a push-pull exchange, which repairs both ends.
            let me = self.cfg.net;
            let conns: Vec<ConnRef> = self
                .connected_best()
                .iter()
                .filter(|(n, _)| heads_from(me, *n))
                .map(|(_, c)| *c)
                .collect();
            if !conns.is_empty() {
                let (kind, bytes) = self.encode(now, &Wire::Head(self.ledger.bucket_digests()));
                for c in conns {
                    self.send_encoded(c, kind, bytes.clone());
                }
            }
        }
        match self.cfg.mode {
            Mode::Quorum => self.elect_quorum(now, crypto),
            Mode::Kairos => self.elect_kairos(now, crypto),
        }
        self.follow(now);
    }

    // ---- internals ----

    fn keys(&mut self, now: Instant) -> [[u8; 32]; 3] {
        let s = secs(&self.cfg, now);
        let w = self.cfg.token.otp.crypto.window(s);
        if let Some((cw, k)) = self.seal_cache {
            if cw == w {
                return k;
            }
        }
        let [cur, prev] = self.cfg.token.sealing_keys(s);
        let next = self
            .cfg
            .token
            .sealing_keys(s + self.cfg.token.otp.crypto.interval)[0];
        let k = [cur, prev, next];
        self.seal_cache = Some((w, k));
        k
    }

    fn seal(&mut self, now: Instant, plain: &[u8]) -> Vec<u8> {
        let key = self.keys(now)[0];
        let mut nonce = [0u8; 12];
        nonce[..8].copy_from_slice(&self.rng.next_u64().to_le_bytes());
        nonce[8..].copy_from_slice(&(self.rng.next_u64() as u32).to_le_bytes());
        token::seal(&key, nonce, plain)
    }

    /// Opens a sealed Hello with the current, previous or next window's key.
    fn open(&mut self, now: Instant, sealed: &[u8]) -> Option<Vec<u8>> {
        self.open_with(now, sealed, token::open)
    }

    /// Opens a rendezvous record: as [`Node::open`], through `crypto`, which may remember
    /// records (every node that discovers one opens the same bytes).
    fn open_record(
        &mut self,
        now: Instant,
        sealed: &[u8],
        crypto: &mut dyn Crypto,
    ) -> Option<Vec<u8>> {
        self.open_with(now, sealed, |k, s| crypto.open_record(k, s))
    }

    /// Tries `open` with each window's key, on anything not too large to open.
    fn open_with(
        &mut self,
        now: Instant,
        sealed: &[u8],
        mut open: impl FnMut(&[u8; 32], &[u8]) -> Option<Vec<u8>>,
    ) -> Option<Vec<u8>> {
        if sealed.len() > SEALED_BYTES_MAX {
            return None;
        }
        self.keys(now).iter().find_map(|k| open(k, sealed))
    }

    fn send(&mut self, now: Instant, conn: ConnRef, msg: &Wire) {
        let (kind, bytes) = self.encode(now, msg);
        self.send_encoded(conn, kind, bytes);
    }

    /// A message as framed on the wire, with its kind (for the stats).
    fn encode(&mut self, now: Instant, msg: &Wire) -> (usize, Vec<u8>) {
        // Frames: FRAME_SEALED + nonce + ciphertext (the Hello), FRAME_PLAIN + message.
        let bytes = if matches!(msg, Wire::Hello { .. }) {
            let plain = postcard::to_allocvec(msg).expect("plain data serializes");
            let mut b = vec![FRAME_SEALED];
            b.extend(self.seal(now, &plain));
            b
        } else {
            // Serialized behind the frame byte: no second buffer.
            let mut b = Vec::with_capacity(256);
            b.push(FRAME_PLAIN);
            postcard::to_extend(msg, b).expect("plain data serializes")
        };
        let kind = match msg {
            Wire::Hello { .. } => 0,
            Wire::Head(_) => 1,
            Wire::Versions { .. } => 2,
            Wire::Entries { .. } => 3,
            Wire::Lease(_) => 4,
        };
        (kind, bytes)
    }

    /// Sends what [`Node::encode`] made (one encoding may go to several peers).
    fn send_encoded(&mut self, conn: ConnRef, kind: usize, bytes: Vec<u8>) {
        self.stats.messages_by_kind[kind] += 1;
        self.stats.bytes_by_kind[kind] += bytes.len() as u64;
        self.stats.messages_sent += 1;
        self.stats.bytes_sent += bytes.len() as u64;
        self.actions.push_back(Action::Send { conn, bytes });
    }

    /// Each peer we have a verified connection to, with its best connection (direct before
    /// relayed). Walks the connections, not the (much larger) peer table.
    fn connected_best(&self) -> Rc<[(NetId, ConnRef)]> {
        self.connected_cache.get(self.conns_gen, || {
            let mut peers: Vec<NetId> = self.conn_peer.values().map(|(n, _)| *n).collect();
            peers.sort_unstable();
            peers.dedup();
            peers
                .into_iter()
                .filter_map(|n| Some((n, self.peers.get(&n)?.best_verified()?.0)))
                .collect()
        })
    }

    /// Starts a push-pull exchange of the buckets whose digests differ from `theirs`;
    /// true when it sent the exchange's first message.
    fn compare(&mut self, now: Instant, conn: ConnRef, theirs: &[u64; BUCKETS]) -> bool {
        let mine = self.ledger.bucket_digests();
        if mine == *theirs {
            return false;
        }
        // One pull at a time: a node that just joined hears a differing head from every
        // peer at once, and syncing with all of them would fetch the ledger many times over.
        // The latest such head is compared again once the pull is answered (the peer we
        // pulled from may have lagged too).
        if self.pull_until.is_some_and(|t| now < t) {
            self.deferred = Some((conn, *theirs));
            return false;
        }
        // The differing buckets, as many as fit one summary.
        let sizes = self.ledger.bucket_sizes();
        let mut mask = 0u16;
        let mut count = 0;
        for i in (0..BUCKETS).filter(|&i| mine[i] != theirs[i]) {
            if mask != 0 && count + sizes[i] > SYNC_VERSIONS_MAX {
                break;
            }
            count += sizes[i];
            mask |= 1 << i;
        }
        if mask != 0 {
            self.head_busy(now);
            self.pull_until = Some(now + Duration::from_secs(2));
            let versions = self.ledger.versions(mask);
            self.send(
                now,
                conn,
                &Wire::Versions {
                    versions,
                    mask,
                    reply: false,
                },
            );
        }
        mask != 0
    }

    /// Our pull was answered: the next one may start, with the head heard meanwhile.
    fn pull_answered(&mut self, now: Instant) {
        self.pull_until = None;
        if let Some((conn, theirs)) = self.deferred.take() {
            if self.conn_peer.contains_key(&conn) {
                self.compare(now, conn, &theirs);
            }
        }
    }

    /// Something changed or differs: head rounds back at `head_interval`.
    fn head_busy(&mut self, now: Instant) {
        self.head_gap = self.cfg.head_interval;
        self.next_head = self.next_head.min(now + self.cfg.head_interval);
    }

    /// How many peers fresh news is pushed to: about ln N + 1, at least 3.
    fn fanout(&self) -> usize {
        let n = self.member_table.len().max(2) as f64;
        ((n.ln().ceil() as usize) + 1).max(3)
    }

    /// A random [`Node::fanout`] of `targets` (all of them when there are no more).
    fn fanout_sample<T>(&mut self, mut targets: Vec<T>) -> Vec<T> {
        let fanout = self.fanout();
        while targets.len() > fanout {
            let k = self.rng.below(targets.len() as u64) as usize;
            targets.swap_remove(k);
        }
        targets
    }

    fn ledger_changed(&mut self, now: Instant) {
        self.head_busy(now);
        if self.flush_at.is_none() {
            self.flush_at = Some(now + FLUSH_DELAY);
        }
        self.next_maintenance = self.next_maintenance.min(now + Duration::from_millis(100));
    }

    /// Pushes the entries changed since the last flush to a random ~ln N + 1 of the token
    /// peers (not back to where they came from).
    fn flush(&mut self, now: Instant) {
        self.flush_at = None;
        let out = std::mem::take(&mut self.outbox);
        if out.is_empty() {
            return;
        }
        // Push to a random subset (about ln N + 1 peers); the periodic bucket comparison
        // repairs what the epidemic misses. Peers get the same batch unless they sent us some
        // of it: each distinct batch is encoded once.
        let targets = self.connected_best().to_vec();
        let mut encoded: Vec<(Vec<usize>, usize, Vec<u8>)> = Vec::new();
        for (n, c) in self.fanout_sample(targets) {
            let picks: Vec<usize> = (0..out.len()).filter(|&i| !out[i].1.contains(&n)).collect();
            if picks.is_empty() {
                continue;
            }
            if let Some((_, kind, bytes)) = encoded.iter().find(|(p, _, _)| *p == picks) {
                let (kind, bytes) = (*kind, bytes.clone());
                self.send_encoded(c, kind, bytes);
                continue;
            }
            let msg = Wire::Entries {
                entries: picks.iter().map(|&i| Entry::as_ref(&out[i].0)).collect(),
                push: true,
            };
            let (kind, bytes) = self.encode(now, &msg);
            encoded.push((picks, kind, bytes.clone()));
            self.send_encoded(c, kind, bytes);
        }
    }

    fn write(
        &mut self,
        now: Instant,
        key: &str,
        version: u64,
        value: Vec<u8>,
        crypto: &mut dyn Crypto,
    ) {
        let e = Entry::signed(&self.signer, key, version, Some(value));
        if let Ok(Taken::Changed(e)) = self.ledger.apply_shared(e.as_ref(), crypto) {
            self.entry_changed(&e);
            self.outbox.push((e, Vec::new()));
            self.ledger_changed(now);
        }
    }

    /// The rendezvous namespace of the current window (derived once per window).
    fn ns(&mut self, now: Instant) -> u64 {
        let s = secs(&self.cfg, now);
        let w = self.cfg.token.otp.dht.window(s);
        if let Some((cw, ns)) = self.ns_cache {
            if cw == w {
                return ns;
            }
        }
        let k = self.cfg.token.rendezvous_key(s);
        let ns = u64::from_be_bytes(k[..8].try_into().expect("8 bytes"));
        self.ns_cache = Some((w, ns));
        ns
    }

    /// The ledger's head, cached until the ledger changes.
    pub fn head(&self) -> [u8; 32] {
        self.head_cache.get(self.gen, || self.ledger.head())
    }

    fn maintain_infra(&mut self, now: Instant) {
        let ns = self.ns(now);
        // (Re-)register at a home node when our reachability changed or the rendezvous key
        // rotated.
        let gen = self.reach_gen;
        let due = |i: &Infra, reach: &Reach| {
            i.home
                && i.conn.is_some()
                && i.autonat.is_some()
                && i.registered
                    .as_ref()
                    .is_none_or(|(n, g, r)| *n != ns || (*g != gen && r != reach))
        };
        let register = self.infra.values().any(|i| due(i, &self.reach));
        // The record is sealed only when some registration is due.
        let sealed = register.then(|| {
            let record = postcard::to_allocvec(&Record {
                net: self.cfg.net,
                reach: self.reach.clone(),
            })
            .expect("serializes");
            self.seal(now, &record)
        });
        // Whether we know fewer token peers than we want (looked at only when some
        // discovery is due).
        let (peers, target) = (&self.peers, self.cfg.target_peers);
        let mut few: Option<bool> = None;
        let mut few_peers = || {
            *few.get_or_insert_with(|| {
                peers.values().filter(|p| !p.foreign).take(target).count() < target
            })
        };
        for (&n, inf) in self.infra.iter_mut() {
            match inf.conn {
                None => {
                    if !inf.dialing && now >= inf.next_try && (inf.home || now < inf.needed_until) {
                        if let Some(a) = inf.addr {
                            inf.dialing = true;
                            self.actions.push_back(Action::Dial {
                                peer: n,
                                addrs: vec![a],
                            });
                        }
                    }
                }
                Some(_) if !inf.home => {}
                Some(_) => {
                    // Register when due (see above), discover now and then.
                    if due(inf, &self.reach) {
                        inf.registered = Some((ns, gen, self.reach.clone()));
                        self.actions.push_back(Action::Register {
                            server: n,
                            ns,
                            ttl: Duration::from_secs(7200),
                            record: sealed.clone().expect("sealed when a registration is due"),
                        });
                    }
                    if now >= inf.next_discover {
                        let few_peers = few_peers();
                        let interval = if few_peers {
                            self.cfg.discover_interval
                        } else {
                            Duration::from_micros(self.cfg.discover_interval.as_micros() * 10)
                        };
                        inf.discover_gap = if few_peers {
                            Duration::from_micros(
                                (inf.discover_gap.as_micros() * 2)
                                    .clamp(2_000_000, interval.as_micros()),
                            )
                        } else {
                            interval
                        };
                        inf.next_discover = now + inf.discover_gap;
                        self.actions.push_back(Action::Discover {
                            server: n,
                            ns,
                            limit: 64,
                        });
                    }
                }
            }
        }
        if self.cfg.mdns && now >= self.next_mdns {
            self.next_mdns = now + Duration::from_secs(60);
            self.actions.push_back(Action::MdnsQuery);
        }
    }

    fn maintain_relay(&mut self, now: Instant) {
        let decided = self.infra.values().any(|i| i.autonat.is_some());
        if !decided || self.reach.public {
            return;
        }
        if let Some((r, renew)) = self.relay {
            if now >= renew && self.reserving.is_none() {
                self.reserving = Some(r);
                self.relay_next_try = now + Duration::from_secs(30);
                self.actions.push_back(Action::Reserve { relay: r });
            }
            return;
        }
        if self.reserving.is_some() && now >= self.relay_next_try {
            // No answer to the reservation request: give up on it.
            self.reserving = None;
        }
        if self.reserving.is_some() || now < self.relay_next_try {
            return;
        }
        // A connected relay, picked at random so reservations spread.
        let connected: Vec<NetId> = self
            .infra
            .iter()
            .filter(|(_, i)| i.conn.is_some() && now >= i.next_try)
            .map(|(n, _)| *n)
            .collect();
        if connected.is_empty() {
            return;
        }
        let r = connected[self.rng.below(connected.len() as u64) as usize];
        self.reserving = Some(r);
        self.relay_next_try = now + Duration::from_secs(30);
        self.actions.push_back(Action::Reserve { relay: r });
    }

    fn publish_member(&mut self, now: Instant, crypto: &mut dyn Crypto) {
        // Our entry as the ledger holds it (the member table mirrors member entries).
        let (same, published, outranked) =
            self.publish_cache.get((self.gen, self.reach_gen), || {
                let current = self.member_table.get(&self.me);
                let same = current.is_some_and(|c| {
                    c.net == self.cfg.net && c.name == self.name && c.reach == self.reach
                });
                (same, current.is_some(), self.ledger.outranked(&self.me))
            });
        // Publish once reachability is known and, behind NAT, a relay holds our reservation
        // (each change after the first entry is a new version every member receives); with
        // no bootstrap nodes at once, and at the latest after the grace period.
        let grace = now.since(self.started) > PUBLISH_GRACE;
        let known = self.infra.is_empty()
            || grace
            || (self.infra.values().any(|i| i.autonat.is_some())
                && (self.reach.public || self.relay.is_some()));
        // A member ranked below the ledger's cap is known by its rendezvous records and
        // connections, not by a ledger entry.
        if known && !same && !outranked && (published || self.may_join_ledger(now)) {
            let m = Member {
                net: self.cfg.net,
                name: self.name.clone(),
                reach: self.reach.clone(),
            };
            self.member_version += 1;
            let v = self.member_version.max(
                self.ledger
                    .entry(&self.me, K_MEMBER)
                    .map_or(0, |e| e.version)
                    + 1,
            );
            self.member_version = v;
            let bytes = postcard::to_allocvec(&m).expect("serializes");
            self.write(now, K_MEMBER, v, bytes, crypto);
        }
        // Peers learned from the ledger: the members that changed.
        let changed = std::mem::take(&mut self.member_changed);
        for key in changed.into_iter().filter(|k| *k != self.me) {
            let Some(m) = self.member_table.get(&key) else {
                continue;
            };
            let p = self.peers.get_or_default(m.net);
            if p.key != Some(key) || p.reach != m.reach {
                p.key = Some(key);
                p.reach = m.reach.clone();
                set_failures(p, 0, &mut self.failed_peers);
                self.peers_gen += 1;
            }
        }
    }

    /// Whether to write our first member entry now. Under an owner cap, members publish
    /// in rank order, spread over a few seconds (8 when we already know more peers than the
    /// cap: a large mesh), so the best-ranked entries fill ledgers first and the rest find
    /// themselves outranked before writing anything: the cap's churn (entries kept, passed
    /// on, then evicted) stays small. A full ledger whose worst owner we beat takes us now.
    fn may_join_ledger(&self, now: Instant) -> bool {
        let cap = self.ledger.owner_cap();
        if cap == usize::MAX || self.ledger.owners() >= cap {
            return true;
        }
        let spread = if self.peers.len() >= cap {
            Duration::from_secs(8)
        } else {
            Duration::from_secs(2)
        };
        let below = u64::from(u32::MAX - key_fnv(&self.me));
        let delay = Duration::from_micros(spread.as_micros() * below / u64::from(u32::MAX));
        now.since(self.started) >= delay
    }

    /// The peers this node keeps paths to, as its own maintenance computes and remembers
    /// them.
    fn wanted(&self) -> Rc<[NetId]> {
        self.wanted_cache
            .get(self.wanted_gen(), || self.compute_wanted().into())
    }

    /// The same for an observer (the simulator's convergence check): computed afresh if
    /// the node's own is stale, and not remembered. Which peers stay wanted depends on the
    /// set the node last computed (see `compute_wanted`), so a look that remembered its
    /// answer would change the run (how often a simulation samples would matter).
    fn wanted_unremembered(&self) -> Rc<[NetId]> {
        self.wanted_cache
            .fresh(&self.wanted_gen())
            .unwrap_or_else(|| self.compute_wanted().into())
    }

    fn compute_wanted(&self) -> Vec<NetId> {
        // Sticky: wanted peers we already have a verified path to stay wanted, so a view
        // that grows (discovery keeps adding peers) does not keep moving paths around.
        let before: Rc<[NetId]> = self.wanted_cache.peek().unwrap_or_default();
        // Usually they are enough by themselves: then a few look-ups decide, not a walk
        // over the whole table (the same answer as below: there are at least as many
        // candidates as these).
        let sticky: Vec<NetId> = before
            .iter()
            .copied()
            .filter(|n| {
                self.peers
                    .get(n)
                    .and_then(candidate)
                    .is_some_and(|(verified, _)| verified)
            })
            .take(self.cfg.target_peers)
            .collect();
        if sticky.len() >= self.cfg.target_peers {
            let mut want: BTreeSet<NetId> = sticky.into_iter().collect();
            self.add_council(&mut want, |n| {
                self.peers.get(n).and_then(candidate).is_some()
            });
            return want.into_iter().collect();
        }
        // Each candidate with whether we hold a verified path to it, and whether only a
        // relay connects us.
        let candidates: Vec<(NetId, bool, bool)> = self
            .peers
            .iter()
            .filter_map(|(n, p)| candidate(p).map(|(v, r)| (*n, v, r)))
            .collect();
        if candidates.len() <= self.cfg.target_peers {
            return candidates.into_iter().map(|(n, _, _)| n).collect();
        }
        // `candidates` is in id order (the peer table's).
        let find = |n: &NetId| {
            candidates
                .binary_search_by_key(n, |(c, _, _)| *c)
                .ok()
                .map(|i| candidates[i])
        };
        let mut want: BTreeSet<NetId> = sticky.into_iter().collect();
        self.add_council(&mut want, |n| find(n).is_some());
        if want.len() >= self.cfg.target_peers {
            return want.into_iter().collect();
        }
        // Then ring neighbours by id (two each way), then the best by rendezvous hashing.
        // We are not among the candidates.
        let len = candidates.len();
        let at = candidates.partition_point(|(n, _, _)| *n < self.cfg.net);
        for d in [0, 1] {
            if want.len() + 2 > self.cfg.target_peers {
                break;
            }
            want.insert(candidates[(at + d) % len].0);
            want.insert(candidates[(at + len - 1 - d) % len].0);
        }
        // Relays are a shared, limited resource: beyond the ring, at most a quarter of the
        // picks may be peers only a relay reaches.
        let relay_only = |n: &NetId| find(n).is_some_and(|(_, _, r)| r);
        let mut relayed = want.iter().filter(|n| relay_only(n)).count();
        // Verified first, then by rendezvous hash (unique ids: an unstable sort is exact).
        let mut scored: Vec<(bool, u64, NetId, bool)> = candidates
            .iter()
            .filter(|(n, _, _)| !want.contains(n))
            .map(|&(n, verified, r)| (!verified, pair_score(self.cfg.net, n), n, r))
            .collect();
        scored.sort_unstable();
        for (_, _, n, r) in scored {
            if want.len() >= self.cfg.target_peers {
                break;
            }
            if r {
                if relayed >= self.cfg.target_peers / 4 {
                    continue;
                }
                relayed += 1;
            }
            want.insert(n);
        }
        want.into_iter().collect()
    }

    /// A council member wants the rest of the council (leases travel among them), on top of
    /// its share of the overlay: those that are candidates.
    fn add_council(&self, want: &mut BTreeSet<NetId>, is_candidate: impl Fn(&NetId) -> bool) {
        let council = self.valid_cluster().filter(|c| c.in_council(&self.me));
        if let Some(c) = council {
            let others = c.masters.iter().chain(&c.electorate).chain([&c.leader]);
            for k in others.filter(|k| **k != self.me) {
                if let Some(m) = self.member_table.get(k) {
                    if is_candidate(&m.net) {
                        want.insert(m.net);
                    }
                }
            }
        }
    }

    /// What the wanted peers depend on: the peer table, and (for a council member) the
    /// cluster decision.
    fn wanted_gen(&self) -> (u64, u64) {
        (self.peers_gen, self.roles_gen)
    }

    fn maintain_paths(&mut self, now: Instant) {
        // Peers with a verified path need nothing; those with a connection still opening
        // are skipped below.
        let wanted = self.unpathed();
        if wanted.is_empty() {
            return;
        }
        let connected_infra: BTreeSet<NetId> = self
            .infra
            .iter()
            .filter(|(_, i)| i.conn.is_some())
            .map(|(n, _)| *n)
            .collect();
        for &n in wanted.iter() {
            let p = self.peers.get_mut(&n).expect("wanted peers are known");
            if !p.conns.is_empty() || p.dialing || now < p.next_try {
                continue;
            }
            // Direct when it can work: a LAN address, or a public peer; else through its
            // relay (hole punching follows by itself).
            let direct: Vec<Addr> = match p.lan {
                Some(a) => vec![a],
                None if p.reach.public => p.reach.direct.clone(),
                None => Vec::new(),
            };
            let relayed = p.reach.relay.filter(|(r, _)| connected_infra.contains(r));
            let try_direct =
                !direct.is_empty() && (p.failures.is_multiple_of(2) || relayed.is_none());
            if try_direct {
                p.dialing = true;
                self.actions.push_back(Action::Dial {
                    peer: n,
                    addrs: direct,
                });
            } else if let Some((relay, _)) = relayed {
                p.dialing = true;
                self.actions
                    .push_back(Action::DialRelayed { relay, target: n });
            } else if let Some((relay, addr)) = p.reach.relay {
                // We need the relay first: it is a bootstrap node we are not connected to,
                // or one we did not know of.
                if !self.peers.contains_key(&relay)
                    && (self.infra.len() < INFRA_MAX || self.infra.contains_key(&relay))
                {
                    let inf = self.infra.entry(relay).or_default();
                    inf.addr.get_or_insert(addr);
                    inf.needed_until = now + Duration::from_secs(60);
                }
            }
        }
    }

    fn lease_fresh(&self, key: &PeerKey, now: Instant) -> bool {
        self.leases
            .get(key)
            .is_some_and(|(_, at)| now.since(*at) <= self.cfg.lease_timeout)
    }

    /// Masters we have never heard a lease from count as renewed when we first look, so a
    /// node that just started gives them a full timeout.
    fn observe_leases(&mut self, now: Instant, masters: &[PeerKey]) {
        for k in masters {
            self.leases.entry(*k).or_insert((0, now));
        }
    }

    fn votes_for(&self, epoch: u64, candidate: &PeerKey, electorate: &[PeerKey]) -> usize {
        let key = vote_key(epoch);
        electorate
            .iter()
            .filter(|k| {
                self.ledger
                    .get(k, &key)
                    .and_then(|b| postcard::from_bytes::<Vote>(b).ok())
                    .is_some_and(|v| v.epoch == epoch && v.candidate == *candidate)
            })
            .count()
    }

    /// The decision this node follows: the lowest-epoch founding record that holds a
    /// majority of its electorate's votes, or the highest-epoch record descending from it
    /// that holds a majority of the same electorate.
    fn valid_cluster(&self) -> Option<Arc<Cluster>> {
        self.cluster_cache
            .get(self.roles_gen, || self.compute_cluster().map(Arc::new))
    }

    fn compute_cluster(&self) -> Option<Cluster> {
        let mut all: Vec<Cluster> = self
            .ledger
            .live()
            .filter(|e| e.key.starts_with(K_CLUSTER))
            .filter_map(|e| {
                postcard::from_bytes::<Cluster>(e.value.as_deref()?)
                    .ok()
                    .filter(|c| c.leader == e.owner)
            })
            .collect();
        all.sort_by(|a, b| {
            (a.epoch, key_fnv(&a.leader), a.leader).cmp(&(b.epoch, key_fnv(&b.leader), b.leader))
        });
        // The founding decision: the lowest-epoch founding claim holding a majority of its
        // electorate. Later decisions must descend from it and hold a majority of the same
        // electorate.
        let majority = |c: &Cluster, electorate: &[PeerKey]| {
            !electorate.is_empty()
                && self.votes_for(c.epoch, &c.leader, electorate) * 2 > electorate.len()
        };
        let founding = all
            .iter()
            .find(|c| c.founded == c.epoch && majority(c, &c.electorate))?;
        all.iter()
            .rev()
            .find(|c| {
                c.founded == founding.epoch
                    && c.electorate == founding.electorate
                    && majority(c, &founding.electorate)
            })
            .cloned()
    }

    /// Our latest vote (votes live under one key per epoch, so earlier epochs' votes stay
    /// and keep proving their decisions).
    fn my_vote(&self) -> Option<Vote> {
        self.ledger
            .entries_of(&self.me)
            .filter(|e| e.key.starts_with(K_VOTE))
            .filter_map(|e| postcard::from_bytes::<Vote>(e.value.as_deref()?).ok())
            .max_by_key(|v| v.epoch)
    }

    fn vote(&mut self, now: Instant, epoch: u64, candidate: PeerKey, crypto: &mut dyn Crypto) {
        if self.my_vote().is_some_and(|v| v.epoch >= epoch) {
            return;
        }
        let bytes = postcard::to_allocvec(&Vote { epoch, candidate }).expect("serializes");
        self.write(now, &vote_key(epoch), 1, bytes, crypto);
        self.vote_cast = Some((epoch, now));
    }

    /// The address K3s agents are told to join: an address a bootstrap node saw us at when
    /// we are reachable, else our own listen address (good on our LAN).
    fn my_addr(&self) -> String {
        let observed = self
            .reach
            .direct
            .iter()
            .find(|a| !self.cfg.listen.contains(a));
        let a = observed
            .filter(|_| self.reach.public)
            .or(self.cfg.listen.first())
            .or(observed)
            .copied()
            .unwrap_or(Addr::new(std::net::Ipv4Addr::UNSPECIFIED, 0));
        format!("https://{}:{}", a.ip(), self.cfg.k3s_port)
    }

    /// The members by election rank (largest FNV-32a id first), computed once per ledger
    /// change.
    fn ranked_members(&self) -> Rc<[PeerKey]> {
        self.ranked_cache.get(self.gen, || {
            let mut ranked: Vec<PeerKey> = self.member_table.keys().copied().collect();
            ranked.sort_by_cached_key(key_rank);
            ranked.into()
        })
    }

    fn elect_quorum(&mut self, now: Instant, crypto: &mut dyn Crypto) {
        let current = self.valid_cluster();
        if let Some(c) = &current {
            let watch: Vec<PeerKey> = c.masters.iter().chain([&c.leader]).copied().collect();
            self.observe_leases(now, &watch);
        }
        match current {
            None => {
                let m = self.cfg.minimum_nodes.max(1);
                // Wait for a quorum of members and for the view to settle a moment, and (with
                // bootstrap nodes) until every node had its chance to publish: a node behind
                // NAT publishes once its relay is reserved, or at the grace period.
                if self.member_table.len() < m
                    || now.since(self.members_stable_since) < Duration::from_secs(2)
                    || (!self.infra.is_empty() && now.since(self.started) < PUBLISH_GRACE)
                {
                    return;
                }
                // The electorate: the M members with the largest FNV-32a ids in our view (views
                // converge, and so does this set); the candidate is the first of them.
                let ranked = self.ranked_members();
                let ranked = &ranked[..m.min(ranked.len())];
                // A peer we talk to that would rank into the electorate but has not published
                // yet does so by the grace period (behind NAT, once its relay is reserved): a
                // vote cast before its entry arrives goes to another candidate than the votes
                // cast after, and the epoch is lost. Wait for it a while.
                let coming = now.since(self.started) < PUBLISH_GRACE + Duration::from_secs(5)
                    && self
                        .coming_cache
                        .get((self.gen, self.peers_gen, self.conns_gen), || {
                            let worst = ranked.last().map(key_rank);
                            self.connected_best().iter().any(|(n, _)| {
                                self.peers.get(n).and_then(|p| p.key).is_some_and(|k| {
                                    !self.member_table.contains_key(&k)
                                        && worst.as_ref().is_none_or(|w| key_rank(&k) < *w)
                                })
                            })
                        });
                if coming {
                    return;
                }
                // Only the electorate's votes count: the others need not write one.
                if !ranked.contains(&self.me) {
                    return;
                }
                let cand = ranked[0];
                // A founding vote that led nowhere is retried in the next epoch.
                let epoch = match (self.my_vote(), self.vote_cast) {
                    (Some(v), Some((e, at)))
                        if e == v.epoch && now.since(at) > self.cfg.lease_timeout =>
                    {
                        v.epoch + 1
                    }
                    (Some(v), None) => {
                        self.vote_cast = Some((v.epoch, now));
                        v.epoch
                    }
                    (Some(v), _) => v.epoch,
                    (None, _) => 1,
                };
                self.vote(now, epoch, cand, crypto);
                if cand == self.me && self.votes_for(epoch, &self.me, ranked) * 2 > ranked.len() {
                    let token = format!(
                        "K10{:016x}{:016x}",
                        self.rng.next_u64(),
                        self.rng.next_u64()
                    );
                    let masters = self.pick_masters(ranked, &[self.me], now, true);
                    let c = Cluster {
                        epoch,
                        founded: epoch,
                        leader: self.me,
                        electorate: ranked.to_vec(),
                        masters,
                        join: JoinData {
                            server: self.my_addr(),
                            token,
                        },
                    };
                    self.write_cluster(now, &c, crypto);
                }
            }
            Some(c) => {
                if c.epoch != self.skipped_epoch {
                    self.skipped.clear();
                    self.skipped_epoch = c.epoch;
                }
                if c.leader == self.me {
                    self.lead(now, c, crypto);
                    return;
                }
                if c.masters.contains(&self.me) {
                    self.heartbeat(now, crypto);
                }
                if !c.electorate.contains(&self.me) {
                    return;
                }
                // The leader's lease stopped moving: elect a new one in the next epoch.
                let grace = now.since(self.started) > self.cfg.lease_timeout;
                if !grace || self.lease_fresh(&c.leader, now) {
                    return;
                }
                let mut epoch = c.epoch + 1;
                if let Some((e, at)) = self.vote_cast {
                    if e >= epoch {
                        // Our vote stands until its candidate had time to claim.
                        if now.since(at) <= self.cfg.lease_timeout {
                            epoch = e;
                        } else {
                            if let Some(v) = self.my_vote() {
                                self.skipped.insert(v.candidate);
                            }
                            epoch = e + 1;
                        }
                    }
                }
                let mut cands: Vec<PeerKey> = c
                    .masters
                    .iter()
                    .chain(c.electorate.iter())
                    .filter(|k| **k != c.leader && !self.skipped.contains(*k))
                    .filter(|k| {
                        **k == self.me || self.lease_fresh(k, now) || !c.masters.contains(k)
                    })
                    .copied()
                    .collect();
                cands.sort();
                cands.dedup();
                // Masters with fresh leases first, then the rest, each by FNV-32a.
                cands.sort_by_key(|k| {
                    (
                        !(c.masters.contains(k) && (self.lease_fresh(k, now) || *k == self.me)),
                        key_rank(k),
                    )
                });
                let Some(&cand) = cands.first() else { return };
                self.vote(now, epoch, cand, crypto);
                if cand == self.me
                    && self.votes_for(epoch, &self.me, &c.electorate) * 2 > c.electorate.len()
                {
                    let keep: Vec<PeerKey> = c
                        .masters
                        .iter()
                        .filter(|k| **k == self.me || self.lease_fresh(k, now))
                        .copied()
                        .collect();
                    let masters = self.pick_masters(
                        &self.member_table.keys().copied().collect::<Vec<_>>(),
                        &keep,
                        now,
                        false,
                    );
                    let n = Cluster {
                        epoch,
                        founded: c.founded,
                        leader: self.me,
                        electorate: c.electorate.clone(),
                        masters,
                        join: JoinData {
                            server: self.my_addr(),
                            token: c.join.token.clone(),
                        },
                    };
                    self.write_cluster(now, &n, crypto);
                }
            }
        }
    }

    /// `keep` plus the best other members (by FNV-32a) up to 1 + ha_masters.
    fn pick_masters(
        &self,
        pool: &[PeerKey],
        keep: &[PeerKey],
        now: Instant,
        founding: bool,
    ) -> Vec<PeerKey> {
        let mut masters: Vec<PeerKey> = keep.to_vec();
        let mut rest: Vec<PeerKey> = pool
            .iter()
            .filter(|k| !masters.contains(k))
            .copied()
            .collect();
        // Replacements must look alive: we are connected to them or they renew a lease.
        if !founding {
            let connected: BTreeSet<PeerKey> = self
                .peers
                .values()
                .filter(|p| p.any_verified())
                .filter_map(|p| p.key)
                .collect();
            rest.retain(|k| connected.contains(k) || self.lease_fresh(k, now));
        }
        rest.sort_by_key(key_rank);
        for k in rest {
            if masters.len() > self.cfg.ha_masters {
                break;
            }
            masters.push(k);
        }
        masters
    }

    fn write_cluster(&mut self, now: Instant, c: &Cluster, crypto: &mut dyn Crypto) {
        // One record per epoch: earlier decisions stay, and keep proving later ones.
        let key = format!("{K_CLUSTER}/{}", c.epoch);
        let v = self.ledger.entry(&self.me, &key).map_or(0, |e| e.version) + 1;
        let bytes = postcard::to_allocvec(c).expect("serializes");
        self.write(now, &key, v, bytes, crypto);
        self.next_lease = now;
    }

    fn heartbeat(&mut self, now: Instant, crypto: &mut dyn Crypto) {
        if now >= self.next_lease {
            self.next_lease = now + self.cfg.lease_interval;
            // Versions are wall-clock milliseconds, so a restarted master's renewals rank
            // above the ones it sent before.
            let wall_ms = self.cfg.epoch_secs * 1000 + now.as_micros() / 1000;
            self.lease_version = (self.lease_version + 1).max(wall_ms);
            let e = Entry::signed(&self.signer, K_LEASE, self.lease_version, None);
            let _ = crypto;
            self.leases.insert(self.me, (self.lease_version, now));
            self.forward_lease(now, None, &e);
        }
    }

    /// As leader: renew the lease and replace masters whose leases stopped.
    fn lead(&mut self, now: Instant, c: Arc<Cluster>, crypto: &mut dyn Crypto) {
        self.heartbeat(now, crypto);
        if now.since(self.started) <= self.cfg.lease_timeout {
            return;
        }
        let keep: Vec<PeerKey> = c
            .masters
            .iter()
            .filter(|k| **k == self.me || self.lease_fresh(k, now))
            .copied()
            .collect();
        if keep.len() == c.masters.len() {
            return;
        }
        let pool: Vec<PeerKey> = self.members().keys().copied().collect();
        let masters = self.pick_masters(&pool, &keep, now, false);
        if masters != c.masters {
            let n = Cluster {
                masters,
                ..(*c).clone()
            };
            self.write_cluster(now, &n, crypto);
        }
    }

    fn elect_kairos(&mut self, now: Instant, crypto: &mut dyn Crypto) {
        let members = self.members();
        if members.len() < self.cfg.minimum_nodes {
            return;
        }
        let names: Vec<String> = members.keys().map(name_of).collect();
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        let any_roles = self.ledger.live().any(|e| e.key == K_ROLES);
        if kairos_leader(&refs) == Some(self.name.as_str()) && !any_roles {
            if let Some(a) = kairos_assign(
                &refs,
                self.cfg.minimum_nodes,
                self.cfg.ha_masters,
                &mut self.rng,
            ) {
                let bytes = postcard::to_allocvec(&a).expect("serializes");
                self.write(now, K_ROLES, 1, bytes, crypto);
            }
        }
        if let Some((Role::ClusterInit, _)) = self
            .kairos_view()
            .and_then(|a| a.roles.get(&self.name).map(|r| (*r, 1)))
        {
            if self.ledger.get(&self.me, K_JOIN).is_none() {
                let token = format!(
                    "K10{:016x}{:016x}",
                    self.rng.next_u64(),
                    self.rng.next_u64()
                );
                let bytes = postcard::to_allocvec(&JoinData {
                    server: self.my_addr(),
                    token,
                })
                .expect("serializes");
                self.write(now, K_JOIN, 1, bytes, crypto);
            }
        }
    }

    /// Kairos mode: the assignment written by the largest-FNV author.
    fn kairos_view(&self) -> Option<Assignment> {
        self.ledger
            .live()
            .filter(|e| e.key == K_ROLES)
            .filter_map(|e| {
                postcard::from_bytes::<Assignment>(e.value.as_deref()?)
                    .ok()
                    .filter(|a| a.leader == name_of(&e.owner))
            })
            .max_by_key(|a| (fnv32a(a.leader.as_bytes()), a.leader.clone()))
    }

    /// Follows the decision in the ledger: our role, the join data, cluster-init.
    fn follow(&mut self, _now: Instant) {
        let (role, join) = match self.cfg.mode {
            Mode::Quorum => match self.valid_cluster() {
                None => (None, None),
                Some(c) => {
                    let role = if c.leader == self.me && c.epoch == c.founded {
                        Role::ClusterInit
                    } else if c.masters.contains(&self.me) || c.leader == self.me {
                        Role::Master
                    } else {
                        Role::Worker
                    };
                    (Some((role, c.epoch)), Some(c.join.clone()))
                }
            },
            Mode::Kairos => match self.kairos_view() {
                None => (None, None),
                Some(a) => {
                    let role = a.roles.get(&self.name).copied();
                    let init = a
                        .roles
                        .iter()
                        .find(|(_, r)| **r == Role::ClusterInit)
                        .map(|(n, _)| n.clone());
                    let join = init.and_then(|n| {
                        self.ledger
                            .live()
                            .find(|e| e.key == K_JOIN && name_of(&e.owner) == n)
                            .and_then(|e| {
                                postcard::from_bytes::<JoinData>(e.value.as_deref()?).ok()
                            })
                    });
                    (role.map(|r| (r, 1)), join)
                }
            },
        };
        // A cluster-init master keeps that name while it stays a leader or master: K3s was
        // started with --cluster-init there.
        let role = match (role, self.my_role) {
            (Some((Role::Master, e)), Some((Role::ClusterInit, _))) => Some((Role::ClusterInit, e)),
            (r, _) => r,
        };
        if role != self.my_role {
            if let Some((r, epoch)) = role {
                if r == Role::ClusterInit && !self.cluster_init_done {
                    self.cluster_init_done = true;
                    self.events.push_back(NodeEvent::ClusterInit);
                }
                if self.my_role.map(|(r, _)| r) != Some(r) {
                    self.events.push_back(NodeEvent::Role { role: r, epoch });
                }
            }
            self.my_role = role;
        }
        if join != self.my_join {
            if let Some(j) = &join {
                self.events.push_back(NodeEvent::Join(j.clone()));
            }
            self.my_join = join;
        }
    }
}

fn vote_key(epoch: u64) -> String {
    format!("{K_VOTE}/{epoch}")
}

/// The peers of `paths` without a path.
fn unpathed(paths: Vec<(NetId, Option<PathKind>)>) -> Rc<[NetId]> {
    paths
        .into_iter()
        .filter(|(_, k)| k.is_none())
        .map(|(n, _)| n)
        .collect()
}

/// Whether a peer is a candidate for a path, and if so whether we hold a verified path to it
/// and whether only a relay connects us (hole punching failed, not public, not on our LAN).
/// Candidates: peers we can reach (on the LAN, public, or through their relay), and those
/// that reached us. A peer behind NAT whose relay we do not know is not one: nothing would
/// dial it (a stale record from a member evicted from a capped ledger looks like that). A
/// peer we failed to reach three times in a row is dropped until news of it arrives (a
/// record or member entry with another reach resets the count) or its backoff is over: it
/// may have moved to another relay, or be gone.
fn candidate(p: &Peer) -> Option<(bool, bool)> {
    let reachable = !p.conns.is_empty()
        || p.lan.is_some()
        || (p.reach.public && !p.reach.direct.is_empty())
        || p.reach.relay.is_some();
    let dropped = p.failures >= PEER_FAILURES_MAX && p.conns.is_empty();
    if p.foreign || dropped || !reachable {
        return None;
    }
    let relay_only = p.punch_failed && !p.reach.public && p.lan.is_none();
    Some((p.any_verified(), relay_only))
}

/// Sets a peer's count of failed dials in a row, keeping `failed` (the peers at
/// [`PEER_FAILURES_MAX`] or more) in step.
fn set_failures(p: &mut Peer, n: u32, failed: &mut usize) {
    match (p.failures >= PEER_FAILURES_MAX, n >= PEER_FAILURES_MAX) {
        (false, true) => *failed += 1,
        (true, false) => *failed -= 1,
        _ => {}
    }
    p.failures = n;
}

fn backoff(failures: u32) -> Duration {
    Duration::from_secs((5u64 << failures.min(4)).min(60))
}

/// Whether `me` sends the periodic head rounds to `peer`: exactly one end of each pair
/// does (a comparison that finds a difference syncs both ends), picked by the pair's bit
/// parity so that neither low nor high ids send them all.
fn heads_from(me: NetId, peer: NetId) -> bool {
    let odd = (me.0 ^ peer.0).count_ones() % 2 == 1;
    (me < peer) == odd
}

/// Rendezvous hashing: a stable pseudo-random rank of a pair.
fn pair_score(a: NetId, b: NetId) -> u64 {
    // splitmix64's finalizer over the pair: cheap, stable, well mixed.
    let mut z = a.0.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ b.0;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// For the fuzzer (`crate::fuzzing::mesh_frames`): what a peer holding the token but
/// sending anything it likes does to a node. Two nodes of one token are connected and their
/// Hellos exchanged; then `data` is cut into frames (a length byte, then that many bytes)
/// that node 1 receives from node 2, with time moving on and the node's actions drained
/// between them. The node must not panic, and what it holds stays within its bounds.
#[cfg(any(test, feature = "fuzz"))]
pub fn fuzz_frames(data: &[u8]) {
    use crate::mesh::ledger::MemoCrypto;
    let token = Arc::new(NetworkToken::generate(&mut Rng::seed(7)));
    let node = |id: u64| {
        let mut cfg = NodeConfig::new(NetId(id), token.clone());
        cfg.mdns = false;
        cfg.minimum_nodes = 2;
        Node::new(
            cfg,
            SigningKey::from_bytes(&[id as u8; 32]),
            Rng::seed(id),
            Instant::ZERO,
        )
    };
    let (mut a, mut b) = (node(1), node(2));
    let mut v = MemoCrypto::default();
    let c = ConnRef(1);
    a.handle_connected(Instant::ZERO, c, NetId(2), PathKind::Direct, None);
    b.handle_connected(Instant::ZERO, c, NetId(1), PathKind::Direct, None);
    let drain = |n: &mut Node| -> Vec<Vec<u8>> {
        std::iter::from_fn(|| n.poll_action())
            .filter_map(|act| match act {
                Action::Send { conn, bytes } if conn == c => Some(bytes),
                _ => None,
            })
            .collect()
    };
    // The honest Hellos first, so the rogue's plain frames reach the decoder.
    for m in drain(&mut b) {
        a.handle_message(Instant::ZERO, c, &m, &mut v);
    }
    drain(&mut a);
    let mut now = Instant::ZERO;
    let mut rest = data;
    while let Some((&len, tail)) = rest.split_first() {
        let n = usize::from(len).min(tail.len());
        let (frame, after) = tail.split_at(n);
        rest = after;
        now = now + Duration::from_millis(100);
        a.handle_message(now, c, frame, &mut v);
        if len % 4 == 0 {
            a.handle_timeout(now, &mut v);
        }
        drain(&mut a);
        assert!(
            a.held_bytes <= SEALED_BYTES_MAX,
            "held frames beyond their bound"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mesh::ledger::MemoCrypto;

    fn node(token: &Arc<NetworkToken>, id: u64) -> Node {
        let mut cfg = NodeConfig::new(NetId(id), token.clone());
        cfg.mdns = false;
        cfg.minimum_nodes = 2;
        let key = SigningKey::from_bytes(&[id as u8; 32]);
        Node::new(cfg, key, Rng::seed(id), Instant::ZERO)
    }

    proptest::proptest! {
        /// The peer table's map answers as an ordered map does, through any mix of
        /// inserts, updates and removals (removal moves another value's slot).
        #[test]
        fn vec_map_agrees_with_an_ordered_map(
            ops in proptest::collection::vec((0u8..4, 0u64..40, proptest::num::u32::ANY), 0..300)
        ) {
            let mut m: VecMap<u64, u32> = VecMap::default();
            let mut want = BTreeMap::new();
            // The slot each key was last given: fresh, or stale after removals.
            let mut hints = BTreeMap::new();
            for (op, k, v) in ops {
                match op {
                    0 => {
                        let (slot, x) = m.get_or_default_slot(k);
                        *x = v;
                        hints.insert(k, slot);
                        want.insert(k, v);
                    }
                    1 => proptest::prop_assert_eq!(m.remove(&k), want.remove(&k)),
                    2 => {
                        m.insert(k, v);
                        want.insert(k, v);
                    }
                    _ => {
                        if let Some(x) = m.get_mut(&k) {
                            *x ^= v;
                        }
                        if let Some(x) = want.get_mut(&k) {
                            *x ^= v;
                        }
                    }
                }
                proptest::prop_assert_eq!(m.len(), want.len());
                proptest::prop_assert_eq!(m.contains_key(&k), want.contains_key(&k));
                proptest::prop_assert_eq!(m.get(&k), want.get(&k));
                // A hint is only a hint: a stale or made-up one finds the same value.
                let hint = hints.get(&k).copied().unwrap_or(v % 64);
                proptest::prop_assert_eq!(m.get_hinted(&k, hint), want.get(&k));
                proptest::prop_assert_eq!(m.get_hinted(&k, v % 64), want.get(&k));
                proptest::prop_assert_eq!(
                    m.get_mut_hinted(&k, v % 64).map(|x| *x),
                    want.get(&k).copied()
                );
            }
            let walked: Vec<(u64, u32)> = m.iter().map(|(k, v)| (*k, *v)).collect();
            let expected: Vec<(u64, u32)> = want.iter().map(|(k, v)| (*k, *v)).collect();
            proptest::prop_assert_eq!(walked, expected);
        }
    }

    /// The bytes `n` queued to send on `conn`.
    fn sends(n: &mut Node, conn: ConnRef) -> Vec<Vec<u8>> {
        std::iter::from_fn(|| n.poll_action())
            .filter_map(|a| match a {
                Action::Send { conn: c, bytes } if c == conn => Some(bytes),
                _ => None,
            })
            .collect()
    }

    /// Runs a connected pair for 20 virtual seconds, carrying what each sends on `conn`.
    fn talk(a: &mut Node, b: &mut Node, conn: ConnRef, v: &mut MemoCrypto) {
        let mut now = Instant::ZERO;
        for _ in 0..40 {
            now = now + Duration::from_millis(500);
            a.handle_timeout(now, v);
            b.handle_timeout(now, v);
            let (to_b, to_a) = (sends(a, conn), sends(b, conn));
            for m in &to_b {
                b.handle_message(now, conn, m, v);
            }
            for m in &to_a {
                a.handle_message(now, conn, m, v);
            }
        }
    }

    /// Two fresh nodes of one token (ids 1 and 2), told at time zero of their connection
    /// `ConnRef(1)`.
    fn connected_pair(token: &Arc<NetworkToken>) -> (Node, Node) {
        let (mut a, mut b) = (node(token, 1), node(token, 2));
        a.handle_connected(Instant::ZERO, ConnRef(1), NetId(2), PathKind::Direct, None);
        b.handle_connected(Instant::ZERO, ConnRef(1), NetId(1), PathKind::Direct, None);
        (a, b)
    }

    /// Two nodes of one token, connected on `ConnRef(1)` and talked to agreement.
    fn synced_pair(token: &Arc<NetworkToken>, v: &mut MemoCrypto) -> (Node, Node) {
        let (mut a, mut b) = connected_pair(token);
        talk(&mut a, &mut b, ConnRef(1), v);
        (a, b)
    }

    /// A plain frame that overtakes the peer's Hello waits for it and is then handled; it
    /// counts as the answer to our own Hello, so that is not sent again. At most
    /// `HELD_FRAMES_MAX` wait per connection.
    #[test]
    fn plain_frames_that_overtake_the_hello_wait_for_it() {
        let token = Arc::new(NetworkToken::generate(&mut Rng::seed(5)));
        let mut v = MemoCrypto::default();
        let (mut a, mut b) = connected_pair(&token);
        let (c, t0) = (ConnRef(1), Instant::ZERO);
        let (a_hello, b_hello) = (sends(&mut a, c), sends(&mut b, c));
        for m in &a_hello {
            b.handle_message(t0, c, m, &mut v);
        }
        let answer = sends(&mut b, c);
        assert!(!answer.is_empty() && answer.iter().all(|m| m[0] == FRAME_PLAIN));
        // b's answer overtakes b's Hello.
        for m in &answer {
            a.handle_message(t0, c, m, &mut v);
        }
        assert!(!a.paths().contains_key(&NetId(2)));
        assert_eq!(a.stats.messages_refused, 0);
        for m in &b_hello {
            a.handle_message(t0, c, m, &mut v);
        }
        assert!(a.paths().contains_key(&NetId(2)));
        assert!(a.held.is_empty() && a.held_bytes == 0);
        a.handle_timeout(t0 + Duration::from_millis(2500), &mut v);
        assert!(
            sends(&mut a, c).iter().all(|m| m[0] != FRAME_SEALED),
            "the held answer acknowledged a's Hello"
        );
        // A connection that never shows a Hello holds a bounded number of frames, and
        // lets go of them when it closes.
        let c2 = ConnRef(2);
        a.handle_connected(t0, c2, NetId(3), PathKind::Direct, None);
        for _ in 0..HELD_FRAMES_MAX + 3 {
            a.handle_message(t0, c2, &answer[0], &mut v);
        }
        assert_eq!(a.held[&c2].len(), HELD_FRAMES_MAX);
        assert_eq!(a.stats.messages_refused, 3);
        a.handle_closed(t0, c2);
        assert!(a.held.is_empty() && a.held_bytes == 0);
    }

    /// `heads_from` names exactly one end of every pair, and spreads the duty: each
    /// node sends them to about half of its peers.
    #[test]
    fn heads_from_picks_exactly_one_end_of_each_pair_and_spreads_the_duty() {
        for a in 0..200u64 {
            let mine = (0..200u64)
                .filter(|&b| b != a)
                .filter(|&b| {
                    let (x, y) = (
                        heads_from(NetId(a), NetId(b)),
                        heads_from(NetId(b), NetId(a)),
                    );
                    assert_ne!(x, y, "{a} {b}");
                    x
                })
                .count();
            assert!(
                (60..=140).contains(&mine),
                "node {a} sends to {mine} of 199"
            );
        }
    }

    /// No founding vote while a peer we talk to, which would rank into the electorate, has
    /// not published yet (it will, by the grace period): votes cast before and after its
    /// entry arrives would go to different candidates.
    #[test]
    fn the_founding_vote_waits_for_a_better_ranked_peer_that_has_not_published() {
        let token = Arc::new(NetworkToken::generate(&mut Rng::seed(5)));
        let mut v = MemoCrypto::default();
        let (a, b) = (node(&token, 1), node(&token, 2));
        // A third node that outranks both.
        let c = (3..64)
            .map(|id| node(&token, id))
            .find(|c| key_rank(&c.key()) < key_rank(&a.key()).min(key_rank(&b.key())))
            .expect("some id outranks both");
        let mut nodes = [a, b, c];
        let nets: Vec<NetId> = nodes.iter().map(|n| n.cfg.net).collect();
        let links = [(0, 1, ConnRef(1)), (0, 2, ConnRef(2)), (1, 2, ConnRef(3))];
        for &(x, y, conn) in &links {
            nodes[x].handle_connected(Instant::ZERO, conn, nets[y], PathKind::Direct, None);
            nodes[y].handle_connected(Instant::ZERO, conn, nets[x], PathKind::Direct, None);
        }
        let votes = |n: &Node| {
            n.ledger()
                .entries()
                .filter(|e| e.key.starts_with("vote/"))
                .count()
        };
        let mut now = Instant::ZERO;
        for step in 0..40 {
            now = now + Duration::from_millis(500);
            // c answers but does not publish until 9 s.
            let ticking = if step < 18 { 2 } else { 3 };
            for n in nodes.iter_mut().take(ticking) {
                n.handle_timeout(now, &mut v);
            }
            let mut out: Vec<(usize, ConnRef, Vec<u8>)> = Vec::new();
            for (i, n) in nodes.iter_mut().enumerate() {
                while let Some(act) = n.poll_action() {
                    if let Action::Send { conn, bytes } = act {
                        out.push((i, conn, bytes));
                    }
                }
            }
            for (from, conn, bytes) in out {
                let &(x, y, _) = links.iter().find(|l| l.2 == conn).expect("known link");
                let to = if from == x { y } else { x };
                nodes[to].handle_message(now, conn, &bytes, &mut v);
            }
            if step == 17 {
                assert_eq!(nodes[0].members().len(), 2, "a and b know each other");
                assert_eq!(votes(&nodes[0]) + votes(&nodes[1]), 0, "nobody voted yet");
            }
        }
        let c_key = nodes[2].key();
        for n in &nodes {
            let cluster = n.cluster().expect("a cluster once c published");
            assert_eq!((cluster.epoch, cluster.leader), (1, c_key));
        }
    }

    /// A node pulls from one peer at a time; a differing head heard meanwhile is compared
    /// as soon as that pull is answered, not at the next head round.
    #[test]
    fn a_head_heard_during_a_pull_is_compared_when_the_pull_is_answered() {
        let token = Arc::new(NetworkToken::generate(&mut Rng::seed(5)));
        let mut v = MemoCrypto::default();
        let (mut a, mut b, mut c) = (node(&token, 1), node(&token, 2), node(&token, 3));
        // b and c publish their own member entries: their ledgers differ.
        let t0 = Instant::ZERO + Duration::from_millis(2500);
        b.handle_timeout(t0, &mut v);
        c.handle_timeout(t0, &mut v);
        assert_ne!(b.head(), c.head());
        let (ab, ac) = (ConnRef(1), ConnRef(2));
        a.handle_connected(t0, ab, NetId(2), PathKind::Direct, None);
        a.handle_connected(t0, ac, NetId(3), PathKind::Direct, None);
        b.handle_connected(t0, ab, NetId(1), PathKind::Direct, None);
        c.handle_connected(t0, ac, NetId(1), PathKind::Direct, None);
        let (b_hello, c_hello) = (sends(&mut b, ab), sends(&mut c, ac));
        for m in &b_hello {
            a.handle_message(t0, ab, m, &mut v);
        }
        let to_b: Vec<Vec<u8>> = std::iter::from_fn(|| a.poll_action())
            .filter_map(|x| match x {
                Action::Send { conn, bytes } if conn == ab => Some(bytes),
                _ => None,
            })
            .collect();
        // c's head arrives while a pulls from b.
        for m in &c_hello {
            a.handle_message(t0, ac, m, &mut v);
        }
        let plain_to_c = |a: &mut Node| {
            sends(a, ac)
                .iter()
                .filter(|m| m[0] == FRAME_PLAIN)
                .filter_map(|m| postcard::from_bytes::<Wire>(&m[1..]).ok())
                .filter(|w| matches!(w, Wire::Versions { .. }))
                .count()
        };
        assert_eq!(plain_to_c(&mut a), 0, "one pull at a time");
        for m in &to_b {
            b.handle_message(t0, ab, m, &mut v);
        }
        for m in sends(&mut b, ab) {
            a.handle_message(t0, ab, &m, &mut v);
        }
        assert_eq!(plain_to_c(&mut a), 1, "b answered: now a pulls from c");
    }

    /// Only the Hello is sealed. A plain frame on a connection whose Hello has not opened is
    /// not taken for a foreign peer, and a Hello nobody answered is sent again.
    #[test]
    fn a_lost_hello_is_sent_again_and_plain_frames_wait_for_it() {
        let token = Arc::new(NetworkToken::generate(&mut Rng::seed(5)));
        let mut v = MemoCrypto::default();
        let (mut a, mut b) = connected_pair(&token);
        let (c, t0) = (ConnRef(1), Instant::ZERO);
        let lost = sends(&mut a, c);
        assert_eq!(lost.len(), 1);
        assert_eq!(lost[0][0], FRAME_SEALED);
        for m in sends(&mut b, c) {
            a.handle_message(t0, c, &m, &mut v);
        }
        assert!(a.paths().contains_key(&NetId(2)));
        let to_b = sends(&mut a, c);
        assert!(!to_b.is_empty() && to_b.iter().all(|m| m[0] == FRAME_PLAIN));
        for m in &to_b {
            b.handle_message(t0, c, m, &mut v);
        }
        assert!(!b.paths().contains_key(&NetId(1)));
        assert!(!b.describe_peer(NetId(1)).contains("foreign true"));
        // No plain frame came back to a: its Hello goes again, and now b opens it.
        let t1 = t0 + Duration::from_millis(2500);
        a.handle_timeout(t1, &mut v);
        let again = sends(&mut a, c);
        assert!(again.iter().any(|m| m[0] == FRAME_SEALED));
        for m in &again {
            b.handle_message(t1, c, m, &mut v);
        }
        assert!(b.paths().contains_key(&NetId(1)));
        // b's answer is plain, which tells a its Hello opened: no more resends.
        for m in sends(&mut b, c) {
            a.handle_message(t1, c, &m, &mut v);
        }
        a.handle_timeout(t1 + Duration::from_secs(3), &mut v);
        assert!(sends(&mut a, c).iter().all(|m| m[0] != FRAME_SEALED));
    }

    #[test]
    fn peers_with_the_token_sync_and_elect_those_without_learn_nothing() {
        let mut rng = Rng::seed(3);
        let token = Arc::new(NetworkToken::generate(&mut rng));
        let other = Arc::new(NetworkToken::generate(&mut rng));
        let mut v = MemoCrypto::default();
        // Same token: the pair syncs, elects one cluster-init and the other gets join data.
        let (mut a, b) = synced_pair(&token, &mut v);
        assert_eq!(a.head(), b.head());
        assert_eq!(a.members().len(), 2);
        assert_eq!(
            u8::from(a.did_cluster_init()) + u8::from(b.did_cluster_init()),
            1
        );
        assert!(a.join_data().is_some() && a.join_data() == b.join_data());
        // Another token: the first message does not open, the connection is closed, and
        // neither side's ledger holds the other.
        let mut x = node(&other, 9);
        let c2 = ConnRef(2);
        x.handle_connected(Instant::ZERO, c2, NetId(1), PathKind::Direct, None);
        a.handle_connected(Instant::ZERO, c2, NetId(9), PathKind::Direct, None);
        let (from_x, from_a) = (sends(&mut x, c2), sends(&mut a, c2));
        assert!(!from_x.is_empty() && !from_a.is_empty());
        for m in &from_x {
            a.handle_message(Instant::ZERO, c2, m, &mut v);
        }
        for m in &from_a {
            x.handle_message(Instant::ZERO, c2, m, &mut v);
        }
        for n in [&mut a, &mut x] {
            let acts: Vec<Action> = std::iter::from_fn(|| n.poll_action()).collect();
            assert!(acts.contains(&Action::Close { conn: c2 }), "{acts:?}");
        }
        assert!(a.members().values().all(|n| *n != NetId(9)));
        assert!(x.members().values().all(|n| *n == NetId(9)));
        assert!(a.stats.messages_refused > 0 && x.stats.messages_refused > 0);
    }

    #[test]
    fn a_restarted_founder_does_not_run_cluster_init_again() {
        let token = Arc::new(NetworkToken::generate(&mut Rng::seed(5)));
        let mut v = MemoCrypto::default();
        let (a, b) = synced_pair(&token, &mut v);
        let founder = if a.did_cluster_init() { a } else { b };
        let id = if founder.cfg.net == NetId(1) { 1 } else { 2 };
        // Power cut: a new process with the ledger from disk.
        let mut again = node(&token, id);
        again.restore(founder.ledger().clone());
        assert!(again.did_cluster_init());
        again.handle_timeout(Instant::from_micros(1), &mut v);
        let events: Vec<NodeEvent> = std::iter::from_fn(|| again.poll_event()).collect();
        assert!(!events.contains(&NodeEvent::ClusterInit), "{events:?}");
        assert!(again.vote_cast.is_some());
    }

    #[test]
    fn sealed_messages_open_with_the_previous_and_next_window_only() {
        let token = Arc::new(NetworkToken::generate(&mut Rng::seed(4)));
        let mut a = node(&token, 1);
        let interval = token.otp.crypto.interval * 1_000_000;
        let t0 = Instant::from_micros(interval * 5 + 1);
        let sealed = a.seal(t0, b"hello");
        for (dt, ok) in [(0i64, true), (1, true), (-1, true), (2, false), (-2, false)] {
            let at = if dt >= 0 {
                t0 + Duration::from_micros(interval * dt as u64)
            } else {
                t0 - Duration::from_micros(interval * dt.unsigned_abs())
            };
            assert_eq!(a.open(at, &sealed).is_some(), ok, "window offset {dt}");
        }
        let mut tampered = sealed.clone();
        *tampered.last_mut().unwrap() ^= 1;
        assert_eq!(a.open(t0, &tampered), None);
    }
}
