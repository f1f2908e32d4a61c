//! How a chart tells its series apart and labels its axes: one colour and one marker per
//! subject, the same in every chart, and tick labels that never repeat on an axis.
//!
//! Every colour is dark enough to read on white (a contrast of at least 3:1, the WCAG
//! minimum for graphics); the subjects drawn in one chart differ in colour and in marker,
//! so two lines that overlap are still told apart by their markers. Stores have filled
//! markers, naive peers hollow ones, hardware limits a cross or a plus.

use plotters::style::RGBColor;

use crate::data::{base_name, kind, Kind, STORES};

/// The shape drawn at each point of a series.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// A circle.
    Circle,
    /// A square.
    Square,
    /// A triangle pointing up.
    Triangle,
    /// A square standing on a corner.
    Diamond,
    /// An ×.
    Cross,
    /// A +.
    Plus,
}

/// How one subject is drawn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Look {
    /// Its colour, in every chart.
    pub color: RGBColor,
    /// Its marker.
    pub shape: Shape,
    /// Whether the marker is filled (stores) or drawn as an outline on white (the rest).
    pub filled: bool,
}

/// The look of `subject` (a function name, with or without its `S1_`/`S3_` prefix or
/// `_sell_out` suffix).
pub fn look(subject: &str) -> Look {
    let (color, shape) = match base_name(subject) {
        "pessimistic" => (RGBColor(31, 119, 180), Shape::Circle),
        "optimistic" => (RGBColor(213, 94, 0), Shape::Square),
        "monitor" => (RGBColor(44, 150, 44), Shape::Triangle),
        "adaptive" => (RGBColor(0, 0, 0), Shape::Diamond),
        "mutex_hashmap" => (RGBColor(148, 103, 189), Shape::Circle),
        "dashmap" => (RGBColor(140, 86, 75), Shape::Square),
        "mutex_hashmap_holds" => (RGBColor(204, 51, 153), Shape::Triangle),
        "dashmap_holds" => (RGBColor(128, 128, 0), Shape::Diamond),
        "ideal_vec" | "atomic_cas" => (RGBColor(60, 60, 60), Shape::Cross),
        "atomic_fetch_sub" | "mutex_u64" => (RGBColor(160, 0, 0), Shape::Plus),
        _ => (RGBColor(60, 60, 60), Shape::Plus),
    };
    Look {
        color,
        shape,
        filled: kind(subject) == Kind::Store,
    }
}

/// Where `subject` sits beside the other stores at one thread count, in pixels from the
/// thread count: the four stores side by side, 11 px apart, so that equal figures do not
/// hide one another (-16, -5, 5, 16); everything else at the thread count itself.
pub fn dodge_px(subject: &str) -> i32 {
    STORES
        .iter()
        .position(|store| *store == base_name(subject))
        .map_or(0, |index| (2 * index as i32 - 3) * 11 / 2)
}

/// What a subject is, in words (printed under its name beside a bar).
pub fn kind_words(subject: &str) -> &'static str {
    match kind(subject) {
        Kind::Store => "store",
        Kind::Peer => "naive peer",
        Kind::Limit => "hardware limit",
    }
}

/// The ticks of a logarithmic axis: the 1-2-5 steps (1, 2, 5, 10, 20, ...) within
/// `low..high`, widened to the neighbouring steps until there are at least three.
/// Returns the (possibly widened) range and the ticks.
pub fn log_ticks(low: f64, high: f64) -> (f64, f64, Vec<f64>) {
    let first = low.log10().floor() as i32 - 2;
    let last = high.log10().ceil() as i32 + 2;
    let steps: Vec<f64> = (first..=last)
        .flat_map(|exponent| [1.0, 2.0, 5.0].map(|m| m * 10f64.powi(exponent)))
        .collect();
    let (mut low, mut high) = (low, high);
    loop {
        let ticks: Vec<f64> = steps
            .iter()
            .copied()
            .filter(|step| (low..=high).contains(step))
            .collect();
        if ticks.len() >= 3 {
            return (low, high, ticks);
        }
        low = steps
            .iter()
            .copied()
            .rfind(|step| *step < low)
            .unwrap_or(low);
        high = steps
            .iter()
            .copied()
            .find(|step| *step > high)
            .unwrap_or(high);
    }
}

/// A tick of operations per second with an SI prefix and no more digits than it needs:
/// `500 k`, `2 M`, `2.5 M`, `10 M`.
pub fn rate_tick(value: f64) -> String {
    let (scale, prefix) = match value {
        v if v >= 1e9 => (1e9, " G"),
        v if v >= 1e6 => (1e6, " M"),
        v if v >= 1e3 => (1e3, " k"),
        _ => (1.0, ""),
    };
    format!("{}{prefix}", plain_tick(value / scale))
}

/// A tick of a linear axis with no more digits than it needs: `0`, `2.5`, `25000`.
pub fn plain_tick(value: f64) -> String {
    let text = format!("{value:.3}");
    let text = text.trim_end_matches('0').trim_end_matches('.');
    if text == "-0" {
        "0".into()
    } else {
        text.to_string()
    }
}

/// The unit in which a chart of durations up to `max_ns` writes them: `(ns per unit,
/// name, decimals)`, as the tables write them.
pub fn time_unit(max_ns: f64) -> (f64, &'static str, usize) {
    match max_ns {
        ns if ns >= 1e6 => (1e6, "ms", 2),
        ns if ns >= 1e3 => (1e3, "µs", 2),
        _ => (1.0, "ns", 1),
    }
}
