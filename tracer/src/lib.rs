//! Order Tracer: follows every order through Shop, MES and CRM from their socket traffic.
//!
//! The modules follow the data, one per pipeline stage:
//! `capture` (kernel events) → `streams` (per-connection reassembly) → a protocol (`http`:
//! exchanges; `amqp`: broker messages; the shape all share and the records they yield:
//! `protocol`) → `orders` (rules:
//! order id, status) → `spans` (one trace per order, sampling) → `export` (OTLP, stdout). The monitor side: `lifecycle` (status machine and detections),
//! `store` (SQLite), `api` (operator API, page, auth, audit), `receiver` (OTLP in).

pub mod agent;
pub mod amqp;
pub mod api;
pub mod capture;
pub mod config;
pub mod export;
pub mod http;
pub mod lifecycle;
pub mod metrics;
pub mod monitor;
pub mod orders;
pub mod protocol;
pub mod receiver;
pub mod sampling;
pub mod spans;
pub mod store;
pub mod streams;
