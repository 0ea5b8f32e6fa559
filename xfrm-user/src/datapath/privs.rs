//! Least privilege for the running gateway. What needs more than CAP_NET_ADMIN is done before
//! `run` attaches its programs: they are loaded (CAP_BPF, CAP_SYS_ADMIN), the AF_XDP, raw and
//! TAP sockets are open (CAP_NET_RAW, CAP_NET_ADMIN), the state file is written and mapped.
//! Attaching (netlink: RTM_SETLINK, the clsact qdisc and the TC filter) needs CAP_NET_ADMIN
//! only, and so does what the daemon does from then on:
//!
//! - updates and reads maps through the fds it holds (no capability: the kernel checks
//!   map_create and prog_load, not the updates of a map fd one already has),
//! - moves frames on its AF_XDP, raw and TAP fds, pumps the eBPF log ring (no capability),
//! - writes the state file through its mapping (no capability),
//! - asks rtnetlink for routes, neighbours and links (no capability) and sends RTM_NEWNEIGH
//!   with NTF_USE to make the kernel resolve a next hop or re-probe a stale one: a change
//!   request, which rtnetlink refuses without CAP_NET_ADMIN (netlink_net_capable checks the
//!   sender at send time),
//! - at an orderly stop with `--detach-on-exit`, takes its XDP and TC programs off the
//!   interfaces (RTM_SETLINK, RTM_DELTFILTER: CAP_NET_ADMIN).
//!
//! So CAP_NET_ADMIN is kept, alone, in the permitted and effective sets; the bounding,
//! inheritable and ambient sets are emptied; no_new_privs is set (no execve can gain
//! privileges again) and the process is made non-dumpable (no core file, no ptrace or
//! /proc/PID/mem without CAP_SYS_PTRACE: the keys stay in this process). Capabilities are per
//! thread: this runs on the thread that starts the workers, before it starts them, so they
//! inherit the reduced sets.
//!
//! With a user (`run --user NAME`) the daemon also leaves uid 0: its uid and primary gid
//! become the user's, without supplementary groups, CAP_NET_ADMIN kept across the change
//! (PR_SET_KEEPCAPS). Root's files are then closed to it; what it holds open (the state
//! file's mapping and lock, the sockets) stays usable.

use anyhow::{bail, Context, Result};
use caps::{CapSet, Capability, CapsHashSet};

/// What the running daemon keeps (see the module's doc for why).
pub const KEPT: &[Capability] = &[Capability::CAP_NET_ADMIN];

/// The kept set as the kernel shows it in /proc/PID/status (`CapEff`, `CapPrm`): a bitmask.
pub fn kept_mask() -> u64 {
    KEPT.iter().map(|c| c.bitmask()).fold(0, |a, b| a | b)
}

fn kept() -> CapsHashSet {
    KEPT.iter().copied().collect()
}

/// A user's uid and primary gid, from the passwd database.
pub fn lookup_user(name: &str) -> Result<(libc::uid_t, libc::gid_t)> {
    let c = std::ffi::CString::new(name).context("user name")?;
    // SAFETY: a zeroed passwd is a valid out-parameter for getpwnam_r.
    let mut pw: libc::passwd = unsafe { std::mem::zeroed() };
    let mut buf = vec![0 as libc::c_char; 16 * 1024];
    let mut res: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: every pointer is valid for the call; buf's length is passed.
    let r = unsafe { libc::getpwnam_r(c.as_ptr(), &mut pw, buf.as_mut_ptr(), buf.len(), &mut res) };
    if r != 0 {
        return Err(std::io::Error::from_raw_os_error(r)).with_context(|| format!("user {name}"));
    }
    if res.is_null() {
        bail!("user {name}: no such user");
    }
    Ok((pw.pw_uid, pw.pw_gid))
}

/// Becomes `uid`/`gid` (real, effective, saved; no supplementary groups) keeping the
/// permitted capabilities. glibc applies each call to every thread of the process.
fn become_user(uid: libc::uid_t, gid: libc::gid_t) -> Result<()> {
    let os = |what: &str| Err(std::io::Error::last_os_error()).context(what.to_string());
    // SAFETY: prctl with integer arguments only.
    if unsafe { libc::prctl(libc::PR_SET_KEEPCAPS, 1, 0, 0, 0) } != 0 {
        return os("prctl(PR_SET_KEEPCAPS)");
    }
    // SAFETY: no groups: a null list of length 0.
    if unsafe { libc::setgroups(0, std::ptr::null()) } != 0 {
        return os("setgroups");
    }
    // SAFETY: integer arguments only.
    if unsafe { libc::setresgid(gid, gid, gid) } != 0 {
        return os("setresgid");
    }
    // SAFETY: integer arguments only.
    if unsafe { libc::setresuid(uid, uid, uid) } != 0 {
        return os("setresuid");
    }
    // SAFETY: prctl with integer arguments only.
    if unsafe { libc::prctl(libc::PR_SET_KEEPCAPS, 0, 0, 0, 0) } != 0 {
        return os("prctl(PR_SET_KEEPCAPS, 0)");
    }
    Ok(())
}

/// Drops every capability but [`KEPT`] from all five sets of the calling thread, becomes
/// `user` (uid, gid) if given, sets no_new_privs and clears the dumpable flag. Fails (and
/// the caller must not go on) if the permitted or effective set would keep more than
/// [`KEPT`].
pub fn drop_after_start(user: Option<(libc::uid_t, libc::gid_t)>) -> Result<()> {
    let keep = kept();
    let have = caps::read(None, CapSet::Permitted).context("capget")?;
    // The bounding set needs CAP_SETPCAP to shrink. Without it (a daemon started with a
    // few file capabilities, not as root) it is left as is: with no_new_privs set below,
    // it only limits what an execve could gain, and no execve can gain anything.
    if have.contains(&Capability::CAP_SETPCAP) {
        caps::raise(None, CapSet::Effective, Capability::CAP_SETPCAP).context("capset")?;
        for c in caps::all().difference(&keep) {
            if caps::has_cap(None, CapSet::Bounding, *c).unwrap_or(false) {
                caps::drop(None, CapSet::Bounding, *c)
                    .with_context(|| format!("drop {c} from the bounding set"))?;
            }
        }
    } else {
        log::warn!(
            "no CAP_SETPCAP: the capability bounding set is left as it is (no_new_privs \
             makes it moot)"
        );
    }
    if let Some((uid, gid)) = user {
        become_user(uid, gid)?;
    }
    caps::clear(None, CapSet::Ambient).context("clear the ambient set")?;
    caps::clear(None, CapSet::Inheritable).context("clear the inheritable set")?;
    let keep_have: CapsHashSet = keep.intersection(&have).copied().collect();
    // Effective first: it must stay within the permitted set at every step.
    caps::set(None, CapSet::Effective, &keep_have).context("set the effective set")?;
    caps::set(None, CapSet::Permitted, &keep_have).context("set the permitted set")?;
    for set in [CapSet::Effective, CapSet::Permitted] {
        let now = caps::read(None, set).context("capget")?;
        if !now.is_subset(&keep) {
            bail!("capabilities still held after the drop ({set:?}): {now:?}");
        }
    }
    // SAFETY: prctl with integer arguments only.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
        return Err(std::io::Error::last_os_error()).context("prctl(PR_SET_NO_NEW_PRIVS)");
    }
    // SAFETY: as above.
    if unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) } != 0 {
        return Err(std::io::Error::last_os_error()).context("prctl(PR_SET_DUMPABLE, 0)");
    }
    // SAFETY: getuid has no preconditions.
    let uid = unsafe { libc::getuid() };
    log::info!(
        "privileges dropped: capabilities {KEPT:?} kept, uid {uid}, no_new_privs set, not \
         dumpable"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn users_are_looked_up() {
        assert_eq!(lookup_user("root").unwrap(), (0, 0));
        let e = lookup_user("no-such-user-xfrm").unwrap_err().to_string();
        assert_eq!(e, "user no-such-user-xfrm: no such user");
    }

    #[test]
    fn the_kept_mask_is_cap_net_admin() {
        // CAP_NET_ADMIN is capability 12: /proc/PID/status shows 0000000000001000.
        assert_eq!(kept_mask(), 1 << 12);
        assert_eq!(format!("{:016x}", kept_mask()), "0000000000001000");
    }

    /// In a thread of its own (capabilities are per thread; the dumpable flag is the
    /// process's, which a test process can do without).
    #[test]
    fn a_thread_keeps_only_what_it_needs() {
        std::thread::spawn(|| {
            drop_after_start(None).unwrap();
            let eff = caps::read(None, CapSet::Effective).unwrap();
            let perm = caps::read(None, CapSet::Permitted).unwrap();
            assert!(eff.is_subset(&kept()) && perm.is_subset(&kept()), "{eff:?}");
            assert!(caps::read(None, CapSet::Inheritable).unwrap().is_empty());
            assert!(caps::read(None, CapSet::Ambient).unwrap().is_empty());
            // SAFETY: prctl with integer arguments only.
            let (nnp, dumpable) = unsafe {
                (
                    libc::prctl(libc::PR_GET_NO_NEW_PRIVS, 0, 0, 0, 0),
                    libc::prctl(libc::PR_GET_DUMPABLE, 0, 0, 0, 0),
                )
            };
            assert_eq!((nnp, dumpable), (1, 0));
            if perm.contains(&Capability::CAP_NET_ADMIN) {
                // Root before: the bounding set is the kept one now.
                assert_eq!(caps::read(None, CapSet::Bounding).unwrap(), kept());
            }
            // A second drop changes nothing and succeeds.
            drop_after_start(None).unwrap();
            // The flag is the whole test process's: set it back.
            // SAFETY: prctl with integer arguments only.
            unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 1, 0, 0, 0) };
        })
        .join()
        .unwrap();
    }
}
