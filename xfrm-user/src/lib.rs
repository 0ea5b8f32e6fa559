//! xfrm-user: Linux's XFRM output and input paths as pure code over packet buffers, the
//! ip-xfrm configuration language, and the AF_XDP datapath that runs them.

pub mod config;
pub mod crypto;
pub mod ctl;
pub mod datapath;
pub mod frame;
pub mod keyfile;
pub mod pcap;
pub mod policy;
pub mod sa;
pub mod selector;
pub mod stats;
pub mod wire;
pub mod xfrm;
