//! What operators and Istio's dashboards read of a proxy's own health,
//! computed at each scrape: `istio_build` (Istio's build info, by
//! component and tag) and the process' CPU, memory, file descriptors and
//! start time under Prometheus' standard `process_*` names.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

#[derive(Debug)]
pub struct ProcessHealth {
    component: &'static str,
    version: &'static str,
    /// Seconds since the Unix epoch when the process started.
    started: f64,
}

impl ProcessHealth {
    /// Registers the health of this process, `component` at `version`.
    pub fn register(registry: &mut Registry, component: &'static str, version: &'static str) {
        let started = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0.0, |since| since.as_secs_f64());
        registry.register_collector(Box::new(Self {
            component,
            version,
            started,
        }));
    }
}

impl Collector for ProcessHealth {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let build = vec![("component", self.component), ("tag", self.version)];
        let mut family = encoder.encode_descriptor(
            "istio_build",
            "The proxy's build: component and version (tag)",
            None,
            MetricType::Gauge,
        )?;
        ConstGauge::new(1i64).encode(family.encode_family(&build)?)?;
        let gauge = |encoder: &mut DescriptorEncoder, name, help, value: f64| {
            let metric = ConstGauge::new(value);
            metric.encode(encoder.encode_descriptor(name, help, None, metric.metric_type())?)
        };
        gauge(
            &mut encoder,
            "process_start_time_seconds",
            "Start time of the process since the Unix epoch, in seconds",
            self.started,
        )?;
        if let Some(usage) = Usage::read() {
            let cpu = ConstCounter::new(usage.cpu_seconds);
            cpu.encode(encoder.encode_descriptor(
                "process_cpu_seconds",
                "CPU time the process used (user and system), in seconds",
                None,
                cpu.metric_type(),
            )?)?;
            gauge(
                &mut encoder,
                "process_resident_memory_bytes",
                "Resident memory of the process, in bytes",
                usage.resident_bytes,
            )?;
        }
        if let Ok(descriptors) = std::fs::read_dir("/proc/self/fd") {
            gauge(
                &mut encoder,
                "process_open_fds",
                "File descriptors the process holds open",
                descriptors.count() as f64,
            )?;
        }
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit writes into the struct it is given, nothing else.
        if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } == 0 {
            gauge(
                &mut encoder,
                "process_max_fds",
                "The most file descriptors the process may hold open",
                limit.rlim_cur as f64,
            )?;
        }
        Ok(())
    }
}

/// How far a proxy has followed the mesh's configuration: the snapshots it
/// applied since it started and when the last one came, read at each
/// scrape through `read`.
pub struct ConfigVersion(pub Box<dyn Fn() -> (u64, f64) + Send + Sync>);

impl std::fmt::Debug for ConfigVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ConfigVersion")
    }
}

impl ConfigVersion {
    pub fn register(
        registry: &mut Registry,
        read: impl Fn() -> (u64, f64) + Send + Sync + 'static,
    ) {
        registry.register_collector(Box::new(Self(Box::new(read))));
    }
}

impl Collector for ConfigVersion {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let (version, changed_at) = (self.0)();
        let applied = ConstCounter::new(version);
        applied.encode(encoder.encode_descriptor(
            "ambit_config_updates",
            "Snapshots of the mesh's configuration the proxy applied since it started",
            None,
            applied.metric_type(),
        )?)?;
        let at = ConstGauge::new(changed_at);
        at.encode(encoder.encode_descriptor(
            "ambit_config_last_update_timestamp_seconds",
            "When the proxy applied the configuration's last change, in seconds since the Unix epoch",
            None,
            at.metric_type(),
        )?)
    }
}

/// CPU and memory of this process, from /proc/self/stat.
struct Usage {
    cpu_seconds: f64,
    resident_bytes: f64,
}

impl Usage {
    fn read() -> Option<Self> {
        let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
        // The fields after the command name (which may hold spaces).
        let fields: Vec<&str> = stat.rsplit_once(") ")?.1.split(' ').collect();
        let field = |n: usize| fields.get(n)?.parse::<f64>().ok();
        // SAFETY: sysconf reads a configuration value.
        let (ticks, page) = unsafe {
            (
                libc::sysconf(libc::_SC_CLK_TCK) as f64,
                libc::sysconf(libc::_SC_PAGESIZE) as f64,
            )
        };
        // stat(5)'s utime (14), stime (15) and rss (24), counted here from
        // the field after the name, the state (3).
        Some(Self {
            cpu_seconds: (field(11)? + field(12)?) / ticks,
            resident_bytes: field(21)? * page,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_build_and_the_processs_use_are_exposed_under_istios_and_prometheus_names() {
        let mut registry = Registry::default();
        ProcessHealth::register(&mut registry, "ambit-test", "9.9.9");
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        assert!(
            text.contains(r#"istio_build{component="ambit-test",tag="9.9.9"} 1"#),
            "{text}"
        );
        let value = |name: &str| -> f64 {
            let line = text
                .lines()
                .find(|line| line.starts_with(&format!("{name} ")))
                .unwrap_or_else(|| panic!("no {name} in {text}"));
            line.rsplit(' ').next().unwrap().parse().unwrap()
        };
        assert!(value("process_resident_memory_bytes") > 1e6);
        assert!(value("process_open_fds") >= 3.0);
        assert!(value("process_max_fds") >= value("process_open_fds"));
        assert!(value("process_cpu_seconds_total") >= 0.0);
        assert!(value("process_start_time_seconds") > 1.7e9);
    }

    #[test]
    fn the_configs_version_and_last_change_are_read_at_each_scrape() {
        let mut registry = Registry::default();
        let version = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(3));
        let read = version.clone();
        ConfigVersion::register(&mut registry, move || {
            (read.load(std::sync::atomic::Ordering::Relaxed), 1.8e9)
        });
        let scrape = || {
            let mut text = String::new();
            prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
            text
        };
        assert!(
            scrape().contains("ambit_config_updates_total 3"),
            "{}",
            scrape()
        );
        version.store(4, std::sync::atomic::Ordering::Relaxed);
        let text = scrape();
        assert!(text.contains("ambit_config_updates_total 4"), "{text}");
        assert!(
            text.contains("ambit_config_last_update_timestamp_seconds 1800000000"),
            "{text}"
        );
    }
}
