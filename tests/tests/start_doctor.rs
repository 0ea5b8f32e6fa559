//! What the datapath needs from the kernel, asked before and at start:
//!
//! - `xfrm-user doctor` on two veths says every probe it makes and that `run` will work
//!   (exit 0); on a bridge (no native XDP) with `--xdp-mode native` it says why not (exit 1);
//! - a `run` that cannot attach (native XDP on a bridge) fails with one message naming the
//!   program, the interface and what to try, exits non-zero, and leaves every interface as it
//!   was: nothing of ours half-attached, a previous daemon's program put back.
//!
//!   ns "gw": [a] ──veth── [b], and a bridge "bridge0" (up, no ports)

use std::process::Output;

use xfrm_tests::{
    bpf_object,
    daemon::{xdp_line, xfrm_user_bin},
    init_logging, root_or_skip,
    topology::{Netns, Topology, VethOpts},
};
use xfrm_user::datapath::{loader::Program, AttachMode, Datapath};

const CONFIG: &str = "\
state add src 10.2.0.1 dst 10.2.0.2 proto esp spi 0x2001 reqid 3 mode tunnel \
aead 'rfc4106(gcm(aes))' 0x2122232425262728292a2b2c2d2e2f30deadbeef 128
policy add src 10.1.0.0/24 dst 10.2.0.0/24 dir out \
tmpl src 10.2.0.1 dst 10.2.0.2 proto esp reqid 3 mode tunnel
";

fn xfrm_user(ns: &Netns, args: &[&str]) -> Output {
    let bin = xfrm_user_bin();
    let obj = bpf_object();
    let mut c = ns.command(bin.to_str().unwrap());
    c.args(args).env("XFRM_BPF_OBJ", obj);
    c.output().expect("start xfrm-user")
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn xdp_of(ns: &Netns, ifname: &str) -> Option<String> {
    let out = ns.ip(&["-d", "link", "show", "dev", ifname]).unwrap();
    xdp_line(&String::from_utf8_lossy(&out.stdout))
}

fn gateway() -> (Topology, usize, String, String) {
    let mut t = Topology::new().unwrap();
    let gw = t.add_netns("gw").unwrap();
    let peer = t.add_netns("peer").unwrap();
    let l1 = t.add_veth(gw, peer, VethOpts::default()).unwrap();
    let l2 = t.add_veth(gw, peer, VethOpts::default()).unwrap();
    t.ns(gw)
        .ip(&["link", "add", "bridge0", "type", "bridge"])
        .unwrap();
    t.ns(gw).ip(&["link", "set", "bridge0", "up"]).unwrap();
    (t, gw, l1.a.ifname.clone(), l2.a.ifname.clone())
}

#[test]
fn doctor_says_what_works_and_what_does_not() {
    if !root_or_skip("doctor_says_what_works_and_what_does_not") {
        return;
    }
    init_logging();
    let (t, gw, a, b) = gateway();
    let ns = t.ns(gw);
    let ok = xfrm_user(ns, &["doctor", "--inside", &a, "--outside", &b]);
    let out = text(&ok);
    println!("{out}");
    assert!(ok.status.success(), "doctor on two veths: {out}");
    for row in [
        "bpf_xdp_adjust_head",
        "bpf_redirect_map",
        "bpf_fib_lookup",
        "bpf_loop",
        "bpf_redirect (TC)",
        "xfrm_classify",
        "xfrm_outside",
        "native XDP",
        "generic (skb) XDP",
        "AF_XDP copy",
        "TAP device",
    ] {
        let line = out
            .lines()
            .find(|l| l.contains(row))
            .unwrap_or_else(|| panic!("no row {row}: {out}"));
        assert!(line.contains(" yes "), "{row} not available: {line}");
    }
    assert!(
        out.contains("verdict: run will work here") && out.contains("--xdp-mode native"),
        "{out}"
    );
    // The probes leave nothing behind.
    assert_eq!(xdp_of(ns, &a), None);
    assert_eq!(xdp_of(ns, &b), None);

    let bad = xfrm_user(
        ns,
        &[
            "doctor",
            "--inside",
            &a,
            "--outside",
            "bridge0",
            "--xdp-mode",
            "native",
        ],
    );
    let out = text(&bad);
    println!("{out}");
    assert_eq!(bad.status.code(), Some(1), "{out}");
    let native = out
        .lines()
        .find(|l| l.starts_with("outside") && l.contains("native XDP"))
        .unwrap_or_else(|| panic!("no native row for bridge0: {out}"));
    assert!(native.contains(" no "), "{native}");
    assert!(
        out.contains("run will NOT work here") && out.contains("use --xdp-mode skb"),
        "{out}"
    );
}

#[test]
fn a_failed_attach_says_why_and_leaves_nothing_half_attached() {
    if !root_or_skip("a_failed_attach_says_why_and_leaves_nothing_half_attached") {
        return;
    }
    init_logging();
    let (t, gw, a, _b) = gateway();
    let ns = t.ns(gw);
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("gw.conf");
    xfrm_user::keyfile::write_private(&conf, CONFIG).unwrap();
    let state = dir.path().join("gw.state");
    let run = |inside: &str| {
        xfrm_user(
            ns,
            &[
                "run",
                "--config",
                conf.to_str().unwrap(),
                "--inside",
                inside,
                "--outside",
                "bridge0",
                "--xdp-mode",
                "native",
                "--state",
                state.to_str().unwrap(),
                "--duration",
                "1",
            ],
        )
    };

    // A fresh interface: the inside program was attached, then the outside refused; it is
    // taken off again.
    let o = run(&a);
    let out = text(&o);
    println!("{out}");
    assert!(!o.status.success(), "run must fail: {out}");
    let msg = out
        .lines()
        .find(|l| l.starts_with("xfrm-user: "))
        .unwrap_or_else(|| panic!("no error line: {out}"));
    for word in ["xfrm_outside", "bridge0", "native", "--xdp-mode skb"] {
        assert!(msg.contains(word), "`{word}` missing from: {msg}");
    }
    assert_eq!(xdp_of(ns, &a), None, "inside left attached");
    assert_eq!(xdp_of(ns, "bridge0"), None, "outside left attached");
    let tc = ns
        .exec("tc", &["filter", "show", "dev", "bridge0", "egress"])
        .unwrap();
    assert!(tc.stdout.is_empty(), "a TC filter was left on bridge0");

    // An interface that had a program (a previous daemon's): the failed start puts it back.
    ns.run(|| {
        let mut dp = Datapath::load(&bpf_object())?;
        dp.attach_persistent(Program::Pass, &a, AttachMode::Native)
    })
    .unwrap();
    let had = xdp_of(ns, &a).expect("the previous program is attached");
    let o = run(&a);
    assert!(!o.status.success(), "run must fail: {}", text(&o));
    assert_eq!(
        xdp_of(ns, &a).as_deref(),
        Some(had.as_str()),
        "the previous program must be back on {a}"
    );
    ns.ip(&["link", "set", "dev", &a, "xdp", "off"]).unwrap();
}
