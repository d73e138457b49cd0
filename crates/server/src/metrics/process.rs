//! The standard process metrics (`process_cpu_seconds_total`, `process_resident_memory_bytes`,
//! `process_virtual_memory_bytes`, `process_open_fds`, `process_max_fds`, `process_threads`,
//! `process_start_time_seconds`), read from `/proc/self` through the `procfs` crate at each scrape.
//!
//! Why not a ready-made collector: `prometheus_client` has none (its process collector is an open
//! request upstream), and the maintained one written for it, `kubert-prometheus-process`, is built
//! against an older `prometheus_client` whose registry type is not ours. `procfs` does the parsing
//! (and the clock tick and page size lookups), so what is left here is naming and units. A figure
//! that cannot be read is left out of that scrape rather than failing it.
use procfs::process::{LimitValue, Process};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Unit;

/// Reads the process's figures at each scrape.
#[derive(Debug, Default)]
pub(super) struct ProcessCollector;

impl ProcessCollector {
    pub(super) fn new() -> ProcessCollector {
        ProcessCollector
    }
}

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let me = match Process::myself() {
            Ok(p) => p,
            Err(e) => {
                tracing::debug!(error = %e, "metrics: /proc/self unreadable");
                return Ok(());
            }
        };
        let ticks = procfs::ticks_per_second().max(1) as f64;
        match me.stat() {
            Ok(stat) => {
                let cpu = ConstCounter::new((stat.utime + stat.stime) as f64 / ticks);
                cpu.encode(encoder.encode_descriptor(
                    "process_cpu",
                    "Total user and system CPU time spent in seconds.",
                    Some(&Unit::Seconds),
                    MetricType::Counter,
                )?)?;
                let rss = stat.rss.saturating_mul(procfs::page_size());
                ConstGauge::new(rss).encode(encoder.encode_descriptor(
                    "process_resident_memory",
                    "Resident memory size in bytes.",
                    Some(&Unit::Bytes),
                    MetricType::Gauge,
                )?)?;
                ConstGauge::new(stat.vsize).encode(encoder.encode_descriptor(
                    "process_virtual_memory",
                    "Virtual memory size in bytes.",
                    Some(&Unit::Bytes),
                    MetricType::Gauge,
                )?)?;
                ConstGauge::new(stat.num_threads).encode(encoder.encode_descriptor(
                    "process_threads",
                    "Number of OS threads in the process.",
                    None,
                    MetricType::Gauge,
                )?)?;
                // The start is counted in clock ticks after boot.
                if let Ok(boot) = procfs::boot_time_secs() {
                    let start = boot as f64 + stat.starttime as f64 / ticks;
                    ConstGauge::new(start).encode(encoder.encode_descriptor(
                        "process_start_time",
                        "Start time of the process since unix epoch in seconds.",
                        Some(&Unit::Seconds),
                        MetricType::Gauge,
                    )?)?;
                }
            }
            Err(e) => tracing::debug!(error = %e, "metrics: /proc/self/stat unreadable"),
        }
        if let Ok(fds) = me.fd_count() {
            ConstGauge::new(fds as u64).encode(encoder.encode_descriptor(
                "process_open_fds",
                "Number of open file descriptors.",
                None,
                MetricType::Gauge,
            )?)?;
        }
        if let Ok(limits) = me.limits() {
            if let LimitValue::Value(max) = limits.max_open_files.soft_limit {
                ConstGauge::new(max).encode(encoder.encode_descriptor(
                    "process_max_fds",
                    "Maximum number of open file descriptors.",
                    None,
                    MetricType::Gauge,
                )?)?;
            }
        }
        Ok(())
    }
}
