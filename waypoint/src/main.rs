use clap::Parser;

fn main() -> anyhow::Result<()> {
    ambit_admin::limit_heap_retention();
    ambit_admin::init_logging(ambit_admin::AccessLog::Buffered);
    let config = ambit_waypoint::Config::from_args(ambit_waypoint::Args::parse())?;
    ambit_admin::runtime(config.worker_threads)?.block_on(ambit_waypoint::app::run(config))
}
