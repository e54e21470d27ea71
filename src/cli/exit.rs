//! Exit statuses, stable for scripts and CI gates: what each means, and which error maps to
//! which. Every command shares them (README: "Exit statuses").

use crate::image::apply::ApplyError;
use crate::image::pull::PullError;
use crate::image::registry::RegistryError;
use crate::image::unpack::UnpackError;

pub use codes::*;

/// The table `bootyard --help` ends with, which the README carries word for word (a test
/// holds them together).
pub const TABLE: &str = "Exit statuses (every command):
  0    success: done; conformance: every check passed or warned; sim: every check held,
       a replay proved every recorded line
  1    failure: what was judged failed (a MUST check, a scenario, a sim run, a replay that
       diverged), or the work itself failed (I/O, a destination not empty, a tool missing)
  2    usage: the arguments are wrong, found before any work (clap's own; a source that is
       not one, a bad port or --insecure-registry, --tries outside 1..=9, an output that is
       a device, a FIFO or the input itself; conformance: an unknown check, a profile
       without checks, a malformed denylist; sim: bad --seeds or --shard, an empty shard)
  3    the input is invalid, corrupt or hostile: an image (digest mismatch, unsafe path,
       bomb, malformed metadata, an archive that holds no layout), a disk that is not an
       installed one, is cut short or has a damaged partition table, a sim scenario file
       or trace that is invalid
  4    the source is unreachable, refused access, or lacks the image (a tag, a platform)
  5    conformance: nothing failed, but a check could not reach a verdict (error)
  6    conformance: nothing failed or errored, but a MUST check was skipped
  7    conformance: a report could not be written
  130  stopped by SIGINT, 143 by SIGTERM, after removing the run's scratch files
  141  quietly, when the reader of a sim report left early (| head), as after SIGPIPE";

/// Exit codes, stable for scripts and CI gates.
pub mod codes {
    pub const FAILURE: u8 = 1;
    /// A usage error (clap's, and a conformance run asked for unknown checks or given a bad
    /// denylist).
    pub const USAGE: u8 = 2;
    /// The input is invalid, corrupt or hostile: an image (digest mismatch, unsafe path,
    /// bomb), a disk that is not an installed one or is damaged, a mesh scenario file that
    /// does not parse or validate, a corrupt trace.
    pub const BAD_INPUT: u8 = 3;
    /// The registry or source could not be reached, refused access, or lacks the image.
    pub const UNAVAILABLE: u8 = 4;
    /// A conformance report could not be written (the report directory, or a write to a
    /// report failed): the verdict did not reach the gate.
    pub const REPORT_UNWRITABLE: u8 = 7;
    /// Standard output was closed under a report (`| head`): 128 + SIGPIPE, as the shell
    /// reports a tool that signal ended.
    pub const STDOUT_CLOSED: u8 = 141;
}

/// The exit status for an error: the first link of its chain that says. Wrappers marked
/// `#[error(transparent)]` hide what they wrap from the chain, so each classifier also
/// looks inside the variants that wrap another module's error.
pub fn exit_code(err: &anyhow::Error) -> u8 {
    for cause in err.chain() {
        if let Some(code) = code_of(cause) {
            return code;
        }
    }
    codes::FAILURE
}

fn code_of(cause: &(dyn std::error::Error + 'static)) -> Option<u8> {
    if let Some(crate::cli::conformance::NotPassed(outcome)) = cause.downcast_ref() {
        return Some(outcome.exit_code());
    }
    if cause.is::<crate::conformance::run::ReportUnwritable>() {
        return Some(codes::REPORT_UNWRITABLE);
    }
    if let Some(e) = cause.downcast_ref::<crate::cli::sim::SimError>() {
        use crate::cli::sim::SimError as S;
        return Some(match e {
            S::Seeds { .. } | S::Shard { .. } | S::EmptyShard { .. } | S::OutputIsInput { .. } => {
                codes::USAGE
            }
            S::InvalidFile { .. } | S::InvalidTrace { .. } => codes::BAD_INPUT,
            S::Read { .. }
            | S::Write { .. }
            | S::Run { .. }
            | S::Failed { .. }
            | S::NotDeterministic { .. }
            | S::SweepFailed { .. }
            | S::Diverged { .. } => codes::FAILURE,
        });
    }
    if cause.is::<crate::image::source::SourceError>()
        || cause.is::<crate::conformance::run::ConfigError>()
    {
        return Some(codes::USAGE);
    }
    if let Some(e) = cause.downcast_ref::<crate::boot::assessment::AssessmentError>() {
        return assessment(e);
    }
    if let Some(e) = cause.downcast_ref::<crate::output::OutputError>() {
        return output(e);
    }
    if let Some(e) = cause.downcast_ref::<RegistryError>() {
        return registry(e);
    }
    if let Some(e) = cause.downcast_ref::<UnpackError>() {
        return Some(unpack(e));
    }
    if let Some(e) = cause.downcast_ref::<crate::image::layout::LayoutError>() {
        return Some(layout(e));
    }
    if cause.is::<crate::image::spec::SpecError>() {
        return Some(codes::BAD_INPUT);
    }
    if let Some(e) = cause.downcast_ref::<crate::image::source::ResolveError>() {
        return Some(resolve(e));
    }
    if let Some(e) = cause.downcast_ref::<PullError>() {
        return pull(e);
    }
    if let Some(e) = cause.downcast_ref::<crate::install::InstallError>() {
        use crate::install::InstallError as I;
        return match e {
            I::Output(o) => output(o),
            I::Image(b) => bootable(b),
            I::Assessment(a) => assessment(a),
            _ => None,
        };
    }
    if let Some(b) = cause.downcast_ref::<crate::install::BootableImageError>() {
        return bootable(b);
    }
    if let Some(crate::image::slot::SlotError::Output(o)) = cause.downcast_ref() {
        return output(o);
    }
    // A disk that is not an installed one, or is damaged, is a bad input as a corrupt
    // image is.
    if cause.is::<crate::cli::status::DiskDamaged>() {
        return Some(codes::BAD_INPUT);
    }
    if let Some(e) = cause.downcast_ref::<crate::upgrade::UpgradeError>() {
        use crate::disk::gpt::GptError;
        use crate::upgrade::UpgradeError as U;
        return match e {
            U::NoStatePartition(_)
            | U::NotInstalled { .. }
            | U::Gpt(
                GptError::Invalid(_) | GptError::Truncated { .. } | GptError::OutOfBounds { .. },
            ) => Some(codes::BAD_INPUT),
            U::Image(b) => bootable(b),
            U::Assessment(a) => assessment(a),
            _ => None,
        };
    }
    None
}

fn assessment(e: &crate::boot::assessment::AssessmentError) -> Option<u8> {
    match e {
        crate::boot::assessment::AssessmentError::Tries(_) => Some(codes::USAGE),
        _ => None,
    }
}

/// An output path the command must not write (a device, the input itself) is a mistake
/// in the arguments, caught before any work.
fn output(e: &crate::output::OutputError) -> Option<u8> {
    match e {
        crate::output::OutputError::Io { .. } => None,
        _ => Some(codes::USAGE),
    }
}

fn bootable(e: &crate::install::BootableImageError) -> Option<u8> {
    match e {
        crate::install::BootableImageError::Pull(p) => pull(p),
        crate::install::BootableImageError::Missing(_) => Some(codes::BAD_INPUT),
    }
}

fn pull(e: &PullError) -> Option<u8> {
    match e {
        PullError::Registry(r) => registry(r),
        PullError::Layout(l) => Some(layout(l)),
        PullError::Resolve(r) => Some(resolve(r)),
        PullError::Unpack(u) => Some(unpack(u)),
        PullError::Archive(_) | PullError::NotAnArchive(_) | PullError::Spec(_) => {
            Some(codes::BAD_INPUT)
        }
        PullError::Output(o) => output(o),
        PullError::Io { .. } => None,
    }
}

fn registry(e: &RegistryError) -> Option<u8> {
    Some(match e {
        RegistryError::DigestMismatch { .. }
        | RegistryError::SizeMismatch { .. }
        | RegistryError::TooLarge { .. }
        | RegistryError::Spec(_) => codes::BAD_INPUT,
        RegistryError::Unauthorized { .. }
        | RegistryError::NotFound { .. }
        | RegistryError::Exhausted { .. }
        | RegistryError::Failed { .. } => codes::UNAVAILABLE,
        RegistryError::Resolve(r) => resolve(r),
        RegistryError::Layout(l) => layout(l),
        _ => return None,
    })
}

fn unpack(e: &UnpackError) -> u8 {
    match e {
        UnpackError::DestinationNotEmpty(_)
        | UnpackError::DestinationNotDir(_)
        | UnpackError::Io { .. } => codes::FAILURE,
        UnpackError::Apply {
            source: ApplyError::Io { .. },
            ..
        } => codes::FAILURE,
        _ => codes::BAD_INPUT,
    }
}

/// The source has the image, but not for the platform asked for: it lacks that one.
fn resolve(e: &crate::image::source::ResolveError) -> u8 {
    use crate::image::source::ResolveError as R;
    match e {
        R::WrongPlatform { .. } | R::NoPlatform { .. } => codes::UNAVAILABLE,
        R::TooDeep(_) => codes::BAD_INPUT,
        R::Layout(l) => layout(l),
    }
}

/// A local layout: corrupt or malformed metadata is a bad image; a missing tag, an empty
/// layout or a directory that is not one is an image that is not there.
fn layout(e: &crate::image::layout::LayoutError) -> u8 {
    use crate::image::layout::LayoutError as L;
    match e {
        L::MissingBlob { .. }
        | L::CorruptBlob { .. }
        | L::BlobTooLarge { .. }
        | L::SizeMismatch { .. }
        | L::Spec(_) => codes::BAD_INPUT,
        L::Ambiguous { .. } => codes::USAGE,
        L::NotALayout(_) | L::NoSuchTag { .. } | L::Empty(_) => codes::UNAVAILABLE,
        L::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound => codes::UNAVAILABLE,
        L::Io { source, .. } if source.kind() == std::io::ErrorKind::InvalidData => {
            codes::BAD_INPUT
        }
        L::Io { .. } => codes::FAILURE,
    }
}
