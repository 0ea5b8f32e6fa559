//! The live datapath around the pure transforms: the XDP classifier's loader (aya), its rule
//! table, and AF_XDP sockets (xdpilone).

pub mod bench;
pub mod detach;
pub mod doctor;
pub mod explain;
pub mod loader;
pub mod neigh;
pub mod privs;
pub mod reasm;
pub mod rules;
pub mod run;
pub mod sys;
pub mod tap;
pub mod umem;
pub mod worker;
#[cfg(feature = "test-support")]
pub mod xsk;

#[cfg(feature = "test-support")]
pub use loader::TestRunOutcome;
pub use loader::{AttachMode, Counters, Datapath};
