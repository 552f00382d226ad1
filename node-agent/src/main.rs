use clap::Parser;

fn main() -> anyhow::Result<()> {
    ambit_admin::init_logging();
    let config = ambit_node_agent::Config::from_args(ambit_node_agent::Args::parse())?;
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(ambit_node_agent::app::run(config))
}
