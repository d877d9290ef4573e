//! The agent: wires capture → streams → http → orders → spans → export.

/// Placeholder until the pipeline lands.
#[derive(Debug, clap::Args)]
pub struct AgentArgs {}

pub async fn run(_args: AgentArgs) -> anyhow::Result<()> {
    anyhow::bail!("`tracer agent` is not built yet")
}
