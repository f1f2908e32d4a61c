//! One SVG chart per scenario, drawn with plotters from the same run as the tables.
//!
//! Scenarios with threads are lines of throughput against threads (1, 2, 8, 32; both axes
//! logarithmic, ticks at 1-2-5 steps): a solid line per store, a dashed line per naive
//! peer, a dotted line per hardware limit, and a colour and a marker per subject
//! ([`style`](crate::style)); the stores' markers sit side by side at each thread count,
//! so equal figures do not hide one another. The single-thread hot paths are bars of time
//! per operation with the callgrind instructions printed on each bar; the memory figures
//! are bars of bytes per SKU. Each chart has one unit: a bar's label is written in the
//! unit of its axis. Every chart names each series in a legend or beside its bar, and its
//! caption names the commit and the machine of the run.
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
use crate::format::{number, utc};
use crate::style::{
    dodge_px, kind_words, log_ticks, look, plain_tick, rate_tick, time_unit, Look, Shape,
};

/// Width and height of every chart, in SVG pixels.
const SIZE_PX: (u32, u32) = (960, 540);
/// Height of the caption strip at the bottom.
const FOOTER_PX: u32 = 26;
/// Width of the legend beside a line chart.
const LEGEND_PX: u32 = 250;
/// Half the width of a marker.
const MARKER_PX: i32 = 5;
/// The colour of secondary text (captions, kinds, the key): dark enough on white.
const GREY_TEXT: RGBColor = RGBColor(70, 70, 70);
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

/// A bar chart: its file name, title, value axis (with its unit) and bars.
#[derive(Debug, Clone)]
struct BarChart {
    stem: &'static str,
    title: &'static str,
    axis: String,
    bars: Vec<Bar>,
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
    line_chart(
        "S7_hot_and_cold",
        "S7 hot and cold: 1 hot SKU (50 %) + 100k cold, reserve+commit",
        "requests",
        lines(data, "S7_hot_and_cold", |_| true, None),
    )?;
    for chart in bar_charts(data) {
        if chart.bars.is_empty() {
            continue;
        }
        let path = dir.join(format!("{}.svg", chart.stem));
        draw_bars(&path, &caption, &chart)?;
        drawn.push(Drawn {
            stem: chart.stem.to_string(),
            path,
            title: chart.title.to_string(),
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

/// The bar charts.
fn bar_charts(data: &Data) -> Vec<BarChart> {
    let (hot_sell_axis, hot_sell) = hot_bars(data, "hot_sell", "sell");
    let (hot_reserve_commit_axis, hot_reserve_commit) =
        hot_bars(data, "hot_reserve_commit", "reserve_commit");
    let (handoff_axis, handoff) = handoff_bars(data);
    vec![
        BarChart {
            stem: "hot_sell",
            title: "Single-thread sell of 1 unit, 100k SKUs",
            axis: hot_sell_axis,
            bars: hot_sell,
        },
        BarChart {
            stem: "hot_reserve_commit",
            title: "Single-thread reserve + commit of 1 unit, 100k SKUs",
            axis: hot_reserve_commit_axis,
            bars: hot_reserve_commit,
        },
        BarChart {
            stem: "S6_wait_queue_handoff",
            title: "S6 wait-queue handoff: 1 unit to a queued waiter",
            axis: handoff_axis,
            bars: handoff,
        },
        BarChart {
            stem: "memory",
            title: "Memory: bytes per SKU at 1M SKUs",
            axis: "bytes per SKU (heap allocations per reserve+commit on the bars)".into(),
            bars: memory_bars(data),
        },
    ]
}

/// `ns` in `unit` (from [`time_unit`]) with the unit's name: `25.59 µs`.
fn in_unit(ns: f64, (scale, name, decimals): (f64, &str, usize)) -> String {
    format!("{:.decimals$} {name}", ns / scale)
}

/// Time per operation of every single-thread variant of `group`, instructions on the
/// bars, and the axis title with the unit of the bars.
fn hot_bars(data: &Data, group: &str, operation: &str) -> (String, Vec<Bar>) {
    let times: Vec<(String, f64)> = data
        .functions(group)
        .into_iter()
        .filter_map(|function| Some((function.clone(), data.cost(group, &function)?)))
        .collect();
    let unit = time_unit(times.iter().map(|(_, ns)| *ns).fold(0.0, f64::max));
    let bars = times
        .into_iter()
        .map(|(function, ns)| {
            let workload = if function == "mutex_u64" {
                "mutex_u64/sell".to_string()
            } else {
                format!("{function}/{operation}")
            };
            let instructions = data.instructions_per_op(&workload);
            Bar {
                label: format!(
                    "{} · {} instructions",
                    in_unit(ns, unit),
                    number(instructions, 0)
                ),
                name: function,
                value: ns / unit.0,
            }
        })
        .collect();
    let axis = format!(
        "time per operation, {} (callgrind instructions on the bars)",
        unit.1
    );
    (axis, bars)
}

/// p50 handoff latency of S6's variants, p99 on the bars (in the same unit), and the axis
/// title with that unit.
fn handoff_bars(data: &Data) -> (String, Vec<Bar>) {
    let latencies: Vec<(&str, f64, Option<f64>)> = ["monitor", "condvar_pingpong"]
        .into_iter()
        .filter_map(|name| {
            let latency = &data.latency[name];
            Some((
                name,
                latency["p50_ns"].as_f64()?,
                latency["p99_ns"].as_f64(),
            ))
        })
        .collect();
    let unit = time_unit(latencies.iter().map(|l| l.1).fold(0.0, f64::max));
    let bars = latencies
        .into_iter()
        .map(|(name, p50, p99)| Bar {
            name: name.to_string(),
            value: p50 / unit.0,
            label: format!(
                "p50 {} · p99 {}",
                in_unit(p50, unit),
                p99.map_or("–".into(), |p99| in_unit(p99, unit))
            ),
        })
        .collect();
    let axis = format!("p50 handoff latency, {} (p99 on the bars)", unit.1);
    (axis, bars)
}

/// Bytes per SKU of every subject of the memory bench.
fn memory_bars(data: &Data) -> Vec<Bar> {
    data.memory_subjects()
        .into_iter()
        .filter_map(|name| {
            let bytes = data.memory[&name]["bytes_per_sku"].as_f64()?;
            let allocations = data.allocations(&name, "reserve_commit");
            Some(Bar {
                label: format!("{bytes:.1} B · {} allocations", number(allocations, 2)),
                name,
                value: bytes,
            })
        })
        .collect()
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
        (FONT, 15).into_font().color(&GREY_TEXT),
    ))?;
    Ok(upper)
}

/// Draws the marker of `look` centred on the pixel `at` of `area`: filled, or an outline
/// on white that hides the lines under it.
fn draw_marker(
    area: &DrawingArea<SVGBackend<'_>, Shift>,
    at: (i32, i32),
    look: Look,
) -> Result<(), Box<dyn Error>> {
    let (x, y) = at;
    let r = if look.filled {
        MARKER_PX + 1
    } else {
        MARKER_PX
    };
    let outline = look.color.stroke_width(2);
    let fill = if look.filled {
        look.color.filled()
    } else {
        WHITE.filled()
    };
    let corners = match look.shape {
        Shape::Circle => {
            area.draw(&Circle::new(at, r, fill))?;
            if !look.filled {
                area.draw(&Circle::new(at, r, outline))?;
            }
            return Ok(());
        }
        Shape::Cross | Shape::Plus => {
            let arms = if look.shape == Shape::Cross {
                [
                    [(x - r, y - r), (x + r, y + r)],
                    [(x - r, y + r), (x + r, y - r)],
                ]
            } else {
                let r = r + 1;
                [[(x - r, y), (x + r, y)], [(x, y - r), (x, y + r)]]
            };
            for arm in arms {
                area.draw(&PathElement::new(arm, look.color.stroke_width(3)))?;
            }
            return Ok(());
        }
        Shape::Square => vec![
            (x - r, y - r),
            (x + r, y - r),
            (x + r, y + r),
            (x - r, y + r),
        ],
        Shape::Triangle => {
            let r = r + 2;
            vec![(x, y - r), (x + r, y + r * 3 / 4), (x - r, y + r * 3 / 4)]
        }
        Shape::Diamond => {
            let r = r + 2;
            vec![(x, y - r), (x + r, y), (x, y + r), (x - r, y)]
        }
    };
    area.draw(&Polygon::new(corners.clone(), fill))?;
    if !look.filled {
        let mut closed = corners.clone();
        closed.push(corners[0]);
        area.draw(&PathElement::new(closed, outline))?;
    }
    Ok(())
}

/// Draws the line through the pixels `points` of `area` in the style of `name`'s kind:
/// solid for a store, dashed for a naive peer, dotted for a hardware limit.
fn draw_path(
    area: &DrawingArea<SVGBackend<'_>, Shift>,
    points: Vec<(i32, i32)>,
    name: &str,
) -> Result<(), Box<dyn Error>> {
    let color = look(name).color;
    match kind(name) {
        Kind::Store => area.draw(&PathElement::new(points, color.stroke_width(3)))?,
        Kind::Peer => area.draw(&DashedPathElement::new(
            points,
            10,
            6,
            color.stroke_width(2),
        ))?,
        Kind::Limit => area.draw(&DottedPathElement::new(
            points,
            0,
            7,
            Box::new(move |at| Circle::new(at, 2, color.filled())) as Box<dyn Fn(_) -> _>,
        ))?,
    }
    Ok(())
}

/// A line chart of operations per second against threads, both axes logarithmic; the
/// stores' markers sit side by side at each thread count ([`dodge_px`]).
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
    let (low, high, ticks) = log_ticks(
        values.clone().fold(f64::INFINITY, f64::min) / 1.5,
        values.fold(0.0, f64::max) * 1.5,
    );
    let threads: Vec<f64> = {
        let mut threads: Vec<f64> = lines
            .iter()
            .flat_map(|l| l.points.iter().map(|p| p.0))
            .collect();
        threads.sort_by(f64::total_cmp);
        threads.dedup();
        threads
    };
    let min_threads = threads.first().copied().unwrap_or(1.0);
    let max_threads = threads.last().copied().unwrap_or(2.0);
    let mut chart = ChartBuilder::on(&plot)
        .caption(title, (FONT, 22))
        .margin(12)
        .x_label_area_size(48)
        .y_label_area_size(84)
        .build_cartesian_2d(
            (min_threads / 1.25..max_threads * 1.25)
                .log_scale()
                .with_key_points(threads),
            (low..high).log_scale().with_key_points(ticks),
        )?;
    chart
        .configure_mesh()
        .x_max_light_lines(0)
        .y_max_light_lines(0)
        .x_desc("threads (log scale)")
        .y_desc(format!("{unit} per second (log scale)"))
        .x_label_formatter(&|threads| plain_tick(*threads))
        .y_label_formatter(&|ops| rate_tick(*ops))
        .label_style((FONT, 16))
        .axis_desc_style((FONT, 16))
        .draw()?;
    let pixels = |line: &Line| -> Vec<(i32, i32)> {
        let dodge = if lines
            .iter()
            .filter(|l| kind(&l.name) == Kind::Store)
            .count()
            > 1
        {
            dodge_px(&line.name)
        } else {
            0
        };
        line.points
            .iter()
            .map(|point| {
                let (x, y) = chart.backend_coord(point);
                (x + dodge, y)
            })
            .collect()
    };
    // Limits first, stores last: the stores' lines and markers are drawn on top.
    for line in lines.iter().rev() {
        draw_path(&root, pixels(line), &line.name)?;
    }
    for line in lines.iter().rev() {
        for at in pixels(line) {
            draw_marker(&root, at, look(&line.name))?;
        }
    }
    draw_legend(&legend, lines.iter().map(|line| line.name.as_str()))?;
    root.present()?;
    Ok(())
}

/// The legend beside a line chart: a sample of each series' line and marker, its name,
/// and what the line styles mean.
fn draw_legend<'a>(
    area: &DrawingArea<SVGBackend<'_>, Shift>,
    names: impl Iterator<Item = &'a str>,
) -> Result<(), Box<dyn Error>> {
    let style = (FONT, 17).into_font().color(&BLACK);
    for (row, name) in names.enumerate() {
        let y = 60 + 28 * row as i32;
        draw_path(area, vec![(6, y), (50, y)], name)?;
        draw_marker(area, (28, y), look(name))?;
        area.draw(&Text::new(name.to_string(), (60, y - 9), style.clone()))?;
    }
    let key = (FONT, 15).into_font().color(&GREY_TEXT);
    let bottom = area.dim_in_pixel().1 as i32;
    for (row, text) in [
        "solid, filled: a store",
        "dashed, hollow: a naive peer",
        "dotted: a hardware limit",
        "stores side by side at each",
        "thread count",
    ]
    .into_iter()
    .enumerate()
    {
        area.draw(&Text::new(
            text,
            (6, bottom - 120 + 19 * row as i32),
            key.clone(),
        ))?;
    }
    Ok(())
}

/// A horizontal bar chart: one bar per subject in its colour, its name and kind on the
/// axis and its label on it.
fn draw_bars(path: &Path, caption: &str, chart: &BarChart) -> Result<(), Box<dyn Error>> {
    let bars = &chart.bars;
    let root = SVGBackend::new(path, SIZE_PX).into_drawing_area();
    let upper = canvas(&root, caption)?;
    let high = bars.iter().map(|bar| bar.value).fold(0.0, f64::max) * 1.9;
    // Row `count - 1 - i` (counted from the bottom) holds bar `i`, so the first bar is on
    // top; the names are drawn beside the rows (plotters' label formatter has no
    // categorical axis without an empty extra segment).
    let count = bars.len();
    let mut plot = ChartBuilder::on(&upper)
        .caption(chart.title, (FONT, 22))
        .margin(12)
        .x_label_area_size(48)
        .y_label_area_size(190)
        .build_cartesian_2d(0.0..high, 0.0..count as f64)?;
    plot.configure_mesh()
        .disable_y_mesh()
        .y_labels(0)
        .x_max_light_lines(0)
        .x_desc(chart.axis.as_str())
        .x_label_formatter(&|value| plain_tick(*value))
        .label_style((FONT, 16))
        .axis_desc_style((FONT, 16))
        .draw()?;
    let beside = |anchor: HPos, size: u32, color: &RGBColor| {
        (FONT, size)
            .into_font()
            .color(color)
            .pos(Pos::new(anchor, VPos::Center))
    };
    for (index, bar) in bars.iter().enumerate() {
        let row = (count - 1 - index) as f64;
        let mut rectangle = Rectangle::new(
            [(0.0, row), (bar.value, row + 1.0)],
            look(&bar.name).color.filled(),
        );
        rectangle.set_margin(5, 5, 0, 0);
        plot.draw_series(std::iter::once(rectangle))?;
        plot.draw_series([
            EmptyElement::at((0.0, row + 0.5))
                + Text::new(bar.name.clone(), (-8, -8), beside(HPos::Right, 17, &BLACK)),
            EmptyElement::at((0.0, row + 0.5))
                + Text::new(
                    kind_words(&bar.name).to_string(),
                    (-8, 11),
                    beside(HPos::Right, 14, &GREY_TEXT),
                ),
            EmptyElement::at((bar.value, row + 0.5))
                + Text::new(bar.label.clone(), (6, 0), beside(HPos::Left, 16, &BLACK)),
        ])?;
    }
    root.present()?;
    Ok(())
}
