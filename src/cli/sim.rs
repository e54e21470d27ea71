use std::io::{BufWriter, Write as _};
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use clap::{Args, Subcommand};

use crate::meshsim::trace::{
    self, Comparing, Divergence, Recorded, ReplayError, TraceError, TraceWriter,
};
use crate::meshsim::{run, summary, FileError, LoadError, NoTrace, Outcome, RunError, SimFile};

/// Standard output went away (the reader of a pipe exited, as `| head` does): the command
/// stops, and `main` exits quietly as a tool ended by SIGPIPE would.
#[derive(Debug, thiserror::Error)]
#[error("standard output was closed")]
pub struct StdoutClosed;

/// Failing seeds a sweep lists at the end (it counts them all; each was printed already).
pub const FAILED_SEEDS_LISTED_MAX: usize = 32;

/// Why a `sim` command did not succeed. `main` gives each its exit status: a bad argument
/// is a usage error, an invalid scenario file or trace is an invalid input, and the rest
/// (a failing scenario, a replay that diverges, I/O) is a failure.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    #[error("--seeds {arg:?}: {why}")]
    Seeds { arg: String, why: &'static str },
    #[error("--shard {arg:?}: {why}")]
    Shard { arg: String, why: &'static str },
    #[error("--shard {shard} of --seeds {seeds} holds no seed")]
    EmptyShard { shard: String, seeds: String },
    #[error("--trace {} is the scenario file {}: refusing to overwrite it", output.display(), input.display())]
    OutputIsInput { output: PathBuf, input: PathBuf },
    #[error("invalid scenario file {}", path.display())]
    InvalidFile {
        path: PathBuf,
        #[source]
        source: Box<FileError>,
    },
    #[error("invalid trace {}", path.display())]
    InvalidTrace {
        path: PathBuf,
        #[source]
        source: TraceError,
    },
    #[error("reading {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("writing {}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("seed {seed}: the run could not finish; replay: {replay}")]
    Run {
        seed: u64,
        replay: String,
        #[source]
        source: RunError,
    },
    #[error("scenario {scenario} failed with seed {seed}; replay: {replay}")]
    Failed {
        scenario: String,
        seed: u64,
        replay: String,
    },
    #[error("NOT DETERMINISTIC: seed {seed} gave a different trace hash in a second process; replay: {replay}")]
    NotDeterministic { seed: u64, replay: String },
    #[error("{failed} of {ran} seeds failed: {listed:?}{}", if *failed > listed.len() as u64 { " and more" } else { "" })]
    SweepFailed {
        ran: u64,
        failed: u64,
        listed: Vec<u64>,
    },
    #[error("replay diverged from the recording {}", path.display())]
    Diverged {
        path: PathBuf,
        #[source]
        source: Divergence,
    },
}

impl From<LoadError> for SimError {
    fn from(e: LoadError) -> Self {
        match e {
            LoadError::Read { path, source } => Self::Read { path, source },
            LoadError::Invalid { path, source } => Self::InvalidFile { path, source },
        }
    }
}

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
    /// Re-run the scenario a trace was recorded from and prove every line it recorded
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

/// Refuses to write `output` when it is `input`, before anything is written: the same file
/// by device and inode (so through any symlink or hardlink) or the same path once
/// canonicalised. `File::create` would truncate the scenario under the run.
fn refuse_overwrite(output: &Path, input: &Path) -> Result<(), SimError> {
    use std::os::unix::fs::MetadataExt as _;
    let same_inode = match (std::fs::metadata(output), std::fs::metadata(input)) {
        (Ok(o), Ok(i)) => (o.dev(), o.ino()) == (i.dev(), i.ino()),
        // An output that does not exist yet is no existing input.
        _ => false,
    };
    let same_path = match (std::fs::canonicalize(output), std::fs::canonicalize(input)) {
        (Ok(o), Ok(i)) => o == i,
        _ => false,
    };
    if same_inode || same_path {
        return Err(SimError::OutputIsInput {
            output: output.to_path_buf(),
            input: input.to_path_buf(),
        });
    }
    Ok(())
}

fn run_seed(
    file: &SimFile,
    path: &Path,
    seed: u64,
    trace: &mut dyn trace::TraceSink,
) -> Result<Outcome, SimError> {
    run(file, seed, trace).map_err(|source| SimError::Run {
        seed,
        replay: replay_cmd(path, seed),
        source,
    })
}

fn run_one(a: SimRunArgs) -> anyhow::Result<()> {
    if let Some(p) = &a.trace {
        refuse_overwrite(p, &a.file)?;
    }
    let (file, text) = SimFile::load(&a.file).map_err(SimError::from)?;
    let o = match &a.trace {
        Some(p) => {
            let write = |source| SimError::Write {
                path: p.clone(),
                source,
            };
            let f = std::fs::File::create(p).map_err(write)?;
            let mut t = TraceWriter::new(BufWriter::new(f));
            trace::TraceSink::line(
                &mut t,
                &trace::header(a.seed, &a.file.to_string_lossy(), &text),
            );
            let o = run_seed(&file, &a.file, a.seed, &mut t)?;
            t.finish().map_err(write)?;
            o
        }
        None => run_seed(&file, &a.file, a.seed, &mut NoTrace)?,
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
            return Err(SimError::NotDeterministic {
                seed: a.seed,
                replay: replay_cmd(&a.file, a.seed),
            }
            .into());
        }
    }
    if !o.passed() {
        return Err(SimError::Failed {
            scenario: o.scenario.clone(),
            seed: o.seed,
            replay: replay_cmd(&a.file, a.seed),
        }
        .into());
    }
    Ok(())
}

/// Re-runs the recorded scenario and seed, comparing every line the run produces with the
/// recorded one as it goes.
fn replay(a: SimReplayArgs) -> anyhow::Result<()> {
    let path = &a.trace;
    let f = std::fs::File::open(path).map_err(|source| SimError::Read {
        path: path.clone(),
        source,
    })?;
    let replay_error = |e: ReplayError| match e {
        ReplayError::Trace(TraceError::Read(source)) => SimError::Read {
            path: path.clone(),
            source,
        },
        ReplayError::Trace(source) => SimError::InvalidTrace {
            path: path.clone(),
            source,
        },
        ReplayError::Diverged(source) => SimError::Diverged {
            path: path.clone(),
            source,
        },
    };
    let (rec, head, file) = Recorded::open(std::io::BufReader::new(f))
        .map_err(|e| replay_error(ReplayError::Trace(e)))?;
    let mut cmp = Comparing::new(rec);
    let o = run_seed(&file, Path::new(&head.file), head.seed, &mut cmp)?;
    // The summary only once the recording is proven: a PASS above "replay diverged" would
    // read as a verdict on the trace.
    cmp.finish().map_err(replay_error)?;
    out(format_args!("{}", summary(&o)))?;
    eprintln!("replay matches every line of the recorded trace");
    Ok(())
}

fn parse_range(s: &str) -> Result<(u64, u64), SimError> {
    let bad = |why| SimError::Seeds { arg: s.into(), why };
    let (a, b) = s.split_once("..").ok_or(bad("expected A..B"))?;
    let a: u64 = a.parse().map_err(|_| bad("the start is not a u64"))?;
    let b: u64 = b.parse().map_err(|_| bad("the end is not a u64"))?;
    if b <= a {
        return Err(bad("the range is empty"));
    }
    Ok((a, b))
}

fn parse_shard(s: &str) -> Result<(u64, u64), SimError> {
    let bad = |why| SimError::Shard { arg: s.into(), why };
    let (i, n) = s.split_once('/').ok_or(bad("expected i/n"))?;
    let i: u64 = i.parse().map_err(|_| bad("the index is not a u64"))?;
    let n: u64 = n.parse().map_err(|_| bad("the count is not a u64"))?;
    if n == 0 || i >= n {
        return Err(bad("need 0 <= i < n"));
    }
    Ok((i, n))
}

/// The seeds of shard `i` of `n` in `lo..hi`: `lo + i`, then every `n`th. Computed, not
/// filtered, so a shard far into a large range starts at once; `None` if it holds none.
fn shard_seeds(lo: u64, hi: u64, i: u64, n: u64) -> Option<impl Iterator<Item = u64>> {
    let first = lo.checked_add(i).filter(|&f| f < hi)?;
    Some(std::iter::successors(Some(first), move |s| s.checked_add(n)).take_while(move |&s| s < hi))
}

fn sweep(a: SimSweepArgs) -> anyhow::Result<()> {
    let (lo, hi) = parse_range(&a.seeds)?;
    let (i, n) = parse_shard(&a.shard)?;
    let seeds = shard_seeds(lo, hi, i, n).ok_or_else(|| SimError::EmptyShard {
        shard: a.shard.clone(),
        seeds: a.seeds.clone(),
    })?;
    let (file, _) = SimFile::load(&a.file).map_err(SimError::from)?;
    let mut listed = Vec::new();
    let mut failed = 0u64;
    let mut ran = 0u64;
    for seed in seeds {
        ran += 1;
        let o = run_seed(&file, &a.file, seed, &mut NoTrace)?;
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
            failed += 1;
            if listed.len() < FAILED_SEEDS_LISTED_MAX {
                listed.push(seed);
            }
        }
    }
    out(format_args!("{ran} seeds, {failed} failed\n"))?;
    if failed > 0 {
        return Err(SimError::SweepFailed {
            ran,
            failed,
            listed,
        }
        .into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_partition_the_range() {
        let all: Vec<Vec<u64>> = (0..3)
            .map(|i| shard_seeds(10, 16, i, 3).unwrap().collect())
            .collect();
        assert_eq!(all, [vec![10, 13], vec![11, 14], vec![12, 15]]);
    }

    /// Issue 19: the shard's seeds were found by filtering the whole range, so a shard far
    /// into `0..u64::MAX` walked 2^64 seeds before its first.
    #[test]
    fn r19_a_far_shard_of_the_whole_u64_range_starts_at_once() {
        let seeds: Vec<u64> = shard_seeds(0, u64::MAX, u64::MAX - 1, u64::MAX)
            .unwrap()
            .collect();
        assert_eq!(seeds, [u64::MAX - 1]);
        // The step past the last seed would overflow: it ends instead.
        let seeds: Vec<u64> = shard_seeds(u64::MAX - 3, u64::MAX, 1, 2).unwrap().collect();
        assert_eq!(seeds, [u64::MAX - 2]);
    }

    /// Issue 19: `--seeds 1..2 --shard 1/2` ran no seed and passed.
    #[test]
    fn r19_an_empty_shard_is_a_usage_error() {
        assert!(shard_seeds(1, 2, 1, 2).is_none());
        assert!(shard_seeds(u64::MAX - 1, u64::MAX, 5, 6).is_none());
    }

    /// Issue 19: `sim run mine.toml --trace mine.toml` truncated the scenario.
    #[test]
    fn r19_trace_onto_the_scenario_overwrites_it() {
        let dir = tempfile::tempdir().unwrap();
        let input = dir.path().join("mine.toml");
        std::fs::write(&input, "x").unwrap();
        let link = dir.path().join("link.toml");
        std::os::unix::fs::symlink(&input, &link).unwrap();
        let hard = dir.path().join("hard.toml");
        std::fs::hard_link(&input, &hard).unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        let dotted = dir.path().join("sub/../mine.toml");
        for output in [&input, &link, &hard, &dotted] {
            assert!(
                matches!(
                    refuse_overwrite(output, &input),
                    Err(SimError::OutputIsInput { .. })
                ),
                "{}",
                output.display()
            );
        }
        // Also when the scenario is given through the link.
        assert!(refuse_overwrite(&input, &link).is_err());
        refuse_overwrite(&dir.path().join("trace.jsonl"), &input).unwrap();
        let other = dir.path().join("other");
        std::fs::write(&other, "y").unwrap();
        refuse_overwrite(&other, &input).unwrap();
        assert_eq!(std::fs::read_to_string(&input).unwrap(), "x");
    }
}
