//! The `zerohop` command-line tool.
//!
//! With no arguments it runs `zerohop testpmd`'s default: both sides of a port on one
//! host, in two processes over a fresh /dev/shm window: a few seconds of txonly ->
//! rxonly throughput, then a ping-pong latency run, and a summary.

mod demo;
mod hostile;
mod latency;
mod pipeline;
mod report;
mod rpmsg_bench;
mod rpmsg_guest;
mod stop;
mod testpmd;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use demo::{DemoParams, Mode, PollMode};

#[derive(Parser)]
#[command(
    name = "zerohop",
    version,
    about = "zero-copy, poll-mode data plane over shared-memory and PCIe windows",
    after_help = "Examples:\n  zerohop                      # testpmd default: throughput + latency summary\n  zerohop testpmd --forward-mode io --duration 5 --json\n  zerohop stats --once\n  zerohop demo --ring posted --count 10000000 --json"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Option<Cmd>,
}

#[derive(Subcommand)]
enum Cmd {
    /// DPDK testpmd habits: forwarding modes over a port, both sides on this host by
    /// default. With no arguments: a throughput run and a latency run, summarised.
    Testpmd(Box<testpmd::TestpmdArgs>),
    /// Attach read-only to a running testpmd's stats window and print its counters.
    Stats(testpmd::statsw::StatsArgs),
    /// Move entries through each ring mode between two processes on this host.
    Demo(DemoArgs),
    /// Print latency percentiles of saved runs side by side and plot them (.svg).
    Report(report::ReportArgs),
    /// Hostile peer: write adversarial bytes into a live window (or run a victim).
    Hostile(hostile::HostileArgs),
    /// RPMsg (rpmsg-fast) between two processes on this host: one-way messages/s and
    /// MB/s, round-trip percentiles, per payload size.
    RpmsgBench(Box<rpmsg_bench::RpmsgBenchArgs>),
    /// The RPMsg remote of a Linux guest's own virtio_rpmsg_bus (QEMU, shared guest
    /// RAM): announces services and echoes their messages.
    RpmsgGuest(rpmsg_guest::RpmsgGuestArgs),
    /// Per-core pipelines from a config file.
    #[command(subcommand)]
    Pipeline(pipeline::PipelineCmd),
    /// The peer process of `demo` (started by it; not for direct use).
    #[command(hide = true)]
    DemoPeer {
        /// Window file made by the parent.
        #[arg(long)]
        window: PathBuf,
        /// Parameters as JSON.
        #[arg(long)]
        params: String,
    },
}

#[derive(Args)]
struct DemoArgs {
    /// Ring mode(s) to run; all three by default.
    #[arg(long = "ring", value_enum)]
    rings: Vec<Mode>,
    /// Entries to move per ring mode.
    #[arg(long, default_value_t = 2_000_000)]
    count: u64,
    /// Bytes per entry (16 to 65536).
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(16..=65536))]
    size: u32,
    /// Entries per burst (1 to 512).
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u32).range(1..=512))]
    burst: u32,
    /// Ring size in entries (a power of two, 2 to 32768).
    #[arg(long, default_value_t = 256)]
    ring_size: u32,
    /// How an idle side waits: spin (pinned busy-poll) or yield (shared machines, tests).
    #[arg(long, value_enum, default_value_t = PollMode::Spin)]
    poll: PollMode,
    /// Give up after this many seconds per mode.
    #[arg(long, default_value_t = 60)]
    deadline: u64,
    /// Directory for the window file.
    #[arg(long, default_value = "/dev/shm")]
    dir: PathBuf,
    /// Print one JSON array of results instead of the human summary.
    #[arg(long)]
    json: bool,
}

impl Default for DemoArgs {
    fn default() -> Self {
        DemoArgs {
            rings: Vec::new(),
            count: 2_000_000,
            size: 64,
            burst: 32,
            ring_size: 256,
            poll: PollMode::Spin,
            deadline: 60,
            dir: PathBuf::from("/dev/shm"),
            json: false,
        }
    }
}

fn run_demo(a: DemoArgs) -> ExitCode {
    if !a.ring_size.is_power_of_two() || !(2..=32768).contains(&a.ring_size) {
        eprintln!(
            "zerohop demo: --ring-size {} must be a power of two from 2 to 32768",
            a.ring_size
        );
        return ExitCode::from(2);
    }
    let modes = if a.rings.is_empty() {
        vec![Mode::Split, Mode::Packed, Mode::Posted]
    } else {
        a.rings.clone()
    };
    let mut results = Vec::new();
    let mut failed = false;
    for mode in modes {
        let p = DemoParams {
            mode,
            count: a.count,
            size: a.size,
            burst: a.burst.min(a.ring_size),
            ring_size: a.ring_size,
            poll: a.poll,
            deadline: Duration::from_secs(a.deadline),
        };
        match demo::run_mode(&p, &a.dir) {
            Ok(r) => {
                failed |= r.tx_error.is_some()
                    || r.rx.error.is_some()
                    || r.rx.lost + r.rx.reordered + r.rx.duplicated + r.rx.corrupted > 0;
                results.push(r);
            }
            Err(e) => {
                eprintln!("zerohop demo: {} ring: {e}", mode.name());
                failed = true;
            }
        }
    }
    let p = DemoParams {
        mode: Mode::Posted,
        count: a.count,
        size: a.size,
        burst: a.burst,
        ring_size: a.ring_size,
        poll: a.poll,
        deadline: Duration::from_secs(a.deadline),
    };
    if a.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&results).expect("results serialise")
        );
    } else {
        demo::print_human(&results, &p);
    }
    if failed {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.cmd {
        None => {
            let a = Cli::parse_from(["zerohop", "testpmd"]);
            match a.cmd {
                Some(Cmd::Testpmd(t)) => testpmd::run(&t, true),
                _ => ExitCode::from(2),
            }
        }
        Some(Cmd::Testpmd(t)) => testpmd::run(&t, std::env::args_os().len() <= 2),
        Some(Cmd::Stats(a)) => testpmd::statsw::run(&a),
        Some(Cmd::Demo(a)) => run_demo(a),
        Some(Cmd::Report(a)) => report::run(&a),
        Some(Cmd::RpmsgBench(a)) => rpmsg_bench::run(&a),
        Some(Cmd::RpmsgGuest(a)) => rpmsg_guest::run(&a),
        Some(Cmd::Pipeline(c)) => pipeline::run(&c),
        Some(Cmd::Hostile(a)) => hostile::run(&a),
        Some(Cmd::DemoPeer { window, params }) => {
            ExitCode::from(demo::run_peer(&window, &params) as u8)
        }
    }
}
