//! `order-queue`: see `testbed::queue`.
fn main() -> anyhow::Result<()> {
    testbed::service_main(testbed::Service::Queue)
}
