use clap::Parser;

fn main() -> anyhow::Result<()> {
    ambit_admin::init_logging(ambit_admin::AccessLog::Immediate);
    let config = ambit_ca::Config::from_args(ambit_ca::Args::parse())?;
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(ambit_ca::app::run(config))
}
