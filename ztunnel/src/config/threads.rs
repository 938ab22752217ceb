//! How many data-plane worker threads to run.
//!
//! Order: `ZTUNNEL_WORKER_THREADS` (`N`, `N%` of the CPUs, `0` = all CPUs), else ProxyConfig
//! `concurrency` (`0` = all CPUs), else the automatic rule: the chart's CPU limit
//! (`ZTUNNEL_RESOURCE_CPU_LIMIT`, rounded up, raised to the request) when one is configured,
//! else `max(ceil(25 % of CPUs), request, 2)`. "CPUs" is `ZTUNNEL_CPU_LIMIT` (the downward API's
//! `limits.cpu`) when set, else the host's logical CPUs.

use super::parse::{ConfigError, Reader, Result, cpu_quantity};
use super::vars;

fn cores_to_threads(cores: f64) -> usize {
    // Quantities are small positive numbers; the cast cannot truncate meaningfully.
    cores.ceil().max(0.0) as usize
}

pub(crate) fn worker_threads(
    r: &Reader<'_>,
    concurrency: Option<u32>,
    host_cpus: usize,
) -> Result<usize> {
    let cpus = match r.string(vars::ZTUNNEL_CPU_LIMIT) {
        Some(v) => match cores_to_threads(cpu_quantity(vars::ZTUNNEL_CPU_LIMIT, &v)?) {
            0 => {
                return Err(ConfigError::invalid(
                    vars::ZTUNNEL_CPU_LIMIT,
                    v,
                    "a positive CPU quantity such as `2` or `500m`",
                ));
            }
            n => n,
        },
        None => host_cpus.max(1),
    };

    if let Some(v) = r.string(vars::ZTUNNEL_WORKER_THREADS) {
        let bad = || {
            ConfigError::invalid(
                vars::ZTUNNEL_WORKER_THREADS,
                v.clone(),
                "a thread count (`0` = all CPUs) or a percentage of the CPUs above 0 and at most 100 (`50%`)",
            )
        };
        return match v.strip_suffix('%') {
            Some(pct) => {
                let pct: f64 = pct.trim().parse().map_err(|_| bad())?;
                if !(pct > 0.0 && pct <= 100.0) {
                    return Err(bad());
                }
                Ok(cores_to_threads(cpus as f64 * pct / 100.0).max(1))
            }
            None => match v.parse::<usize>().map_err(|_| bad())? {
                0 => Ok(cpus),
                n => Ok(n),
            },
        };
    }

    if let Some(concurrency) = concurrency {
        return Ok(if concurrency == 0 {
            cpus
        } else {
            concurrency as usize
        });
    }

    let quantity = |name: &str| -> Result<Option<f64>> {
        r.string(name).map(|v| cpu_quantity(name, &v)).transpose()
    };
    let request = quantity(vars::ZTUNNEL_RESOURCE_CPU_REQUEST)?.map_or(0, cores_to_threads);
    match quantity(vars::ZTUNNEL_RESOURCE_CPU_LIMIT)? {
        Some(limit) if limit > 0.0 => Ok(cores_to_threads(limit).max(request).max(1)),
        Some(_) => Err(ConfigError::invalid(
            vars::ZTUNNEL_RESOURCE_CPU_LIMIT,
            r.string_or(vars::ZTUNNEL_RESOURCE_CPU_LIMIT, ""),
            "a positive CPU quantity such as `2` or `500m`",
        )),
        None => Ok(cores_to_threads(cpus as f64 * 0.25).max(request).max(2)),
    }
}
