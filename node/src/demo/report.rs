//! [`Report`]: the demo's result, printed as a short table or as one JSON
//! line (the fields are the JSON keys; units are in the names).

use metro_fabric::env::NodeId;
use serde::Serialize;

use super::Output;

/// What the tour measured. `ok()` is the demo's verdict.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Nodes in the cluster (all domains).
    pub nodes: usize,
    /// Domains, the witness domain included.
    pub domains: usize,
    pub data_domains: usize,
    pub witness: bool,
    pub rtt_ms: u64,
    pub volume_mib: u64,
    /// Voters of the demo volume.
    pub replicas: Vec<NodeId>,
    /// Writes tried.
    pub writes: u64,
    pub acked_writes: u64,
    pub unacked_writes: u64,
    /// Acknowledged writes that did not read back exactly (must be 0).
    pub lost_writes: u64,
    /// Unacknowledged blocks holding neither their pattern nor zeroes.
    pub foreign_blocks: u64,
    /// Kill of the leader's domain → first acknowledgement of a write
    /// issued after it.
    pub failover_ms: Option<u64>,
    /// Acknowledged writes in flight across the failover (their stall is
    /// `failover_ms`; the latency figures leave them out).
    pub failover_writes: u64,
    /// Write latency outside the failover window.
    pub p50_write_us: u64,
    pub p99_write_us: u64,
    pub max_write_us: u64,
    pub writes_per_sec: f64,
    pub killed_domain: String,
    pub killed_nodes: Vec<NodeId>,
    pub old_leader: NodeId,
    pub new_leader: Option<NodeId>,
    /// Every replica at the same applied index with the same digest after
    /// the killed domain restarted.
    pub converged: bool,
    /// Restart of the killed domain → replicas converged.
    pub catch_up_ms: Option<u64>,
    pub applied_index: Option<u64>,
    pub digest: Option<String>,
    /// Where the writes went during the tour.
    pub nbd_uri: String,
}

impl Report {
    /// Nothing lost, nothing foreign, replicas converged.
    pub fn ok(&self) -> bool {
        self.lost_writes == 0 && self.foreign_blocks == 0 && self.converged
    }

    /// Prints the report to stdout in `output`'s format.
    pub fn print(&self, output: Output) {
        match output {
            Output::Json => match serde_json::to_string(self) {
                Ok(line) => println!("{line}"),
                Err(err) => println!("{{\"error\":\"cannot encode the report: {err}\"}}"),
            },
            Output::Human => self.print_human(),
        }
    }

    fn print_human(&self) {
        let ms = |v: Option<u64>| v.map_or("-".to_owned(), |v| format!("{v} ms"));
        println!();
        println!("summary");
        println!(
            "  cluster          {} nodes in {} domains ({} data{}), rtt {} ms between domains",
            self.nodes,
            self.domains,
            self.data_domains,
            if self.witness { " + witness" } else { "" },
            self.rtt_ms
        );
        println!(
            "  writes           {} acknowledged, {} not ({:.0} writes/s)",
            self.acked_writes, self.unacked_writes, self.writes_per_sec
        );
        println!(
            "  write latency    p50 {} us, p99 {} us, max {} us",
            self.p50_write_us, self.p99_write_us, self.max_write_us
        );
        println!(
            "  domain loss      {} (nodes {:?}, leader {}) -> new leader {}",
            self.killed_domain,
            self.killed_nodes,
            self.old_leader,
            self.new_leader.map_or("-".into(), |l| l.to_string())
        );
        println!("  failover         {}", ms(self.failover_ms));
        println!(
            "  lost writes      {}{}",
            self.lost_writes,
            if self.lost_writes == 0 {
                " (RPO 0)"
            } else {
                "  <-- FAILED"
            }
        );
        println!(
            "  catch-up         {} ({})",
            ms(self.catch_up_ms),
            if self.converged {
                "all replicas identical"
            } else {
                "replicas did NOT converge"
            }
        );
        println!(
            "  result           {}",
            if self.ok() { "PASS" } else { "FAIL" }
        );
    }
}
