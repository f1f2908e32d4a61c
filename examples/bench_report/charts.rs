//! One SVG chart per scenario, drawn with plotters from the same run as the tables.
//!
//! Scenarios with threads are lines of throughput against threads (1, 2, 8, 32; both axes
//! logarithmic): a solid line per store, a dashed line per naive peer, a dotted line per
//! hardware limit. The single-thread hot paths are bars of time per operation with the
//! callgrind instructions printed on each bar; the memory figures are bars of bytes per
//! SKU. Every chart names each series in a legend or beside its bar, and its caption names
//! the commit and the machine of the run.
//!
//! plotters runs without its `ttf` feature: its SVG backend writes text as `<text>`
//! elements and no font is loaded (no fontconfig, no system fonts).

use std::error::Error;
use std::path::{Path, PathBuf};

use plotters::coord::Shift;
use plotters::element::{DashedPathElement, DottedPathElement};
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use crate::data::{base_name, kind, Data, Kind};
use crate::format::{duration_ns, number, rate, utc};

/// Width and height of every chart, in SVG pixels.
const SIZE_PX: (u32, u32) = (960, 540);
/// Height of the caption strip at the bottom.
const FOOTER_PX: u32 = 26;
/// Width of the legend beside a line chart.
const LEGEND_PX: u32 = 230;
/// The font of every text (a family name only: the SVG viewer picks the font).
const FONT: &str = "sans-serif";

/// A chart written to disk.
#[derive(Debug, Clone)]
pub struct Drawn {
    /// File name without `.svg`: `S3_zipf`, `memory`, ...
    pub stem: String,
    /// Where it was written.
    pub path: PathBuf,
    /// What it shows (its title).
    pub title: String,
}

/// One line of a line chart: `(threads, operations per second)`.
#[derive(Debug, Clone)]
struct Line {
    name: String,
    points: Vec<(f64, f64)>,
}

/// One bar of a bar chart.
#[derive(Debug, Clone)]
struct Bar {
    name: String,
    value: f64,
    /// Printed on the bar.
    label: String,
}

/// The caption of every chart: commit, machine, date and mode of the run.
pub fn caption(data: &Data) -> String {
    let date = data.run["started_unix_s"].as_u64().map_or("?".into(), utc);
    let mode = if data.run["quick"].as_bool() == Some(true) {
        "quick mode"
    } else {
        "full run"
    };
    format!(
        "stockledger {} · {} · {date} · {mode}",
        data.commit(),
        data.machine()
    )
}

/// Draws every chart `data` has figures for into `dir`; returns what it wrote.
pub fn draw_all(data: &Data, dir: &Path) -> Result<Vec<Drawn>, Box<dyn Error>> {
    std::fs::create_dir_all(dir)?;
    let caption = caption(data);
    let mut drawn = Vec::new();
    let mut line_chart = |stem: &str, title: &str, unit: &str, lines: Vec<Line>| {
        if lines.is_empty() {
            return Ok::<_, Box<dyn Error>>(());
        }
        let path = dir.join(format!("{stem}.svg"));
        draw_lines(&path, title, &caption, unit, &lines)?;
        drawn.push(Drawn {
            stem: stem.to_string(),
            path,
            title: title.to_string(),
        });
        Ok(())
    };
    let sold = |f: &str| !f.ends_with("_sell_out");
    let sell_outs = |f: &str| f.ends_with("_sell_out");
    line_chart(
        "S1_flash_sale",
        "S1 flash sale: one SKU, 1 unit a sale",
        "sales",
        lines(data, "S1_flash_sale", sold, Some("S1_")),
    )?;
    line_chart(
        "S1_flash_sale_sell_out",
        "S1 sell-outs of 10,000 units",
        "units",
        lines(data, "S1_flash_sale", sell_outs, None),
    )?;
    line_chart(
        "S2_uniform",
        "S2 uniform: 100k SKUs, level / reserve+commit / reserve+release",
        "requests",
        lines(data, "S2_uniform", |_| true, None),
    )?;
    line_chart(
        "S3_zipf",
        "S3 Zipf(0.99): 100k SKUs, same mix as S2",
        "requests",
        lines(data, "S3_zipf", |_| true, Some("S3_")),
    )?;
    line_chart(
        "S4_tpcc_new_order",
        "S4 TPC-C NewOrder stock: 5-15 lines an order",
        "orders",
        lines(data, "S4_tpcc_new_order", |_| true, None),
    )?;
    for (stem, title, axis, bars) in bar_charts(data) {
        if bars.is_empty() {
            continue;
        }
        let path = dir.join(format!("{stem}.svg"));
        draw_bars(&path, title, &caption, axis, &bars)?;
        drawn.push(Drawn {
            stem: stem.to_string(),
            path,
            title: title.to_string(),
        });
    }
    Ok(drawn)
}

/// The lines of `group` (functions passing `filter`), extended to S5's thread counts by
/// the functions `<s5_prefix><name>` of `S5_oversubscription`.
fn lines(
    data: &Data,
    group: &str,
    filter: impl Fn(&str) -> bool,
    s5_prefix: Option<&str>,
) -> Vec<Line> {
    data.functions(group)
        .into_iter()
        .filter(|function| filter(function))
        .map(|function| {
            let mut points: Vec<(f64, f64)> = data
                .threads(group, &function)
                .into_iter()
                .filter_map(|t| Some((t as f64, data.ops(group, &function, t)?)))
                .collect();
            if let Some(prefix) = s5_prefix {
                let s5 = format!("{prefix}{function}");
                for t in data.threads("S5_oversubscription", &s5) {
                    if let Some(ops) = data.ops("S5_oversubscription", &s5, t) {
                        points.push((t as f64, ops));
                    }
                }
            }
            Line {
                name: base_name(&function).to_string(),
                points,
            }
        })
        .filter(|line| !line.points.is_empty())
        .collect()
}

/// The bar charts: `(stem, title, value axis, bars)`.
fn bar_charts(data: &Data) -> Vec<(&'static str, &'static str, &'static str, Vec<Bar>)> {
    vec![
        (
            "hot_sell",
            "Single-thread sell of 1 unit, 100k SKUs",
            "time per operation, ns (callgrind instructions on the bars)",
            hot_bars(data, "hot_sell", "sell"),
        ),
        (
            "hot_reserve_commit",
            "Single-thread reserve + commit of 1 unit, 100k SKUs",
            "time per operation, ns (callgrind instructions on the bars)",
            hot_bars(data, "hot_reserve_commit", "reserve_commit"),
        ),
        (
            "S6_wait_queue_handoff",
            "S6 wait-queue handoff: 1 unit to a queued waiter",
            "p50 handoff latency, ns (p99 on the bars)",
            handoff_bars(data),
        ),
        (
            "memory",
            "Memory: bytes per SKU at 1M SKUs",
            "bytes per SKU (heap allocations per reserve+commit on the bars)",
            memory_bars(data),
        ),
    ]
}

/// Time per operation of every single-thread variant of `group`, instructions on the bars.
fn hot_bars(data: &Data, group: &str, operation: &str) -> Vec<Bar> {
    data.functions(group)
        .into_iter()
        .filter_map(|function| {
            let ns = data.cost(group, &function)?;
            let workload = if function == "mutex_u64" {
                "mutex_u64/sell".to_string()
            } else {
                format!("{function}/{operation}")
            };
            let instructions = data.instructions_per_op(&workload);
            Some(Bar {
                label: format!(
                    "{} · {} instructions",
                    duration_ns(ns),
                    number(instructions, 0)
                ),
                name: function,
                value: ns,
            })
        })
        .collect()
}

/// p50 handoff latency of S6's variants, p99 on the bars.
fn handoff_bars(data: &Data) -> Vec<Bar> {
    ["monitor", "condvar_pingpong"]
        .into_iter()
        .filter_map(|name| {
            let latency = &data.latency[name];
            let p50 = latency["p50_ns"].as_f64()?;
            let p99 = latency["p99_ns"].as_f64().map_or("–".into(), duration_ns);
            Some(Bar {
                name: name.to_string(),
                value: p50,
                label: format!("p50 {} · p99 {p99}", duration_ns(p50)),
            })
        })
        .collect()
}

/// Bytes per SKU of every subject of the memory bench.
fn memory_bars(data: &Data) -> Vec<Bar> {
    data.memory_subjects()
        .into_iter()
        .filter_map(|name| {
            let bytes = data.memory[&name]["bytes_per_sku"].as_f64()?;
            let allocations = data.allocations(&name, "reserve_commit");
            Some(Bar {
                label: format!(
                    "{bytes:.1} B · {} allocations per reserve+commit",
                    number(allocations, 2)
                ),
                name,
                value: bytes,
            })
        })
        .collect()
}

/// A fixed colour per subject, the same in every chart.
fn color(name: &str) -> RGBColor {
    match base_name(name) {
        "pessimistic" => RGBColor(31, 119, 180),
        "optimistic" => RGBColor(255, 127, 14),
        "monitor" => RGBColor(44, 160, 44),
        "mutex_hashmap" => RGBColor(214, 39, 40),
        "dashmap" => RGBColor(148, 103, 189),
        "mutex_hashmap_holds" => RGBColor(140, 86, 75),
        "dashmap_holds" => RGBColor(227, 119, 194),
        "ideal_vec" | "atomic_cas" => RGBColor(90, 90, 90),
        "atomic_fetch_sub" | "mutex_u64" => RGBColor(23, 190, 207),
        _ => RGBColor(188, 189, 34),
    }
}

/// White background, the caption strip at the bottom; returns the area above it.
fn canvas<'a>(
    root: &DrawingArea<SVGBackend<'a>, Shift>,
    caption: &str,
) -> Result<DrawingArea<SVGBackend<'a>, Shift>, Box<dyn Error>> {
    root.fill(&WHITE)?;
    let (upper, footer) = root.split_vertically(SIZE_PX.1 - FOOTER_PX);
    footer.draw(&Text::new(
        caption.to_string(),
        (10, 4),
        (FONT, 14).into_font().color(&RGBColor(80, 80, 80)),
    ))?;
    Ok(upper)
}

/// A line chart of operations per second against threads, both axes logarithmic.
fn draw_lines(
    path: &Path,
    title: &str,
    caption: &str,
    unit: &str,
    lines: &[Line],
) -> Result<(), Box<dyn Error>> {
    let root = SVGBackend::new(path, SIZE_PX).into_drawing_area();
    let upper = canvas(&root, caption)?;
    let (plot, legend) = upper.split_horizontally(SIZE_PX.0 - LEGEND_PX);
    let values = lines
        .iter()
        .flat_map(|line| line.points.iter().map(|p| p.1));
    let low = values.clone().fold(f64::INFINITY, f64::min) / 2.0;
    let high = values.fold(0.0, f64::max) * 2.0;
    let threads: Vec<f64> = {
        let mut threads: Vec<f64> = lines
            .iter()
            .flat_map(|l| l.points.iter().map(|p| p.0))
            .collect();
        threads.sort_by(f64::total_cmp);
        threads.dedup();
        threads
    };
    let max_threads = threads.last().copied().unwrap_or(2.0);
    let mut chart = ChartBuilder::on(&plot)
        .caption(title, (FONT, 20))
        .margin(12)
        .x_label_area_size(44)
        .y_label_area_size(80)
        .build_cartesian_2d(
            (0.8..max_threads * 1.25)
                .log_scale()
                .with_key_points(threads),
            (low..high).log_scale(),
        )?;
    chart
        .configure_mesh()
        .x_desc("threads (log scale)")
        .y_desc(format!("{unit} per second (log scale)"))
        .x_label_formatter(&|threads| format!("{threads}"))
        .y_label_formatter(&|ops| rate(*ops))
        .label_style((FONT, 14))
        .draw()?;
    for line in lines {
        let color = color(&line.name);
        let points = line.points.clone();
        match kind(&line.name) {
            Kind::Store => {
                chart.draw_series(LineSeries::new(points, color.stroke_width(3)))?;
            }
            Kind::Peer => {
                chart.draw_series(DashedLineSeries::new(points, 10, 6, color.stroke_width(2)))?;
            }
            Kind::Limit => {
                chart.draw_series(DottedLineSeries::new(points, 0, 7, move |at| {
                    Circle::new(at, 2, color.filled())
                }))?;
            }
        }
        chart.draw_series(
            line.points
                .iter()
                .map(|point| Circle::new(*point, 4, color.filled())),
        )?;
    }
    draw_legend(&legend, lines.iter().map(|line| line.name.as_str()))?;
    root.present()?;
    Ok(())
}

/// The legend beside a line chart: a sample of each series' line and its name.
fn draw_legend<'a>(
    area: &DrawingArea<SVGBackend<'_>, Shift>,
    names: impl Iterator<Item = &'a str>,
) -> Result<(), Box<dyn Error>> {
    let style = (FONT, 15).into_font().color(&BLACK);
    for (row, name) in names.enumerate() {
        let y = 60 + 26 * row as i32;
        let color = color(name);
        let (from, to) = ((8, y), (48, y));
        match kind(name) {
            Kind::Store => area.draw(&PathElement::new(vec![from, to], color.stroke_width(3)))?,
            Kind::Peer => area.draw(&DashedPathElement::new(
                vec![from, to],
                10,
                6,
                color.stroke_width(2),
            ))?,
            Kind::Limit => area.draw(&DottedPathElement::new(
                vec![from, to],
                0,
                7,
                Box::new(move |at| Circle::new(at, 2, color.filled())) as Box<dyn Fn(_) -> _>,
            ))?,
        }
        area.draw(&Text::new(name.to_string(), (56, y - 8), style.clone()))?;
    }
    let key = (FONT, 13).into_font().color(&RGBColor(80, 80, 80));
    let bottom = area.dim_in_pixel().1 as i32;
    for (row, text) in [
        "solid: a store",
        "dashed: a naive peer",
        "dotted: a hardware limit",
    ]
    .into_iter()
    .enumerate()
    {
        area.draw(&Text::new(
            text,
            (8, bottom - 110 + 18 * row as i32),
            key.clone(),
        ))?;
    }
    Ok(())
}

/// A horizontal bar chart: one bar per subject, its name on the axis and its label on it.
fn draw_bars(
    path: &Path,
    title: &str,
    caption: &str,
    axis: &str,
    bars: &[Bar],
) -> Result<(), Box<dyn Error>> {
    let root = SVGBackend::new(path, SIZE_PX).into_drawing_area();
    let upper = canvas(&root, caption)?;
    let high = bars.iter().map(|bar| bar.value).fold(0.0, f64::max) * 1.9;
    // Row `count - 1 - i` (counted from the bottom) holds bar `i`, so the first bar is on
    // top; the names are drawn beside the rows (plotters' label formatter has no
    // categorical axis without an empty extra segment).
    let count = bars.len();
    let mut chart = ChartBuilder::on(&upper)
        .caption(title, (FONT, 20))
        .margin(12)
        .x_label_area_size(44)
        .y_label_area_size(170)
        .build_cartesian_2d(0.0..high, 0.0..count as f64)?;
    chart
        .configure_mesh()
        .disable_y_mesh()
        .y_labels(0)
        .x_max_light_lines(2)
        .x_desc(axis)
        .x_label_formatter(&|value| format!("{value:.0}"))
        .label_style((FONT, 14))
        .draw()?;
    let beside = |anchor: HPos, size: u32| {
        (FONT, size)
            .into_font()
            .color(&BLACK)
            .pos(Pos::new(anchor, VPos::Center))
    };
    for (index, bar) in bars.iter().enumerate() {
        let color = color(&bar.name);
        let style = match kind(&bar.name) {
            Kind::Store => color.filled(),
            Kind::Peer => color.mix(0.45).filled(),
            Kind::Limit => color.mix(0.25).filled(),
        };
        let row = (count - 1 - index) as f64;
        let mut rectangle = Rectangle::new([(0.0, row), (bar.value, row + 1.0)], style);
        rectangle.set_margin(5, 5, 0, 0);
        chart.draw_series(std::iter::once(rectangle))?;
        chart.draw_series([
            EmptyElement::at((0.0, row + 0.5))
                + Text::new(bar.name.clone(), (-8, 0), beside(HPos::Right, 15)),
            EmptyElement::at((bar.value, row + 0.5))
                + Text::new(bar.label.clone(), (6, 0), beside(HPos::Left, 15)),
        ])?;
    }
    root.present()?;
    Ok(())
}
