//! `cargo xtask bench --gateway`: the live gateway against its ceilings, in one run
//! (`xfrm_tests::gwbench` builds the topologies and runs iperf3). Prints each figure as it
//! comes, then the table, the command behind each figure, and the `ratio_*=` lines.

use anyhow::{bail, Result};
use xfrm_tests::gwbench::{self, Load, Options, Route};

use crate::{ebpf, setup, util};

pub fn gateway(secs: u32) -> Result<()> {
    if !util::is_root() {
        bail!("`cargo xtask bench --gateway` needs root: network namespaces, XDP, AF_XDP");
    }
    setup::run(&[])?;
    let bpf = ebpf::build(true)?;
    let bin = util::build_xfrm_user_release()?;
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    util::section(&format!(
        "gateway bench: iperf3 host-a -> host-b, {secs} s per run, {cpus} CPUs"
    ));
    let opts = Options {
        routes: Route::ALL.to_vec(),
        loads: Load::ALL.to_vec(),
        secs,
        bin,
        bpf,
    };
    let rep = gwbench::run(&opts, &mut |l| println!("{l}"))?;
    util::section("gateway bench: table");
    print!("{}", rep.table());
    util::section("gateway bench: the commands");
    println!("$ cargo xtask bench --gateway --secs {secs}");
    print!("{}", rep.commands());
    util::section("gateway bench summary");
    for l in rep.summary() {
        println!("{l}");
    }
    Ok(())
}
