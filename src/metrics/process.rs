//! The standard `process_*` metrics, read from `/proc/self` at each scrape. Written here rather
//! than taken from the `prometheus` crate's collector, which counts CPU in whole seconds (an
//! integer counter): a fresh sidecar read 0 and `rate()` over it jumped in steps of one
//! second. Here CPU time is a float at the kernel's clock-tick precision (10 ms). Beside
//! them, `remora_heap_*` give the allocator's own figures: how much of the resident memory
//! is live data, fragmentation, bookkeeping, or freed pages not yet returned.

use std::{fs, sync::Mutex};

use prometheus::{
    core::{Collector, Desc},
    proto::MetricFamily,
    Counter, Gauge, IntGauge, Opts,
};

/// Linux reports CPU times and start times in USER_HZ ticks, which the kernel fixes at 100
/// on every architecture Remora builds for (`sysconf(_SC_CLK_TCK)`).
const TICKS_PER_SECOND: f64 = 100.0;

/// `process_cpu_seconds_total`, memory, threads, file descriptors and start time of this
/// process.
pub struct Process {
    cpu: Counter,
    resident: IntGauge,
    virtual_memory: IntGauge,
    threads: IntGauge,
    open_fds: IntGauge,
    max_fds: IntGauge,
    start_time: Gauge,
    heap_allocated: IntGauge,
    heap_active: IntGauge,
    heap_metadata: IntGauge,
    heap_resident: IntGauge,
    /// The CPU seconds last reported, so the counter is only ever added to.
    last_cpu: Mutex<f64>,
    descs: Vec<Desc>,
}

impl std::fmt::Debug for Process {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Process").finish_non_exhaustive()
    }
}

impl Process {
    /// The collector for this process; its start time is read once, now.
    pub fn new() -> Self {
        let int = |name: &str, help: &str| IntGauge::new(name, help).expect("valid metric");
        let cpu = Counter::with_opts(Opts::new(
            "process_cpu_seconds_total",
            "Total user and system CPU time spent in seconds.",
        ))
        .expect("valid metric");
        let start_time = Gauge::new(
            "process_start_time_seconds",
            "Start time of the process since unix epoch in seconds.",
        )
        .expect("valid metric");
        let p = Self {
            cpu,
            resident: int(
                "process_resident_memory_bytes",
                "Resident memory size in bytes.",
            ),
            virtual_memory: int(
                "process_virtual_memory_bytes",
                "Virtual memory size in bytes.",
            ),
            threads: int("process_threads", "Number of OS threads in the process."),
            open_fds: int("process_open_fds", "Number of open file descriptors."),
            max_fds: int(
                "process_max_fds",
                "Maximum number of open file descriptors.",
            ),
            start_time,
            heap_allocated: int(
                "remora_heap_allocated_bytes",
                "Bytes allocated on the heap and not freed.",
            ),
            heap_active: int(
                "remora_heap_active_bytes",
                "Bytes in the heap pages that hold live allocations (allocated plus fragmentation).",
            ),
            heap_metadata: int(
                "remora_heap_metadata_bytes",
                "Bytes of the allocator's own bookkeeping.",
            ),
            heap_resident: int(
                "remora_heap_resident_bytes",
                "Bytes in resident pages the allocator maps, freed pages not yet returned included.",
            ),
            last_cpu: Mutex::new(0.0),
            descs: Vec::new(),
        };
        if let Some(start) = start_time_seconds() {
            p.start_time.set(start);
        }
        let descs = p
            .parts()
            .iter()
            .flat_map(|c| c.desc().into_iter().cloned())
            .collect();
        Self { descs, ..p }
    }

    fn parts(&self) -> [&dyn Collector; 11] {
        [
            &self.cpu,
            &self.resident,
            &self.virtual_memory,
            &self.threads,
            &self.open_fds,
            &self.max_fds,
            &self.start_time,
            &self.heap_allocated,
            &self.heap_active,
            &self.heap_metadata,
            &self.heap_resident,
        ]
    }

    /// Reads `/proc/self` into the metrics.
    fn refresh(&self) {
        if let Some(stat) = Stat::read() {
            let mut last = self.last_cpu.lock().unwrap_or_else(|p| p.into_inner());
            if stat.cpu_seconds > *last {
                self.cpu.inc_by(stat.cpu_seconds - *last);
                *last = stat.cpu_seconds;
            }
            self.threads.set(stat.threads);
        }
        if let Ok(status) = fs::read_to_string("/proc/self/status") {
            if let Some(kb) = status_kb(&status, "VmRSS:") {
                self.resident.set(kb * 1024);
            }
            if let Some(kb) = status_kb(&status, "VmSize:") {
                self.virtual_memory.set(kb * 1024);
            }
        }
        if let Ok(fds) = fs::read_dir("/proc/self/fd") {
            // One of them is the directory being read.
            self.open_fds.set(fds.count() as i64 - 1);
        }
        if let Some(max) = max_open_files() {
            self.max_fds.set(max);
        }
        if let Some(heap) = crate::memory::usage() {
            let bytes = |n: usize| i64::try_from(n).unwrap_or(i64::MAX);
            self.heap_allocated.set(bytes(heap.allocated));
            self.heap_active.set(bytes(heap.active));
            self.heap_metadata.set(bytes(heap.metadata));
            self.heap_resident.set(bytes(heap.resident));
        }
    }
}

impl Default for Process {
    fn default() -> Self {
        Self::new()
    }
}

impl Collector for Process {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        self.refresh();
        self.parts().iter().flat_map(|c| c.collect()).collect()
    }
}

/// What `/proc/self/stat` says.
struct Stat {
    cpu_seconds: f64,
    threads: i64,
    /// Clock ticks after boot at which the process started.
    start_ticks: u64,
}

impl Stat {
    fn read() -> Option<Self> {
        Self::parse(&fs::read_to_string("/proc/self/stat").ok()?)
    }

    /// Parses the fields after the command name, which is in parentheses and may itself hold
    /// spaces and parentheses (so the split is at the last `)`).
    fn parse(stat: &str) -> Option<Self> {
        let rest = &stat[stat.rfind(')')? + 1..];
        // Fields from the 3rd (state) on: utime is the 14th, stime the 15th, num_threads the
        // 20th and starttime the 22nd.
        let f: Vec<&str> = rest.split_whitespace().collect();
        let field = |n: usize| f.get(n - 3).and_then(|v| v.parse::<u64>().ok());
        Some(Self {
            cpu_seconds: (field(14)? + field(15)?) as f64 / TICKS_PER_SECOND,
            threads: field(20)? as i64,
            start_ticks: field(22)?,
        })
    }
}

/// The process's start in Unix seconds: boot time (`btime` in `/proc/stat`) plus its start
/// in ticks after boot.
fn start_time_seconds() -> Option<f64> {
    let boot: f64 = fs::read_to_string("/proc/stat")
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("btime "))?
        .trim()
        .parse()
        .ok()?;
    Some(boot + Stat::read()?.start_ticks as f64 / TICKS_PER_SECOND)
}

/// A `Name:   123 kB` line of `/proc/self/status`, in kB.
fn status_kb(status: &str, name: &str) -> Option<i64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix(name))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// The soft limit on open files, from `/proc/self/limits`.
fn max_open_files() -> Option<i64> {
    let limits = fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line["Max open files".len()..]
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_command_name_with_spaces_and_parentheses_is_skipped() {
        let line = "42 (my (odd) name) S 1 42 42 0 -1 4194560 100 0 0 0 \
                    250 37 0 0 20 0 3 0 1234 1000000 500 18446744073709551615";
        let s = Stat::parse(line).unwrap();
        assert_eq!(s.cpu_seconds, 2.87);
        assert_eq!(s.threads, 3);
        assert_eq!(s.start_ticks, 1234);
    }

    fn value(families: &[MetricFamily], name: &str) -> f64 {
        let f = families.iter().find(|f| f.name() == name).unwrap();
        let m = &f.get_metric()[0];
        if f.get_field_type() == prometheus::proto::MetricType::COUNTER {
            m.get_counter().get_value()
        } else {
            m.get_gauge().get_value()
        }
    }

    #[test]
    fn cpu_time_moves_in_steps_under_a_second() {
        let p = Process::new();
        let first = value(&p.collect(), "process_cpu_seconds_total");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let mut x = 0u64;
        let step = loop {
            for i in 0..200_000u64 {
                x = x.wrapping_mul(31).wrapping_add(i);
            }
            let now = value(&p.collect(), "process_cpu_seconds_total");
            if now > first {
                break now - first;
            }
            assert!(std::time::Instant::now() < deadline, "CPU time never moved");
        };
        std::hint::black_box(x);
        // A whole-second counter's first step is 1.0 or more.
        assert!(step < 0.9, "CPU time moved by {step} s");
    }

    #[test]
    fn reports_the_process_shape() {
        let families = Process::new().collect();
        let value = |name| value(&families, name);
        assert!(value("process_resident_memory_bytes") > 1e6);
        assert!(value("process_virtual_memory_bytes") >= value("process_resident_memory_bytes"));
        assert!(value("process_threads") >= 1.0);
        assert!(value("process_open_fds") >= 3.0);
        assert!(value("process_max_fds") >= value("process_open_fds"));
        assert!(value("remora_heap_allocated_bytes") > 0.0);
        assert!(value("remora_heap_active_bytes") >= value("remora_heap_allocated_bytes"));
        assert!(value("remora_heap_resident_bytes") >= value("remora_heap_active_bytes"));
        assert!(value("remora_heap_metadata_bytes") > 0.0);
        let start = value("process_start_time_seconds");
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        assert!(start > now - 3600.0 && start <= now + 1.0, "start {start}");
    }
}
