//! Writes `xfrm_fuzz::seeds()` to fuzz/seeds/<target>/seed-<n> (checked in; the fuzzers
//! start from them).

fn main() -> std::io::Result<()> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("seeds");
    let mut n = std::collections::HashMap::new();
    for (target, bytes) in xfrm_fuzz::seeds() {
        let i = n.entry(target).or_insert(0);
        let dir = root.join(target);
        std::fs::create_dir_all(&dir)?;
        std::fs::write(dir.join(format!("seed-{i}")), bytes)?;
        *i += 1;
    }
    println!("seeds written under {}", root.display());
    Ok(())
}
