//! `cargo xtask bench --gateway`: the live gateway against its ceilings, in one run
//! (`xfrm_tests::gwbench` builds the topologies and runs iperf3). Prints each figure as it
//! comes, then the table, the command behind each figure, and the `ratio_*=` lines.

use anyhow::{bail, Result};
use xfrm_tests::gwbench::{self, Load, Options, Route};

use std::path::PathBuf;
use std::process::Command;

use crate::{ebpf, setup, util};

/// The routes `--routes` names by letter (none: all), in the bench's order.
fn routes(letters: &[char]) -> Result<Vec<Route>> {
    if let Some(c) = letters.iter().find(|c| !"abcde".contains(**c)) {
        bail!("--routes: unknown route `{c}`: expected letters of a, b, c, d, e");
    }
    Ok(Route::ALL
        .into_iter()
        .filter(|r| letters.is_empty() || letters.contains(&r.label().as_bytes()[1].into()))
        .collect())
}

/// `bin`: the `xfrm-user` to run (None: the one this tree builds). `XFRM_GCM_NO_VAES=1` in
/// the environment reaches the daemons and makes them use the AES-NI/AVX2 backend.
pub fn gateway(
    secs: u32,
    bin: Option<PathBuf>,
    bpf: Option<PathBuf>,
    letters: &[char],
    rounds: u32,
    perf: Option<PathBuf>,
) -> Result<()> {
    if !util::is_root() {
        bail!("`cargo xtask bench --gateway` needs root: network namespaces, XDP, AF_XDP");
    }
    let routes = routes(letters)?;
    if let Some(dir) = &perf {
        std::fs::create_dir_all(dir)?;
        if Command::new("perf").arg("--version").output().is_err() {
            bail!("--perf needs perf (Debian's linux-perf: apt-get install linux-perf)");
        }
    }
    setup::run(&[])?;
    let bpf = match bpf {
        Some(b) => b,
        None => ebpf::build(true)?,
    };
    let bin = match bin {
        Some(b) => b,
        None => util::build_xfrm_user_release()?,
    };
    let gcm = if std::env::var_os("XFRM_GCM_NO_VAES").is_some() {
        "AES-NI/AVX2 (XFRM_GCM_NO_VAES)"
    } else {
        "the CPU's best (VAES where present)"
    };
    println!(
        "xfrm-user: {}; eBPF: {}; AES-GCM backend: {gcm}",
        bin.display(),
        bpf.display()
    );
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    util::section(&format!(
        "gateway bench: iperf3 host-a -> host-b, {secs} s per run, {cpus} CPUs"
    ));
    let opts = Options {
        routes,
        loads: Load::ALL.to_vec(),
        secs,
        bin,
        bpf,
        rounds: rounds.max(1),
        perf,
    };
    let rep = gwbench::run(&opts, &mut |l| println!("{l}"))?;
    util::section("gateway bench: table");
    print!("{}", rep.table());
    util::section("gateway bench: the commands");
    println!(
        "$ cargo xtask bench --gateway --secs {secs} --rounds {}",
        rounds.max(1)
    );
    print!("{}", rep.commands());
    util::section("gateway bench summary");
    for l in rep.summary() {
        println!("{l}");
    }
    Ok(())
}
