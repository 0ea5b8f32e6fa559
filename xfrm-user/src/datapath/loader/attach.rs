//! Attaching the programs: XDP in netlink mode (it outlives the daemon: fail closed) or
//! through a bpf_link, the TC egress filter for the host's own traffic, and taking them off.

use std::os::fd::{AsFd, AsRawFd};

use anyhow::{anyhow, bail, Context, Result};
use aya::{
    maps::{Array, MapData},
    programs::{
        tc::{self, NlOptions, SchedClassifierLink, TcAttachOptions, TcHandle},
        xdp::{XdpLinkId, XdpMode},
        SchedClassifier, TcAttachType,
    },
};
use xfrm_common::{MAP_LOCAL_DEV, PROG_CLASSIFY, PROG_LOCAL_OUT, PROG_OUTSIDE, PROG_PASS};

use super::*;

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
    pub(super) fn aya(self) -> XdpMode {
        match self {
            Self::Native => XdpMode::Driver,
            Self::Skb => XdpMode::Skb,
        }
    }

    /// XDP_FLAGS_DRV_MODE / XDP_FLAGS_SKB_MODE (linux/if_link.h), for netlink attach.
    pub(super) fn xdp_flags(self) -> u32 {
        match self {
            Self::Native => XDP_FLAGS_DRV_MODE,
            Self::Skb => XDP_FLAGS_SKB_MODE,
        }
    }
}

pub(super) const XDP_FLAGS_SKB_MODE: u32 = 1 << 1;
pub(super) const XDP_FLAGS_DRV_MODE: u32 = 1 << 2;
pub(super) const XDP_FLAGS_REPLACE: u32 = 1 << 4;

/// A program attached in netlink mode by [`Datapath::attach_persistent`]: it stays on the
/// interface when this process dies.
pub(super) struct Persistent {
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
    use crate::datapath::neigh::{Rtnl, XdpAttachMode};
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
                        " (attached through a bpf_link by a running process: stop that \
                         process)"
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

/// Where `xfrm_local_out` sits among an interface's egress filters: first (priority 1), with
/// a handle of its own, so a restarted daemon finds and replaces it.
pub(super) const LOCAL_OUT_PRIORITY: u16 = 1;
pub(super) const LOCAL_OUT_HANDLE: TcHandle = TcHandle::new(0, 0x1fe);

/// Our egress filter on `iface`, as aya names an attachment it did not make itself.
pub(super) fn local_out_link(iface: &str) -> Result<SchedClassifierLink> {
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
pub(super) fn previous_program(
    rtnl: &mut crate::datapath::neigh::Rtnl,
    iface: &str,
    mode: AttachMode,
) -> Option<aya::programs::ProgramFd> {
    use crate::datapath::neigh::XdpAttachMode;
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
    /// interface (held by a running process) refuses it with EBUSY.
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
        let mut rtnl = crate::datapath::neigh::Rtnl::new()?;
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
            .map_err(|e| crate::datapath::explain::attach_error(e, prog.name(), iface, mode))?;
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
        if let Ok(mut rtnl) = crate::datapath::neigh::Rtnl::new() {
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
        let Ok(mut rtnl) = crate::datapath::neigh::Rtnl::new() else {
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
        let mut rtnl = crate::datapath::neigh::Rtnl::new()?;
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
}
