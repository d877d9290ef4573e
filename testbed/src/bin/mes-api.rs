//! `mes-api`: see `testbed::mes`.
fn main() -> anyhow::Result<()> {
    testbed::service_main(testbed::Service::Mes)
}
