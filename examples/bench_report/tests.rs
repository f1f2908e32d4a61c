//! The report and its charts, rendered from a recorded run (`tests/data/bench_report/`):
//! every SVG is well-formed XML and names every series the run holds for it, and the
//! report embeds each chart above its table. The checker's negative controls show it
//! catches a dropped series and a broken SVG.

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

#[test]
fn the_report_embeds_each_chart_above_its_table() {
    let dir = scratch("report");
    let options = crate::Options {
        criterion_dir: fixture(),
        out: dir.join("BENCHMARKS.md"),
        charts_dir: dir.join("charts"),
        note: None,
    };
    let drawn = crate::generate(&options).expect("generate the report");
    let report = std::fs::read_to_string(&options.out).expect("read the report");
    for chart in &drawn {
        let link = format!("]({}/{}.svg)", options.charts_dir.display(), chart.stem);
        let at = report
            .find(&link)
            .unwrap_or_else(|| panic!("{} is embedded", chart.stem));
        let table = report[at..].find("\n| ").expect("a table after the chart");
        let next_section = report[at..].find("\n## ").unwrap_or(report.len());
        assert!(table < next_section, "{}'s table follows it", chart.stem);
    }
    assert!(report.contains("## Targets (issue 10)"));
    assert!(report.contains(&format!(
        "**{}.**",
        targets::summary(&targets::targets(&Data::load(&fixture())))
    )));
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
