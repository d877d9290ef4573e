//! The lifecycle monitor's two shapes: all-in-one (`tracer run`) and central (`tracer monitor`).

/// Placeholder until the monitor lands.
#[derive(Debug, clap::Args)]
pub struct RunArgs {}

/// Placeholder until the monitor lands.
#[derive(Debug, clap::Args)]
pub struct MonitorArgs {}

pub async fn run_all_in_one(_args: RunArgs) -> anyhow::Result<()> {
    anyhow::bail!("`tracer run` is not built yet")
}

pub async fn run_central(_args: MonitorArgs) -> anyhow::Result<()> {
    anyhow::bail!("`tracer monitor` is not built yet")
}
