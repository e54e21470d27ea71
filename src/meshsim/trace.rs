//! The trace of a run, as JSON Lines: a header that embeds the scenario (so `sim replay`
//! needs nothing else), one line per significant event, and the `trace_hash` line last.
//! Replaying proves a trace line by line: every recorded line must be the one the re-run
//! produces, and the counts must agree, so no edit of the file goes unnoticed. It streams:
//! one recorded line is held at a time, and no line may be longer than
//! [`TRACE_LINE_BYTES_MAX`].

use std::io::{self, BufRead, Write};

use serde::Deserialize;

use super::{FileError, SimFile, SCENARIO_BYTES_MAX};

/// The trace format's version, the header's `bootyard_sim_trace`.
pub const TRACE_VERSION: u64 = 1;

/// Longest line a trace may hold. The header is the longest: the scenario JSON-escaped (at
/// most 6 bytes for each of its bytes, as `\u001f`) and the scenario's path.
pub const TRACE_LINE_BYTES_MAX: usize = 6 * SCENARIO_BYTES_MAX + 64 * 1024;

/// How much of a line a divergence shows.
const SHOWN_CHARS_MAX: usize = 300;

/// Takes the trace, one JSON value a line (the hash covers more: every event).
pub trait TraceSink {
    fn line(&mut self, v: &serde_json::Value);
}

impl TraceSink for Vec<serde_json::Value> {
    fn line(&mut self, v: &serde_json::Value) {
        self.push(v.clone());
    }
}

pub struct NoTrace;
impl TraceSink for NoTrace {
    fn line(&mut self, _: &serde_json::Value) {}
}

/// A trace's first line.
pub fn header(seed: u64, file: &str, scenario_toml: &str) -> serde_json::Value {
    serde_json::json!({
        "bootyard_sim_trace": TRACE_VERSION,
        "seed": seed,
        "file": file,
        "scenario_toml": scenario_toml,
    })
}

/// What a trace's header says.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Header {
    pub bootyard_sim_trace: u64,
    pub seed: u64,
    pub file: String,
    pub scenario_toml: String,
}

/// Writes a trace; the first write error is kept for [`TraceWriter::finish`] (a sink cannot
/// fail the run it records).
pub struct TraceWriter<W: Write> {
    out: W,
    error: Option<io::Error>,
}

impl<W: Write> TraceWriter<W> {
    pub fn new(out: W) -> Self {
        Self { out, error: None }
    }

    /// Flushes, and reports the first error any write met.
    pub fn finish(mut self) -> io::Result<W> {
        if let Some(e) = self.error.take() {
            return Err(e);
        }
        self.out.flush()?;
        Ok(self.out)
    }
}

impl<W: Write> TraceSink for TraceWriter<W> {
    fn line(&mut self, v: &serde_json::Value) {
        if self.error.is_none() {
            if let Err(e) = writeln!(self.out, "{v}") {
                self.error = Some(e);
            }
        }
    }
}

/// A trace that is not one bootyard writes: cut, corrupt, or not a trace at all.
#[derive(Debug, thiserror::Error)]
pub enum TraceError {
    #[error("reading the trace")]
    Read(#[source] io::Error),
    #[error("the trace is empty")]
    Empty,
    #[error("line {line} is longer than {max} bytes (TRACE_LINE_BYTES_MAX)")]
    LineTooLong { line: u64, max: usize },
    #[error("line {line} ends without a newline (was the run cut short?)")]
    Unterminated { line: u64 },
    #[error("line {line} is not a JSON line: {shown}")]
    NotJson { line: u64, shown: String },
    #[error("the first line is not a bootyard sim trace header")]
    Header(#[source] serde_json::Error),
    #[error("the trace is version {0}; this bootyard reads version {TRACE_VERSION}")]
    Version(u64),
    #[error("the header is not as bootyard writes it (edited?)")]
    HeaderForm,
    #[error("the scenario embedded in the header")]
    Scenario(#[source] Box<FileError>),
}

/// A well-formed trace that records another run than this one.
#[derive(Debug, thiserror::Error)]
pub enum Divergence {
    #[error("line {line}: recorded {recorded}, this run {produced}")]
    Line {
        line: u64,
        recorded: String,
        produced: String,
    },
    #[error("the recording ends at line {line}; this run goes on with {produced}")]
    Short { line: u64, produced: String },
    #[error("line {line}: the recording goes on with {recorded}; this run ended")]
    Long { line: u64, recorded: String },
}

/// Why a replay did not prove its trace.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error(transparent)]
    Trace(#[from] TraceError),
    #[error("replay diverged")]
    Diverged(#[source] Divergence),
}

fn shown(bytes: &[u8]) -> String {
    let s = String::from_utf8_lossy(bytes);
    match s.char_indices().nth(SHOWN_CHARS_MAX) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.into_owned(),
    }
}

/// A recorded trace, read one bounded line at a time.
pub struct Recorded<R> {
    src: R,
    /// Lines read so far (the number of the one in `buf`).
    line: u64,
    buf: Vec<u8>,
}

impl<R: BufRead> Recorded<R> {
    /// Reads and checks the header: the version, the form bootyard writes it in (so an
    /// edited seed or scenario cannot pass for the recorded one), and the scenario.
    pub fn open(src: R) -> Result<(Self, Header, SimFile), TraceError> {
        let mut r = Self {
            src,
            line: 0,
            buf: Vec::new(),
        };
        if !r.next_line()? {
            return Err(TraceError::Empty);
        }
        let h: Header = serde_json::from_slice(&r.buf).map_err(TraceError::Header)?;
        if h.bootyard_sim_trace != TRACE_VERSION {
            return Err(TraceError::Version(h.bootyard_sim_trace));
        }
        let canonical = header(h.seed, &h.file, &h.scenario_toml).to_string();
        if canonical.as_bytes() != r.buf.as_slice() {
            return Err(TraceError::HeaderForm);
        }
        let file =
            SimFile::parse(&h.scenario_toml).map_err(|e| TraceError::Scenario(Box::new(e)))?;
        Ok((r, h, file))
    }

    /// The next line (without its newline) into `buf`; false at the end.
    fn next_line(&mut self) -> Result<bool, TraceError> {
        self.buf.clear();
        let n = io::Read::take(&mut self.src, TRACE_LINE_BYTES_MAX as u64 + 1)
            .read_until(b'\n', &mut self.buf)
            .map_err(TraceError::Read)?;
        if n == 0 {
            return Ok(false);
        }
        self.line += 1;
        if self.buf.pop() != Some(b'\n') {
            return Err(if n > TRACE_LINE_BYTES_MAX {
                TraceError::LineTooLong {
                    line: self.line,
                    max: TRACE_LINE_BYTES_MAX,
                }
            } else {
                TraceError::Unterminated { line: self.line }
            });
        }
        Ok(true)
    }

    /// The line in `buf` differs from what the run produced: a corrupt line if it is no
    /// JSON at all, else a divergence.
    fn mismatch(&self, produced: Option<&[u8]>) -> ReplayError {
        if serde_json::from_slice::<serde_json::Value>(&self.buf).is_err() {
            return TraceError::NotJson {
                line: self.line,
                shown: shown(&self.buf),
            }
            .into();
        }
        ReplayError::Diverged(match produced {
            Some(p) => Divergence::Line {
                line: self.line,
                recorded: shown(&self.buf),
                produced: shown(p),
            },
            None => Divergence::Long {
                line: self.line,
                recorded: shown(&self.buf),
            },
        })
    }
}

/// A sink that compares each line a run produces with the next recorded line, and keeps
/// the first difference.
pub struct Comparing<R> {
    rec: Recorded<R>,
    produced: Vec<u8>,
    failed: Option<ReplayError>,
}

impl<R: BufRead> Comparing<R> {
    pub fn new(rec: Recorded<R>) -> Self {
        Self {
            rec,
            produced: Vec::new(),
            failed: None,
        }
    }

    /// After the run: the first difference, or a recording longer than the run.
    pub fn finish(mut self) -> Result<(), ReplayError> {
        if let Some(e) = self.failed {
            return Err(e);
        }
        if self.rec.next_line()? {
            return Err(self.rec.mismatch(None));
        }
        Ok(())
    }
}

impl<R: BufRead> TraceSink for Comparing<R> {
    fn line(&mut self, v: &serde_json::Value) {
        if self.failed.is_some() {
            return;
        }
        self.produced.clear();
        serde_json::to_writer(&mut self.produced, v).expect("a JSON value serializes");
        self.failed = match self.rec.next_line() {
            Ok(true) if self.rec.buf == self.produced => None,
            Ok(true) => Some(self.rec.mismatch(Some(&self.produced))),
            Ok(false) => Some(ReplayError::Diverged(Divergence::Short {
                line: self.rec.line + 1,
                produced: shown(&self.produced),
            })),
            Err(e) => Some(e.into()),
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SCENARIO: &str =
        "name = 'x'\nduration = 10\n[[group]]\ncount = 1\nplacement = 'public'\n";

    fn recording(events: &[serde_json::Value]) -> Vec<u8> {
        let mut w = TraceWriter::new(Vec::new());
        w.line(&header(3, "x.toml", SCENARIO));
        for e in events {
            w.line(e);
        }
        w.finish().unwrap()
    }

    fn replay(recorded: &[u8], events: &[serde_json::Value]) -> Result<(), ReplayError> {
        let (rec, h, _) = Recorded::open(recorded)?;
        assert_eq!(h.seed, 3);
        let mut c = Comparing::new(rec);
        for e in events {
            c.line(e);
        }
        c.finish()
    }

    fn events() -> Vec<serde_json::Value> {
        (0..5)
            .map(|i| serde_json::json!({"t": f64::from(i) * 1.5, "event": "x"}))
            .collect()
    }

    #[test]
    fn a_recording_replays_and_every_edit_is_caught_with_its_line() {
        let ev = events();
        let rec = recording(&ev);
        replay(&rec, &ev).unwrap();
        let text = String::from_utf8(rec).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        let join = |l: &[&str]| l.iter().map(|l| format!("{l}\n")).collect::<String>();
        // One value edited.
        let edited = text.replace(r#""t":3.0"#, r#""t":99.0"#);
        let err = replay(edited.as_bytes(), &ev).unwrap_err();
        assert!(
            matches!(err, ReplayError::Diverged(Divergence::Line { line: 4, .. })),
            "{err:?}"
        );
        // Lines deleted from the middle, or from the end; one added at the end.
        let cut = join(&[&lines[..2], &lines[4..]].concat());
        assert!(matches!(
            replay(cut.as_bytes(), &ev),
            Err(ReplayError::Diverged(Divergence::Line { line: 3, .. }))
        ));
        let short = join(&lines[..4]);
        assert!(matches!(
            replay(short.as_bytes(), &ev),
            Err(ReplayError::Diverged(Divergence::Short { line: 5, .. }))
        ));
        let long = format!("{text}{}\n", lines[3]);
        assert!(matches!(
            replay(long.as_bytes(), &ev),
            Err(ReplayError::Diverged(Divergence::Long { line: 7, .. }))
        ));
        // Garbage is a corrupt trace; so is a last line without its newline.
        let garbage = join(&[&lines[..3], &["garbage"], &lines[3..]].concat());
        assert!(matches!(
            replay(garbage.as_bytes(), &ev),
            Err(ReplayError::Trace(TraceError::NotJson { line: 4, .. }))
        ));
        let unterminated = text.trim_end();
        assert!(matches!(
            replay(unterminated.as_bytes(), &ev),
            Err(ReplayError::Trace(TraceError::Unterminated { line: 6 }))
        ));
    }

    #[test]
    fn the_header_is_checked_seed_scenario_and_form() {
        let ev = events();
        let text = String::from_utf8(recording(&ev)).unwrap();
        let first = text.lines().next().unwrap();
        for (edit, want) in [
            (first.replace(r#""seed":3"#, r#""seed": 3"#), "HeaderForm"),
            (first.replace("}", r#","extra":1}"#), "Header"),
            (first.replace(r#"trace":1"#, r#"trace":2"#), "Version"),
            (first.replace("count = 1", "count = 0"), "Scenario"),
            (first.replace(r#""file""#, r#" "file""#), "HeaderForm"),
        ] {
            let t = text.replacen(first, &edit, 1);
            let err = replay(t.as_bytes(), &ev).unwrap_err();
            assert!(format!("{err:?}").contains(want), "{edit}: {err:?}");
        }
        assert!(matches!(
            replay(b"", &ev),
            Err(ReplayError::Trace(TraceError::Empty))
        ));
    }

    #[test]
    fn r19_a_line_longer_than_the_bound_is_refused_without_reading_it_all() {
        // An endless line: the read stops at the bound.
        let endless = std::io::BufReader::new(std::io::repeat(b'x'));
        assert!(matches!(
            Recorded::open(endless),
            Err(TraceError::LineTooLong { line: 1, .. })
        ));
    }
}
