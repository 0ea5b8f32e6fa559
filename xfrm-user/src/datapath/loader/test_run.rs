//! BPF_PROG_TEST_RUN of the programs, for the tests and benchmarks (feature `test-support`).

use anyhow::{bail, Context, Result};
use aya::programs::{TestRun, TestRunOptions};
use xfrm_common::{XdpMeta, CFG_TEST_REWIND, XDP_META_LEN};

use crate::datapath::umem::take_meta;

use super::*;

/// One BPF_PROG_TEST_RUN of the classifier.
#[derive(Debug)]
pub struct TestRunOutcome {
    /// The XDP action (xdp_action::XDP_*).
    pub action: u32,
    /// The [`XdpMeta`] header the program pushed in front of the packet (on a redirect).
    pub meta: Option<XdpMeta>,
    /// The packet as the program left it.
    pub packet: Vec<u8>,
    /// The kernel's duration of one run in ns (its total over `repeat` runs, divided).
    pub ns_per_run: u64,
}

pub const XDP_ABORTED: u32 = 0;
pub const XDP_DROP: u32 = 1;
pub const XDP_PASS: u32 = 2;
pub const XDP_TX: u32 = 3;
pub const XDP_REDIRECT: u32 = 4;

impl Datapath {
    /// Run the classifier once on `packet` through BPF_PROG_TEST_RUN (no network, no attach).
    /// The kernel does not perform a redirect in this mode; it reports XDP_REDIRECT.
    pub fn test_run(&mut self, packet: &[u8]) -> Result<TestRunOutcome> {
        self.test_run_prog(Program::Inside, packet, 1)
    }

    /// Run `prog` `repeat` times on `packet` through BPF_PROG_TEST_RUN; the outcome is the
    /// last run's, `ns_per_run` the kernel's own measure (total time / repeat). The kernel
    /// does not reset the packet between runs, so with `repeat` > 1 the programs are told
    /// to take the header they push off again ([`CFG_TEST_REWIND`]): the outcome then has
    /// no `meta`.
    pub fn test_run_prog(
        &mut self,
        prog: Program,
        packet: &[u8],
        repeat: u32,
    ) -> Result<TestRunOutcome> {
        self.test_run_on(prog, packet, repeat, 0)
    }

    /// [`Self::test_run_prog`] as if the packet arrived on interface `ifindex` (queue 0) of
    /// the calling thread's network namespace (route lookups then start there); 0 = the
    /// loopback device.
    pub fn test_run_on(
        &mut self,
        prog: Program,
        packet: &[u8],
        repeat: u32,
        ifindex: u32,
    ) -> Result<TestRunOutcome> {
        let rewind = repeat > 1;
        if (self.config.flags & CFG_TEST_REWIND != 0) != rewind {
            self.config.flags ^= CFG_TEST_REWIND;
            self.write_config()?;
        }
        // struct xdp_md: data, data_end, data_meta, ingress_ifindex, rx_queue_index,
        // egress_ifindex. In: no metadata (data = 0), data_end = the packet length; ifindex 0
        // means the loopback device's queue 0.
        let mut ctx_in = [0u32; 6];
        ctx_in[1] = packet.len() as u32;
        ctx_in[3] = ifindex;
        let ctx_in: Vec<u8> = ctx_in.iter().flat_map(|w| w.to_ne_bytes()).collect();
        let mut ctx_out = [0u8; 24];
        // Headroom the program may take for metadata comes back in front of the packet.
        let mut data_out = vec![0u8; packet.len() + 256];
        let res = self
            .prog(prog.name())?
            .test_run(TestRunOptions {
                data_in: Some(packet),
                data_out: Some(&mut data_out),
                ctx_in: Some(&ctx_in),
                ctx_out: Some(&mut ctx_out),
                repeat: repeat.max(1),
                ..TestRunOptions::new()
            })
            .context("BPF_PROG_TEST_RUN")?;
        data_out.truncate(res.data_size_out as usize);
        // A redirect pushes the XdpMeta header in front of the frame: the output is longer
        // than the input by exactly its size, and starts with it.
        let meta_len = data_out.len().saturating_sub(packet.len());
        let meta = match meta_len {
            0 => None,
            XDP_META_LEN => take_meta(&data_out, 0, data_out.len()).map(|r| r.meta),
            n => bail!(
                "test run: output {n} bytes longer than the input, expected 0 or {XDP_META_LEN}"
            ),
        };
        if meta_len != 0 && meta.is_none() {
            bail!("test run: a {XDP_META_LEN}-byte header in front of the packet without a valid XdpMeta");
        }
        Ok(TestRunOutcome {
            action: res.return_value,
            meta,
            packet: data_out[meta_len..].to_vec(),
            ns_per_run: res.duration.as_nanos() as u64,
        })
    }
}
