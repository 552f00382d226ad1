use clap::Parser;

fn main() -> anyhow::Result<()> {
    ambit_admin::limit_heap_retention();
    let args = ambit_waypoint::Args::parse();
    ambit_admin::init_logging(ambit_admin::AccessLog::Buffered, args.log.log_format);
    let config = ambit_waypoint::Config::from_args(args)?;
    ambit_admin::runtime(config.worker_threads)?.block_on(ambit_waypoint::app::run(config))
}
