//! `metro-bench replicate`: replicated 4 KiB writes over real QUIC, one run.
//!
//! For each of 1 and 3 replicas and each injected one-way delay (0 and 2 ms
//! by default), starts that many nodes in this process exactly as `metro node
//! run` does (kvstore on the file system with its writer thread,
//! QUIC with mutual TLS on loopback, the volume host), creates one volume
//! and drives random 4 KiB writes into its leader at queue depth 1 and 32.
//! In the same run it measures the baselines the targets are stated against:
//! a kvstore-only durable 4 KiB write (queue depth 1) and the QUIC round trip
//! between two nodes, each once before and once after the replicated runs
//! (the latency target takes the lower p50 of each pair: the host's fsync
//! and scheduling latency drift while other work runs on it).
//!
//! One more baseline, for information only (the targets do not use it):
//! `kvstore_only_qd1_x3`, three kvstore stores on the same file system each
//! written at queue depth 1 by its own thread at once — the durable write
//! latency each replica of `r3` sees, since all three share the one disk.
//! The `r3_d0_qd1` row then carries `p50_vs_shared_disk_bound`: its p50
//! over (that p50 + the QUIC round trip p50). Likewise `r1x3_d0_qd32`:
//! three nodes each the only replica of its own volume, all written at
//! depth 32 at once (the hardware work of `r3_d0_qd32` without the
//! replication), reported per volume; the `r3_d0_qd32` row then carries
//! `iops_vs_shared_hardware`, its IOPS over that per-volume figure.

use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use hdrhistogram::Histogram;
use metro_fabric::env::{Lane, NodeId, Transport};
use metro_fabric::volume::{BLOCK_BYTES, BlockData, VolumeId};
use metro_kvstore::{FileDisk, Namespace, Options, SplitMix64, Store, WriteBatch};
use metro_node::daemon::config::NodeConfig;
use metro_node::daemon::control_plane::ControlConfig;
use metro_node::daemon::{self, Node};
use metro_node::pki::ClusterCa;
use serde_json::json;

use crate::report::{self, Row, Target, histogram};

const VOLUME: VolumeId = VolumeId(1);

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Directory for the nodes' data (created, then removed).
    #[arg(long, default_value = "/var/tmp/metro-bench-replicate")]
    dir: PathBuf,
    /// Seconds per measured configuration.
    #[arg(long, default_value_t = 3.0)]
    seconds: f64,
    /// Volume size (and working set) in MiB.
    #[arg(long, default_value_t = 64)]
    volume_mib: u64,
    /// Injected one-way delays between nodes, in ms.
    #[arg(long, value_delimiter = ',', default_value = "0,2")]
    delays_ms: Vec<u64>,
    /// Replica counts to measure.
    #[arg(long, value_delimiter = ',', default_value = "1,3")]
    replicas: Vec<usize>,
    /// Queue depths to measure.
    #[arg(long, value_delimiter = ',', default_value = "1,32")]
    depths: Vec<usize>,
    /// Directories for the nodes' stores, node i on the i-th (round robin),
    /// e.g. one per disk to measure replicas that do not share a disk as
    /// they do not in a deployment. Default: all under --dir.
    #[arg(long, value_delimiter = ',')]
    node_dirs: Vec<PathBuf>,
}

/// Where node `id`'s store for the run in `dir` lives: under `dir`, or
/// under the `placement` directory it falls on.
fn node_data_dir(dir: &Path, placement: &[PathBuf], id: NodeId) -> PathBuf {
    let name = format!("node-{id}");
    if placement.is_empty() {
        return dir.join(name);
    }
    let run = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let slot = (id as usize - 1) % placement.len();
    placement[slot].join(format!("{NODE_DIR_PREFIX}{run}-{name}"))
}

/// Prefix of the store directories made under `--node-dirs` (removed at
/// the end of a run).
const NODE_DIR_PREFIX: &str = "metro-bench-";

pub fn run(args: &Args) -> anyhow::Result<()> {
    anyhow::ensure!(args.seconds > 0.0, "--seconds must be positive");
    for dir in &args.node_dirs {
        anyhow::ensure!(
            dir.is_dir(),
            "--node-dirs: {} is not a directory",
            dir.display()
        );
        remove_node_dirs(dir);
    }
    let _ = std::fs::remove_dir_all(&args.dir);
    std::fs::create_dir_all(&args.dir)
        .with_context(|| format!("creating {}", args.dir.display()))?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    let secs = Duration::from_secs_f64(args.seconds);
    let blocks = args.volume_mib * (1 << 20) / BLOCK_BYTES as u64;
    let mut rows = vec![
        disk_bandwidth(&args.dir.join("disk"))?,
        kvstore_baseline(&args.dir.join("kv-only"), blocks, secs)?,
    ];
    if args.replicas.contains(&3) {
        rows.push(kvstore_shared_disk(
            &args.dir.join("kv-x3"),
            &args.node_dirs,
            3,
            blocks,
            secs,
        )?);
    }
    let max_replicas = args.replicas.iter().copied().max().unwrap_or(1).max(2);
    let certs = args.dir.join("certs");
    make_certs(&certs, max_replicas)?;
    let setup = Setup {
        placement: &args.node_dirs,
        certs: &certs,
        blocks,
        secs,
    };
    rows.push(runtime.block_on(quic_rtt(&args.dir, &certs, 0))?);
    for &delay in args.delays_ms.iter().filter(|d| **d > 0) {
        rows.push(runtime.block_on(quic_rtt(&args.dir, &certs, delay))?);
    }
    for &delay in &args.delays_ms {
        for &replicas in &args.replicas {
            let dir = args.dir.join(format!("r{replicas}-d{delay}"));
            let measured =
                runtime.block_on(replicated(&dir, setup, replicas, delay, &args.depths))?;
            rows.extend(measured);
        }
    }
    if args.replicas.contains(&3) && args.depths.contains(&32) && args.delays_ms.contains(&0) {
        let dir = args.dir.join("r1x3");
        rows.push(runtime.block_on(shared_hardware(&dir, setup))?);
    }
    // The baselines again: the machine's fsync and scheduling latency drift
    // (other work on the host), and the latency target uses the lower of
    // each pair, which only makes it harder to meet.
    let mut after = kvstore_baseline(&args.dir.join("kv-only-after"), blocks, secs)?;
    after.name = "kvstore_only_qd1_after".into();
    rows.push(after);
    let mut after = runtime.block_on(quic_rtt(&args.dir.join("after"), &certs, 0))?;
    after.name = "quic_rtt_after".into();
    rows.push(after);
    shared_disk_column(&mut rows);
    shared_hardware_column(&mut rows);
    let targets = targets(&rows);
    let config = json!({"seconds": args.seconds, "volume_mib": args.volume_mib,
        "delays_ms": args.delays_ms, "replicas": args.replicas, "depths": args.depths});
    report::print("replicate", config, &rows, &targets);
    drop(runtime);
    let _ = std::fs::remove_dir_all(&args.dir);
    for dir in &args.node_dirs {
        remove_node_dirs(dir);
    }
    Ok(())
}

/// Removes the store directories this bench made under `dir`.
fn remove_node_dirs(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        if entry
            .file_name()
            .to_string_lossy()
            .starts_with(NODE_DIR_PREFIX)
        {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

fn targets(rows: &[Row]) -> Vec<Target> {
    let find = |name: &str| rows.iter().find(|r| r.name == name);
    let mut targets = Vec::new();
    if let (Some(one), Some(three)) = (find("r1_d0_qd32"), find("r3_d0_qd32")) {
        let ratio = three.iops() / one.iops();
        targets.push(Target {
            name: "3 replicas / 1 replica IOPS at depth 32 (0 ms)".into(),
            measured: ratio,
            limit: ">= 0.5".into(),
            met: ratio >= 0.5,
        });
    }
    if let (Some(r3), Some(kv), Some(rtt)) = (
        find("r3_d0_qd1"),
        lower_p50(rows, "kvstore_only_qd1", "kvstore_only_qd1_after"),
        lower_p50(rows, "quic_rtt", "quic_rtt_after"),
    ) {
        let bound = kv as f64 + rtt as f64;
        let ratio = r3.p50_us as f64 / bound;
        targets.push(Target {
            name: "3 replicas depth-1 p50 / (kvstore p50 + QUIC RTT p50)".into(),
            measured: ratio,
            limit: "< 1.5".into(),
            met: ratio < 1.5,
        });
    }
    targets
}

/// The lower p50 of rows `a` and `b` (a baseline measured before and after
/// the replicated runs), or the one that is there.
fn lower_p50(rows: &[Row], a: &str, b: &str) -> Option<u64> {
    let p50 = |name: &str| rows.iter().find(|r| r.name == name).map(|r| r.p50_us);
    match (p50(a), p50(b)) {
        (Some(x), Some(y)) => Some(x.min(y)),
        (x, y) => x.or(y),
    }
}

/// Adds `p50_vs_shared_disk_bound` to the 3-replica depth-1 row: its p50
/// over (three concurrent kvstore writers' p50 + the lower QUIC RTT p50).
fn shared_disk_column(rows: &mut [Row]) {
    let shared = rows
        .iter()
        .find(|r| r.name == "kvstore_only_qd1_x3")
        .map(|r| r.p50_us);
    let (Some(shared), Some(rtt)) = (shared, lower_p50(rows, "quic_rtt", "quic_rtt_after")) else {
        return;
    };
    if let Some(r3) = rows.iter_mut().find(|r| r.name == "r3_d0_qd1") {
        let ratio = r3.p50_us as f64 / (shared + rtt) as f64;
        r3.extra.push(("p50_vs_shared_disk_bound".into(), ratio));
    }
}

/// Adds `iops_vs_shared_hardware` to the 3-replica depth-32 row: its IOPS
/// over the per-volume IOPS of `r1x3_d0_qd32` (three unreplicated volumes
/// sharing the machine as the three replicas do).
fn shared_hardware_column(rows: &mut [Row]) {
    let Some(shared) = rows
        .iter()
        .find(|r| r.name == "r1x3_d0_qd32")
        .map(Row::iops)
    else {
        return;
    };
    if let Some(r3) = rows.iter_mut().find(|r| r.name == "r3_d0_qd32") {
        let ratio = r3.iops() / shared;
        r3.extra.push(("iops_vs_shared_hardware".into(), ratio));
    }
}

fn make_certs(dir: &Path, nodes: usize) -> anyhow::Result<()> {
    let ca = ClusterCa::generate("bench").context("generating the bench CA")?;
    ca.save(dir).context("saving the CA")?;
    for id in 1..=nodes as u64 {
        ca.issue_node(id, &[])?.save(dir)?;
    }
    Ok(())
}

fn free_addr() -> anyhow::Result<SocketAddr> {
    // Bind UDP (QUIC) to learn a free port; TCP bind too so both are free.
    let udp = UdpSocket::bind("127.0.0.1:0")?;
    let addr = udp.local_addr()?;
    drop(TcpListener::bind(addr).ok());
    Ok(addr)
}

async fn start_nodes(
    dir: &Path,
    placement: &[PathBuf],
    certs: &Path,
    count: usize,
    delay_ms: u64,
) -> anyhow::Result<Vec<Node>> {
    let ids: Vec<NodeId> = (1..=count as u64).collect();
    let addrs: BTreeMap<NodeId, SocketAddr> = ids
        .iter()
        .map(|&id| Ok((id, free_addr()?)))
        .collect::<anyhow::Result<_>>()?;
    let mut nodes = Vec::new();
    for &id in &ids {
        let peers: BTreeMap<NodeId, SocketAddr> = addrs
            .iter()
            .filter(|(p, _)| **p != id)
            .map(|(p, a)| (*p, *a))
            .collect();
        let delays = peers
            .keys()
            .map(|p| (*p, Duration::from_millis(delay_ms)))
            .filter(|_| delay_ms > 0)
            .collect();
        let config = NodeConfig {
            node_id: id,
            data_dir: node_data_dir(dir, placement, id),
            certs_dir: certs.to_path_buf(),
            listen: addrs[&id],
            peers,
            delays,
            log_level: tracing::Level::WARN,
            control: ControlConfig::embedded("test", &format!("domain-{id}")),
        };
        nodes.push(
            daemon::start(&config)
                .await
                .with_context(|| format!("starting node {id}"))?,
        );
    }
    Ok(nodes)
}

/// What every replicated run shares: where the nodes' stores go, the
/// certificates, the volume size in blocks and the seconds per
/// configuration.
#[derive(Clone, Copy, Debug)]
struct Setup<'a> {
    placement: &'a [PathBuf],
    certs: &'a Path,
    blocks: u64,
    secs: Duration,
}

async fn replicated(
    dir: &Path,
    setup: Setup<'_>,
    replicas: usize,
    delay_ms: u64,
    depths: &[usize],
) -> anyhow::Result<Vec<Row>> {
    let Setup {
        placement,
        certs,
        blocks,
        secs,
    } = setup;
    eprintln!("{replicas} replica(s), {delay_ms} ms one-way delay...");
    let nodes = start_nodes(dir, placement, certs, replicas, delay_ms).await?;
    let members: Vec<NodeId> = (1..=replicas as u64).collect();
    nodes[0]
        .host
        .create_volume(VOLUME, blocks, &members)
        .await?;
    let leader = wait_for_leader(&nodes, VOLUME).await?;
    let host = Arc::clone(&nodes[leader].host);
    // Warm up: connections, first elections, allocation.
    drive(&host, VOLUME, 8, blocks, Duration::from_millis(300)).await?;
    let mut rows = Vec::new();
    for &depth in depths {
        let before = NodeCounts::of(&nodes);
        let cpu_before = process_cpu_ms();
        let (ops, elapsed, hist) = drive(&host, VOLUME, depth, blocks, secs).await?;
        let cpu_after = process_cpu_ms();
        let counted = NodeCounts::of(&nodes).since(before);
        let mut row = Row::new(
            &format!("r{replicas}_d{delay_ms}_qd{depth}"),
            ops,
            elapsed,
            &hist,
        );
        counted.store_figures(&mut row, ops * nodes.len() as u64, elapsed);
        // Transport requests served by all nodes per acknowledged write
        // (AppendEntries with entries or only a commit index, heartbeats).
        row.extra.push((
            "rpcs_per_write".into(),
            counted.rpcs as f64 / ops.max(1) as f64,
        ));
        // CPU time of the whole process (every node, QUIC, kvstore writers)
        // per acknowledged write.
        if let (Some(a), Some(b)) = (cpu_before, cpu_after) {
            let us = (b.saturating_sub(a)) as f64 * 1000.0 / ops.max(1) as f64;
            row.extra.push(("cpu_us_per_write".into(), us));
        }
        rows.push(row);
    }
    for node in &nodes {
        node.stop().await;
    }
    Ok(rows)
}

/// User + system CPU time of this process so far, in ms (Linux
/// `/proc/self/stat`, clock ticks of 10 ms), if readable.
fn process_cpu_ms() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the parenthesised command name: state is field 3, utime
    // and stime are fields 14 and 15.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) * 10)
}

/// The nodes' counters, summed over all of them.
#[derive(Clone, Copy, Debug, Default)]
struct NodeCounts {
    /// kvstore log fdatasyncs.
    syncs: u64,
    /// kvstore batches made durable.
    batches: u64,
    /// Transport requests served.
    rpcs: u64,
    /// kvstore bytes written (log, compaction, checkpoints).
    bytes: u64,
}

impl NodeCounts {
    /// The counters of `nodes` now.
    fn of(nodes: &[Node]) -> Self {
        nodes.iter().fold(Self::default(), |sum, node| {
            let stats = node.host.storage().store().stats();
            Self {
                syncs: sum.syncs + stats.log_syncs,
                batches: sum.batches + stats.batches,
                rpcs: sum.rpcs + node.transport.stats().requests_served,
                bytes: sum.bytes + stats.bytes_written,
            }
        })
    }

    /// What was counted since `before`.
    fn since(self, before: Self) -> Self {
        Self {
            syncs: self.syncs - before.syncs,
            batches: self.batches - before.batches,
            rpcs: self.rpcs - before.rpcs,
            bytes: self.bytes - before.bytes,
        }
    }

    /// Adds the kvstore figures of these counts to `row`, per write a node
    /// stored (`node_writes`: acknowledged writes times the replicas that
    /// stored each): log fdatasyncs, durable batches, KiB written (the disk
    /// amplification of a 4 KiB write), and all nodes' bytes written per
    /// second over `elapsed`.
    fn store_figures(&self, row: &mut Row, node_writes: u64, elapsed: f64) {
        let per_write = |d: u64| d as f64 / node_writes.max(1) as f64;
        row.extra
            .push(("fsyncs_per_write".into(), per_write(self.syncs)));
        row.extra
            .push(("batches_per_write".into(), per_write(self.batches)));
        row.extra
            .push(("disk_kib_per_write".into(), per_write(self.bytes) / 1024.0));
        row.extra
            .push(("disk_mb_per_s".into(), self.bytes as f64 / elapsed / 1e6));
    }
}

/// `r1x3_d0_qd32`: three nodes, each the only replica of its own volume,
/// all three volumes written at depth 32 at once. The same three nodes'
/// worth of kvstore, CPU and disk work per acknowledged write as
/// `r3_d0_qd32`, minus the replication: its per-volume IOPS is what one
/// unreplicated volume gets when it shares this machine the way each
/// replica of `r3` does.
async fn shared_hardware(dir: &Path, setup: Setup<'_>) -> anyhow::Result<Row> {
    let Setup {
        placement,
        certs,
        blocks,
        secs,
    } = setup;
    const DEPTH: usize = 32;
    eprintln!("3 single-replica volumes on 3 nodes at once, 0 ms one-way delay...");
    let nodes = start_nodes(dir, placement, certs, 3, 0).await?;
    let volumes: Vec<VolumeId> = (1..=3).map(VolumeId).collect();
    for (node, volume) in nodes.iter().zip(&volumes) {
        node.host
            .create_volume(*volume, blocks, &[node.host.node()])
            .await?;
    }
    let mut hosts = Vec::new();
    for volume in &volumes {
        let leader = wait_for_leader(&nodes, *volume).await?;
        let host = Arc::clone(&nodes[leader].host);
        drive(&host, *volume, 8, blocks, Duration::from_millis(300)).await?;
        hosts.push((host, *volume));
    }
    let before = NodeCounts::of(&nodes);
    let runs: Vec<_> = hosts
        .into_iter()
        .map(|(host, volume)| {
            tokio::spawn(async move { drive(&host, volume, DEPTH, blocks, secs).await })
        })
        .collect();
    let (mut done, mut elapsed) = (Vec::with_capacity(runs.len()), 0.0f64);
    for run in runs {
        let (n, e, hist) = run.await??;
        elapsed = elapsed.max(e);
        done.push((n, hist));
    }
    let (ops, merged) = report::sum_runs(done)?;
    let counted = NodeCounts::of(&nodes).since(before);
    for node in &nodes {
        node.stop().await;
    }
    // Per volume: a third of the writes, over the same time.
    let per_volume = ops / volumes.len() as u64;
    let mut row = Row::new("r1x3_d0_qd32", per_volume, elapsed, &merged);
    counted.store_figures(&mut row, ops, elapsed);
    Ok(row)
}

async fn wait_for_leader(nodes: &[Node], volume: VolumeId) -> anyhow::Result<usize> {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        for (i, node) in nodes.iter().enumerate() {
            if let Ok(status) = node.host.status(volume).await
                && status.leader == Some(node.host.node())
            {
                return Ok(i);
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    anyhow::bail!("no leader elected within 20 s")
}

/// `depth` tasks writing random 4 KiB blocks through `host` for `secs`.
async fn drive(
    host: &Arc<daemon::NodeHost>,
    volume: VolumeId,
    depth: usize,
    blocks: u64,
    secs: Duration,
) -> anyhow::Result<(u64, f64, Histogram<u64>)> {
    let start = Instant::now();
    let tasks: Vec<_> = (0..depth)
        .map(|t| {
            let host = Arc::clone(host);
            tokio::spawn(async move {
                let mut rng = SplitMix64::new(77 + t as u64);
                let mut hist = histogram();
                let mut ops = 0u64;
                while start.elapsed() < secs {
                    let mut bytes = vec![t as u8; BLOCK_BYTES];
                    bytes[..8].copy_from_slice(&ops.to_le_bytes());
                    let data = BlockData::new(bytes)?;
                    let t0 = Instant::now();
                    host.write(volume, rng.below(blocks), data).await?;
                    hist.record(t0.elapsed().as_micros().max(1) as u64)?;
                    ops += 1;
                }
                anyhow::Ok((ops, hist))
            })
        })
        .collect();
    let mut runs = Vec::with_capacity(tasks.len());
    for task in tasks {
        runs.push(task.await??);
    }
    let (total, merged) = report::sum_runs(runs)?;
    Ok((total, start.elapsed().as_secs_f64(), merged))
}

/// Round trips of an empty request between two nodes (the handler refuses
/// it at once, so this is transport and TLS only), with `delay_ms` injected
/// one way (a round trip should then take about twice that).
async fn quic_rtt(dir: &Path, certs: &Path, delay_ms: u64) -> anyhow::Result<Row> {
    eprintln!("QUIC round trip, {delay_ms} ms one-way delay...");
    let run = dir.join(format!("rtt-d{delay_ms}"));
    let nodes = start_nodes(&run, &[], certs, 2, delay_ms).await?;
    let transport = Arc::clone(&nodes[0].transport);
    let mut hist = histogram();
    let start = Instant::now();
    let mut ops = 0;
    while start.elapsed() < Duration::from_secs(1) {
        let t0 = Instant::now();
        let _ = transport.call(2, Lane::Raft, Vec::new()).await;
        hist.record(t0.elapsed().as_micros().max(1) as u64)?;
        ops += 1;
    }
    for node in &nodes {
        node.stop().await;
    }
    let name = match delay_ms {
        0 => "quic_rtt".to_owned(),
        d => format!("quic_rtt_d{d}"),
    };
    Ok(Row::new(&name, ops, start.elapsed().as_secs_f64(), &hist))
}

/// Durable 4 KiB writes at queue depth 1 into a fresh store in `dir` until
/// `secs` after `start`: how many, and their latencies.
fn depth1_writes(
    dir: &Path,
    seed: u64,
    blocks: u64,
    start: Instant,
    secs: Duration,
) -> anyhow::Result<(u64, Histogram<u64>)> {
    let disk = Arc::new(FileDisk::open_dir(dir)?);
    let (store, writer) = Store::open(disk, Options::default())?;
    let w = std::thread::spawn(move || writer.run());
    let ns = Namespace::new(9, 1);
    let mut rng = SplitMix64::new(seed);
    let mut hist = histogram();
    let mut ops = 0u64;
    while start.elapsed() < secs {
        let mut batch = WriteBatch::new();
        batch.put(ns, rng.below(blocks), vec![ops as u8; BLOCK_BYTES]);
        let t0 = Instant::now();
        store.write(batch)?;
        hist.record(t0.elapsed().as_micros().max(1) as u64)?;
        ops += 1;
    }
    drop(store);
    w.join().map_err(|_| anyhow::anyhow!("writer panicked"))?;
    Ok((ops, hist))
}

/// `disk_seq_write`: the file system's buffered write bandwidth, as the
/// kvstore writes (1 MiB `pwrite`s to one file, an `fdatasync` every
/// 16 MiB), over [`DISK_PROBE_BYTES`]. Its `mb_per_s` is the ceiling for
/// the `disk_mb_per_s` of every replicated row, which counts the bytes all
/// nodes' stores wrote: they share this one disk.
fn disk_bandwidth(dir: &Path) -> anyhow::Result<Row> {
    use std::os::unix::fs::FileExt;
    const CHUNK: usize = 1 << 20;
    eprintln!("disk sequential write bandwidth...");
    std::fs::create_dir_all(dir)?;
    let path = dir.join("probe");
    let file =
        std::fs::File::create(&path).with_context(|| format!("creating {}", path.display()))?;
    let chunk = vec![0x5au8; CHUNK];
    let mut hist = histogram();
    let start = Instant::now();
    let chunks = DISK_PROBE_BYTES / CHUNK as u64;
    for i in 0..chunks {
        let t0 = Instant::now();
        file.write_all_at(&chunk, i * CHUNK as u64)?;
        if (i + 1) % 16 == 0 {
            file.sync_data()?;
        }
        hist.record(t0.elapsed().as_micros().max(1) as u64)?;
    }
    file.sync_data()?;
    let elapsed = start.elapsed().as_secs_f64();
    drop(file);
    std::fs::remove_file(&path)?;
    let mut row = Row::new("disk_seq_write", chunks, elapsed, &hist);
    row.extra
        .push(("mb_per_s".into(), DISK_PROBE_BYTES as f64 / elapsed / 1e6));
    Ok(row)
}

/// Bytes the disk bandwidth probe writes.
const DISK_PROBE_BYTES: u64 = 512 << 20;

/// kvstore alone: durable 4 KiB writes at queue depth 1.
fn kvstore_baseline(dir: &Path, blocks: u64, secs: Duration) -> anyhow::Result<Row> {
    eprintln!("kvstore-only baseline...");
    let start = Instant::now();
    let (ops, hist) = depth1_writes(dir, 5, blocks, start, secs)?;
    let elapsed = start.elapsed().as_secs_f64();
    Ok(Row::new("kvstore_only_qd1", ops, elapsed, &hist))
}

/// `stores` kvstore stores in `dir` (one disk), each written at queue depth 1
/// by its own thread at the same time, as the replicas of one volume on one
/// machine do: each one's durable 4 KiB write latency, merged.
fn kvstore_shared_disk(
    dir: &Path,
    placement: &[PathBuf],
    stores: usize,
    blocks: u64,
    secs: Duration,
) -> anyhow::Result<Row> {
    eprintln!("kvstore-only, {stores} stores on one disk at once...");
    let start = Instant::now();
    let threads: Vec<_> = (0..stores)
        .map(|i| {
            let dir = node_data_dir(dir, placement, i as NodeId + 1);
            std::thread::spawn(move || depth1_writes(&dir, 5 + i as u64, blocks, start, secs))
        })
        .collect();
    let (total, merged) = report::join_runs(threads)?;
    let name = format!("kvstore_only_qd1_x{stores}");
    Ok(Row::new(
        &name,
        total,
        start.elapsed().as_secs_f64(),
        &merged,
    ))
}
