//! The monitor's two deployment shapes as commands: all-in-one (`tracer run`: agent + monitor
//! in one process, the agent's spans handed over through the export stage's consumer) and
//! central (`tracer monitor`: an OTLP receiver for many agents, forwarding to Jaeger). The
//! wiring lives here, above both sides, so neither the agent nor the monitor knows the other.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;

use crate::agent::{self, Agent};
use crate::config::Config;
use crate::export::{ExportConfig, ExportUse};
use crate::lifecycle::{Gap, GapCause};
use crate::metrics::{Metrics, SharedMetrics};
use crate::monitor::{Monitor, MonitorSettings, RootSpanOut, SpanSink};
use crate::otlp_out::Forwarder;
use crate::pipeline_metrics::PipelineCounters;
use crate::process::wait_for_shutdown;
use crate::receiver;
use crate::spans::SpanRecord;

/// Options both shapes take.
#[derive(Debug, clap::Args)]
pub struct CommonArgs {
    /// Config file (TOML); without it, the embedded testbed config.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Address of the operator API, page and /metrics (overrides [api] listen).
    #[arg(long)]
    pub listen: Option<SocketAddr>,
    /// Serve local callers without a token (demo and tests only; needs a loopback --listen).
    #[arg(long)]
    pub allow_anonymous_loopback: bool,
    /// SQLite file for order state (overrides [store] path).
    #[arg(long)]
    pub store: Option<PathBuf>,
    /// Jaeger's UI, e.g. `http://jaeger:16686`: the console and the alerts link each order's
    /// trace there (overrides [api] jaeger_url).
    #[arg(long)]
    pub jaeger_url: Option<String>,
}

/// `tracer run`: agent + monitor on one host.
#[derive(Debug, clap::Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub common: CommonArgs,
}

/// `tracer monitor`: central monitor fed over OTLP.
#[derive(Debug, clap::Args)]
pub struct MonitorArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    /// OTLP/gRPC receiver address. Another host's address needs [api] tls_cert and tls_key
    /// (or [api] insecure = true).
    #[arg(long, default_value = "127.0.0.1:4317")]
    pub otlp_grpc: SocketAddr,
    /// OTLP/HTTP receiver address (`POST /v1/traces`); same rule as --otlp-grpc.
    #[arg(long, default_value = "127.0.0.1:4318")]
    pub otlp_http: SocketAddr,
    /// OTLP/HTTP traces endpoint of the upstream (Jaeger or a Collector), e.g.
    /// `https://jaeger:4318/v1/traces`: received spans and the orders' root spans go there.
    /// Plain `http://` only to this host, unless [api] insecure = true.
    #[arg(long)]
    pub forward_to: Option<String>,
    /// PEM CA that signed the upstream's certificate (beside the system's roots).
    #[arg(long, requires = "forward_to")]
    pub forward_ca: Option<PathBuf>,
    /// PEM client certificate for mutual TLS to the upstream (with --forward-client-key).
    #[arg(long, requires = "forward_client_key")]
    pub forward_client_cert: Option<PathBuf>,
    /// PEM private key of --forward-client-cert.
    #[arg(long, requires = "forward_client_cert")]
    pub forward_client_key: Option<PathBuf>,
}

/// Config file, with the command line's overrides applied and checked.
fn load_config(args: &CommonArgs, usage: ExportUse) -> anyhow::Result<Config> {
    let mut config = Config::load_or_embedded(args.config.as_deref())?;
    config
        .export
        .apply_process_env(None, usage)
        .map_err(|e| anyhow::anyhow!("OTEL_* environment: {e}"))?;
    if let Some(listen) = args.listen {
        config.api.listen = listen;
    }
    if let Some(store) = &args.store {
        config.store.path = store.clone();
    }
    if let Some(url) = &args.jaeger_url {
        config.api.jaeger_url = Some(url.clone());
        config
            .api
            .validate()
            .map_err(|e| anyhow::anyhow!("--jaeger-url: {e}"))?;
    }
    if args.allow_anonymous_loopback && !config.api.listen.ip().is_loopback() {
        anyhow::bail!(
            "--allow-anonymous-loopback refuses {}: anonymous access is for a loopback address only (e.g. --listen 127.0.0.1:8480)",
            config.api.listen
        );
    }
    config
        .api
        .check_listen(config.api.listen, "--listen / [api] listen")
        .map_err(anyhow::Error::msg)?;
    Ok(config)
}

/// The tracer's own spans (the orders' root spans) under `[export] service_name` and
/// `resource_attributes`, as the exporter would dress them.
fn own_span(mut span: SpanRecord, export: &ExportConfig) -> SpanRecord {
    if let Some(name) = &export.service_name {
        span.resource
            .insert("service.name".into(), name.as_str().into());
    }
    for (key, value) in &export.resource_attributes {
        span.resource.insert_missing(key, || value.as_str().into());
    }
    span
}

/// What the agent pipeline gets in all-in-one mode.
pub struct AgentHookup {
    pub config: Config,
    /// Send every exchange span here (as well as to the agent's own exporter).
    pub spans: SpanSink,
    /// Add the pipeline's counters here; `/metrics` shows them.
    pub counters: PipelineCounters,
    /// The orders' root spans, for the agent's exporter to send with the others.
    pub root_spans: tokio::sync::mpsc::Receiver<SpanRecord>,
}

/// Root spans waiting for the agent's exporter.
const ROOT_SPAN_QUEUE: usize = 4096;

/// `tracer run`: the agent pipeline feeds the monitor in-process; the monitor's root spans go
/// out through the agent's exporter.
pub async fn run_all_in_one(args: RunArgs) -> anyhow::Result<()> {
    let config = load_config(&args.common, ExportUse::AllInOne)?;
    let listen = config.api.listen;
    let export = config.export.clone();
    let (root_tx, root_rx) = tokio::sync::mpsc::channel(ROOT_SPAN_QUEUE);
    let metrics: SharedMetrics = Arc::new(Metrics::new());
    let root_metrics = metrics.clone();
    let monitor = Monitor::start(MonitorSettings {
        config: config.clone(),
        metrics,
        anonymous_loopback: args.common.allow_anonymous_loopback,
        blind_when_down: true,
        root_spans: Some(Box::new(move |span| {
            if root_tx.try_send(own_span(span, &export)).is_err() {
                root_metrics.count_drop("root_span_queue_full");
            }
        })),
    })
    .await?;
    let listener = std::net::TcpListener::bind(listen).map_err(|e| {
        anyhow::anyhow!(
            "cannot listen on {listen} for the API: {e} (pick a free address with --listen)"
        )
    })?;
    tracing::info!(%listen, "operator API listening");
    let hookup = AgentHookup {
        config,
        spans: monitor.span_sink(),
        counters: monitor.pipeline_counters(),
        root_spans: root_rx,
    };
    let (stop_agent, agent_stopped) = tokio::sync::oneshot::channel();
    let mut agent = tokio::spawn(run_agent_in_monitor(hookup, agent_stopped));
    let result = tokio::select! {
        served = monitor.serve_api(listener) => served,
        ended = &mut agent => ended
            .map_err(anyhow::Error::from)
            .and_then(|r| r)
            .context("the agent pipeline stopped"),
        _ = wait_for_shutdown(|| ()) => {
            // Let the agent detach and flush its exporter before the monitor closes.
            let _ = stop_agent.send(());
            agent.await.map_err(anyhow::Error::from).and_then(|r| r)
        }
    };
    monitor.shutdown();
    result
}

/// The agent side of `tracer run`: every span goes to the in-process monitor as well as to the
/// exporter; the monitor's root spans go out through the same exporter; the pipeline's
/// counters reach the monitor's `/metrics`. Returns when `stop` fires, after flushing.
async fn run_agent_in_monitor(
    hookup: AgentHookup,
    mut stop: tokio::sync::oneshot::Receiver<()>,
) -> anyhow::Result<()> {
    let AgentHookup {
        config,
        spans,
        counters,
        mut root_spans,
    } = hookup;
    let agent = Agent::start(&config, Some(Box::new(spans.clone())))?;
    let export = agent.export_handle();
    let mut publish = tokio::time::interval(Duration::from_secs(1));
    let mut losses = EvidenceLosses::default();
    loop {
        tokio::select! {
            root = root_spans.recv() => match root {
                Some(span) if crate::sampling::keep_root(&config.sampling, &span) => {
                    export.submit(span)
                }
                Some(_) => {}
                None => break,
            },
            _ = publish.tick() => {
                let now = agent.counters();
                agent::publish_totals(&counters, &now);
                if let Some(gap) = losses.since_last_look(&now) {
                    spans.note_gap(gap);
                }
            }
            _ = &mut stop => break,
        }
    }
    let last = agent.shutdown().await;
    agent::publish_totals(&counters, &last);
    agent::log_counters(&last);
    Ok(())
}

/// Watches the agent's counters of lost events: a loss is a gap in the monitor's evidence
/// (from the previous look to this one).
struct EvidenceLosses {
    lost: u64,
    looked_at: u64,
}

impl Default for EvidenceLosses {
    fn default() -> Self {
        Self {
            lost: 0,
            looked_at: crate::clock::unix_now(),
        }
    }
}

impl EvidenceLosses {
    fn since_last_look(&mut self, counters: &agent::AgentCounters) -> Option<Gap> {
        let capture = &counters.capture;
        let streams = &counters.pipeline.streams;
        // What loses exchanges (not what only loses detail, such as truncated payloads).
        let lost = capture.ring_full
            + capture.queue_full
            + capture.sockets_full
            + capture.read_failed
            + capture.decode_errors
            + streams.dropped_over_budget
            + streams.connections_evicted
            + streams.shed_requests
            + streams.shed_messages
            + counters.pipeline.pipeline.shed_sampled_out
            + counters.pipeline.pipeline.shed_exchanges;
        let now = crate::clock::unix_now();
        let gap = (lost > self.lost).then_some(Gap {
            start: self.looked_at,
            end: now,
            cause: GapCause::CaptureDrops,
        });
        self.lost = lost;
        self.looked_at = now;
        gap
    }
}

/// `tracer monitor`: OTLP in (gRPC + HTTP), lifecycle, API; spans forwarded upstream.
pub async fn run_central(args: MonitorArgs) -> anyhow::Result<()> {
    let config = load_config(&args.common, ExportUse::Forwarding)?;
    let export = config.export.clone();
    for (addr, flag) in [
        (args.otlp_grpc, "--otlp-grpc"),
        (args.otlp_http, "--otlp-http"),
    ] {
        config
            .api
            .check_listen(addr, flag)
            .map_err(anyhow::Error::msg)?;
    }
    let receiver_tls = receiver::ReceiverTls::load(&config.api)?;
    let otlp_tls = match (&receiver_tls, &config.api.otlp_client_ca) {
        (None, _) => "off",
        (Some(_), None) => "tls",
        (Some(_), Some(_)) => "mutual tls",
    };
    let listen = config.api.listen;
    crate::process::install_crypto_provider();
    let metrics: SharedMetrics = Arc::new(Metrics::new());
    let forwarder = match args.forward_to.as_deref() {
        None => None,
        Some(url) => {
            crate::transport::check_url(
                url,
                "--forward-to",
                config.api.insecure,
                "[api] insecure = true",
            )
            .map_err(anyhow::Error::msg)?;
            let tls = crate::otlp_out::ClientTls {
                ca_file: args.forward_ca.clone(),
                client_cert: args.forward_client_cert.clone(),
                client_key: args.forward_client_key.clone(),
            };
            let poster = crate::otlp_out::OtlpPoster::with_tls(
                url,
                &tls,
                "--forward-ca / --forward-client-cert",
            )
            .map_err(anyhow::Error::msg)?;
            Some(Forwarder::start(poster, metrics.clone()))
        }
    };
    let root_forwarder = forwarder.clone();
    let monitor = Monitor::start(MonitorSettings {
        config,
        metrics,
        anonymous_loopback: args.common.allow_anonymous_loopback,
        blind_when_down: false,
        root_spans: root_forwarder.map(move |forwarder| -> RootSpanOut {
            Box::new(move |span| {
                let request = receiver::otlp_from_spans(&[own_span(span, &export)]);
                // A root span dropped with the queue full is counted there.
                let _ = forwarder.send(prost::Message::encode_to_vec(&request).into());
            })
        }),
    })
    .await?;
    let receiver = receiver::Receiver::new(monitor.span_sink(), forwarder, receiver_tls);
    let grpc = receiver::bind(args.otlp_grpc, "OTLP/gRPC", "--otlp-grpc").await?;
    let http = receiver::bind(args.otlp_http, "OTLP/HTTP", "--otlp-http").await?;
    let api = std::net::TcpListener::bind(listen).map_err(|e| {
        anyhow::anyhow!(
            "cannot listen on {listen} for the API: {e} (pick a free address with --listen)"
        )
    })?;
    tracing::info!(
        api = %listen,
        otlp_grpc = %args.otlp_grpc,
        otlp_http = %args.otlp_http,
        otlp_tls,
        forward_to = args.forward_to.as_deref().unwrap_or("-"),
        "central monitor listening"
    );
    let result = tokio::select! {
        served = monitor.serve_api(api) => served,
        served = receiver.clone().serve_grpc(grpc) => served,
        served = receiver.serve_http(http) => served,
        _ = wait_for_shutdown(|| ()) => Ok(()),
    };
    monitor.shutdown();
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_spans_take_the_configured_name_and_attributes() {
        let mut span =
            crate::lifecycle::root_span(&crate::lifecycle::OrderState::new("SO-1", 0), 1);
        span.resource.insert("host.name".into(), "node-1".into());
        let mut export = ExportConfig {
            service_name: Some("shop-orders".into()),
            ..ExportConfig::default()
        };
        export
            .resource_attributes
            .insert("deployment.environment".into(), "prod".into());
        export
            .resource_attributes
            .insert("host.name".into(), "ignored".into());
        let span = own_span(span, &export);
        assert_eq!(span.resource["service.name"], "shop-orders".into());
        assert_eq!(span.resource["deployment.environment"], "prod".into());
        assert_eq!(span.resource["host.name"], "node-1".into());
    }
}
