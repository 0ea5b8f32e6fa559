//! The XFRM transforms as the kernel layers them: `state` (xfrm_state), `spd` (policies and
//! SA lookup), `mode` (x->outer_mode: transport/tunnel), `esp` and `ah` (x->type), and
//! `output` (xfrm_output / xfrm_output_resume / xfrm_output_one).
//!
//! The input side goes beside each: xfrm_input in input.rs (with the NAT-T receive hook
//! in front and __xfrm_policy_check, policy_check.rs, behind); esp_input next to
//! esp_output (reusing `esp_aad` and the ESN header shift of the GMAC path); ah_input next
//! to ah_output (`ah_icv_header(.., out = false, ..)` zeroes the same fields); the
//! tunnel/transport input modes in mode.rs; the replay window in replay.rs, kept per SA in
//! state.rs; `XfrmDb::state_lookup` finds the SA by (daddr, spi, proto).

pub mod ah;
pub mod esp;
pub mod input;
pub mod mode;
pub mod output;
pub mod persist;
pub mod pmtu;
pub mod policy_check;
pub mod policy_index;
pub mod replay;
pub mod spd;
pub mod state;

pub use input::{xfrm_input, xfrm_input_flow, InputTables, InputVerdict};
pub use output::{xfrm_output, xfrm_output_bundle, Verdict};
pub use persist::{SaIdentity, SeqSlot, StateFile, StateFileError};
pub use spd::XfrmDb;
pub use state::{Clock, KmState, ManualClock, SecurityAssociation, SystemClock};

#[cfg(test)]
mod input_tests;
#[cfg(test)]
mod tests;
