//! `cargo xtask setup | build-ebpf | run | test | bench`: every command a developer or CI needs,
//! with the toolchain bootstrap inside (nothing is installed by hand).

mod bench;
mod demo;
mod ebpf;
mod fuzz;
mod gwbench;
mod setup;
mod strongswan;
mod util;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask", about = "xfrm-ebpf developer tasks")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install what the build and the tests need (idempotent, fast when done).
    Setup {
        /// Only these steps (by name, see `cargo xtask setup --list`).
        #[arg(long = "only")]
        only: Vec<String>,
        /// Print the step names and exit.
        #[arg(long)]
        list: bool,
    },
    /// Build the XDP object with nightly for bpfel-unknown-none.
    BuildEbpf {
        /// Build the eBPF crate in debug mode (the default is release, as the verifier needs).
        #[arg(long)]
        debug: bool,
    },
    /// The demo: build everything, bring up host-a — gw-a ══ wire ══ gw-b — host-b in
    /// namespaces with `xfrm-user run` on both gateways, show traffic, counters and the wire;
    /// Ctrl-C tears everything down.
    Run {
        /// Seconds to run before tearing down (default: until Ctrl-C).
        #[arg(long)]
        duration: Option<u64>,
        /// XDP attach mode.
        #[arg(long, default_value = "native")]
        xdp_mode: String,
    },
    /// setup, build-ebpf, fmt --check, clippy -D warnings, cargo test for the workspace
    /// (root-only integration tests included when run as root).
    Test {
        /// Skip the setup step (for quick local iterations).
        #[arg(long)]
        no_setup: bool,
        /// Extra arguments for `cargo test` (after `--`).
        #[arg(last = true)]
        cargo_test_args: Vec<String>,
    },
    /// The libFuzzer targets (fuzz/harness), each for --seconds from its seeds, then a table of
    /// executions, execs/s, coverage and crashes; a crash is saved to fuzz/regressions/ (which
    /// `cargo test` replays) and fails the command.
    Fuzz {
        /// Only this target (input, input_sealed, output, config, pcap, classifier, neigh,
        /// control).
        #[arg(long)]
        target: Option<String>,
        /// Seconds per target.
        #[arg(long, default_value_t = 60)]
        seconds: u64,
        /// Build with this sanitizer (none: more executions per CPU-second, for long runs).
        #[arg(long, value_enum, default_value_t = fuzz::Sanitizer::Address)]
        sanitizer: fuzz::Sanitizer,
        /// libFuzzer fork mode with this many jobs (1: one process).
        #[arg(long, default_value_t = 1)]
        jobs: u32,
        /// Append each target's figures to fuzz/harness/campaign.log.
        #[arg(long)]
        campaign: bool,
        /// Run nothing: print the campaign log's totals per target (a Markdown table).
        #[arg(long)]
        report: bool,
        /// Build without optimisation (quicker to build, slower to run).
        #[arg(long)]
        dev: bool,
    },
    /// Benchmarks: the user-space ones (`cargo bench -p xfrm-user`), then the XDP classifier's
    /// ns/packet table (BPF_PROG_TEST_RUN; needs root, prints SKIP otherwise), then the
    /// user-space summary lines, the last one `ratio_vs_ring_1400=<x>` (ESP tunnel
    /// AES-GCM-128 throughput over ring's seal).
    Bench {
        /// Only the XDP classifier table.
        #[arg(long)]
        classifier: bool,
        /// Only the live gateway (root): iperf3 through the demo's two-gateway topology by
        /// kernel forwarding, the null transform, ESP and ESP on two queues; a table, the
        /// commands, `ratio_*=` lines.
        #[arg(long)]
        gateway: bool,
        /// Seconds per iperf3 run of --gateway.
        #[arg(long, default_value_t = 5, requires = "gateway")]
        secs: u32,
        /// --gateway with this `xfrm-user` binary instead of building one (A/B of two builds).
        #[arg(long, requires = "gateway")]
        bin: Option<std::path::PathBuf>,
        /// --gateway with this eBPF object (the one built with --bin's tree: the two share
        /// the XdpMeta layout).
        #[arg(long, requires = "bin")]
        bpf: Option<std::path::PathBuf>,
        /// --gateway on these routes only, by letter: a (kernel, both), b, c, d, e.
        #[arg(long, requires = "gateway", value_delimiter = ',')]
        routes: Vec<char>,
        /// --gateway: run the routes this many times, one after the other each time; each
        /// ratio is the median over the rounds.
        #[arg(long, default_value_t = 1, requires = "gateway")]
        rounds: u32,
        /// --gateway, profiled: `perf record -a -g` into this directory during each TCP
        /// 1-stream run through xfrm-user, and a summary of where the CPU went.
        #[arg(long, requires = "gateway")]
        perf: Option<std::path::PathBuf>,
        /// Extra arguments for `cargo bench -p xfrm-user` (after `--`).
        #[arg(last = true)]
        args: Vec<String>,
    },
}

fn main() -> std::process::ExitCode {
    // The error chain, without the backtrace a RUST_BACKTRACE in the environment would add.
    match real_main() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn real_main() -> Result<()> {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Setup { only, list } => {
            if list {
                for step in setup::STEPS {
                    println!("{:<12} {}", step.name, step.about);
                }
                return Ok(());
            }
            setup::run(&only)
        }
        Cmd::BuildEbpf { debug } => ebpf::build(!debug).map(|p| {
            println!("eBPF object: {}", p.display());
        }),
        Cmd::Run { duration, xdp_mode } => demo::gateways(duration, &xdp_mode),
        Cmd::Test {
            no_setup,
            cargo_test_args,
        } => test(no_setup, &cargo_test_args),
        Cmd::Fuzz { report: true, .. } => fuzz::report(),
        Cmd::Fuzz {
            target,
            seconds,
            sanitizer,
            jobs,
            campaign,
            report: false,
            dev,
        } => fuzz::run(
            target.as_deref(),
            seconds,
            fuzz::Mode {
                sanitizer,
                jobs,
                campaign,
                dev,
            },
        ),
        Cmd::Bench {
            gateway: true,
            secs,
            bin,
            bpf,
            routes,
            rounds,
            perf,
            ..
        } => gwbench::gateway(secs, bin, bpf, &routes, rounds, perf),
        Cmd::Bench {
            classifier, args, ..
        } => {
            let transform = if classifier {
                None
            } else {
                Some(bench::transform(&args)?)
            };
            let obj = ebpf::build(true)?;
            util::section("XDP classifier: ns/packet (BPF_PROG_TEST_RUN)");
            util::run(
                util::cargo()
                    .args(["bench", "-p", "xfrm-tests", "--bench", "classifier"])
                    .env("XFRM_BPF_OBJ", &obj),
            )?;
            // The transform summary goes last: its last line is the acceptance line.
            if let Some(t) = transform {
                bench::print_summary(&t);
            }
            Ok(())
        }
    }
}

/// Seconds per fuzz target in `cargo xtask test`, unoptimised (`--dev`: its fresh build took
/// 160 CPU-seconds here): eight targets and the build stay within about three minutes.
const FUZZ_SMOKE_SECONDS: u64 = 10;

/// The CI gate. Every step must pass; the first failure stops it with a non-zero exit.
fn test(no_setup: bool, extra: &[String]) -> Result<()> {
    let t0 = std::time::Instant::now();
    if !no_setup {
        setup::run(&[])?;
    }
    let obj = ebpf::build(true)?;

    util::section("cargo fmt --check");
    util::run(util::cargo().args(["fmt", "--all", "--check"]))?;
    // The eBPF crate is its own workspace: check its formatting too.
    util::run(
        util::cargo()
            .current_dir(util::repo_root().join("xfrm-ebpf"))
            .args(["fmt", "--all", "--check"]),
    )?;

    util::section("cargo clippy (user-side crates) -D warnings");
    util::run(util::cargo().args([
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))?;

    util::section("cargo test --workspace");
    if !util::is_root() {
        println!(
            "note: not root: the integration tests that need CAP_NET_ADMIN/CAP_BPF will print \
             SKIP and pass; run as root (CI does) to run them"
        );
    }
    let mut totals = run_tests_counted(
        util::cargo()
            .args(["test", "--workspace"])
            .args(extra)
            .env("XFRM_BPF_OBJ", &obj),
    )?;
    // AES-GCM has our VAES backends (512-bit with AVX-512, 256-bit with AVX2) and ring's.
    // Where the CPU has VAES the run above took ours (a unit test asserts which one keys
    // use); the library's unit tests then run again on ring's. A backend this CPU cannot
    // run is named in the summary.
    let vaes = xfrm_user::crypto::cpu_has_vaes();
    if vaes {
        util::section("cargo test -p xfrm-user --lib, AES-GCM without VAES");
        let t = run_tests_counted(
            util::cargo()
                .args(["test", "-p", "xfrm-user", "--lib"])
                .env(xfrm_user::crypto::ENV_NO_VAES, "1"),
        )?;
        totals.passed += t.passed;
        totals.failed += t.failed;
        totals.ignored += t.ignored;
    }
    // Every fuzz target a few seconds: one that stops building or crashes at once is caught
    // here; long runs are `cargo xtask fuzz --seconds N`.
    fuzz::run(
        None,
        FUZZ_SMOKE_SECONDS,
        fuzz::Mode {
            dev: true,
            ..fuzz::Mode::default()
        },
    )?;
    println!("xtask test: all steps passed in {:.0?}", t0.elapsed());
    for (backend, missing) in xfrm_user::crypto::vaes_backends_missing() {
        if !missing.is_empty() {
            println!("{backend} code not run: CPU lacks {}", missing.join(", "));
        }
    }
    // The closing line CI readers look for: the sum over every test binary (the last
    // binary cargo runs is a doc-test one with 0 tests, which alone would read as "no test").
    println!(
        "xtask-test: {} passed, {} failed, {} skipped",
        totals.passed, totals.failed, totals.ignored
    );
    Ok(())
}

#[derive(Default)]
struct TestTotals {
    passed: u64,
    failed: u64,
    ignored: u64,
}

/// Runs `cargo test`, echoing its output, and adds up its `test result:` lines.
fn run_tests_counted(cmd: &mut std::process::Command) -> Result<TestTotals> {
    use std::io::{BufRead, BufReader};
    println!("$ {}", util::show(cmd));
    let mut child = cmd
        .stdout(std::process::Stdio::piped())
        .spawn()
        .context("cannot start cargo test")?;
    let mut totals = TestTotals::default();
    let stdout = child.stdout.take().expect("piped stdout");
    for line in BufReader::new(stdout).lines() {
        let line = line.context("reading cargo test output")?;
        println!("{line}");
        if let Some(rest) = line.strip_prefix("test result: ") {
            let count = |word: &str| -> u64 {
                rest.split(';')
                    .find_map(|part| {
                        part.trim()
                            .strip_suffix(word)?
                            .trim()
                            .rsplit(' ')
                            .next()?
                            .parse()
                            .ok()
                    })
                    .unwrap_or(0)
            };
            totals.passed += count("passed");
            totals.failed += count("failed");
            totals.ignored += count("ignored");
        }
    }
    let status = child.wait().context("waiting for cargo test")?;
    if !status.success() {
        println!(
            "xtask-test: {} passed, {} failed, {} skipped",
            totals.passed,
            totals.failed.max(1),
            totals.ignored
        );
        bail!("cargo test failed ({status})");
    }
    Ok(totals)
}
