//! The glue between the simulator (`bootyard-sim`, which knows nothing of bootyard) and the
//! mesh core: mesh scenario files (`scenarios/sim/*.toml`), building the simulated world from
//! one seed, running every node's [`Node`] over the simulated libp2p mechanisms, faults,
//! convergence, metrics, assertions and the trace hash.
//!
//! **Convergence**, precisely: at an instant `t`, let L be the live nodes holding the token.
//! The mesh is converged at `t` when (1) every node in L has the same ledger head; (2) every
//! node in L follows the same cluster decision (quorum mode: epoch, leader and masters;
//! Kairos mode: the same assignment) and has a role in it; (3) every worker in L holds join
//! data equal to the leader's; and (4) for every node in L, every peer it wants a path to that
//! is in L has a verified connection (direct or relayed). The state is sampled every
//! [`SAMPLE_MS`] ms of virtual time and after every fault; "converged at" is the first sample
//! where all four hold.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;

use bootyard_sim::net::{
    Filtering, HostId, LinkSpec, Mapping, NatSpec, NetError, Network, RealmId,
};
use bootyard_sim::swarm::{self, Command, Event, Services, Step, Swarm, SwarmConfig};
use bootyard_sim::{Duration, Instant, KernelError, Rng};
use ed25519_dalek::SigningKey;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::mesh::ledger::{Ledger, MemoCrypto};
use crate::mesh::node::{
    Action, Bootstrap, ConnRef, Mode, NetId, Node, NodeConfig, NodeEvent, PathKind,
};
use crate::mesh::roles::Role;
use crate::mesh::token::NetworkToken;

pub mod trace;
pub use trace::{NoTrace, TraceSink};

/// How often convergence is sampled, in virtual milliseconds.
pub const SAMPLE_MS: u64 = 250;

// Bounds on what a scenario file may say, each checked when the file is parsed (an error
// names the field and the bound): a value the simulator's arithmetic or memory cannot carry
// is refused up front, instead of wrapping, panicking or exhausting memory mid-run.

/// Largest scenario file, in bytes (a trace embeds it in its first line).
pub const SCENARIO_BYTES_MAX: usize = 256 * 1024;
/// Largest mesh a scenario may ask for: mesh nodes and bootstrap nodes together.
pub const NODES_MAX: usize = 100_000;
/// Bootstrap nodes (each also brings a host that AutoNAT dials back from).
pub const BOOTSTRAP_MAX: usize = 1_000;
/// `[[group]]` tables.
pub const GROUPS_MAX: usize = 1_000;
/// `[[fault]]` tables.
pub const FAULTS_MAX: usize = 1_000;
/// Virtual seconds a run may last (a day).
pub const DURATION_S_MAX: u64 = 86_400;
/// The founding electorate: a quorum-mode ledger keeps four times this many owners on every
/// node, so it bounds each node's memory.
pub const MINIMUM_NODES_MAX: usize = 1_000;
/// HA masters besides the cluster-init one (K3s runs 3 to 7 servers; this is generous).
pub const HA_MASTERS_MAX: usize = 64;
/// Peers a node keeps paths to (at least 1: a node that wants no peer is not in a mesh).
pub const TARGET_PEERS_MAX: usize = 1_024;
/// One-way latency of a link, milliseconds.
pub const LATENCY_MS_MAX: u64 = 60_000;
/// Jitter of a link, milliseconds.
pub const JITTER_MS_MAX: u64 = 60_000;
/// A loss is a probability.
pub const LOSS_MAX: f64 = 1.0;
/// Link bandwidth, Mbit/s (at least 1: the network reads 0 as unlimited, which is what a
/// huge value means too).
pub const BANDWIDTH_MBPS_MAX: u64 = 1_000_000;
/// A relay's reservation and circuit caps.
pub const RELAY_SLOTS_MAX: usize = 65_536;
/// A relayed circuit's time limit, seconds (a longer one outlives any run).
pub const RELAY_CIRCUIT_S_MAX: u64 = DURATION_S_MAX;
/// A relayed circuit's byte limit.
pub const RELAY_CIRCUIT_BYTES_MAX: u64 = 1 << 40;
/// A NAT mapping's idle timeout, seconds.
pub const NAT_TIMEOUT_S_MAX: u64 = 86_400;
/// Clock skew, plus or minus, milliseconds (an hour).
pub const CLOCK_SKEW_MS_MAX: u64 = 3_600_000;
/// Shortest time span a fault may give, seconds: virtual time ticks in microseconds, so a
/// shorter one would round to nothing.
pub const TIME_S_MIN: f64 = 1e-6;
/// Smallest fraction of the mesh a partition cuts off.
pub const PARTITION_MIN: f64 = 0.01;
/// Largest fraction of the mesh a partition cuts off (the rest must be somebody).
pub const PARTITION_MAX: f64 = 0.99;
/// Crashes all churn faults together expand to (the timeline holds each one).
pub const CHURN_CRASHES_MAX: f64 = 100_000.0;
/// Ledger owners the whole mesh holds at once, every node's copy counted: each node keeps
/// up to its ledger's owner cap (`NodeConfig::ledger_owner_cap`: every member in Kairos
/// mode, a few times the electorate in quorum mode), so nodes × cap is what the run's
/// memory grows with. NODES_MAX nodes at the default cap of 32 fit; a Kairos-mode mesh of
/// 100,000 (10^10 entries) does not.
pub const MESH_LEDGER_OWNERS_MAX: usize = 10_000_000;
/// Any count an `[expect]` table asks for; a larger one is a typo, not an expectation.
pub const EXPECT_COUNT_MAX: u64 = 1_000_000_000;

/// A scenario file that cannot be run as it is: what is wrong, and where.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error("the scenario is larger than {max} bytes (SCENARIO_BYTES_MAX)")]
    TooLarge { max: usize },
    #[error("the scenario is not UTF-8")]
    NotUtf8,
    #[error("parsing the mesh scenario")]
    Toml(#[from] toml::de::Error),
    #[error("{field} = {value}: must be in {min}..={max} ({bound})")]
    OutOfRange {
        field: String,
        value: String,
        min: String,
        max: String,
        bound: &'static str,
    },
    #[error("no nodes: add a [[group]] with count > 0")]
    NoNodes,
    #[error("{nodes} nodes and {bootstrap} bootstrap nodes: at most {max} in all (NODES_MAX)")]
    TooManyNodes {
        nodes: usize,
        bootstrap: usize,
        max: usize,
    },
    #[error("{nodes} nodes each keeping up to {owners} ledger owners: {total} in all, at most {max} (MESH_LEDGER_OWNERS_MAX)")]
    LedgerTooLarge {
        nodes: usize,
        owners: usize,
        total: usize,
        max: usize,
    },
    #[error("mode {0:?} (expected quorum or kairos)")]
    Mode(String),
    #[error("group[{group}]: placement {placement:?} (expected public, lan, nat or cgnat)")]
    Placement { group: usize, placement: String },
    #[error("group[{group}]: nat")]
    Nat {
        group: usize,
        #[source]
        source: NatError,
    },
    #[error("fault[{fault}]: give exactly one of crash, partition, heal, churn, loss")]
    FaultActions { fault: usize },
    #[error("fault[{fault}]: restart_after goes with crash")]
    RestartWithoutCrash { fault: usize },
    #[error(
        "fault[{fault}]: crash = {target:?} (expected leader, random or node-N below {nodes})"
    )]
    CrashTarget {
        fault: usize,
        target: String,
        nodes: usize,
    },
    #[error("fault[{fault}]: churn.until = {until} is not after at = {at}")]
    ChurnBackwards { fault: usize, at: f64, until: f64 },
    #[error("the churn faults crash {crashes} times; at most {max} (CHURN_CRASHES_MAX)")]
    TooManyCrashes { crashes: f64, max: f64 },
    #[error("expect.converges = false contradicts expect.{field}")]
    ConvergesContradiction { field: &'static str },
    #[error("expect.reconverged_within needs a [[fault]] to reconverge after")]
    ReconvergeWithoutFault,
}

/// A `nat` value that names no NAT behaviour.
#[derive(Debug, thiserror::Error)]
pub enum NatError {
    #[error("nat {0:?}: expected MAPPING/FILTERING or probelab")]
    Shape(String),
    #[error("nat mapping {0:?} (expected eim, adm or apdm)")]
    Mapping(String),
    #[error("nat filtering {0:?} (expected eif, adf or apdf)")]
    Filtering(String),
}

/// Checks `lo <= v <= hi` (a NaN is in no range); `bound` names the constant `hi` is.
fn in_range<T: PartialOrd + std::fmt::Display>(
    field: impl std::fmt::Display,
    v: T,
    lo: T,
    hi: T,
    bound: &'static str,
) -> Result<(), FileError> {
    if lo <= v && v <= hi {
        return Ok(());
    }
    Err(FileError::OutOfRange {
        field: field.to_string(),
        value: v.to_string(),
        min: lo.to_string(),
        max: hi.to_string(),
        bound,
    })
}

/// `bounded!(field, value, min, BOUND)`: [`in_range`] with the bound's name.
/// `bounded!(field, value, min, max, "name")` names a bound that is no constant.
macro_rules! bounded {
    ($field:expr, $v:expr, $lo:expr, $hi:ident) => {
        in_range($field, $v, $lo, $hi, stringify!($hi))
    };
    ($field:expr, $v:expr, $lo:expr, $hi:expr, $name:expr) => {
        in_range($field, $v, $lo, $hi, $name)
    };
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SimFile {
    pub name: String,
    #[serde(default)]
    pub description: String,
    /// Virtual seconds to run.
    pub duration: u64,
    #[serde(default = "default_mode")]
    pub mode: String,
    #[serde(default = "default_min")]
    pub minimum_nodes: usize,
    #[serde(default = "default_ha")]
    pub ha_masters: usize,
    #[serde(default = "default_target")]
    pub target_peers: usize,
    #[serde(default)]
    pub link: LinkFile,
    #[serde(default)]
    pub bootstrap: usize,
    /// Circuit relay v2 limits of the bootstrap relays (default: rust-libp2p's).
    #[serde(default)]
    pub relay: RelayFile,
    #[serde(rename = "group", default)]
    pub groups: Vec<GroupFile>,
    #[serde(rename = "fault", default)]
    pub faults: Vec<FaultFile>,
    #[serde(default)]
    pub expect: ExpectFile,
}

fn default_mode() -> String {
    "quorum".into()
}
fn default_min() -> usize {
    3
}
fn default_ha() -> usize {
    2
}
fn default_target() -> usize {
    8
}

/// The tables below take their defaults from their one `Default` impl (`serde(default)` on
/// the struct): a missing table and a table missing some keys mean the same.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LinkFile {
    pub latency_ms: u64,
    pub jitter_ms: u64,
    pub loss: f64,
    pub bandwidth_mbps: u64,
}

impl Default for LinkFile {
    fn default() -> Self {
        Self {
            latency_ms: 10,
            jitter_ms: 2,
            loss: 0.0,
            bandwidth_mbps: 100,
        }
    }
}

impl LinkFile {
    fn validate(&self, at: &str) -> Result<(), FileError> {
        bounded!(
            format_args!("{at}.latency_ms"),
            self.latency_ms,
            0,
            LATENCY_MS_MAX
        )?;
        bounded!(
            format_args!("{at}.jitter_ms"),
            self.jitter_ms,
            0,
            JITTER_MS_MAX
        )?;
        bounded!(format_args!("{at}.loss"), self.loss, 0.0, LOSS_MAX)?;
        bounded!(
            format_args!("{at}.bandwidth_mbps"),
            self.bandwidth_mbps,
            1,
            BANDWIDTH_MBPS_MAX
        )
    }

    /// The link as the network models it (of a validated file).
    fn spec(&self) -> LinkSpec {
        debug_assert!(self.validate("link").is_ok(), "validated when parsed");
        LinkSpec {
            latency: Duration::from_millis(self.latency_ms),
            jitter: Duration::from_millis(self.jitter_ms),
            loss_ppm: (self.loss * 1_000_000.0) as u32,
            bandwidth_bps: self.bandwidth_mbps * 1_000_000,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RelayFile {
    pub max_reservations: usize,
    pub max_circuits: usize,
    pub max_circuits_per_peer: usize,
    /// Seconds.
    pub max_circuit_duration: u64,
    pub max_circuit_bytes: u64,
}

impl Default for RelayFile {
    fn default() -> Self {
        Self {
            max_reservations: 128,
            max_circuits: 16,
            max_circuits_per_peer: 4,
            max_circuit_duration: 120,
            max_circuit_bytes: 1 << 17,
        }
    }
}

impl RelayFile {
    fn validate(&self) -> Result<(), FileError> {
        bounded!(
            "relay.max_reservations",
            self.max_reservations,
            0,
            RELAY_SLOTS_MAX
        )?;
        bounded!("relay.max_circuits", self.max_circuits, 0, RELAY_SLOTS_MAX)?;
        bounded!(
            "relay.max_circuits_per_peer",
            self.max_circuits_per_peer,
            0,
            RELAY_SLOTS_MAX
        )?;
        bounded!(
            "relay.max_circuit_duration",
            self.max_circuit_duration,
            1,
            RELAY_CIRCUIT_S_MAX
        )?;
        bounded!(
            "relay.max_circuit_bytes",
            self.max_circuit_bytes,
            1,
            RELAY_CIRCUIT_BYTES_MAX
        )
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupFile {
    pub count: usize,
    /// `public`, `lan` (one NAT for the group), `nat` (a NAT per node) or `cgnat` (a NAT per
    /// node, all behind one carrier-grade NAT).
    pub placement: String,
    /// `MAPPING/FILTERING` with eim|adm|apdm and eif|adf|apdf, or a mix name (`probelab`).
    #[serde(default)]
    pub nat: Option<String>,
    /// NAT mapping timeout, seconds.
    #[serde(default)]
    pub nat_timeout: Option<u64>,
    #[serde(default = "yes")]
    pub hairpin: bool,
    /// Nodes with a different token (they must learn nothing and change nothing).
    #[serde(default)]
    pub intruder: bool,
    /// Clock skew, uniform in plus/minus this many milliseconds.
    #[serde(default)]
    pub clock_skew_ms: u64,
    #[serde(default)]
    pub link: Option<LinkFile>,
}

fn yes() -> bool {
    true
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FaultFile {
    /// Virtual seconds from the start.
    pub at: f64,
    /// `leader`, `node-N` (by index among mesh nodes), or `random`.
    #[serde(default)]
    pub crash: Option<String>,
    #[serde(default)]
    pub restart_after: Option<f64>,
    /// Cuts this fraction of mesh nodes (the first by index) off from everyone else.
    #[serde(default)]
    pub partition: Option<f64>,
    #[serde(default)]
    pub heal: bool,
    /// Crashes a random live node every `every` seconds until `until`, each down for `down`.
    #[serde(default)]
    pub churn: Option<ChurnFile>,
    /// Sets every link's loss to this.
    #[serde(default)]
    pub loss: Option<f64>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChurnFile {
    pub every: f64,
    pub down: f64,
    pub until: f64,
}

/// What a run must show to pass (besides the safety checks every run makes).
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ExpectFile {
    /// The mesh converges at some sample of the run (the default: a run that never converges
    /// does not pass). `false` says the file expects it never to, and the run fails if it does.
    pub converges: bool,
    /// Converged within this many virtual seconds of the start.
    pub converged_by: Option<f64>,
    /// Converged again within this many seconds of the last fault.
    pub reconverged_within: Option<f64>,
    /// Converged at the end of the run.
    pub converged_at_end: bool,
    /// Nodes that ran cluster-init (a node running it twice counts twice).
    pub cluster_inits: usize,
    pub min_relayed_paths: usize,
    pub min_direct_paths: usize,
    pub min_hole_punches_ok: u64,
    pub min_hole_punches_failed: u64,
    /// The leader changed at least once (a new epoch).
    pub new_leader: bool,
}

impl Default for ExpectFile {
    fn default() -> Self {
        Self {
            converges: true,
            converged_by: None,
            reconverged_within: None,
            converged_at_end: false,
            cluster_inits: 1,
            min_relayed_paths: 0,
            min_direct_paths: 0,
            min_hole_punches_ok: 0,
            min_hole_punches_failed: 0,
            new_leader: false,
        }
    }
}

impl ExpectFile {
    fn validate(&self, duration_s: f64, faults: usize) -> Result<(), FileError> {
        if let Some(by) = self.converged_by {
            bounded!(
                "expect.converged_by",
                by,
                TIME_S_MIN,
                duration_s,
                "duration"
            )?;
        }
        if let Some(within) = self.reconverged_within {
            bounded!(
                "expect.reconverged_within",
                within,
                TIME_S_MIN,
                DURATION_S_MAX as f64,
                "DURATION_S_MAX"
            )?;
            if faults == 0 {
                return Err(FileError::ReconvergeWithoutFault);
            }
        }
        if !self.converges {
            let contradicts = [
                ("converged_by", self.converged_by.is_some()),
                ("reconverged_within", self.reconverged_within.is_some()),
                ("converged_at_end", self.converged_at_end),
            ];
            if let Some((field, _)) = contradicts.into_iter().find(|(_, set)| *set) {
                return Err(FileError::ConvergesContradiction { field });
            }
        }
        let counts = [
            ("expect.cluster_inits", self.cluster_inits as u64),
            ("expect.min_relayed_paths", self.min_relayed_paths as u64),
            ("expect.min_direct_paths", self.min_direct_paths as u64),
            ("expect.min_hole_punches_ok", self.min_hole_punches_ok),
            (
                "expect.min_hole_punches_failed",
                self.min_hole_punches_failed,
            ),
        ];
        for (field, v) in counts {
            bounded!(field, v, 0, EXPECT_COUNT_MAX)?;
        }
        Ok(())
    }
}

/// Why a scenario file could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("reading {path}")]
    Read {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("in {path}")]
    Invalid {
        path: std::path::PathBuf,
        #[source]
        source: Box<FileError>,
    },
}

impl SimFile {
    pub fn parse(text: &str) -> Result<Self, FileError> {
        if text.len() > SCENARIO_BYTES_MAX {
            return Err(FileError::TooLarge {
                max: SCENARIO_BYTES_MAX,
            });
        }
        let f: SimFile = toml::from_str(text)?;
        f.validate()?;
        Ok(f)
    }

    /// Reads and parses a scenario file (at most [`SCENARIO_BYTES_MAX`] of it: `sim run
    /// /dev/zero` is an invalid file, not an exhausted memory).
    pub fn load(path: &Path) -> Result<(Self, String), LoadError> {
        use std::io::Read as _;
        let read = |source| LoadError::Read {
            path: path.to_path_buf(),
            source,
        };
        let invalid = |source| LoadError::Invalid {
            path: path.to_path_buf(),
            source: Box::new(source),
        };
        let mut bytes = Vec::new();
        std::fs::File::open(path)
            .map_err(read)?
            .take(SCENARIO_BYTES_MAX as u64 + 1)
            .read_to_end(&mut bytes)
            .map_err(read)?;
        if bytes.len() > SCENARIO_BYTES_MAX {
            return Err(invalid(FileError::TooLarge {
                max: SCENARIO_BYTES_MAX,
            }));
        }
        let text = String::from_utf8(bytes).map_err(|_| invalid(FileError::NotUtf8))?;
        let f = Self::parse(&text).map_err(invalid)?;
        Ok((f, text))
    }

    /// Mesh nodes (with the token or without), over all groups.
    fn nodes(&self) -> usize {
        self.groups.iter().map(|g| g.count).sum()
    }

    fn validate(&self) -> Result<(), FileError> {
        bounded!("duration", self.duration, 1, DURATION_S_MAX)?;
        bounded!("bootstrap", self.bootstrap, 0, BOOTSTRAP_MAX)?;
        bounded!("[[group]] tables", self.groups.len(), 0, GROUPS_MAX)?;
        bounded!("[[fault]] tables", self.faults.len(), 0, FAULTS_MAX)?;
        for (i, g) in self.groups.iter().enumerate() {
            // Each count first, so the sum below cannot overflow.
            bounded!(format_args!("group[{i}].count"), g.count, 1, NODES_MAX)?;
        }
        let nodes = self.nodes();
        if nodes == 0 {
            return Err(FileError::NoNodes);
        }
        if nodes + self.bootstrap > NODES_MAX {
            return Err(FileError::TooManyNodes {
                nodes,
                bootstrap: self.bootstrap,
                max: NODES_MAX,
            });
        }
        let mode = mode(&self.mode)?;
        bounded!("minimum_nodes", self.minimum_nodes, 1, MINIMUM_NODES_MAX)?;
        bounded!("ha_masters", self.ha_masters, 0, HA_MASTERS_MAX)?;
        // The cap as the nodes will compute it (their config, not a copy of its formula).
        let mut cfg = NodeConfig::new(
            NetId(0),
            Arc::new(NetworkToken::generate(&mut Rng::seed(0))),
        );
        (cfg.mode, cfg.minimum_nodes, cfg.ha_masters) = (mode, self.minimum_nodes, self.ha_masters);
        let owners = cfg.ledger_owner_cap().min(nodes);
        let total = nodes * owners;
        if total > MESH_LEDGER_OWNERS_MAX {
            return Err(FileError::LedgerTooLarge {
                nodes,
                owners,
                total,
                max: MESH_LEDGER_OWNERS_MAX,
            });
        }
        bounded!("target_peers", self.target_peers, 1, TARGET_PEERS_MAX)?;
        self.link.validate("link")?;
        self.relay.validate()?;
        for (i, g) in self.groups.iter().enumerate() {
            match g.placement.as_str() {
                "public" => {}
                "lan" | "nat" | "cgnat" => {
                    nat_choice(g.nat.as_deref().unwrap_or("eim/apdf"))
                        .map_err(|source| FileError::Nat { group: i, source })?;
                }
                p => {
                    return Err(FileError::Placement {
                        group: i,
                        placement: p.into(),
                    })
                }
            }
            if let Some(t) = g.nat_timeout {
                bounded!(
                    format_args!("group[{i}].nat_timeout"),
                    t,
                    1,
                    NAT_TIMEOUT_S_MAX
                )?;
            }
            bounded!(
                format_args!("group[{i}].clock_skew_ms"),
                g.clock_skew_ms,
                0,
                CLOCK_SKEW_MS_MAX
            )?;
            if let Some(l) = &g.link {
                l.validate(&format!("group[{i}].link"))?;
            }
        }
        let duration_s = self.duration as f64;
        let mut crashes = 0.0;
        for (i, f) in self.faults.iter().enumerate() {
            let actions = [
                f.crash.is_some(),
                f.partition.is_some(),
                f.heal,
                f.churn.is_some(),
                f.loss.is_some(),
            ];
            if actions.iter().filter(|a| **a).count() != 1 {
                return Err(FileError::FaultActions { fault: i });
            }
            bounded!(
                format_args!("fault[{i}].at"),
                f.at,
                0.0,
                duration_s,
                "duration"
            )?;
            if let Some(p) = f.partition {
                bounded!(
                    format_args!("fault[{i}].partition"),
                    p,
                    PARTITION_MIN,
                    PARTITION_MAX
                )?;
            }
            if let Some(l) = f.loss {
                bounded!(format_args!("fault[{i}].loss"), l, 0.0, LOSS_MAX)?;
            }
            if let Some(r) = f.restart_after {
                if f.crash.is_none() {
                    return Err(FileError::RestartWithoutCrash { fault: i });
                }
                bounded!(
                    format_args!("fault[{i}].restart_after"),
                    r,
                    TIME_S_MIN,
                    DURATION_S_MAX as f64,
                    "DURATION_S_MAX"
                )?;
            }
            if let Some(c) = &f.crash {
                if !(c == "leader"
                    || c == "random"
                    || c.strip_prefix("node-")
                        .is_some_and(|n| n.parse::<usize>().is_ok_and(|n| n < nodes)))
                {
                    return Err(FileError::CrashTarget {
                        fault: i,
                        target: c.clone(),
                        nodes,
                    });
                }
            }
            if let Some(c) = &f.churn {
                let at = |k: &str| format!("fault[{i}].churn.{k}");
                bounded!(at("every"), c.every, TIME_S_MIN, duration_s, "duration")?;
                let down_max = DURATION_S_MAX as f64;
                bounded!(at("down"), c.down, TIME_S_MIN, down_max, "DURATION_S_MAX")?;
                bounded!(at("until"), c.until, 0.0, duration_s, "duration")?;
                if c.until <= f.at {
                    return Err(FileError::ChurnBackwards {
                        fault: i,
                        at: f.at,
                        until: c.until,
                    });
                }
                crashes += ((c.until - f.at) / c.every).ceil();
            }
        }
        if crashes > CHURN_CRASHES_MAX {
            return Err(FileError::TooManyCrashes {
                crashes,
                max: CHURN_CRASHES_MAX,
            });
        }
        self.expect.validate(duration_s, self.faults.len())
    }
}

fn mode(s: &str) -> Result<Mode, FileError> {
    match s {
        "quorum" => Ok(Mode::Quorum),
        "kairos" => Ok(Mode::Kairos),
        m => Err(FileError::Mode(m.into())),
    }
}

#[derive(Debug, Clone, Copy)]
enum NatChoice {
    Fixed(Mapping, Filtering),
    /// A mix approximating ProbeLab's 2023 measurements of IPFS nodes behind NATs (most are
    /// cone NATs that can be punched; about a third are symmetric or port-restricted
    /// combinations that cannot), drawn per node: 15% full cone, 20% address-restricted,
    /// 35% port-restricted, 30% symmetric.
    ProbeLab,
}

fn nat_choice(s: &str) -> Result<NatChoice, NatError> {
    if s == "probelab" {
        return Ok(NatChoice::ProbeLab);
    }
    let (m, f) = s.split_once('/').ok_or_else(|| NatError::Shape(s.into()))?;
    let m = match m {
        "eim" => Mapping::EndpointIndependent,
        "adm" => Mapping::AddressDependent,
        "apdm" => Mapping::AddressAndPortDependent,
        _ => return Err(NatError::Mapping(m.into())),
    };
    let f = match f {
        "eif" => Filtering::EndpointIndependent,
        "adf" => Filtering::AddressDependent,
        "apdf" => Filtering::AddressAndPortDependent,
        _ => return Err(NatError::Filtering(f.into())),
    };
    Ok(NatChoice::Fixed(m, f))
}

fn draw_nat(c: NatChoice, rng: &mut Rng) -> (Mapping, Filtering) {
    match c {
        NatChoice::Fixed(m, f) => (m, f),
        NatChoice::ProbeLab => match rng.below(100) {
            0..15 => (Mapping::EndpointIndependent, Filtering::EndpointIndependent),
            15..35 => (Mapping::EndpointIndependent, Filtering::AddressDependent),
            35..70 => (
                Mapping::EndpointIndependent,
                Filtering::AddressAndPortDependent,
            ),
            _ => (
                Mapping::AddressAndPortDependent,
                Filtering::AddressAndPortDependent,
            ),
        },
    }
}

/// The payload the simulated swarm carries: the bytes a node sent (a sealed Hello or a plain frame).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Bytes(pub Vec<u8>);

impl swarm::WireSize for Bytes {
    fn wire_len(&self) -> u32 {
        self.0.len() as u32
    }
}

struct SimNode {
    host: HostId,
    key: SigningKey,
    intruder: bool,
    node: Option<Node>,
    /// The ledger as it stood at the crash: the agent keeps it on disk.
    saved: Option<Ledger>,
    wake: Option<Instant>,
    booted: bool,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Metrics {
    pub nodes: usize,
    pub intruders: usize,
    pub bootstrap: usize,
    pub virtual_secs: f64,
    pub converged_at_secs: Option<f64>,
    pub reconverged_after_last_fault_secs: Option<f64>,
    pub converged_at_end: bool,
    pub events: u64,
    pub messages: u64,
    pub message_bytes: u64,
    /// Messages and their bytes by kind: hello, head, versions, entries, lease.
    pub messages_by_kind: [u64; 5],
    pub message_bytes_by_kind: [u64; 5],
    pub packets: u64,
    pub packets_dropped: u64,
    pub connections: u64,
    pub relayed_connections: u64,
    pub relayed_bytes: u64,
    pub reservations: u64,
    pub hole_punch_attempts: u64,
    pub hole_punch_successes: u64,
    pub hole_punch_failures: u64,
    pub direct_paths_at_end: usize,
    pub relayed_paths_at_end: usize,
    pub cluster_inits: usize,
    pub leader_epochs: u64,
    pub signature_checks: u64,
    pub signature_memo_hits: u64,
    pub ledger_entries: usize,
    pub node_bytes_mean: u64,
    pub node_bytes_max: u64,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Check {
    pub name: String,
    pub pass: bool,
    pub detail: String,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Outcome {
    pub scenario: String,
    pub seed: u64,
    pub metrics: Metrics,
    pub checks: Vec<Check>,
    pub trace_hash: String,
}

impl Outcome {
    pub fn passed(&self) -> bool {
        self.checks.iter().all(|c| c.pass)
    }
}

struct World<'t> {
    file: SimFile,
    swarm: Swarm<Bytes>,
    nodes: Vec<SimNode>,
    /// Each host's node, by host id (dense from 0; bootstrap hosts have none).
    by_host: Vec<Option<usize>>,
    bootstrap: Vec<HostId>,
    crypto: MemoCrypto,
    hasher: Sha256,
    trace: &'t mut dyn TraceSink,
    /// Every cluster-init any node ran (a node running it twice counts twice).
    cluster_inits: Vec<usize>,
    max_epoch: u64,
    /// The leaders live nodes followed, per epoch, as seen at every sample (safety: at most
    /// one each).
    leaders_by_epoch: BTreeMap<u64, BTreeSet<[u8; 32]>>,
    rng: Rng,
    token: Arc<NetworkToken>,
    other_token: Arc<NetworkToken>,
}

fn secs_f(t: Instant) -> f64 {
    t.as_micros() as f64 / 1e6
}

fn at(secs: f64) -> Instant {
    Instant::from_micros((secs * 1e6) as u64)
}

impl World<'_> {
    fn hash_step(&mut self, now: Instant, host: HostId, tag: u8, parts: &[&[u8]]) {
        self.hasher.update(now.as_micros().to_be_bytes());
        self.hasher.update(host.0.to_be_bytes());
        self.hasher.update([tag]);
        for p in parts {
            self.hasher.update((p.len() as u32).to_be_bytes());
            self.hasher.update(p);
        }
    }

    fn make_node(&self, i: usize, now: Instant) -> Node {
        let sn = &self.nodes[i];
        let token = if sn.intruder {
            self.other_token.clone()
        } else {
            self.token.clone()
        };
        let mut cfg = NodeConfig::new(NetId(u64::from(sn.host.0)), token);
        cfg.mode = mode(&self.file.mode).expect("validated");
        cfg.minimum_nodes = self.file.minimum_nodes;
        cfg.ha_masters = self.file.ha_masters;
        cfg.target_peers = self.file.target_peers;
        cfg.listen = vec![self.swarm.listen_addr(sn.host)];
        cfg.bootstrap = self
            .bootstrap
            .iter()
            .map(|h| Bootstrap {
                net: NetId(u64::from(h.0)),
                addr: self.swarm.listen_addr(*h),
            })
            .collect();
        let rng = Rng::seed(
            self.rng.clone().next_u64()
                ^ (i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15)
                ^ now.as_micros(),
        );
        let local = self.swarm.net.local_time(sn.host, now);
        let mut node = Node::new(cfg, sn.key.clone(), rng, local);
        if let Some(l) = &sn.saved {
            node.restore(l.clone());
        }
        node
    }

    fn local(&self, i: usize, now: Instant) -> Instant {
        self.swarm.net.local_time(self.nodes[i].host, now)
    }

    /// Carries out what node `i` asked for, and schedules its next wake-up.
    fn drain(&mut self, i: usize, now: Instant) -> Result<(), KernelError> {
        let host = self.nodes[i].host;
        loop {
            let Some(node) = self.nodes[i].node.as_mut() else {
                return Ok(());
            };
            let Some(a) = node.poll_action() else { break };
            let cmd = match a {
                Action::Dial { peer, addrs } => Command::Dial {
                    peer: HostId(peer.0 as u32),
                    addrs,
                },
                Action::DialRelayed { relay, target } => Command::DialRelayed {
                    relay: HostId(relay.0 as u32),
                    target: HostId(target.0 as u32),
                },
                Action::Reserve { relay } => Command::Reserve {
                    relay: HostId(relay.0 as u32),
                },
                Action::Send { conn, bytes } => Command::Send {
                    conn: swarm::ConnId(conn.0),
                    msg: Bytes(bytes),
                },
                Action::Close { conn } => Command::Close {
                    conn: swarm::ConnId(conn.0),
                },
                Action::MdnsQuery => Command::MdnsQuery,
                Action::Register {
                    server,
                    ns,
                    ttl,
                    record,
                } => Command::Register {
                    server: HostId(server.0 as u32),
                    ns,
                    ttl,
                    record: Bytes(record),
                },
                Action::Discover { server, ns, limit } => Command::Discover {
                    server: HostId(server.0 as u32),
                    ns,
                    limit,
                },
                Action::AutoNatProbe { server } => Command::AutoNatProbe {
                    server: HostId(server.0 as u32),
                },
            };
            self.swarm.command(host, cmd)?;
        }
        let mut evs = Vec::new();
        if let Some(node) = self.nodes[i].node.as_mut() {
            while let Some(e) = node.poll_event() {
                evs.push(e);
            }
        }
        for e in evs {
            let (tag, text) = match &e {
                NodeEvent::ClusterInit => {
                    self.cluster_inits.push(i);
                    (1u8, "cluster-init".to_string())
                }
                NodeEvent::Role { role, epoch } => {
                    self.max_epoch = self.max_epoch.max(*epoch);
                    (2, format!("role {role:?} epoch {epoch}"))
                }
                NodeEvent::Join(j) => (3, format!("join {}", j.server)),
            };
            self.hash_step(now, host, tag, &[text.as_bytes()]);
            self.trace
                .line(&serde_json::json!({"t": secs_f(now), "node": i, "event": text}));
        }
        // Wake-ups: one pending per node, the earliest it asked for (in true time).
        if let Some(node) = self.nodes[i].node.as_ref() {
            let local = self.swarm.net.local_time(host, now);
            let want_local = node.poll_timeout();
            let wait = want_local.since(local);
            let want = now + wait;
            if self.nodes[i].wake.is_none_or(|w| want < w || w < now) {
                self.nodes[i].wake = Some(want);
                self.swarm.wake_at(host, want)?;
            }
        }
        Ok(())
    }

    fn on_step(&mut self, now: Instant, step: Step<Bytes>) -> Result<(), KernelError> {
        let host = match &step {
            Step::Event(h, _) | Step::Wake(h) => *h,
        };
        let Some(&Some(i)) = self.by_host.get(host.0 as usize) else {
            return Ok(()); // a bootstrap node: only its swarm services run
        };
        if self.nodes[i].node.is_none() {
            return Ok(());
        }
        let local = self.local(i, now);
        let node = self.nodes[i].node.as_mut().expect("checked");
        let v = &mut self.crypto;
        let mut digest: Vec<u8> = Vec::new();
        // A message's bytes go into the trace hash as they are (not copied).
        let mut message = None;
        let tag = match step {
            Step::Wake(_) => {
                if self.nodes[i].wake.is_some_and(|w| w <= now) {
                    self.nodes[i].wake = None;
                }
                let node = self.nodes[i].node.as_mut().expect("checked");
                if node.poll_timeout() <= local {
                    node.handle_timeout(local, v);
                }
                10
            }
            Step::Event(_, e) => match e {
                Event::Connected {
                    conn,
                    peer,
                    path,
                    observed,
                    ..
                } => {
                    let path = match path {
                        swarm::PathKind::Direct => PathKind::Direct,
                        swarm::PathKind::Relayed { relay } => PathKind::Relayed {
                            relay: NetId(u64::from(relay.0)),
                        },
                    };
                    digest.extend(conn.0.to_be_bytes());
                    digest.extend(peer.0.to_be_bytes());
                    node.handle_connected(
                        local,
                        ConnRef(conn.0),
                        NetId(u64::from(peer.0)),
                        path,
                        observed,
                    );
                    11
                }
                Event::Closed { conn, .. } => {
                    digest.extend(conn.0.to_be_bytes());
                    node.handle_closed(local, ConnRef(conn.0));
                    12
                }
                Event::DialFailed { peer } => {
                    node.handle_dial_failed(local, NetId(u64::from(peer.0)));
                    13
                }
                Event::Message { conn, msg, .. } => {
                    node.handle_message(local, ConnRef(conn.0), &msg.0, v);
                    message = Some(msg);
                    14
                }
                Event::Reserved { relay, ttl } => {
                    node.handle_reserved(local, NetId(u64::from(relay.0)), ttl);
                    15
                }
                Event::ReservationFailed { relay } => {
                    node.handle_reservation_failed(local, NetId(u64::from(relay.0)));
                    16
                }
                Event::RelayedDialFailed { target, .. } => {
                    node.handle_relayed_dial_failed(local, NetId(u64::from(target.0)));
                    17
                }
                Event::HolePunch { peer, ok } => {
                    node.handle_hole_punch(local, NetId(u64::from(peer.0)), ok);
                    18
                }
                Event::MdnsFound { peer, addr } => {
                    node.handle_mdns(local, NetId(u64::from(peer.0)), addr);
                    19
                }
                Event::Registered { .. } => 20,
                Event::Discovered { records, .. } => {
                    node.handle_discovered(
                        local,
                        records
                            .into_iter()
                            .map(|(h, b)| (NetId(u64::from(h.0)), b.0))
                            .collect(),
                        v,
                    );
                    21
                }
                Event::AutoNat { server, reachable } => {
                    node.handle_autonat(local, NetId(u64::from(server.0)), reachable);
                    22
                }
                Event::CommandFailed { .. } => 23,
            },
        };
        match &message {
            Some(m) => self.hash_step(now, host, tag, &[&m.0]),
            None => self.hash_step(now, host, tag, &[&digest]),
        }
        self.drain(i, now)
    }

    fn live_mesh(&self) -> Vec<usize> {
        (0..self.nodes.len())
            .filter(|&i| !self.nodes[i].intruder && self.nodes[i].node.is_some())
            .collect()
    }

    /// The four convergence conditions (module docs), at this instant.
    fn converged(&self) -> bool {
        self.gaps(1).is_empty()
    }

    /// What keeps the mesh from being converged (at most `max` reasons).
    fn gaps(&self, max: usize) -> Vec<String> {
        let mut out = Vec::new();
        if let Some(i) = self.nodes.iter().position(|n| !n.intruder && !n.booted) {
            out.push(format!("node {i} has not booted yet"));
            return out;
        }
        let live = self.live_mesh();
        let Some(&first) = live.first() else {
            out.push("no live node holds the token".into());
            return out;
        };
        let n0 = self.nodes[first].node.as_ref().expect("live");
        let head = n0.head();
        let view = n0.cluster();
        let join = n0.join_data();
        let live_net: BTreeSet<NetId> = live
            .iter()
            .map(|&i| NetId(u64::from(self.nodes[i].host.0)))
            .collect();
        if let Some(c) = &view {
            let live_keys: BTreeSet<[u8; 32]> = live
                .iter()
                .map(|&i| self.nodes[i].key.verifying_key().to_bytes())
                .collect();
            let (leader, masters) = (&c.leader, &c.masters);
            if !live_keys.contains(leader) {
                out.push(format!("node {first} follows a leader that is down"));
            }
            if let Some(m) = masters.iter().find(|m| !live_keys.contains(*m)) {
                out.push(format!(
                    "node {first} lists a master that is down ({})",
                    hex::encode(&m[..4])
                ));
            }
        }
        for &i in &live {
            if out.len() >= max {
                break;
            }
            let n = self.nodes[i].node.as_ref().expect("live");
            if n.head() != head {
                out.push(format!(
                    "node {i}: ledger differs from node {first}'s ({} vs {} entries)",
                    n.ledger().len(),
                    n0.ledger().len()
                ));
            } else if !same_decision(n.cluster().as_deref(), view.as_deref()) {
                out.push(format!(
                    "node {i}: follows another cluster decision than node {first}"
                ));
            } else if n.role().is_none() {
                out.push(format!("node {i}: has no role"));
            } else if n.join_data().is_none() || n.join_data() != join {
                out.push(format!("node {i}: join data missing or different"));
            } else if let Some(p) = n
                .wanted_without_path()
                .iter()
                .find(|p| live_net.contains(p))
            {
                out.push(format!(
                    "node {i}: no path to wanted peer h{} ({})",
                    p.0,
                    n.describe_peer(*p)
                ));
            }
        }
        out.truncate(max);
        out
    }

    fn leader_index(&self) -> Option<usize> {
        // The leader most live nodes follow.
        let mut count: BTreeMap<[u8; 32], usize> = BTreeMap::new();
        for i in self.live_mesh() {
            if let Some(c) = self.nodes[i].node.as_ref().and_then(Node::cluster) {
                *count.entry(c.leader).or_default() += 1;
            }
        }
        let (leader, _) = count.into_iter().max_by_key(|(k, n)| (*n, *k))?;
        self.nodes
            .iter()
            .position(|n| n.key.verifying_key().to_bytes() == leader)
    }
}

/// Whether two nodes follow the same decision: epoch, leader and masters.
fn same_decision(
    a: Option<&crate::mesh::node::Cluster>,
    b: Option<&crate::mesh::node::Cluster>,
) -> bool {
    match (a, b) {
        (Some(a), Some(b)) => a.epoch == b.epoch && a.leader == b.leader && a.masters == b.masters,
        (None, None) => true,
        _ => false,
    }
}

/// Events waiting in the simulator's queue at once (a bound on its memory).
pub const PENDING_EVENTS_MAX: usize = 1 << 26;

/// Events a run may fire for each host and virtual second. Measured on the shipped
/// scenarios (seed 1): symmetric-nat-mix fires about 140 (a full mesh of 40, hole punching),
/// nat-relay-hops 18, churn-1k 6; past 70 times the most, a run has a runaway feedback loop.
pub const EVENTS_PER_HOST_S_MAX: u64 = 10_000;

/// Events no run may fire, however large its file: about five hours of wall time at the
/// 1,000-node benchmark's rate.
pub const EVENTS_MAX: u64 = 10_000_000_000;

/// What a run may fire: [`EVENTS_PER_HOST_S_MAX`] for each host (nodes, bootstrap nodes and
/// their AutoNAT helpers) and virtual second, at most [`EVENTS_MAX`]. Past it the run
/// stops with [`KernelError::BudgetSpent`] instead of running on for hours.
pub fn event_budget(file: &SimFile) -> u64 {
    let hosts = (file.nodes() + 2 * file.bootstrap) as u64;
    hosts
        .saturating_mul(file.duration)
        .saturating_mul(EVENTS_PER_HOST_S_MAX)
        .min(EVENTS_MAX)
}

/// A run that could not finish.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("building the simulated network")]
    Net(#[from] NetError),
    #[error(transparent)]
    Kernel(#[from] KernelError),
}

/// Runs a scenario from one seed, within its [`event_budget`].
pub fn run(file: &SimFile, seed: u64, trace: &mut dyn TraceSink) -> Result<Outcome, RunError> {
    run_within(file, seed, trace, event_budget(file))
}

fn run_within(
    file: &SimFile,
    seed: u64,
    trace: &mut dyn TraceSink,
    events_max: u64,
) -> Result<Outcome, RunError> {
    let mut root = Rng::seed(seed);
    let mut net_rng = root.fork(1);
    let swarm_rng = root.fork(2);
    let mut build_rng = root.fork(3);
    let mut node_rng = root.fork(4);
    let mut fault_rng = root.fork(5);
    let token = Arc::new(NetworkToken::generate(&mut build_rng));
    let other_token = Arc::new(NetworkToken::generate(&mut build_rng));
    let mut net = Network::new(net_rng.fork(0));
    let base_link = file.link.spec();
    let mut bootstrap = Vec::new();
    for _ in 0..file.bootstrap {
        bootstrap.push(net.add_host(RealmId::INTERNET, base_link)?);
    }
    // Each bootstrap node dials AutoNAT dial-backs from a second address.
    let mut helpers = Vec::new();
    for &b in &bootstrap {
        helpers.push((b, net.add_host(RealmId::INTERNET, base_link)?));
    }
    struct Pending {
        host: HostId,
        intruder: bool,
        skew_ms: u64,
    }
    let mut pending = Vec::new();
    for g in &file.groups {
        let link = match &g.link {
            Some(l) => l.spec(),
            None => base_link,
        };
        let choice = nat_choice(g.nat.as_deref().unwrap_or("eim/apdf")).expect("validated");
        let spec = |rng: &mut Rng| {
            let (m, f) = draw_nat(choice, rng);
            let mut s = NatSpec::new(m, f);
            if let Some(t) = g.nat_timeout {
                s.timeout = Duration::from_secs(t);
            }
            s.hairpin = g.hairpin;
            s
        };
        let shared = match g.placement.as_str() {
            "lan" => Some(net.add_nat(RealmId::INTERNET, spec(&mut build_rng))?.1),
            "cgnat" => Some(
                net.add_nat(
                    RealmId::INTERNET,
                    NatSpec::new(
                        Mapping::EndpointIndependent,
                        Filtering::AddressAndPortDependent,
                    ),
                )?
                .1,
            ),
            _ => None,
        };
        for _ in 0..g.count {
            let realm = match (g.placement.as_str(), shared) {
                ("public", _) => RealmId::INTERNET,
                ("lan", Some(r)) => r,
                ("nat", _) => net.add_nat(RealmId::INTERNET, spec(&mut build_rng))?.1,
                ("cgnat", Some(r)) => net.add_nat(r, spec(&mut build_rng))?.1,
                _ => unreachable!("validated"),
            };
            let host = net.add_host(realm, link)?;
            pending.push(Pending {
                host,
                intruder: g.intruder,
                skew_ms: g.clock_skew_ms,
            });
        }
    }
    let mut cfg = SwarmConfig::default();
    cfg.relay.max_reservations = file.relay.max_reservations;
    cfg.relay.max_circuits = file.relay.max_circuits;
    cfg.relay.max_circuits_per_peer = file.relay.max_circuits_per_peer;
    cfg.relay.max_circuit_duration = Duration::from_secs(file.relay.max_circuit_duration);
    cfg.relay.max_circuit_bytes = file.relay.max_circuit_bytes;
    let mut swarm = Swarm::new(net, cfg, swarm_rng, PENDING_EVENTS_MAX);
    swarm.set_event_budget(events_max);
    for &b in &bootstrap {
        swarm.add_host(
            b,
            Services {
                relay: true,
                rendezvous: true,
                autonat: true,
                dcutr: false,
            },
        );
    }
    for &(b, helper) in &helpers {
        swarm.set_autonat_helper(b, helper);
    }
    let mut nodes = Vec::new();
    let mut by_host = Vec::new();
    for (index, p) in pending.into_iter().enumerate() {
        swarm.add_host(
            p.host,
            Services {
                dcutr: true,
                ..Services::default()
            },
        );
        if p.skew_ms > 0 {
            let span = p.skew_ms * 2 * 1000 + 1;
            let s = build_rng.below(span) as i64 - (p.skew_ms * 1000) as i64;
            swarm.net.set_skew(p.host, s);
        }
        let mut secret = [0u8; 32];
        for c in secret.chunks_mut(8) {
            c.copy_from_slice(&node_rng.next_u64().to_le_bytes());
        }
        let slot = p.host.0 as usize;
        if by_host.len() <= slot {
            by_host.resize(slot + 1, None);
        }
        by_host[slot] = Some(index);
        nodes.push(SimNode {
            host: p.host,
            key: SigningKey::from_bytes(&secret),
            intruder: p.intruder,
            node: None,
            saved: None,
            wake: None,
            booted: false,
        });
    }
    let mut w = World {
        file: file.clone(),
        swarm,
        nodes,
        by_host,
        bootstrap,
        crypto: MemoCrypto::default(),
        hasher: Sha256::new(),
        trace,
        cluster_inits: Vec::new(),
        max_epoch: 0,
        leaders_by_epoch: BTreeMap::new(),
        rng: root.fork(6),
        token,
        other_token,
    };
    w.hasher.update(seed.to_be_bytes());
    w.trace
        .line(&serde_json::json!({"scenario": file.name, "seed": seed, "nodes": w.nodes.len()}));
    // Nodes boot over the first second, in a seeded order.
    let boot_spread = 1_000_000u64;
    let mut boots: Vec<(Instant, usize)> = (0..w.nodes.len())
        .map(|i| (Instant::from_micros(fault_rng.below(boot_spread)), i))
        .collect();
    boots.sort();
    // The timeline: boots, faults (churn expanded), samples.
    #[derive(Debug, Clone)]
    enum Tl {
        Boot(usize),
        Crash(Option<usize>, Option<f64>),
        Partition(f64),
        Heal,
        Loss(f64),
    }
    let mut timeline: Vec<(Instant, u64, Tl)> = Vec::new();
    let mut seq = 0u64;
    let mut push = |t: Instant, e: Tl, tl: &mut Vec<(Instant, u64, Tl)>| {
        tl.push((t, seq, e));
        seq += 1;
    };
    for (t, i) in boots {
        push(t, Tl::Boot(i), &mut timeline);
    }
    let mut last_fault = None;
    for f in &file.faults {
        let t = at(f.at);
        last_fault = Some(last_fault.map_or(t, |l: Instant| l.max(t)));
        if let Some(c) = &f.crash {
            let target = match c.as_str() {
                "leader" => None,
                "random" => Some(fault_rng.below(w.nodes.len() as u64) as usize),
                n => Some(n.trim_start_matches("node-").parse().expect("validated")),
            };
            push(t, Tl::Crash(target, f.restart_after), &mut timeline);
        } else if let Some(p) = f.partition {
            push(t, Tl::Partition(p), &mut timeline);
        } else if f.heal {
            push(t, Tl::Heal, &mut timeline);
        } else if let Some(l) = f.loss {
            push(t, Tl::Loss(l), &mut timeline);
        } else if let Some(c) = &f.churn {
            let mut x = f.at;
            while x < c.until {
                let i = fault_rng.below(w.nodes.len() as u64) as usize;
                push(at(x), Tl::Crash(Some(i), Some(c.down)), &mut timeline);
                x += c.every;
            }
            last_fault = Some(last_fault.map_or(at(c.until), |l: Instant| l.max(at(c.until))));
        }
    }
    timeline.sort_by_key(|(t, s, _)| (*t, *s));
    let end = Instant::from_micros(file.duration * 1_000_000);
    let mut tl = std::collections::VecDeque::from(timeline);
    let mut next_sample = Instant::ZERO;
    let mut converged_at: Option<Instant> = None;
    let mut reconverged: Option<Instant> = None;
    let mut restarts: Vec<(Instant, usize)> = Vec::new();
    loop {
        // The next thing on the timeline (or sample) bounds how far the network runs.
        let next_tl = tl.front().map(|(t, _, _)| *t);
        let next_restart = restarts.iter().map(|(t, _)| *t).min();
        let bound = [Some(next_sample), next_tl, next_restart, Some(end)]
            .into_iter()
            .flatten()
            .min()
            .expect("end");
        while let Some(step) = w.swarm.step(bound)? {
            let now = w.swarm.now();
            w.on_step(now, step)?;
        }
        let now = bound;
        if next_restart == Some(now) {
            let due: Vec<usize> = restarts
                .iter()
                .filter(|(t, _)| *t == now)
                .map(|(_, i)| *i)
                .collect();
            restarts.retain(|(t, _)| *t != now);
            for i in due {
                if w.nodes[i].node.is_none() {
                    w.swarm.restart(w.nodes[i].host);
                    let n = w.make_node(i, now);
                    w.nodes[i].node = Some(n);
                    w.nodes[i].wake = None;
                    w.trace.line(
                        &serde_json::json!({"t": secs_f(now), "node": i, "event": "restart"}),
                    );
                    w.hash_step(now, w.nodes[i].host, 30, &[]);
                    w.drain(i, now)?;
                }
            }
            continue;
        }
        if next_tl == Some(now) {
            let (_, _, e) = tl.pop_front().expect("peeked");
            match e {
                Tl::Boot(i) => {
                    let n = w.make_node(i, now);
                    w.nodes[i].node = Some(n);
                    w.nodes[i].booted = true;
                    w.hash_step(now, w.nodes[i].host, 31, &[]);
                    w.drain(i, now)?;
                }
                Tl::Crash(target, restart) => {
                    let i = match target {
                        Some(i) => Some(i),
                        None => w.leader_index(),
                    };
                    if let Some(i) = i.filter(|&i| w.nodes[i].node.is_some()) {
                        let host = w.nodes[i].host;
                        let node = w.nodes[i].node.take().expect("live");
                        w.nodes[i].saved = Some(node.ledger().clone());
                        w.swarm.crash(host);
                        w.trace.line(
                            &serde_json::json!({"t": secs_f(now), "node": i, "event": "crash"}),
                        );
                        w.hash_step(now, host, 32, &[]);
                        if let Some(r) = restart {
                            restarts.push((now + Duration::from_micros((r * 1e6) as u64), i));
                        }
                    }
                }
                Tl::Partition(p) => {
                    let cut = ((w.nodes.len() as f64) * p).round() as usize;
                    for (k, n) in w.nodes.iter().enumerate() {
                        w.swarm.net.set_group(n.host, u32::from(k < cut));
                    }
                    w.trace.line(&serde_json::json!({"t": secs_f(now), "event": format!("partition {cut} nodes")}));
                    w.hash_step(now, HostId(0), 33, &[]);
                }
                Tl::Heal => {
                    for n in &w.nodes {
                        w.swarm.net.set_group(n.host, 0);
                    }
                    w.trace
                        .line(&serde_json::json!({"t": secs_f(now), "event": "heal"}));
                    w.hash_step(now, HostId(0), 34, &[]);
                }
                Tl::Loss(l) => {
                    let hosts: Vec<HostId> = w
                        .nodes
                        .iter()
                        .map(|n| n.host)
                        .chain(w.bootstrap.iter().copied())
                        .collect();
                    for h in hosts {
                        let mut spec = base_link;
                        spec.loss_ppm = (l * 1e6) as u32;
                        w.swarm.net.set_link(h, spec);
                    }
                    w.hash_step(now, HostId(0), 35, &[]);
                }
            }
            continue;
        }
        if now == next_sample {
            next_sample = now + Duration::from_millis(SAMPLE_MS);
            // Most nodes follow the decision the node before them follows: that one is
            // recorded already.
            let mut last: Option<(u64, [u8; 32])> = None;
            for i in w.live_mesh() {
                if let Some(c) = w.nodes[i].node.as_ref().and_then(Node::cluster) {
                    if last != Some((c.epoch, c.leader)) {
                        last = Some((c.epoch, c.leader));
                        w.leaders_by_epoch
                            .entry(c.epoch)
                            .or_default()
                            .insert(c.leader);
                    }
                }
            }
            // Convergence is looked at until both moments it reports are known (the end
            // looks again).
            let open = converged_at.is_none()
                || (last_fault.is_some_and(|f| now >= f) && reconverged.is_none());
            if open && w.converged() {
                if converged_at.is_none() {
                    converged_at = Some(now);
                    w.trace
                        .line(&serde_json::json!({"t": secs_f(now), "event": "converged"}));
                }
                if last_fault.is_some_and(|f| now >= f) && reconverged.is_none() {
                    reconverged = Some(now);
                    w.trace
                        .line(&serde_json::json!({"t": secs_f(now), "event": "reconverged"}));
                }
            }
        }
        if now >= end {
            break;
        }
    }
    let converged_at_end = w.converged();
    // Metrics.
    let live = w.live_mesh();
    let mut direct = 0;
    let mut relayed = 0;
    let mut bytes: Vec<u64> = Vec::new();
    let mut messages = 0;
    let mut message_bytes = 0;
    let mut by_kind = [0u64; 5];
    let mut count_by_kind = [0u64; 5];
    for &i in &live {
        let n = w.nodes[i].node.as_ref().expect("live");
        for k in n.paths().values() {
            match k {
                PathKind::Direct => direct += 1,
                PathKind::Relayed { .. } => relayed += 1,
            }
        }
        bytes.push(n.approx_bytes() as u64);
        messages += n.stats.messages_sent;
        message_bytes += n.stats.bytes_sent;
        for (a, b) in by_kind.iter_mut().zip(n.stats.bytes_by_kind) {
            *a += b;
        }
        for (a, b) in count_by_kind.iter_mut().zip(n.stats.messages_by_kind) {
            *a += b;
        }
    }
    let ns = &w.swarm.stats;
    let net = &w.swarm.net.stats;
    let metrics = Metrics {
        nodes: w.nodes.iter().filter(|n| !n.intruder).count(),
        intruders: w.nodes.iter().filter(|n| n.intruder).count(),
        bootstrap: w.bootstrap.len(),
        virtual_secs: file.duration as f64,
        converged_at_secs: converged_at.map(secs_f),
        reconverged_after_last_fault_secs: match (reconverged, last_fault) {
            (Some(r), Some(f)) => Some(secs_f(r) - secs_f(f)),
            _ => None,
        },
        converged_at_end,
        events: w.swarm.events_fired(),
        messages,
        message_bytes,
        messages_by_kind: count_by_kind,
        message_bytes_by_kind: by_kind,
        packets: net.sent,
        packets_dropped: net.dropped.iter().sum(),
        connections: ns.connections,
        relayed_connections: ns.relayed_connections,
        relayed_bytes: ns.relayed_bytes,
        reservations: ns.reservations,
        hole_punch_attempts: ns.hole_punch_attempts,
        hole_punch_successes: ns.hole_punch_successes,
        hole_punch_failures: ns.hole_punch_failures,
        direct_paths_at_end: direct / 2,
        relayed_paths_at_end: relayed / 2,
        cluster_inits: w.cluster_inits.len(),
        leader_epochs: w.max_epoch,
        signature_checks: w.crypto.checks,
        signature_memo_hits: w.crypto.hits,
        ledger_entries: live.first().map_or(0, |&i| {
            w.nodes[i].node.as_ref().expect("live").ledger().len()
        }),
        node_bytes_mean: if bytes.is_empty() {
            0
        } else {
            bytes.iter().sum::<u64>() / bytes.len() as u64
        },
        node_bytes_max: bytes.iter().copied().max().unwrap_or(0),
    };
    // Checks.
    let e = &file.expect;
    let mut checks = Vec::new();
    let mut check = |name: &str, pass: bool, detail: String| {
        checks.push(Check {
            name: name.into(),
            pass,
            detail,
        })
    };
    // Every run says whether it converged: without this, a mesh that never formed passed
    // whenever the file asked for nothing about convergence.
    check(
        if e.converges {
            "converged"
        } else {
            "never-converged"
        },
        converged_at.is_some() == e.converges,
        match metrics.converged_at_secs {
            Some(c) => format!("converged at {c:.2} s"),
            None => format!("never converged in {} s", file.duration),
        },
    );
    if let Some(by) = e.converged_by {
        check(
            "converged-by",
            converged_at.is_some_and(|c| secs_f(c) <= by),
            format!(
                "converged at {:?} s, expected by {by} s",
                metrics.converged_at_secs
            ),
        );
    }
    if let Some(within) = e.reconverged_within {
        check(
            "reconverged-within",
            metrics
                .reconverged_after_last_fault_secs
                .is_some_and(|r| r <= within),
            format!(
                "{:?} s after the last fault, expected within {within} s",
                metrics.reconverged_after_last_fault_secs
            ),
        );
    }
    if e.converged_at_end {
        let why = w.gaps(5);
        check(
            "converged-at-end",
            converged_at_end,
            if converged_at_end {
                "converged at the end".into()
            } else {
                format!("not converged at the end: {}", why.join("; "))
            },
        );
    }
    check(
        "cluster-inits",
        metrics.cluster_inits == e.cluster_inits,
        format!(
            "{} nodes ran cluster-init, expected {}",
            metrics.cluster_inits, e.cluster_inits
        ),
    );
    let split: Vec<u64> = w
        .leaders_by_epoch
        .iter()
        .filter(|(_, l)| l.len() > 1)
        .map(|(e, _)| *e)
        .collect();
    check(
        "one-leader-per-epoch",
        split.is_empty(),
        if split.is_empty() {
            format!("{} epochs, one leader each", w.leaders_by_epoch.len())
        } else {
            format!("epochs with two leaders (split brain): {split:?}")
        },
    );
    // Every live worker holds the join data, and it names a live master's address.
    let workers_without: Vec<usize> = live
        .iter()
        .copied()
        .filter(|&i| {
            let n = w.nodes[i].node.as_ref().expect("live");
            matches!(n.role(), Some((Role::Worker, _))) && n.join_data().is_none()
        })
        .collect();
    check(
        "workers-have-join-data",
        workers_without.is_empty(),
        format!("workers without join data: {workers_without:?}"),
    );
    // Nobody without the token got in, and they learned nothing.
    let intruder_keys: BTreeSet<[u8; 32]> = w
        .nodes
        .iter()
        .filter(|n| n.intruder)
        .map(|n| n.key.verifying_key().to_bytes())
        .collect();
    let leaked_in = live.iter().any(|&i| {
        w.nodes[i]
            .node
            .as_ref()
            .expect("live")
            .members()
            .keys()
            .any(|k| intruder_keys.contains(k))
    });
    let leaked_out = w
        .nodes
        .iter()
        .filter(|n| n.intruder)
        .filter_map(|n| n.node.as_ref())
        .any(|n| n.members().keys().any(|k| !intruder_keys.contains(k)));
    check(
        "token-gate",
        !leaked_in && !leaked_out,
        format!("intruders in the mesh ledger: {leaked_in}; mesh members in an intruder's ledger: {leaked_out}"),
    );
    if e.min_relayed_paths > 0 {
        check(
            "relayed-paths",
            metrics.relayed_paths_at_end >= e.min_relayed_paths,
            format!(
                "{} relayed paths at the end, expected at least {}",
                metrics.relayed_paths_at_end, e.min_relayed_paths
            ),
        );
    }
    if e.min_direct_paths > 0 {
        check(
            "direct-paths",
            metrics.direct_paths_at_end >= e.min_direct_paths,
            format!(
                "{} direct paths at the end, expected at least {}",
                metrics.direct_paths_at_end, e.min_direct_paths
            ),
        );
    }
    if e.min_hole_punches_ok > 0 {
        check(
            "hole-punches-ok",
            metrics.hole_punch_successes >= e.min_hole_punches_ok,
            format!(
                "{} hole punches succeeded, expected at least {}",
                metrics.hole_punch_successes, e.min_hole_punches_ok
            ),
        );
    }
    if e.min_hole_punches_failed > 0 {
        check(
            "hole-punches-failed",
            metrics.hole_punch_failures >= e.min_hole_punches_failed,
            format!(
                "{} hole punches failed, expected at least {}",
                metrics.hole_punch_failures, e.min_hole_punches_failed
            ),
        );
    }
    if e.new_leader {
        check(
            "new-leader",
            metrics.leader_epochs >= 2,
            format!("highest epoch {}", metrics.leader_epochs),
        );
    }
    let trace_hash = hex::encode(w.hasher.clone().finalize());
    w.trace.line(&serde_json::json!({"trace_hash": trace_hash}));
    Ok(Outcome {
        scenario: file.name.clone(),
        seed,
        metrics,
        checks,
        trace_hash,
    })
}

/// The human summary; ends with the `trace_hash=` line scripts look for.
pub fn summary(o: &Outcome) -> String {
    let m = &o.metrics;
    let opt = |v: Option<f64>| v.map_or("never".to_string(), |s| format!("{s:.2} s"));
    let mut s = format!(
        "scenario {} seed {}: {}\n\
         nodes {} (+{} without the token, {} bootstrap), {} virtual s\n\
         converged at {}; after the last fault {}; at the end: {}\n\
         events {}, packets {} ({} dropped), messages {} ({} bytes)\n\
         by kind: {}\n\
         connections {}, relayed {} ({} bytes), reservations {}\n\
         hole punches {} attempted, {} ok, {} failed\n\
         paths at the end: {} direct, {} relayed\n\
         cluster-init {}, highest epoch {}, ledger entries {}\n\
         signatures checked {}, memo hits {}; node state ~{} bytes mean, {} max\n",
        o.scenario,
        o.seed,
        if o.passed() { "PASS" } else { "FAIL" },
        m.nodes,
        m.intruders,
        m.bootstrap,
        m.virtual_secs,
        opt(m.converged_at_secs),
        opt(m.reconverged_after_last_fault_secs),
        m.converged_at_end,
        m.events,
        m.packets,
        m.packets_dropped,
        m.messages,
        m.message_bytes,
        ["hello", "head", "versions", "entries", "lease"]
            .iter()
            .enumerate()
            .map(|(i, k)| format!(
                "{k} {} ({} bytes)",
                m.messages_by_kind[i], m.message_bytes_by_kind[i]
            ))
            .collect::<Vec<_>>()
            .join(", "),
        m.connections,
        m.relayed_connections,
        m.relayed_bytes,
        m.reservations,
        m.hole_punch_attempts,
        m.hole_punch_successes,
        m.hole_punch_failures,
        m.direct_paths_at_end,
        m.relayed_paths_at_end,
        m.cluster_inits,
        m.leader_epochs,
        m.ledger_entries,
        m.signature_checks,
        m.signature_memo_hits,
        m.node_bytes_mean,
        m.node_bytes_max,
    );
    for c in &o.checks {
        s.push_str(&format!(
            "  {} {}: {}\n",
            if c.pass { "ok  " } else { "FAIL" },
            c.name,
            c.detail
        ));
    }
    s.push_str(&format!("trace_hash={}\n", o.trace_hash));
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    const LAN: &str = "name = 'lan'\nduration = 60\nminimum_nodes = 3\nha_masters = 0\n\
                       [[group]]\ncount = 3\nplacement = 'lan'\n";

    fn parse(text: &str) -> SimFile {
        SimFile::parse(text).unwrap_or_else(|e| panic!("{:#}", anyhow::Error::from(e)))
    }

    /// Issue 19: without `[expect]` the table's derived `Default` applied (cluster_inits 0),
    /// not the fields' defaults (1), so a healthy cluster failed "expected 0".
    #[test]
    fn r19_a_healthy_cluster_without_expect_fails() {
        let bare = parse(LAN);
        let empty = parse(&format!("{LAN}[expect]\n"));
        assert_eq!(format!("{:?}", bare.expect), format!("{:?}", empty.expect));
        assert_eq!(bare.expect.cluster_inits, 1);
        let o = run(&bare, 1, &mut NoTrace).unwrap();
        assert!(o.passed(), "{}", summary(&o));
    }

    /// Issue 19: a mesh that never converged passed, "converged at never", when the file
    /// asked nothing of convergence. It fails now unless the file says it expects that.
    #[test]
    fn r19_a_mesh_that_never_converges_passes() {
        // Five votes needed, three nodes: no election, no convergence.
        let never = LAN.replace("minimum_nodes = 3", "minimum_nodes = 5");
        let o = run(&parse(&never), 1, &mut NoTrace).unwrap();
        assert!(!o.passed(), "{}", summary(&o));
        let failed: Vec<&str> = o
            .checks
            .iter()
            .filter(|c| !c.pass)
            .map(|c| c.name.as_str())
            .collect();
        assert!(failed.contains(&"converged"), "{}", summary(&o));
        let expected = parse(&format!(
            "{never}[expect]\nconverges = false\ncluster_inits = 0\n"
        ));
        let o = run(&expected, 1, &mut NoTrace).unwrap();
        assert!(o.passed(), "{}", summary(&o));
        // A mesh that does converge fails `converges = false`.
        let o = run(
            &parse(&format!("{LAN}[expect]\nconverges = false\n")),
            1,
            &mut NoTrace,
        )
        .unwrap();
        assert!(!o.passed(), "{}", summary(&o));
        // And the file cannot expect both.
        let err = SimFile::parse(&format!(
            "{LAN}[expect]\nconverges = false\nconverged_by = 10\n"
        ))
        .unwrap_err();
        assert!(matches!(
            err,
            FileError::ConvergesContradiction {
                field: "converged_by"
            }
        ));
    }

    /// Issue 19: values the simulator cannot carry (non-finite, negative, zero, absurd)
    /// reached it: loss 5.0 dropped everything, NaN became 0, `jitter_ms = u64::MAX`
    /// panicked, `bandwidth_mbps` 0 and `u64::MAX` meant the same, a churn every
    /// nanosecond or until infinity and 10^8 bootstrap nodes exhausted memory. Each is
    /// refused when parsed, naming the field and the bound.
    #[test]
    fn r19_unbounded_values_reach_the_simulator() {
        let group = "[[group]]\ncount = 3\nplacement = 'public'\n";
        let head = "name = 'x'\nduration = 60\n";
        let cases: &[(&str, &str, &str)] = &[
            ("bootstrap = 100000000", "bootstrap", "BOOTSTRAP_MAX"),
            ("minimum_nodes = 0", "minimum_nodes", "MINIMUM_NODES_MAX"),
            (
                "minimum_nodes = 18446744073709551615",
                "minimum_nodes",
                "MINIMUM_NODES_MAX",
            ),
            (
                "ha_masters = 18446744073709551615",
                "ha_masters",
                "HA_MASTERS_MAX",
            ),
            ("target_peers = 0", "target_peers", "TARGET_PEERS_MAX"),
            (
                "[link]\nlatency_ms = 18446744073709551615",
                "link.latency_ms",
                "LATENCY_MS_MAX",
            ),
            (
                "[link]\njitter_ms = 18446744073709551615",
                "link.jitter_ms",
                "JITTER_MS_MAX",
            ),
            ("[link]\nloss = nan", "link.loss", "LOSS_MAX"),
            (
                "[link]\nbandwidth_mbps = 0",
                "link.bandwidth_mbps",
                "BANDWIDTH_MBPS_MAX",
            ),
            (
                "[link]\nbandwidth_mbps = 18446744073709551615",
                "link.bandwidth_mbps",
                "BANDWIDTH_MBPS_MAX",
            ),
            (
                "[relay]\nmax_circuits = 18446744073709551615",
                "relay.max_circuits",
                "RELAY_SLOTS_MAX",
            ),
            (
                "[relay]\nmax_circuit_duration = 0",
                "relay.max_circuit_duration",
                "RELAY_CIRCUIT_S_MAX",
            ),
            (
                "[relay]\nmax_circuit_bytes = 0",
                "relay.max_circuit_bytes",
                "RELAY_CIRCUIT_BYTES_MAX",
            ),
            ("[[fault]]\nat = 5\nloss = 5.0", "fault[0].loss", "LOSS_MAX"),
            (
                "[[fault]]\nat = 5\nloss = -2.0",
                "fault[0].loss",
                "LOSS_MAX",
            ),
            ("[[fault]]\nat = 5\nloss = nan", "fault[0].loss", "LOSS_MAX"),
            (
                "[[fault]]\nat = nan\nheal = true",
                "fault[0].at",
                "duration",
            ),
            (
                "[[fault]]\nat = 5\ncrash = 'leader'\nrestart_after = -5",
                "fault[0].restart_after",
                "DURATION_S_MAX",
            ),
            (
                "[[fault]]\nat = 5\ncrash = 'leader'\nrestart_after = nan",
                "fault[0].restart_after",
                "DURATION_S_MAX",
            ),
            (
                "[[fault]]\nat = 5\npartition = 0.0",
                "fault[0].partition",
                "PARTITION_MAX",
            ),
            (
                "[[fault]]\nat = 5\nchurn = { every = nan, down = 5, until = 50 }",
                "fault[0].churn.every",
                "duration",
            ),
            (
                "[[fault]]\nat = 5\nchurn = { every = 1, down = inf, until = inf }",
                "fault[0].churn.down",
                "DURATION_S_MAX",
            ),
            (
                "[[fault]]\nat = 5\nchurn = { every = 1, down = 5, until = inf }",
                "fault[0].churn.until",
                "duration",
            ),
            (
                "[expect]\nconverged_by = nan",
                "expect.converged_by",
                "duration",
            ),
            (
                "[expect]\nmin_hole_punches_ok = 18446744073709551615",
                "expect.min_hole_punches_ok",
                "EXPECT_COUNT_MAX",
            ),
        ];
        for (snippet, field, bound) in cases {
            let text = format!("{head}{snippet}\n{group}");
            // TOML tables take the keys after them: put the snippet's table last.
            let text = if snippet.starts_with('[') {
                format!("{head}{group}{snippet}\n")
            } else {
                text
            };
            match SimFile::parse(&text) {
                Err(FileError::OutOfRange {
                    field: f, bound: b, ..
                }) => assert_eq!((f.as_str(), b), (*field, *bound), "{snippet}"),
                other => panic!("{snippet}: {other:?}"),
            }
        }
        let grouped: &[(&str, &str, &str)] = &[
            (
                "count = 18446744073709551615\nplacement = 'public'",
                "group[0].count",
                "NODES_MAX",
            ),
            (
                "count = 0\nplacement = 'public'",
                "group[0].count",
                "NODES_MAX",
            ),
            (
                "count = 3\nplacement = 'public'\nclock_skew_ms = 18446744073709551615",
                "group[0].clock_skew_ms",
                "CLOCK_SKEW_MS_MAX",
            ),
            (
                "count = 3\nplacement = 'nat'\nnat_timeout = 0",
                "group[0].nat_timeout",
                "NAT_TIMEOUT_S_MAX",
            ),
            (
                "count = 3\nplacement = 'public'\n[group.link]\njitter_ms = 18446744073709551615",
                "group[0].link.jitter_ms",
                "JITTER_MS_MAX",
            ),
        ];
        for (snippet, field, bound) in grouped {
            let text = format!("{head}[[group]]\n{snippet}\n");
            match SimFile::parse(&text) {
                Err(FileError::OutOfRange {
                    field: f, bound: b, ..
                }) => assert_eq!((f.as_str(), b), (*field, *bound), "{snippet}"),
                other => panic!("{snippet}: {other:?}"),
            }
        }
        let zero = format!("name = 'x'\nduration = 0\n{group}");
        assert!(matches!(
            SimFile::parse(&zero),
            Err(FileError::OutOfRange {
                bound: "DURATION_S_MAX",
                ..
            })
        ));
        // Memory that only grows too large together: every node keeps every member in
        // Kairos mode, a few times the electorate in quorum mode.
        let kairos =
            format!("{head}mode = 'kairos'\n[[group]]\ncount = 5000\nplacement = 'public'\n");
        assert!(matches!(
            SimFile::parse(&kairos),
            Err(FileError::LedgerTooLarge { .. })
        ));
        parse(&kairos.replace("5000", "3000"));
        let electorate =
            format!("{head}minimum_nodes = 1000\n[[group]]\ncount = 5000\nplacement = 'public'\n");
        assert!(matches!(
            SimFile::parse(&electorate),
            Err(FileError::LedgerTooLarge { .. })
        ));
        parse(&format!(
            "{head}[[group]]\ncount = 99000\nplacement = 'public'\n"
        ));
        // Counts that only overflow together.
        let many =
            format!("{head}bootstrap = 1000\n[[group]]\ncount = 99999\nplacement = 'public'\n");
        assert!(matches!(
            SimFile::parse(&many),
            Err(FileError::TooManyNodes { .. })
        ));
        let churn = format!(
            "{head}{group}[[fault]]\nat = 5\nchurn = {{ every = 1e-6, down = 5, until = 50 }}\n"
        );
        assert!(matches!(
            SimFile::parse(&churn),
            Err(FileError::TooManyCrashes { .. })
        ));
        let nine = format!(
            "{head}{group}[[fault]]\nat = 5\nchurn = {{ every = 1e-9, down = 5, until = 50 }}\n"
        );
        assert!(matches!(
            SimFile::parse(&nine),
            Err(FileError::OutOfRange { .. })
        ));
        // The message names the field, the range and the bound.
        let err = SimFile::parse(&format!(
            "{head}{group}[link]\njitter_ms = 18446744073709551615\n"
        ))
        .unwrap_err()
        .to_string();
        assert_eq!(
            err,
            "link.jitter_ms = 18446744073709551615: must be in 0..=60000 (JITTER_MS_MAX)"
        );
    }

    /// Issue 19: `sim run /dev/zero` read until memory ran out.
    #[test]
    fn r19_a_scenario_file_without_end_exhausts_memory() {
        match SimFile::load(Path::new("/dev/zero")) {
            Err(LoadError::Invalid { source, .. })
                if matches!(*source, FileError::TooLarge { .. }) => {}
            other => panic!("{other:?}"),
        }
    }

    /// Issue 19: nothing bounded the events a run fires, so a runaway one ran until memory
    /// or patience ran out. Past its budget a run stops with an error.
    #[test]
    fn r19_a_run_past_its_event_budget_is_an_error_not_an_abort() {
        let f = parse(LAN);
        match run_within(&f, 1, &mut NoTrace, 100) {
            Err(RunError::Kernel(KernelError::BudgetSpent { max: 100, .. })) => {}
            other => panic!("{other:?}"),
        }
        assert!(event_budget(&f) > 100);
    }
}
