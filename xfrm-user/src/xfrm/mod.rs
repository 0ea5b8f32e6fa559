//! The XFRM transforms as the kernel layers them: `state` (xfrm_state), `spd` (policies and
//! SA lookup), `mode` (x->outer_mode: transport/tunnel), `esp` and `ah` (x->type), and
//! `output` (xfrm_output / xfrm_output_resume / xfrm_output_one).

pub mod ah;
pub mod esp;
pub mod mode;
pub mod output;
pub mod spd;
pub mod state;

pub use output::{xfrm_output, xfrm_output_bundle, Verdict};
pub use spd::XfrmDb;
pub use state::{Clock, KmState, ManualClock, SecurityAssociation, SystemClock};

#[cfg(test)]
mod tests;
