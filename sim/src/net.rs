//! The packet network: hosts in realms (the internet, or a LAN behind a NAT box), links with
//! latency, jitter, loss and bandwidth, NAT boxes with RFC 4787 mapping and filtering
//! behaviour, mapping timeouts, hairpinning and NATs behind NATs, partitions and hosts that
//! go down. A packet is routed in two phases: [`Network::send`] walks it up from the sender
//! through every NAT on its way (creating or refreshing mappings) at send time, and
//! [`Network::arrive`] walks it down through the NATs in front of the receiver at arrival
//! time, so a filtering decision sees the holes that exist when the packet gets there (what
//! decides a hole punch).
//!
//! Everything iterated is ordered; randomness (jitter, loss, port choice) comes from the
//! network's own [`Rng`].

use std::collections::HashMap;
use std::fmt;
use std::hash::BuildHasherDefault;
use std::net::{Ipv4Addr, SocketAddrV4};

use crate::rng::Rng;
use crate::time::{Duration, Instant};

/// A hash map with a fixed hasher: the same inserts give the same iteration order, run after
/// run (std's default hasher is randomly keyed per process).
pub type DetMap<K, V> = HashMap<K, V, BuildHasherDefault<WordHasher>>;

/// The simulator's hasher for its own small keys (ids, ports, addresses): each word is
/// mixed in with a rotate, an XOR and a multiply by an odd constant. Much cheaper than
/// SipHash, and unkeyed: simulated state is not chosen by an adversary.
#[derive(Debug, Default, Clone, Copy)]
pub struct WordHasher(u64);

impl WordHasher {
    fn add(&mut self, word: u64) {
        self.0 = (self.0.rotate_left(5) ^ word).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
}

impl std::hash::Hasher for WordHasher {
    fn finish(&self) -> u64 {
        // The table takes its buckets from the low bits: fold the well-mixed high ones in.
        self.0 ^ (self.0 >> 32)
    }

    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut w = [0u8; 8];
            w[..chunk.len()].copy_from_slice(chunk);
            self.add(u64::from_le_bytes(w));
        }
    }

    fn write_u8(&mut self, n: u8) {
        self.add(u64::from(n));
    }

    fn write_u16(&mut self, n: u16) {
        self.add(u64::from(n));
    }

    fn write_u32(&mut self, n: u32) {
        self.add(u64::from(n));
    }

    fn write_u64(&mut self, n: u64) {
        self.add(n);
    }

    fn write_usize(&mut self, n: usize) {
        self.add(n as u64);
    }
}

pub type Addr = SocketAddrV4;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct HostId(pub u32);

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NatId(pub u32);

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RealmId(pub u32);

impl RealmId {
    /// The public internet: the realm every other realm is (eventually) behind.
    pub const INTERNET: RealmId = RealmId(0);
}

impl fmt::Display for HostId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "h{}", self.0)
    }
}

/// RFC 4787 section 4.1: what decides whether two flows from the same internal address share
/// an external port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mapping {
    EndpointIndependent,
    AddressDependent,
    AddressAndPortDependent,
}

/// RFC 4787 section 5: which inbound packets a mapping lets through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Filtering {
    EndpointIndependent,
    AddressDependent,
    AddressAndPortDependent,
}

/// The behaviours' names in scenario files and reports.
pub trait KebabName {
    fn kebab(&self) -> &'static str;
}

macro_rules! kebab_enum {
    ($t:ty) => {
        impl KebabName for $t {
            fn kebab(&self) -> &'static str {
                match self {
                    Self::EndpointIndependent => "endpoint-independent",
                    Self::AddressDependent => "address-dependent",
                    Self::AddressAndPortDependent => "address-and-port-dependent",
                }
            }
        }
        impl std::str::FromStr for $t {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, String> {
                match s {
                    "endpoint-independent" => Ok(Self::EndpointIndependent),
                    "address-dependent" => Ok(Self::AddressDependent),
                    "address-and-port-dependent" => Ok(Self::AddressAndPortDependent),
                    _ => Err(format!(
                        "unknown behaviour {s:?} (expected endpoint-independent, \
                         address-dependent or address-and-port-dependent)"
                    )),
                }
            }
        }
    };
}

kebab_enum!(Mapping);
kebab_enum!(Filtering);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NatSpec {
    pub mapping: Mapping,
    pub filtering: Filtering,
    /// A mapping with no outbound packet for this long is gone (RFC 4787 REQ-5: at least two
    /// minutes; many home routers use far less for UDP).
    pub timeout: Duration,
    /// Packets from inside to the NAT's own external address come back in (RFC 4787 REQ-9).
    pub hairpin: bool,
    /// One-way time a packet spends crossing this box.
    pub latency: Duration,
}

impl NatSpec {
    pub fn new(mapping: Mapping, filtering: Filtering) -> Self {
        Self {
            mapping,
            filtering,
            timeout: Duration::from_secs(120),
            hairpin: true,
            latency: Duration::from_micros(500),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LinkSpec {
    /// One-way latency of the host's access link.
    pub latency: Duration,
    /// Extra delay, uniform in `0..=jitter`, per packet.
    pub jitter: Duration,
    /// Probability of losing a packet on this link, in parts per million.
    pub loss_ppm: u32,
    /// Uplink bandwidth in bits per second; 0 means unlimited.
    pub bandwidth_bps: u64,
}

impl Default for LinkSpec {
    fn default() -> Self {
        Self {
            latency: Duration::from_millis(10),
            jitter: Duration::from_millis(2),
            loss_ppm: 0,
            bandwidth_bps: 100_000_000,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum DropReason {
    Loss,
    /// Nothing in the realm answers to the destination address.
    NoRoute,
    /// Reached a NAT's outside on a port with no (live) mapping.
    NoMapping,
    /// A mapping exists but its filtering refuses this source.
    Filtered,
    /// Sent to the NAT's own external address from inside, and the NAT does not hairpin.
    NoHairpin,
    HostDown,
    Partitioned,
}

impl DropReason {
    pub fn name(self) -> &'static str {
        match self {
            Self::Loss => "loss",
            Self::NoRoute => "no-route",
            Self::NoMapping => "no-mapping",
            Self::Filtered => "filtered",
            Self::NoHairpin => "no-hairpin",
            Self::HostDown => "host-down",
            Self::Partitioned => "partitioned",
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum NetError {
    #[error("realm {0:?} does not exist")]
    NoRealm(RealmId),
    #[error("realm {0:?} has no free addresses left")]
    RealmFull(RealmId),
    #[error("realm {0:?} already has a gateway")]
    HasGateway(RealmId),
    #[error("NAT nesting deeper than {0} levels")]
    TooDeep(usize),
}

/// NATs behind NATs, at most this deep (a packet's walk is bounded by it).
pub const NAT_DEPTH_MAX: usize = 8;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Iface {
    Host(HostId),
    /// The outside interface of a NAT box.
    Nat(NatId),
}

struct Realm {
    ips: DetMap<u32, Iface>,
    gateway: Option<NatId>,
    hosts: Vec<HostId>,
    next_ip: u32,
    ip_end: u32,
    depth: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum MapKey {
    Eim(Addr),
    Adm(Addr, Ipv4Addr),
    Apdm(Addr, Addr),
}

struct MapEntry {
    internal: Addr,
    key: MapKey,
    last_out: Instant,
    /// Remote endpoints this mapping has sent to (what address/port-dependent filtering
    /// checks): one per destination the mapping has sent to.
    sent_to: Vec<Addr>,
}

struct Nat {
    spec: NatSpec,
    outer: RealmId,
    ext_ip: Ipv4Addr,
    inner: RealmId,
    by_key: DetMap<MapKey, u16>,
    by_port: DetMap<u16, MapEntry>,
    next_port: u16,
}

struct Host {
    realm: RealmId,
    ip: Ipv4Addr,
    link: LinkSpec,
    up: bool,
    group: u32,
    uplink_free: Instant,
    /// Offset of this host's clock from true time, in microseconds (may be negative).
    skew_us: i64,
}

/// A packet on its way: everything [`Network::arrive`] needs to finish the walk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InFlight {
    pub from: HostId,
    realm: RealmId,
    /// The source as the realm it is in sees it (after the sender's NATs).
    pub src: Addr,
    pub dst: Addr,
    /// Set when the sender's own NAT turned the packet around (hairpin).
    hairpin_at: Option<NatId>,
}

/// Where a packet ended up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Arrival {
    pub host: HostId,
    pub port: u16,
    /// The source address as the receiver sees it.
    pub src: Addr,
}

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct NetStats {
    pub sent: u64,
    pub delivered: u64,
    pub bytes: u64,
    pub dropped: [u64; 7],
    pub mappings_created: u64,
    pub mappings_expired: u64,
}

impl NetStats {
    fn drop(&mut self, r: DropReason) {
        self.dropped[r as usize] += 1;
    }
}

pub struct Network {
    realms: Vec<Realm>,
    nats: Vec<Nat>,
    hosts: Vec<Host>,
    rng: Rng,
    pub stats: NetStats,
}

fn ip(v: u32) -> Ipv4Addr {
    Ipv4Addr::from(v)
}

impl Network {
    /// An empty internet. Public addresses are handed out from 11.0.0.1 upwards (simulated:
    /// nothing here ever reaches a real network).
    pub fn new(rng: Rng) -> Self {
        let internet = Realm {
            ips: DetMap::default(),
            gateway: None,
            hosts: Vec::new(),
            next_ip: u32::from(Ipv4Addr::new(11, 0, 0, 1)),
            ip_end: u32::from(Ipv4Addr::new(99, 255, 255, 254)),
            depth: 0,
        };
        Self {
            realms: vec![internet],
            nats: Vec::new(),
            hosts: Vec::new(),
            rng,
            stats: NetStats::default(),
        }
    }

    fn realm_mut(&mut self, r: RealmId) -> Result<&mut Realm, NetError> {
        self.realms
            .get_mut(r.0 as usize)
            .ok_or(NetError::NoRealm(r))
    }

    fn alloc_ip(&mut self, r: RealmId, iface: Iface) -> Result<Ipv4Addr, NetError> {
        let realm = self.realm_mut(r)?;
        if realm.next_ip > realm.ip_end {
            return Err(NetError::RealmFull(r));
        }
        let v = realm.next_ip;
        realm.next_ip += 1;
        realm.ips.insert(v, iface);
        Ok(ip(v))
    }

    /// A LAN behind a new NAT box whose outside is in `outer`. LANs use 10.0.0.0/8, so the
    /// same private address exists in many LANs, as it does out there.
    pub fn add_nat(&mut self, outer: RealmId, spec: NatSpec) -> Result<(NatId, RealmId), NetError> {
        let depth = self
            .realms
            .get(outer.0 as usize)
            .ok_or(NetError::NoRealm(outer))?
            .depth
            + 1;
        if depth > NAT_DEPTH_MAX {
            return Err(NetError::TooDeep(NAT_DEPTH_MAX));
        }
        let id = NatId(self.nats.len() as u32);
        let ext_ip = self.alloc_ip(outer, Iface::Nat(id))?;
        let inner = RealmId(self.realms.len() as u32);
        self.realms.push(Realm {
            ips: DetMap::default(),
            gateway: Some(id),
            hosts: Vec::new(),
            next_ip: u32::from(Ipv4Addr::new(10, 0, 0, 2)),
            ip_end: u32::from(Ipv4Addr::new(10, 255, 255, 254)),
            depth,
        });
        let next_port = 1024 + self.rng.below(60_000) as u16;
        self.nats.push(Nat {
            spec,
            outer,
            ext_ip,
            inner,
            by_key: DetMap::default(),
            by_port: DetMap::default(),
            next_port,
        });
        Ok((id, inner))
    }

    pub fn add_host(&mut self, realm: RealmId, link: LinkSpec) -> Result<HostId, NetError> {
        let id = HostId(self.hosts.len() as u32);
        let addr = self.alloc_ip(realm, Iface::Host(id))?;
        self.realm_mut(realm)?.hosts.push(id);
        self.hosts.push(Host {
            realm,
            ip: addr,
            link,
            up: true,
            group: 0,
            uplink_free: Instant::ZERO,
            skew_us: 0,
        });
        Ok(id)
    }

    pub fn host_count(&self) -> usize {
        self.hosts.len()
    }

    pub fn host_ip(&self, h: HostId) -> Ipv4Addr {
        self.hosts[h.0 as usize].ip
    }

    pub fn host_realm(&self, h: HostId) -> RealmId {
        self.hosts[h.0 as usize].realm
    }

    /// The hosts of a realm, in the order they were added (mDNS's multicast reach).
    pub fn realm_hosts(&self, r: RealmId) -> &[HostId] {
        &self.realms[r.0 as usize].hosts
    }

    /// Whether the host sits directly on the internet (no NAT in front of it).
    pub fn is_public(&self, h: HostId) -> bool {
        self.host_realm(h) == RealmId::INTERNET
    }

    pub fn nat_spec(&self, n: NatId) -> NatSpec {
        self.nats[n.0 as usize].spec
    }

    pub fn nat_ext_ip(&self, n: NatId) -> Ipv4Addr {
        self.nats[n.0 as usize].ext_ip
    }

    pub fn nat_inner(&self, n: NatId) -> RealmId {
        self.nats[n.0 as usize].inner
    }

    pub fn set_up(&mut self, h: HostId, up: bool) {
        self.hosts[h.0 as usize].up = up;
    }

    pub fn is_up(&self, h: HostId) -> bool {
        self.hosts[h.0 as usize].up
    }

    /// Puts a host in a partition group: packets between different groups are dropped.
    pub fn set_group(&mut self, h: HostId, group: u32) {
        self.hosts[h.0 as usize].group = group;
    }

    pub fn set_link(&mut self, h: HostId, link: LinkSpec) {
        self.hosts[h.0 as usize].link = link;
    }

    pub fn set_skew(&mut self, h: HostId, skew_us: i64) {
        self.hosts[h.0 as usize].skew_us = skew_us;
    }

    /// The host's own clock reading at true time `now`.
    pub fn local_time(&self, h: HostId, now: Instant) -> Instant {
        let s = self.hosts[h.0 as usize].skew_us;
        if s >= 0 {
            now + Duration::from_micros(s as u64)
        } else {
            now - Duration::from_micros(s.unsigned_abs())
        }
    }

    /// Live mappings of a NAT (for tests and metrics).
    pub fn nat_mappings(&self, n: NatId) -> usize {
        self.nats[n.0 as usize].by_port.len()
    }

    /// Sends `bytes` from `from:port` to `dst`. On success the packet is in flight and must be
    /// handed to [`Network::arrive`] at the returned instant.
    pub fn send(
        &mut self,
        now: Instant,
        from: HostId,
        port: u16,
        dst: Addr,
        bytes: u32,
    ) -> Result<(Instant, InFlight), DropReason> {
        self.stats.sent += 1;
        self.stats.bytes += u64::from(bytes);
        let h = &self.hosts[from.0 as usize];
        if !h.up {
            self.stats.drop(DropReason::HostDown);
            return Err(DropReason::HostDown);
        }
        let link = h.link;
        let mut realm = h.realm;
        let mut src = Addr::new(h.ip, port);
        // Serialization on the sender's uplink.
        let tx = Duration::from_micros(
            (u64::from(bytes) * 8 * 1_000_000)
                .checked_div(link.bandwidth_bps)
                .unwrap_or(0),
        );
        let depart = now.max(h.uplink_free);
        self.hosts[from.0 as usize].uplink_free = depart + tx;
        let mut delay = depart.since(now) + tx + link.latency;
        let mut hairpin_at = None;
        // Walk up through the NATs until the destination is in the current realm.
        for _ in 0..=NAT_DEPTH_MAX {
            if self.realms[realm.0 as usize]
                .ips
                .contains_key(&u32::from(*dst.ip()))
            {
                break;
            }
            let Some(g) = self.realms[realm.0 as usize].gateway else {
                self.stats.drop(DropReason::NoRoute);
                return Err(DropReason::NoRoute);
            };
            let nat = &self.nats[g.0 as usize];
            delay = delay + nat.spec.latency;
            let to_self = *dst.ip() == nat.ext_ip;
            if to_self && !nat.spec.hairpin {
                self.stats.drop(DropReason::NoHairpin);
                return Err(DropReason::NoHairpin);
            }
            let Some(translated) = self.translate_out(now, g, src, dst) else {
                // The NAT has no port left for a new mapping.
                self.stats.drop(DropReason::NoMapping);
                return Err(DropReason::NoMapping);
            };
            src = translated;
            if to_self {
                hairpin_at = Some(g);
                realm = self.nats[g.0 as usize].outer;
                break;
            }
            realm = self.nats[g.0 as usize].outer;
        }
        // The receiving side's link (looked up without touching any state: the real walk
        // happens on arrival).
        let (dst_latency, dst_loss) = match self.peek(realm, dst) {
            Some(d) => {
                let l = self.hosts[d.0 as usize].link;
                (l.latency, l.loss_ppm)
            }
            None => (Duration::ZERO, 0),
        };
        delay = delay + dst_latency;
        let jitter = link.jitter.as_micros();
        if jitter > 0 {
            delay = delay + Duration::from_micros(self.rng.up_to(jitter));
        }
        let lost = (link.loss_ppm > 0 && self.rng.chance(u64::from(link.loss_ppm), 1_000_000))
            || (dst_loss > 0 && self.rng.chance(u64::from(dst_loss), 1_000_000));
        if lost {
            self.stats.drop(DropReason::Loss);
            return Err(DropReason::Loss);
        }
        Ok((
            now + delay,
            InFlight {
                from,
                realm,
                src,
                dst,
                hairpin_at,
            },
        ))
    }

    /// Finishes a packet's walk: down through the NATs in front of its destination, each
    /// applying its filtering as of `now`.
    pub fn arrive(&mut self, now: Instant, f: InFlight) -> Result<Arrival, DropReason> {
        let r = self.walk_down(now, f);
        match r {
            Ok(a) => {
                let (sg, dg) = (
                    self.hosts[f.from.0 as usize].group,
                    self.hosts[a.host.0 as usize].group,
                );
                if !self.hosts[a.host.0 as usize].up {
                    self.stats.drop(DropReason::HostDown);
                    return Err(DropReason::HostDown);
                }
                if sg != dg {
                    self.stats.drop(DropReason::Partitioned);
                    return Err(DropReason::Partitioned);
                }
                self.stats.delivered += 1;
                Ok(a)
            }
            Err(e) => {
                self.stats.drop(e);
                Err(e)
            }
        }
    }

    fn walk_down(&mut self, now: Instant, f: InFlight) -> Result<Arrival, DropReason> {
        let mut realm = f.realm;
        let mut dst = f.dst;
        let src = f.src;
        let mut first_hop_nat = f.hairpin_at;
        for _ in 0..=NAT_DEPTH_MAX {
            let iface = match first_hop_nat.take() {
                Some(n) => Iface::Nat(n),
                None => *self.realms[realm.0 as usize]
                    .ips
                    .get(&u32::from(*dst.ip()))
                    .ok_or(DropReason::NoRoute)?,
            };
            match iface {
                Iface::Host(h) => {
                    return Ok(Arrival {
                        host: h,
                        port: dst.port(),
                        src,
                    })
                }
                Iface::Nat(n) => {
                    let internal = self.translate_in(now, n, src, dst.port())?;
                    realm = self.nats[n.0 as usize].inner;
                    dst = internal;
                }
            }
        }
        Err(DropReason::NoRoute)
    }

    fn peek(&self, mut realm: RealmId, mut dst: Addr) -> Option<HostId> {
        for _ in 0..=NAT_DEPTH_MAX {
            match *self.realms[realm.0 as usize]
                .ips
                .get(&u32::from(*dst.ip()))?
            {
                Iface::Host(h) => return Some(h),
                Iface::Nat(n) => {
                    let nat = &self.nats[n.0 as usize];
                    dst = nat.by_port.get(&dst.port())?.internal;
                    realm = nat.inner;
                }
            }
        }
        None
    }

    /// Outbound translation: find or create the mapping for this flow, refresh it, record the
    /// destination for filtering; returns the translated source.
    fn translate_out(&mut self, now: Instant, g: NatId, src: Addr, dst: Addr) -> Option<Addr> {
        let nat = &mut self.nats[g.0 as usize];
        let key = match nat.spec.mapping {
            Mapping::EndpointIndependent => MapKey::Eim(src),
            Mapping::AddressDependent => MapKey::Adm(src, *dst.ip()),
            Mapping::AddressAndPortDependent => MapKey::Apdm(src, dst),
        };
        let timeout = nat.spec.timeout;
        let live = match nat.by_key.get(&key) {
            Some(&p) => {
                let e = nat.by_port.get(&p).expect("mapping indexes agree");
                if now.since(e.last_out) > timeout {
                    nat.by_port.remove(&p);
                    nat.by_key.remove(&key);
                    self.stats.mappings_expired += 1;
                    None
                } else {
                    Some(p)
                }
            }
            None => None,
        };
        let port = match live {
            Some(p) => p,
            None => {
                let p = Self::free_port(nat, now)?;
                nat.by_key.insert(key, p);
                nat.by_port.insert(
                    p,
                    MapEntry {
                        internal: src,
                        key,
                        last_out: now,
                        sent_to: Vec::new(),
                    },
                );
                self.stats.mappings_created += 1;
                p
            }
        };
        let e = nat.by_port.get_mut(&port).expect("just ensured");
        e.last_out = now;
        if !e.sent_to.contains(&dst) {
            e.sent_to.push(dst);
        }
        Some(Addr::new(nat.ext_ip, port))
    }

    /// The next port with no live mapping (expired ones are reclaimed on the way); `None`
    /// when every port is taken.
    fn free_port(nat: &mut Nat, now: Instant) -> Option<u16> {
        for _ in 0..=(u16::MAX - 1024) {
            let p = nat.next_port;
            nat.next_port = if nat.next_port == u16::MAX {
                1024
            } else {
                nat.next_port + 1
            };
            match nat.by_port.get(&p) {
                None => return Some(p),
                Some(e) if now.since(e.last_out) > nat.spec.timeout => {
                    let key = e.key;
                    nat.by_port.remove(&p);
                    nat.by_key.remove(&key);
                    return Some(p);
                }
                Some(_) => {}
            }
        }
        None
    }

    /// Inbound translation at a NAT's outside: the mapping for `port`, if alive and its
    /// filtering admits `src`.
    fn translate_in(
        &mut self,
        now: Instant,
        n: NatId,
        src: Addr,
        port: u16,
    ) -> Result<Addr, DropReason> {
        let nat = &mut self.nats[n.0 as usize];
        let Some(e) = nat.by_port.get(&port) else {
            return Err(DropReason::NoMapping);
        };
        if now.since(e.last_out) > nat.spec.timeout {
            let key = e.key;
            nat.by_port.remove(&port);
            nat.by_key.remove(&key);
            self.stats.mappings_expired += 1;
            return Err(DropReason::NoMapping);
        }
        let admitted = match nat.spec.filtering {
            Filtering::EndpointIndependent => true,
            Filtering::AddressDependent => e.sent_to.iter().any(|d| d.ip() == src.ip()),
            Filtering::AddressAndPortDependent => e.sent_to.contains(&src),
        };
        if admitted {
            Ok(e.internal)
        } else {
            Err(DropReason::Filtered)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: u16 = 4001;

    fn lan(net: &mut Network, m: Mapping, f: Filtering) -> (NatId, HostId) {
        let (n, r) = net.add_nat(RealmId::INTERNET, NatSpec::new(m, f)).unwrap();
        (n, net.add_host(r, LinkSpec::default()).unwrap())
    }

    /// Sends and delivers at once (time advances to the arrival).
    fn deliver(
        net: &mut Network,
        now: &mut Instant,
        from: HostId,
        dst: Addr,
    ) -> Result<Arrival, DropReason> {
        let (at, f) = net.send(*now, from, P, dst, 100)?;
        *now = at;
        net.arrive(at, f)
    }

    #[test]
    fn public_hosts_reach_each_other_and_a_nat_translates_the_source() {
        let mut net = Network::new(Rng::seed(1));
        let a = net
            .add_host(RealmId::INTERNET, LinkSpec::default())
            .unwrap();
        let (n, b) = lan(
            &mut net,
            Mapping::EndpointIndependent,
            Filtering::AddressAndPortDependent,
        );
        let mut now = Instant::ZERO;
        let a_addr = Addr::new(net.host_ip(a), P);
        let got = deliver(&mut net, &mut now, b, a_addr).unwrap();
        assert_eq!(got.host, a);
        assert_eq!(*got.src.ip(), net.nat_ext_ip(n));
        // The reply to the observed address goes back in.
        let back = deliver(&mut net, &mut now, a, got.src).unwrap();
        assert_eq!(back.host, b);
        assert_eq!(back.src, a_addr);
        // An unsolicited packet from elsewhere is filtered.
        let c = net
            .add_host(RealmId::INTERNET, LinkSpec::default())
            .unwrap();
        assert_eq!(
            deliver(&mut net, &mut now, c, got.src),
            Err(DropReason::Filtered)
        );
    }

    /// The mapping a second destination gets, for each mapping behaviour.
    #[test]
    fn mapping_behaviours_reuse_ports_as_rfc_4787_says() {
        for (m, same_ip_other_port, other_ip) in [
            (Mapping::EndpointIndependent, true, true),
            (Mapping::AddressDependent, true, false),
            (Mapping::AddressAndPortDependent, false, false),
        ] {
            let mut net = Network::new(Rng::seed(2));
            let s1 = net
                .add_host(RealmId::INTERNET, LinkSpec::default())
                .unwrap();
            let s2 = net
                .add_host(RealmId::INTERNET, LinkSpec::default())
                .unwrap();
            let (_, c) = lan(&mut net, m, Filtering::EndpointIndependent);
            let mut now = Instant::ZERO;
            let seen = |net: &mut Network, now: &mut Instant, dst: Addr| {
                deliver(net, now, c, dst).unwrap().src
            };
            let a = {
                let d = Addr::new(net.host_ip(s1), P);
                seen(&mut net, &mut now, d)
            };
            let b = {
                let d = Addr::new(net.host_ip(s1), P + 1);
                seen(&mut net, &mut now, d)
            };
            let d = {
                let d = Addr::new(net.host_ip(s2), P);
                seen(&mut net, &mut now, d)
            };
            assert_eq!(a == b, same_ip_other_port, "{m:?}");
            assert_eq!(a == d, other_ip, "{m:?}");
        }
    }

    #[test]
    fn filtering_behaviours_admit_what_rfc_4787_says() {
        for (f, same_ip_other_port, other_ip) in [
            (Filtering::EndpointIndependent, true, true),
            (Filtering::AddressDependent, true, false),
            (Filtering::AddressAndPortDependent, false, false),
        ] {
            let mut net = Network::new(Rng::seed(3));
            let s1 = net
                .add_host(RealmId::INTERNET, LinkSpec::default())
                .unwrap();
            let s2 = net
                .add_host(RealmId::INTERNET, LinkSpec::default())
                .unwrap();
            let (_, c) = lan(&mut net, Mapping::EndpointIndependent, f);
            let mut now = Instant::ZERO;
            let ext = {
                let d = Addr::new(net.host_ip(s1), P);
                deliver(&mut net, &mut now, c, d)
            }
            .unwrap()
            .src;
            let from = |net: &mut Network, now: &mut Instant, h: HostId, port: u16| {
                let (at, fl) = net.send(*now, h, port, ext, 50).unwrap();
                *now = at;
                net.arrive(at, fl).is_ok()
            };
            assert!(from(&mut net, &mut now, s1, P), "{f:?}");
            assert_eq!(
                from(&mut net, &mut now, s1, P + 1),
                same_ip_other_port,
                "{f:?}"
            );
            assert_eq!(from(&mut net, &mut now, s2, P), other_ip, "{f:?}");
        }
    }

    #[test]
    fn mappings_time_out_without_outbound_traffic() {
        let mut net = Network::new(Rng::seed(4));
        let s = net
            .add_host(RealmId::INTERNET, LinkSpec::default())
            .unwrap();
        let (n, c) = lan(
            &mut net,
            Mapping::EndpointIndependent,
            Filtering::EndpointIndependent,
        );
        let mut now = Instant::ZERO;
        let ext = {
            let d = Addr::new(net.host_ip(s), P);
            deliver(&mut net, &mut now, c, d)
        }
        .unwrap()
        .src;
        assert_eq!(net.nat_mappings(n), 1);
        now = now + Duration::from_secs(121);
        assert_eq!(
            deliver(&mut net, &mut now, s, ext),
            Err(DropReason::NoMapping)
        );
        assert_eq!(net.nat_mappings(n), 0);
    }

    #[test]
    fn nat_behind_nat_and_hairpinning() {
        let mut net = Network::new(Rng::seed(5));
        let s = net
            .add_host(RealmId::INTERNET, LinkSpec::default())
            .unwrap();
        let eim = NatSpec::new(Mapping::EndpointIndependent, Filtering::EndpointIndependent);
        let (outer, r1) = net.add_nat(RealmId::INTERNET, eim).unwrap();
        let (_inner, r2) = net.add_nat(r1, eim).unwrap();
        let deep = net.add_host(r2, LinkSpec::default()).unwrap();
        let mid = net.add_host(r1, LinkSpec::default()).unwrap();
        let mut now = Instant::ZERO;
        let seen = {
            let d = Addr::new(net.host_ip(s), P);
            deliver(&mut net, &mut now, deep, d)
        }
        .unwrap();
        assert_eq!(*seen.src.ip(), net.nat_ext_ip(outer));
        assert_eq!(deliver(&mut net, &mut now, s, seen.src).unwrap().host, deep);
        // `mid` shares the outer NAT with `deep`: reaching `deep`'s public address needs the
        // outer NAT to hairpin.
        let hp = deliver(&mut net, &mut now, mid, seen.src).unwrap();
        assert_eq!(hp.host, deep);
        assert_eq!(*hp.src.ip(), net.nat_ext_ip(outer));
        let mut no_hp = NatSpec::new(Mapping::EndpointIndependent, Filtering::EndpointIndependent);
        no_hp.hairpin = false;
        let mut net = Network::new(Rng::seed(5));
        let s = net
            .add_host(RealmId::INTERNET, LinkSpec::default())
            .unwrap();
        let (_, r) = net.add_nat(RealmId::INTERNET, no_hp).unwrap();
        let a = net.add_host(r, LinkSpec::default()).unwrap();
        let b = net.add_host(r, LinkSpec::default()).unwrap();
        let ext = {
            let d = Addr::new(net.host_ip(s), P);
            deliver(&mut net, &mut now, a, d)
        }
        .unwrap()
        .src;
        assert_eq!(
            deliver(&mut net, &mut now, b, ext),
            Err(DropReason::NoHairpin)
        );
        // Same LAN, private address: direct.
        let direct = {
            let d = Addr::new(net.host_ip(a), P);
            deliver(&mut net, &mut now, b, d)
        }
        .unwrap();
        assert_eq!(direct.host, a);
    }

    #[test]
    fn partitions_loss_and_down_hosts_drop() {
        let mut net = Network::new(Rng::seed(6));
        let a = net
            .add_host(RealmId::INTERNET, LinkSpec::default())
            .unwrap();
        let b = net
            .add_host(RealmId::INTERNET, LinkSpec::default())
            .unwrap();
        let b_addr = Addr::new(net.host_ip(b), P);
        let mut now = Instant::ZERO;
        net.set_group(b, 1);
        assert_eq!(
            deliver(&mut net, &mut now, a, b_addr),
            Err(DropReason::Partitioned)
        );
        net.set_group(b, 0);
        net.set_up(b, false);
        assert_eq!(
            deliver(&mut net, &mut now, a, b_addr),
            Err(DropReason::HostDown)
        );
        net.set_up(b, true);
        net.set_link(
            a,
            LinkSpec {
                loss_ppm: 500_000,
                ..LinkSpec::default()
            },
        );
        let lost = (0..1000)
            .filter(|_| deliver(&mut net, &mut now, a, b_addr) == Err(DropReason::Loss))
            .count();
        assert!((400..600).contains(&lost), "{lost}");
    }

    /// Issue 19: a jitter of `u64::MAX` µs made `jitter + 1` wrap to 0 and `Rng::below(0)`
    /// panic. The delay saturates instead (the packet arrives at the end of time).
    #[test]
    fn r19_jitter_u64_max_panics() {
        let mut net = Network::new(Rng::seed(7));
        let wild = LinkSpec {
            jitter: Duration::from_micros(u64::MAX),
            ..LinkSpec::default()
        };
        let a = net.add_host(RealmId::INTERNET, wild).unwrap();
        let b = net.add_host(RealmId::INTERNET, wild).unwrap();
        let dst = Addr::new(net.host_ip(b), P);
        for _ in 0..8 {
            let (t, _) = net.send(Instant::ZERO, a, P, dst, 100).unwrap();
            assert!(t >= Instant::ZERO + LinkSpec::default().latency);
        }
    }

    #[test]
    fn bandwidth_queues_packets_on_the_uplink() {
        let mut net = Network::new(Rng::seed(7));
        let a = net
            .add_host(
                RealmId::INTERNET,
                LinkSpec {
                    latency: Duration::from_millis(1),
                    jitter: Duration::ZERO,
                    loss_ppm: 0,
                    bandwidth_bps: 8_000_000, // 1 byte per microsecond
                },
            )
            .unwrap();
        let b = net
            .add_host(RealmId::INTERNET, LinkSpec::default())
            .unwrap();
        let dst = Addr::new(net.host_ip(b), P);
        let (t1, _) = net.send(Instant::ZERO, a, P, dst, 10_000).unwrap();
        let (t2, _) = net.send(Instant::ZERO, a, P, dst, 10_000).unwrap();
        assert_eq!(t2.since(t1), Duration::from_micros(10_000));
    }
}
