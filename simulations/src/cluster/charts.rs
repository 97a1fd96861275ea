//! The run's three charts (PNG and SVG through `plot.rs`): latency CDF per region,
//! deliveries per second and latency per second, both with the faults marked.

use std::path::Path;

use anyhow::Result;

use super::report::{FaultRecord, Second};
use crate::plot::{Cdf, CdfChart, LineChart};

/// Writes the charts into `dir`; the files written.
pub fn write(
    dir: &Path,
    title: &str,
    by_region: &[(String, Vec<f64>)],
    timeline: &[Second],
    faults: &[FaultRecord],
) -> Result<Vec<String>> {
    let mut files = Vec::new();
    let mut cdf = CdfChart::new(
        format!("Publish → delivery latency by subscriber region — {title}"),
        "latency (ms)",
    );
    cdf.log_x();
    for (region, values) in by_region.iter().filter(|(_, v)| !v.is_empty()) {
        // Zero-latency arrivals cannot sit on a log axis; a microsecond is below any.
        let values: Vec<f64> = values.iter().map(|v| v.max(0.001)).collect();
        cdf.cdf(Cdf::from_values(region.clone(), &values));
    }
    files.push(cdf.write(dir, "latency-cdf")?);

    let at = |s: &Second| s.second as f64 + 0.5;
    let mut throughput = LineChart::new(
        format!("Deliveries per second — {title}"),
        "seconds since the schedule started",
        "events received per second",
    );
    throughput.series(
        "delivered",
        timeline.iter().map(|s| (at(s), s.delivered as f64)),
    );
    throughput.series(
        "publishes refused + disconnects",
        timeline.iter().map(|s| (at(s), s.errors as f64)),
    );
    let mut latency = LineChart::new(
        format!("Latency per second — {title}"),
        "seconds since the schedule started",
        "publish → delivery (ms)",
    );
    let busy: Vec<&Second> = timeline.iter().filter(|s| s.delivered > 0).collect();
    latency.series("p50", busy.iter().map(|s| (at(s), s.p50_ms)));
    latency.series("p99", busy.iter().map(|s| (at(s), s.p99_ms)));
    for f in faults {
        throughput.marker(f.actual_s, f.what.clone());
        latency.marker(f.actual_s, f.what.clone());
    }
    files.push(throughput.write(dir, "throughput")?);
    files.push(latency.write(dir, "latency-over-time")?);
    Ok(files
        .into_iter()
        .flat_map(|w| [w.png, w.svg])
        .map(|p| p.display().to_string())
        .collect())
}
