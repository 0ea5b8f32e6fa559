//! `kill -9` of `xfrm-user run` must fail closed:
//!
//!   ns "h1" [a] ──veth 1── [b] ns "gw" (ip_forward=1) [a] ──veth 2── [b] ns "h2"
//!
//! UDP 10.1.0.0/24 → 10.2.0.0/24 is protected (ESP tunnel to h2, which has no IPsec: a raw
//! socket takes the ESP); ICMP is not. With forwarding on and no program, the UDP reaches h2
//! in clear (the control: this test can see a leak). With the daemon running it arrives as
//! ESP only. After `kill -9` the inside program is still attached (netlink mode), the UDP
//! reaches h2 neither in clear nor as ESP, the dead program's drop_no_socket counter rises,
//! ping still passes. A second daemon takes over (another program id) and ESP flows again,
//! with sequence numbers above every one the first daemon sent (its state file, at the
//! default path). SIGTERM to it is an orderly stop that keeps failing closed: the programs
//! stay, the UDP is dropped, ping passes; `xfrm-user detach` then takes them off (and the
//! UDP crosses in clear again, as with no program). A third daemon with `--detach-on-exit`
//! detaches by itself at SIGTERM (the old behaviour, on request).

use std::{
    net::{SocketAddr, UdpSocket},
    path::{Path, PathBuf},
    process::{Child, Stdio},
    time::{Duration, Instant},
};

use aya::maps::{Map, MapData, MapInfo, PerCpuArray};
use xfrm_common::{Counter, MAP_COUNTERS};
use xfrm_tests::{
    bpf_object,
    daemon::default_state_path,
    init_logging,
    probe::{ping_once as ping, Line, Receiver},
    root_or_skip,
    topology::Netns,
};

const CONFIG: &str = "\
ip xfrm state add src 10.2.0.1 dst 10.2.0.2 proto esp spi 0x2001 reqid 3 mode tunnel \
aead 'rfc4106(gcm(aes))' 0x2122232425262728292a2b2c2d2e2f30deadbeef 128
ip xfrm policy add src 10.1.0.0/24 dst 10.2.0.0/24 proto udp dir out \
tmpl src 10.2.0.1 dst 10.2.0.2 proto esp reqid 3 mode tunnel
ip xfrm policy add src 10.1.0.0/24 dst 10.2.0.0/24 proto udp dir in \
tmpl src 10.2.0.1 dst 10.2.0.2 proto esp reqid 3 mode tunnel
";

/// The daemon as a child process, killed (by pid) and reaped on drop.
struct Daemon(Option<Child>);

impl Daemon {
    fn pid(&self) -> i32 {
        self.0.as_ref().map_or(0, |c| c.id() as i32)
    }
    /// Send `sig` and wait for the exit; the exit status as the shell shows it.
    fn signal_and_wait(&mut self, sig: i32) -> std::process::ExitStatus {
        let mut c = self.0.take().expect("daemon running");
        // SAFETY: kill(2) on the pid of our own child, not yet reaped.
        assert_eq!(unsafe { libc::kill(c.id() as i32, sig) }, 0);
        c.wait().expect("wait daemon")
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The xfrm-user binary of this target dir, built if needed.
fn xfrm_user_bin() -> PathBuf {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let st = std::process::Command::new(cargo)
        .args(["build", "-q", "-p", "xfrm-user", "--bin", "xfrm-user"])
        .status()
        .expect("cargo build");
    assert!(st.success(), "cargo build -p xfrm-user");
    // target/debug/deps/<test> -> target/debug/xfrm-user
    let exe = std::env::current_exe().unwrap();
    let bin = exe.parent().unwrap().parent().unwrap().join("xfrm-user");
    assert!(bin.is_file(), "{}", bin.display());
    bin
}

fn start(
    ns: &Netns,
    bin: &Path,
    conf: &Path,
    inside: &str,
    outside: &str,
    extra: &[&str],
) -> Daemon {
    let child = ns
        .command(bin.to_str().unwrap())
        .args(["run", "--config", conf.to_str().unwrap()])
        .args(["--inside", inside, "--outside", outside, "--interval", "1"])
        .args(extra)
        .arg("--bpf")
        .arg(bpf_object())
        .stdout(Stdio::null())
        .spawn()
        .expect("spawn xfrm-user run");
    Daemon(Some(child))
}

/// Removes the daemons' state file (and its lock) when the test ends, however it ends.
struct StateFileGuard(PathBuf);

impl Drop for StateFileGuard {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
        let mut lock = self.0.clone().into_os_string();
        lock.push(".lock");
        let _ = std::fs::remove_file(lock);
    }
}

/// The XDP program id on `ifname` as `ip -d link show` reports it ("prog/xdp id N").
fn xdp_prog_id(ns: &Netns, ifname: &str) -> Option<u32> {
    let o = ns.ip(&["-d", "link", "show", "dev", ifname]).unwrap();
    let s = String::from_utf8_lossy(&o.stdout);
    let i = s.find("prog/xdp id ")?;
    s[i + 12..].split_whitespace().next()?.parse().ok()
}

/// drop_no_socket of the program `id`, summed over CPUs, read from its COUNTERS map (the
/// program may belong to a dead process: ids are global).
fn no_socket_drops(id: u32) -> u64 {
    let prog = aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .find(|p| p.id() == id)
        .unwrap_or_else(|| panic!("program {id} not loaded"));
    for m in prog.map_ids().unwrap().unwrap_or_default() {
        let info = MapInfo::from_id(m).unwrap();
        if info.name_as_str() != Some(MAP_COUNTERS) {
            continue;
        }
        let map = Map::PerCpuArray(MapData::from_id(m).unwrap());
        let arr: PerCpuArray<MapData, u64> = PerCpuArray::try_from(map).unwrap();
        return arr
            .get(&(Counter::DropNoSocket as u32), 0)
            .unwrap()
            .iter()
            .sum();
    }
    panic!("program {id}: no map {MAP_COUNTERS}");
}

/// Until the daemon protects (ESP at h2), at most 15 s. Until its program is attached the
/// gateway forwards in clear (as with no daemon at all): the callers check afterwards.
fn wait_protected(rx: &Receiver, sender: &UdpSocket, to: SocketAddr, d: &mut Daemon) {
    let end = Instant::now() + Duration::from_secs(15);
    while Instant::now() < end {
        let (_, esp) = rx.probe(sender, to, 3);
        if esp > 0 {
            return;
        }
        if let Some(st) = d.0.as_mut().and_then(|c| c.try_wait().unwrap()) {
            panic!("xfrm-user run exited: {st}");
        }
    }
    panic!("no ESP at h2 within 15 s");
}

#[test]
fn kill9_keeps_the_program_and_drops_protected_flows() {
    if !root_or_skip("kill9_keeps_the_program_and_drops_protected_flows") {
        return;
    }
    init_logging();
    let bin = xfrm_user_bin();
    let Line {
        t,
        h1,
        gw,
        h2: _,
        l1,
        l2,
        sender,
        rx,
        to,
    } = Line::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("gw.conf");
    xfrm_user::keyfile::write_private(&conf, CONFIG).unwrap();
    let (inside, outside) = (l1.b.ifname.clone(), l2.a.ifname.clone());
    let h2_addr = l2.b.ipv4.to_string();

    // Control: forwarding on, no program: the flow crosses in clear.
    let (clear, esp) = rx.probe(&sender, to, 5);
    assert!(
        clear > 0,
        "control: plain forwarding delivers the UDP in clear"
    );
    assert_eq!(esp, 0);
    assert!(ping(t.ns(h1), &h2_addr), "control ping");

    // The daemons keep their sequence numbers in the default state file of this namespace
    // and outside interface.
    let state = default_state_path(t.ns(gw), &outside).unwrap();
    let _state_guard = StateFileGuard(state.clone());
    assert!(
        !state.exists(),
        "{}: left by an earlier run",
        state.display()
    );

    let mut d1 = start(t.ns(gw), &bin, &conf, &inside, &outside, &[]);
    eprintln!("xfrm-user run: pid {}", d1.pid());
    wait_protected(&rx, &sender, to, &mut d1);
    let id1 = xdp_prog_id(t.ns(gw), &inside).expect("XDP program on the inside");
    let (clear, esp) = rx.probe(&sender, to, 10);
    assert_eq!((clear, esp), (0, 10), "daemon 1: all protected");
    assert!(state.is_file(), "no state file at {}", state.display());
    let seqs1 = rx.take_seqs();
    let max1 = *seqs1.iter().max().unwrap();

    let st = d1.signal_and_wait(libc::SIGKILL);
    eprintln!("daemon 1: {st}");
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(
        xdp_prog_id(t.ns(gw), &inside),
        Some(id1),
        "the inside program stays attached after kill -9"
    );
    let before = no_socket_drops(id1);
    let (clear, esp) = rx.probe(&sender, to, 20);
    let after = no_socket_drops(id1);
    eprintln!("after kill -9: clear {clear}, esp {esp}, drop_no_socket {before} -> {after}");
    assert_eq!(
        clear, 0,
        "protected datagrams forwarded in clear after kill -9"
    );
    assert_eq!(esp, 0);
    assert!(after >= before + 20, "drop_no_socket {before} -> {after}");
    assert!(ping(t.ns(h1), &h2_addr), "unprotected traffic passes");

    let mut d2 = start(t.ns(gw), &bin, &conf, &inside, &outside, &[]);
    wait_protected(&rx, &sender, to, &mut d2);
    let id2 = xdp_prog_id(t.ns(gw), &inside).expect("XDP program after restart");
    assert_ne!(id2, id1, "the restarted daemon's program took over");
    let (clear, esp) = rx.probe(&sender, to, 10);
    assert_eq!((clear, esp), (0, 10), "after restart: all protected");
    assert!(ping(t.ns(h1), &h2_addr));
    // The sequence numbers go on above the first daemon's (without the state file they
    // would start at 1 again).
    let seqs2 = rx.take_seqs();
    let min2 = *seqs2.iter().min().unwrap();
    eprintln!(
        "ESP seq: daemon 1 {}..={max1}, daemon 2 {min2}..={}",
        seqs1.iter().min().unwrap(),
        seqs2.iter().max().unwrap()
    );
    assert!(
        min2 > max1,
        "daemon 2 sent seq {min2}, daemon 1 had sent {max1}"
    );

    // Orderly stop: exit 0, and the programs stay (fail closed, no moment in clear).
    let id2_out = xdp_prog_id(t.ns(gw), &outside);
    let st = d2.signal_and_wait(libc::SIGTERM);
    assert!(st.success(), "SIGTERM: {st}");
    assert_eq!(
        xdp_prog_id(t.ns(gw), &inside),
        Some(id2),
        "SIGTERM keeps it"
    );
    assert_eq!(xdp_prog_id(t.ns(gw), &outside), id2_out);
    let before = no_socket_drops(id2);
    let (clear, esp) = rx.probe(&sender, to, 10);
    let after = no_socket_drops(id2);
    assert_eq!(
        (clear, esp),
        (0, 0),
        "after SIGTERM: dropped, not forwarded"
    );
    assert!(after >= before + 10, "drop_no_socket {before} -> {after}");
    assert!(ping(t.ns(h1), &h2_addr), "unprotected traffic passes");

    // `xfrm-user detach` takes them off; the gateway is a plain router again.
    let o = t
        .ns(gw)
        .exec(
            bin.to_str().unwrap(),
            &["detach", "--inside", &inside, "--outside", &outside],
        )
        .expect("xfrm-user detach");
    eprint!("detach: {}", String::from_utf8_lossy(&o.stdout));
    assert_eq!(xdp_prog_id(t.ns(gw), &inside), None, "detach");
    assert_eq!(xdp_prog_id(t.ns(gw), &outside), None);
    let (clear, _) = rx.probe(&sender, to, 5);
    assert!(clear > 0, "after detach: plain forwarding again");

    // --detach-on-exit: the daemon takes its programs off itself at SIGTERM.
    let mut d3 = start(
        t.ns(gw),
        &bin,
        &conf,
        &inside,
        &outside,
        &["--detach-on-exit"],
    );
    wait_protected(&rx, &sender, to, &mut d3);
    let (clear, esp) = rx.probe(&sender, to, 10);
    assert_eq!((clear, esp), (0, 10), "daemon 3: all protected");
    let seqs3 = rx.take_seqs();
    let max2 = *seqs2.iter().max().unwrap();
    assert!(
        *seqs3.iter().min().unwrap() > max2,
        "after an orderly stop too: {seqs3:?} after {max2}"
    );
    let st = d3.signal_and_wait(libc::SIGTERM);
    assert!(st.success(), "SIGTERM: {st}");
    assert_eq!(xdp_prog_id(t.ns(gw), &inside), None, "--detach-on-exit");
    assert_eq!(xdp_prog_id(t.ns(gw), &outside), None);
}
