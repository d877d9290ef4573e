//! `tracer capture`: prints captured events as JSON lines.

/// Placeholder until the capture stage lands.
#[derive(Debug, clap::Args)]
pub struct CaptureArgs {}

pub async fn run(_args: CaptureArgs) -> anyhow::Result<()> {
    anyhow::bail!("`tracer capture` is not built yet")
}
