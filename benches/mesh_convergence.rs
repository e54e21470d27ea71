//! Mesh simulator speed: the event kernel alone (events per second), and whole meshes of N
//! nodes (a third public, the rest behind the ProbeLab NAT mix) forming a cluster, for
//! N = 100 by default and 1,000 and 10,000 with `BOOTYARD_BENCH_LARGE=1` (minutes each).
//! Each mesh run also prints its virtual convergence time, for the a + b·log N fit.

use std::hint::black_box;

use bootyard::meshsim::{run, NoTrace, SimFile};
use bootyard_sim::{Duration, Kernel, Rng};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};

/// The allocator the `bootyard` binary runs the simulator with.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

const KERNEL_EVENTS: u64 = 1_000_000;

/// A steady queue of 10,000 pending events, each pop scheduling one more at a random delay:
/// the shape of a busy simulation.
fn kernel_events(c: &mut Criterion) {
    let mut g = c.benchmark_group("kernel");
    g.throughput(Throughput::Elements(KERNEL_EVENTS));
    g.sample_size(10);
    g.bench_function("pop_and_schedule", |b| {
        b.iter(|| {
            let mut k: Kernel<u64> = Kernel::default();
            let mut rng = Rng::seed(1);
            for i in 0..10_000 {
                k.schedule_in(Duration::from_micros(rng.below(1_000_000)), i)
                    .unwrap();
            }
            let mut sum = 0u64;
            for _ in 0..KERNEL_EVENTS {
                let (_, e) = k.pop().unwrap();
                sum = sum.wrapping_add(e);
                k.schedule_in(Duration::from_micros(rng.below(1_000_000)), e)
                    .unwrap();
            }
            black_box(sum)
        })
    });
    g.finish();
}

pub fn mesh_file(n: usize) -> String {
    let public = n / 3;
    format!(
        "name = 'mesh-{n}'\nduration = 120\nminimum_nodes = 5\nha_masters = 2\nbootstrap = {}\n\
         [relay]\nmax_reservations = 4096\nmax_circuits = 4096\nmax_circuits_per_peer = 16\n\
         max_circuit_duration = 3600\nmax_circuit_bytes = 67108864\n\
         [[group]]\ncount = {public}\nplacement = 'public'\n\
         [[group]]\ncount = {}\nplacement = 'nat'\nnat = 'probelab'\n\
         [expect]\nconverged_at_end = true\n",
        (n / 100).max(2),
        n - public
    )
}

fn mesh_convergence(c: &mut Criterion) {
    // As `bootyard sim` runs.
    bootyard::allocator::keep_freed_memory();
    let large = std::env::var_os("BOOTYARD_BENCH_LARGE").is_some();
    let sizes: &[usize] = if large { &[100, 1_000, 10_000] } else { &[100] };
    let mut g = c.benchmark_group("mesh_convergence");
    g.sample_size(10);
    for &n in sizes {
        let f = SimFile::parse(&mesh_file(n)).unwrap();
        let o = run(&f, 1, &mut NoTrace).unwrap();
        eprintln!(
            "mesh_convergence/{n}: converged at {:?} virtual s, {} events, {} messages",
            o.metrics.converged_at_secs, o.metrics.events, o.metrics.messages
        );
        g.bench_with_input(BenchmarkId::from_parameter(n), &f, |b, f| {
            b.iter(|| black_box(run(f, 1, &mut NoTrace).unwrap().trace_hash))
        });
    }
    g.finish();
}

criterion_group!(benches, kernel_events, mesh_convergence);
criterion_main!(benches);
