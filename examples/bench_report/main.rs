//! Turns the output of `cargo bench` into `BENCHMARKS.md` and its charts.
//!
//! Reads `target/criterion/**/new/{benchmark,estimates}.json` (criterion) and the side
//! files of the benches in `target/criterion/stockledger/` (run metadata, bytes per SKU,
//! allocations and callgrind instructions per operation, handoff latency percentiles),
//! then writes a summary (which store for which load), the method line with the scaling
//! guard, one chart (SVG, `benches/charts/`) and one table per scenario with operations
//! per second and the ratio to each naive peer and hardware limit measured in the same
//! run, and last the performance targets, each met or missed; with the results of
//! `cargo bench --features redis --bench redis`, a Redis table too.
//!
//! ```text
//! cargo bench                                   # or STOCKLEDGER_BENCH_QUICK=1 cargo bench
//! cargo run --release --example bench_report -- [--criterion-dir DIR] [--out FILE]
//!                                               [--charts-dir DIR] [--note TEXT]
//! ```
//!
//! Only results written by the latest `scenarios` run are used (older files in the
//! criterion directory are ignored), so every ratio and every chart compares numbers of
//! one run (the Redis groups: of the latest `redis` run). Modules: [`data`] (what is read),
//! [`summary`], [`run`] (method and scaling guard), [`charts`] and [`style`] (colours,
//! markers, ticks), [`tables`], [`redis_section`], [`targets`], [`format`].

mod charts;
mod data;
mod format;
mod redis_section;
mod run;
mod style;
mod summary;
mod tables;
mod targets;
#[cfg(test)]
mod tests;

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use data::Data;

/// What to read and where to write.
#[derive(Debug, Clone)]
struct Options {
    /// Criterion's output directory.
    criterion_dir: PathBuf,
    /// The report.
    out: PathBuf,
    /// Where the charts go; the report links them by this path.
    charts_dir: PathBuf,
    /// A note printed at the end of the method line.
    note: Option<String>,
}

impl Options {
    /// The options of the command line (see the module documentation).
    fn parse(mut args: impl Iterator<Item = String>) -> Self {
        let criterion_dir = std::env::var_os("CRITERION_HOME")
            .map(PathBuf::from)
            .unwrap_or_else(|| {
                std::env::var_os("CARGO_TARGET_DIR")
                    .map(PathBuf::from)
                    .unwrap_or_else(|| PathBuf::from("target"))
                    .join("criterion")
            });
        let mut options = Options {
            criterion_dir,
            out: PathBuf::from("BENCHMARKS.md"),
            charts_dir: PathBuf::from("benches/charts"),
            note: None,
        };
        while let Some(arg) = args.next() {
            let mut value = || args.next().unwrap_or_else(|| panic!("{arg} needs a value"));
            match arg.as_str() {
                "--criterion-dir" => options.criterion_dir = PathBuf::from(value()),
                "--out" => options.out = PathBuf::from(value()),
                "--charts-dir" => options.charts_dir = PathBuf::from(value()),
                "--note" => options.note = Some(value()),
                "--help" | "-h" => {
                    println!(
                        "usage: cargo run --release --example bench_report -- \
                         [--criterion-dir DIR] [--out FILE] [--charts-dir DIR] [--note TEXT]"
                    );
                    std::process::exit(0);
                }
                other => panic!("unknown argument {other}; see the doc comment of bench_report"),
            }
        }
        options
    }
}

/// The opening paragraph: what is compared, and how to read a ratio.
const INTRODUCTION: &str = "The four stores (`pessimistic`, `optimistic`, `monitor`, \
    `adaptive`) next to what a user would write instead, the naive peers `mutex_hashmap` and \
    `dashmap` (available units only, so a hold costs nothing) and `mutex_hashmap_holds` and \
    `dashmap_holds` (each open hold kept by id), and next to hardware limits such as one \
    atomic or `ideal_vec` (a `Vec` of cache-padded atomics), all from one run. `× X` divides \
    a row's operations per second by X's at the same thread count (above 1: faster than X); \
    *cost × X* divides time per operation.";

/// The whole report, linking the charts `drawn` under `link_dir`: the summary, the
/// method, the charts, the tables, and the targets last.
fn report(data: &Data, drawn: &[charts::Drawn], link_dir: &str, note: Option<&str>) -> String {
    let targets = targets::targets(data);
    let mut report = String::new();
    let _ = writeln!(report, "# Benchmarks\n\n{INTRODUCTION}\n");
    summary::section(data, &mut report);
    run::method(data, note, &mut report);
    tables::charts_section(drawn, link_dir, &mut report);
    let _ = writeln!(report, "## Tables\n");
    tables::scenarios_section(data, &mut report);
    redis_section::section(data, &mut report);
    let _ = writeln!(report, "### Instructions per operation (callgrind)\n");
    tables::instructions_table(data, &mut report);
    if !data.memory_subjects().is_empty() {
        let _ = writeln!(report, "### Memory\n");
        tables::memory_table(data, &mut report);
    }
    targets::targets_section(data, &targets, &mut report);
    report
}

/// Reads the run in `options.criterion_dir`, draws the charts and writes the report;
/// returns the charts drawn.
fn generate(options: &Options) -> Result<Vec<charts::Drawn>, Box<dyn std::error::Error>> {
    let data = Data::load(&options.criterion_dir);
    if data.results.is_empty() {
        return Err(format!(
            "no criterion results in {}: run `cargo bench` first",
            options.criterion_dir.display()
        )
        .into());
    }
    let drawn = charts::draw_all(&data, &options.charts_dir)?;
    let link_dir = link(&options.out, &options.charts_dir);
    let text = report(&data, &drawn, &link_dir, options.note.as_deref());
    std::fs::write(&options.out, text)?;
    println!(
        "wrote {} ({} results) and {} charts:",
        options.out.display(),
        data.results.len(),
        drawn.len(),
    );
    for chart in &drawn {
        println!("  {}", chart.path.display());
    }
    for target in targets::targets(&data) {
        println!(
            "{:<20} {}",
            strip_bold(&target.verdict(&data)),
            target.target
        );
    }
    println!("targets: {}", targets::summary(&targets::targets(&data)));
    Ok(drawn)
}

/// `charts_dir` as a link from the report `out`: relative when `out` sits in the working
/// directory (the usual `BENCHMARKS.md` -> `benches/charts`), else as given.
fn link(out: &Path, charts_dir: &Path) -> String {
    let beside = out
        .parent()
        .is_none_or(|parent| parent.as_os_str().is_empty());
    if beside && charts_dir.is_relative() {
        charts_dir.display().to_string()
    } else {
        std::path::absolute(charts_dir)
            .unwrap_or_else(|_| charts_dir.to_path_buf())
            .display()
            .to_string()
    }
}

fn strip_bold(text: &str) -> String {
    text.replace("**", "")
}

fn main() {
    let options = Options::parse(std::env::args().skip(1));
    if let Err(error) = generate(&options) {
        eprintln!("bench_report: {error}");
        std::process::exit(1);
    }
}
