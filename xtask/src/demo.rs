//! `cargo xtask demo`: a two-node cluster with sample apps.
pub fn run() -> anyhow::Result<()> {
    Ok(())
}
