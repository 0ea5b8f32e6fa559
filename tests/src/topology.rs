//! The one topology helper: network namespaces joined by veth pairs, named uniquely for this run
//! so tests run in parallel (and beside other runs), addressed from 10.0.0.0/8 and fd00::/8
//! inside the namespaces only, torn down on success, failure and panic (Drop).
//!
//! veth pitfalls, handled here or by the option that names them:
//! - Checksum offload: veth advertises TX checksum offload, so a packet a namespace sends carries
//!   CHECKSUM_PARTIAL: its UDP/TCP checksum field holds only the pseudo-header sum when XDP or
//!   AF_XDP sees it. The datapath must finish the checksum before encrypting (as xfrm_output
//!   does with skb_checksum_help); [`VethOpts::tx_checksum`] = false (`ethtool -K tx off`) gives
//!   full checksums instead, and tests cover both.
//! - Redirect into a veth (XDP_TX, devmap redirect, `ndo_xdp_xmit`) only delivers if the
//!   receiving peer has NAPI: an XDP program on it (the loader's `attach_pass`) or GRO on
//!   ([`VethOpts::peer_gro`]); otherwise frames are silently dropped. AF_XDP TX in copy mode
//!   goes through the normal xmit path and needs neither.
//! - Native XDP on veth refuses MTUs above ~3500 (a frame must fit one page with XDP headroom
//!   and skb_shared_info, unless the program is multi-buffer): [`add_veth`](Topology::add_veth)
//!   rejects a larger MTU when `native_xdp` is set.
//! - IPv6 duplicate address detection keeps a fresh address tentative for a second or more:
//!   addresses are added with `nodad`.
//! - ARP and ND must reach the kernel: the classifier always passes them (tests check it).

use std::{
    fs::File,
    net::{Ipv4Addr, Ipv6Addr},
    os::fd::AsRawFd,
    process::{Command, Output, Stdio},
    sync::atomic::{AtomicU32, Ordering},
};

use anyhow::{bail, Context, Result};

static COUNTER: AtomicU32 = AtomicU32::new(0);

fn base36(mut n: u64) -> String {
    const DIGITS: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut s = Vec::new();
    loop {
        s.push(DIGITS[(n % 36) as usize]);
        n /= 36;
        if n == 0 {
            break;
        }
    }
    s.reverse();
    String::from_utf8(s).unwrap()
}

fn run(cmd: &mut Command) -> Result<Output> {
    let line = format!("{cmd:?}");
    let out = cmd.stdin(Stdio::null()).output().with_context(|| {
        format!("could not start {line} (is iproute2 installed? `cargo xtask setup`)")
    })?;
    if !out.status.success() {
        bail!(
            "{line} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(out)
}

fn ip(args: &[&str]) -> Result<Output> {
    run(Command::new("ip").args(args))
}

/// One network namespace (`ip netns add`), deleted on drop.
pub struct Netns {
    name: String,
}

impl Netns {
    fn create(name: String) -> Result<Self> {
        // A namespace of this name can only be left over by a killed earlier process with our
        // pid (Drop never ran): reuse of the name is safe after deleting it.
        if std::path::Path::new("/run/netns").join(&name).exists() {
            let _ = ip(&["netns", "del", &name]);
        }
        ip(&["netns", "add", &name])?;
        let ns = Self { name };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// `ip -n NAME …`
    pub fn ip(&self, args: &[&str]) -> Result<Output> {
        let mut a = vec!["-n", &self.name];
        a.extend_from_slice(args);
        ip(&a)
    }

    /// `ip netns exec NAME PROGRAM ARGS…`, failing on a non-zero exit.
    pub fn exec(&self, program: &str, args: &[&str]) -> Result<Output> {
        run(self.command(program).args(args))
    }

    /// A command that will run inside the namespace.
    pub fn command(&self, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name, program]);
        c
    }

    /// Move the calling thread into this namespace (sockets, ifindex lookups and XDP attach
    /// then happen here). Prefer [`Netns::run`], which uses a fresh thread.
    pub fn enter(&self) -> Result<()> {
        enter_netns(&self.name)
    }

    /// `sysctl -w KEY=VALUE` inside the namespace (KEY with dots, as sysctl(8) takes it).
    pub fn sysctl(&self, key: &str, value: &str) -> Result<()> {
        // /proc/sys/net is resolved in the network namespace of the thread that opens it.
        let path = format!("/proc/sys/{}", key.replace('.', "/"));
        self.run(|| {
            std::fs::write(&path, value).with_context(|| format!("sysctl {key}={value}"))?;
            Ok(())
        })
    }

    /// Start `program` inside the namespace as a child process whose stdout and stderr go to
    /// a log file; the returned guard kills it (by pid) when dropped.
    pub fn spawn(&self, label: &str, program: &str, args: &[&str]) -> Result<Proc> {
        let mut cmd = self.command(program);
        cmd.args(args);
        Proc::spawn(label, cmd)
    }

    /// A thread running `f` inside this namespace, not scoped: for long-running work
    /// (transfers, captures) that the test joins later.
    pub fn thread<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> Result<T> + Send + 'static,
    ) -> std::thread::JoinHandle<Result<T>> {
        let name = self.name.clone();
        std::thread::spawn(move || {
            enter_netns(&name)?;
            f()
        })
    }

    /// Run `f` on a new thread inside this namespace; what it creates (sockets, XDP links)
    /// stays bound to the namespace after the thread ends.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> Result<T> + Send) -> Result<T> {
        std::thread::scope(|s| {
            s.spawn(|| {
                self.enter()?;
                f()
            })
            .join()
            .unwrap_or_else(|p| std::panic::resume_unwind(p))
        })
    }
}

/// Move the calling thread into the named network namespace (`/run/netns/NAME`).
pub fn enter_netns(name: &str) -> Result<()> {
    let f =
        File::open(format!("/run/netns/{name}")).with_context(|| format!("open netns {name}"))?;
    // SAFETY: setns on a valid namespace fd; affects only this thread.
    if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        bail!("setns {name}: {}", std::io::Error::last_os_error());
    }
    Ok(())
}

/// A child process started by a test (usually `ip netns exec NS PROGRAM`, which execs the
/// program: the pid is the program's). Killed by its pid when dropped, never by name; the pid
/// cannot be reused before we reap it, so signalling it is safe until then. Its stdout and
/// stderr go to a log file, shown by [`Proc::log`] (and printed when a test fails).
pub struct Proc {
    label: String,
    child: Option<std::process::Child>,
    status: Option<std::process::ExitStatus>,
    log: std::path::PathBuf,
}

impl Proc {
    pub fn spawn(label: &str, mut cmd: Command) -> Result<Self> {
        static N: AtomicU32 = AtomicU32::new(0);
        let log = std::env::temp_dir().join(format!(
            "xfrm-test-{}-{}-{label}.log",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let out = File::create(&log).with_context(|| format!("create {}", log.display()))?;
        let err = out.try_clone()?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .with_context(|| format!("start {label}: {cmd:?}"))?;
        Ok(Self {
            label: label.to_string(),
            child: Some(child),
            status: None,
            log,
        })
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// Send `sig` to the process if it has not been reaped yet.
    pub fn signal(&self, sig: libc::c_int) {
        if let Some(c) = &self.child {
            // SAFETY: kill(2) on our own unreaped child's pid.
            unsafe { libc::kill(c.id() as libc::pid_t, sig) };
        }
    }

    /// The exit status if it has ended (reaping it).
    pub fn try_wait(&mut self) -> Option<std::process::ExitStatus> {
        if let Some(c) = &mut self.child {
            if let Ok(Some(st)) = c.try_wait() {
                self.status = Some(st);
                self.child = None;
            }
        }
        self.status
    }

    /// `sig`, then wait up to `grace` for the exit, then SIGKILL. Returns the exit status.
    pub fn stop(
        &mut self,
        sig: libc::c_int,
        grace: std::time::Duration,
    ) -> std::process::ExitStatus {
        if self.child.is_some() {
            self.signal(sig);
            let end = std::time::Instant::now() + grace;
            while std::time::Instant::now() < end && self.try_wait().is_none() {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
        }
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            self.status = c.wait().ok();
        }
        self.status.expect("exit status of a reaped child")
    }

    /// SIGKILL now and reap.
    pub fn kill9(&mut self) -> std::process::ExitStatus {
        self.stop(libc::SIGKILL, std::time::Duration::from_secs(5))
    }

    /// The file its stdout and stderr go to.
    pub fn log_path(&self) -> &std::path::Path {
        &self.log
    }

    /// What the process wrote so far (stdout and stderr interleaved).
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn label(&self) -> &str {
        &self.label
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.child.is_some() {
            self.stop(libc::SIGTERM, std::time::Duration::from_secs(2));
        }
        if std::thread::panicking() {
            eprintln!(
                "--- log of {} ---\n{}--- end of log ---",
                self.label,
                self.log()
            );
        }
        let _ = std::fs::remove_file(&self.log);
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // The veth ends inside go with it.
        if let Err(e) = ip(&["netns", "del", &self.name]) {
            eprintln!("topology teardown: {e:#}");
        }
    }
}

/// One end of a veth pair.
#[derive(Clone, Debug)]
pub struct Port {
    /// Index of the namespace in the topology.
    pub ns: usize,
    pub ifname: String,
    pub mac: [u8; 6],
    pub ipv4: Ipv4Addr,
    pub ipv6: Ipv6Addr,
}

#[derive(Clone, Debug)]
pub struct Link {
    pub a: Port,
    pub b: Port,
}

#[derive(Clone, Copy, Debug)]
pub struct VethOpts {
    pub mtu: u32,
    /// false = `ethtool -K tx off` on both ends: full checksums in every packet.
    pub tx_checksum: bool,
    /// `ethtool -K gro on` on both ends: veth NAPI, so XDP_TX/redirected frames are accepted
    /// without an XDP program on the receiver.
    pub peer_gro: bool,
    /// The pair will run native XDP: enforce the MTU limit.
    pub native_xdp: bool,
    /// TX and RX queues of each end (veth hands a frame to the peer's RX queue of the
    /// sender's TX queue, which the sender picks by flow hash).
    pub queues: u32,
}

impl Default for VethOpts {
    fn default() -> Self {
        Self {
            mtu: 1500,
            tx_checksum: true,
            peer_gro: false,
            native_xdp: true,
            queues: 1,
        }
    }
}

/// The largest MTU native XDP accepts on veth without multi-buffer support (4096 - 256 XDP
/// headroom - 14 Ethernet - 320 skb_shared_info, rounded down).
pub const VETH_XDP_MAX_MTU: u32 = 3500;

/// Namespaces and links; everything goes away when it is dropped.
pub struct Topology {
    id: String,
    // Dropped in reverse creation order by `Drop`.
    namespaces: Vec<Netns>,
    links: Vec<Link>,
}

impl Topology {
    /// A fresh topology with a run-unique id: pid and a process-wide counter, in base 36 so
    /// interface names stay within IFNAMSIZ - 1 (15 bytes) up to 46656 topologies per process.
    pub fn new() -> Result<Self> {
        let id = format!(
            "{}-{}",
            base36(u64::from(std::process::id())),
            base36(u64::from(COUNTER.fetch_add(1, Ordering::Relaxed)))
        );
        Ok(Self {
            id,
            namespaces: Vec::new(),
            links: Vec::new(),
        })
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    /// Add a namespace `xf-<id>-<label>`; returns its index.
    pub fn add_netns(&mut self, label: &str) -> Result<usize> {
        let ns = Netns::create(format!("xf-{}-{label}", self.id))?;
        self.namespaces.push(ns);
        Ok(self.namespaces.len() - 1)
    }

    pub fn ns(&self, i: usize) -> &Netns {
        &self.namespaces[i]
    }

    pub fn links(&self) -> &[Link] {
        &self.links
    }

    /// A veth pair from namespace `a` to namespace `b`, up, with 10.<k>.0.1/24 and
    /// fd00:<k>::1/64 on the a side (.2 / ::2 on b), k = link number + 1.
    pub fn add_veth(&mut self, a: usize, b: usize, opts: VethOpts) -> Result<Link> {
        if opts.native_xdp && opts.mtu > VETH_XDP_MAX_MTU {
            bail!(
                "veth MTU {} > {VETH_XDP_MAX_MTU}: native XDP would refuse to attach",
                opts.mtu
            );
        }
        let k = self.links.len() + 1;
        if k > 250 {
            bail!("too many links in one topology");
        }
        // Separators keep names unambiguous: pid-counter.link side.
        let name = |side: char| format!("xf{}.{}{side}", self.id, base36(k as u64));
        let (na, nb) = (name('a'), name('b'));
        if na.len() > 15 {
            bail!("interface name {na} longer than IFNAMSIZ-1");
        }
        let mac = |side: u8| [0x02, 0x58, 0x46, (k >> 8) as u8, k as u8, side];
        let port = |ns: usize, ifname: String, side: u8| Port {
            ns,
            ifname,
            mac: mac(side),
            ipv4: Ipv4Addr::new(10, k as u8, 0, side),
            ipv6: Ipv6Addr::new(0xfd00, k as u16, 0, 0, 0, 0, 0, u16::from(side)),
        };
        let link = Link {
            a: port(a, na, 1),
            b: port(b, nb, 2),
        };
        // Created inside namespace a, so that no interface ever appears in the caller's own
        // namespace; then the b end moves to b.
        let ns_a = &self.namespaces[a];
        let ns_b = &self.namespaces[b];
        // Queue counts only when asked: veth's default (as many as CPUs, one in use) lets a
        // test raise the count later with `ethtool -L`.
        let q = opts.queues.to_string();
        let queues: &[&str] = if opts.queues > 1 {
            &["numtxqueues", &q, "numrxqueues", &q]
        } else {
            &[]
        };
        let mut args = vec!["link", "add", &link.a.ifname];
        args.extend_from_slice(queues);
        args.extend_from_slice(&["type", "veth", "peer", "name", &link.b.ifname]);
        args.extend_from_slice(queues);
        ns_a.ip(&args)?;
        ns_a.ip(&["link", "set", &link.b.ifname, "netns", ns_b.name()])?;
        for (ns, p) in [(ns_a, &link.a), (ns_b, &link.b)] {
            let mac = p
                .mac
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<Vec<_>>()
                .join(":");
            ns.ip(&[
                "link",
                "set",
                &p.ifname,
                "address",
                &mac,
                "mtu",
                &opts.mtu.to_string(),
            ])?;
            ns.ip(&["addr", "add", &format!("{}/24", p.ipv4), "dev", &p.ifname])?;
            ns.ip(&[
                "-6",
                "addr",
                "add",
                &format!("{}/64", p.ipv6),
                "dev",
                &p.ifname,
                "nodad",
            ])?;
            if !opts.tx_checksum {
                ns.exec("ethtool", &["-K", &p.ifname, "tx", "off"])?;
            }
            if opts.peer_gro {
                ns.exec("ethtool", &["-K", &p.ifname, "gro", "on"])?;
            }
            ns.ip(&["link", "set", &p.ifname, "up"])?;
        }
        self.links.push(link.clone());
        Ok(link)
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        while let Some(ns) = self.namespaces.pop() {
            drop(ns);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_fit_ifnamsiz() {
        // The largest pid Linux allows, a large counter, a large link number.
        let id = format!("{}-{}", base36(4_194_304), base36(46_655));
        let name = format!("xf{id}.{}a", base36(250));
        assert!(name.len() <= 15, "{name}");
        assert_eq!(base36(0), "0");
        assert_eq!(base36(35), "z");
        assert_eq!(base36(36), "10");
    }
}
