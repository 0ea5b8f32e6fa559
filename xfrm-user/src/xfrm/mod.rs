//! The kernel's xfrm layer over packet buffers.

pub mod pmtu;
