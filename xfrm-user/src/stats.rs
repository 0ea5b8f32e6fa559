//! Counters named as in /proc/net/xfrm_stat (include/uapi/linux/snmp.h, LINUX_MIB_XFRM*),
//! plus a few of this datapath's own, kept apart so the kernel's names keep their meaning.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};

macro_rules! counters {
    ($name:ident { $($variant:ident),* $(,)? }) => {
        /// One counter id; `name()` is the text /proc/net/xfrm_stat prints.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        #[repr(usize)]
        pub enum $name { $($variant),* }

        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$variant),*];
            pub const COUNT: usize = Self::ALL.len();
            pub fn name(self) -> &'static str {
                match self { $($name::$variant => stringify!($variant)),* }
            }
        }
    };
}

counters!(XfrmStat {
    XfrmInError,
    XfrmInBufferError,
    XfrmInHdrError,
    XfrmInNoStates,
    XfrmInStateProtoError,
    XfrmInStateModeError,
    XfrmInStateSeqError,
    XfrmInStateExpired,
    XfrmInStateMismatch,
    XfrmInStateInvalid,
    XfrmInTmplMismatch,
    XfrmInNoPols,
    XfrmInPolBlock,
    XfrmInPolError,
    XfrmOutError,
    XfrmOutBundleGenError,
    XfrmOutBundleCheckError,
    XfrmOutNoStates,
    XfrmOutStateProtoError,
    XfrmOutStateModeError,
    XfrmOutStateSeqError,
    XfrmOutStateExpired,
    XfrmOutPolBlock,
    XfrmOutPolDead,
    XfrmOutPolError,
    XfrmFwdHdrError,
    XfrmOutStateInvalid,
    XfrmAcquireError,
    XfrmOutStateDirError,
    XfrmInStateDirError,
    XfrmInIptfsError,
    XfrmOutNoQueueSpace,
});

impl fmt::Display for XfrmStat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Global counters, shared by every worker (relaxed atomics: each is an independent tally).
pub struct XfrmStats {
    values: [AtomicU64; XfrmStat::COUNT],
}

impl Default for XfrmStats {
    fn default() -> Self {
        Self {
            values: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }
}

impl XfrmStats {
    pub fn new() -> Self {
        Self::default()
    }

    #[inline]
    pub fn inc(&self, stat: XfrmStat) {
        self.values[stat as usize].fetch_add(1, Ordering::Relaxed);
    }

    pub fn get(&self, stat: XfrmStat) -> u64 {
        self.values[stat as usize].load(Ordering::Relaxed)
    }

    /// All counters in /proc/net/xfrm_stat order.
    pub fn snapshot(&self) -> Vec<(XfrmStat, u64)> {
        XfrmStat::ALL.iter().map(|&s| (s, self.get(s))).collect()
    }

    /// The /proc/net/xfrm_stat text: `Name<spaces>value` one per line.
    pub fn render(&self) -> String {
        let mut out = String::new();
        for (stat, value) in self.snapshot() {
            out.push_str(&format!("{:<32}{}\n", stat.name(), value));
        }
        out
    }

    /// Whether every counter is 0 (no allocation: the counter lines ask it of every SA).
    pub fn is_zero(&self) -> bool {
        self.values.iter().all(|v| v.load(Ordering::Relaxed) == 0)
    }

    /// Only the non-zero counters, for summaries.
    pub fn render_nonzero(&self) -> String {
        let mut out = String::new();
        for (stat, value) in self.snapshot().into_iter().filter(|(_, v)| *v != 0) {
            out.push_str(&format!("{:<32}{}\n", stat.name(), value));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_match_proc_net_xfrm_stat() {
        assert_eq!(
            XfrmStat::XfrmOutStateSeqError.name(),
            "XfrmOutStateSeqError"
        );
        assert_eq!(XfrmStat::ALL[0].name(), "XfrmInError");
        let s = XfrmStats::new();
        s.inc(XfrmStat::XfrmOutPolBlock);
        s.inc(XfrmStat::XfrmOutPolBlock);
        assert_eq!(s.get(XfrmStat::XfrmOutPolBlock), 2);
        assert!(s.render().contains("XfrmOutPolBlock                 2\n"));
        assert_eq!(s.render_nonzero().lines().count(), 1);
        assert!(!s.is_zero());
        assert!(XfrmStats::new().is_zero());
    }
}
