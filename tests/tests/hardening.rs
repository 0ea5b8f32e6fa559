//! Hardening of `xfrm-user run` and the CLIs (docs/security.md), on the fail-closed test's
//! topology:
//!
//!   ns "h1" [a] ──veth 1── [b] ns "gw" (ip_forward=1) [a] ──veth 2── [b] ns "h2"
//!
//! UDP 10.1.0.0/24 → 10.2.0.0/24 is protected (ESP tunnel to h2, which takes the ESP on a
//! raw socket). A config file that others may read is refused by `run`; at 0600 the daemon
//! runs with CAP_NET_ADMIN alone in every thread (permitted, effective, bounding), nothing
//! inheritable or ambient, no_new_privs, not dumpable; with its neighbour cache flushed it
//! still resolves the next hop (the one thing it keeps CAP_NET_ADMIN for) and protects; after
//! `kill -9` a new daemon takes over, and one with `--user nobody` does the same as uid
//! 65534. Everything the daemons and the CLIs print at
//! `-vvv`/`RUST_LOG=trace`, errors on key lines included, holds no key in any form.

use std::{
    net::{SocketAddr, UdpSocket},
    os::unix::fs::{MetadataExt, PermissionsExt},
    path::Path,
    process::Command,
    time::{Duration, Instant, SystemTime},
};

use xfrm_tests::{
    bpf_object,
    capture::{write_pcap, Frame},
    daemon::xfrm_user_bin,
    init_logging,
    packet::FrameSpec,
    probe::{ping_once as ping, Line, Receiver},
    root_or_skip,
    topology::{Netns, Proc},
};
use xfrm_user::datapath::privs;

/// The ESP SA's key (16-byte AES key + 4-byte salt) and an AH SA's HMAC key: bytes nothing
/// else prints.
const ESP_KEY: [u8; 20] = [
    0x6b, 0x3f, 0xa9, 0x12, 0xc4, 0x7e, 0x58, 0xd1, 0x0f, 0xe2, 0x93, 0x4a, 0xb6, 0x2c, 0x71, 0xd8,
    0x5e, 0x39, 0xa4, 0xc7,
];
const AH_KEY: [u8; 32] = [
    0xe1, 0x4c, 0x97, 0x2b, 0x6a, 0xf0, 0x35, 0xd9, 0x8e, 0x13, 0xc6, 0x7b, 0x52, 0xad, 0x09, 0xf4,
    0x61, 0xb8, 0x2d, 0x93, 0xce, 0x47, 0x1a, 0xe5, 0x7c, 0x30, 0x9f, 0xb2, 0x56, 0xeb, 0x18, 0x8d,
];

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn config() -> String {
    format!(
        "ip xfrm state add src 10.2.0.1 dst 10.2.0.2 proto esp spi 0x2001 reqid 3 mode tunnel \
         aead 'rfc4106(gcm(aes))' 0x{} 128\n\
         ip xfrm state add src 10.2.0.2 dst 10.2.0.1 proto ah spi 0x3001 reqid 4 mode transport \
         auth 'hmac(sha256)' 0x{}\n\
         ip xfrm policy add src 10.1.0.0/24 dst 10.2.0.0/24 proto udp dir out \
         tmpl src 10.2.0.1 dst 10.2.0.2 proto esp reqid 3 mode tunnel\n",
        hex(&ESP_KEY),
        hex(&AH_KEY)
    )
}

/// Every form a key could be printed in, 8 bytes at a time: hex in both cases (with and
/// without separators), the raw bytes, and Rust's `{:?}` of a byte slice (decimal, hex).
fn needles(key: &[u8]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for w in key.windows(8) {
        let h = hex(w);
        out.push(h.clone().into_bytes());
        out.push(h.to_uppercase().into_bytes());
        let sep: Vec<String> = w.iter().map(|b| format!("{b:02x}")).collect();
        out.push(sep.join(":").into_bytes());
        out.push(sep.join(" ").into_bytes());
        out.push(w.to_vec());
        out.push(
            format!("{w:?}")
                .trim_matches(['[', ']'])
                .as_bytes()
                .to_vec(),
        );
        out.push(
            format!("{w:x?}")
                .trim_matches(['[', ']'])
                .as_bytes()
                .to_vec(),
        );
    }
    out
}

/// Which key shows in `text`, and in what form.
fn find_key(text: &[u8]) -> Option<String> {
    for (name, key) in [("ESP", &ESP_KEY[..]), ("AH", &AH_KEY[..])] {
        for n in needles(key) {
            if text.windows(n.len()).any(|w| w == n.as_slice()) {
                return Some(format!(
                    "the {name} key as {:?}",
                    String::from_utf8_lossy(&n)
                ));
            }
        }
    }
    None
}

/// `xfrm-user run` in `ns` at the highest verbosity.
fn start(
    ns: &Netns,
    label: &str,
    bin: &Path,
    (conf, state): (&Path, &Path),
    ifs: &[&str],
    extra: &[&str],
) -> Proc {
    let mut cmd = ns.command(bin.to_str().unwrap());
    cmd.args(["-vvv", "run"])
        .args(extra)
        .arg("--config")
        .arg(conf)
        .arg("--state")
        .arg(state)
        .args(["--inside", ifs[0], "--outside", ifs[1], "--interval", "1"])
        .arg("--bpf")
        .arg(bpf_object())
        .env("RUST_LOG", "trace");
    Proc::spawn(label, cmd).unwrap()
}

/// `Name:\tvalue` of a /proc status file.
fn field<'a>(status: &'a str, name: &str) -> &'a str {
    status
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
        .unwrap_or_else(|| panic!("no {name} in:\n{status}"))
        .trim()
}

/// Every thread of `pid` holds the documented set and nothing else, with no_new_privs.
fn assert_least_privilege(pid: u32) {
    let kept = format!("{:016x}", privs::kept_mask());
    let mut threads = 0;
    for t in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let path = t.unwrap().path().join("status");
        let Ok(s) = std::fs::read_to_string(&path) else {
            continue; // a thread that just ended
        };
        let got: Vec<(&str, &str)> = ["CapEff", "CapPrm", "CapBnd", "CapInh", "CapAmb"]
            .into_iter()
            .map(|f| (f, field(&s, f)))
            .chain([("NoNewPrivs", field(&s, "NoNewPrivs"))])
            .collect();
        assert_eq!(
            got,
            [
                ("CapEff", kept.as_str()),
                ("CapPrm", kept.as_str()),
                ("CapBnd", kept.as_str()),
                ("CapInh", "0000000000000000"),
                ("CapAmb", "0000000000000000"),
                ("NoNewPrivs", "1"),
            ],
            "{} ({})",
            path.display(),
            field(&s, "Name")
        );
        threads += 1;
    }
    // The control thread and at least one worker.
    assert!(threads >= 2, "{threads} thread(s) of {pid}");
}

/// Whether a root process without CAP_SYS_PTRACE may open /proc/PID/mem. For a process of
/// the same uid whose permitted capabilities it holds (commoncap's check), that is exactly
/// the dumpable flag (ptrace_may_access: a non-dumpable process needs CAP_SYS_PTRACE), so
/// this reads the flag from outside the process.
fn mem_opens_without_ptrace_cap(pid: u32) -> bool {
    let o = Command::new("setpriv")
        .args(["--bounding-set", "-sys_ptrace", "--inh-caps", "-all"])
        .args(["head", "-c0", &format!("/proc/{pid}/mem")])
        .output()
        .expect("setpriv (util-linux)");
    o.status.success()
}

/// Flushes the gateway's neighbour cache: the daemon must have the kernel resolve h2 again
/// (RTM_NEWNEIGH with NTF_USE, what CAP_NET_ADMIN is kept for), then protect all.
fn flush_neighbours_and_probe(
    gw: &Netns,
    outside: &str,
    rx: &Receiver,
    sender: &UdpSocket,
    to: SocketAddr,
    d: &Proc,
) {
    gw.ip(&["neigh", "flush", "dev", outside]).unwrap();
    // Until a whole probe arrives (the worker's cache may still hold the flushed entry for
    // the first packets, then drops while the kernel resolves), at most 10 s.
    let end = Instant::now() + Duration::from_secs(10);
    loop {
        let (clear, esp) = rx.probe(sender, to, 10);
        assert_eq!(clear, 0, "in clear after the flush");
        if esp == 10 {
            return;
        }
        assert!(
            Instant::now() < end,
            "not all protected 10 s after the neighbour flush:\n{}",
            d.log()
        );
    }
}

/// `xfrm-user -vvv ARGS` with RUST_LOG=trace in `ns` (or here): (exit code, stdout+stderr).
fn cli(ns: Option<&Netns>, bin: &Path, args: &[&str]) -> (Option<i32>, Vec<u8>) {
    let mut cmd = match ns {
        Some(ns) => ns.command(bin.to_str().unwrap()),
        None => Command::new(bin),
    };
    let o = cmd
        .arg("-vvv")
        .args(args)
        .env("RUST_LOG", "trace")
        .output()
        .unwrap();
    let mut text = o.stdout;
    text.extend_from_slice(&o.stderr);
    (o.status.code(), text)
}

#[test]
fn run_keeps_least_privilege_and_no_output_shows_a_key() {
    if !root_or_skip("run_keeps_least_privilege_and_no_output_shows_a_key") {
        return;
    }
    init_logging();
    let bin = xfrm_user_bin();
    let line = Line::new().unwrap();
    let (t, rx, sender, to) = (&line.t, &line.rx, &line.sender, line.to);
    let (h1, gw) = (line.h1, line.gw);
    let (inside, outside) = (&line.l1.b.ifname, &line.l2.a.ifname);
    let ifs = [inside.as_str(), outside.as_str()];
    let h2_addr = line.l2.b.ipv4.to_string();
    let dir = tempfile::tempdir().unwrap();
    let (conf, state) = (dir.path().join("gw.conf"), dir.path().join("gw.state"));
    xfrm_user::keyfile::write_private(&conf, config()).unwrap();
    let within = Duration::from_secs(20);
    // Everything printed, checked for keys at the end.
    let mut printed: Vec<(String, Vec<u8>)> = Vec::new();

    // A key file others can read: refused before anything is set up.
    let run_args = |c: &Path| -> Vec<String> {
        let mut a: Vec<String> = ["run", "--config"].map(String::from).to_vec();
        a.push(c.display().to_string());
        a.extend(["--state".to_string(), state.display().to_string()]);
        a.extend(["--inside", ifs[0], "--outside", ifs[1], "--duration", "1"].map(String::from));
        a
    };
    for mode in [0o644, 0o640] {
        std::fs::set_permissions(&conf, std::fs::Permissions::from_mode(mode)).unwrap();
        let args = run_args(&conf);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let (code, text) = cli(Some(t.ns(gw)), &bin, &args);
        let want = format!(
            "{c}: mode {mode:04o} gives group or others access to a file that holds keys; run \
             `chmod 600 {c}` (only its owner may read it)",
            c = conf.display()
        );
        let s = String::from_utf8_lossy(&text);
        assert_eq!(code, Some(1), "{s}");
        assert!(s.contains(&want), "{s}");
        assert!(!state.exists(), "refused before the state file");
        assert!(
            !xfrm_tests::daemon::xdp_attached(t.ns(gw), inside).unwrap(),
            "refused before attaching"
        );
        printed.push((format!("run with a {mode:o} config"), text));
    }
    std::fs::set_permissions(&conf, std::fs::Permissions::from_mode(0o600)).unwrap();

    let files = (conf.as_path(), state.as_path());
    let mut d1 = start(t.ns(gw), "gw-1", &bin, files, &ifs, &[]);
    rx.wait_protected(sender, to, &mut d1, within);
    let pid1 = d1.pid().unwrap();
    assert_least_privilege(pid1);
    // Not dumpable, told apart from a dumpable root process (the control, without
    // CAP_SYS_PTRACE itself, as the probe) by the same probe.
    let mut control = Command::new("setpriv")
        .args(["--bounding-set", "-sys_ptrace", "sleep", "30"])
        .spawn()
        .unwrap();
    // Once it is `sleep` (setpriv itself still holds every capability).
    let comm = format!("/proc/{}/comm", control.id());
    let end = Instant::now() + Duration::from_secs(5);
    while std::fs::read_to_string(&comm).unwrap_or_default().trim() != "sleep" {
        assert!(Instant::now() < end, "control: sleep did not start");
        std::thread::sleep(Duration::from_millis(10));
    }
    let control_opens = mem_opens_without_ptrace_cap(control.id());
    let _ = control.kill();
    let _ = control.wait();
    assert!(control_opens, "control: a dumpable root process");
    assert!(
        !mem_opens_without_ptrace_cap(pid1),
        "the daemon is dumpable"
    );

    let (clear, esp) = rx.probe(sender, to, 10);
    assert_eq!((clear, esp), (0, 10), "daemon 1: all protected");
    flush_neighbours_and_probe(t.ns(gw), outside, rx, sender, to, &d1);
    assert!(ping(t.ns(h1), &h2_addr), "unprotected traffic passes");
    let max1 = rx.take_seqs().into_iter().max().unwrap();

    // kill -9 and a new daemon: it takes over, with the same privileges.
    d1.kill9();
    printed.push(("daemon 1".into(), d1.log().into_bytes()));
    let mut d2 = start(t.ns(gw), "gw-2", &bin, files, &ifs, &[]);
    rx.wait_protected(sender, to, &mut d2, within);
    assert_least_privilege(d2.pid().unwrap());
    let (clear, esp) = rx.probe(sender, to, 10);
    assert_eq!((clear, esp), (0, 10), "daemon 2: all protected");
    let min2 = rx.take_seqs().into_iter().min().unwrap();
    assert!(min2 > max1, "daemon 2 sent seq {min2} after {max1}");
    let st = d2.stop(libc::SIGTERM, Duration::from_secs(10));
    assert!(st.success(), "SIGTERM: {st}\n{}", d2.log());
    printed.push(("daemon 2".into(), d2.log().into_bytes()));

    // --user nobody: the same, under uid 65534. Its /proc files stay root's (a dumpable
    // process's belong to its uid: the flag seen from outside again).
    let mut d3 = start(t.ns(gw), "gw-3", &bin, files, &ifs, &["--user", "nobody"]);
    rx.wait_protected(sender, to, &mut d3, within);
    let pid3 = d3.pid().unwrap();
    assert_least_privilege(pid3);
    let status = std::fs::read_to_string(format!("/proc/{pid3}/status")).unwrap();
    let ids = |f| field(&status, f).split_whitespace().collect::<Vec<_>>();
    assert_eq!(ids("Uid"), ["65534"; 4], "uid");
    assert_eq!(ids("Groups"), Vec::<&str>::new(), "no supplementary groups");
    let nobody_gid = privs::lookup_user("nobody").unwrap().1.to_string();
    assert_eq!(ids("Gid"), [nobody_gid.as_str(); 4], "gid");
    let owner = std::fs::metadata(format!("/proc/{pid3}/status"))
        .unwrap()
        .uid();
    assert_eq!(owner, 0, "/proc/{pid3} belongs to uid {owner}: dumpable");
    flush_neighbours_and_probe(t.ns(gw), outside, rx, sender, to, &d3);
    let st = d3.stop(libc::SIGTERM, Duration::from_secs(10));
    assert!(st.success(), "SIGTERM: {st}\n{}", d3.log());
    assert!(
        xfrm_tests::daemon::xdp_attached(t.ns(gw), inside).unwrap(),
        "kept attached after an orderly stop"
    );
    printed.push(("daemon 3 (--user nobody)".into(), d3.log().into_bytes()));
    let (code, text) = cli(
        Some(t.ns(gw)),
        &bin,
        &["detach", "--inside", inside, "--outside", outside],
    );
    assert_eq!(code, Some(0), "{}", String::from_utf8_lossy(&text));
    printed.push(("detach".into(), text));

    // The offline CLIs over the same keys: check, pcap out, pcap in (its own output back).
    let c = conf.to_str().unwrap();
    let (code, text) = cli(None, &bin, &["check", "-c", c]);
    assert_eq!(code, Some(0), "{}", String::from_utf8_lossy(&text));
    printed.push(("check".into(), text));
    let plain = dir.path().join("plain.pcap");
    let wire = dir.path().join("wire.pcap");
    let back = dir.path().join("back.pcap");
    let frame = Frame {
        time: SystemTime::now(),
        data: FrameSpec::new("10.1.0.1", "10.2.0.9", 17, 4001, 5001).build(),
    };
    write_pcap(&plain, [&frame].into_iter()).unwrap();
    for (d, i, o) in [("out", &plain, &wire), ("in", &wire, &back)] {
        let (i, o) = (i.to_str().unwrap(), o.to_str().unwrap());
        let (code, text) = cli(
            None,
            &bin,
            &["pcap", "-c", c, "--dir", d, "--in", i, "--out", o],
        );
        assert_eq!(
            code,
            Some(0),
            "pcap {d}: {}",
            String::from_utf8_lossy(&text)
        );
        printed.push((format!("pcap {d}"), text));
    }
    // Errors on key lines: an odd digit, the algorithm name missing, the key split, the key
    // where a keyword goes. Each is refused, and the key is not in the message.
    let k = hex(&ESP_KEY);
    let base = "state add src 10.2.0.1 dst 10.2.0.2 proto esp spi 0x2001 reqid 3 mode tunnel";
    for (n, bad) in [
        format!("{base} aead 'rfc4106(gcm(aes))' 0x{k}0 128"),
        format!("{base} aead 0x{k} 128"),
        format!(
            "{base} aead 'rfc4106(gcm(aes))' 0x{} 0x{} 128",
            &k[..20],
            &k[20..]
        ),
        format!("{base} 0x{k} 'rfc4106(gcm(aes))' 0x{k} 128"),
    ]
    .iter()
    .enumerate()
    {
        let p = dir.path().join(format!("bad{n}.conf"));
        xfrm_user::keyfile::write_private(&p, format!("{bad}\n")).unwrap();
        let (code, text) = cli(None, &bin, &["check", "-c", p.to_str().unwrap()]);
        assert_eq!(code, Some(2), "{bad}: {}", String::from_utf8_lossy(&text));
        printed.push((format!("check {bad}"), text));
    }
    // Nor is it in the state file (a fingerprint of it is).
    printed.push(("state file".into(), std::fs::read(&state).unwrap()));

    let total: usize = printed.iter().map(|(_, t)| t.len()).sum();
    eprintln!(
        "{} outputs, {total} bytes, searched for the keys",
        printed.len()
    );
    for (what, text) in &printed {
        assert!(!text.is_empty(), "{what}: nothing printed");
        if let Some(k) = find_key(text) {
            panic!("{what}: {k} in:\n{}", String::from_utf8_lossy(text));
        }
    }
    // The search finds a key where there is one: the config itself.
    assert!(find_key(config().as_bytes()).is_some());
    let _ = std::fs::remove_file(&state);
}
