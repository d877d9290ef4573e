//! Shop, MES and CRM stand-ins as real HTTP (or, with `--tls`, HTTPS) services on loopback, a RabbitMQ broker between
//! the MES and the CRM, the load driver that walks orders through them with injected faults, and the
//! truth file and request log that tests of the tracer are judged against.
//!
//! The tracer's tests need only the light modules: [`status`], [`faults`], [`truth`],
//! [`requestlog`], [`service`]. The services and the driver live in the rest.

pub mod broker;
pub mod crm;
pub mod driver;
pub mod faults;
pub mod jsonl;
pub mod mes;
pub mod messagelog;
pub mod messaging;
pub mod net;
pub mod queue;
pub mod requestlog;
pub mod service;
pub mod shop;
pub mod status;
pub mod timings;
pub mod tls;
pub mod truth;

pub use faults::{Detection, FaultKind, FaultSpec};
pub use jsonl::JsonLinesError;
pub use requestlog::{RequestLogRecord, Side, read_request_log};
pub use service::Service;
pub use status::Status;
pub use truth::{FaultRecord, TruthRecord, read_truth, write_truth};

/// Runs one service process until it is killed: the whole `main` of `shop-api`, `mes-api`,
/// `crm-api` and `order-queue`.
pub fn service_main(service: Service) -> anyhow::Result<()> {
    use clap::Parser;
    let args = net::ServiceArgs::parse();
    anyhow::ensure!(args.time_factor > 0.0, "--time-factor must be positive");
    let ctx = net::Ctx::new(service, &args)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let routes = match service {
            Service::Shop => shop::router(ctx.clone()),
            Service::Mes => mes::router(ctx.clone()),
            Service::Crm => crm::router(ctx.clone()),
            Service::Queue => return queue::run(ctx).await,
        };
        Ok(net::serve(ctx, routes).await?)
    })
}
