//! stub
#[derive(clap::Args)]
pub struct Args {}
pub async fn run_cli(_args: Args) -> anyhow::Result<std::process::ExitCode> {
    anyhow::bail!("not yet")
}
