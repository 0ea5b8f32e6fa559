//! The runtime control plane: `xfrm-user run` owns a Unix socket (mode 0600, root only) on
//! which `ip xfrm`'s words change the SAD and SPD while traffic flows
//! (docs/control-protocol.md).
//!
//! Layers: `protocol` (the datagrams), `socket` (AF_UNIX SOCK_SEQPACKET), `server` (the
//! daemon's end, on the run loop's runtime) and `client` (`xfrm-user xfrm …`); `store` (the
//! control plane's SAD/SPD and what each request does to it), `render` (how SAs and
//! policies print), `keep` (what the state file keeps of it), `handover` (new tables to the workers, acknowledged before the reply).

pub mod apply;
pub mod client;
pub mod handover;
pub mod keep;
pub mod protocol;
pub mod render;
pub mod server;
pub mod socket;
pub mod store;
pub mod tables;
