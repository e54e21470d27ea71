use std::io::{BufRead as _, BufWriter, Write as _};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _};
use clap::{Args, Subcommand};

use crate::meshsim::{run, summary, NoTrace, Outcome, SimFile, TraceSink};

/// Standard output went away (the reader of a pipe exited, as `| head` does): the command
/// stops, and `main` exits quietly as a tool ended by SIGPIPE would.
#[derive(Debug, thiserror::Error)]
#[error("standard output was closed")]
pub struct StdoutClosed;

/// Writes a report to standard output (and flushes it). A closed pipe is [`StdoutClosed`],
/// not a panic as `print!` would make it.
fn out(args: std::fmt::Arguments) -> anyhow::Result<()> {
    let mut o = std::io::stdout().lock();
    o.write_fmt(args).and_then(|()| o.flush()).map_err(|e| {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            anyhow::Error::new(StdoutClosed)
        } else {
            anyhow::Error::new(e).context("writing to standard output")
        }
    })
}

#[derive(Debug, Subcommand)]
pub enum SimCommand {
    /// Run a mesh scenario from one seed: summary, metrics, checks, and a trace_hash line
    Run(SimRunArgs),
    /// Re-run the scenario a trace was recorded from and prove the same trace hash
    Replay(SimReplayArgs),
    /// Run a range of seeds (or this shard of it); print failing seeds with their replay command
    Sweep(SimSweepArgs),
}

#[derive(Debug, Args)]
pub struct SimRunArgs {
    /// Mesh scenario file (scenarios/sim/*.toml)
    pub file: PathBuf,
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Write the JSON Lines trace here (it embeds the scenario, for `sim replay`)
    #[arg(long)]
    pub trace: Option<PathBuf>,
    /// Run again in a separate process and compare trace hashes
    #[arg(long)]
    pub check_determinism: bool,
    /// Print the outcome as JSON instead of the summary
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct SimReplayArgs {
    /// A trace written by `sim run --trace`
    pub trace: PathBuf,
}

#[derive(Debug, Args)]
pub struct SimSweepArgs {
    pub file: PathBuf,
    /// Seeds A..B (B excluded)
    #[arg(long)]
    pub seeds: String,
    /// Run only the seeds of shard i of n (0-based): for a Kubernetes Indexed Job or a CI matrix
    #[arg(long, default_value = "0/1")]
    pub shard: String,
    /// Run each seed a second time in a separate process and compare trace hashes
    #[arg(long)]
    pub check_determinism: bool,
}

struct FileTrace {
    out: BufWriter<std::fs::File>,
    error: Option<std::io::Error>,
}

impl TraceSink for FileTrace {
    fn line(&mut self, v: &serde_json::Value) {
        if self.error.is_none() {
            if let Err(e) = writeln!(self.out, "{v}") {
                self.error = Some(e);
            }
        }
    }
}

fn replay_cmd(file: &Path, seed: u64) -> String {
    format!("bootyard sim run {} --seed {seed}", file.display())
}

/// Runs `seed` again in a child process and returns the trace hash it printed.
fn hash_in_child(file: &Path, seed: u64) -> anyhow::Result<String> {
    let exe = std::env::current_exe().context("finding this executable")?;
    let out = std::process::Command::new(exe)
        .args(["sim", "run"])
        .arg(file)
        .args(["--seed", &seed.to_string()])
        .stderr(std::process::Stdio::inherit())
        .output()
        .context("running the second process")?;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("trace_hash=").map(str::to_string))
        .with_context(|| {
            format!(
                "the second process printed no trace_hash (exit {})",
                out.status
            )
        })
}

fn determinism(file: &Path, o: &Outcome) -> anyhow::Result<bool> {
    let other = hash_in_child(file, o.seed)?;
    Ok(other == o.trace_hash)
}

pub fn run_cmd(cmd: SimCommand) -> anyhow::Result<()> {
    crate::allocator::keep_freed_memory();
    match cmd {
        SimCommand::Run(a) => run_one(a),
        SimCommand::Replay(a) => replay(a),
        SimCommand::Sweep(a) => sweep(a),
    }
}

fn run_one(a: SimRunArgs) -> anyhow::Result<()> {
    let (file, text) = SimFile::load(&a.file)?;
    let o = match &a.trace {
        Some(p) => {
            let f =
                std::fs::File::create(p).with_context(|| format!("creating {}", p.display()))?;
            let mut t = FileTrace {
                out: BufWriter::new(f),
                error: None,
            };
            t.line(&serde_json::json!({"bootyard_sim_trace": 1, "seed": a.seed, "file": a.file, "scenario_toml": text}));
            let o = run(&file, a.seed, &mut t)?;
            t.out
                .flush()
                .map_err(|e| t.error.take().unwrap_or(e))
                .with_context(|| format!("writing {}", p.display()))?;
            if let Some(e) = t.error {
                return Err(e).with_context(|| format!("writing {}", p.display()));
            }
            o
        }
        None => run(&file, a.seed, &mut NoTrace)?,
    };
    if a.json {
        out(format_args!("{}\n", serde_json::to_string_pretty(&o)?))?;
    } else {
        out(format_args!("{}", summary(&o)))?;
    }
    if a.check_determinism {
        if determinism(&a.file, &o)? {
            eprintln!("determinism: a second process got the same trace hash");
        } else {
            bail!("NOT DETERMINISTIC: seed {} gave a different trace hash in a second process; replay: {}", a.seed, replay_cmd(&a.file, a.seed));
        }
    }
    if !o.passed() {
        bail!(
            "scenario {} failed with seed {}; replay: {}",
            o.scenario,
            o.seed,
            replay_cmd(&a.file, a.seed)
        );
    }
    Ok(())
}

fn replay(a: SimReplayArgs) -> anyhow::Result<()> {
    let f =
        std::fs::File::open(&a.trace).with_context(|| format!("opening {}", a.trace.display()))?;
    let mut lines = std::io::BufReader::new(f).lines();
    let first = lines.next().context("the trace is empty")??;
    let head: serde_json::Value =
        serde_json::from_str(&first).context("the trace's first line is not JSON")?;
    if head
        .get("bootyard_sim_trace")
        .and_then(serde_json::Value::as_u64)
        != Some(1)
    {
        bail!(
            "{} is not a bootyard sim trace (version 1)",
            a.trace.display()
        );
    }
    let seed = head
        .get("seed")
        .and_then(serde_json::Value::as_u64)
        .context("the trace names no seed")?;
    let text = head
        .get("scenario_toml")
        .and_then(serde_json::Value::as_str)
        .context("the trace embeds no scenario")?;
    let mut recorded = None;
    for l in lines {
        let l = l?;
        if let Ok(v) = serde_json::from_str::<serde_json::Value>(&l) {
            if let Some(h) = v.get("trace_hash").and_then(serde_json::Value::as_str) {
                recorded = Some(h.to_string());
            }
        }
    }
    let recorded = recorded.context("the trace has no trace_hash line (was the run cut short?)")?;
    let file = SimFile::parse(text)?;
    let o = run(&file, seed, &mut NoTrace)?;
    out(format_args!("{}", summary(&o)))?;
    if o.trace_hash != recorded {
        bail!(
            "replay diverged: recorded trace_hash={recorded}, this run {}",
            o.trace_hash
        );
    }
    eprintln!("replay matches the recorded trace hash");
    Ok(())
}

fn parse_range(s: &str) -> anyhow::Result<(u64, u64)> {
    let (a, b) = s
        .split_once("..")
        .with_context(|| format!("--seeds {s:?}: expected A..B"))?;
    let (a, b): (u64, u64) = (
        a.parse().context("seed range start")?,
        b.parse().context("seed range end")?,
    );
    if b <= a {
        bail!("--seeds {s:?}: the range is empty");
    }
    Ok((a, b))
}

fn parse_shard(s: &str) -> anyhow::Result<(u64, u64)> {
    let (i, n) = s
        .split_once('/')
        .with_context(|| format!("--shard {s:?}: expected i/n"))?;
    let (i, n): (u64, u64) = (
        i.parse().context("shard index")?,
        n.parse().context("shard count")?,
    );
    if n == 0 || i >= n {
        bail!("--shard {s:?}: need 0 <= i < n");
    }
    Ok((i, n))
}

fn sweep(a: SimSweepArgs) -> anyhow::Result<()> {
    let (file, _) = SimFile::load(&a.file)?;
    let (lo, hi) = parse_range(&a.seeds)?;
    let (i, n) = parse_shard(&a.shard)?;
    let mut failed = Vec::new();
    let mut ran = 0;
    for seed in (lo..hi).filter(|s| (s - lo) % n == i) {
        ran += 1;
        let o = run(&file, seed, &mut NoTrace)?;
        let mut why = o
            .checks
            .iter()
            .filter(|c| !c.pass)
            .map(|c| c.name.clone())
            .collect::<Vec<_>>();
        if a.check_determinism && !determinism(&a.file, &o)? {
            why.push("not-deterministic".into());
        }
        if why.is_empty() {
            out(format_args!(
                "seed {seed} pass trace_hash={}\n",
                o.trace_hash
            ))?;
        } else {
            out(format_args!(
                "seed {seed} FAIL ({}); replay: {}\n",
                why.join(", "),
                replay_cmd(&a.file, seed)
            ))?;
            failed.push(seed);
        }
    }
    out(format_args!("{ran} seeds, {} failed\n", failed.len()))?;
    if !failed.is_empty() {
        bail!("failing seeds: {failed:?}");
    }
    Ok(())
}
