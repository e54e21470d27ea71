//! Models of the libp2p mechanisms a mesh agent relies on, running over [`Network`]:
//! connections (handshake, keep-alive, idle timeout, retransmission after loss), identify's
//! observed address, circuit relay v2 (reservations with TTL, circuits with duration and byte
//! limits, caps on reservations and circuits), DCUtR (connect/sync exchange, the initiator
//! waits RTT/2, up to 3 attempts; whether the punch works is decided by the NAT models),
//! AutoNAT (dial-back from another port), mDNS (multicast within a LAN) and a rendezvous
//! server. It knows nothing of the application: payloads are an opaque `P`.
//!
//! Every host speaks from one port ([`SwarmConfig::port`]), as libp2p does with QUIC and port
//! reuse, which is what makes hole punching possible at all.
//!
//! Simplifications, stated: acknowledgements are not modelled as packets (a packet the
//! network loses is retransmitted after an RTO, up to [`SwarmConfig::retransmits`] times);
//! an explicit close, an idle timeout or a relay ending a circuit is seen by both ends at once
//! (a crashed host's peers only find out by the idle timeout).

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use crate::kernel::{Kernel, KernelError};
use crate::net::{Addr, DetMap, DropReason, HostId, InFlight, Network};
use crate::rng::Rng;
use crate::time::{Duration, Instant};

/// Size on the wire of an application payload.
pub trait WireSize {
    fn wire_len(&self) -> u32;
}

impl WireSize for Vec<u8> {
    fn wire_len(&self) -> u32 {
        self.len() as u32
    }
}

/// Circuit relay v2 server limits; defaults are rust-libp2p's `relay::Config`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RelayLimits {
    pub max_reservations: usize,
    pub reservation_duration: Duration,
    pub max_circuits: usize,
    pub max_circuits_per_peer: usize,
    pub max_circuit_duration: Duration,
    pub max_circuit_bytes: u64,
}

impl Default for RelayLimits {
    fn default() -> Self {
        Self {
            max_reservations: 128,
            reservation_duration: Duration::from_secs(3600),
            max_circuits: 16,
            max_circuits_per_peer: 4,
            max_circuit_duration: Duration::from_secs(120),
            max_circuit_bytes: 1 << 17,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SwarmConfig {
    pub port: u16,
    /// AutoNAT dials back from this port, so the dial-back is a new flow to the NAT.
    pub autonat_port: u16,
    pub mdns_port: u16,
    /// libp2p-quic's handshake timeout.
    pub handshake_timeout: Duration,
    pub keepalive: Duration,
    pub idle_timeout: Duration,
    pub rto: Duration,
    pub retransmits: u8,
    pub relay: RelayLimits,
    /// rust-libp2p dcutr: `MAX_NUMBER_OF_UPGRADE_ATTEMPTS`.
    pub dcutr_attempts: u8,
    /// How long one punch attempt may take before it counts as failed.
    pub dcutr_attempt_timeout: Duration,
    pub autonat_timeout: Duration,
}

impl Default for SwarmConfig {
    fn default() -> Self {
        Self {
            port: 4001,
            autonat_port: 4002,
            mdns_port: 5353,
            handshake_timeout: Duration::from_secs(5),
            keepalive: Duration::from_secs(15),
            idle_timeout: Duration::from_secs(45),
            rto: Duration::from_millis(300),
            retransmits: 5,
            relay: RelayLimits::default(),
            dcutr_attempts: 3,
            dcutr_attempt_timeout: Duration::from_secs(5),
            autonat_timeout: Duration::from_secs(5),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ConnId(pub u64);

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PathKind {
    Direct,
    Relayed { relay: HostId },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum CloseReason {
    Local,
    Remote,
    Idle,
    RelayLimit,
    RelayGone,
}

/// What a host's application asks its swarm to do.
#[derive(Debug, Clone, PartialEq)]
pub enum Command<P> {
    /// Dial `peer` at every address at once; the first handshake to finish wins.
    Dial {
        peer: HostId,
        addrs: Vec<Addr>,
    },
    /// Open a relayed connection to `target` through `relay` (needs a connection to the relay
    /// and the target's reservation on it).
    DialRelayed {
        relay: HostId,
        target: HostId,
    },
    /// Reserve a slot on `relay` (needs a connection to it); renewing is reserving again.
    Reserve {
        relay: HostId,
    },
    Send {
        conn: ConnId,
        msg: P,
    },
    Close {
        conn: ConnId,
    },
    MdnsQuery,
    Register {
        server: HostId,
        ns: u64,
        ttl: Duration,
        record: P,
    },
    Discover {
        server: HostId,
        ns: u64,
        limit: u32,
    },
    AutoNatProbe {
        server: HostId,
    },
}

/// What a host's swarm tells its application.
#[derive(Debug, Clone, PartialEq)]
pub enum Event<P> {
    Connected {
        conn: ConnId,
        peer: HostId,
        path: PathKind,
        outbound: bool,
        /// Our address as the peer sees it (identify), for direct connections.
        observed: Option<Addr>,
    },
    Closed {
        conn: ConnId,
        peer: HostId,
        reason: CloseReason,
    },
    DialFailed {
        peer: HostId,
    },
    Message {
        conn: ConnId,
        peer: HostId,
        msg: P,
    },
    Reserved {
        relay: HostId,
        ttl: Duration,
    },
    ReservationFailed {
        relay: HostId,
    },
    RelayedDialFailed {
        relay: HostId,
        target: HostId,
    },
    HolePunch {
        peer: HostId,
        ok: bool,
    },
    MdnsFound {
        peer: HostId,
        addr: Addr,
    },
    Registered {
        server: HostId,
    },
    Discovered {
        server: HostId,
        ns: u64,
        records: Vec<(HostId, P)>,
    },
    AutoNat {
        server: HostId,
        reachable: bool,
    },
    /// A command that could not be carried out (e.g. no connection to the server named).
    CommandFailed {
        what: &'static str,
        peer: HostId,
    },
}

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct SwarmStats {
    pub dials: u64,
    pub dial_failures: u64,
    pub connections: u64,
    pub relayed_connections: u64,
    pub relayed_bytes: u64,
    pub circuits_refused: u64,
    pub reservations: u64,
    pub reservations_refused: u64,
    pub hole_punch_attempts: u64,
    pub hole_punch_successes: u64,
    pub hole_punch_failures: u64,
    pub autonat_probes: u64,
    pub app_messages: u64,
    pub app_bytes: u64,
    pub retransmits: u64,
}

#[derive(Debug, Clone)]
enum Body<P> {
    Ping,
    App(P),
    ReserveReq,
    ReserveOk {
        ttl: Duration,
    },
    ReserveDenied,
    Connect {
        target: HostId,
        circuit: ConnId,
    },
    ConnectDenied {
        circuit: ConnId,
    },
    Stop {
        from: HostId,
        circuit: ConnId,
    },
    StopOk {
        circuit: ConnId,
    },
    /// A body travelling on a relayed connection, over one of its legs.
    Circuit {
        circuit: ConnId,
        inner: Box<Body<P>>,
    },
    DcutrConnect {
        addrs: Vec<Addr>,
        nonce: u64,
    },
    DcutrSync,
    Register {
        ns: u64,
        ttl: Duration,
        record: P,
    },
    RegisterOk,
    Discover {
        ns: u64,
        limit: u32,
    },
    Discovered {
        ns: u64,
        records: Vec<(HostId, P)>,
    },
    AutoNatReq {
        addr: Addr,
    },
    AutoNatResp {
        reachable: bool,
    },
}

#[derive(Debug, Clone)]
enum Frame<P> {
    Syn {
        from: HostId,
        to: HostId,
        dialed: Addr,
        nonce: u64,
    },
    SynAck {
        to: HostId,
        conn: ConnId,
        observed: Addr,
        nonce: u64,
    },
    On {
        conn: ConnId,
        body: Body<P>,
    },
    Punch {
        from: HostId,
        to: HostId,
        nonce: u64,
    },
    PunchAck {
        from: HostId,
        to: HostId,
        nonce: u64,
        conn: ConnId,
    },
    DialBack {
        to: HostId,
        nonce: u64,
    },
    DialBackAck {
        nonce: u64,
    },
    MdnsQuery {
        from: HostId,
    },
    MdnsResponse {
        from: HostId,
        addr: Addr,
    },
}

const HEADER_BYTES: u32 = 48;

/// Frames a dialer holds for a connection whose handshake answer has not arrived yet.
const EARLY_FRAMES_MAX: usize = 16;

impl<P: WireSize> Body<P> {
    fn len(&self) -> u32 {
        match self {
            Body::App(p) => p.wire_len(),
            Body::Circuit { inner, .. } => 8 + inner.len(),
            Body::DcutrConnect { addrs, .. } => 8 + 8 * addrs.len() as u32,
            Body::Register { record, .. } => 16 + record.wire_len(),
            Body::Discovered { records, .. } => {
                records.iter().map(|(_, r)| 8 + r.wire_len()).sum::<u32>() + 8
            }
            _ => 16,
        }
    }
}

impl<P: WireSize> Frame<P> {
    fn len(&self) -> u32 {
        HEADER_BYTES
            + match self {
                Frame::On { body, .. } => body.len(),
                _ => 24,
            }
    }
}

#[derive(Debug)]
enum Ev<P> {
    Packet(InFlight, Frame<P>),
    Wake(HostId),
    Retransmit {
        host: HostId,
        inc: u32,
        port: u16,
        dst: Addr,
        frame: Frame<P>,
        left: u8,
    },
    DialTimeout {
        host: HostId,
        inc: u32,
        peer: HostId,
        nonce: u64,
    },
    SynRetry {
        host: HostId,
        inc: u32,
        peer: HostId,
        nonce: u64,
    },
    Keepalive(ConnId),
    PunchStart {
        host: HostId,
        inc: u32,
        peer: HostId,
        nonce: u64,
    },
    PunchTick {
        host: HostId,
        inc: u32,
        peer: HostId,
        nonce: u64,
        k: u8,
    },
    PunchDeadline {
        host: HostId,
        inc: u32,
        peer: HostId,
        nonce: u64,
    },
    CircuitExpire(ConnId),
    RelayedDialTimeout {
        host: HostId,
        inc: u32,
        circuit: ConnId,
    },
    AutoNatTimeout {
        server: HostId,
        inc: u32,
        nonce: u64,
    },
}

#[derive(Debug, Clone, Copy)]
struct End {
    host: HostId,
    /// Where this end sends (direct connections).
    remote: Addr,
    last_heard: Instant,
    last_sent: Instant,
    /// Whether this end knows the connection exists yet.
    open: bool,
}

#[derive(Debug, Clone)]
struct Conn {
    ends: [End; 2],
    kind: PathKind,
    /// For a relayed connection: the legs each end uses to reach the relay.
    legs: [ConnId; 2],
    bytes: u64,
}

struct Dial {
    nonce: u64,
    addrs: Vec<Addr>,
}

#[derive(Clone)]
struct Punch {
    nonce: u64,
    relayed: ConnId,
    initiator: bool,
    attempt: u8,
    t0: Instant,
    peer_addrs: Vec<Addr>,
    direct: Option<ConnId>,
}

struct Reservation {
    expires: Instant,
    conn: ConnId,
}

struct Registration<P> {
    peer: HostId,
    record: P,
    expires: Instant,
}

struct AutoNatPending {
    client: HostId,
    conn: ConnId,
}

struct HostState<P> {
    inc: u32,
    up: bool,
    relay_server: bool,
    rendezvous_server: bool,
    autonat_server: bool,
    dcutr: bool,
    conns: BTreeSet<ConnId>,
    dialing: BTreeMap<HostId, Dial>,
    accepted: DetMap<(HostId, u64), ConnId>,
    punching: BTreeMap<HostId, Punch>,
    /// As a relay: reservations by client, circuits by id.
    reservations: BTreeMap<HostId, Reservation>,
    circuits: BTreeMap<ConnId, (HostId, HostId)>,
    /// As a client: the relay leg a pending relayed dial uses.
    relayed_dials: BTreeMap<ConnId, (HostId, HostId)>,
    registrations: BTreeMap<u64, Vec<Registration<P>>>,
    autonat_pending: BTreeMap<u64, AutoNatPending>,
    observed: Vec<Addr>,
    /// For an AutoNAT server: the host it dials back from (another address, so the dial-back
    /// is a flow the client's NAT has never seen). For that helper: the server it serves.
    autonat_helper: Option<HostId>,
    helper_for: Option<HostId>,
}

impl<P> Default for HostState<P> {
    fn default() -> Self {
        Self {
            inc: 0,
            up: false,
            relay_server: false,
            rendezvous_server: false,
            autonat_server: false,
            dcutr: false,
            conns: BTreeSet::new(),
            dialing: BTreeMap::new(),
            accepted: DetMap::default(),
            punching: BTreeMap::new(),
            reservations: BTreeMap::new(),
            circuits: BTreeMap::new(),
            relayed_dials: BTreeMap::new(),
            registrations: BTreeMap::new(),
            autonat_pending: BTreeMap::new(),
            observed: Vec::new(),
            autonat_helper: None,
            helper_for: None,
        }
    }
}

/// Per-host switches for the services a host runs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Services {
    pub relay: bool,
    pub rendezvous: bool,
    pub autonat: bool,
    pub dcutr: bool,
}

/// What [`Swarm::step`] hands the application.
#[derive(Debug, Clone, PartialEq)]
pub enum Step<P> {
    Event(HostId, Event<P>),
    /// The application's timer for this host is due.
    Wake(HostId),
}

pub struct Swarm<P> {
    pub net: Network,
    pub cfg: SwarmConfig,
    kernel: Kernel<Ev<P>>,
    hosts: Vec<HostState<P>>,
    conns: DetMap<ConnId, Conn>,
    /// Frames that reached a dialer before the answer to its handshake did (the listener
    /// may send as soon as it accepts, and jitter reorders packets): delivered once the
    /// dialer's end opens, as a transport holds data until its handshake completes.
    early: BTreeMap<ConnId, Vec<Body<P>>>,
    next_conn: u64,
    rng: Rng,
    out: VecDeque<Step<P>>,
    pub stats: SwarmStats,
}

impl<P: Clone + WireSize> Swarm<P> {
    pub fn new(net: Network, cfg: SwarmConfig, rng: Rng, events_max: usize) -> Self {
        Self {
            net,
            cfg,
            kernel: Kernel::with_capacity(events_max),
            hosts: Vec::new(),
            conns: DetMap::default(),
            early: BTreeMap::new(),
            next_conn: 1,
            rng,
            out: VecDeque::new(),
            stats: SwarmStats::default(),
        }
    }

    /// Registers the swarm of a host already added to the network.
    pub fn add_host(&mut self, h: HostId, services: Services) {
        while self.hosts.len() <= h.0 as usize {
            self.hosts.push(HostState::default());
        }
        let st = &mut self.hosts[h.0 as usize];
        st.up = true;
        st.relay_server = services.relay;
        st.rendezvous_server = services.rendezvous;
        st.autonat_server = services.autonat;
        st.dcutr = services.dcutr;
    }

    /// Makes `helper` (a host on another address, running nothing else) the one `server`
    /// dials AutoNAT dial-backs from, as AutoNAT v2 asks: a dial-back from the address the
    /// client already talks to would pass any address-dependent filter and prove nothing.
    pub fn set_autonat_helper(&mut self, server: HostId, helper: HostId) {
        self.add_host(helper, Services::default());
        self.hosts[server.0 as usize].autonat_helper = Some(helper);
        self.hosts[helper.0 as usize].helper_for = Some(server);
    }

    pub fn now(&self) -> Instant {
        self.kernel.now()
    }

    pub fn events_fired(&self) -> u64 {
        self.kernel.fired()
    }

    /// At most `max` events fire over the run; past it [`Swarm::step`] fails with
    /// [`KernelError::BudgetSpent`].
    pub fn set_event_budget(&mut self, max: u64) {
        self.kernel.set_budget(max);
    }

    pub fn pending_events(&self) -> usize {
        self.kernel.pending()
    }

    pub fn listen_addr(&self, h: HostId) -> Addr {
        Addr::new(self.net.host_ip(h), self.cfg.port)
    }

    /// Addresses others have seen this host at (identify), newest last.
    pub fn observed_addrs(&self, h: HostId) -> &[Addr] {
        &self.hosts[h.0 as usize].observed
    }

    pub fn open_connections(&self) -> usize {
        self.conns.len()
    }

    pub fn reservations_held(&self, relay: HostId) -> usize {
        self.hosts[relay.0 as usize].reservations.len()
    }

    pub fn circuits_open(&self, relay: HostId) -> usize {
        self.hosts[relay.0 as usize].circuits.len()
    }

    /// Asks for [`Step::Wake`] for `h` at `at`.
    pub fn wake_at(&mut self, h: HostId, at: Instant) -> Result<(), KernelError> {
        self.kernel
            .schedule_at(at.max(self.kernel.now()), Ev::Wake(h))
    }

    /// The host loses power: its connections stay open on the other side until they time
    /// out; everything it held is gone.
    pub fn crash(&mut self, h: HostId) {
        self.net.set_up(h, false);
        let st = &mut self.hosts[h.0 as usize];
        let keep = (
            st.relay_server,
            st.rendezvous_server,
            st.autonat_server,
            st.dcutr,
        );
        let inc = st.inc + 1;
        let conns = std::mem::take(&mut st.conns);
        *st = HostState::default();
        st.inc = inc;
        (
            st.relay_server,
            st.rendezvous_server,
            st.autonat_server,
            st.dcutr,
        ) = keep;
        for c in conns {
            if let Some(conn) = self.conns.get_mut(&c) {
                for e in conn.ends.iter_mut().filter(|e| e.host == h) {
                    e.open = false;
                }
            }
        }
    }

    pub fn restart(&mut self, h: HostId) {
        self.net.set_up(h, true);
        self.hosts[h.0 as usize].up = true;
    }

    pub fn is_up(&self, h: HostId) -> bool {
        self.hosts[h.0 as usize].up && self.net.is_up(h)
    }

    /// Runs the simulation until it has something for the application, or until `deadline`.
    pub fn step(&mut self, deadline: Instant) -> Result<Option<Step<P>>, KernelError> {
        loop {
            if let Some(s) = self.out.pop_front() {
                return Ok(Some(s));
            }
            let Some((now, ev)) = self.kernel.pop_until(deadline) else {
                return match self.kernel.budget_spent() {
                    Some(e) => Err(e),
                    None => Ok(None),
                };
            };
            self.handle(now, ev)?;
        }
    }

    fn emit(&mut self, h: HostId, e: Event<P>) {
        if self.hosts[h.0 as usize].up {
            self.out.push_back(Step::Event(h, e));
        }
    }

    fn alive(&self, h: HostId, inc: u32) -> bool {
        let st = &self.hosts[h.0 as usize];
        st.up && st.inc == inc && self.net.is_up(h)
    }

    fn inc(&self, h: HostId) -> u32 {
        self.hosts[h.0 as usize].inc
    }

    fn nonce(&mut self) -> u64 {
        self.rng.next_u64()
    }

    fn transmit(
        &mut self,
        from: HostId,
        port: u16,
        dst: Addr,
        frame: Frame<P>,
        left: u8,
    ) -> Result<(), KernelError> {
        let now = self.kernel.now();
        match self.net.send(now, from, port, dst, frame.len()) {
            Ok((at, f)) => self.kernel.schedule_at(at, Ev::Packet(f, frame)),
            Err(DropReason::Loss) if left > 0 => {
                self.stats.retransmits += 1;
                let inc = self.inc(from);
                let rto = self.cfg.rto;
                self.kernel.schedule_in(
                    rto,
                    Ev::Retransmit {
                        host: from,
                        inc,
                        port,
                        dst,
                        frame,
                        left: left - 1,
                    },
                )
            }
            Err(_) => Ok(()),
        }
    }

    /// Sends `body` on connection `c` from `h`'s end.
    fn send_on(&mut self, h: HostId, c: ConnId, body: Body<P>) -> Result<(), KernelError> {
        let now = self.kernel.now();
        let Some(conn) = self.conns.get_mut(&c) else {
            return Ok(());
        };
        let i = usize::from(conn.ends[1].host == h);
        conn.ends[i].last_sent = now;
        match conn.kind {
            PathKind::Direct => {
                let dst = conn.ends[i].remote;
                let port = self.cfg.port;
                let r = self.cfg.retransmits;
                self.transmit(h, port, dst, Frame::On { conn: c, body }, r)
            }
            PathKind::Relayed { .. } => {
                let leg = conn.legs[i];
                self.send_on(
                    h,
                    leg,
                    Body::Circuit {
                        circuit: c,
                        inner: Box::new(body),
                    },
                )
            }
        }
    }

    /// Carries out one application command for host `h` at the current time.
    pub fn command(&mut self, h: HostId, cmd: Command<P>) -> Result<(), KernelError> {
        if !self.is_up(h) {
            return Ok(());
        }
        match cmd {
            Command::Dial { peer, addrs } => self.dial(h, peer, addrs),
            Command::DialRelayed { relay, target } => {
                let Some(leg) = self.conn_to(h, relay) else {
                    self.emit(h, Event::RelayedDialFailed { relay, target });
                    return Ok(());
                };
                let circuit = self.alloc_conn();
                self.hosts[h.0 as usize]
                    .relayed_dials
                    .insert(circuit, (relay, target));
                // A CONNECT or STOP lost to a partition or a dead host gets no answer: the
                // dial fails after the handshake timeout, as libp2p's does.
                let inc = self.inc(h);
                self.kernel.schedule_in(
                    self.cfg.handshake_timeout,
                    Ev::RelayedDialTimeout {
                        host: h,
                        inc,
                        circuit,
                    },
                )?;
                self.send_on(h, leg, Body::Connect { target, circuit })
            }
            Command::Reserve { relay } => match self.conn_to(h, relay) {
                Some(c) => self.send_on(h, c, Body::ReserveReq),
                None => {
                    self.emit(h, Event::ReservationFailed { relay });
                    Ok(())
                }
            },
            Command::Send { conn, msg } => {
                if !self.hosts[h.0 as usize].conns.contains(&conn) {
                    return Ok(());
                }
                self.stats.app_messages += 1;
                self.stats.app_bytes += u64::from(msg.wire_len());
                self.send_on(h, conn, Body::App(msg))
            }
            Command::Close { conn } => {
                if self.hosts[h.0 as usize].conns.contains(&conn) {
                    self.close(conn, h)?;
                }
                Ok(())
            }
            Command::MdnsQuery => {
                let realm = self.net.host_realm(h);
                if realm == crate::net::RealmId::INTERNET {
                    return Ok(()); // no multicast on the internet
                }
                let peers: Vec<HostId> = self.net.realm_hosts(realm).to_vec();
                let port = self.cfg.mdns_port;
                for p in peers.into_iter().filter(|&p| p != h) {
                    let dst = Addr::new(self.net.host_ip(p), port);
                    self.transmit(h, port, dst, Frame::MdnsQuery { from: h }, 0)?;
                }
                Ok(())
            }
            Command::Register {
                server,
                ns,
                ttl,
                record,
            } => match self.conn_to(h, server) {
                Some(c) => self.send_on(h, c, Body::Register { ns, ttl, record }),
                None => {
                    self.emit(
                        h,
                        Event::CommandFailed {
                            what: "register",
                            peer: server,
                        },
                    );
                    Ok(())
                }
            },
            Command::Discover { server, ns, limit } => match self.conn_to(h, server) {
                Some(c) => self.send_on(h, c, Body::Discover { ns, limit }),
                None => {
                    self.emit(
                        h,
                        Event::CommandFailed {
                            what: "discover",
                            peer: server,
                        },
                    );
                    Ok(())
                }
            },
            Command::AutoNatProbe { server } => match self.direct_conn_to(h, server) {
                Some(c) => {
                    self.stats.autonat_probes += 1;
                    let addr = self
                        .conns
                        .get(&c)
                        .map(|cn| cn.ends[usize::from(cn.ends[0].host == h)].remote);
                    match addr {
                        Some(addr) => self.send_on(h, c, Body::AutoNatReq { addr }),
                        None => Ok(()),
                    }
                }
                None => {
                    self.emit(
                        h,
                        Event::CommandFailed {
                            what: "autonat",
                            peer: server,
                        },
                    );
                    Ok(())
                }
            },
        }
    }

    fn alloc_conn(&mut self) -> ConnId {
        let c = ConnId(self.next_conn);
        self.next_conn += 1;
        c
    }

    /// An open direct connection from `h` to `peer`, the oldest first.
    fn direct_conn_to(&self, h: HostId, peer: HostId) -> Option<ConnId> {
        self.hosts[h.0 as usize].conns.iter().copied().find(|c| {
            self.conns.get(c).is_some_and(|cn| {
                cn.kind == PathKind::Direct
                    && cn.ends.iter().any(|e| e.host == peer)
                    && cn.ends.iter().all(|e| e.open)
            })
        })
    }

    fn conn_to(&self, h: HostId, peer: HostId) -> Option<ConnId> {
        self.direct_conn_to(h, peer)
    }

    fn dial(&mut self, h: HostId, peer: HostId, addrs: Vec<Addr>) -> Result<(), KernelError> {
        if self.hosts[h.0 as usize].dialing.contains_key(&peer) || addrs.is_empty() {
            return Ok(());
        }
        self.stats.dials += 1;
        let nonce = self.nonce();
        let addrs: Vec<Addr> = addrs.into_iter().take(8).collect();
        self.hosts[h.0 as usize]
            .dialing
            .insert(peer, Dial { nonce, addrs });
        self.send_syns(h, peer, nonce)?;
        let inc = self.inc(h);
        self.kernel.schedule_in(
            Duration::from_secs(1),
            Ev::SynRetry {
                host: h,
                inc,
                peer,
                nonce,
            },
        )?;
        self.kernel.schedule_in(
            self.cfg.handshake_timeout,
            Ev::DialTimeout {
                host: h,
                inc,
                peer,
                nonce,
            },
        )
    }

    fn send_syns(&mut self, h: HostId, peer: HostId, nonce: u64) -> Result<(), KernelError> {
        let Some(d) = self.hosts[h.0 as usize].dialing.get(&peer) else {
            return Ok(());
        };
        if d.nonce != nonce {
            return Ok(());
        }
        let port = self.cfg.port;
        for dst in d.addrs.clone() {
            self.transmit(
                h,
                port,
                dst,
                Frame::Syn {
                    from: h,
                    to: peer,
                    dialed: dst,
                    nonce,
                },
                0,
            )?;
        }
        Ok(())
    }

    /// Closes a connection, seen by both ends (and whatever rode on it: circuits over a leg).
    fn close(&mut self, c: ConnId, by: HostId) -> Result<(), KernelError> {
        self.close_with(c, Some(by), CloseReason::Local)
    }

    fn close_with(
        &mut self,
        c: ConnId,
        by: Option<HostId>,
        reason: CloseReason,
    ) -> Result<(), KernelError> {
        let Some(conn) = self.conns.remove(&c) else {
            return Ok(());
        };
        self.early.remove(&c);
        for e in conn.ends {
            let st = &mut self.hosts[e.host.0 as usize];
            st.conns.remove(&c);
            st.accepted.retain(|_, v| *v != c);
            let peer = conn
                .ends
                .iter()
                .find(|o| o.host != e.host)
                .map_or(e.host, |o| o.host);
            if e.open && st.up {
                let r = match (by, reason) {
                    (Some(b), CloseReason::Local) if b != e.host => CloseReason::Remote,
                    _ => reason,
                };
                self.out.push_back(Step::Event(
                    e.host,
                    Event::Closed {
                        conn: c,
                        peer,
                        reason: r,
                    },
                ));
            }
        }
        if let PathKind::Relayed { relay } = conn.kind {
            self.hosts[relay.0 as usize].circuits.remove(&c);
        }
        // Circuits riding on this connection, and reservations held through it.
        let riding: Vec<ConnId> = self
            .conns
            .iter()
            .filter(|(_, cn)| cn.legs.contains(&c) && matches!(cn.kind, PathKind::Relayed { .. }))
            .map(|(id, _)| *id)
            .collect();
        let mut riding = riding;
        riding.sort();
        for r in riding {
            self.close_with(r, None, CloseReason::RelayGone)?;
        }
        for (i, e) in conn.ends.iter().enumerate() {
            let other = conn.ends[1 - i].host;
            let st = &mut self.hosts[e.host.0 as usize];
            st.reservations.retain(|_, r| r.conn != c);
            if conn.kind == PathKind::Direct {
                // Relayed dials waiting on this leg fail with it.
                let failed: Vec<ConnId> = st
                    .relayed_dials
                    .iter()
                    .filter(|(_, (relay, _))| *relay == other)
                    .map(|(k, _)| *k)
                    .collect();
                for k in failed {
                    if let Some((relay, target)) =
                        self.hosts[e.host.0 as usize].relayed_dials.remove(&k)
                    {
                        self.emit(e.host, Event::RelayedDialFailed { relay, target });
                    }
                }
            }
        }
        Ok(())
    }

    fn handle(&mut self, now: Instant, ev: Ev<P>) -> Result<(), KernelError> {
        match ev {
            Ev::Wake(h) => {
                if self.is_up(h) {
                    self.out.push_back(Step::Wake(h));
                }
            }
            Ev::Packet(f, frame) => {
                if let Ok(a) = self.net.arrive(now, f) {
                    if self.hosts[a.host.0 as usize].up {
                        self.on_packet(a.host, a.port, a.src, frame)?;
                    }
                }
            }
            Ev::Retransmit {
                host,
                inc,
                port,
                dst,
                frame,
                left,
            } => {
                if self.alive(host, inc) {
                    self.transmit(host, port, dst, frame, left)?;
                }
            }
            Ev::SynRetry {
                host,
                inc,
                peer,
                nonce,
            } => {
                if self.alive(host, inc) {
                    self.send_syns(host, peer, nonce)?;
                }
            }
            Ev::DialTimeout {
                host,
                inc,
                peer,
                nonce,
            } => {
                if self.alive(host, inc)
                    && self.hosts[host.0 as usize]
                        .dialing
                        .get(&peer)
                        .is_some_and(|d| d.nonce == nonce)
                {
                    self.hosts[host.0 as usize].dialing.remove(&peer);
                    self.stats.dial_failures += 1;
                    self.emit(host, Event::DialFailed { peer });
                }
            }
            Ev::Keepalive(c) => self.keepalive(now, c)?,
            Ev::PunchStart {
                host,
                inc,
                peer,
                nonce,
            } => {
                if self.alive(host, inc) {
                    self.punch_tick(host, peer, nonce, 0)?;
                }
            }
            Ev::PunchTick {
                host,
                inc,
                peer,
                nonce,
                k,
            } => {
                if self.alive(host, inc) {
                    self.punch_tick(host, peer, nonce, k)?;
                }
            }
            Ev::PunchDeadline {
                host,
                inc,
                peer,
                nonce,
            } => {
                if self.alive(host, inc) {
                    self.punch_deadline(host, peer, nonce)?;
                }
            }
            Ev::CircuitExpire(c) => {
                if self.conns.contains_key(&c) {
                    self.close_with(c, None, CloseReason::RelayLimit)?;
                }
            }
            Ev::RelayedDialTimeout { host, inc, circuit } => {
                if self.alive(host, inc) {
                    if let Some((relay, target)) =
                        self.hosts[host.0 as usize].relayed_dials.remove(&circuit)
                    {
                        self.emit(host, Event::RelayedDialFailed { relay, target });
                        // The relay may have opened the target's end meanwhile.
                        self.close_with(circuit, None, CloseReason::Local)?;
                    }
                }
            }
            Ev::AutoNatTimeout { server, inc, nonce } => {
                if self.alive(server, inc) {
                    if let Some(p) = self.hosts[server.0 as usize].autonat_pending.remove(&nonce) {
                        let _ = p.client;
                        self.send_on(server, p.conn, Body::AutoNatResp { reachable: false })?;
                    }
                }
            }
        }
        Ok(())
    }

    fn keepalive(&mut self, now: Instant, c: ConnId) -> Result<(), KernelError> {
        let Some(conn) = self.conns.get(&c) else {
            return Ok(());
        };
        let idle = self.cfg.idle_timeout;
        if conn.ends.iter().any(|e| now.since(e.last_heard) > idle) {
            return self.close_with(c, None, CloseReason::Idle);
        }
        let due: Vec<HostId> = conn
            .ends
            .iter()
            .filter(|e| e.open && now.since(e.last_sent) >= self.cfg.keepalive)
            .map(|e| e.host)
            .collect();
        for h in due {
            self.send_on(h, c, Body::Ping)?;
        }
        self.kernel
            .schedule_in(self.cfg.keepalive, Ev::Keepalive(c))
    }

    fn new_direct(
        &mut self,
        a: HostId,
        a_remote: Addr,
        b: HostId,
        b_remote: Addr,
    ) -> Result<ConnId, KernelError> {
        let now = self.kernel.now();
        let c = self.alloc_conn();
        let end = |host, remote| End {
            host,
            remote,
            last_heard: now,
            last_sent: now,
            open: false,
        };
        self.conns.insert(
            c,
            Conn {
                ends: [end(a, a_remote), end(b, b_remote)],
                kind: PathKind::Direct,
                legs: [c, c],
                bytes: 0,
            },
        );
        self.stats.connections += 1;
        self.kernel
            .schedule_in(self.cfg.keepalive, Ev::Keepalive(c))?;
        Ok(c)
    }

    /// Marks `h`'s end of `c` open and tells its application.
    fn open_end(&mut self, h: HostId, c: ConnId, outbound: bool, observed: Option<Addr>) {
        let Some(conn) = self.conns.get_mut(&c) else {
            return;
        };
        let i = usize::from(conn.ends[1].host == h);
        if conn.ends[i].open {
            return;
        }
        conn.ends[i].open = true;
        let peer = conn.ends[1 - i].host;
        let path = conn.kind;
        let st = &mut self.hosts[h.0 as usize];
        st.conns.insert(c);
        if let Some(o) = observed {
            if !st.observed.contains(&o) {
                if st.observed.len() >= 8 {
                    st.observed.remove(0);
                }
                st.observed.push(o);
            }
        }
        self.emit(
            h,
            Event::Connected {
                conn: c,
                peer,
                path,
                outbound,
                observed,
            },
        );
    }

    fn on_packet(
        &mut self,
        h: HostId,
        port: u16,
        src: Addr,
        frame: Frame<P>,
    ) -> Result<(), KernelError> {
        let now = self.kernel.now();
        match frame {
            Frame::Syn {
                from,
                to,
                dialed,
                nonce,
            } => {
                if to != h || port != self.cfg.port {
                    return Ok(()); // the handshake names someone else
                }
                let c = match self.hosts[h.0 as usize].accepted.get(&(from, nonce)) {
                    Some(&c) => c,
                    None => {
                        let c = self.new_direct(from, dialed, h, src)?;
                        self.hosts[h.0 as usize].accepted.insert((from, nonce), c);
                        self.open_end(h, c, false, Some(dialed));
                        c
                    }
                };
                let p = self.cfg.port;
                self.transmit(
                    h,
                    p,
                    src,
                    Frame::SynAck {
                        to: from,
                        conn: c,
                        observed: src,
                        nonce,
                    },
                    0,
                )
            }
            Frame::SynAck {
                to,
                conn,
                observed,
                nonce,
            } => {
                if to != h {
                    return Ok(());
                }
                let Some(cn) = self.conns.get_mut(&conn) else {
                    return Ok(());
                };
                cn.ends[0].last_heard = now;
                let peer = cn.ends[1].host;
                let pending = self.hosts[h.0 as usize]
                    .dialing
                    .get(&peer)
                    .is_some_and(|d| d.nonce == nonce);
                if pending {
                    self.hosts[h.0 as usize].dialing.remove(&peer);
                    self.open_end(h, conn, true, Some(observed));
                    for body in self.early.remove(&conn).unwrap_or_default() {
                        self.on_body(h, peer, conn, body)?;
                    }
                    Ok(())
                } else if !cn.ends[0].open {
                    // A late answer to a dial already settled: this connection is surplus.
                    self.close_with(conn, Some(h), CloseReason::Local)
                } else {
                    Ok(())
                }
            }
            Frame::On { conn, body } => {
                let Some(cn) = self.conns.get_mut(&conn) else {
                    return Ok(());
                };
                let Some(i) = cn.ends.iter().position(|e| e.host == h) else {
                    return Ok(());
                };
                if !cn.ends[i].open {
                    // The dialer's end (the first) waits for the handshake's answer.
                    let dialing = i == 0
                        && self.hosts[h.0 as usize]
                            .dialing
                            .contains_key(&cn.ends[1].host);
                    if dialing {
                        let held = self.early.entry(conn).or_default();
                        if held.len() < EARLY_FRAMES_MAX {
                            held.push(body);
                        }
                    }
                    return Ok(());
                }
                cn.ends[i].last_heard = now;
                // The peer's address moved (its NAT mapping changed): follow it, as QUIC
                // connection migration does.
                if cn.kind == PathKind::Direct {
                    cn.ends[i].remote = src;
                }
                let peer = cn.ends[1 - i].host;
                self.on_body(h, peer, conn, body)
            }
            Frame::Punch { from, to, nonce } => {
                if to != h {
                    return Ok(());
                }
                let Some(p) = self.hosts[h.0 as usize].punching.get(&from).cloned() else {
                    return Ok(()); // unsolicited: nobody is punching towards it
                };
                if p.nonce != nonce {
                    return Ok(());
                }
                let c = match p.direct {
                    Some(c) => c,
                    None => {
                        let c = self.new_direct(
                            from,
                            Addr::new(std::net::Ipv4Addr::UNSPECIFIED, 0),
                            h,
                            src,
                        )?;
                        if let Some(pp) = self.hosts[h.0 as usize].punching.get_mut(&from) {
                            pp.direct = Some(c);
                        }
                        self.open_end(h, c, false, None);
                        c
                    }
                };
                let port = self.cfg.port;
                self.transmit(
                    h,
                    port,
                    src,
                    Frame::PunchAck {
                        from: h,
                        to: from,
                        nonce,
                        conn: c,
                    },
                    0,
                )
            }
            Frame::PunchAck {
                from,
                to,
                nonce,
                conn,
            } => {
                if to != h {
                    return Ok(());
                }
                let ok = self.hosts[h.0 as usize]
                    .punching
                    .get(&from)
                    .is_some_and(|p| p.nonce == nonce);
                if !ok {
                    return Ok(());
                }
                if let Some(cn) = self.conns.get_mut(&conn) {
                    if !cn.ends[0].open {
                        cn.ends[0].remote = src;
                        cn.ends[0].last_heard = now;
                        self.open_end(h, conn, true, None);
                        self.stats.hole_punch_successes += 1;
                        self.punch_done(h, from, true);
                        self.punch_done(from, h, true);
                    }
                }
                Ok(())
            }
            Frame::DialBack { to, nonce } => {
                if to != h || port != self.cfg.port {
                    return Ok(());
                }
                let p = self.cfg.port;
                self.transmit(h, p, src, Frame::DialBackAck { nonce }, 0)
            }
            Frame::DialBackAck { nonce } => {
                let server = self.hosts[h.0 as usize].helper_for.unwrap_or(h);
                if let Some(p) = self.hosts[server.0 as usize].autonat_pending.remove(&nonce) {
                    self.send_on(server, p.conn, Body::AutoNatResp { reachable: true })?;
                }
                Ok(())
            }
            Frame::MdnsQuery { from } => {
                let addr = self.listen_addr(h);
                let p = self.cfg.mdns_port;
                self.transmit(h, p, src, Frame::MdnsResponse { from: h, addr }, 0)?;
                let _ = from;
                Ok(())
            }
            Frame::MdnsResponse { from, addr } => {
                self.emit(h, Event::MdnsFound { peer: from, addr });
                Ok(())
            }
        }
    }

    fn punch_done(&mut self, h: HostId, peer: HostId, ok: bool) {
        if self.hosts[h.0 as usize].punching.remove(&peer).is_some() {
            self.emit(h, Event::HolePunch { peer, ok });
        }
    }

    fn on_body(
        &mut self,
        h: HostId,
        peer: HostId,
        c: ConnId,
        body: Body<P>,
    ) -> Result<(), KernelError> {
        let now = self.kernel.now();
        match body {
            Body::Ping => Ok(()),
            Body::App(msg) => {
                self.emit(h, Event::Message { conn: c, peer, msg });
                Ok(())
            }
            Body::ReserveReq => {
                let st = &mut self.hosts[h.0 as usize];
                if !st.relay_server {
                    return self.send_on(h, c, Body::ReserveDenied);
                }
                st.reservations.retain(|_, r| r.expires > now);
                let limits = self.cfg.relay;
                if !st.reservations.contains_key(&peer)
                    && st.reservations.len() >= limits.max_reservations
                {
                    self.stats.reservations_refused += 1;
                    return self.send_on(h, c, Body::ReserveDenied);
                }
                st.reservations.insert(
                    peer,
                    Reservation {
                        expires: now + limits.reservation_duration,
                        conn: c,
                    },
                );
                self.stats.reservations += 1;
                self.send_on(
                    h,
                    c,
                    Body::ReserveOk {
                        ttl: limits.reservation_duration,
                    },
                )
            }
            Body::ReserveOk { ttl } => {
                self.emit(h, Event::Reserved { relay: peer, ttl });
                Ok(())
            }
            Body::ReserveDenied => {
                self.emit(h, Event::ReservationFailed { relay: peer });
                Ok(())
            }
            Body::Connect { target, circuit } => self.relay_connect(h, peer, c, target, circuit),
            Body::ConnectDenied { circuit } => {
                if let Some((relay, target)) =
                    self.hosts[h.0 as usize].relayed_dials.remove(&circuit)
                {
                    self.emit(h, Event::RelayedDialFailed { relay, target });
                }
                Ok(())
            }
            Body::Stop { from, circuit } => {
                // We are the target: accept, our end of the circuit opens now.
                if let Some(cn) = self.conns.get(&circuit) {
                    if cn.ends[1].host == h {
                        self.send_on(h, c, Body::StopOk { circuit })?;
                        self.open_end(h, circuit, false, None);
                        let _ = from;
                        if self.hosts[h.0 as usize].dcutr {
                            self.dcutr_begin(h, from, circuit, 1)?;
                        }
                    }
                }
                Ok(())
            }
            Body::StopOk { circuit } => {
                // We are the relay: tell the initiator.
                let Some(cn) = self.conns.get(&circuit) else {
                    return Ok(());
                };
                let leg_a = cn.legs[0];
                self.send_on(
                    h,
                    leg_a,
                    Body::Circuit {
                        circuit,
                        inner: Box::new(Body::StopOk { circuit }),
                    },
                )
            }
            Body::Circuit { circuit, inner } => self.on_circuit(h, c, circuit, *inner),
            Body::Register { ns, ttl, record } => {
                if !self.hosts[h.0 as usize].rendezvous_server {
                    return Ok(());
                }
                let regs = self.hosts[h.0 as usize]
                    .registrations
                    .entry(ns)
                    .or_default();
                regs.retain(|r| r.expires > now);
                let expires = now + ttl;
                match regs.iter_mut().find(|r| r.peer == peer) {
                    Some(r) => {
                        r.record = record;
                        r.expires = expires;
                    }
                    None => regs.push(Registration {
                        peer,
                        record,
                        expires,
                    }),
                }
                self.send_on(h, c, Body::RegisterOk)
            }
            Body::RegisterOk => {
                self.emit(h, Event::Registered { server: peer });
                Ok(())
            }
            Body::Discover { ns, limit } => {
                if !self.hosts[h.0 as usize].rendezvous_server {
                    return Ok(());
                }
                let regs = self.hosts[h.0 as usize].registrations.get(&ns);
                // Newest registrations first, so a late joiner is found by the next asker.
                let records: Vec<(HostId, P)> = regs
                    .map(|rs| {
                        rs.iter()
                            .rev()
                            .filter(|r| r.expires > now && r.peer != peer)
                            .take(limit as usize)
                            .map(|r| (r.peer, r.record.clone()))
                            .collect()
                    })
                    .unwrap_or_default();
                self.send_on(h, c, Body::Discovered { ns, records })
            }
            Body::Discovered { ns, records } => {
                self.emit(
                    h,
                    Event::Discovered {
                        server: peer,
                        ns,
                        records,
                    },
                );
                Ok(())
            }
            Body::AutoNatReq { addr } => {
                if !self.hosts[h.0 as usize].autonat_server {
                    return self.send_on(h, c, Body::AutoNatResp { reachable: false });
                }
                let nonce = self.nonce();
                self.hosts[h.0 as usize].autonat_pending.insert(
                    nonce,
                    AutoNatPending {
                        client: peer,
                        conn: c,
                    },
                );
                let p = self.cfg.autonat_port;
                let from = self.hosts[h.0 as usize].autonat_helper.unwrap_or(h);
                self.transmit(from, p, addr, Frame::DialBack { to: peer, nonce }, 0)?;
                let inc = self.inc(h);
                self.kernel.schedule_in(
                    self.cfg.autonat_timeout,
                    Ev::AutoNatTimeout {
                        server: h,
                        inc,
                        nonce,
                    },
                )
            }
            Body::AutoNatResp { reachable } => {
                self.emit(
                    h,
                    Event::AutoNat {
                        server: peer,
                        reachable,
                    },
                );
                Ok(())
            }
            Body::DcutrConnect { .. } | Body::DcutrSync => Ok(()), // only meaningful inside a circuit
        }
    }

    /// At the relay: an initiator on leg `leg` asks for a circuit to `target`.
    fn relay_connect(
        &mut self,
        relay: HostId,
        from: HostId,
        leg: ConnId,
        target: HostId,
        circuit: ConnId,
    ) -> Result<(), KernelError> {
        let now = self.kernel.now();
        let limits = self.cfg.relay;
        let st = &mut self.hosts[relay.0 as usize];
        st.reservations.retain(|_, r| r.expires > now);
        let res = st.reservations.get(&target).map(|r| r.conn);
        let per_peer = st.circuits.values().filter(|(a, _)| *a == from).count();
        let ok = st.relay_server
            && res.is_some_and(|rc| self.conns.contains_key(&rc))
            && st.circuits.len() < limits.max_circuits
            && per_peer < limits.max_circuits_per_peer;
        let Some(target_leg) = res.filter(|_| ok) else {
            self.stats.circuits_refused += 1;
            return self.send_on(relay, leg, Body::ConnectDenied { circuit });
        };
        st.circuits.insert(circuit, (from, target));
        let end = |host| End {
            host,
            remote: Addr::new(std::net::Ipv4Addr::UNSPECIFIED, 0),
            last_heard: now,
            last_sent: now,
            open: false,
        };
        self.conns.insert(
            circuit,
            Conn {
                ends: [end(from), end(target)],
                kind: PathKind::Relayed { relay },
                legs: [leg, target_leg],
                bytes: 0,
            },
        );
        self.stats.relayed_connections += 1;
        self.kernel
            .schedule_in(limits.max_circuit_duration, Ev::CircuitExpire(circuit))?;
        self.send_on(relay, target_leg, Body::Stop { from, circuit })
    }

    /// A body on a relayed connection, arriving over leg `leg` at `h` (the relay or an end).
    fn on_circuit(
        &mut self,
        h: HostId,
        leg: ConnId,
        circuit: ConnId,
        inner: Body<P>,
    ) -> Result<(), KernelError> {
        let Some(cn) = self.conns.get_mut(&circuit) else {
            return Ok(());
        };
        let PathKind::Relayed { relay } = cn.kind else {
            return Ok(());
        };
        if h == relay {
            // Forward to the other end, counting against the circuit's limit.
            let i = usize::from(cn.legs[1] == leg);
            let out_leg = cn.legs[1 - i];
            let n = u64::from(inner.len());
            cn.bytes += n;
            self.stats.relayed_bytes += n;
            if cn.bytes > self.cfg.relay.max_circuit_bytes {
                return self.close_with(circuit, None, CloseReason::RelayLimit);
            }
            return self.send_on(
                relay,
                out_leg,
                Body::Circuit {
                    circuit,
                    inner: Box::new(inner),
                },
            );
        }
        let Some(i) = cn.ends.iter().position(|e| e.host == h) else {
            return Ok(());
        };
        cn.ends[i].last_heard = self.kernel.now();
        let peer = cn.ends[1 - i].host;
        match inner {
            Body::StopOk { .. } => {
                if self.hosts[h.0 as usize]
                    .relayed_dials
                    .remove(&circuit)
                    .is_some()
                {
                    self.open_end(h, circuit, true, None);
                }
                Ok(())
            }
            Body::DcutrConnect { addrs, nonce } => {
                self.dcutr_on_connect(h, peer, circuit, addrs, nonce)
            }
            Body::DcutrSync => {
                // We are the responder: punch now.
                if let Some(p) = self.hosts[h.0 as usize].punching.get(&peer) {
                    let nonce = p.nonce;
                    self.punch_tick(h, peer, nonce, 0)?;
                }
                Ok(())
            }
            other => {
                if !self.conns.get(&circuit).is_some_and(|c| c.ends[i].open) {
                    return Ok(());
                }
                self.on_body(h, peer, circuit, other)
            }
        }
    }

    fn candidate_addrs(&self, h: HostId) -> Vec<Addr> {
        let mut v = self.hosts[h.0 as usize].observed.clone();
        let l = self.listen_addr(h);
        if !v.contains(&l) {
            v.push(l);
        }
        v
    }

    /// DCUtR, the side that accepted the relayed connection: send our addresses, start the
    /// clock for the RTT.
    fn dcutr_begin(
        &mut self,
        h: HostId,
        peer: HostId,
        circuit: ConnId,
        attempt: u8,
    ) -> Result<(), KernelError> {
        let now = self.kernel.now();
        let nonce = circuit.0 << 8 | u64::from(attempt);
        self.stats.hole_punch_attempts += 1;
        self.hosts[h.0 as usize].punching.insert(
            peer,
            Punch {
                nonce,
                relayed: circuit,
                initiator: true,
                attempt,
                t0: now,
                peer_addrs: Vec::new(),
                direct: None,
            },
        );
        let addrs = self.candidate_addrs(h);
        self.send_on(h, circuit, Body::DcutrConnect { addrs, nonce })?;
        let inc = self.inc(h);
        self.kernel.schedule_in(
            self.cfg.dcutr_attempt_timeout,
            Ev::PunchDeadline {
                host: h,
                inc,
                peer,
                nonce,
            },
        )
    }

    fn dcutr_on_connect(
        &mut self,
        h: HostId,
        peer: HostId,
        circuit: ConnId,
        addrs: Vec<Addr>,
        their_nonce: u64,
    ) -> Result<(), KernelError> {
        let now = self.kernel.now();
        let inc = self.inc(h);
        match self.hosts[h.0 as usize].punching.get_mut(&peer) {
            Some(p) if p.initiator && p.relayed == circuit && p.nonce == their_nonce => {
                // The answer: RTT measured; SYNC, then punch after RTT/2.
                p.peer_addrs = addrs;
                let half = Duration::from_micros(now.since(p.t0).as_micros() / 2);
                let nonce = p.nonce;
                self.send_on(h, circuit, Body::DcutrSync)?;
                self.kernel.schedule_in(
                    half,
                    Ev::PunchStart {
                        host: h,
                        inc,
                        peer,
                        nonce,
                    },
                )
            }
            _ => {
                // We are the responder: remember their addresses, answer with ours (same
                // nonce, which names the attempt), wait for SYNC.
                let nonce = their_nonce;
                let attempt = (nonce & 0xff) as u8;
                self.hosts[h.0 as usize].punching.insert(
                    peer,
                    Punch {
                        nonce,
                        relayed: circuit,
                        initiator: false,
                        attempt,
                        t0: now,
                        peer_addrs: addrs,
                        direct: None,
                    },
                );
                let mine = self.candidate_addrs(h);
                self.send_on(h, circuit, Body::DcutrConnect { addrs: mine, nonce })?;
                self.kernel.schedule_in(
                    self.cfg.dcutr_attempt_timeout,
                    Ev::PunchDeadline {
                        host: h,
                        inc,
                        peer,
                        nonce,
                    },
                )
            }
        }
    }

    /// Sends punch packets to every address the peer gave, a few times with growing gaps.
    fn punch_tick(
        &mut self,
        h: HostId,
        peer: HostId,
        nonce: u64,
        k: u8,
    ) -> Result<(), KernelError> {
        let Some(p) = self.hosts[h.0 as usize].punching.get(&peer) else {
            return Ok(());
        };
        if p.nonce != nonce || (p.direct.is_some() && k > 0) {
            return Ok(());
        }
        let port = self.cfg.port;
        for dst in p.peer_addrs.clone() {
            self.transmit(
                h,
                port,
                dst,
                Frame::Punch {
                    from: h,
                    to: peer,
                    nonce,
                },
                0,
            )?;
        }
        if k < 5 {
            let inc = self.inc(h);
            self.kernel.schedule_in(
                Duration::from_millis(50 << k),
                Ev::PunchTick {
                    host: h,
                    inc,
                    peer,
                    nonce,
                    k: k + 1,
                },
            )?;
        }
        Ok(())
    }

    fn punch_deadline(&mut self, h: HostId, peer: HostId, nonce: u64) -> Result<(), KernelError> {
        let Some(p) = self.hosts[h.0 as usize].punching.get(&peer).cloned() else {
            return Ok(());
        };
        if p.nonce != nonce {
            return Ok(());
        }
        if let Some(c) = p.direct {
            // We answered a punch but never heard the acknowledgement come back: the peer's
            // side did not open. The connection is half-made; drop it.
            if self.conns.get(&c).is_some_and(|cn| !cn.ends[0].open) {
                self.close_with(c, None, CloseReason::Idle)?;
            }
        }
        self.hosts[h.0 as usize].punching.remove(&peer);
        if !p.initiator {
            return Ok(());
        }
        if p.attempt < self.cfg.dcutr_attempts && self.conns.contains_key(&p.relayed) {
            self.dcutr_begin(h, peer, p.relayed, p.attempt + 1)
        } else {
            self.stats.hole_punch_failures += 1;
            self.emit(h, Event::HolePunch { peer, ok: false });
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests;
