//! Shared reporting: latency histograms, one JSON line and a human table.

use hdrhistogram::Histogram;
use serde_json::{Map, Value, json};

/// Latency histogram in microseconds (1 us .. 60 s, 3 significant digits).
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid histogram bounds")
}

/// One worker's operation count and latencies.
pub type Run = (u64, Histogram<u64>);

/// Several workers' runs as one: operations summed, latencies merged.
pub fn sum_runs(runs: impl IntoIterator<Item = Run>) -> anyhow::Result<Run> {
    let mut total = 0;
    let mut merged = histogram();
    for (ops, hist) in runs {
        total += ops;
        merged.add(&hist)?;
    }
    Ok((total, merged))
}

/// Joins worker threads and sums their runs ([`sum_runs`]).
pub fn join_runs(
    threads: Vec<std::thread::JoinHandle<anyhow::Result<Run>>>,
) -> anyhow::Result<Run> {
    let runs = threads
        .into_iter()
        .map(|t| {
            t.join()
                .map_err(|_| anyhow::anyhow!("a worker thread panicked"))?
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    sum_runs(runs)
}

/// One measured configuration.
#[derive(Debug, Clone)]
pub struct Row {
    pub name: String,
    pub ops: u64,
    pub secs: f64,
    pub p50_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    /// Extra figures (write amplification, ...), printed after the latencies.
    pub extra: Vec<(String, f64)>,
}

impl Row {
    pub fn new(name: &str, ops: u64, secs: f64, hist: &Histogram<u64>) -> Row {
        Row {
            name: name.to_owned(),
            ops,
            secs,
            p50_us: hist.value_at_quantile(0.50),
            p99_us: hist.value_at_quantile(0.99),
            p999_us: hist.value_at_quantile(0.999),
            extra: Vec::new(),
        }
    }

    pub fn iops(&self) -> f64 {
        self.ops as f64 / self.secs.max(1e-9)
    }

    fn to_json(&self) -> Value {
        let mut m = Map::new();
        m.insert("ops".into(), json!(self.ops));
        m.insert("iops".into(), json!(self.iops().round()));
        m.insert("p50_us".into(), json!(self.p50_us));
        m.insert("p99_us".into(), json!(self.p99_us));
        m.insert("p999_us".into(), json!(self.p999_us));
        for (k, v) in &self.extra {
            m.insert(k.clone(), json!((v * 1000.0).round() / 1000.0));
        }
        Value::Object(m)
    }
}

/// A target checked against the measured figures.
#[derive(Debug, Clone)]
pub struct Target {
    pub name: String,
    pub measured: f64,
    pub limit: String,
    pub met: bool,
}

/// Prints one JSON line (`bench`, rows, targets) and then a human table.
pub fn print(bench: &str, config: Value, rows: &[Row], targets: &[Target]) {
    let mut rows_json = Map::new();
    for r in rows {
        rows_json.insert(r.name.clone(), r.to_json());
    }
    let targets_json: Vec<Value> = targets
        .iter()
        .map(|t| json!({"target": t.name, "measured": (t.measured * 1000.0).round() / 1000.0, "limit": t.limit, "met": t.met}))
        .collect();
    let line =
        json!({"bench": bench, "config": config, "rows": rows_json, "targets": targets_json});
    println!("{line}");
    println!();
    println!(
        "{:<28} {:>10} {:>10} {:>9} {:>9} {:>9}  extra",
        "configuration", "ops", "IOPS", "p50 us", "p99 us", "p999 us"
    );
    for r in rows {
        let extra: Vec<String> = r.extra.iter().map(|(k, v)| format!("{k}={v:.3}")).collect();
        println!(
            "{:<28} {:>10} {:>10.0} {:>9} {:>9} {:>9}  {}",
            r.name,
            r.ops,
            r.iops(),
            r.p50_us,
            r.p99_us,
            r.p999_us,
            extra.join(" ")
        );
    }
    println!();
    for t in targets {
        let mark = if t.met { "met " } else { "MISS" };
        println!(
            "[{mark}] {:<52} measured {:>8.3}  target {}",
            t.name, t.measured, t.limit
        );
    }
}
