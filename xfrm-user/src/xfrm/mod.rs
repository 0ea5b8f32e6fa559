//! The XFRM transforms as the kernel layers them: `state` (xfrm_state), `spd` (policies and
//! SA lookup), `mode` (x->outer_mode: transport/tunnel), `esp` and `ah` (x->type),
//! `output` (xfrm_output / xfrm_output_resume / xfrm_output_one), and the input side:
//! `replay` (xfrm_replay.c) and `policy_check` (__xfrm_policy_check).

pub mod ah;
pub mod esp;
pub mod input;
pub mod mode;
pub mod output;
pub mod policy_check;
pub mod replay;
pub mod spd;
pub mod state;

pub use input::{xfrm_input, InputTables, InputVerdict};
pub use output::{xfrm_output, xfrm_output_bundle, Verdict};
pub use spd::XfrmDb;
pub use state::{Clock, KmState, ManualClock, SecurityAssociation, SystemClock};

#[cfg(test)]
mod input_tests;
#[cfg(test)]
mod tests;
