//! CPU time over a measured window: the generator's own (always: it shares the machine
//! with the server, so every figure needs it beside it), the server's with `--pid`, and
//! how busy the whole machine was.

use serde::Serialize;

use super::recorder::now_us;
use crate::procstat;

/// A reading at one instant.
#[derive(Clone, Copy, Debug)]
pub struct Mark {
    at_us: u64,
    generator_s: Option<f64>,
    server_s: Option<f64>,
    machine_busy_s: Option<f64>,
}

impl Mark {
    pub fn now(pid: Option<u32>) -> Mark {
        Mark {
            at_us: now_us(),
            generator_s: procstat::sample(std::process::id()).ok().map(|s| s.0),
            server_s: pid.and_then(|pid| procstat::sample(pid).ok()).map(|s| s.0),
            machine_busy_s: procstat::machine_busy().ok(),
        }
    }
}

/// CPU over a window; `…_us_per_…` divide CPU time by the work done, which stays
/// comparable whichever side was the bottleneck (only meaningful under load).
#[derive(Clone, Debug, Default, Serialize)]
pub struct Cpu {
    pub window_s: f64,
    pub generator_cpu_s: f64,
    pub generator_cores: f64,
    pub server_cpu_s: Option<f64>,
    pub server_cores: Option<f64>,
    /// Share of every core busy (anything on the machine), in percent.
    pub machine_busy_pct: Option<f64>,
    pub machine_cores: usize,
    pub server_us_per_delivery: Option<f64>,
    pub server_us_per_publish: Option<f64>,
    pub server_us_per_connect: Option<f64>,
    pub generator_us_per_delivery: Option<f64>,
}

impl Cpu {
    pub fn between(a: &Mark, b: &Mark) -> Cpu {
        let window_s = b.at_us.saturating_sub(a.at_us) as f64 / 1e6;
        // /proc counts in 10 ms ticks: rounding drops the float noise of the subtraction.
        let diff = |x: Option<f64>, y: Option<f64>| Some(round(y? - x?, 3));
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let generator_cpu_s = diff(a.generator_s, b.generator_s).unwrap_or(0.0);
        let server_cpu_s = diff(a.server_s, b.server_s);
        let per_s = |x: f64| if window_s > 0.0 { x / window_s } else { 0.0 };
        Cpu {
            window_s,
            generator_cpu_s,
            generator_cores: round(per_s(generator_cpu_s), 2),
            server_cpu_s,
            server_cores: server_cpu_s.map(|s| round(per_s(s), 2)),
            machine_busy_pct: diff(a.machine_busy_s, b.machine_busy_s)
                .map(|busy| round(100.0 * per_s(busy) / cores as f64, 1)),
            machine_cores: cores,
            ..Cpu::default()
        }
    }

    /// Fills the per-unit figures.
    pub fn per_unit(mut self, deliveries: u64, publishes: u64, connects: u64) -> Cpu {
        let per = |cpu_s: f64, n: u64| (n > 0).then(|| round(cpu_s * 1e6 / n as f64, 2));
        self.server_us_per_delivery = self.server_cpu_s.and_then(|s| per(s, deliveries));
        self.server_us_per_publish = self.server_cpu_s.and_then(|s| per(s, publishes));
        self.server_us_per_connect = self.server_cpu_s.and_then(|s| per(s, connects));
        self.generator_us_per_delivery = per(self.generator_cpu_s, deliveries);
        self
    }
}

fn round(x: f64, decimals: i32) -> f64 {
    let f = 10f64.powi(decimals);
    (x * f).round() / f
}

/// The server's resident memory in KiB.
pub fn rss_kib(pid: Option<u32>) -> Option<u64> {
    procstat::sample(pid?).ok().map(|s| s.1 / 1024)
}
