//! The run's sections of the report: the machine and run table, and the scaling guard.

use std::fmt::Write as _;

use serde_json::Value;

use crate::data::{first_line_with, Data, GUARD_MIN};
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

/// The machine and run section.
pub fn machine_section(data: &Data, note: Option<&str>, report: &mut String) {
    let memory = first_line_with("/proc/meminfo", "MemTotal")
        .and_then(|total| total.trim_end_matches(" kB").trim().parse::<f64>().ok())
        .map_or_else(|| "?".into(), |kib| format!("{:.1} GiB", kib / 1_048_576.0));
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map_or_else(|_| "?".into(), |text| text.trim().to_string());
    let rustc = command_output("rustc", &["-V"]).unwrap_or_else(|| "?".into());
    let run = &data.run;
    let quick = run["quick"].as_bool().unwrap_or(false);
    let started = run["started_unix_s"].as_u64();
    let finished = run["finished_unix_s"].as_u64();
    let _ = writeln!(report, "## Machine and run\n");
    let _ = writeln!(report, "| | |\n|---|---|");
    let _ = writeln!(report, "| CPU | {} |", data.machine());
    let _ = writeln!(report, "| memory | {memory} |");
    let _ = writeln!(report, "| OS | Linux {kernel} |");
    let _ = writeln!(
        report,
        "| compiler | {rustc}, `bench` profile (release, debug = 1) |"
    );
    let _ = writeln!(report, "| command | {} |", command(run));
    let mode = if quick {
        "quick (0.1 s warm-up, 0.3 s measurement, 10 samples a benchmark)"
    } else {
        "full (1 s warm-up, 3 s measurement, 20 samples a benchmark)"
    };
    let _ = writeln!(report, "| mode | {mode} |");
    if let (Some(started), Some(finished)) = (started, finished) {
        let _ = writeln!(
            report,
            "| run | {} – {} ({} s for the scenarios) |",
            utc(started),
            utc(finished),
            finished.saturating_sub(started)
        );
    }
    let _ = writeln!(
        report,
        "| load average (1, 5, 15 min) | {} |",
        load_average(data)
    );
    let _ = writeln!(report, "| source | {} |", data.commit());
    let _ = writeln!(
        report,
        "| refused requests | {} (optimistic `Conflict`s in runs where stock never runs out) |",
        run["refusals"]
            .as_u64()
            .map_or("?".into(), |n| n.to_string())
    );
    if let Some(note) = note {
        let _ = writeln!(report, "\n**Note:** {note}");
    }
    let _ = writeln!(report);
}

/// The load averages (1, 5, 15 min) at the start and end of the scenarios run.
pub fn load_average(data: &Data) -> String {
    format!(
        "at start {}, at end {}",
        data.run["load_average_at_start"].as_str().unwrap_or("?"),
        data.run["load_average_at_end"].as_str().unwrap_or("?")
    )
}

/// The scaling-guard section.
pub fn guard_section(data: &Data, report: &mut String) {
    let _ = writeln!(report, "## Scaling guard\n");
    let one = data.ops("scaling_guard", "per_thread_counters", 1);
    let two = data.ops("scaling_guard", "per_thread_counters", 2);
    let _ = writeln!(
        report,
        "Per-thread cache-padded counters share nothing, so 2 threads should give about 2× one \
         thread. 1 thread: {} ops/s; 2 threads: {} ops/s; ratio **{}** (needs ≥ {GUARD_MIN}×).\n",
        one.map_or("–".into(), rate),
        two.map_or("–".into(), rate),
        ratio(data.guard())
    );
    if data.multi_thread_meaningful() {
        let _ = writeln!(
            report,
            "The guard passes: multi-thread rows below compare real parallel runs.\n"
        );
    } else {
        let _ = writeln!(
            report,
            "**The guard fails: every multi-thread row (2 threads and more, marked †) is not \
             meaningful on this machine** (the threads did not run in parallel; other \
             processes held the cores). Their numbers are printed for completeness only; the \
             single-thread rows, the instruction counts and the memory figures stand.\n"
        );
    }
}
