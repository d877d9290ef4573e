//! `testbed`: starts the services and drives orders through them; see `testbed::driver`.
fn main() -> anyhow::Result<std::process::ExitCode> {
    testbed::driver::main()
}
