//! OTLP/HTTP protobuf out of the monitor: forwarding received spans upstream, the orders'
//! root spans, the audit log as logs.

use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use tokio::sync::mpsc;

use crate::metrics::SharedMetrics;

/// Upstream requests waiting to be sent, and their bytes; over either they are dropped and
/// counted (`forward_queue_full`).
const FORWARD_QUEUE: usize = 1024;
pub const FORWARD_QUEUE_BYTES: usize = 64 * 1024 * 1024;
const TIMEOUT: Duration = Duration::from_secs(10);

/// Posts protobuf bodies to one OTLP/HTTP endpoint.
#[derive(Clone)]
pub struct OtlpPoster {
    client: reqwest::Client,
    url: String,
}

/// TLS of an outgoing connection beyond the system's roots: a CA to trust (a private PKI's)
/// and a client certificate for mutual TLS. `what` in errors names the flags.
#[derive(Clone, Debug, Default)]
pub struct ClientTls {
    pub ca_file: Option<PathBuf>,
    pub client_cert: Option<PathBuf>,
    pub client_key: Option<PathBuf>,
}

impl ClientTls {
    fn client(&self, what: &str) -> Result<reqwest::Client, String> {
        crate::process::install_crypto_provider();
        let read = |path: &PathBuf| {
            std::fs::read(path).map_err(|e| format!("{what}: cannot read {}: {e}", path.display()))
        };
        let mut builder = reqwest::Client::builder().timeout(TIMEOUT);
        if let Some(ca) = &self.ca_file {
            let certificate = reqwest::Certificate::from_pem(&read(ca)?).map_err(|e| {
                format!("{what}: {} is not a PEM CA certificate: {e}", ca.display())
            })?;
            builder = builder.add_root_certificate(certificate);
        }
        match (&self.client_cert, &self.client_key) {
            (Some(cert), Some(key)) => {
                let mut pem = read(cert)?;
                pem.push(b'\n');
                pem.extend(read(key)?);
                let identity = reqwest::Identity::from_pem(&pem).map_err(|e| {
                    format!("{what}: client certificate and key do not make an identity: {e}")
                })?;
                builder = builder.identity(identity);
            }
            (None, None) => {}
            _ => {
                return Err(format!(
                    "{what}: give both the client certificate and its key"
                ));
            }
        }
        builder.build().map_err(|e| format!("{what}: {e}"))
    }
}

impl OtlpPoster {
    pub fn new(url: &str) -> Self {
        let client = ClientTls::default()
            .client("OTLP")
            .unwrap_or_else(|_| reqwest::Client::new());
        Self {
            client,
            url: url.to_string(),
        }
    }

    /// With TLS options; errors name `what` (the flags that set them).
    pub fn with_tls(url: &str, tls: &ClientTls, what: &str) -> Result<Self, String> {
        Ok(Self {
            client: tls.client(what)?,
            url: url.to_string(),
        })
    }

    pub async fn post(&self, message: &impl prost::Message) -> Result<(), String> {
        self.post_bytes(Bytes::from(message.encode_to_vec())).await
    }

    pub async fn post_bytes(&self, body: Bytes) -> Result<(), String> {
        let response = self
            .client
            .post(&self.url)
            .header("content-type", "application/x-protobuf")
            .body(body)
            .send()
            .await
            .map_err(|e| format!("{}: {e}", self.url))?;
        if response.status().is_success() {
            Ok(())
        } else {
            Err(format!("{} answered {}", self.url, response.status()))
        }
    }
}

/// A bounded queue of OTLP trace requests (protobuf bodies) to an upstream collector.
#[derive(Clone)]
pub struct Forwarder {
    tx: mpsc::Sender<(Bytes, tokio::sync::OwnedSemaphorePermit)>,
    bytes: std::sync::Arc<tokio::sync::Semaphore>,
    metrics: SharedMetrics,
}

impl Forwarder {
    /// Spawns the sender task on the current runtime.
    pub fn start(poster: OtlpPoster, metrics: SharedMetrics) -> Self {
        let (tx, mut rx) =
            mpsc::channel::<(Bytes, tokio::sync::OwnedSemaphorePermit)>(FORWARD_QUEUE);
        let task_metrics = metrics.clone();
        tokio::spawn(async move {
            // The permit goes with the body: its bytes count until the post is done.
            while let Some((body, _permit)) = rx.recv().await {
                if let Err(err) = poster.post_bytes(body).await {
                    task_metrics.pipeline().add_export_failures(1);
                    tracing::warn!("forwarding spans upstream: {err}");
                }
            }
        });
        Self {
            tx,
            bytes: std::sync::Arc::new(tokio::sync::Semaphore::new(FORWARD_QUEUE_BYTES / 1024)),
            metrics,
        }
    }

    /// Queues a body; never waits (a slow upstream must not stall the receivers). `false`
    /// when it was dropped (queue full), counted.
    pub fn send(&self, body: Bytes) -> bool {
        let units = u32::try_from(body.len().div_ceil(1024)).unwrap_or(u32::MAX);
        let queued = self
            .bytes
            .clone()
            .try_acquire_many_owned(units)
            .ok()
            .is_some_and(|permit| self.tx.try_send((body, permit)).is_ok());
        if !queued {
            self.metrics.count_drop("forward_queue_full");
        }
        queued
    }
}

pub fn string_attr(key: &str, value: &str) -> KeyValue {
    KeyValue {
        key: key.to_string(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(value.to_string())),
        }),
        ..Default::default()
    }
}
