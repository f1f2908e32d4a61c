//! The report and its charts, rendered from a recorded run (`tests/data/bench_report/`):
//! every SVG is well-formed XML and names every series the run holds for it, no axis
//! repeats a tick label, every series has its own colour (dark enough on white) and
//! marker, a bar's label is in the unit of its axis, and the report reads summary,
//! method, charts, tables, then targets. The checkers' negative controls show they catch a
//! dropped series, a broken SVG, the old S7 axis and a pale colour.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use crate::charts::{self, Drawn};
use crate::data::{base_name, Data};
use crate::targets;

/// Every chart the recorded run has figures for.
const STEMS: [&str; 9] = [
    "S1_flash_sale",
    "S1_flash_sale_sell_out",
    "S2_uniform",
    "S3_zipf",
    "S4_tpcc_new_order",
    "S6_wait_queue_handoff",
    "hot_reserve_commit",
    "hot_sell",
    "memory",
];

/// The recorded criterion directory.
fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/bench_report/criterion")
}

/// An empty scratch directory of this test process.
fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "stockledger-bench-report-{name}-{}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create a scratch directory");
    dir
}

/// The trimmed contents of every `<text>` of the SVG at `path`, or why it is not a
/// well-formed SVG document.
fn svg_texts(path: &Path) -> Result<Vec<String>, String> {
    let text = std::fs::read_to_string(path).map_err(|error| error.to_string())?;
    let document = roxmltree::Document::parse(&text).map_err(|error| error.to_string())?;
    let root = document.root_element();
    if root.tag_name().name() != "svg" {
        return Err(format!("the root element is <{}>", root.tag_name().name()));
    }
    Ok(document
        .descendants()
        .filter(|node| node.has_tag_name("text"))
        .map(|node| node.text().unwrap_or_default().trim().to_string())
        .collect())
}

/// The series names the run in `data` holds for the chart `stem`, read from the data (not
/// from the drawing code).
fn expected_series(data: &Data, stem: &str) -> BTreeSet<String> {
    let functions = |group: &str, keep: &dyn Fn(&str) -> bool| {
        data.functions(group)
            .into_iter()
            .filter(|function| keep(function))
            .map(|function| base_name(&function).to_string())
            .collect()
    };
    match stem {
        "memory" => data.memory_subjects().into_iter().collect(),
        "S6_wait_queue_handoff" => data
            .latency
            .as_object()
            .expect("handoff latencies")
            .keys()
            .cloned()
            .collect(),
        "S1_flash_sale" => functions("S1_flash_sale", &|f| !f.ends_with("_sell_out")),
        "S1_flash_sale_sell_out" => functions("S1_flash_sale", &|f| f.ends_with("_sell_out")),
        group => functions(group, &|_| true),
    }
}

/// The names of `expected` that no `<text>` of the SVG names exactly.
fn missing(texts: &[String], expected: &BTreeSet<String>) -> Vec<String> {
    expected
        .iter()
        .filter(|name| !texts.iter().any(|text| text == *name))
        .cloned()
        .collect()
}

/// Draws the charts of `data` into a scratch directory `name`.
fn draw(data: &Data, name: &str) -> Vec<Drawn> {
    charts::draw_all(data, &scratch(name)).expect("draw the charts")
}

#[test]
fn every_chart_is_well_formed_and_names_every_series() {
    let data = Data::load(&fixture());
    let drawn = draw(&data, "every-chart");
    let stems: BTreeSet<&str> = drawn.iter().map(|chart| chart.stem.as_str()).collect();
    assert_eq!(stems, STEMS.into_iter().collect(), "one chart per scenario");
    let caption = charts::caption(&data);
    assert!(caption.contains(data.commit()) && caption.contains("AMD EPYC"));
    for chart in &drawn {
        let texts = svg_texts(&chart.path)
            .unwrap_or_else(|error| panic!("{} is not a well-formed SVG: {error}", chart.stem));
        let expected = expected_series(&data, &chart.stem);
        assert!(!expected.is_empty(), "{} has series", chart.stem);
        assert_eq!(
            missing(&texts, &expected),
            Vec::<String>::new(),
            "{}",
            chart.stem
        );
        assert!(
            texts.contains(&caption),
            "{} names the commit and machine",
            chart.stem
        );
    }
    // The recorded S3 run holds the hold peers: the chart names them.
    assert!(expected_series(&data, "S3_zipf").contains("dashmap_holds"));
}

#[test]
fn the_checker_catches_a_dropped_series() {
    let data = Data::load(&fixture());
    let mut without = data.clone();
    without
        .results
        .retain(|(group, function, _), _| !(group == "S3_zipf" && function == "dashmap_holds"));
    let drawn = draw(&without, "dropped-series");
    let chart = drawn
        .iter()
        .find(|chart| chart.stem == "S3_zipf")
        .expect("S3");
    let texts = svg_texts(&chart.path).expect("well-formed");
    assert_eq!(
        missing(&texts, &expected_series(&data, "S3_zipf")),
        vec!["dashmap_holds".to_string()]
    );
}

#[test]
fn the_checker_catches_a_broken_svg() {
    let data = Data::load(&fixture());
    let drawn = draw(&data, "broken-svg");
    let chart = &drawn[0];
    let text = std::fs::read_to_string(&chart.path).expect("read the chart");
    std::fs::write(&chart.path, &text[..text.len() / 2]).expect("truncate the chart");
    assert!(
        svg_texts(&chart.path).is_err(),
        "a truncated SVG is rejected"
    );
}

/// Where `needle` starts in `report`, or a panic naming it.
fn at(report: &str, needle: &str) -> usize {
    report
        .find(needle)
        .unwrap_or_else(|| panic!("the report has {needle:?}"))
}

#[test]
fn the_report_reads_summary_method_charts_tables_then_targets() {
    let dir = scratch("report");
    let options = crate::Options {
        criterion_dir: fixture(),
        out: dir.join("BENCHMARKS.md"),
        charts_dir: dir.join("charts"),
        note: None,
    };
    let drawn = crate::generate(&options).expect("generate the report");
    let report = std::fs::read_to_string(&options.out).expect("read the report");
    let order = [
        "# Benchmarks\n",
        "\n## Which store for which load\n",
        "\n**Method:** ",
        "\n## Charts\n",
        "\n## Tables\n",
        "\n## Targets\n",
    ]
    .map(|needle| at(&report, needle));
    assert!(order.windows(2).all(|pair| pair[0] < pair[1]), "{order:?}");
    let summary = &report[order[1]..order[2]];
    assert_eq!(
        summary.matches("\n- **").count(),
        4,
        "four lines:\n{summary}"
    );
    let [.., charts, tables, targets] = order;
    for chart in &drawn {
        let link = format!("]({}/{}.svg)", options.charts_dir.display(), chart.stem);
        let link_at = at(&report, &link);
        assert!(
            charts < link_at && link_at < tables,
            "{} is a chart",
            chart.stem
        );
    }
    assert!(report[tables..targets].contains("\n| variant |"));
    assert!(
        !report[charts..tables].contains("\n| "),
        "no table among the charts"
    );
    assert!(
        !report[targets + 1..].contains("\n## ") && report[targets..].contains("\n| target |"),
        "the targets table comes last"
    );
    assert!(report.contains(&format!(
        "**{}.**",
        targets::summary(&targets::targets(&Data::load(&fixture())))
    )));
    assert!(!report.to_lowercase().contains("issue"), "no issue numbers");
    assert_eq!(report.matches(data_commit()).count(), 1, "the commit once");
    assert!(
        report[order[2]..order[3]].contains(" 2026-11-21 06:54–07:02 UTC (481 s"),
        "a run within one day is written with one date"
    );
}

/// The commit of the recorded run.
fn data_commit() -> &'static str {
    "`ac0102f`"
}

#[test]
fn the_summary_names_the_fastest_store_of_the_run() {
    let data = Data::load(&fixture());
    let line = |data: &Data| {
        let mut report = String::new();
        crate::summary::section(data, &mut report);
        report
            .lines()
            .find(|line| line.starts_with("- **One thread:**"))
            .expect("a one-thread line")
            .to_string()
    };
    let fastest = |data: &Data| {
        crate::data::STORES
            .into_iter()
            .filter_map(|store| Some((store, data.cost("hot_sell", store)?)))
            .min_by(|a, b| a.1.total_cmp(&b.1))
            .expect("stores")
            .0
    };
    let store = fastest(&data);
    let ns = data.cost("hot_sell", store).expect("a sell time");
    let text = line(&data);
    assert!(text.contains(&format!("`{store}`")), "{text}");
    assert!(text.contains(&crate::format::duration_ns(ns)), "{text}");
    // Make the monitor sell in 1 ns: the line follows the data.
    let mut faster = data.clone();
    faster
        .results
        .get_mut(&("hot_sell".into(), "monitor".into(), 1))
        .expect("the monitor's sell")
        .ns = 1.0;
    assert_eq!(fastest(&faster), "monitor");
    assert!(line(&faster).contains("`monitor` sells fastest (1.0 ns)"));
}

/// The texts of a chart that are tick labels (numbers, perhaps with an SI prefix), each
/// with how often it appears, those that appear more than once.
fn repeated(texts: &[String]) -> Vec<String> {
    let is_tick = |text: &str| {
        text.starts_with(|c: char| c.is_ascii_digit())
            && text
                .chars()
                .all(|c| c.is_ascii_digit() || " .kMG".contains(c))
    };
    let mut seen = BTreeSet::new();
    let mut repeated = BTreeSet::new();
    for text in texts.iter().filter(|text| is_tick(text)) {
        if !seen.insert(text.clone()) {
            repeated.insert(text.clone());
        }
    }
    repeated.into_iter().collect()
}

#[test]
fn no_chart_repeats_a_tick_label() {
    let data = Data::load(&fixture());
    for chart in draw(&data, "ticks") {
        let texts = svg_texts(&chart.path).expect("well-formed");
        let ticks = texts
            .iter()
            .filter(|t| t.ends_with(" M") || t.ends_with(" k"));
        if chart.stem.starts_with('S') && chart.stem != "S6_wait_queue_handoff" {
            assert!(
                ticks.count() >= 3,
                "{} has ticks on its value axis",
                chart.stem
            );
        }
        assert_eq!(repeated(&texts), Vec::<String>::new(), "{}", chart.stem);
    }
    // Every range from 1 k to 1 G, a factor 1.5 to 1000 wide, gets three distinct ticks.
    let mut low = 1e3;
    while low < 1e9 {
        for width in [1.5, 3.0, 10.0, 40.0, 1000.0] {
            let (from, to, ticks) = crate::style::log_ticks(low, low * width);
            assert!(from <= low && low * width <= to && ticks.len() >= 3);
            let labels: Vec<String> = ticks.iter().map(|t| crate::style::rate_tick(*t)).collect();
            assert_eq!(repeated(&labels), Vec::<String>::new(), "{low} × {width}");
        }
        low *= 1.7;
    }
}

#[test]
fn the_tick_checker_catches_the_old_s7_axis() {
    use plotters::coord::combinators::LogCoord;
    use plotters::coord::ranged1d::Ranged;
    use plotters::prelude::*;
    // S7's value axis as it was drawn: plotters' own ticks of a log axis from half the
    // least to twice the most requests/s, written with two decimals.
    let coord: LogCoord<f64> = (1.645e6..131.72e6).log_scale().into();
    let labels: Vec<String> = coord
        .key_points(11)
        .into_iter()
        .map(crate::format::rate)
        .collect();
    assert!(
        repeated(&labels).contains(&"100.00 M".to_string()),
        "{labels:?}"
    );
}

/// The WCAG contrast of `color` against white: 21 for black, 1 for white.
fn contrast_on_white(color: plotters::style::RGBColor) -> f64 {
    let linear = |channel: u8| {
        let c = f64::from(channel) / 255.0;
        if c <= 0.039_28 {
            c / 12.92
        } else {
            ((c + 0.055) / 1.055).powf(2.4)
        }
    };
    let luminance = 0.2126 * linear(color.0) + 0.7152 * linear(color.1) + 0.0722 * linear(color.2);
    1.05 / (luminance + 0.05)
}

#[test]
fn every_series_has_its_own_dark_colour_and_marker() {
    use plotters::style::RGBColor;
    assert!((contrast_on_white(RGBColor(0, 0, 0)) - 21.0).abs() < 1e-9);
    // The negative control: the pale yellow bar of the old S6 chart fails.
    assert!(contrast_on_white(RGBColor(242, 242, 214)) < 3.0);
    let data = Data::load(&fixture());
    for chart in draw(&data, "colours") {
        let svg = std::fs::read_to_string(&chart.path).expect("read the chart");
        let series: Vec<String> = expected_series(&data, &chart.stem).into_iter().collect();
        for (index, name) in series.iter().enumerate() {
            let look = crate::style::look(name);
            let color = look.color;
            assert!(
                contrast_on_white(color) >= 3.0,
                "{name}'s colour is too pale on white"
            );
            let hex = format!("#{:02X}{:02X}{:02X}", color.0, color.1, color.2);
            assert!(svg.contains(&hex), "{} draws {name} in {hex}", chart.stem);
            for other in &series[index + 1..] {
                let other_look = crate::style::look(other);
                let distance = [
                    (color.0, other_look.color.0),
                    (color.1, other_look.color.1),
                    (color.2, other_look.color.2),
                ]
                .iter()
                .map(|(a, b)| (f64::from(*a) - f64::from(*b)).powi(2))
                .sum::<f64>()
                .sqrt();
                assert!(
                    distance >= 80.0,
                    "{}: {name} and {other} look alike",
                    chart.stem
                );
                assert!(
                    (look.shape, look.filled) != (other_look.shape, other_look.filled),
                    "{}: {name} and {other} share a marker",
                    chart.stem
                );
            }
        }
    }
}

#[test]
fn a_bar_chart_writes_its_labels_in_the_unit_of_its_axis() {
    let mut data = Data::load(&fixture());
    // The condvar hands off in 800 ns, the monitor in 24 µs: one axis, in µs.
    data.latency["condvar_pingpong"]["p50_ns"] = serde_json::json!(800.0);
    let drawn = draw(&data, "units");
    let chart = drawn
        .iter()
        .find(|chart| chart.stem == "S6_wait_queue_handoff")
        .expect("S6");
    let texts = svg_texts(&chart.path).expect("well-formed");
    assert!(texts
        .iter()
        .any(|text| text.starts_with("p50 handoff latency, µs")));
    assert!(
        texts
            .iter()
            .any(|text| text.starts_with("p50 0.80 µs · p99 ")),
        "{texts:?}"
    );
    assert!(
        !texts.iter().any(|text| text.contains(" ns")),
        "no ns on a µs chart: {texts:?}"
    );
}

#[test]
fn a_group_that_starts_at_2_threads_compares_with_itself_at_2() {
    let mut data = Data::load(&fixture());
    for (threads, ns) in [(2, 100.0), (8, 125.0)] {
        data.results.insert(
            ("S7_hot_and_cold".into(), "pessimistic".into(), threads),
            crate::data::Measurement { ns, elements: 1 },
        );
    }
    let mut table = String::new();
    crate::tables::scenario_table(
        &data,
        "S7_hot_and_cold",
        |_| true,
        &[],
        "request",
        &mut table,
    );
    assert!(table.contains("| × itself at 2 threads |"), "{table}");
    assert!(
        table.contains("| pessimistic | 2 | 10.00 M | 100.0 ns | – |"),
        "{table}"
    );
    assert!(
        table.contains("| pessimistic | 8 | 8.00 M | 125.0 ns | 0.80× |"),
        "{table}"
    );
}

#[test]
fn the_targets_are_judged_from_the_run() {
    let data = Data::load(&fixture());
    let find = |targets: &[targets::Target], text: &str| {
        targets
            .iter()
            .find(|target| target.target.starts_with(text))
            .cloned()
            .unwrap_or_else(|| panic!("a target {text}"))
    };
    let s3 = "S3_zipf at 2 threads: pessimistic";
    let before = find(&targets::targets(&data), s3);
    let best = ["mutex_hashmap_holds", "dashmap_holds"]
        .map(|peer| {
            data.ops("S3_zipf", peer, 2)
                .expect("a hold peer at 2 threads")
        })
        .into_iter()
        .fold(0.0, f64::max);
    let own = data.ops("S3_zipf", "pessimistic", 2).expect("pessimistic");
    assert_eq!(before.met, Some(own >= 1.2 * best));
    // Make the store 10× faster than the better hold peer: the verdict follows the data.
    let mut faster = data.clone();
    let measurement = faster
        .results
        .get_mut(&("S3_zipf".into(), "pessimistic".into(), 2))
        .expect("pessimistic at 2 threads");
    measurement.ns = measurement.elements as f64 * 1e9 / (10.0 * best);
    assert_eq!(find(&targets::targets(&faster), s3).met, Some(true));
    // The recorded S2 run has no hold peers: no verdict.
    assert_eq!(
        find(&targets::targets(&data), "S2_uniform at 2 threads").met,
        None
    );
}

/// `data` with the Redis groups at 1, 8 and 32 threads: the bare script at `bare` ops/s,
/// `RedisStore::sell` at `sell_share` of it, the other subjects at fixed rates.
fn with_redis(data: &Data, bare: f64, sell_share: f64) -> Data {
    let mut data = data.clone();
    let subjects = [
        ("R1_redis_sell", "redis_store", bare * sell_share),
        ("R1_redis_sell", "bare_script", bare),
        ("R1_redis_sell", "get_set_oversells", bare * 0.6),
        ("R1_redis_sell", "pessimistic", bare * 100.0),
        ("R2_redis_reserve_commit", "redis_store", bare * 0.4),
        ("R2_redis_reserve_commit", "pessimistic", bare * 50.0),
    ];
    for threads in [1, 8, 32] {
        for (group, function, ops) in subjects {
            let elements = threads as u64;
            data.results.insert(
                (group.to_string(), function.to_string(), threads),
                crate::data::Measurement {
                    ns: elements as f64 * 1e9 / ops,
                    elements,
                },
            );
        }
    }
    data
}

/// The report of `data`, without charts.
fn report_of(data: &Data) -> String {
    crate::report(data, &[], "charts", None)
}

#[test]
fn the_redis_section_is_written_only_with_redis_results() {
    let data = Data::load(&fixture());
    assert!(!data.has_redis(), "the recorded run has no Redis groups");
    assert!(!report_of(&data).contains("## Redis"));
    let report = report_of(&with_redis(&data, 20_000.0, 0.8));
    let section = &report[report.find("## Redis").expect("a Redis section")..];
    let end = section.find("\n## ").unwrap_or(section.len());
    let section = &section[..end];
    let rows: Vec<&str> = section
        .lines()
        .filter(|line| {
            ["| 1 |", "| 8 |", "| 32 |"]
                .iter()
                .any(|row| line.starts_with(row))
        })
        .collect();
    assert_eq!(rows.len(), 3, "one row per thread count:\n{section}");
    for row in rows {
        assert!(row.contains("| 20.0 k |"), "the bare script's ops/s: {row}");
        assert!(row.contains("| 16.0 k |"), "RedisStore sell's ops/s: {row}");
        assert!(row.ends_with("| 0.80× | met |"), "{row}");
    }
    assert!(section.contains("met at 3 of 3 thread counts"));
}

#[test]
fn the_redis_target_follows_the_data() {
    let data = Data::load(&fixture());
    let met = with_redis(&data, 10_000.0, 0.75);
    let missed = with_redis(&data, 10_000.0, 0.5);
    for threads in [1, 8, 32] {
        let (value, verdict) = crate::redis_section::sell_over_bare(&met, threads);
        assert!((value.expect("a ratio") - 0.75).abs() < 1e-9);
        assert_eq!(verdict, Some(true));
        assert_eq!(
            crate::redis_section::sell_over_bare(&missed, threads).1,
            Some(false),
            "the negative control: half the bare script misses the target"
        );
    }
    let report = report_of(&missed);
    assert!(report.contains("| 0.50× | **missed** |"));
    assert!(report.contains("met at 0 of 3 thread counts"));
    assert_eq!(crate::redis_section::sell_over_bare(&data, 8), (None, None));
}

/// Writes one criterion result `group/function/threads` of `ns` per iteration into the
/// criterion directory `dir`.
fn write_result(dir: &Path, group: &str, function: &str, threads: usize, ns: f64) {
    let new = dir
        .join(group)
        .join(function)
        .join(threads.to_string())
        .join("new");
    std::fs::create_dir_all(&new).expect("create a result directory");
    let benchmark = serde_json::json!({
        "group_id": group,
        "function_id": function,
        "value_str": threads.to_string(),
        "throughput": { "Elements": threads },
    });
    let estimates = serde_json::json!({ "mean": { "point_estimate": ns } });
    std::fs::write(new.join("benchmark.json"), benchmark.to_string()).expect("write");
    std::fs::write(new.join("estimates.json"), estimates.to_string()).expect("write");
}

/// Writes `stockledger/<name>.json` with a run started `started_unix_s`.
fn write_run(dir: &Path, name: &str, started_unix_s: u64) {
    let side = dir.join("stockledger");
    std::fs::create_dir_all(&side).expect("create the side-file directory");
    let run = serde_json::json!({ "started_unix_s": started_unix_s });
    std::fs::write(side.join(format!("{name}.json")), run.to_string()).expect("write");
}

#[test]
fn the_redis_groups_are_judged_by_the_redis_run() {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970")
        .as_secs();
    let dir = scratch("redis-run");
    write_result(&dir, "R1_redis_sell", "redis_store", 8, 1e6);
    write_result(&dir, "S3_zipf", "pessimistic", 2, 1e3);
    // The scenarios ran after these results were written (stale for them); the Redis
    // bench ran before (fresh for it).
    write_run(&dir, "scenarios_run", now + 3_600);
    write_run(&dir, "redis_run", now - 3_600);
    let data = Data::load(&dir);
    assert!(data.get("R1_redis_sell", "redis_store", 8).is_some());
    assert!(data.get("S3_zipf", "pessimistic", 2).is_none());
    assert!(data.has_redis());
    // The negative control: a Redis run that started later makes the result stale.
    write_run(&dir, "redis_run", now + 3_600);
    let data = Data::load(&dir);
    assert!(data.get("R1_redis_sell", "redis_store", 8).is_none());
    assert!(!data.has_redis());
}

/// `data` with a single-thread `reserve` + `commit` of the pessimistic store taking
/// `plain_ns` without a TTL and `ttl_ns` with one.
fn with_ttl(data: &Data, plain_ns: f64, ttl_ns: f64) -> Data {
    let mut data = data.clone();
    for (group, ns) in [
        ("hot_reserve_commit", plain_ns),
        ("hot_reserve_commit_ttl", ttl_ns),
    ] {
        data.results.insert(
            (group.to_string(), "pessimistic".to_string(), 1),
            crate::data::Measurement { ns, elements: 1 },
        );
    }
    data
}

/// The TTL target is met at 1.2× and missed at 1.5× (the checker can fail), and has no
/// verdict without the TTL group.
#[test]
fn the_ttl_target_follows_the_data() {
    let verdict = |data: &Data| {
        targets::targets(data)
            .into_iter()
            .find(|target| target.target.contains("pessimistic with a TTL"))
            .expect("a TTL target")
            .met
    };
    let data = Data::load(&fixture());
    assert_eq!(verdict(&with_ttl(&data, 100.0, 120.0)), Some(true));
    assert_eq!(verdict(&with_ttl(&data, 100.0, 150.0)), Some(false));
    let mut without = with_ttl(&data, 100.0, 120.0);
    without
        .results
        .retain(|(group, _, _), _| group != "hot_reserve_commit_ttl");
    assert_eq!(verdict(&without), None);
}

/// The S1 repeat table is written only when the run repeated S1, with each store over its
/// peer in both places.
#[test]
fn the_s1_repeat_table_follows_the_data() {
    let data = Data::load(&fixture());
    assert!(!report_of(&data).contains("S1_repeat"));
    let mut repeated = data.clone();
    for (function, ops) in [("pessimistic", 5e6), ("mutex_hashmap", 1e7)] {
        repeated.results.insert(
            ("S1_repeat".to_string(), function.to_string(), 2),
            crate::data::Measurement {
                ns: 2.0 * 1e9 / ops,
                elements: 2,
            },
        );
    }
    let report = report_of(&repeated);
    let row = report
        .lines()
        .find(|line| line.starts_with("| pessimistic |") && line.ends_with("`mutex_hashmap` |"))
        .unwrap_or_else(|| panic!("a repeat row in\n{report}"));
    assert!(row.contains("| 5.00 M | 0.50× `mutex_hashmap` |"), "{row}");
}
