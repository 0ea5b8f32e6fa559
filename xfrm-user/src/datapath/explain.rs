//! What a failed start says: one message that names the program, what the kernel or the
//! driver refused, and what to try. The raw verifier log goes to the debug log, not to the
//! operator's terminal (it runs to thousands of lines).

use anyhow::anyhow;

use super::AttachMode;

/// The verifier's diagnostics for a helper the program may not call, as libbpf's helper
/// probe reads them: (what the log says, what it means).
const HELPER_DIAGNOSTICS: [(&str, &str); 3] = [
    (
        "program of this type cannot use helper ",
        "this kernel does not let this program type call",
    ),
    ("unknown func ", "this kernel has no helper"),
    ("invalid func ", "this kernel has no helper"),
];

/// The one line of a verifier log that says why: a refused helper where there is one, else
/// the last line the verifier wrote.
pub fn verifier_reason(log: &str) -> String {
    for line in log.lines() {
        for (needle, meaning) in HELPER_DIAGNOSTICS {
            if let Some(at) = line.find(needle) {
                let helper = line[at + needle.len()..]
                    .split_whitespace()
                    .next()
                    .unwrap_or("?");
                return format!("{meaning} {helper}");
            }
        }
    }
    log.lines()
        .map(str::trim)
        .rfind(|l| !l.is_empty() && !l.starts_with("processed "))
        .unwrap_or("no verifier output")
        .to_string()
}

/// A program the kernel refused to load.
pub fn load_error(prog: &str, e: aya::programs::ProgramError) -> anyhow::Error {
    match e {
        aya::programs::ProgramError::LoadError {
            io_error,
            verifier_log,
        } => {
            let log = verifier_log.to_string();
            log::debug!("verifier log of {prog}:\n{log}");
            anyhow!(
                "the kernel ({}) refused program {prog}: {} ({io_error}). Try: a newer kernel; \
                 `xfrm-user doctor --inside IF --outside IF` shows what this one offers; \
                 RUST_LOG=debug prints the verifier's whole log",
                kernel_release(),
                verifier_reason(&log),
            )
        }
        other => anyhow!(other).context(format!("load program {prog}")),
    }
}

/// An XDP program an interface would not take.
pub fn attach_error(e: anyhow::Error, prog: &str, iface: &str, mode: AttachMode) -> anyhow::Error {
    let errno = e
        .chain()
        .find_map(|c| c.downcast_ref::<std::io::Error>())
        .and_then(std::io::Error::raw_os_error);
    let (mode_word, other) = match mode {
        AttachMode::Native => ("native", "skb"),
        AttachMode::Skb => ("skb", "native"),
    };
    let hint = match errno {
        Some(libc::EOPNOTSUPP) => format!(
            "the driver of {iface} cannot run XDP programs in {mode_word} mode. Try: \
             --xdp-mode skb (generic XDP: any interface, slower)"
        ),
        Some(libc::EBUSY) => format!(
            "another tool holds {iface}'s XDP hook through a bpf_link (a running xdp-loader, \
             say). Try: stop it first"
        ),
        Some(libc::EEXIST) => format!(
            "{iface} has an XDP program in the other mode. Try: --xdp-mode {other}, or take it \
             off first (`xfrm-user detach --inside IF --outside IF`, `ip link set dev {iface} \
             xdp off`)"
        ),
        Some(libc::ERANGE) | Some(libc::EINVAL) => format!(
            "{iface} refused it ({}): for native XDP some drivers need a smaller MTU or \
             fewer/more queues. Try: --xdp-mode skb",
            std::io::Error::from_raw_os_error(errno.unwrap_or(0))
        ),
        _ => format!("{e:#}. Try: --xdp-mode {other}; `xfrm-user doctor` shows what works"),
    };
    anyhow!("cannot attach {prog} to {iface} ({mode_word} XDP): {hint}")
}

/// `uname -r`.
pub fn kernel_release() -> String {
    // SAFETY: uname fills the zeroed struct; release is NUL-terminated within it.
    unsafe {
        let mut u: libc::utsname = std::mem::zeroed();
        if libc::uname(&mut u) != 0 {
            return "unknown kernel".into();
        }
        std::ffi::CStr::from_ptr(u.release.as_ptr())
            .to_string_lossy()
            .into_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_refused_helper_is_named() {
        // As the verifier of kernel 6.18 here answered a program calling adjust_meta.
        let log = "0: R1=ctx() R10=fp0\n; let ret = ...\n12: (85) call bpf_xdp_adjust_meta#54\n\
                   program of this type cannot use helper bpf_xdp_adjust_meta#54\n\
                   processed 13 insns (limit 1000000)\n";
        assert_eq!(
            verifier_reason(log),
            "this kernel does not let this program type call bpf_xdp_adjust_meta#54"
        );
        assert_eq!(
            verifier_reason("5: (85) call unknown#211\ninvalid func unknown#211\n"),
            "this kernel has no helper unknown#211"
        );
    }

    #[test]
    fn otherwise_the_last_word_of_the_verifier() {
        let log = "0: R1=ctx()\n1: (61) r2 = *(u32 *)(r1 +0)\ninvalid access to packet, off=0 \
                   size=4\nprocessed 2 insns (limit 1000000)\n";
        assert_eq!(
            verifier_reason(log),
            "invalid access to packet, off=0 size=4"
        );
        assert_eq!(verifier_reason(""), "no verifier output");
    }

    #[test]
    fn attach_errors_say_what_to_try() {
        let e = anyhow!(std::io::Error::from_raw_os_error(libc::EOPNOTSUPP)).context("netlink");
        let m = attach_error(e, "xfrm_outside", "dummy0", AttachMode::Native).to_string();
        assert!(m.contains("xfrm_outside") && m.contains("dummy0"), "{m}");
        assert!(m.contains("--xdp-mode skb"), "{m}");
        let e = anyhow!(std::io::Error::from_raw_os_error(libc::EEXIST));
        let m = attach_error(e, "xfrm_classify", "eth1", AttachMode::Skb).to_string();
        assert!(m.contains("--xdp-mode native"), "{m}");
    }
}
