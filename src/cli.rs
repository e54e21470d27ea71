//! The command line: argument structs (no IO here) and one module per subcommand.

pub mod boot_assess;
pub mod boot_complete;
pub mod build_slot;
pub mod build_test_image;
pub mod conformance;
pub mod demo;
pub mod exit;
pub mod install;
pub mod pull;
pub mod push;
pub mod rollback;
pub mod sample;
pub mod scenario;
pub mod sim;
pub mod status;
pub mod upgrade;

use std::io::IsTerminal;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "bootyard",
    version,
    about = "Conformance and simulation harness, with a reference node agent, for container-native immutable Linux",
    after_long_help = exit::TABLE
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Build a sample OS image, serve it from a local registry, pull, unpack and slot it
    Demo(demo::DemoArgs),
    /// Work with OS images: pull, push, build slot images
    #[command(subcommand)]
    Image(ImageCommand),
    /// Install an OS image onto a disk: GPT, A/B slots, GRUB with boot assessment
    Install(install::InstallArgs),
    /// Upgrade this node, or an installed disk, to a new image (transition, rotate, arm the tries counter)
    Upgrade(upgrade::UpgradeArgs),
    /// Run scenario files against real boots in QEMU
    #[command(subcommand)]
    Scenario(scenario::ScenarioCommand),
    /// Deterministic mesh simulation: run, replay and sweep scenario files (scenarios/sim/*.toml)
    #[command(subcommand)]
    Sim(sim::SimCommand),
    /// Switch this node back to the previous image (the good passive slot boots next)
    Rollback(rollback::RollbackArgs),
    /// Show the A/B slots, their versions and states, and why the last boot went where it did
    Status(status::StatusArgs),
    /// Mark the running slot good once its health checks pass (run on the node)
    BootComplete(boot_complete::BootCompleteArgs),
    /// Run the health checks of this boot; pass -> mark the slot good, fail -> reboot (run on the node)
    BootAssess(boot_assess::BootAssessArgs),
    /// Build a bootable test OS image (busybox or Debian) from Debian packages, good or deliberately broken
    BuildTestImage(build_test_image::BuildTestImageArgs),
    /// Judge an OS image against the conformance catalogue (conformance/SPEC.md); exit 0 passed, 1 a MUST check failed, 5 a check errored, 6 a MUST check was skipped
    Conformance(conformance::ConformanceArgs),
}

#[derive(Debug, Subcommand)]
pub enum ImageCommand {
    /// Pull an image and unpack it into a root filesystem directory
    Pull(pull::PullArgs),
    /// Push an image from an OCI layout to a registry
    Push(push::PushArgs),
    /// Build an ext4 slot image from a root filesystem directory
    BuildSlot(build_slot::BuildSlotArgs),
    /// Write a deterministic sample image (Debian-like tree) into an OCI layout
    Sample(sample::SampleArgs),
}

/// Where and how an image is fetched: the options `image pull` and `conformance` share.
#[derive(Debug, clap::Args)]
pub struct FetchArgs {
    /// Platform to pick from an image index
    #[arg(long, default_value = "linux/amd64")]
    pub platform: crate::image::spec::Platform,
    /// Registry (host:port) to reach over plain HTTP; repeatable
    #[arg(long = "insecure-registry", value_name = "HOST:PORT", value_parser = registry_host)]
    pub insecure_registry: Vec<String>,
    /// Blob cache (an OCI layout) [default: $XDG_CACHE_HOME/bootyard/oci]
    #[arg(long)]
    pub cache: Option<std::path::PathBuf>,
    /// Docker config with registry credentials [default: $DOCKER_CONFIG/config.json or ~/.docker/config.json]
    #[arg(long)]
    pub docker_config: Option<std::path::PathBuf>,
}

/// `--insecure-registry`: a HOST[:PORT] as a registry reference names one.
pub fn registry_host(s: &str) -> Result<String, String> {
    crate::image::source::check_registry_host(s)?;
    Ok(s.to_string())
}

impl FetchArgs {
    /// Pull options with these settings (and the defaults for the rest).
    pub fn pull_options(&self) -> crate::image::pull::PullOptions {
        let cache = self
            .cache
            .clone()
            .unwrap_or_else(crate::image::pull::default_cache_dir);
        let mut opts = crate::image::pull::PullOptions::new(cache);
        opts.registry.platform = self.platform.clone();
        opts.registry.insecure = self.insecure_registry.clone();
        opts.registry.docker_config = self.docker_config.clone();
        opts
    }
}

/// Which accelerator boots run under, and which QEMU runs them.
#[derive(Debug, Clone, clap::Args)]
pub struct AccelArgs {
    /// auto: boot the run's kernel to its first userspace line under KVM and TCG at once,
    /// take KVM only if it got there in TCG's time, and retry under TCG (for the rest of
    /// the run) a boot that stalls under KVM before its kernel starts
    #[arg(long, value_enum, default_value = "auto")]
    pub accel: AccelArg,
    /// QEMU system emulator to run
    #[arg(long, value_name = "PATH", default_value = "qemu-system-x86_64")]
    pub qemu: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum AccelArg {
    Auto,
    Kvm,
    Tcg,
}

impl AccelArgs {
    /// The accelerator to start with: forced, or probed by booting `kernel` (which `kernel`
    /// finds; when it cannot, TCG, saying why).
    pub fn choose(
        &self,
        kernel: impl FnOnce() -> anyhow::Result<std::path::PathBuf>,
        workdir: &std::path::Path,
    ) -> crate::accel::AccelChoice {
        use bootyard_scenarios::qemu::Accel;
        match self.accel {
            AccelArg::Kvm => crate::accel::AccelChoice::forced(Accel::Kvm),
            AccelArg::Tcg => crate::accel::AccelChoice::forced(Accel::Tcg),
            AccelArg::Auto => match kernel() {
                Ok(k) => crate::accel::probe(&self.qemu, &k, workdir),
                Err(e) => crate::accel::AccelChoice {
                    accel: Accel::Tcg,
                    mode: crate::accel::AccelMode::Auto,
                    reason: format!("no kernel to probe KVM with ({e:#})"),
                },
            },
        }
    }
}

/// Progress bars only for a person watching: a terminal, not CI, not machine output.
pub fn show_progress(json: bool) -> bool {
    !json && std::io::stderr().is_terminal() && std::env::var_os("CI").is_none()
}

pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Demo(a) => demo::run(a),
        Command::Install(a) => install::run(a),
        Command::Upgrade(a) => upgrade::run(a),
        Command::Status(a) => status::run(a),
        Command::Rollback(a) => rollback::run(a),
        Command::Scenario(c) => scenario::run_cmd(c),
        Command::Sim(c) => sim::run_cmd(c),
        Command::BootComplete(a) => boot_complete::run(a),
        Command::BootAssess(a) => boot_assess::run(a),
        Command::BuildTestImage(a) => build_test_image::run(a),
        Command::Conformance(a) => conformance::run_cmd(a),
        Command::Image(ImageCommand::Pull(a)) => pull::run(a),
        Command::Image(ImageCommand::Push(a)) => push::run(a),
        Command::Image(ImageCommand::BuildSlot(a)) => build_slot::run(a),
        Command::Image(ImageCommand::Sample(a)) => sample::run(a),
    }
}
