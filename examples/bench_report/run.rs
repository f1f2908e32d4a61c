//! The run's line of the report: how it was measured, and the scaling guard.

use std::fmt::Write as _;

use serde_json::Value;

use crate::data::{Data, GUARD_MIN};
use crate::format::{rate, ratio, utc};

/// The trimmed standard output of `program args`.
fn command_output(program: &str, args: &[&str]) -> Option<String> {
    let output = std::process::Command::new(program)
        .args(args)
        .output()
        .ok()?;
    Some(String::from_utf8_lossy(&output.stdout).trim().to_string())
}

/// The command line of the run: `cargo bench` and the bench arguments it recorded.
fn command(run: &Value) -> String {
    let quick = run["quick"].as_bool().unwrap_or(false);
    let command = if quick {
        "STOCKLEDGER_BENCH_QUICK=1 cargo bench"
    } else {
        "cargo bench"
    };
    let args = run["args"]
        .as_array()
        .map(|args| {
            args.iter()
                .filter_map(Value::as_str)
                .filter(|arg| *arg != "--bench")
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_default();
    if args.is_empty() {
        format!("`{command}`")
    } else {
        format!("`{command}` (bench arguments: `{args}`)")
    }
}

/// The method line: command, mode, commit, machine, compiler, when, and the scaling
/// guard that says whether the multi-thread rows compare parallel runs.
pub fn method(data: &Data, note: Option<&str>, report: &mut String) {
    let rustc = command_output("rustc", &["-V"]).unwrap_or_else(|| "rustc ?".into());
    let run = &data.run;
    let mode = if run["quick"].as_bool().unwrap_or(false) {
        "quick mode: 0.1 s warm-up, 0.3 s measurement, 10 samples a benchmark"
    } else {
        "full mode: 1 s warm-up, 3 s measurement, 20 samples a benchmark"
    };
    let when = match (
        run["started_unix_s"].as_u64(),
        run["finished_unix_s"].as_u64(),
    ) {
        (Some(started), Some(finished)) => {
            let (from, to) = (utc(started), utc(finished));
            // `2026-12-06 17:04–17:16 UTC` when the run ends on the day it started.
            let span = match (from.split_once(' '), to.split_once(' ')) {
                (Some((day, _)), Some((end_day, time))) if day == end_day => {
                    format!("{}–{time}", from.trim_end_matches(" UTC"))
                }
                _ => format!("{from} – {to}"),
            };
            format!(
                ", {span} ({} s for the scenarios)",
                finished.saturating_sub(started)
            )
        }
        _ => String::new(),
    };
    let refusals = run["refusals"]
        .as_u64()
        .map_or("?".into(), |n| n.to_string());
    let one = data.ops("scaling_guard", "per_thread_counters", 1);
    let two = data.ops("scaling_guard", "per_thread_counters", 2);
    let verdict = if data.multi_thread_meaningful() {
        "the multi-thread rows compare parallel runs".to_string()
    } else {
        "**it fails: every multi-thread row (2 threads and more, marked †) compares threads \
         that did not run in parallel** (other processes held the cores); the single-thread \
         rows, the instruction counts and the memory figures stand"
            .to_string()
    };
    let _ = writeln!(
        report,
        "**Method:** {} ({mode}) of `{}` on {}, {rustc}{when}; the subjects of a group take \
         turns at each thread count; {refusals} requests refused where stock never runs out. \
         Scaling guard {} (per-thread counters: {} ops/s at 1 thread, {} at 2; needs ≥ \
         {GUARD_MIN}×): {verdict}. Written by `cargo run --release --example bench_report` \
         after the run.{}\n",
        command(run),
        data.commit(),
        data.machine(),
        ratio(data.guard()),
        one.map_or("–".into(), rate),
        two.map_or("–".into(), rate),
        note.map_or(String::new(), |note| format!(" {note}")),
    );
}

/// The load averages (1, 5, 15 min) at the start and end of the scenarios run.
pub fn load_average(data: &Data) -> String {
    format!(
        "at start {}, at end {}",
        data.run["load_average_at_start"].as_str().unwrap_or("?"),
        data.run["load_average_at_end"].as_str().unwrap_or("?")
    )
}
