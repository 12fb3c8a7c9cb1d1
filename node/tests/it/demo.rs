//! `metro demo --exit --output json` as a user runs it: the built binary,
//! its default topology (3 data domains of 2 nodes, 2 ms between domains),
//! fewer writes to stay quick. The last stdout line must be one JSON object
//! showing no lost write, a measured failover and converged replicas; bad
//! flags must be refused with an explanation.

use std::process::{Command, Output};
use std::time::{Duration, Instant};

/// Generous bound for the whole tour on a busy two-core machine.
const DEMO_TIME_MAX: Duration = Duration::from_secs(100);

fn metro(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_metro"))
        .args(args)
        .output()
        .expect("run the metro binary")
}

fn number(report: &serde_json::Value, key: &str) -> u64 {
    report[key]
        .as_u64()
        .unwrap_or_else(|| panic!("{key} missing or not a number in {report}"))
}

#[test]
fn demo_loses_no_acknowledged_write() {
    let started = Instant::now();
    let out = metro(&["demo", "--exit", "--output", "json", "--writes", "1500"]);
    let elapsed = started.elapsed();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "metro demo failed:\n{stdout}\n{stderr}"
    );
    let last = stdout.lines().last().expect("a JSON line on stdout");
    let report: serde_json::Value = serde_json::from_str(last).expect("the last line is JSON");
    println!("{stderr}{last}\nin {:.1} s", elapsed.as_secs_f64());
    assert_eq!(number(&report, "lost_writes"), 0, "{report}");
    assert_eq!(number(&report, "foreign_blocks"), 0, "{report}");
    assert!(number(&report, "acked_writes") > 0, "{report}");
    assert!(number(&report, "failover_ms") > 0, "{report}");
    assert!(number(&report, "p99_write_us") >= number(&report, "p50_write_us"));
    assert_eq!(
        report["converged"],
        serde_json::Value::Bool(true),
        "{report}"
    );
    assert_eq!(number(&report, "nodes"), 6, "{report}");
    assert_eq!(number(&report, "domains"), 3, "{report}");
    assert_eq!(number(&report, "rtt_ms"), 2, "{report}");
    assert!(elapsed < DEMO_TIME_MAX, "the demo took {elapsed:?}");
}

#[test]
fn demo_refuses_topologies_that_cannot_lose_a_domain() {
    for (args, expected) in [
        (&["--domains", "1"][..], "cannot survive"),
        (&["--domains", "2"][..], "--witness"),
        (&["--writes", "0"][..], "--writes"),
    ] {
        let mut all = vec!["demo", "--exit"];
        all.extend_from_slice(args);
        let out = metro(&all);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} was accepted");
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
    }
}
