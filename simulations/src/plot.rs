//! Charts of the simulations, each written twice: PNG (docs, quick looks) and SVG (sharp at
//! any size, diffable). Three kinds: [`LineChart`] (named series over x, optional log
//! axes, labelled vertical markers such as faults at given seconds), [`CdfChart`] (one
//! cumulative distribution per label) and [`Histogram`].
//!
//! PNG text is drawn by plotters' `ab_glyph` backend from a font embedded in the binary
//! (`simulations/fonts/`), so a fresh machine needs no system font and no fontconfig.
//!
//! ```text
//! LineChart::new("Throughput", "seconds", "events/s")
//!     .series("node-1", points)
//!     .marker(12.0, "kill node-2")
//!     .write(&out_dir, "throughput")?;
//! ```

use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use anyhow::{anyhow, Context, Result};
use plotters::coord::ranged1d::{AsRangedCoord, ValueFormatter};
use plotters::coord::Shift;
use plotters::prelude::*;

/// The embedded font: a 22 KB subset of DejaVu Sans (see simulations/fonts/README.md).
const FONT: &[u8] = include_bytes!("../fonts/DejaVuSans-subset.ttf");
/// The family every chart asks for; registered from [`FONT`].
const FAMILY: &str = "sans-serif";
/// Series colours, in order (Tableau 10: distinct, and readable on white and in print).
const COLOURS: [RGBColor; 10] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
];
/// Most points a CDF keeps: more than a chart's width in pixels shows nothing more.
const CDF_POINTS_MAX: usize = 2_000;

/// The files one chart was written to.
#[derive(Debug, Clone)]
pub struct Written {
    pub png: PathBuf,
    pub svg: PathBuf,
}

/// A chart's title and axis labels.
#[derive(Debug, Clone)]
struct Texts {
    title: String,
    x: String,
    y: String,
}

impl Texts {
    fn new(title: impl Into<String>, x: impl Into<String>, y: impl Into<String>) -> Texts {
        Texts {
            title: title.into(),
            x: x.into(),
            y: y.into(),
        }
    }
}

/// What drawing on a plotters backend returns.
type Drawn<T, DB> = Result<T, DrawingAreaErrorKind<<DB as DrawingBackend>::ErrorType>>;
/// A chart's frame with f64 axes of the kinds `X` and `Y` (linear or log).
type Frame<'a, DB, X, Y> = ChartContext<
    'a,
    DB,
    Cartesian2d<<X as AsRangedCoord>::CoordDescType, <Y as AsRangedCoord>::CoordDescType>,
>;

/// Where the legend goes, inside the plotting area.
#[derive(Debug, Clone, Copy)]
pub enum Legend {
    UpperLeft,
    UpperRight,
    LowerLeft,
    LowerRight,
}

/// How a series is drawn.
#[derive(Debug, Clone, Copy)]
pub struct Style {
    /// Index into the palette (wraps around).
    pub colour: usize,
    pub dashed: bool,
}

#[derive(Debug, Clone)]
struct Series {
    /// Empty: drawn without a legend entry (e.g. the dashed twin of a named series).
    name: String,
    points: Vec<(f64, f64)>,
    style: Style,
}

/// A labelled vertical line, e.g. a fault at a given second.
#[derive(Debug, Clone)]
struct Marker {
    x: f64,
    label: String,
}

/// Named series over x. Build, then [`LineChart::write`].
#[derive(Debug, Clone)]
pub struct LineChart {
    texts: Texts,
    x_log: bool,
    y_log: bool,
    y_range: Option<(f64, f64)>,
    series: Vec<Series>,
    markers: Vec<Marker>,
    legend: Legend,
    size: (u32, u32),
}

impl LineChart {
    pub fn new(
        title: impl Into<String>,
        x_label: impl Into<String>,
        y_label: impl Into<String>,
    ) -> LineChart {
        LineChart {
            texts: Texts::new(title, x_label, y_label),
            x_log: false,
            y_log: false,
            y_range: None,
            series: Vec::new(),
            markers: Vec::new(),
            legend: Legend::UpperRight,
            size: (960, 540),
        }
    }

    /// Logarithmic x axis; points with x ≤ 0 are left out.
    pub fn log_x(&mut self) -> &mut Self {
        self.x_log = true;
        self
    }

    /// Logarithmic y axis; points with y ≤ 0 are left out.
    pub fn log_y(&mut self) -> &mut Self {
        self.y_log = true;
        self
    }

    /// Fixed y range instead of one fitted to the data.
    pub fn y_range(&mut self, low: f64, high: f64) -> &mut Self {
        self.y_range = Some((low, high));
        self
    }

    pub fn legend(&mut self, at: Legend) -> &mut Self {
        self.legend = at;
        self
    }

    /// Size in pixels of the PNG (and of the SVG's view).
    pub fn size(&mut self, width: u32, height: u32) -> &mut Self {
        self.size = (width, height);
        self
    }

    /// A solid series in the next colour.
    pub fn series(
        &mut self,
        name: impl Into<String>,
        points: impl IntoIterator<Item = (f64, f64)>,
    ) -> &mut Self {
        let style = Style {
            colour: self.series.len(),
            dashed: false,
        };
        self.series_with(name, points, style)
    }

    /// A series drawn as `style` says; an empty name adds no legend entry.
    pub fn series_with(
        &mut self,
        name: impl Into<String>,
        points: impl IntoIterator<Item = (f64, f64)>,
        style: Style,
    ) -> &mut Self {
        self.series.push(Series {
            name: name.into(),
            points: points.into_iter().collect(),
            style,
        });
        self
    }

    /// A vertical line at `x` with `label` at its top (labels of close markers are staggered).
    pub fn marker(&mut self, x: f64, label: impl Into<String>) -> &mut Self {
        self.markers.push(Marker {
            x,
            label: label.into(),
        });
        self
    }

    /// Writes `dir/stem.png` and `dir/stem.svg`, creating `dir` if needed.
    pub fn write(&self, dir: &Path, stem: &str) -> Result<Written> {
        write_files(self, self.size, dir, stem)
    }
}

/// One cumulative distribution: (value, fraction of samples ≤ value), sorted by value.
#[derive(Debug, Clone)]
pub struct Cdf {
    name: String,
    points: Vec<(f64, f64)>,
}

impl Cdf {
    /// The empirical CDF of `values` (non-finite ones are left out), thinned to at most
    /// 2,000 points so a million latencies make a small file.
    pub fn from_values(name: impl Into<String>, values: &[f64]) -> Cdf {
        let mut sorted: Vec<f64> = values.iter().copied().filter(|v| v.is_finite()).collect();
        sorted.sort_by(f64::total_cmp);
        let n = sorted.len();
        let step = n.div_ceil(CDF_POINTS_MAX).max(1);
        let mut points: Vec<(f64, f64)> = (0..n)
            .step_by(step)
            .map(|i| (sorted[i], (i + 1) as f64 / n as f64))
            .collect();
        if let Some(&last) = sorted.last() {
            // The thinning may skip the maximum: the curve must reach 1.
            if points.last().map(|p| p.1) != Some(1.0) {
                points.push((last, 1.0));
            }
        }
        Cdf {
            name: name.into(),
            points,
        }
    }

    /// A CDF given as (value, cumulative fraction) points, e.g. an HDR histogram's
    /// percentiles (fraction in 0..=1); they are sorted by value.
    pub fn from_points(
        name: impl Into<String>,
        points: impl IntoIterator<Item = (f64, f64)>,
    ) -> Cdf {
        let mut points: Vec<(f64, f64)> = points
            .into_iter()
            .filter(|(v, f)| v.is_finite() && f.is_finite())
            .collect();
        points.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.total_cmp(&b.1)));
        Cdf {
            name: name.into(),
            points,
        }
    }
}

/// One CDF per label over a shared value axis. Build, then [`CdfChart::write`].
#[derive(Debug, Clone)]
pub struct CdfChart {
    texts: Texts,
    x_log: bool,
    cdfs: Vec<Cdf>,
    size: (u32, u32),
}

impl CdfChart {
    pub fn new(title: impl Into<String>, x_label: impl Into<String>) -> CdfChart {
        CdfChart {
            texts: Texts::new(title, x_label, "fraction ≤ x"),
            x_log: false,
            cdfs: Vec::new(),
            size: (960, 540),
        }
    }

    /// Logarithmic value axis (latencies); values ≤ 0 are left out.
    pub fn log_x(&mut self) -> &mut Self {
        self.x_log = true;
        self
    }

    pub fn size(&mut self, width: u32, height: u32) -> &mut Self {
        self.size = (width, height);
        self
    }

    pub fn cdf(&mut self, cdf: Cdf) -> &mut Self {
        self.cdfs.push(cdf);
        self
    }

    /// Writes `dir/stem.png` and `dir/stem.svg`, creating `dir` if needed.
    pub fn write(&self, dir: &Path, stem: &str) -> Result<Written> {
        let texts = &self.texts;
        let mut chart = LineChart::new(&texts.title, &texts.x, &texts.y);
        chart.y_range(0.0, 1.0).legend(Legend::LowerRight);
        if self.x_log {
            chart.log_x();
        }
        for cdf in &self.cdfs {
            chart.series(&cdf.name, cdf.points.iter().copied());
        }
        write_files(&chart, self.size, dir, stem)
    }
}

/// Counts of values in equal-width bins, drawn as bars. Build, then [`Histogram::write`].
#[derive(Debug, Clone)]
pub struct Histogram {
    texts: Texts,
    /// (bin start, bin end, count)
    bins: Vec<(f64, f64, u64)>,
    size: (u32, u32),
}

impl Histogram {
    /// `bins` equal bins from the smallest to the largest finite value.
    pub fn from_values(
        title: impl Into<String>,
        x_label: impl Into<String>,
        y_label: impl Into<String>,
        values: &[f64],
        bins: usize,
    ) -> Histogram {
        let finite = values.iter().copied().filter(|v| v.is_finite());
        let (low, high) = finite.fold((f64::INFINITY, f64::NEG_INFINITY), |(l, h), v| {
            (l.min(v), h.max(v))
        });
        let bins = bins.max(1);
        let mut counts = vec![0u64; bins];
        let width = if high > low {
            (high - low) / bins as f64
        } else {
            1.0
        };
        for v in values.iter().copied().filter(|v| v.is_finite()) {
            let i = (((v - low) / width) as usize).min(bins - 1);
            counts[i] += 1;
        }
        let bins = if low.is_finite() {
            counts
                .into_iter()
                .enumerate()
                .map(|(i, c)| (low + i as f64 * width, low + (i + 1) as f64 * width, c))
                .collect()
        } else {
            Vec::new()
        };
        Histogram {
            texts: Texts::new(title, x_label, y_label),
            bins,
            size: (960, 540),
        }
    }

    pub fn size(&mut self, width: u32, height: u32) -> &mut Self {
        self.size = (width, height);
        self
    }

    /// Writes `dir/stem.png` and `dir/stem.svg`, creating `dir` if needed.
    pub fn write(&self, dir: &Path, stem: &str) -> Result<Written> {
        write_files(self, self.size, dir, stem)
    }
}

/// A chart that can draw itself on any plotters backend (bitmap and SVG here).
trait Draw {
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Drawn<(), DB>;
}

fn write_files(chart: &impl Draw, size: (u32, u32), dir: &Path, stem: &str) -> Result<Written> {
    register_font()?;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let written = Written {
        png: dir.join(format!("{stem}.png")),
        svg: dir.join(format!("{stem}.svg")),
    };
    {
        let root = BitMapBackend::new(&written.png, size).into_drawing_area();
        chart.draw(&root)?;
        root.present()
            .with_context(|| format!("writing {}", written.png.display()))?;
    }
    {
        let root = SVGBackend::new(&written.svg, size).into_drawing_area();
        chart.draw(&root)?;
        root.present()
            .with_context(|| format!("writing {}", written.svg.display()))?;
    }
    Ok(written)
}

/// Registers [`FONT`] once per process (plotters keeps a global font table).
fn register_font() -> Result<()> {
    static REGISTERED: OnceLock<bool> = OnceLock::new();
    let ok = *REGISTERED
        .get_or_init(|| plotters::style::register_font(FAMILY, FontStyle::Normal, FONT).is_ok());
    if ok {
        Ok(())
    } else {
        Err(anyhow!("the embedded chart font is not a valid font"))
    }
}

impl Draw for LineChart {
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Drawn<(), DB> {
        let x = fit(
            self.series
                .iter()
                .flat_map(|s| s.points.iter().map(|p| p.0)),
            self.x_log,
            false,
        );
        let y = match self.y_range {
            Some((low, high)) => low..high,
            None => fit(
                self.series
                    .iter()
                    .flat_map(|s| s.points.iter().map(|p| p.1)),
                self.y_log,
                true,
            ),
        };
        // Each axis kind is its own type in plotters: one instantiation per combination.
        match (self.x_log, self.y_log) {
            (false, false) => self.draw_on(root, x, y),
            (true, false) => self.draw_on(root, x.log_scale(), y),
            (false, true) => self.draw_on(root, x, y.log_scale()),
            (true, true) => self.draw_on(root, x.log_scale(), y.log_scale()),
        }
    }
}

impl LineChart {
    fn draw_on<DB, X, Y>(&self, root: &DrawingArea<DB, Shift>, x: X, y: Y) -> Drawn<(), DB>
    where
        DB: DrawingBackend,
        X: AsRangedCoord<Value = f64>,
        Y: AsRangedCoord<Value = f64>,
        X::CoordDescType: ValueFormatter<f64>,
        Y::CoordDescType: ValueFormatter<f64>,
    {
        let mut chart = axes(root, &self.texts, x, y)?;
        let (x_ok, y_ok) = (self.x_log, self.y_log);
        let (y_low, y_high) = {
            let range = chart.y_range();
            (range.start, range.end)
        };
        for series in &self.series {
            let colour = COLOURS[series.style.colour % COLOURS.len()];
            let points: Vec<(f64, f64)> = series
                .points
                .iter()
                .copied()
                .filter(|(x, y)| {
                    x.is_finite() && y.is_finite() && (!x_ok || *x > 0.0) && (!y_ok || *y > 0.0)
                })
                .collect();
            let style = colour.stroke_width(2);
            let drawn = if series.style.dashed {
                chart.draw_series(DashedLineSeries::new(points, 8, 5, style))?
            } else {
                chart.draw_series(LineSeries::new(points, style))?
            };
            if !series.name.is_empty() {
                let dashed = series.style.dashed;
                drawn.label(&series.name).legend(move |(x, y)| {
                    if dashed {
                        PathElement::new(vec![(x, y), (x + 8, y)], colour.stroke_width(2))
                    } else {
                        PathElement::new(vec![(x, y), (x + 20, y)], colour.stroke_width(2))
                    }
                });
            }
        }
        let grey = RGBColor(90, 90, 90);
        for (i, marker) in self.markers.iter().enumerate() {
            chart.draw_series(DashedLineSeries::new(
                [(marker.x, y_low), (marker.x, y_high)],
                4,
                4,
                grey.stroke_width(1),
            ))?;
            // Three rows of labels, so markers a few pixels apart stay readable.
            let row = (i % 3) as i32;
            chart.draw_series(std::iter::once(
                EmptyElement::at((marker.x, y_high))
                    + Text::new(
                        marker.label.clone(),
                        (4, 4 + 15 * row),
                        (FAMILY, 13).into_font().color(&grey),
                    ),
            ))?;
        }
        if self.series.iter().any(|s| !s.name.is_empty()) {
            chart
                .configure_series_labels()
                .position(match self.legend {
                    Legend::UpperLeft => SeriesLabelPosition::UpperLeft,
                    Legend::UpperRight => SeriesLabelPosition::UpperRight,
                    Legend::LowerLeft => SeriesLabelPosition::LowerLeft,
                    Legend::LowerRight => SeriesLabelPosition::LowerRight,
                })
                .label_font((FAMILY, 13))
                .background_style(WHITE.mix(0.85))
                .border_style(BLACK.mix(0.3))
                .draw()?;
        }
        Ok(())
    }
}

impl Draw for Histogram {
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Drawn<(), DB> {
        let x = fit(self.bins.iter().flat_map(|b| [b.0, b.1]), false, false);
        let top = self.bins.iter().map(|b| b.2).max().unwrap_or(0).max(1) as f64 * 1.05;
        let mut chart = axes(root, &self.texts, x, 0.0..top)?;
        chart.draw_series(self.bins.iter().map(|&(low, high, count)| {
            Rectangle::new(
                [(low, 0.0), (high, count as f64)],
                COLOURS[0].mix(0.8).filled(),
            )
        }))?;
        Ok(())
    }
}

/// A white page with the title, both axes, their labels and a light grid: the frame every
/// chart draws into.
fn axes<'a, DB, X, Y>(
    root: &'a DrawingArea<DB, Shift>,
    texts: &Texts,
    x: X,
    y: Y,
) -> Drawn<Frame<'a, DB, X, Y>, DB>
where
    DB: DrawingBackend,
    X: AsRangedCoord<Value = f64>,
    Y: AsRangedCoord<Value = f64>,
    X::CoordDescType: ValueFormatter<f64>,
    Y::CoordDescType: ValueFormatter<f64>,
{
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(root)
        .caption(&texts.title, (FAMILY, 22))
        .margin(12)
        .x_label_area_size(44)
        .y_label_area_size(64)
        .build_cartesian_2d(x, y)?;
    chart
        .configure_mesh()
        .x_desc(&texts.x)
        .y_desc(&texts.y)
        .label_style((FAMILY, 13))
        .axis_desc_style((FAMILY, 15))
        .x_label_formatter(&|v| tick(*v))
        .y_label_formatter(&|v| tick(*v))
        .light_line_style(WHITE.mix(0.0))
        .bold_line_style(BLACK.mix(0.08))
        .draw()?;
    Ok(chart)
}

/// An axis range around `values` with a little room; for a log axis only positive values
/// count. `from_zero` starts a linear axis at 0 when every value is positive (shares, rates).
fn fit(values: impl Iterator<Item = f64>, log: bool, from_zero: bool) -> Range<f64> {
    let (low, high) = values
        .filter(|v| v.is_finite() && (!log || *v > 0.0))
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(l, h), v| {
            (l.min(v), h.max(v))
        });
    if !low.is_finite() {
        return if log { 1.0..10.0 } else { 0.0..1.0 };
    }
    if log {
        // A decade's tenth each side, and never an empty range.
        let high = if high > low { high } else { low * 10.0 };
        return low / 1.1..high * 1.1;
    }
    let low = if from_zero && low > 0.0 { 0.0 } else { low };
    let pad = if high > low { (high - low) * 0.05 } else { 1.0 };
    let low = if low == 0.0 { 0.0 } else { low - pad };
    low..high + pad
}

/// Axis label: four significant digits at most, k/M/G past 10,000.
pub fn tick(value: f64) -> String {
    let magnitude = value.abs();
    let (scaled, suffix) = if magnitude >= 1e9 {
        (value / 1e9, "G")
    } else if magnitude >= 1e6 {
        (value / 1e6, "M")
    } else if magnitude >= 1e4 {
        (value / 1e3, "k")
    } else {
        (value, "")
    };
    if scaled == 0.0 {
        return "0".into();
    }
    let decimals = (3 - scaled.abs().log10().floor() as i32).clamp(0, 9) as usize;
    let text = format!("{scaled:.decimals$}");
    let text = if text.contains('.') {
        text.trim_end_matches('0').trim_end_matches('.')
    } else {
        &text
    };
    format!("{text}{suffix}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("relaymesh-plot-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    /// A real PNG of the chart's size: the signature, then a full decode.
    fn check_png(path: &Path, size: (u32, u32)) {
        let bytes = std::fs::read(path).unwrap();
        assert!(
            bytes.len() > 1000,
            "{} is {} bytes",
            path.display(),
            bytes.len()
        );
        assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n");
        let mut reader = png::Decoder::new(std::io::Cursor::new(&bytes))
            .read_info()
            .unwrap();
        let mut pixels = vec![0; reader.output_buffer_size()];
        let info = reader.next_frame(&mut pixels).unwrap();
        assert_eq!((info.width, info.height), size);
        // Not a blank page: some pixels are neither white nor transparent.
        assert!(pixels.chunks(3).any(|p| p != [255, 255, 255]));
    }

    fn read_svg(path: &Path) -> String {
        let text = std::fs::read_to_string(path).unwrap();
        assert!(text.starts_with("<svg"), "{}", &text[..text.len().min(100)]);
        assert!(text.trim_end().ends_with("</svg>"));
        text
    }

    #[test]
    fn line_chart_with_markers_and_log_x() {
        let dir = temp_dir("line");
        let written = LineChart::new("Throughput", "seconds", "events/s")
            .series(
                "node-a",
                (0..60).map(|s| (s as f64, 1000.0 + (s % 7) as f64 * 10.0)),
            )
            .series("node-b", (0..60).map(|s| (s as f64, 800.0)))
            .series_with(
                "ideal",
                [(0.0, 900.0), (59.0, 900.0)],
                Style {
                    colour: 0,
                    dashed: true,
                },
            )
            .marker(12.0, "kill node-2")
            .marker(13.0, "partition a|b")
            .marker(40.0, "restart node-2")
            .size(640, 360)
            .write(&dir, "throughput")
            .unwrap();
        check_png(&written.png, (640, 360));
        let svg = read_svg(&written.svg);
        for text in [
            "node-a",
            "node-b",
            "ideal",
            "kill node-2",
            "restart node-2",
            "Throughput",
        ] {
            assert!(svg.contains(text), "{text} missing from the SVG");
        }

        let log = LineChart::new("Moved", "nodes", "share")
            .log_x()
            .log_y()
            .series("leave", [(10.0, 0.1), (100.0, 0.01), (1000.0, 0.001)])
            .write(&dir, "log")
            .unwrap();
        check_png(&log.png, (960, 540));
        assert!(read_svg(&log.svg).contains("leave"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn cdf_from_values_and_from_points() {
        let values: Vec<f64> = (1..=100_000).map(|i| (i % 997) as f64 + 0.5).collect();
        let cdf = Cdf::from_values("eu-west", &values);
        assert!(cdf.points.len() <= CDF_POINTS_MAX + 1);
        assert_eq!(cdf.points.last().map(|p| p.1), Some(1.0));
        assert!(cdf
            .points
            .windows(2)
            .all(|w| w[0].0 <= w[1].0 && w[0].1 <= w[1].1));

        let dir = temp_dir("cdf");
        let written = CdfChart::new("Delivery latency", "ms")
            .log_x()
            .cdf(cdf)
            .cdf(Cdf::from_points(
                "us-east",
                [(2.0, 0.5), (1.0, 0.1), (9.0, 0.99), (20.0, 1.0)],
            ))
            .cdf(Cdf::from_values("empty", &[]))
            .write(&dir, "latency-cdf")
            .unwrap();
        check_png(&written.png, (960, 540));
        let svg = read_svg(&written.svg);
        assert!(svg.contains("eu-west") && svg.contains("us-east"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn histogram_counts_every_value() {
        let values: Vec<f64> = (0..1000).map(|i| 0.9 + (i % 20) as f64 / 100.0).collect();
        let histogram = Histogram::from_values("Load", "load / mean", "nodes", &values, 10);
        assert_eq!(histogram.bins.iter().map(|b| b.2).sum::<u64>(), 1000);
        let dir = temp_dir("histogram");
        let written = histogram.write(&dir, "load").unwrap();
        check_png(&written.png, (960, 540));
        assert!(read_svg(&written.svg).contains("load / mean"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn ticks_are_short() {
        assert_eq!(tick(0.0), "0");
        assert_eq!(tick(1.15), "1.15");
        assert_eq!(tick(0.001), "0.001");
        assert_eq!(tick(1000.0), "1000");
        assert_eq!(tick(20_000.0), "20k");
        assert_eq!(tick(1e8), "100M");
        assert_eq!(tick(2.5e6), "2.5M");
    }
}
