use clap::Parser;

fn main() -> anyhow::Result<()> {
    ambit_admin::limit_heap_retention();
    ambit_admin::init_logging(ambit_admin::AccessLog::Immediate);
    let config = ambit_node_agent::Config::from_args(ambit_node_agent::Args::parse())?;
    ambit_admin::runtime(config.worker_threads)?.block_on(ambit_node_agent::app::run(config))
}
