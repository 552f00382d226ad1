use clap::Parser;

fn main() -> anyhow::Result<()> {
    let args = ambit_ca::Args::parse();
    ambit_admin::init_logging(ambit_admin::AccessLog::Immediate, args.log.log_format);
    let config = ambit_ca::Config::from_args(args)?;
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(ambit_ca::app::run(config))
}
