//! `cargo xtask bench --gateway`'s harness, run for a second per iperf3 run so that it cannot
//! rot unnoticed: every route (kernel forwarding with and without offloads, the null
//! transform, ESP on one and two queues, ESP with 65 536 SAs and 1 024 policies per
//! direction loaded) comes up and carries TCP and UDP, the workers forward both ways where a
//! daemon runs (`gwbench::run` checks their counters, and that each daemon loaded the SAs
//! and policies of its route), and the summary has its lines. With `--perf` (on here) each
//! TCP run through a daemon is recorded by `perf record -a -g` and the summary names the
//! workers' threads. It measures nothing: no figure is compared with a speed.

use std::time::Instant;

use xfrm_tests::{
    bpf_object,
    daemon::xfrm_user_bin,
    gwbench::{self, Load, Options, Route},
    init_logging, root_or_skip,
};

#[test]
fn gateway_bench_harness_runs_every_route() {
    if !root_or_skip("gateway_bench_harness_runs_every_route") {
        return;
    }
    init_logging();
    let t0 = Instant::now();
    let profiles = tempfile::tempdir().unwrap();
    let opts = Options {
        routes: Route::ALL.to_vec(),
        loads: vec![Load::Tcp { streams: 1 }, Load::Udp { len: 64 }],
        secs: 1,
        bin: xfrm_user_bin(),
        bpf: bpf_object(),
        rounds: 1,
        perf: Some(profiles.path().to_path_buf()),
    };
    let mut lines = Vec::new();
    let rep = gwbench::run(&opts, &mut |l| {
        eprintln!("{l}");
        lines.push(l.to_string());
    })
    .unwrap();
    // One profile per route through a daemon, each finding the workers' threads.
    let daemon_routes = Route::ALL.iter().filter(|r| r.runs_daemon()).count();
    let profiles_seen = lines
        .iter()
        .filter(|l| l.contains("perf record -a -g") && l.contains("xfrm-worker-0"))
        .count();
    assert_eq!(profiles_seen, daemon_routes, "perf summaries: {lines:#?}");
    assert_eq!(rep.figures.len(), Route::ALL.len() * opts.loads.len());
    for f in &rep.figures {
        assert!(f.mbit_s > 0.0, "no traffic: {f:?}");
        assert_eq!(f.udp.is_some(), matches!(f.load, Load::Udp { .. }), "{f:?}");
        // The daemon's CPU per packet exactly where a daemon ran.
        let daemon = !matches!(f.route, Route::KernelOffloadsOn | Route::KernelOffloadsOff);
        assert_eq!(f.cpu_ns_per_packet.is_some(), daemon, "{f:?}");
    }
    let summary = rep.summary();
    for name in [
        "esp_vs_null",
        "esp_vs_kernel_offloads_off",
        "queues2_vs_1",
        "64k_sas_vs_1_sa",
    ] {
        for load in ["tcp1", "udp64"] {
            let key = format!("ratio_{name}_{load}=");
            assert!(
                summary.iter().any(|l| l.starts_with(&key)),
                "{key} missing: {summary:?}"
            );
        }
    }
    eprintln!("{}", rep.table());
    eprintln!(
        "TIME gateway_bench_harness_runs_every_route {:.1?}",
        t0.elapsed()
    );
}
