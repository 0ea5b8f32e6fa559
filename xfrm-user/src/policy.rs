//! Security policies (struct xfrm_policy) and the SPD lookup.

use std::net::IpAddr;

use crate::sa::{XfrmMode, XfrmProto};
use crate::selector::Selector;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PolicyDir {
    In,
    Out,
    Fwd,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PolicyAction {
    Allow,
    Block,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TmplLevel {
    Required,
    Use,
}

/// `tmpl …` (struct xfrm_user_tmpl): which SA to apply. `src`/`spi` None = any.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Template {
    pub src: Option<IpAddr>,
    pub dst: IpAddr,
    pub proto: XfrmProto,
    pub spi: Option<u32>,
    pub reqid: u32,
    pub mode: XfrmMode,
    pub level: TmplLevel,
}

/// One `policy add` line, parsed and validated. `index` is its position in the config
/// (0-based), used to break priority ties the way the kernel does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Policy {
    pub selector: Selector,
    pub dir: PolicyDir,
    pub priority: u32,
    pub action: PolicyAction,
    /// Applied in order on output (a bundle); empty for a policy with no transforms.
    pub templates: Vec<Template>,
    pub index: u32,
}
