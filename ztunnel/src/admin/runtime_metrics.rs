//! The runtime and process families of `:15020/metrics`, sampled at each scrape:
//!
//! * gauges `tokio_num_workers`, `tokio_global_queue_depth`, `tokio_num_alive_tasks`;
//! * counters (per `worker`) `tokio_worker_total_busy_duration_seconds_total`,
//!   `tokio_worker_park_count_total`, `tokio_worker_park_unpark_count_total`;
//! * gauges `process_open_fds`, `process_max_fds`.
//!
//! They are written as Prometheus text next to the recorder's output (the busy time is a
//! fractional counter, which the `metrics` facade cannot hold).

use std::fmt::Write as _;

use tokio::runtime::RuntimeMetrics;

/// The families for `runtime` and this process, in Prometheus text format.
pub(super) fn render(runtime: &RuntimeMetrics) -> String {
    let mut out = String::new();
    let workers = runtime.num_workers();
    gauge(
        &mut out,
        "tokio_num_workers",
        "Number of worker threads of the data-plane runtime",
        workers as f64,
    );
    gauge(
        &mut out,
        "tokio_global_queue_depth",
        "Number of tasks waiting in the runtime's global queue",
        runtime.global_queue_depth() as f64,
    );
    gauge(
        &mut out,
        "tokio_num_alive_tasks",
        "Number of tasks alive in the runtime",
        runtime.num_alive_tasks() as f64,
    );
    let per_worker = |out: &mut String, name: &str, help: &str, value: &dyn Fn(usize) -> String| {
        header(out, name, help, "counter");
        for w in 0..workers {
            let _ = writeln!(out, "{name}{{worker=\"{w}\"}} {}", value(w));
        }
    };
    per_worker(
        &mut out,
        "tokio_worker_total_busy_duration_seconds_total",
        "Time each worker thread spent busy",
        &|w| {
            runtime
                .worker_total_busy_duration(w)
                .as_secs_f64()
                .to_string()
        },
    );
    per_worker(
        &mut out,
        "tokio_worker_park_count_total",
        "Times each worker thread parked",
        &|w| runtime.worker_park_count(w).to_string(),
    );
    per_worker(
        &mut out,
        "tokio_worker_park_unpark_count_total",
        "Times each worker thread parked or unparked",
        &|w| runtime.worker_park_unpark_count(w).to_string(),
    );
    if let Ok(fds) = std::fs::read_dir("/proc/self/fd") {
        gauge(
            &mut out,
            "process_open_fds",
            "Number of open file descriptors",
            // The directory handle itself is one of them.
            fds.count().saturating_sub(1) as f64,
        );
    }
    if let Ok((soft, _)) =
        nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
    {
        gauge(
            &mut out,
            "process_max_fds",
            "Maximum number of open file descriptors",
            soft as f64,
        );
    }
    out
}

fn header(out: &mut String, name: &str, help: &str, kind: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

fn gauge(out: &mut String, name: &str, help: &str, value: f64) {
    header(out, name, help, "gauge");
    let _ = writeln!(out, "{name} {value}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn families_of_the_current_runtime() {
        let text = render(&tokio::runtime::Handle::current().metrics());
        assert!(
            text.contains("# TYPE tokio_num_workers gauge\ntokio_num_workers 2\n"),
            "{text}"
        );
        for w in ["0", "1"] {
            for family in [
                "tokio_worker_total_busy_duration_seconds_total",
                "tokio_worker_park_count_total",
                "tokio_worker_park_unpark_count_total",
            ] {
                assert!(
                    text.contains(&format!("{family}{{worker=\"{w}\"}} ")),
                    "{text}"
                );
            }
        }
        let fds = std::fs::read_dir("/proc/self/fd").unwrap().count() - 1;
        let open: usize = text
            .lines()
            .find_map(|l| l.strip_prefix("process_open_fds "))
            .unwrap()
            .parse()
            .unwrap();
        // Other tests of this binary may open or close a few meanwhile.
        assert!(open.abs_diff(fds) <= 8, "{open} vs {fds}");
        assert!(text.contains("\nprocess_max_fds "), "{text}");
    }
}
