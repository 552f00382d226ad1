use clap::Parser;

fn main() -> anyhow::Result<()> {
    // Tighter than the agent's: a waypoint's memory counts per namespace,
    // and its bulk is rarer (4 MiB cost it 4 MiB resident after a transfer).
    ambit_admin::limit_heap_retention(1 << 20);
    let args = ambit_waypoint::Args::parse();
    ambit_admin::init_logging(ambit_admin::AccessLog::Buffered, args.log.log_format);
    let config = ambit_waypoint::Config::from_args(args)?;
    ambit_admin::runtime(config.worker_threads)?.block_on(ambit_waypoint::app::run(config))
}
