//! Order Tracer: follows every order through Shop, MES and CRM from their socket traffic.
//!
//! The modules follow the data, one per pipeline stage, and depend one way only.
//!
//! - The agent: `capture` (kernel events) → `streams` (per-connection reassembly) → a
//!   protocol (`http`: exchanges; `amqp`: broker messages; the shape all share and the
//!   records they yield: `protocol`) → `orders` (rules: order id, status) → `spans` (one trace per order) →
//!   `sampling` → `export` (OTLP, stdout, and [`export::SpanConsumer`]s); `pipeline_metrics`
//!   (its counters); `agent` wires them. None of these knows the monitor.
//! - The monitor, which uses the agent's records: `lifecycle` (status machine and
//!   detections), `store` (SQLite), `metrics` (its `/metrics`), `otlp_out` (OTLP/HTTP out),
//!   `api` (operator API, page, auth, audit), `monitor` (the running component, alerts; its
//!   `SpanSink` is the export stage's consumer), `receiver` (OTLP in).
//! - Shared by both: `clock` (time bases and formats), `process` (signals, TLS provider),
//!   `config` (the file: every stage's section).
//! - On top: `shapes` wires `tracer run` (agent + monitor) and `tracer monitor` (central).

pub mod agent;
pub mod amqp;
pub mod api;
pub mod capture;
pub mod clock;
pub mod config;
pub mod export;
pub mod http;
pub mod lifecycle;
pub mod metrics;
pub mod monitor;
pub mod orders;
pub mod otlp_out;
pub mod pipeline_metrics;
pub mod process;
pub mod protocol;
pub mod receiver;
pub mod sampling;
pub mod shapes;
pub mod spans;
pub mod store;
pub mod streams;
pub mod transport;
