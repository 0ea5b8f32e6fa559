//! A benchmark aid, not a gateway: `xfrm-user run --bench-null-transform` (hidden) forwards
//! every frame the programs hand to a worker **unchanged and unencrypted** to the other
//! side, so that `cargo xtask bench --gateway` can measure the plumbing alone (XDP →
//! AF_XDP → worker → neighbour → TX) beside the ESP transform in the same topology.
//!
//! Both directions must pass a worker, as with ESP: the outside program then also
//! classifies clear text from the wire against the out table (its one-armed mode), so the
//! configuration holds an out policy for each direction and no in/fwd policy that requires
//! a template (that would drop the clear text). The cost when off: one predictable branch
//! per frame.

use xfrm_common::XdpMeta;

use super::worker::{Action, Ctx, Side, Transform};
use crate::frame::Frame;

/// `inner`, or, when `null` is set, the null transform for frames from the two interfaces
/// (the host's own frames, from the TAP, still go through `inner`).
pub struct NullOr<T> {
    inner: T,
    null: bool,
}

impl<T: Transform> NullOr<T> {
    pub fn new(inner: T, null: bool) -> Self {
        Self { inner, null }
    }
}

/// Where the null transform sends a frame from `from`: straight to the other interface.
fn null_action(from: Side) -> Option<Action> {
    match from {
        Side::Inside => Some(Action::Tx(Side::Outside)),
        Side::Outside => Some(Action::Tx(Side::Inside)),
        Side::Local => None,
    }
}

impl<T: Transform> Transform for NullOr<T> {
    #[inline]
    fn process(
        &mut self,
        from: Side,
        meta: Option<&XdpMeta>,
        frame: &mut Frame<'_>,
        ctx: &Ctx<'_>,
    ) -> Action {
        if self.null {
            if let Some(a) = null_action(from) {
                return a;
            }
        }
        self.inner.process(from, meta, frame, ctx)
    }

    // Every other method is the inner transform's (its table updates).
    fn between_batches(&mut self) {
        self.inner.between_batches();
    }

    fn wake_fd(&self) -> Option<std::os::fd::RawFd> {
        self.inner.wake_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn null_crosses_over_and_leaves_the_host_path_alone() {
        assert_eq!(null_action(Side::Inside), Some(Action::Tx(Side::Outside)));
        assert_eq!(null_action(Side::Outside), Some(Action::Tx(Side::Inside)));
        assert_eq!(null_action(Side::Local), None);
    }

    /// The wrapper must not hide the inner transform's table updates (a default method it
    /// forgot to forward would leave the workers on their first tables).
    #[test]
    fn table_updates_reach_the_inner_transform() {
        struct Inner(u32);
        impl Transform for Inner {
            fn process(
                &mut self,
                _: Side,
                _: Option<&XdpMeta>,
                _: &mut Frame<'_>,
                _: &Ctx<'_>,
            ) -> Action {
                Action::Drop
            }
            fn between_batches(&mut self) {
                self.0 += 1;
            }
            fn wake_fd(&self) -> Option<std::os::fd::RawFd> {
                Some(7)
            }
        }
        for null in [false, true] {
            let mut t = NullOr::new(Inner(0), null);
            t.between_batches();
            assert_eq!((t.inner.0, t.wake_fd()), (1, Some(7)));
        }
    }
}
