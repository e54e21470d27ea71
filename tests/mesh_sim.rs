//! The mesh simulator end to end: shipped scenarios pass, runs replay bit for bit from their
//! seed (also across processes, through the CLI), random topologies and fault schedules stay
//! safe and converge once the faults are over, and the summary format is pinned.

use std::path::{Path, PathBuf};
use std::process::Command;

use bootyard::meshsim::{run, summary, NoTrace, SimFile};
use proptest::prelude::*;

fn scenario(name: &str) -> SimFile {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("scenarios/sim")
        .join(format!("{name}.toml"));
    SimFile::load(&path).unwrap().0
}

fn assert_passes(name: &str, seed: u64) {
    let o = run(&scenario(name), seed, &mut NoTrace).unwrap();
    assert!(o.passed(), "{}", summary(&o));
}

#[test]
fn small_shipped_scenarios_pass_for_several_seeds() {
    for seed in 1..=3 {
        for name in ["lan-3", "nat-relay-hops", "partition-heal", "leader-loss"] {
            assert_passes(name, seed);
        }
    }
}

/// Every shipped file keeps within the bounds a scenario is checked against, scale-10k
/// (too slow to run here) included.
#[test]
fn every_shipped_scenario_is_within_the_bounds() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios/sim");
    let mut n = 0;
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "toml") {
            SimFile::load(&p).unwrap_or_else(|e| panic!("{:#}", anyhow::Error::from(e)));
            n += 1;
        }
    }
    assert!(n >= 7, "{n} scenario files");
}

#[test]
fn the_probelab_mix_with_intruders_passes() {
    assert_passes("symmetric-nat-mix", 2);
}

/// 150 nodes: more owners than the ledger keeps (32 by default), so ledgers hold the
/// best-ranked members only; the leader dies and the electorate (drawn from those) elects
/// another. What each node replicates stays bounded by the cap, not by the mesh.
#[test]
fn a_mesh_larger_than_the_ledger_cap_keeps_a_bounded_ledger_heals_and_keeps_leases_in_the_council()
{
    let f = SimFile::parse(
        "name = 'capped-150'\nduration = 150\nminimum_nodes = 5\nha_masters = 2\nbootstrap = 3\n\
         [[group]]\ncount = 50\nplacement = 'public'\n\
         [[group]]\ncount = 100\nplacement = 'nat'\nnat = 'probelab'\n\
         [relay]\nmax_circuits = 1024\nmax_circuits_per_peer = 16\nmax_circuit_duration = 3600\nmax_circuit_bytes = 67108864\n\
         [[fault]]\nat = 45\ncrash = 'leader'\n\
         [expect]\nconverged_by = 40\nreconverged_within = 90\nconverged_at_end = true\ncluster_inits = 1\nnew_leader = true\n",
    )
    .unwrap();
    let o = run(&f, 3, &mut NoTrace).unwrap();
    assert!(o.passed(), "{}", summary(&o));
    // 32 owners: a member entry each, votes of the electorate, cluster records.
    assert!(
        o.metrics.ledger_entries <= 32 + 3 * 5 + 4,
        "{} entries: the cap did not hold",
        o.metrics.ledger_entries
    );
    // Leases stay within the council (electorate, masters, leader): each renewal of the 3
    // holders (every 10 s) reaches each member at most once from each other member. A flood
    // through all 150 nodes would be ten times this.
    let council = 5 + 3 + 1;
    let bound = 3 * council * (council - 1) * (150 / 10 + 2);
    assert!(
        o.metrics.messages_by_kind[4] <= bound as u64,
        "{} lease messages, more than the council's {bound}",
        o.metrics.messages_by_kind[4]
    );
}

#[test]
fn the_same_seed_replays_bit_for_bit_and_another_seed_differs() {
    let f = scenario("nat-relay-hops");
    let a = run(&f, 7, &mut NoTrace).unwrap();
    let b = run(&f, 7, &mut NoTrace).unwrap();
    let c = run(&f, 8, &mut NoTrace).unwrap();
    assert_eq!(a, b);
    assert_ne!(a.trace_hash, c.trace_hash);
}

#[test]
fn the_summary_format_is_pinned() {
    let o = run(&scenario("lan-3"), 1, &mut NoTrace).unwrap();
    insta::assert_snapshot!(summary(&o));
}

#[test]
fn malformed_scenarios_are_refused_with_the_reason() {
    let bad = [
        ("name = 'x'\nduration = 10\n", "no nodes"),
        ("name = 'x'\nduration = 10\n[[group]]\ncount = 2\nplacement = 'moon'\n", "placement \"moon\""),
        ("name = 'x'\nduration = 10\n[[group]]\ncount = 2\nplacement = 'nat'\nnat = 'eim/xyz'\n", "nat filtering \"xyz\""),
        ("name = 'x'\nduration = 10\nbogus = 1\n[[group]]\ncount = 2\nplacement = 'public'\n", "unknown field"),
        ("name = 'x'\nduration = 10\n[[group]]\ncount = 2\nplacement = 'public'\n[[fault]]\nat = 5\nheal = true\npartition = 0.5\n", "exactly one of"),
        ("name = 'x'\nduration = 10\n[[group]]\ncount = 2\nplacement = 'public'\n[[fault]]\nat = 5\ncrash = 'node-9'\n", "node-N below 2"),
    ];
    for (text, want) in bad {
        let err = format!(
            "{:#}",
            anyhow::Error::from(SimFile::parse(text).unwrap_err())
        );
        assert!(err.contains(want), "{err:?} should mention {want:?}");
    }
}

fn bootyard() -> Command {
    Command::new(env!("CARGO_BIN_EXE_bootyard"))
}

fn lan3() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios/sim/lan-3.toml")
}

#[test]
fn the_cli_checks_determinism_across_processes_and_replays_a_trace() {
    let dir = tempfile::tempdir().unwrap();
    let trace = dir.path().join("trace.jsonl");
    let out = bootyard()
        .args(["sim", "run"])
        .arg(lan3())
        .args(["--seed", "5", "--check-determinism", "--trace"])
        .arg(&trace)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let hash = stdout.lines().last().unwrap();
    assert!(
        hash.starts_with("trace_hash=") && hash.len() == "trace_hash=".len() + 64,
        "{hash}"
    );
    let out = bootyard()
        .args(["sim", "replay"])
        .arg(&trace)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains(hash));
    // A trace whose hash was tampered with does not replay.
    let text = std::fs::read_to_string(&trace).unwrap();
    let forged = text.replace(&hash["trace_hash=".len()..], &"0".repeat(64));
    std::fs::write(&trace, forged).unwrap();
    let out = bootyard()
        .args(["sim", "replay"])
        .arg(&trace)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("replay diverged"));
}

#[test]
fn a_sweep_shard_runs_its_seeds_and_failures_name_the_replay_command() {
    let out = bootyard()
        .args(["sim", "sweep"])
        .arg(lan3())
        .args(["--seeds", "10..16", "--shard", "1/3"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    let seeds: Vec<&str> = stdout
        .lines()
        .filter_map(|l| l.strip_prefix("seed "))
        .map(|l| l.split(' ').next().unwrap())
        .collect();
    assert_eq!(seeds, ["11", "14"]);
    // A scenario whose expectation cannot hold fails, with the seed and the replay command.
    let dir = tempfile::tempdir().unwrap();
    let strict = dir.path().join("strict.toml");
    let text = std::fs::read_to_string(lan3())
        .unwrap()
        .replace("converged_by = 15", "converged_by = 0.1");
    std::fs::write(&strict, text).unwrap();
    let out = bootyard()
        .args(["sim", "sweep"])
        .arg(&strict)
        .args(["--seeds", "1..3"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success());
    assert!(
        stdout.contains("seed 1 FAIL (converged-by); replay: bootyard sim run"),
        "{stdout}"
    );
}

/// Random small meshes: placements, NAT behaviours, loss, and a fault schedule (a partition
/// that heals, a crash that comes back). Safety holds throughout (at most one cluster-init,
/// one leader per epoch, the token gate); once the faults are over the mesh converges.
fn random_scenario(
    nodes: Vec<(u8, u8, u8)>,
    loss: u8,
    partition: Option<(u8, u8)>,
    crash: Option<(u8, u8)>,
) -> String {
    let nats = ["eim/eif", "eim/adf", "eim/apdf", "apdm/apdf", "adm/adf"];
    let placements = ["public", "nat", "lan", "cgnat"];
    let total: usize = nodes.iter().map(|(_, _, c)| (*c % 3 + 1) as usize).sum();
    let mut t = format!(
        "name = 'random'\nduration = 400\nminimum_nodes = {}\nha_masters = 1\nbootstrap = 2\n\
         [link]\nloss = {}\n\
         [relay]\nmax_circuits = 256\nmax_circuits_per_peer = 16\nmax_circuit_duration = 3600\nmax_circuit_bytes = 67108864\n",
        total.min(3),
        f64::from(loss) / 100.0
    );
    for (p, n, c) in &nodes {
        t.push_str(&format!(
            "[[group]]\ncount = {}\nplacement = '{}'\nnat = '{}'\n",
            c % 3 + 1,
            placements[*p as usize % placements.len()],
            nats[*n as usize % nats.len()]
        ));
    }
    if let Some((at, frac)) = partition {
        t.push_str(&format!(
            "[[fault]]\nat = {}\npartition = {}\n[[fault]]\nat = {}\nheal = true\n",
            30 + u32::from(at),
            f64::from(frac % 9 + 1) / 10.0,
            150 + u32::from(at)
        ));
    }
    if let Some((at, who)) = crash {
        t.push_str(&format!(
            "[[fault]]\nat = {}\ncrash = 'node-{}'\nrestart_after = 40\n",
            40 + u32::from(at),
            who as usize % total
        ));
    }
    t.push_str("[expect]\nconverged_at_end = true\ncluster_inits = 1\n");
    t
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 12, ..ProptestConfig::default() })]
    #[test]
    fn random_meshes_stay_safe_and_converge_after_faults(
        nodes in proptest::collection::vec((0u8..4, 0u8..5, 0u8..3), 1..4),
        loss in 0u8..4,
        partition in proptest::option::of((0u8..60, 0u8..9)),
        crash in proptest::option::of((0u8..60, 0u8..20)),
        seed in 0u64..1000,
    ) {
        let text = random_scenario(nodes, loss, partition, crash);
        let f = SimFile::parse(&text).unwrap();
        let o = run(&f, seed, &mut NoTrace).unwrap();
        prop_assert!(o.passed(), "{}\n{}", text, summary(&o));
    }
}

/// Runs `bootyard` with `args`: exit status, stdout, stderr.
fn sim(args: &[&std::ffi::OsStr]) -> (i32, String, String) {
    let out = bootyard().arg("sim").args(args).output().unwrap();
    (
        out.status.code().expect("exited, not killed by a signal"),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

macro_rules! args {
    ($($a:expr),* $(,)?) => { &[$(std::ffi::OsStr::new(&$a)),*] };
}

fn write_scenario(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

const LAN3_TEXT: &str = include_str!("../scenarios/sim/lan-3.toml");

/// Issue 19: the exit status of every `sim` command says which of four things happened:
/// 0 passed, 1 failed (a failing scenario, a replay that diverges), 2 usage (a bad
/// argument), 3 the input is invalid (a scenario file or a trace).
#[test]
fn r19_sim_exit_statuses_are_0_1_2_3() {
    let dir = tempfile::tempdir().unwrap();
    let lan3 = lan3();
    // 0
    let (code, stdout, stderr) = sim(args!["run", lan3]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    // 1: a scenario whose expectation cannot hold.
    let strict = write_scenario(
        dir.path(),
        "strict.toml",
        &LAN3_TEXT.replace("converged_by = 15", "converged_by = 0.1"),
    );
    let (code, _, stderr) = sim(args!["run", strict]);
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("failed with seed 1; replay:"), "{stderr}");
    let (code, _, stderr) = sim(args!["sweep", strict, "--seeds", "1..3"]);
    assert_eq!(code, 1, "{stderr}");
    // 2: bad arguments, which today exited 1.
    for bad in [
        ["--seeds", "5..1", "--shard", "0/1"],
        ["--seeds", "1..5", "--shard", "3/2"],
        ["--seeds", "1..2", "--shard", "1/2"],
        ["--seeds", "x..2", "--shard", "0/1"],
    ] {
        let (code, stdout, stderr) = sim(args!["sweep", lan3, bad[0], bad[1], bad[2], bad[3]]);
        assert_eq!(code, 2, "{bad:?}: {stdout}{stderr}");
        assert!(!stdout.contains("0 seeds"), "{bad:?}: {stdout}");
    }
    // 3: invalid scenario files: a TOML error, a value out of bounds, no end at all.
    let broken = write_scenario(dir.path(), "broken.toml", "name = \n");
    let jitter = write_scenario(
        dir.path(),
        "jitter.toml",
        &format!("{LAN3_TEXT}\n[link]\njitter_ms = 18446744073709551615\n"),
    );
    for f in [broken.as_os_str(), jitter.as_os_str(), "/dev/zero".as_ref()] {
        for cmd in [
            &args!["run", f][..],
            &args!["sweep", f, "--seeds", "1..2"][..],
        ] {
            let (code, _, stderr) = sim(cmd);
            assert_eq!(code, 3, "{cmd:?}: {stderr}");
            assert!(stderr.contains("invalid scenario file"), "{stderr}");
            assert!(!stderr.contains("panicked"), "{stderr}");
        }
    }
    // 3: a corrupt trace; 1: a well-formed trace another run recorded.
    let trace = dir.path().join("t.jsonl");
    let (code, _, stderr) = sim(args!["run", lan3, "--trace", trace]);
    assert_eq!(code, 0, "{stderr}");
    let text = std::fs::read_to_string(&trace).unwrap();
    let corrupt = write_scenario(
        dir.path(),
        "corrupt.jsonl",
        &text.replacen("\n", "\ngarbage\n", 1),
    );
    let (code, _, stderr) = sim(args!["replay", corrupt]);
    assert_eq!(code, 3, "{stderr}");
    assert!(
        stderr.contains("invalid trace") && stderr.contains("line 2"),
        "{stderr}"
    );
    let (code, _, stderr) = sim(args!["replay", "/dev/zero"]);
    assert_eq!(code, 3, "{stderr}");
    let other = write_scenario(
        dir.path(),
        "other.jsonl",
        &text.replacen(r#""seed":1}"#, r#""seed":2}"#, 1),
    );
    let (code, _, stderr) = sim(args!["replay", other]);
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains("replay diverged") && stderr.contains("line 2:"),
        "{stderr}"
    );
}

/// Issue 19: `sim run mine.toml --trace mine.toml` replaced the scenario with the trace
/// (also through a symlink, a hardlink or `dir/../`).
#[test]
fn r19_trace_onto_the_scenario_overwrites_it_through_the_cli() {
    let dir = tempfile::tempdir().unwrap();
    let mine = write_scenario(dir.path(), "mine.toml", LAN3_TEXT);
    let link = dir.path().join("link.toml");
    std::os::unix::fs::symlink(&mine, &link).unwrap();
    let hard = dir.path().join("hard.toml");
    std::fs::hard_link(&mine, &hard).unwrap();
    std::fs::create_dir(dir.path().join("d")).unwrap();
    let dotted = dir.path().join("d/../mine.toml");
    for out in [&mine, &link, &hard, &dotted] {
        let (code, _, stderr) = sim(args!["run", mine, "--trace", out]);
        assert_eq!(code, 2, "{}: {stderr}", out.display());
        assert!(stderr.contains("refusing to overwrite"), "{stderr}");
        assert_eq!(std::fs::read_to_string(&mine).unwrap(), LAN3_TEXT);
    }
}

/// Issue 19: replay read only the trace's first line and its `trace_hash` line, so a
/// trace edited in the middle still "matched". Every line is proven now, with the number
/// of the first that differs.
#[test]
fn r19_replay_proves_only_the_first_line_and_the_hash() {
    let dir = tempfile::tempdir().unwrap();
    let trace = dir.path().join("t.jsonl");
    let (code, _, stderr) = sim(args!["run", lan3(), "--seed", "5", "--trace", trace]);
    assert_eq!(code, 0, "{stderr}");
    let text = std::fs::read_to_string(&trace).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines.len() > 10, "{text}");
    let join = |l: &[&str]| l.iter().map(|l| format!("{l}\n")).collect::<String>();
    // sed '4s/"t":…/"t":99.0/': a time edited in the fourth line.
    let t = lines[3].split(r#""t":"#).nth(1).unwrap();
    let t = &t[..t.find([',', '}']).unwrap()];
    let mut edited: Vec<String> = lines.iter().map(|l| l.to_string()).collect();
    edited[3] = lines[3].replacen(&format!(r#""t":{t}"#), r#""t":99.0"#, 1);
    assert_ne!(edited[3], lines[3]);
    let edited = edited.iter().map(|l| format!("{l}\n")).collect::<String>();
    // sed '3,9d', the last event line dropped, one repeated at the end.
    let cut = join(&[&lines[..2], &lines[9..]].concat());
    let n = lines.len();
    let dropped = join(&[&lines[..n - 2], &lines[n - 1..]].concat());
    let longer = format!("{text}{}\n", lines[4]);
    for (name, forged, line) in [
        ("edited", edited, 4),
        ("cut", cut, 3),
        ("dropped", dropped, n - 1),
        ("longer", longer, n + 1),
    ] {
        let p = write_scenario(dir.path(), name, &forged);
        let (code, stdout, stderr) = sim(args!["replay", p]);
        assert_eq!(code, 1, "{name}: {stderr}");
        assert!(
            stderr.contains("replay diverged") && stderr.contains(&format!("line {line}")),
            "{name}: {stderr}"
        );
        assert!(!stderr.contains("matches"), "{name}: {stdout}{stderr}");
        assert!(!stdout.contains("PASS"), "{name}: {stdout}");
    }
    let (code, _, stderr) = sim(args!["replay", trace]);
    assert_eq!(code, 0, "{stderr}");
}

/// Issue 19: a shard far into `0..u64::MAX` walked every seed before its first (it never
/// finished); its one seed runs at once.
#[test]
fn r19_a_far_shard_of_the_u64_range_hangs() {
    let (code, stdout, stderr) = sim(args![
        "sweep",
        lan3(),
        "--seeds",
        "0..18446744073709551615",
        "--shard",
        "18446744073709551614/18446744073709551615"
    ]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(
        stdout.starts_with("seed 18446744073709551614 pass"),
        "{stdout}"
    );
    assert!(stdout.ends_with("1 seeds, 0 failed\n"), "{stdout}");
}

/// Issue 19: values out of any sensible range ran: loss 5.0 or NaN, a negative or NaN
/// restart, a NaN churn, bandwidth 0 and u64::MAX (the same trace hash), a jitter of
/// u64::MAX (a panic), and churns and bootstrap counts that aborted on memory. Each is an
/// invalid scenario file now (exit 3), refused before the run, naming field and bound.
#[test]
fn r19_out_of_range_scenario_values_run_panic_or_abort() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        ("[[fault]]\nat = 5\nloss = 5.0", "fault[0].loss"),
        ("[[fault]]\nat = 5\nloss = -2.0", "fault[0].loss"),
        ("[[fault]]\nat = 5\nloss = nan", "fault[0].loss"),
        (
            "[[fault]]\nat = 5\ncrash = 'leader'\nrestart_after = -5",
            "fault[0].restart_after",
        ),
        (
            "[[fault]]\nat = 5\ncrash = 'leader'\nrestart_after = nan",
            "fault[0].restart_after",
        ),
        (
            "[[fault]]\nat = 5\nchurn = { every = nan, down = 5, until = 50 }",
            "fault[0].churn.every",
        ),
        (
            "[[fault]]\nat = 5\nchurn = { every = 1e-9, down = 5, until = 50 }",
            "fault[0].churn.every",
        ),
        (
            "[[fault]]\nat = 5\nchurn = { every = 1, down = inf, until = inf }",
            "fault[0].churn.down",
        ),
        ("[link]\nbandwidth_mbps = 0", "link.bandwidth_mbps"),
        (
            "[link]\nbandwidth_mbps = 18446744073709551615",
            "link.bandwidth_mbps",
        ),
        ("[link]\njitter_ms = 18446744073709551615", "link.jitter_ms"),
        (
            "[link]\nlatency_ms = 18446744073709551615",
            "link.latency_ms",
        ),
    ];
    let run = |name: &str, text: &str| {
        let f = write_scenario(dir.path(), name, text);
        sim(args!["run", f])
    };
    for (i, (snippet, field)) in cases.iter().enumerate() {
        let (code, _, stderr) = run(&format!("{i}.toml"), &format!("{LAN3_TEXT}\n{snippet}\n"));
        assert_eq!(code, 3, "{snippet}: {stderr}");
        assert!(
            stderr.contains(&format!("{field} = ")),
            "{snippet}: {stderr}"
        );
        assert!(
            stderr.contains("_MAX)") || stderr.contains("(duration)"),
            "{stderr}"
        );
    }
    let (code, _, stderr) = run("boot.toml", &format!("bootstrap = 100000000\n{LAN3_TEXT}"));
    assert_eq!(code, 3, "{stderr}");
    assert!(stderr.contains("bootstrap = 100000000"), "{stderr}");
    // The mesh that never connected and still passed ("converged at never").
    let never = format!("target_peers = 0\n{LAN3_TEXT}");
    let (code, _, stderr) = run("never.toml", &never);
    assert_eq!(code, 3, "{stderr}");
}
