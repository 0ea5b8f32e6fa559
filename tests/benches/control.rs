//! What the control plane costs: requests per second for `state add` and `state delete`
//! with 10 000 SAs installed (each answered only once live in the workers and the XDP maps),
//! and the gateway's TCP throughput while a burst of such changes runs, against the same
//! transfer without changes (the peer figure; the ratio is during / without).
//!
//! `cargo bench -p xfrm-tests --bench control` (root: namespaces, XDP, AF_XDP; set
//! XFRM_BPF_OBJ). A figure, not a test: nothing here asserts a time.

use std::{
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use xfrm_tests::{
    gateway::{Case, Endpoints, Family, GatewayNet, Mode, NetOpts, SaSpec, Side, GCM128},
    peer::stream_of,
    scenario::{start_gateway, transfer_deadline, wait_path},
    traffic::{expected_sha256, tcp_transfer},
};
use xfrm_user::ctl::{client::Client, render::Show};

/// SAs installed before measuring.
const INSTALLED: u32 = 10_000;
/// Requests measured of each kind.
const MEASURED: u32 = 2_000;
const TRANSFER: u64 = 64 << 20;

fn add(dst: &str, spi: u32) -> String {
    format!(
        "state add src 10.2.0.1 dst {dst} proto esp spi {spi:#x} reqid 4000 mode tunnel \
         aead 'rfc4106(gcm(aes))' 0x0102030405060708090a0b0c0d0e0f1011121314 128"
    )
}

fn delete(dst: &str, spi: u32) -> String {
    format!("state delete dst {dst} proto esp spi {spi:#x}")
}

/// `n` requests made by `req(i)` on `c`; requests per second.
fn rate(c: &mut Client, n: u32, req: impl Fn(u32) -> String) -> f64 {
    let t = Instant::now();
    for i in 0..n {
        if let Err(e) = c.request(Show::default(), &req(i)) {
            panic!("request {}: {e}", req(i));
        }
    }
    f64::from(n) / t.elapsed().as_secs_f64()
}

/// A 64 MiB transfer A -> B, checked whole; MiB/s.
fn transfer(net: &GatewayNet, case: &Case, port: u16) -> f64 {
    let r = tcp_transfer(
        net.topo.ns(case.traffic_ns(net, Side::A)),
        net.topo.ns(case.traffic_ns(net, Side::B)),
        case.traffic_addr(net, Side::B),
        port,
        stream_of(Side::A),
        TRANSFER,
        transfer_deadline(TRANSFER),
    )
    .expect("transfer");
    assert!(
        r.sent == r.received && r.received.sha256 == expected_sha256(stream_of(Side::A), TRANSFER),
        "transfer not intact: {r}"
    );
    TRANSFER as f64 / (1 << 20) as f64 / r.elapsed.as_secs_f64()
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    if !xfrm_tests::root_or_skip("control bench") {
        return;
    }
    xfrm_tests::daemon::xfrm_user_bin();
    let case = Case::new("ctl-bench", Endpoints::Hosts, Family::V4, Family::V4)
        .sa(SaSpec::new(Mode::Tunnel, GCM128));
    let net = GatewayNet::new(NetOpts::default()).expect("topology");
    let mut a = start_gateway(&net, &case, Side::A).expect("gw-a");
    let mut b = start_gateway(&net, &case, Side::B).expect("gw-b");
    a.wait_ctl(Duration::from_secs(30))
        .expect("gw-a control socket");
    wait_path(&net, &case, &mut || {
        a.check_alive()?;
        b.check_alive()
    })
    .expect("path");
    let mut c = Client::connect(&a.ctl_path()).expect("connect");
    // SAs to a destination no template names: installed, never used.
    let dst = "192.0.2.77";
    let t = Instant::now();
    let install = rate(&mut c, INSTALLED, |i| add(dst, 0x10_0000 + i));
    println!(
        "installed {INSTALLED} SAs in {:.1?} ({install:.0} requests/s while growing)",
        t.elapsed()
    );
    let adds = rate(&mut c, MEASURED, |i| add(dst, 0x20_0000 + i));
    let dels = rate(&mut c, MEASURED, |i| delete(dst, 0x20_0000 + i));
    println!("ctl_add_per_s={adds:.0} (state add, {INSTALLED} SAs installed)");
    println!("ctl_delete_per_s={dels:.0} (state delete, {INSTALLED} SAs installed)");

    let quiet = transfer(&net, &case, 5801);
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let burst = {
        let (stop, done, path) = (stop.clone(), done.clone(), a.ctl_path());
        std::thread::spawn(move || {
            let mut c = Client::connect(&path).expect("connect");
            let mut i = 0u32;
            while !stop.load(Ordering::Relaxed) {
                let spi = 0x30_0000 + i;
                c.request(Show::default(), &add(dst, spi)).expect("add");
                c.request(Show::default(), &delete(dst, spi))
                    .expect("delete");
                done.fetch_add(2, Ordering::Relaxed);
                i += 1;
            }
        })
    };
    let t = Instant::now();
    let busy = transfer(&net, &case, 5802);
    let secs = t.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    burst.join().expect("burst");
    let n = done.load(Ordering::Relaxed);
    println!("transfer without changes (peer): {quiet:.1} MiB/s");
    println!(
        "transfer during a burst of {n} changes ({:.0}/s): {busy:.1} MiB/s",
        n as f64 / secs
    );
    println!("ratio_throughput_during_changes={:.2}", busy / quiet);
    for d in [a, b] {
        let st = d.stop();
        assert!(st.success(), "stop: {st}");
    }
}
