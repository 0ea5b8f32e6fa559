//! The inbound policy check (RFC 4301 5.2; the kernel's __xfrm_policy_check,
//! xfrm_policy_ok, xfrm_state_ok and secpath_has_nontransport in net/xfrm/xfrm_policy.c):
//! after every SA of a packet has been undone, the plaintext must have arrived the way the
//! in/fwd policy that covers it says.
//!
//! The "sec path" is the list of SAs undone, in the order they were undone (outermost
//! first, sp->xvec). A policy's templates are in the order they are applied on output
//! (innermost first), so the check walks the templates from the last to the first while it
//! walks the sec path from the first to the last.

use std::net::IpAddr;

use crate::policy::{Policy, PolicyAction, Template, TmplLevel};
use crate::sa::{SaConfig, XfrmMode};
use crate::selector::FlowKey;
use crate::stats::XfrmStat;

/// The SA fields a template is matched against (struct xfrm_state's id and props).
pub trait SecPathEntry {
    fn config(&self) -> &SaConfig;
}

impl SecPathEntry for SaConfig {
    fn config(&self) -> &SaConfig {
        self
    }
}

impl<T: SecPathEntry + ?Sized> SecPathEntry for &T {
    fn config(&self) -> &SaConfig {
        (**self).config()
    }
}

fn addr_is_any(a: IpAddr) -> bool {
    a.is_unspecified()
}

/// xfrm_state_addr_cmp: true when the template names an address the SA does not have
/// (an unspecified template address matches any).
fn state_addr_differs(tmpl: &Template, x: &SaConfig) -> bool {
    let src_differs = matches!(tmpl.src, Some(s) if !addr_is_any(s) && s != x.saddr);
    let dst_differs = !addr_is_any(tmpl.dst) && tmpl.dst != x.id.daddr;
    src_differs || dst_differs
}

/// xfrm_state_ok: does SA `x` satisfy template `tmpl`? Protocol and mode must be the
/// template's; SPI and reqid when the template names them (0 / none = any); addresses only
/// for tunnel mode, where they are the tunnel's end points.
pub fn xfrm_state_ok(tmpl: &Template, x: &SaConfig) -> bool {
    x.id.proto == tmpl.proto
        && tmpl.spi.is_none_or(|spi| spi == 0 || spi == x.id.spi)
        && (tmpl.reqid == 0 || tmpl.reqid == x.reqid)
        && x.mode == tmpl.mode
        && !(x.mode != XfrmMode::Transport && state_addr_differs(tmpl, x))
}

/// xfrm_policy_ok: looks for `tmpl` in the sec path from `start`. Returns the index after
/// the matching SA; `start` again for an optional (`level use`) template that is not there;
/// `Err(())` for a required one that is not there. A tunnel-mode SA that does not match
/// ends the search: a template cannot be satisfied from inside a tunnel the policy did not
/// ask for. An optional transport-mode template is never looked for (as the kernel does).
fn xfrm_policy_ok<S: SecPathEntry>(tmpl: &Template, sp: &[S], start: usize) -> Result<usize, ()> {
    let optional = tmpl.level == TmplLevel::Use;
    if optional && tmpl.mode == XfrmMode::Transport {
        return Ok(start);
    }
    for (idx, x) in sp.iter().enumerate().skip(start) {
        let x = x.config();
        if xfrm_state_ok(tmpl, x) {
            return Ok(idx + 1);
        }
        if x.mode != XfrmMode::Transport {
            break;
        }
    }
    if optional {
        Ok(start)
    } else {
        Err(())
    }
}

/// secpath_has_nontransport: is there a tunnel-mode SA in `sp[from..]`?
fn secpath_has_nontransport<S: SecPathEntry>(sp: &[S], from: usize) -> bool {
    sp.iter()
        .skip(from)
        .any(|x| x.config().mode != XfrmMode::Transport)
}

/// The template part of __xfrm_policy_check for an allow policy: every required template
/// satisfied by the sec path in order, and no tunnel left unexplained.
pub fn check_templates<S: SecPathEntry>(templates: &[Template], sp: &[S]) -> Result<(), XfrmStat> {
    let mut k = 0;
    for tmpl in templates.iter().rev() {
        k = xfrm_policy_ok(tmpl, sp, k).map_err(|()| XfrmStat::XfrmInTmplMismatch)?;
    }
    if secpath_has_nontransport(sp, k) {
        return Err(XfrmStat::XfrmInTmplMismatch);
    }
    Ok(())
}

/// __xfrm_policy_check after the policy lookup: `flow` is the plaintext packet (inner for
/// tunnel mode), `sp` the SAs undone to get it, `policy` what the in/fwd lookup found.
///
/// 1. Each SA's selector must cover the plaintext (`sel …` of the state), else
///    XfrmInStateMismatch; an SA without a selector covers everything.
/// 2. No policy: accepted, unless a tunnel was undone (a tunnel nobody asked for), which is
///    XfrmInNoPols. (Linux's default policy, `ip xfrm policy setdefault`, is "allow".)
/// 3. A block policy: XfrmInPolBlock.
/// 4. An allow policy: its templates against the sec path (`check_templates`).
pub fn xfrm_policy_check<S: SecPathEntry>(
    flow: &FlowKey,
    sp: &[S],
    policy: Option<&Policy>,
) -> Result<(), XfrmStat> {
    for x in sp.iter().rev() {
        if let Some(sel) = &x.config().selector {
            if !sel.matches(flow) {
                return Err(XfrmStat::XfrmInStateMismatch);
            }
        }
    }
    policy_verdict(sp, policy)
}

/// Steps 2 to 4 of [`xfrm_policy_check`]: the policy's verdict on the sec path.
fn policy_verdict<S: SecPathEntry>(sp: &[S], policy: Option<&Policy>) -> Result<(), XfrmStat> {
    let Some(policy) = policy else {
        if secpath_has_nontransport(sp, 0) {
            return Err(XfrmStat::XfrmInNoPols);
        }
        return Ok(());
    };
    match policy.action {
        PolicyAction::Block => Err(XfrmStat::XfrmInPolBlock),
        PolicyAction::Allow => check_templates(&policy.templates, sp),
    }
}

/// [`xfrm_policy_check`] for a packet that arrived in clear (empty sec path), under the
/// in/fwd `policy` that covers it: accepted without a policy or when every template is
/// optional (`level use`); XfrmInTmplMismatch when one is required; XfrmInPolBlock for a
/// block policy. The XDP outside program refuses exactly these (compiled by
/// `datapath::rules::inbound_rule_action`).
pub fn xfrm_policy_check_plaintext(policy: Option<&Policy>) -> Result<(), XfrmStat> {
    policy_verdict::<SaConfig>(&[], policy)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::PolicyDir;
    use crate::sa::{AeadAlgo, SaAlgorithm, XfrmId, XfrmProto};
    use crate::selector::{Prefix, Selector};

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn sa(
        proto: XfrmProto,
        mode: XfrmMode,
        spi: u32,
        reqid: u32,
        src: &str,
        dst: &str,
    ) -> SaConfig {
        SaConfig {
            replay_window: 32,
            ..SaConfig::new(
                XfrmId {
                    daddr: ip(dst),
                    spi,
                    proto,
                },
                ip(src),
                reqid,
                mode,
                SaAlgorithm::Aead {
                    algo: AeadAlgo::Rfc4106Gcm,
                    key: zeroize::Zeroizing::new(vec![0; 16]),
                    salt: [0; 4],
                    icv_bits: 128,
                },
            )
        }
    }

    fn tmpl(
        proto: XfrmProto,
        mode: XfrmMode,
        reqid: u32,
        src: Option<&str>,
        dst: &str,
    ) -> Template {
        Template {
            src: src.map(ip),
            dst: ip(dst),
            proto,
            spi: None,
            reqid,
            mode,
            level: TmplLevel::Required,
        }
    }

    fn policy(action: PolicyAction, templates: Vec<Template>) -> Policy {
        Policy {
            selector: Selector::any_of_family(ip("10.0.0.0")),
            dir: PolicyDir::Fwd,
            priority: 0,
            action,
            templates,
            index: 0,
        }
    }

    fn flow() -> FlowKey {
        FlowKey {
            src: ip("10.2.0.5"),
            dst: ip("10.1.0.7"),
            proto: 6,
            sport: 1000,
            dport: 80,
        }
    }

    use XfrmMode::{Transport, Tunnel};
    use XfrmProto::{Ah, Esp};

    const A: &str = "192.0.2.1";
    const B: &str = "192.0.2.2";

    #[test]
    fn template_table() {
        let esp_tun = sa(Esp, Tunnel, 0x100, 1, B, A);
        let esp_tr = sa(Esp, Transport, 0x101, 2, B, A);
        let ah_tr = sa(Ah, Transport, 0x102, 3, B, A);
        let ah_tun = sa(Ah, Tunnel, 0x103, 4, B, A);
        let t_esp_tun = tmpl(Esp, Tunnel, 1, Some(B), A);
        let t_esp_tr = tmpl(Esp, Transport, 0, None, "0.0.0.0");
        let t_ah_tr = tmpl(Ah, Transport, 0, None, "0.0.0.0");
        let t_ah_tun = tmpl(Ah, Tunnel, 0, None, A);
        let optional = |mut t: Template| {
            t.level = TmplLevel::Use;
            t
        };
        let mm = Err(XfrmStat::XfrmInTmplMismatch);
        type Case<'a> = (
            &'a str,
            Vec<Template>,
            Vec<&'a SaConfig>,
            Result<(), XfrmStat>,
        );
        let cases: Vec<Case> = vec![
            ("one tunnel", vec![t_esp_tun], vec![&esp_tun], Ok(())),
            (
                "plaintext where a tunnel is required",
                vec![t_esp_tun],
                vec![],
                mm,
            ),
            (
                "plaintext, optional transport",
                vec![optional(t_esp_tr)],
                vec![],
                Ok(()),
            ),
            ("wrong protocol", vec![t_esp_tun], vec![&ah_tun], mm),
            (
                "wrong reqid",
                vec![tmpl(Esp, Tunnel, 9, Some(B), A)],
                vec![&esp_tun],
                mm,
            ),
            (
                "reqid 0 = any",
                vec![tmpl(Esp, Tunnel, 0, None, A)],
                vec![&esp_tun],
                Ok(()),
            ),
            (
                "tunnel end point differs",
                vec![tmpl(Esp, Tunnel, 1, Some("192.0.2.9"), A)],
                vec![&esp_tun],
                mm,
            ),
            ("wrong mode", vec![t_esp_tr], vec![&esp_tun], mm),
            (
                // Output applies ESP then AH (templates in that order): AH arrives outside.
                "AH outside ESP, transport",
                vec![t_esp_tr, t_ah_tr],
                vec![&ah_tr, &esp_tr],
                Ok(()),
            ),
            (
                "the same, undone in the wrong order",
                vec![t_esp_tr, t_ah_tr],
                vec![&esp_tr, &ah_tr],
                mm,
            ),
            (
                "AH tunnel outside ESP transport",
                vec![t_esp_tr, t_ah_tun],
                vec![&ah_tun, &esp_tr],
                Ok(()),
            ),
            (
                "a tunnel nobody asked for",
                vec![t_esp_tr],
                vec![&esp_tr, &ah_tun],
                mm,
            ),
            (
                "an extra transport SA outside is tolerated (as Linux)",
                vec![t_esp_tun],
                vec![&ah_tr, &esp_tun],
                Ok(()),
            ),
            (
                "missing inner SA of a bundle",
                vec![t_esp_tr, t_ah_tr],
                vec![&ah_tr],
                mm,
            ),
            (
                "optional tunnel template absent",
                vec![t_esp_tr, optional(t_ah_tun)],
                vec![&esp_tr],
                Ok(()),
            ),
            (
                "the tunnel stops the search for a required template",
                vec![t_ah_tr, t_esp_tun],
                vec![&esp_tun, &ah_tun],
                mm,
            ),
        ];
        for (name, templates, sp, want) in cases {
            assert_eq!(check_templates(&templates, &sp), want, "{name}");
        }
    }

    #[test]
    fn plaintext_verdicts() {
        let t = tmpl(Esp, Tunnel, 1, Some(B), A);
        let optional = |mut t: Template| {
            t.level = TmplLevel::Use;
            t
        };
        let allow = |ts: Vec<Template>| policy(PolicyAction::Allow, ts);
        assert_eq!(xfrm_policy_check_plaintext(None), Ok(()));
        assert_eq!(xfrm_policy_check_plaintext(Some(&allow(vec![]))), Ok(()));
        assert_eq!(
            xfrm_policy_check_plaintext(Some(&allow(vec![t]))),
            Err(XfrmStat::XfrmInTmplMismatch)
        );
        // Only optional templates (transport skipped, tunnel not found): clear text passes.
        let tr = tmpl(Esp, Transport, 0, None, "0.0.0.0");
        assert_eq!(
            xfrm_policy_check_plaintext(Some(&allow(vec![optional(tr), optional(t)]))),
            Ok(())
        );
        // One required template among optional ones is enough to refuse it.
        assert_eq!(
            xfrm_policy_check_plaintext(Some(&allow(vec![optional(tr), t]))),
            Err(XfrmStat::XfrmInTmplMismatch)
        );
        assert_eq!(
            xfrm_policy_check_plaintext(Some(&policy(PolicyAction::Block, vec![t]))),
            Err(XfrmStat::XfrmInPolBlock)
        );
        // The same as the full check with an empty sec path, whatever the flow.
        for p in [
            allow(vec![]),
            allow(vec![t]),
            policy(PolicyAction::Block, vec![]),
        ] {
            assert_eq!(
                xfrm_policy_check_plaintext(Some(&p)),
                xfrm_policy_check::<SaConfig>(&flow(), &[], Some(&p))
            );
        }
    }

    #[test]
    fn selectors_and_actions() {
        let mut x = sa(Esp, Tunnel, 0x100, 1, B, A);
        let allow = policy(PolicyAction::Allow, vec![tmpl(Esp, Tunnel, 1, Some(B), A)]);
        assert_eq!(xfrm_policy_check(&flow(), &[&x], Some(&allow)), Ok(()));
        // A tunnel with no policy at all.
        assert_eq!(
            xfrm_policy_check(&flow(), &[&x], None),
            Err(XfrmStat::XfrmInNoPols)
        );
        // Plaintext with no policy: the host's business.
        assert_eq!(xfrm_policy_check::<&SaConfig>(&flow(), &[], None), Ok(()));
        // Transport SAs without a policy are accepted (the kernel's secpath_has_nontransport).
        let tr = sa(Esp, Transport, 0x101, 2, B, A);
        assert_eq!(xfrm_policy_check(&flow(), &[&tr], None), Ok(()));
        let block = policy(PolicyAction::Block, vec![]);
        assert_eq!(
            xfrm_policy_check(&flow(), &[&x], Some(&block)),
            Err(XfrmStat::XfrmInPolBlock)
        );
        // The SA's own selector is checked first.
        x.selector = Some(Selector {
            src: Prefix {
                addr: ip("10.2.0.0"),
                len: 24,
            },
            dst: Prefix {
                addr: ip("10.1.0.0"),
                len: 24,
            },
            proto: 0,
            sport: Default::default(),
            dport: Default::default(),
        });
        assert_eq!(xfrm_policy_check(&flow(), &[&x], Some(&allow)), Ok(()));
        let mut outside = flow();
        outside.dst = ip("10.1.1.7");
        assert_eq!(
            xfrm_policy_check(&outside, &[&x], Some(&allow)),
            Err(XfrmStat::XfrmInStateMismatch)
        );
        // Mismatch beats block: the selector check comes before the lookup's verdict.
        assert_eq!(
            xfrm_policy_check(&outside, &[&x], Some(&block)),
            Err(XfrmStat::XfrmInStateMismatch)
        );
    }
}
