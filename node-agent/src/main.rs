use clap::Parser;

fn main() -> anyhow::Result<()> {
    // `ambit-node-agent probe SOCKET ready|live`: the kubelet's exec probe.
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("probe") {
        std::process::exit(ambit_admin::probe::run(&args[2..]));
    }
    // Above what a busy HBONE receiver frees and takes again per frame.
    ambit_admin::limit_heap_retention(4 << 20);
    let args = ambit_node_agent::Args::parse();
    ambit_admin::init_logging(ambit_admin::AccessLog::Immediate, args.log.log_format);
    let config = ambit_node_agent::Config::from_args(args)?;
    ambit_admin::runtime(config.worker_threads)?.block_on(ambit_node_agent::app::run(config))
}
