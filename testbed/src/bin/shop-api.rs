//! `shop-api`: see `testbed::shop`.
fn main() -> anyhow::Result<()> {
    testbed::service_main(testbed::Service::Shop)
}
