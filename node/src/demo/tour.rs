//! The guided tour's four steps over a running [`DemoCluster`] (see the
//! module docs of [`super`]); it returns the [`Report`].

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use metro_fabric::env::NodeId;
use metro_fabric::wire::VolumeStatus;

use super::report::Report;
use super::workload::{Workload, read_back};
use super::{DemoArgs, DemoCluster, EXPORT, Output};
use crate::limits::{
    DEMO_CONVERGE_TIMEOUT_MS, DEMO_FAILOVER_TIMEOUT_MS, DEMO_LEADER_TIMEOUT_MS, DEMO_POLL_MS,
    DEMO_PROGRESS_INTERVAL_MS, DEMO_QUEUE_DEPTH, DEMO_STALL_TIMEOUT_MS, DEMO_STATUS_POLL_MS,
};

/// The leader's domain is killed once this share of the writes is acknowledged.
const KILL_AT_PERCENT: u64 = 35;

/// Where progress lines go: stdout for humans, stderr beside JSON.
#[derive(Debug)]
pub struct Out {
    output: Output,
}

impl Out {
    pub fn new(output: Output) -> Self {
        Self { output }
    }

    /// Prints one progress line.
    pub fn say(&self, line: String) {
        match self.output {
            Output::Human => println!("{line}"),
            Output::Json => eprintln!("{line}"),
        }
    }
}

/// What step 2 did.
struct Kill {
    domain: String,
    nodes: Vec<NodeId>,
    old_leader: NodeId,
    at: Instant,
}

/// Runs the tour; see the module docs of [`super`].
pub async fn tour(cluster: &mut DemoCluster, args: &DemoArgs, out: &Out) -> anyhow::Result<Report> {
    cluster.start_all().await?;
    let members = cluster.topology().members();
    cluster.create_volume(&members).await?;
    let leader = wait_leader(cluster, &members).await?;
    let admin_url = cluster.serve_admin().await?;
    describe(cluster, args, &members, leader, out);
    out.say(format!(
        "admin API: {admin_url} (metro cluster status --admin {admin_url}; metrics at {admin_url}/metrics)"
    ));
    let target = endpoint_outside(cluster, leader)?;
    let work = Workload::new(args.writes, target)?;
    let uri = format!("nbd://{target}/{EXPORT}");
    out.say(format!(
        "[1/4] writing {} unique 4 KiB blocks through {uri} at queue depth {DEMO_QUEUE_DEPTH}",
        args.writes
    ));
    let started = Instant::now();
    let writers = work.spawn_writers();
    let kill_at_acks = (args.writes * KILL_AT_PERCENT / 100).max(1);
    watch(&work, args.writes, out, |w| {
        w.acked_count() >= kill_at_acks || w.issued() >= args.writes
    })
    .await?;
    let kill = kill_leader_domain(cluster, &work, &members, out).await?;
    let failover_ms = wait_failover(&work, &kill, out).await?;
    let new_leader = wait_leader(cluster, &members).await.ok();
    if let Some(leader) = new_leader {
        out.say(format!("  new leader: node {leader}"));
    }
    watch(&work, args.writes, out, |w| w.issued() >= args.writes).await?;
    for writer in writers {
        writer.await.context("a writer task failed")?;
    }
    let write_secs = started.elapsed().as_secs_f64();
    let (lost, foreign) = verify(&work, out).await;
    let converged = restart_and_converge(cluster, &kill, &members, out).await?;
    let acked = work.acked().len() as u64;
    Ok(Report {
        nodes: cluster.topology().nodes().len(),
        domains: cluster.topology().domains().len(),
        data_domains: args.domains,
        witness: args.witness,
        rtt_ms: args.rtt_ms,
        volume_mib: args.volume_mib,
        replicas: members,
        writes: args.writes,
        acked_writes: acked,
        unacked_writes: work.unacked().len() as u64,
        lost_writes: lost,
        foreign_blocks: foreign,
        failover_ms,
        failover_writes: work.failover_writes(),
        p50_write_us: work.latency_us(0.5),
        p99_write_us: work.latency_us(0.99),
        max_write_us: work.latency_us(1.0),
        writes_per_sec: acked as f64 / write_secs.max(1e-9),
        killed_domain: kill.domain,
        killed_nodes: kill.nodes,
        old_leader: kill.old_leader,
        new_leader,
        converged: converged.is_some(),
        catch_up_ms: converged.as_ref().map(|c| c.0),
        applied_index: converged.as_ref().and_then(|c| c.1.applied_index),
        digest: converged.map(|c| format!("{:#010x}", c.1.digest)),
        nbd_uri: uri,
    })
}

/// Prints the cluster: domains, nodes, addresses, the volume.
fn describe(cluster: &DemoCluster, args: &DemoArgs, members: &[NodeId], leader: NodeId, out: &Out) {
    let topology = cluster.topology();
    out.say(format!(
        "metro demo: {} nodes in {} domains, {} ms round trip between domains (data in {})",
        topology.nodes().len(),
        topology.domains().len(),
        args.rtt_ms,
        cluster.dir.path.display()
    ));
    for domain in topology.domains() {
        for node in &domain.nodes {
            let role = match (members.contains(node), domain.witness) {
                (true, true) => "witness voter",
                (true, false) => "replica",
                (false, _) => "",
            };
            let quic = cluster
                .quic_addr(*node)
                .map_or("-".into(), |a| a.to_string());
            let nbd = cluster
                .nbd_addr(*node)
                .map_or("-".into(), |a| format!("nbd://{a}/{EXPORT}"));
            out.say(format!(
                "  {:<8} node {node:<2} {role:<13} quic {quic:<16} {nbd}",
                domain.name
            ));
        }
    }
    let list: Vec<String> = members.iter().map(|m| m.to_string()).collect();
    out.say(format!(
        "volume {EXPORT}: {} MiB, voters on nodes {}, leader node {leader}",
        args.volume_mib,
        list.join(", ")
    ));
}

/// The NBD address of a replica in a data domain other than `leader`'s
/// (replicas follow a leader change by themselves; see the README's gaps).
fn endpoint_outside(cluster: &DemoCluster, leader: NodeId) -> anyhow::Result<SocketAddr> {
    let topology = cluster.topology();
    let leader_domain = topology.domain_of(leader);
    let domains = topology.domains();
    let node = domains
        .iter()
        .enumerate()
        .filter(|(i, d)| Some(*i) != leader_domain && !d.witness)
        .map(|(_, d)| d.nodes[0])
        .find(|n| cluster.is_running(*n))
        .ok_or_else(|| anyhow!("no data domain outside the leader's"))?;
    cluster
        .nbd_addr(node)
        .ok_or_else(|| anyhow!("node {node} serves no NBD"))
}

/// Waits until every running member names the same running leader.
async fn wait_leader(cluster: &DemoCluster, members: &[NodeId]) -> anyhow::Result<NodeId> {
    let deadline = Instant::now() + Duration::from_millis(DEMO_LEADER_TIMEOUT_MS);
    loop {
        let leaders: Vec<Option<NodeId>> = cluster
            .statuses(members)
            .await
            .into_iter()
            .filter(|(id, _)| cluster.is_running(*id))
            .map(|(_, s)| s.and_then(|s| s.leader))
            .collect();
        if let Some(Some(leader)) = leaders.first()
            && leaders.iter().all(|l| *l == Some(*leader))
            && cluster.is_running(*leader)
        {
            return Ok(*leader);
        }
        if Instant::now() >= deadline {
            bail!("the volume has no agreed leader: {leaders:?}");
        }
        tokio::time::sleep(Duration::from_millis(DEMO_STATUS_POLL_MS)).await;
    }
}

/// Prints progress every [`DEMO_PROGRESS_INTERVAL_MS`] until `done` holds; fails
/// when no write completed (either way) for [`DEMO_STALL_TIMEOUT_MS`].
async fn watch(
    work: &Workload,
    writes: u64,
    out: &Out,
    done: impl Fn(&Workload) -> bool,
) -> anyhow::Result<()> {
    let completed = |w: &Workload| w.acked_count() + w.unacked().len() as u64;
    let mut last = (completed(work), Instant::now());
    let mut next_line = Instant::now() + Duration::from_millis(DEMO_PROGRESS_INTERVAL_MS);
    while !done(work) {
        let now = Instant::now();
        if completed(work) != last.0 {
            last = (completed(work), now);
        } else if now >= last.1 + Duration::from_millis(DEMO_STALL_TIMEOUT_MS) {
            bail!(
                "no write completed for {} s ({} of {writes} acknowledged)",
                DEMO_STALL_TIMEOUT_MS / 1_000,
                work.acked_count()
            );
        }
        if now >= next_line {
            let (acked, failed) = (work.acked_count(), work.unacked().len() as u64);
            out.say(format!(
                "  {acked}/{writes} writes acknowledged, {failed} failed, {} in flight",
                work.issued().saturating_sub(acked + failed)
            ));
            next_line += Duration::from_millis(DEMO_PROGRESS_INTERVAL_MS);
        }
        tokio::time::sleep(Duration::from_millis(DEMO_POLL_MS)).await;
    }
    Ok(())
}

/// Step 2: kills the current leader's whole domain while writes continue.
async fn kill_leader_domain(
    cluster: &mut DemoCluster,
    work: &Arc<Workload>,
    members: &[NodeId],
    out: &Out,
) -> anyhow::Result<Kill> {
    let leader = wait_leader(cluster, members).await?;
    let topology = cluster.topology().clone();
    let domain = topology
        .domain_of(leader)
        .and_then(|i| topology.domains().get(i).cloned())
        .ok_or_else(|| anyhow!("leader {leader} is in no domain"))?;
    if domain
        .nodes
        .iter()
        .any(|n| cluster.nbd_addr(*n) == Some(work.target()))
    {
        work.set_target(endpoint_outside(cluster, leader)?);
    }
    out.say(format!(
        "[2/4] killing domain {} (nodes {:?}, with the leader node {leader}) after {} \
         acknowledged writes; writes continue through nbd://{}/{EXPORT}",
        domain.name,
        domain.nodes,
        work.acked_count(),
        work.target()
    ));
    let at = work.mark_kill();
    cluster.stop(&domain.nodes).await?;
    Ok(Kill {
        domain: domain.name,
        nodes: domain.nodes,
        old_leader: leader,
        at,
    })
}

/// Waits for the first acknowledgement of a write issued after the kill.
async fn wait_failover(work: &Workload, kill: &Kill, out: &Out) -> anyhow::Result<Option<u64>> {
    let deadline = kill.at + Duration::from_millis(DEMO_FAILOVER_TIMEOUT_MS);
    loop {
        if let Some(first) = work.first_after_kill() {
            let ms = first.duration_since(kill.at).as_millis() as u64;
            out.say(format!(
                "  failover: {ms} ms from the kill to the first acknowledged write issued after it"
            ));
            return Ok(Some(ms));
        }
        if work.writers_done() {
            out.say("  failover: no write issued after the kill was acknowledged".into());
            return Ok(None);
        }
        if Instant::now() >= deadline {
            bail!(
                "no write was acknowledged within {} s of the kill",
                DEMO_FAILOVER_TIMEOUT_MS / 1_000
            );
        }
        tokio::time::sleep(Duration::from_millis(DEMO_POLL_MS)).await;
    }
}

/// Step 3: reads every write back through the writers' endpoint.
async fn verify(work: &Workload, out: &Out) -> (u64, u64) {
    let acked = work.acked();
    let unacked = work.unacked();
    let target = work.target();
    out.say(format!(
        "[3/4] reading back {} acknowledged and {} unacknowledged blocks through nbd://{target}/{EXPORT}",
        acked.len(),
        unacked.len()
    ));
    let found = read_back(target, acked, unacked).await;
    let lost = found.lost.len() as u64;
    let foreign = found.foreign.len() as u64;
    if lost == 0 && foreign == 0 {
        out.say("  every acknowledged write reads back exactly: 0 lost".into());
    } else {
        out.say(format!(
            "  LOST {lost} acknowledged writes {:?}; {foreign} blocks hold foreign data {:?}",
            &found.lost[..found.lost.len().min(20)],
            &found.foreign[..found.foreign.len().min(20)]
        ));
    }
    (lost, foreign)
}

/// Step 4: restarts the killed nodes and waits until every replica is at
/// the same applied index with the same digest; the catch-up time and one
/// replica's status, or `None` if they did not converge in time.
async fn restart_and_converge(
    cluster: &mut DemoCluster,
    kill: &Kill,
    members: &[NodeId],
    out: &Out,
) -> anyhow::Result<Option<(u64, VolumeStatus)>> {
    out.say(format!(
        "[4/4] restarting domain {} (nodes {:?}) from its data directories",
        kill.domain, kill.nodes
    ));
    let restarted = Instant::now();
    cluster.restart(&kill.nodes).await?;
    let deadline = restarted + Duration::from_millis(DEMO_CONVERGE_TIMEOUT_MS);
    // A witness keeps no blocks: it must reach the same applied index only.
    let witnesses: Vec<NodeId> = cluster
        .topology()
        .domains()
        .into_iter()
        .filter(|d| d.witness)
        .flat_map(|d| d.nodes)
        .collect();
    loop {
        let statuses = cluster.statuses(members).await;
        let answered: BTreeMap<NodeId, VolumeStatus> = statuses
            .iter()
            .filter_map(|(id, s)| s.clone().map(|s| (*id, s)))
            .collect();
        let first = answered
            .iter()
            .find(|(id, _)| !witnesses.contains(id))
            .map(|(_, s)| s);
        if let Some(first) = first
            && answered.len() == members.len()
            && first.applied_index.is_some()
            && answered.iter().all(|(id, s)| match witnesses.contains(id) {
                true => s.applied_index == first.applied_index,
                false => same_blocks(s, first),
            })
        {
            let ms = restarted.elapsed().as_millis() as u64;
            for (id, s) in &answered {
                if witnesses.contains(id) {
                    out.say(format!(
                        "  node {id}: applied index {:?} (witness: log only, no blocks)",
                        s.applied_index
                    ));
                    continue;
                }
                out.say(format!(
                    "  node {id}: applied index {:?}, {} blocks, digest {:#010x}",
                    s.applied_index, s.blocks_nonzero, s.digest
                ));
            }
            out.say(format!(
                "  all replicas identical {ms} ms after the restart"
            ));
            return Ok(Some((ms, first.clone())));
        }
        if Instant::now() >= deadline {
            out.say(format!("  replicas did NOT converge: {statuses:?}"));
            return Ok(None);
        }
        tokio::time::sleep(Duration::from_millis(DEMO_STATUS_POLL_MS)).await;
    }
}

fn same_blocks(a: &VolumeStatus, b: &VolumeStatus) -> bool {
    a.applied_index == b.applied_index
        && a.digest == b.digest
        && a.blocks_nonzero == b.blocks_nonzero
}
