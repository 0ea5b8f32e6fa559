use anyhow::Result;

pub fn demo(_duration: Option<u64>, _xdp_mode: &str) -> Result<()> {
    anyhow::bail!("not yet")
}
