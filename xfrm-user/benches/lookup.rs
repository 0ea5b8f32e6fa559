//! What the worker pays per packet to find the SAs of a policy (`XfrmDb::tmpl_resolve`, the
//! kernel's xfrm_tmpl_resolve / xfrm_state_find) as the number of SAs grows: 1, 64, 1024 and
//! 16384 ESP tunnel SAs, each to its own peer (one SA per remote site), the policy naming the
//! last one configured.
//!
//! `cargo bench -p xfrm-user --bench lookup`. After criterion's report, a paired measurement
//! prints per size `tmpl_resolve_ns_<n> indexed=<ns> scan=<ns>` and `ratio_vs_scan_<n>=<x>`:
//! the peer is the same lookup as a scan of every SA (the definition xfrm_state_find's hash
//! table avoids, and what this code did before), in the same run, x = scan / indexed.

use std::hint::black_box;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion};
use xfrm_user::config::parse_config;
use xfrm_user::policy::{Policy, PolicyDir, Template};
use xfrm_user::sa::XfrmMode;
use xfrm_user::selector::FlowKey;
use xfrm_user::xfrm::{spd::XFRM_MAX_DEPTH, XfrmDb};

const SIZES: [usize; 4] = [1, 64, 1024, 16384];

fn peer(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 128 + (i >> 16) as u8, (i >> 8) as u8, i as u8)
}

/// `n` SAs to `n` peers, one out policy whose template names the last of them.
fn db(n: usize) -> XfrmDb {
    let mut text = String::new();
    for i in 0..n {
        text.push_str(&format!(
            "state add src 192.0.2.1 dst {} proto esp spi {} reqid {} mode tunnel \
             aead 'rfc4106(gcm(aes))' 0x{}01020304 128\n",
            peer(i),
            0x1000 + i,
            i + 1,
            "42".repeat(16),
        ));
    }
    text.push_str(&format!(
        "policy add src 10.1.0.0/16 dst 10.2.0.0/16 dir out tmpl src 192.0.2.1 dst {} \
         proto esp reqid {n} mode tunnel\n",
        peer(n - 1)
    ));
    let cfg = parse_config(&text, "bench").expect("valid config");
    XfrmDb::new(cfg.states, cfg.policies).expect("valid database")
}

fn flow() -> FlowKey {
    FlowKey {
        src: "10.1.0.1".parse().unwrap(),
        dst: "10.2.0.1".parse().unwrap(),
        proto: 17,
        sport: 4000,
        dport: 5000,
    }
}

fn indexed(db: &XfrmDb, pol: &Policy, f: &FlowKey) -> usize {
    let mut out = [None; XFRM_MAX_DEPTH];
    db.tmpl_resolve(pol, f, &mut out).unwrap_or(0)
}

/// The scan: every SA checked against the template (tunnel mode, no source pinned).
fn scan(db: &XfrmDb, t: &Template) -> usize {
    let mut found = None;
    for x in db.states() {
        let c = &x.cfg;
        if c.id.daddr == t.dst
            && c.id.proto == t.proto
            && c.mode == XfrmMode::Tunnel
            && c.reqid == t.reqid
            && t.spi.is_none_or(|s| s == c.id.spi)
            && t.src.is_none_or(|s| s == c.saddr)
            && x.is_valid()
        {
            found = Some(x.index);
        }
    }
    usize::from(found.is_some())
}

/// Median ns per lookup over `rounds` alternating bursts of `k` lookups each.
fn paired(db: &XfrmDb) -> (f64, f64) {
    let pol = &db.policies(PolicyDir::Out)[0];
    let t = pol.templates[0];
    let f = flow();
    let k = 256;
    let (mut a, mut b) = (Vec::new(), Vec::new());
    let end = Instant::now() + Duration::from_secs(2);
    while Instant::now() < end && a.len() < 2000 {
        let s = Instant::now();
        for _ in 0..k {
            black_box(indexed(db, black_box(pol), black_box(&f)));
        }
        a.push(s.elapsed().as_nanos() as f64 / k as f64);
        let s = Instant::now();
        for _ in 0..k {
            black_box(scan(db, black_box(&t)));
        }
        b.push(s.elapsed().as_nanos() as f64 / k as f64);
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    (median(&mut a), median(&mut b))
}

fn main() {
    let mut c = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(1))
        .configure_from_args();
    let dbs: Vec<(usize, XfrmDb)> = SIZES.iter().map(|&n| (n, db(n))).collect();
    {
        let mut g = c.benchmark_group("tmpl_resolve");
        for (n, db) in &dbs {
            let pol = &db.policies(PolicyDir::Out)[0];
            assert_eq!(indexed(db, pol, &flow()), 1, "the template finds its SA");
            g.bench_function(BenchmarkId::new("indexed", n), |b| {
                b.iter(|| indexed(db, black_box(pol), black_box(&flow())))
            });
        }
        g.finish();
    }
    c.final_summary();
    let args: Vec<String> = std::env::args().collect();
    if !args.iter().any(|a| a == "--bench") || args.iter().any(|a| a == "--profile-time") {
        return;
    }
    for (n, db) in &dbs {
        assert_eq!(scan(db, &db.policies(PolicyDir::Out)[0].templates[0]), 1);
        let (ours, peer) = paired(db);
        println!("tmpl_resolve_ns_{n} indexed={ours:.1} scan={peer:.1}");
        println!("ratio_vs_scan_{n}={:.2}", peer / ours);
    }
}
