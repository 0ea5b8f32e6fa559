//! The XFRM transforms, named after the kernel's net/xfrm and net/ipv4|6 functions.

pub mod policy_check;
pub mod replay;
