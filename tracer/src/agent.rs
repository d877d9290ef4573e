//! The agent: wires capture → streams → protocols (http, amqp) → orders → spans →
//! sampling/export.
//!
//! One task does all the per-event work in order (streams, parsing, rules, span building:
//! `pipeline`), so nothing is shared on the hot path; the capture reader and the exporter run
//! beside it, joined by bounded queues that drop and count rather than wait. Behind the
//! reader, the pipeline sheds whole exchanges, sampled-out orders first (`overload`).

mod overload;
mod pipeline;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use serde::Serialize;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::capture::{Capture, CaptureCounters, PayloadCaps, Role};
use crate::clock::monotonic_to_unix_offset_ns;
use crate::config::Config;
use crate::export::{
    ExportCounters, ExportHandle, ExportKind, ExportUse, Exporter, Fanout, SpanConsumer,
};
use crate::orders::RuleSet;
use crate::pipeline_metrics::{PipelineCounters as PipelineMetrics, PipelineTotals};
use crate::process::wait_for_shutdown;
use crate::sampling::{Sampler, SamplingCounters};
use crate::spans::{Redactor, SpanBuilder, local_host_name};
use crate::streams::{StreamCounters, Streams};
pub use overload::Backlog;
pub use pipeline::Pipeline;

/// How often in-flight requests are checked for time-outs and counters are published.
const TICK: Duration = Duration::from_millis(250);
/// How long the exporter may take to send what it holds at shutdown.
const SHUTDOWN_FLUSH: Duration = Duration::from_secs(5);

#[derive(Debug, clap::Args)]
pub struct AgentArgs {
    /// Config file (TOML). Without it: the embedded default, which traces the testbed.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Where spans go, overriding the config: stdout, otlp-grpc, otlp-http or none.
    #[arg(long, value_parser = parse_export_kind)]
    pub export: Option<ExportKind>,
    /// Serve the pipeline's counters as Prometheus `/metrics` (plain HTTP) on this address,
    /// e.g. `127.0.0.1:9464`. Another host's address needs --metrics-public.
    #[arg(long)]
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// Let --metrics-listen take an address other hosts reach (a Prometheus scraping the
    /// node): the counters carry no order data, but they tell the traced services' load.
    #[arg(long, requires = "metrics_listen")]
    pub metrics_public: bool,
}

fn parse_export_kind(text: &str) -> Result<ExportKind, String> {
    serde_json::from_value(serde_json::Value::String(text.to_string()))
        .map_err(|_| format!("unknown exporter {text:?}: use stdout, otlp-grpc, otlp-http or none"))
}

/// The config `tracer agent` runs with: the file given, or the embedded default, under the
/// `OTEL_*` environment and `--export`.
fn load_config(path: Option<&PathBuf>, export: Option<ExportKind>) -> anyhow::Result<Config> {
    let mut config = Config::load_or_embedded(path.map(PathBuf::as_path))?;
    config
        .export
        .apply_process_env(export, ExportUse::Agent)
        .map_err(|e| anyhow::anyhow!("OTEL_* environment: {e}"))?;
    Ok(config)
}

pub async fn run(args: AgentArgs) -> anyhow::Result<()> {
    let config = load_config(args.config.as_ref(), args.export)?;
    if let Some(addr) = args.metrics_listen
        && !addr.ip().is_loopback()
        && !args.metrics_public
    {
        anyhow::bail!(
            "--metrics-listen {addr} is reachable from other hosts: add --metrics-public if a scraper there should read it, or listen on 127.0.0.1"
        );
    }
    let agent = Agent::start(&config, None)?;
    let metrics = match args.metrics_listen {
        Some(addr) => Some(serve_metrics(addr).await?),
        None => None,
    };
    {
        let mut publish = tokio::time::interval(Duration::from_secs(1));
        let shutdown = wait_for_shutdown(|| log_counters(&agent.counters()));
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                done = &mut shutdown => break done?,
                _ = publish.tick() => if let Some(metrics) = &metrics {
                    publish_totals(metrics, &agent.counters());
                },
            }
        }
    }
    let last = agent.shutdown().await;
    log_counters(&last);
    Ok(())
}

/// `/metrics` of a stand-alone agent: the pipeline counters, in the monitor's metric names.
async fn serve_metrics(addr: std::net::SocketAddr) -> anyhow::Result<PipelineMetrics> {
    let metrics = PipelineMetrics::default();
    let mut registry = prometheus_client::registry::Registry::with_prefix("order_tracer");
    metrics.register(&mut registry);
    let listener = tokio::net::TcpListener::bind(addr).await.with_context(|| {
        format!("cannot listen on {addr} for /metrics: pick a free address with --metrics-listen")
    })?;
    let registry = std::sync::Arc::new(registry);
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let registry = registry.clone();
            async move {
                let mut page = String::new();
                // Writing into a String cannot fail.
                let _ = prometheus_client::encoding::text::encode(&mut page, &registry);
                page
            }
        }),
    );
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::warn!("the /metrics server stopped: {e}");
        }
    });
    tracing::info!(%addr, "serving /metrics");
    Ok(metrics)
}

/// The agent's running totals, as the monitor's `/metrics` shows them.
pub fn publish_totals(metrics: &PipelineMetrics, counters: &AgentCounters) {
    let AgentCounters {
        capture,
        pipeline,
        export,
    } = counters;
    // Every loss of the agent's side, once each; the monitor counts the spans its own queue
    // refused (`order_tracer_monitor_drops_total`).
    let streams = &pipeline.streams;
    let drops = [
        ("ring_full", capture.ring_full),
        ("capture_queue_full", capture.queue_full),
        ("sockets_full", capture.sockets_full),
        ("user_read_failed", capture.read_failed),
        ("iovecs_beyond_capture", capture.iovecs_cut),
        ("undecodable_events", capture.decode_errors),
        ("streams_over_budget", streams.dropped_over_budget),
        ("oversized_heads", streams.http.oversized_heads),
        ("connections_evicted", streams.connections_evicted),
        ("requests_shed_over_memory", streams.shed_requests),
        ("amqp_messages_shed_over_memory", streams.shed_messages),
        (
            "pending_requests_overflow",
            streams.http.pairing.pending_overflow,
        ),
        (
            "unpaired_responses",
            streams.http.pairing.unpaired_responses,
        ),
        ("amqp_oversized_frames", streams.amqp.oversized_frames),
        ("amqp_unsettled_overflow", streams.amqp.unsettled_overflow),
        (
            "overload_shed_sampled_out",
            pipeline.pipeline.shed_sampled_out,
        ),
        ("overload_shed_exchanges", pipeline.pipeline.shed_exchanges),
        ("sampling_ceiling", pipeline.sampling.dropped_ceiling),
        ("export_queue_full", export.dropped_queue_full),
        ("export_queue_bytes", export.dropped_queue_bytes),
        ("export_failed", export.dropped_failed),
    ];
    metrics.set_totals(&PipelineTotals {
        events: capture.data_events + capture.conn_events,
        drops: &drops,
        parse_errors: pipeline.streams.http.parse_errors,
        export_failures: export.failed_batches,
    });
}

/// One JSON line on stderr: what tools (the bench, tests) read the agent's counters from.
pub fn log_counters(counters: &AgentCounters) {
    match serde_json::to_string(&CountersLine {
        event: "counters",
        counters,
    }) {
        Ok(line) => eprintln!("{line}"),
        Err(e) => tracing::warn!("cannot encode counters: {e}"),
    }
}

#[derive(Serialize)]
struct CountersLine<'a> {
    event: &'static str,
    #[serde(flatten)]
    counters: &'a AgentCounters,
}

/// Every stage's counters.
#[derive(Debug, Clone, Default, Serialize)]
pub struct AgentCounters {
    pub capture: CaptureCounters,
    #[serde(flatten)]
    pub pipeline: PipelineSnapshot,
    pub export: ExportCounters,
}

/// The counters of the stages the pipeline task owns, published by it each tick.
#[derive(Debug, Clone, Default, Serialize)]
pub struct PipelineSnapshot {
    pub streams: StreamCounters,
    pub pipeline: PipelineCounters,
    pub sampling: SamplingCounters,
}

/// What the rules made of the exchanges.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct PipelineCounters {
    /// Records (exchanges, messages) a rule matched and found an order id in.
    pub order_exchanges: u64,
    /// Records a rule matched, but without an order id where the rule looks for it.
    pub no_order_id: u64,
    /// Records no rule matched (still counted: they are the services' other traffic).
    pub unmatched: u64,
    /// Spans built (before sampling).
    pub spans: u64,
    /// Spans the in-process monitor could not take (its queue was full).
    pub monitor_drops: u64,
    /// Exchanges of orders sampled out by ratio, shed unbuilt while the pipeline was behind
    /// the capture reader (its queue past half full): the in-process monitor did not see them.
    pub shed_sampled_out: u64,
    /// Exchanges shed unclassified while the pipeline was far behind (the queue past three
    /// quarters full).
    pub shed_exchanges: u64,
}

/// A running agent: capture, the pipeline task, the exporter.
pub struct Agent {
    capture: Capture,
    pipeline: JoinHandle<()>,
    exporter: Exporter,
    snapshot: watch::Receiver<PipelineSnapshot>,
}

impl Agent {
    /// Loads the eBPF programs and starts every stage. `monitor` (all-in-one mode) receives
    /// every span, sampled or not.
    pub fn start(config: &Config, monitor: Option<Box<dyn SpanConsumer>>) -> anyhow::Result<Self> {
        let rules =
            RuleSet::compile(&config.services).map_err(|e| anyhow::anyhow!("config rules: {e}"))?;
        // The kernel copies of each call what the rules can use: heads, and the start of
        // bodies only where a rule reads a JSON field.
        let capture_caps = |service: &str| PayloadCaps {
            server: config
                .capture
                .cap_for(rules.reads_body(service, Role::Server)),
            client: config
                .capture
                .cap_for(rules.reads_body(service, Role::Client)),
        };
        let mut capture = Capture::start_with_caps(&config.capture, &capture_caps)?;
        let redactor = Redactor::new(&config.export.redact_path_segments)
            .map_err(|e| anyhow::anyhow!("config [export] redact_path_segments: {e}"))?;
        let unix_offset = monotonic_to_unix_offset_ns();
        let builder = SpanBuilder::new(rules, redactor, local_host_name(), unix_offset);
        let exporter = Exporter::start(&config.export).context("cannot start the exporter")?;
        let mut fanout = Fanout::new(Sampler::new(config.sampling.clone()), exporter.handle());
        if let Some(monitor) = monitor {
            fanout = fanout.with_consumer(monitor);
        }

        let events = capture
            .take_events()
            .context("the capture's event queue was already taken")?;
        let (snapshot_tx, snapshot) = watch::channel(PipelineSnapshot::default());
        let streams = Streams::new(config.streams.clone()).keeping_headers(builder.headers_read());
        let stages = Pipeline::new(streams, builder, fanout, unix_offset);
        let pipeline = tokio::spawn(stages.run(events, capture.progress(), snapshot_tx));
        Ok(Self {
            capture,
            pipeline,
            exporter,
            snapshot,
        })
    }

    /// Where spans made outside the pipeline (the monitor's root spans) join the export.
    pub fn export_handle(&self) -> ExportHandle {
        self.exporter.handle()
    }

    /// Every stage's counters: the pipeline's as of its last tick, the others live.
    pub fn counters(&self) -> AgentCounters {
        AgentCounters {
            capture: self.capture.counters(),
            pipeline: self.snapshot.borrow().clone(),
            export: self.exporter.handle().counters(),
        }
    }

    /// Detaches from the kernel, drains the pipeline, flushes the exporter; returns the final
    /// counters.
    pub async fn shutdown(self) -> AgentCounters {
        let Agent {
            capture,
            pipeline,
            exporter,
            snapshot,
        } = self;
        let capture_counters = capture.counters();
        // Dropping the capture detaches the programs and closes the event queue, which ends
        // the pipeline task once it has processed what was queued.
        drop(capture);
        if let Err(e) = pipeline.await {
            tracing::warn!("the pipeline task failed: {e}");
        }
        let pipeline = snapshot.borrow().clone();
        AgentCounters {
            capture: capture_counters,
            pipeline,
            export: exporter.shutdown(SHUTDOWN_FLUSH).await,
        }
    }
}
