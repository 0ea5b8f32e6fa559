//! Loading the XDP object (aya), attaching it, filling its maps, reading its counters, and
//! forwarding its aya-log records to the `log` crate.
//!
//! The object is found at run time, not embedded: `cargo build`/`clippy` of the user-space crates
//! then works on a machine without nightly or bpf-linker. Order: `--bpf PATH`, then
//! `$XFRM_BPF_OBJ`, then `xfrm-ebpf.o` beside the executable (deployments), then the output of
//! `cargo xtask build-ebpf` in this source tree.

use std::{
    os::fd::{AsFd, AsRawFd, RawFd},
    path::{Path, PathBuf},
    sync::Arc,
};

use anyhow::{anyhow, bail, Context, Result};
use aya::{
    maps::{lpm_trie::Key as LpmKey, Array, HashMap, LpmTrie, MapData, PerCpuArray, XskMap},
    programs::{
        tc::{self, NlOptions, SchedClassifierLink, TcAttachOptions, TcHandle},
        xdp::{XdpLinkId, XdpMode},
        SchedClassifier, TcAttachType, TestRun, TestRunOptions, Xdp,
    },
    Ebpf, EbpfLoader,
};
use aya_log::EbpfLogger;
use xfrm_common::{
    Config, EncapPort, PolicyRule, PortKey, PrefixKey, RuleBitmap, SaKey, TableRef, XdpMeta,
    CFG_ONE_ARMED, CFG_TEST_REWIND, COUNTER_COUNT, COUNTER_NAMES, FAMILY_V4, FAMILY_V6, MAP_CONFIG,
    MAP_COUNTERS, MAP_COUNTERS_LOCAL, MAP_COUNTERS_OUT, MAP_LOCAL_DEV, MAP_POLICY_PORT,
    MAP_POLICY_PREFIX, MAP_POLICY_PROTO, MAP_POLICY_RULES, MAP_SAS, MAP_XSKS, MAP_XSKS_OUT,
    MAX_ENCAP_PORTS, MAX_SAS, PROG_CLASSIFY, PROG_LOCAL_OUT, PROG_OUTSIDE, PROG_PASS, TABLE_FWD,
    TABLE_IN, TABLE_OUT, TABLE_SLOTS, XDP_META_LEN,
};

use super::rules::{compile_db, compile_inbound, compile_sas, encap_ports, PolicyIndex};
use super::sys::{ControlTask, LentFd};
use super::umem::take_meta;
use crate::policy::PolicyDir;
use crate::xfrm::{InputTables, XfrmDb};

pub const ENV_BPF_OBJ: &str = "XFRM_BPF_OBJ";

/// Where `cargo xtask build-ebpf` leaves the object in this source tree.
pub fn default_object_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../xfrm-ebpf/target/bpfel-unknown-none/release/xfrm-ebpf")
}

/// The object to load: the first of `explicit`, `$XFRM_BPF_OBJ`, `xfrm-ebpf.o` next to the
/// executable, the build output; an error lists what was tried.
pub fn resolve_object(explicit: Option<&Path>) -> Result<PathBuf> {
    if let Some(p) = explicit {
        if p.is_file() {
            return Ok(p.to_path_buf());
        }
        bail!("--bpf {}: no such file", p.display());
    }
    let mut tried = Vec::new();
    if let Some(p) = std::env::var_os(ENV_BPF_OBJ) {
        let p = PathBuf::from(p);
        if p.is_file() {
            return Ok(p);
        }
        bail!("${ENV_BPF_OBJ}={}: no such file", p.display());
    }
    if let Some(dir) = std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(Path::to_path_buf))
    {
        tried.push(dir.join("xfrm-ebpf.o"));
    }
    tried.push(default_object_path());
    for p in &tried {
        if p.is_file() {
            return Ok(p.clone());
        }
    }
    bail!(
        "no XDP object: build it with `cargo xtask build-ebpf`, or give --bpf PATH / ${ENV_BPF_OBJ} \
         (tried {})",
        tried
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    )
}

/// How the program is attached: `native` runs in the driver (veth supports it), `skb` is generic
/// XDP after the skb is built (works everywhere, slower).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttachMode {
    Native,
    Skb,
}

impl std::str::FromStr for AttachMode {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "native" | "drv" | "driver" => Ok(Self::Native),
            "skb" | "generic" => Ok(Self::Skb),
            _ => bail!("xdp mode `{s}`: expected native or skb"),
        }
    }
}

impl AttachMode {
    fn aya(self) -> XdpMode {
        match self {
            Self::Native => XdpMode::Driver,
            Self::Skb => XdpMode::Skb,
        }
    }

    /// XDP_FLAGS_DRV_MODE / XDP_FLAGS_SKB_MODE (linux/if_link.h), for netlink attach.
    fn xdp_flags(self) -> u32 {
        match self {
            Self::Native => XDP_FLAGS_DRV_MODE,
            Self::Skb => XDP_FLAGS_SKB_MODE,
        }
    }
}

const XDP_FLAGS_SKB_MODE: u32 = 1 << 1;
const XDP_FLAGS_DRV_MODE: u32 = 1 << 2;
const XDP_FLAGS_REPLACE: u32 = 1 << 4;

/// A program attached in netlink mode by [`Datapath::attach_persistent`]: it stays on the
/// interface when this process dies.
struct Persistent {
    ifindex: u32,
    iface: String,
    mode: AttachMode,
    prog: Program,
    /// The program that was there before (a previous daemon's, in the same mode), to put
    /// back should the start fail half-way ([`Datapath::rollback_persistent`]).
    previous: Option<aya::programs::ProgramFd>,
}

/// What [`detach_xfrm_programs`] did on one interface.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Detached {
    /// Removed this program (name, id).
    Removed { name: String, id: u32 },
    /// No XDP program was attached.
    Nothing,
}

/// `xfrm-user detach`: take the programs of this object (`xfrm_classify`, `xfrm_outside`,
/// found by name) off `iface`, in the calling thread's network namespace, e.g. those a
/// stopped or killed `xfrm-user run` left attached (fail closed). Removes each only if it is
/// still the attached one (XDP_FLAGS_REPLACE + IFLA_XDP_EXPECTED_FD): a daemon starting at
/// the same moment keeps its own. Refuses (error, nothing touched) a program of another
/// name: it is not ours to remove.
pub fn detach_xfrm_programs(iface: &str) -> Result<Vec<Detached>> {
    use super::neigh::{Rtnl, XdpAttachMode};
    let mut rtnl = Rtnl::new()?;
    let (ifindex, progs) = rtnl.xdp_programs(iface)?;
    if progs.is_empty() {
        return Ok(vec![Detached::Nothing]);
    }
    let mut found = Vec::new();
    for p in &progs {
        let info = aya::programs::loaded_programs()
            .filter_map(Result::ok)
            .find(|i| i.id() == p.id)
            .with_context(|| format!("{iface}: XDP program id {} not found", p.id))?;
        let name = info.name_as_str().unwrap_or("").to_string();
        if name != PROG_CLASSIFY && name != PROG_OUTSIDE {
            bail!(
                "{iface}: the XDP program `{name}` (id {}) is not one of xfrm-user's; not \
                 touched (`ip link set dev {iface} xdp off` removes any program)",
                p.id
            );
        }
        let flags = match p.mode {
            XdpAttachMode::Drv => XDP_FLAGS_DRV_MODE,
            XdpAttachMode::Skb => XDP_FLAGS_SKB_MODE,
            XdpAttachMode::Hw => bail!("{iface}: {name} (id {}) is offloaded: not ours", p.id),
        };
        found.push((info, name, flags, p.id));
    }
    let mut out = Vec::new();
    for (info, name, flags, id) in found {
        let fd = info
            .fd()
            .with_context(|| format!("{iface}: a descriptor of program {id}"))?;
        let r = rtnl.set_xdp(
            ifindex,
            -1,
            flags | XDP_FLAGS_REPLACE,
            Some(fd.as_fd().as_raw_fd()),
        );
        match r {
            Ok(()) => out.push(Detached::Removed { name, id }),
            Err(e) => {
                let errno = e
                    .downcast_ref::<std::io::Error>()
                    .and_then(|e| e.raw_os_error());
                let hint = match errno {
                    Some(libc::EBUSY) => {
                        " (attached through a bpf_link, e.g. by a running `xfrm-user attach`: \
                         stop that process)"
                    }
                    Some(libc::EEXIST) => " (replaced meanwhile, e.g. by a starting daemon)",
                    _ => "",
                };
                return Err(e.context(format!("detach {name} (id {id}) from {iface}{hint}")));
            }
        }
    }
    Ok(out)
}

/// Sum over CPUs of each verdict counter, named as in `xfrm_common::COUNTER_NAMES`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters(pub [u64; COUNTER_COUNT]);

impl Counters {
    pub fn get(&self, c: xfrm_common::Counter) -> u64 {
        self.0[c as usize]
    }
    pub fn iter(&self) -> impl Iterator<Item = (&'static str, u64)> + '_ {
        COUNTER_NAMES.iter().copied().zip(self.0.iter().copied())
    }
}

impl std::fmt::Display for Counters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut first = true;
        for (name, v) in self.iter().filter(|(_, v)| *v != 0) {
            if !first {
                f.write_str(" ")?;
            }
            first = false;
            write!(f, "{name}={v}")?;
        }
        if first {
            f.write_str("(all zero)")?;
        }
        Ok(())
    }
}

/// One BPF_PROG_TEST_RUN of the classifier.
#[derive(Debug)]
pub struct TestRunOutcome {
    /// The XDP action (xdp_action::XDP_*).
    pub action: u32,
    /// The [`XdpMeta`] header the program pushed in front of the packet (on a redirect).
    pub meta: Option<XdpMeta>,
    /// The packet as the program left it.
    pub packet: Vec<u8>,
    /// The kernel's duration of one run in ns (its total over `repeat` runs, divided).
    pub ns_per_run: u64,
}

/// The programs of the object, for [`Datapath::test_run_prog`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Program {
    /// `xfrm_classify`: the inside interface (policy lookup).
    Inside,
    /// `xfrm_outside`: the outside interface (inbound SA lookup; one-armed: then policies).
    Outside,
    /// `xfrm_pass`: passes everything; the peer figure of the benchmarks.
    Pass,
}

impl Program {
    pub fn name(self) -> &'static str {
        match self {
            Self::Inside => PROG_CLASSIFY,
            Self::Outside => PROG_OUTSIDE,
            Self::Pass => PROG_PASS,
        }
    }
}

/// The programs' policy tables (see xfrm-common, "Three tables").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Table {
    /// `dir out`: the inside program (and the one-armed outside one) protects by it.
    Out,
    /// `dir in`: the outside program refuses clear text to local addresses by it.
    In,
    /// `dir fwd`: the outside program refuses clear text to be forwarded by it.
    Fwd,
}

impl Table {
    fn id(self) -> u32 {
        match self {
            Self::Out => TABLE_OUT,
            Self::In => TABLE_IN,
            Self::Fwd => TABLE_FWD,
        }
    }

    /// The table of a policy direction.
    pub fn of(dir: PolicyDir) -> Self {
        match dir {
            PolicyDir::Out => Self::Out,
            PolicyDir::In => Self::In,
            PolicyDir::Fwd => Self::Fwd,
        }
    }
}

/// What one slot of the policy table left in the hash-like maps, to delete when the slot is
/// refilled (arrays are overwritten instead).
#[derive(Default)]
struct SlotKeys {
    prefixes: Vec<LpmKey<PrefixKey>>,
    ports: Vec<PortKey>,
}

pub const XDP_ABORTED: u32 = 0;
pub const XDP_DROP: u32 = 1;
pub const XDP_PASS: u32 = 2;
pub const XDP_TX: u32 = 3;
pub const XDP_REDIRECT: u32 = 4;

/// The loaded XDP object: programs verified and in the kernel, maps reachable.
pub struct Datapath {
    ebpf: Ebpf,
    /// Which half of each table's two slots is live, by [`Table::id`] (the other one is
    /// written on the next update).
    live_half: [u32; 3],
    /// What CONFIG holds (written whole on every change).
    config: Config,
    /// Index entries of each slot.
    slot_keys: [SlotKeys; TABLE_SLOTS as usize],
    /// What SAS holds.
    sas: std::collections::HashMap<SaKey, u32>,
    /// Netlink-mode attachments: left in place by Drop (fail closed), removed only by
    /// [`Self::detach_persistent`].
    persistent: Vec<Persistent>,
    /// The interface whose egress runs `xfrm_local_out` (see [`Self::attach_local_out`]).
    local_out: Option<String>,
    logs: Option<LogPump>,
    /// Programs found on interfaces before attaching, taken while privileged
    /// ([`Self::remember_previous`]): opening a program by id needs CAP_SYS_ADMIN, which the
    /// daemon has dropped by the time it attaches.
    previous: Vec<(String, AttachMode, aya::programs::ProgramFd)>,
}

/// Where `xfrm_local_out` sits among an interface's egress filters: first (priority 1), with
/// a handle of its own, so a restarted daemon finds and replaces it.
const LOCAL_OUT_PRIORITY: u16 = 1;
const LOCAL_OUT_HANDLE: TcHandle = TcHandle::new(0, 0x1fe);

/// Our egress filter on `iface`, as aya names an attachment it did not make itself.
fn local_out_link(iface: &str) -> Result<SchedClassifierLink> {
    SchedClassifierLink::attached(
        iface,
        TcAttachType::Egress,
        LOCAL_OUT_PRIORITY,
        LOCAL_OUT_HANDLE,
        None,
    )
    .with_context(|| format!("interface {iface}"))
}

/// A descriptor of the XDP program attached to `iface` in `mode`, if any (to put back if a
/// start fails). Best effort: None when it cannot be found.
fn previous_program(
    rtnl: &mut super::neigh::Rtnl,
    iface: &str,
    mode: AttachMode,
) -> Option<aya::programs::ProgramFd> {
    use super::neigh::XdpAttachMode;
    let want = match mode {
        AttachMode::Native => XdpAttachMode::Drv,
        AttachMode::Skb => XdpAttachMode::Skb,
    };
    let (_, progs) = rtnl.xdp_programs(iface).ok()?;
    let id = progs.iter().find(|p| p.mode == want)?.id;
    aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .find(|i| i.id() == id)?
        .fd()
        .ok()
}

impl Datapath {
    /// Load and verify both programs; start forwarding the program's aya-log records to `log`.
    /// The program's log level follows `log::max_level()` (RUST_LOG), so disabled levels cost
    /// nothing in the kernel (the verifier prunes them).
    pub fn load(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).with_context(|| format!("read {}", path.display()))?;
        let level = log::max_level() as u8;
        let mut ebpf = EbpfLoader::new()
            .override_global(aya_log::LEVEL, &level, false)
            .load(&bytes)
            .with_context(|| format!("load {}", path.display()))?;
        let logs = match EbpfLogger::init(&mut ebpf) {
            Ok(logger) => Some(LogPump::start(logger)?),
            Err(e) => {
                log::warn!("eBPF logs unavailable: {e}");
                None
            }
        };
        for name in [PROG_CLASSIFY, PROG_OUTSIDE, PROG_PASS] {
            let prog: &mut Xdp = ebpf
                .program_mut(name)
                .ok_or_else(|| anyhow!("{}: no program {name}", path.display()))?
                .try_into()?;
            prog.load()
                .map_err(|e| super::explain::load_error(name, e))?;
        }
        let local: &mut SchedClassifier = ebpf
            .program_mut(PROG_LOCAL_OUT)
            .ok_or_else(|| anyhow!("{}: no program {PROG_LOCAL_OUT}", path.display()))?
            .try_into()?;
        local
            .load()
            .map_err(|e| super::explain::load_error(PROG_LOCAL_OUT, e))?;
        let mut dp = Self {
            ebpf,
            live_half: [0; 3],
            config: Config::default(),
            slot_keys: Default::default(),
            sas: Default::default(),
            persistent: Vec::new(),
            local_out: None,
            logs,
            previous: Vec::new(),
        };
        for t in [Table::Out, Table::In, Table::Fwd] {
            dp.set_policies(t, &[])?;
        }
        Ok(dp)
    }

    /// Load the object found by [`resolve_object`].
    pub fn load_default(explicit: Option<&Path>) -> Result<Self> {
        let path = resolve_object(explicit)?;
        log::debug!("loading XDP object {}", path.display());
        Self::load(&path)
    }

    fn prog(&mut self, name: &str) -> Result<&mut Xdp> {
        Ok(self
            .ebpf
            .program_mut(name)
            .ok_or_else(|| anyhow!("no program {name}"))?
            .try_into()?)
    }

    /// Attach the classifier to `iface` (in the calling thread's network namespace). Detached
    /// when the Datapath is dropped (a bpf_link).
    pub fn attach_classifier(&mut self, iface: &str, mode: AttachMode) -> Result<XdpLinkId> {
        self.prog(PROG_CLASSIFY)?
            .attach(iface, mode.aya())
            .with_context(|| format!("attach {PROG_CLASSIFY} to {iface} ({mode:?})"))
    }

    /// Attach the outside program to `iface`: inbound ESP/AH/ESP-in-UDP for a known SA goes to
    /// the sockets set with [`Self::set_outside_socket`]. For a one-armed gateway (inside =
    /// outside) call [`Self::set_one_armed`] and attach only this program.
    pub fn attach_outside(&mut self, iface: &str, mode: AttachMode) -> Result<XdpLinkId> {
        self.prog(PROG_OUTSIDE)?
            .attach(iface, mode.aya())
            .with_context(|| format!("attach {PROG_OUTSIDE} to {iface} ({mode:?})"))
    }

    // Fail closed across the death of the daemon (`kill -9`).
    //
    // `attach_*` above go through a bpf_link (aya uses BPF_LINK_CREATE on kernels >= 5.9): the
    // link lives as long as its fd, so a killed daemon takes its programs with it, and a
    // gateway with ip_forward=1 then forwards the protected flows in clear. The gateway's
    // programs are therefore attached in netlink mode (`ip link set dev IF xdp fd N`): such
    // a program belongs to the interface, not to a file descriptor, and stays until someone
    // removes it. After `kill -9` it keeps running with its own maps: the XSKS entries
    // vanish with the sockets (xsk_release deletes a socket from every XSKMAP), so a packet
    // that matches a protect policy finds no socket and is dropped and counted
    // (COUNTER_NO_SOCKET), unprotected traffic still passes, ESP still goes to the kernel.
    //
    // A restarted daemon loads a new program with fresh maps, fills them completely, and
    // only then attaches in netlink mode without XDP_FLAGS_UPDATE_IF_NOEXIST: the kernel
    // swaps the program pointer in one store (dev_xdp_install), so every packet sees the old
    // program (drops) or the new one (its sockets), never no program. The old program and
    // its maps are freed with the last reference, i.e. at the swap. No pinning: a pin lives
    // on a bpffs mount, and `ip netns exec` (how a gateway in a namespace is usually run)
    // gives each process a private mount namespace whose mounts, bpffs included, die with
    // it, so a pinned link would be released at exactly the moment it is needed.
    //
    // An orderly stop (SIGINT/SIGTERM) leaves the programs attached too, by default: a
    // service manager's restart must not open a moment in which the gateway routes the
    // protected flows in clear. Taking them off is explicit: `xfrm-user detach`
    // ([`detach_xfrm_programs`], only programs of this object, by name), or `run
    // --detach-on-exit`, where [`Self::detach_persistent`] removes the program only if it is
    // still ours (XDP_FLAGS_REPLACE + IFLA_XDP_EXPECTED_FD), so a daemon that already took
    // over is not disturbed. The kernel's own routing (and xfrm, if configured) applies
    // then. `ip link set dev IF xdp off` removes any program by hand.

    /// Attach `prog` to `iface` in netlink mode: it survives this process (see above);
    /// replaces atomically a program a previous daemon left. A bpf_link attachment on the
    /// interface (e.g. a running `xfrm-user attach`) refuses it with EBUSY.
    pub fn attach_persistent(
        &mut self,
        prog: Program,
        iface: &str,
        mode: AttachMode,
    ) -> Result<()> {
        let name = std::ffi::CString::new(iface).context("interface name")?;
        // SAFETY: a valid NUL-terminated string.
        let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
        if ifindex == 0 {
            bail!("attach {}: no interface {iface}", prog.name());
        }
        let mut rtnl = super::neigh::Rtnl::new()?;
        let previous = match self
            .previous
            .iter()
            .position(|(i, m, _)| i == iface && *m == mode)
        {
            Some(at) => Some(self.previous.swap_remove(at).2),
            None => previous_program(&mut rtnl, iface, mode),
        };
        let fd = self.prog(prog.name())?.fd()?.as_fd().as_raw_fd();
        rtnl.set_xdp(ifindex, fd, mode.xdp_flags(), None)
            .map_err(|e| super::explain::attach_error(e, prog.name(), iface, mode))?;
        self.persistent.push(Persistent {
            ifindex,
            iface: iface.to_string(),
            mode,
            prog,
            previous,
        });
        Ok(())
    }

    /// Keep a descriptor of the program `iface` runs in `mode` now, for
    /// [`Self::rollback_persistent`] to put back: call before dropping privileges.
    pub fn remember_previous(&mut self, iface: &str, mode: AttachMode) {
        if let Ok(mut rtnl) = super::neigh::Rtnl::new() {
            if let Some(fd) = previous_program(&mut rtnl, iface, mode) {
                self.previous.push((iface.to_string(), mode, fd));
            }
        }
    }

    /// A start that failed after some [`Self::attach_persistent`]: every interface gets back
    /// the program it had (a previous daemon's, which drops what it would protect), or none,
    /// in reverse order. Nothing is left half-attached; errors are logged, not returned (the
    /// caller is already reporting the failure that brought it here).
    pub fn rollback_persistent(&mut self) {
        let Ok(mut rtnl) = super::neigh::Rtnl::new() else {
            log::error!("rollback: no rtnetlink socket; programs may stay attached");
            return;
        };
        while let Some(p) = self.persistent.pop() {
            let ours = match self
                .prog(p.prog.name())
                .and_then(|x| Ok(x.fd()?.as_fd().as_raw_fd()))
            {
                Ok(fd) => fd,
                Err(e) => {
                    log::error!("rollback {}: {e:#}", p.iface);
                    continue;
                }
            };
            let back = p.previous.as_ref().map_or(-1, |f| f.as_fd().as_raw_fd());
            let r = rtnl.set_xdp(
                p.ifindex,
                back,
                p.mode.xdp_flags() | XDP_FLAGS_REPLACE,
                Some(ours),
            );
            match (r, &p.previous) {
                (Ok(()), Some(_)) => log::info!("{}: the previous XDP program is back", p.iface),
                (Ok(()), None) => log::info!("{}: {} taken off again", p.iface, p.prog.name()),
                (Err(e), _) => log::error!("rollback {}: {e:#}", p.iface),
            }
        }
    }

    /// Remove what [`Self::attach_persistent`] attached, where it is still this object's
    /// program (a newer daemon's program stays).
    pub fn detach_persistent(&mut self) -> Result<()> {
        if let Some(iface) = self.local_out.take() {
            Self::detach_local_out(&iface)?;
        }
        let mut rtnl = super::neigh::Rtnl::new()?;
        for p in std::mem::take(&mut self.persistent) {
            let fd = self.prog(p.prog.name())?.fd()?.as_fd().as_raw_fd();
            let r = rtnl.set_xdp(
                p.ifindex,
                -1,
                p.mode.xdp_flags() | XDP_FLAGS_REPLACE,
                Some(fd),
            );
            match r {
                Ok(()) => {}
                Err(e)
                    if e.downcast_ref::<std::io::Error>()
                        .and_then(|e| e.raw_os_error())
                        .is_some_and(|c| c == libc::EEXIST || c == libc::ENODEV) =>
                {
                    log::info!(
                        "{}: another program took over (or the interface left); not detached",
                        p.iface
                    );
                }
                Err(e) => {
                    return Err(e.context(format!("detach {} from {}", p.prog.name(), p.iface)))
                }
            }
        }
        Ok(())
    }

    /// Attach `xfrm_local_out` to the egress of `iface` (adding its clsact qdisc if missing):
    /// the gateway's own packets that an out policy protects go to the TAP device set with
    /// [`Self::set_local_dev`]. Netlink mode, like [`Self::attach_persistent`]: the filter
    /// outlives this process, and then drops what it would protect (the TAP dies with the
    /// daemon's fds); a restart replaces it in place.
    pub fn attach_local_out(&mut self, iface: &str) -> Result<()> {
        match tc::qdisc_add_clsact(iface) {
            Ok(()) => {}
            Err(tc::TcError::NetlinkError(e)) if e.raw_os_error() == Some(libc::EEXIST) => {}
            Err(e) => return Err(anyhow!(e).context(format!("clsact qdisc on {iface}"))),
        }
        let prog: &mut SchedClassifier = self
            .ebpf
            .program_mut(PROG_LOCAL_OUT)
            .ok_or_else(|| anyhow!("no program {PROG_LOCAL_OUT}"))?
            .try_into()?;
        let opts = NlOptions {
            priority: LOCAL_OUT_PRIORITY,
            handle: LOCAL_OUT_HANDLE,
            ..Default::default()
        };
        let id = match prog.attach_with_options(
            iface,
            TcAttachType::Egress,
            TcAttachOptions::Netlink(opts),
        ) {
            Ok(id) => id,
            // A previous daemon's filter: replace it (one netlink change, no gap).
            Err(_) => prog
                .attach_to_link(local_out_link(iface)?)
                .with_context(|| {
                    format!("attach {PROG_LOCAL_OUT} to {iface} egress (replacing)")
                })?,
        };
        // Not detached when the program is dropped: see the doc above.
        std::mem::forget(prog.take_link(id)?);
        self.local_out = Some(iface.to_string());
        Ok(())
    }

    /// `xfrm-user detach`: remove every egress filter of `iface` running a program named
    /// `xfrm_local_out` (a stopped or killed daemon's). False when there was none.
    pub fn detach_local_out_by_name(iface: &str) -> Result<bool> {
        match tc::qdisc_detach_program(iface, TcAttachType::Egress, PROG_LOCAL_OUT) {
            Ok(()) => Ok(true),
            Err(tc::TcError::IoError(e)) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            // No clsact qdisc: no filter of ours either.
            Err(tc::TcError::NetlinkError(e))
                if matches!(e.raw_os_error(), Some(libc::EINVAL | libc::ENOENT)) =>
            {
                Ok(false)
            }
            Err(e) => Err(anyhow!(e).context(format!("detach {PROG_LOCAL_OUT} from {iface}"))),
        }
    }

    /// Remove `xfrm_local_out` from the egress of `iface` (whoever attached it).
    pub fn detach_local_out(iface: &str) -> Result<()> {
        aya::programs::links::Link::detach(local_out_link(iface)?)
            .with_context(|| format!("detach {PROG_LOCAL_OUT} from {iface} egress"))
    }

    /// The interface [`Self::attach_local_out`] attached to, if any.
    pub fn local_out_iface(&self) -> Option<&str> {
        self.local_out.as_deref()
    }

    /// The TAP device `xfrm_local_out` hands protected packets to (0: none, it drops them).
    pub fn set_local_dev(&mut self, ifindex: u32) -> Result<()> {
        let mut m: Array<&mut MapData, u32> = Array::try_from(
            self.ebpf
                .map_mut(MAP_LOCAL_DEV)
                .ok_or_else(|| anyhow!("no map {MAP_LOCAL_DEV}"))?,
        )?;
        m.set(0, ifindex, 0)?;
        Ok(())
    }

    /// The interfaces this object attached in netlink mode (and has not detached).
    pub fn persistent_interfaces(&self) -> Vec<String> {
        self.persistent.iter().map(|p| p.iface.clone()).collect()
    }

    /// Attach the pass-everything program, e.g. to a veth peer that must accept XDP_TX and
    /// redirected frames.
    pub fn attach_pass(&mut self, iface: &str, mode: AttachMode) -> Result<XdpLinkId> {
        self.prog(PROG_PASS)?
            .attach(iface, mode.aya())
            .with_context(|| format!("attach {PROG_PASS} to {iface} ({mode:?})"))
    }

    /// Take off what [`Self::attach_pass`] attached.
    pub fn detach_pass(&mut self, id: XdpLinkId) -> Result<()> {
        self.prog(PROG_PASS)?
            .detach(id)
            .with_context(|| format!("detach {PROG_PASS}"))
    }

    fn write_config(&mut self) -> Result<()> {
        let mut cfg: Array<&mut MapData, Config> = Array::try_from(
            self.ebpf
                .map_mut(MAP_CONFIG)
                .ok_or_else(|| anyhow!("no map {MAP_CONFIG}"))?,
        )?;
        cfg.set(0, self.config, 0)?;
        Ok(())
    }

    /// One-armed gateway: the outside program also applies the out policies (after the
    /// inbound SA lookup), redirecting protected packets to the outside sockets.
    pub fn set_one_armed(&mut self, on: bool) -> Result<()> {
        if on {
            self.config.flags |= CFG_ONE_ARMED;
        } else {
            self.config.flags &= !CFG_ONE_ARMED;
        }
        self.write_config()
    }

    /// The NAT-T ports of the outside program (see [`super::rules::encap_ports`]).
    pub fn set_encap_ports(&mut self, ports: [EncapPort; MAX_ENCAP_PORTS]) -> Result<()> {
        self.config.encap = ports;
        self.write_config()
    }

    /// Everything the programs need from a database: its out, in and fwd policies, its SAs,
    /// its NAT-T ports (those `InputTables::new(db)` finds; a caller with other tables sets
    /// them with [`Self::set_encap_ports`]).
    pub fn install(&mut self, db: &XfrmDb) -> Result<()> {
        self.set_out_policies(&compile_db(db)?)?;
        for dir in [PolicyDir::In, PolicyDir::Fwd] {
            self.set_policies(Table::of(dir), &compile_inbound(db, dir)?)?;
        }
        self.set_sas(&compile_sas(db)?)?;
        self.set_encap_ports(encap_ports(&InputTables::new(db))?)
    }

    /// Replace the outbound rule table and its index (see [`Self::set_policies`]).
    pub fn set_out_policies(&mut self, rules: &[PolicyRule]) -> Result<()> {
        self.set_policies(Table::Out, rules)
    }

    /// Replace the rules of `which` and their index. Everything goes to the table's idle
    /// slot, then one store to CONFIG makes it live: a packet sees the old table or the new
    /// one, never a mix. The old slot's index entries are deleted after an RCU grace period
    /// (no program run can still be reading them), so the slot is clean for the next update.
    pub fn set_policies(&mut self, which: Table, rules: &[PolicyRule]) -> Result<()> {
        let index = PolicyIndex::build(rules)?;
        let half = self.live_half[which.id() as usize] ^ 1;
        let slot = 2 * which.id() + half;
        let table = TableRef::new(slot, rules.len() as u32).with_flags(index.flags);
        {
            let mut arr: Array<&mut MapData, PolicyRule> = Array::try_from(
                self.ebpf
                    .map_mut(MAP_POLICY_RULES)
                    .ok_or_else(|| anyhow!("no map {MAP_POLICY_RULES}"))?,
            )?;
            for (i, r) in rules.iter().enumerate() {
                arr.set(table.index(i as u32), r, 0)?;
            }
        }
        {
            // Every protocol entry of the slot: the ones not listed are empty.
            let mut protos = vec![RuleBitmap::default(); 512];
            for (family, proto, b) in &index.protos {
                protos[(xfrm_common::proto_index(0, *family, *proto)) as usize] = *b;
            }
            let mut arr: Array<&mut MapData, RuleBitmap> = Array::try_from(
                self.ebpf
                    .map_mut(MAP_POLICY_PROTO)
                    .ok_or_else(|| anyhow!("no map {MAP_POLICY_PROTO}"))?,
            )?;
            for family in [FAMILY_V4, FAMILY_V6] {
                for proto in 0..=255u8 {
                    let b = &protos[xfrm_common::proto_index(0, family, proto) as usize];
                    arr.set(xfrm_common::proto_index(slot, family, proto), b, 0)?;
                }
            }
        }
        let mut keys = SlotKeys::default();
        {
            let mut trie: LpmTrie<&mut MapData, PrefixKey, RuleBitmap> = LpmTrie::try_from(
                self.ebpf
                    .map_mut(MAP_POLICY_PREFIX)
                    .ok_or_else(|| anyhow!("no map {MAP_POLICY_PREFIX}"))?,
            )?;
            for (len, k, b) in &index.prefixes {
                let key = LpmKey::new(
                    *len,
                    PrefixKey {
                        slot: slot as u8,
                        ..*k
                    },
                );
                trie.insert(&key, b, 0)
                    .with_context(|| format!("{MAP_POLICY_PREFIX} insert"))?;
                keys.prefixes.push(key);
            }
        }
        {
            let mut ports: HashMap<&mut MapData, PortKey, RuleBitmap> = HashMap::try_from(
                self.ebpf
                    .map_mut(MAP_POLICY_PORT)
                    .ok_or_else(|| anyhow!("no map {MAP_POLICY_PORT}"))?,
            )?;
            for (k, b) in &index.ports {
                let key = PortKey {
                    slot: slot as u8,
                    ..*k
                };
                ports
                    .insert(key, b, 0)
                    .with_context(|| format!("{MAP_POLICY_PORT} insert"))?;
                keys.ports.push(key);
            }
        }
        match which {
            Table::Out => self.config.out = table,
            Table::In => self.config.inp = table,
            Table::Fwd => self.config.fwd = table,
        }
        self.write_config()?;
        let old = (slot ^ 1) as usize;
        self.live_half[which.id() as usize] = half;
        self.slot_keys[slot as usize] = keys;
        let stale = std::mem::take(&mut self.slot_keys[old]);
        if stale.prefixes.is_empty() && stale.ports.is_empty() {
            return Ok(());
        }
        rcu_grace_period();
        {
            let mut trie: LpmTrie<&mut MapData, PrefixKey, RuleBitmap> =
                LpmTrie::try_from(self.ebpf.map_mut(MAP_POLICY_PREFIX).unwrap())?;
            for k in &stale.prefixes {
                trie.remove(k)
                    .with_context(|| format!("{MAP_POLICY_PREFIX} remove"))?;
            }
        }
        let mut ports: HashMap<&mut MapData, PortKey, RuleBitmap> =
            HashMap::try_from(self.ebpf.map_mut(MAP_POLICY_PORT).unwrap())?;
        for k in &stale.ports {
            ports
                .remove(k)
                .with_context(|| format!("{MAP_POLICY_PORT} remove"))?;
        }
        Ok(())
    }

    /// Replace the inbound SA table: (daddr, SPI, protocol) → SA id. Entries are added or
    /// changed one by one (each atomically), then the ones no longer wanted are removed.
    pub fn set_sas(&mut self, sas: &[(SaKey, u32)]) -> Result<()> {
        if sas.len() > MAX_SAS as usize {
            bail!("{} SAs: the XDP table holds {MAX_SAS}", sas.len());
        }
        let want: std::collections::HashMap<SaKey, u32> = sas.iter().copied().collect();
        let mut map: HashMap<&mut MapData, SaKey, u32> = HashMap::try_from(
            self.ebpf
                .map_mut(MAP_SAS)
                .ok_or_else(|| anyhow!("no map {MAP_SAS}"))?,
        )?;
        for (k, id) in &want {
            if self.sas.get(k) != Some(id) {
                map.insert(k, id, 0)
                    .with_context(|| format!("{MAP_SAS} insert (spi {:#x})", k.spi))?;
            }
        }
        for k in self.sas.keys() {
            if !want.contains_key(k) {
                map.remove(k)
                    .with_context(|| format!("{MAP_SAS} remove (spi {:#x})", k.spi))?;
            }
        }
        self.sas = want;
        Ok(())
    }

    fn xsk_map(&mut self, name: &str) -> Result<XskMap<&mut MapData>> {
        Ok(XskMap::try_from(
            self.ebpf
                .map_mut(name)
                .ok_or_else(|| anyhow!("no map {name}"))?,
        )?)
    }

    /// Put the AF_XDP socket `fd` (bound to the inside interface) in charge of receive queue
    /// `queue`.
    pub fn set_socket(&mut self, queue: u32, fd: RawFd) -> Result<()> {
        self.xsk_map(MAP_XSKS)?
            .set(queue, fd, 0)
            .with_context(|| format!("{MAP_XSKS}[{queue}] = fd {fd}"))
    }

    /// The same for the outside interface's queue `queue`.
    pub fn set_outside_socket(&mut self, queue: u32, fd: RawFd) -> Result<()> {
        self.xsk_map(MAP_XSKS_OUT)?
            .set(queue, fd, 0)
            .with_context(|| format!("{MAP_XSKS_OUT}[{queue}] = fd {fd}"))
    }

    /// Remove the socket of `queue` (what a dead worker amounts to: the program then drops).
    pub fn clear_socket(&mut self, queue: u32) -> Result<()> {
        clear_xsk(self.xsk_map(MAP_XSKS)?, queue)
    }

    /// The same for the outside interface.
    pub fn clear_outside_socket(&mut self, queue: u32) -> Result<()> {
        clear_xsk(self.xsk_map(MAP_XSKS_OUT)?, queue)
    }

    /// The inside program's verdict counters, summed over CPUs.
    pub fn counters(&self) -> Result<Counters> {
        self.counters_of(MAP_COUNTERS)
    }

    /// The outside program's verdict counters, summed over CPUs.
    pub fn outside_counters(&self) -> Result<Counters> {
        self.counters_of(MAP_COUNTERS_OUT)
    }

    /// `xfrm_local_out`'s verdict counters (the gateway's own traffic), summed over CPUs.
    pub fn local_counters(&self) -> Result<Counters> {
        self.counters_of(MAP_COUNTERS_LOCAL)
    }

    fn counters_of(&self, name: &str) -> Result<Counters> {
        let map: PerCpuArray<&MapData, u64> = PerCpuArray::try_from(
            self.ebpf
                .map(name)
                .ok_or_else(|| anyhow!("no map {name}"))?,
        )?;
        let mut out = [0u64; COUNTER_COUNT];
        for (i, slot) in out.iter_mut().enumerate() {
            *slot = map.get(&(i as u32), 0)?.iter().sum();
        }
        Ok(Counters(out))
    }

    /// Run the classifier once on `packet` through BPF_PROG_TEST_RUN (no network, no attach).
    /// The kernel does not perform a redirect in this mode; it reports XDP_REDIRECT.
    pub fn test_run(&mut self, packet: &[u8]) -> Result<TestRunOutcome> {
        self.test_run_prog(Program::Inside, packet, 1)
    }

    /// Run `prog` `repeat` times on `packet` through BPF_PROG_TEST_RUN; the outcome is the
    /// last run's, `ns_per_run` the kernel's own measure (total time / repeat). The kernel
    /// does not reset the packet between runs, so with `repeat` > 1 the programs are told
    /// to take the header they push off again ([`CFG_TEST_REWIND`]): the outcome then has
    /// no `meta`.
    pub fn test_run_prog(
        &mut self,
        prog: Program,
        packet: &[u8],
        repeat: u32,
    ) -> Result<TestRunOutcome> {
        self.test_run_on(prog, packet, repeat, 0)
    }

    /// [`Self::test_run_prog`] as if the packet arrived on interface `ifindex` (queue 0) of
    /// the calling thread's network namespace (route lookups then start there); 0 = the
    /// loopback device.
    pub fn test_run_on(
        &mut self,
        prog: Program,
        packet: &[u8],
        repeat: u32,
        ifindex: u32,
    ) -> Result<TestRunOutcome> {
        let rewind = repeat > 1;
        if (self.config.flags & CFG_TEST_REWIND != 0) != rewind {
            self.config.flags ^= CFG_TEST_REWIND;
            self.write_config()?;
        }
        // struct xdp_md: data, data_end, data_meta, ingress_ifindex, rx_queue_index,
        // egress_ifindex. In: no metadata (data = 0), data_end = the packet length; ifindex 0
        // means the loopback device's queue 0.
        let mut ctx_in = [0u32; 6];
        ctx_in[1] = packet.len() as u32;
        ctx_in[3] = ifindex;
        let ctx_in: Vec<u8> = ctx_in.iter().flat_map(|w| w.to_ne_bytes()).collect();
        let mut ctx_out = [0u8; 24];
        // Headroom the program may take for metadata comes back in front of the packet.
        let mut data_out = vec![0u8; packet.len() + 256];
        let res = self
            .prog(prog.name())?
            .test_run(TestRunOptions {
                data_in: Some(packet),
                data_out: Some(&mut data_out),
                ctx_in: Some(&ctx_in),
                ctx_out: Some(&mut ctx_out),
                repeat: repeat.max(1),
                ..TestRunOptions::new()
            })
            .context("BPF_PROG_TEST_RUN")?;
        data_out.truncate(res.data_size_out as usize);
        // A redirect pushes the XdpMeta header in front of the frame: the output is longer
        // than the input by exactly its size, and starts with it.
        let meta_len = data_out.len().saturating_sub(packet.len());
        let meta = match meta_len {
            0 => None,
            XDP_META_LEN => take_meta(&data_out, 0, data_out.len()).map(|r| r.meta),
            n => bail!(
                "test run: output {n} bytes longer than the input, expected 0 or {XDP_META_LEN}"
            ),
        };
        if meta_len != 0 && meta.is_none() {
            bail!("test run: a {XDP_META_LEN}-byte header in front of the packet without a valid XdpMeta");
        }
        Ok(TestRunOutcome {
            action: res.return_value,
            meta,
            packet: data_out[meta_len..].to_vec(),
            ns_per_run: res.duration.as_nanos() as u64,
        })
    }

    /// How many instructions the verifier processed for each program (its budget is 1M):
    /// the headroom left for the program to grow.
    pub fn verifier_stats(&self) -> Result<Vec<(&'static str, u32)>> {
        [PROG_CLASSIFY, PROG_OUTSIDE]
            .into_iter()
            .map(|name| {
                let prog: &Xdp = self
                    .ebpf
                    .program(name)
                    .ok_or_else(|| anyhow!("no program {name}"))?
                    .try_into()?;
                let n = prog.info()?.verified_instruction_count().unwrap_or(0);
                Ok((name, n))
            })
            .collect()
    }

    /// Drain pending eBPF log records now (they are also drained every 100 ms).
    pub fn flush_logs(&mut self) {
        if let Some(p) = &self.logs {
            p.flush_now();
        }
    }
}

fn clear_xsk(mut map: XskMap<&mut MapData>, queue: u32) -> Result<()> {
    match map.unset(queue) {
        Ok(()) => Ok(()),
        // Already empty.
        Err(aya::maps::MapError::KeyNotFound) => Ok(()),
        Err(aya::maps::MapError::SyscallError(e))
            if e.io_error.raw_os_error() == Some(libc::ENOENT) =>
        {
            Ok(())
        }
        Err(e) => Err(e.into()),
    }
}

/// Wait until every BPF program run that started before now has finished: membarrier's
/// global command is a synchronize_rcu(), and XDP runs inside an RCU read-side section.
/// Kernels that refuse it (nohz_full) get a pause far longer than any program run.
fn rcu_grace_period() {
    const MEMBARRIER_CMD_GLOBAL: libc::c_long = 1;
    // SAFETY: membarrier takes two integers and touches no memory of ours.
    let r = unsafe { libc::syscall(libc::SYS_membarrier, MEMBARRIER_CMD_GLOBAL, 0, 0) };
    if r != 0 {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// A task that waits on the aya-log ring buffer and forwards records to `log`.
struct LogPump {
    logger: Arc<std::sync::Mutex<EbpfLogger<&'static dyn log::Log>>>,
    _task: ControlTask,
}

impl LogPump {
    fn start(logger: EbpfLogger<&'static dyn log::Log>) -> Result<Self> {
        let fd = logger.as_fd().as_raw_fd();
        let logger = Arc::new(std::sync::Mutex::new(logger));
        let pumped = logger.clone();
        let task = ControlTask::start("ebpf-log", move |stop| async move {
            // SAFETY: the fd is the logger's ring buffer, owned by `pumped`, which this task
            // holds (an Arc) for longer than the registration.
            let afd = match unsafe {
                tokio::io::unix::AsyncFd::register_with_interest(
                    LentFd(fd),
                    tokio::io::Interest::READABLE,
                )
            } {
                Ok(a) => a,
                Err(e) => {
                    log::warn!("eBPF logs: {e}");
                    return;
                }
            };
            let flush = || pumped.lock().unwrap_or_else(|e| e.into_inner()).flush();
            loop {
                tokio::select! {
                    _ = stop.notified() => break,
                    ready = afd.readable() => {
                        let Ok(mut guard) = ready else { break };
                        guard.clear_ready();
                        flush();
                    }
                }
            }
            flush();
        })?;
        Ok(Self {
            logger,
            _task: task,
        })
    }

    /// Forward what the programs logged so far, now.
    fn flush_now(&self) {
        self.logger
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .flush();
    }
}

impl Drop for LogPump {
    fn drop(&mut self) {
        // The task is stopped (its field drops after this); what it had not read yet:
        self.flush_now();
    }
}
