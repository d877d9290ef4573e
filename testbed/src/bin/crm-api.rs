//! `crm-api`: see `testbed::crm`.
fn main() -> anyhow::Result<()> {
    testbed::service_main(testbed::Service::Crm)
}
