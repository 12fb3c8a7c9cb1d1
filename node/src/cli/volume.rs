//! `metro volume create|list|inspect|delete|snapshot|snapshots|
//! delete-snapshot|clone` over the admin API. Volumes are named; the
//! cluster allocates their ids and places their replicas (one per data
//! domain). A clone shows its progress on stderr while it copies.

use clap::{Args, Subcommand};
use std::io::Write as _;
use std::time::Duration;

use anyhow::Context as _;
use metro_node::admin::api::{
    CloneProgress, CloneVolume, CreateSnapshot, CreateVolume, Deleted, SnapshotView, VolumeDetail,
    VolumeSummary,
};
use metro_node::client::admin_http::method;
use metro_node::client::size::{format_size, parse_size};

use super::table::{Table, or_dash};
use super::{AdminArgs, Output, block_on, show};
use metro_node::limits::{CLONE_POLL_MS, CLONE_TIMEOUT_MS};

#[derive(Debug, Args)]
pub struct VolumeArgs {
    #[command(flatten)]
    admin: AdminArgs,
    #[command(subcommand)]
    command: VolumeCommand,
}

#[derive(Debug, Subcommand)]
enum VolumeCommand {
    /// Create a volume: the coordinator places one replica per data domain
    /// and creates its Raft group; `list` shows when it is healthy.
    Create {
        /// Volume name (a-z, 0-9, '-', '_', '.'; also its NBD export name).
        name: String,
        /// Size: bytes, or with a unit (512MiB, 10GiB, 1TiB); whole 4 KiB blocks.
        #[arg(long, value_parser = parse_size)]
        size: u64,
        /// Data replicas, each in its own data domain.
        #[arg(long, default_value_t = 3)]
        replicas: u32,
    },
    /// List volumes: size, replicas, health, leader, placement.
    List,
    /// One volume in detail: members' health and, when the answering node
    /// hosts a replica, its Raft progress (per-replica lag on the leader).
    Inspect {
        /// The volume's name.
        name: String,
    },
    /// Delete a volume and its replicas on every node.
    Delete {
        /// The volume's name.
        name: String,
    },
    /// Take a named, crash-consistent snapshot of a volume: it holds every
    /// write acknowledged before it (one replicated log entry pins every
    /// replica's blocks there).
    Snapshot {
        /// The volume's name.
        name: String,
        /// Snapshot name (a-z, 0-9, '-', '_', '.').
        #[arg(long)]
        snapshot: String,
    },
    /// List a volume's snapshots.
    Snapshots {
        /// The volume's name.
        name: String,
    },
    /// Delete a volume's snapshot (its blocks are released on every
    /// replica).
    DeleteSnapshot {
        /// The volume's name.
        name: String,
        /// The snapshot's name.
        #[arg(long)]
        snapshot: String,
    },
    /// Create a new volume from a snapshot: same replica count, the
    /// snapshot's size, its blocks copied in (progress on stderr). Answers
    /// once every block is copied.
    Clone {
        /// Source volume.
        name: String,
        /// The snapshot of the source volume to clone.
        #[arg(long)]
        snapshot: String,
        /// The new volume's name.
        #[arg(long)]
        target: String,
    },
}

fn placement(summary: &VolumeSummary) -> String {
    if summary.placement.is_empty() {
        return "-".into();
    }
    summary
        .placement
        .iter()
        .map(|m| format!("{}@{}", m.node, m.domain))
        .collect::<Vec<_>>()
        .join(",")
}

/// The `volume list` table.
pub fn volumes_table(volumes: &[VolumeSummary]) -> String {
    if volumes.is_empty() {
        return "no volumes\n".into();
    }
    let mut t = Table::new(&[
        "name",
        "id",
        "size",
        "replicas",
        "health",
        "leader",
        "placement",
    ]);
    for v in volumes {
        t.row(vec![
            v.name.clone(),
            v.id.to_string(),
            format_size(v.size_bytes),
            v.replicas.to_string(),
            v.health.clone(),
            or_dash(v.leader),
            placement(v),
        ]);
    }
    let mut out = t.render();
    for v in volumes {
        if let (Some(error), "pending" | "creating") = (&v.error, v.health.as_str()) {
            out.push_str(&format!("note: {} is {}: {error}\n", v.name, v.health));
        }
    }
    out
}

fn inspect_text(d: &VolumeDetail) -> String {
    let s = &d.summary;
    let mut out = format!(
        "volume {} (id {})\n  size      {} ({} bytes)\n  replicas  {}\n  health    {}\n  leader    {}\n",
        s.name,
        s.id,
        format_size(s.size_bytes),
        s.size_bytes,
        s.replicas,
        s.health,
        or_dash(s.leader),
    );
    if let Some(error) = &s.error {
        out.push_str(&format!("  error     {error}\n"));
    }
    if !d.members.is_empty() {
        out.push_str("\nmembers (as the coordinator last published):\n");
        let mut t = Table::new(&["node", "domain", "role", "live", "domain", "in-sync"]);
        for m in &d.members {
            t.row(vec![
                m.node.to_string(),
                m.domain.clone(),
                format!("{:?}", m.role).to_lowercase(),
                yes(m.live),
                if m.domain_active {
                    "active"
                } else {
                    "inactive"
                }
                .into(),
                yes(m.in_sync),
            ]);
        }
        out.push_str(&t.render());
    } else if !s.placement.is_empty() {
        out.push_str(&format!("\nplacement: {}\n", placement(s)));
    }
    if !d.snapshots.is_empty() {
        out.push_str("\nsnapshots:\n");
        out.push_str(&snapshots_table(&d.snapshots));
    }
    match &d.local {
        None => out.push_str(&format!(
            "\nnode {} hosts no replica of it (ask a member's admin API for Raft progress)\n",
            d.answered_by
        )),
        Some(l) => {
            out.push_str(&format!(
                "\nreplica on node {}: term {}, last log {}, applied {}, voters {:?}, learners {:?}\n",
                l.node,
                l.term,
                or_dash(l.last_log_index),
                or_dash(l.applied_index),
                l.voters,
                l.learners
            ));
            if !l.progress.is_empty() {
                let mut t = Table::new(&["node", "matched", "lag", "in-sync"]);
                for p in &l.progress {
                    t.row(vec![
                        p.node.to_string(),
                        or_dash(p.matched_index),
                        p.lag_entries.to_string(),
                        yes(p.in_sync),
                    ]);
                }
                out.push_str(&t.render());
            }
        }
    }
    out
}

/// The `volume snapshots` table.
pub fn snapshots_table(snapshots: &[SnapshotView]) -> String {
    if snapshots.is_empty() {
        return "no snapshots\n".into();
    }
    let mut t = Table::new(&["name", "log index", "size", "created (unix ms)"]);
    for s in snapshots {
        t.row(vec![
            s.name.clone(),
            s.log_index.to_string(),
            format_size(s.size_bytes),
            s.created_unix_ms.to_string(),
        ]);
    }
    t.render()
}

/// One progress line of a clone.
pub fn clone_progress_line(p: &CloneProgress) -> String {
    let percent = (p.scanned_blocks * 100)
        .checked_div(p.total_blocks)
        .unwrap_or(100);
    format!(
        "clone {} <- {}@{}: {} {percent:>3}% ({} of {} blocks scanned, {} copied)",
        p.target, p.source, p.snapshot, p.state, p.scanned_blocks, p.total_blocks, p.copied_blocks
    )
}

/// `volume clone`: the POST on one connection, the progress polled on
/// others and shown on stderr (human output only) until it answers.
fn run_clone(a: &AdminArgs, name: &str, body: CloneVolume) -> anyhow::Result<()> {
    let client = a
        .client()?
        .with_timeout(Duration::from_millis(CLONE_TIMEOUT_MS));
    let poller = a.client()?;
    let path = format!("/v1/volumes/{name}/clone");
    let target = body.target.clone();
    let human = a.output == Output::Human;
    let value: serde_json::Value = block_on(async {
        let call = client.call::<serde_json::Value>(
            metro_node::client::admin_http::method::POST,
            &path,
            Some(&body),
        );
        tokio::pin!(call);
        let mut shown = false;
        loop {
            tokio::select! {
                answer = &mut call => {
                    if shown {
                        eprintln!();
                    }
                    return Ok(answer?);
                }
                () = tokio::time::sleep(Duration::from_millis(CLONE_POLL_MS)), if human => {
                    if let Ok(jobs) = poller.get::<Vec<CloneProgress>>("/v1/clones").await
                        && let Some(job) = jobs.iter().find(|j| j.target == target)
                    {
                        eprint!("\r{}", clone_progress_line(job));
                        let _ = std::io::stderr().flush();
                        shown = true;
                    }
                }
            }
        }
    })?;
    match a.output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&value)?),
        Output::Human => {
            let v: VolumeSummary =
                serde_json::from_value(value).context("decoding the clone's answer")?;
            println!(
                "volume {} (id {}, {}) created from snapshot {} of {}",
                v.name,
                v.id,
                format_size(v.size_bytes),
                body.snapshot,
                name
            );
        }
    }
    Ok(())
}

fn yes(b: bool) -> String {
    if b { "yes" } else { "no" }.into()
}

pub fn run(args: VolumeArgs) -> anyhow::Result<()> {
    let a = &args.admin;
    let none = None::<&()>;
    match args.command {
        VolumeCommand::Create {
            name,
            size,
            replicas,
        } => {
            let body = CreateVolume {
                name,
                size_bytes: size,
                replicas,
            };
            show(
                a,
                method::POST,
                "/v1/volumes",
                Some(&body),
                |v: &VolumeSummary| {
                    format!(
                        "volume {} created: id {}, {}, {} replicas (placement {})\n",
                        v.name,
                        v.id,
                        format_size(v.size_bytes),
                        v.replicas,
                        v.health
                    )
                },
            )
        }
        VolumeCommand::List => show(a, method::GET, "/v1/volumes", none, |v: &Vec<_>| {
            volumes_table(v)
        }),
        VolumeCommand::Inspect { name } => {
            let path = format!("/v1/volumes/{name}");
            show(a, method::GET, &path, none, inspect_text)
        }
        VolumeCommand::Delete { name } => {
            let path = format!("/v1/volumes/{name}");
            show(a, method::DELETE, &path, none, |d: &Deleted| {
                format!("volume {} (id {}) deleted\n", d.name, d.id)
            })
        }
        VolumeCommand::Snapshot { name, snapshot } => {
            let path = format!("/v1/volumes/{name}/snapshots");
            let body = CreateSnapshot { snapshot };
            show(a, method::POST, &path, Some(&body), |s: &SnapshotView| {
                format!(
                    "snapshot {} of {} taken at log index {}\n",
                    s.name, s.volume, s.log_index
                )
            })
        }
        VolumeCommand::Snapshots { name } => {
            let path = format!("/v1/volumes/{name}/snapshots");
            show(a, method::GET, &path, none, |v: &Vec<SnapshotView>| {
                snapshots_table(v)
            })
        }
        VolumeCommand::DeleteSnapshot { name, snapshot } => {
            let path = format!("/v1/volumes/{name}/snapshots/{snapshot}");
            show(a, method::DELETE, &path, none, |s: &SnapshotView| {
                format!("snapshot {} of {} deleted\n", s.name, s.volume)
            })
        }
        VolumeCommand::Clone {
            name,
            snapshot,
            target,
        } => run_clone(a, &name, CloneVolume { snapshot, target }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use metro_fabric::control::{Member, MemberRole};

    #[test]
    fn the_list_table_shows_sizes_health_and_placement() {
        let member = |node, domain: &str| Member {
            node,
            domain: domain.into(),
            role: MemberRole::Data,
        };
        let volumes = vec![
            VolumeSummary {
                name: "db".into(),
                id: 1,
                size_bytes: 10 << 30,
                replicas: 2,
                placement: vec![member(1, "a"), member(3, "b")],
                health: "healthy".into(),
                leader: Some(3),
                error: None,
            },
            VolumeSummary {
                name: "scratch".into(),
                id: 12,
                size_bytes: 512 << 20,
                replicas: 1,
                placement: vec![],
                health: "pending".into(),
                leader: None,
                error: None,
            },
        ];
        assert_eq!(
            volumes_table(&volumes),
            "NAME     ID  SIZE    REPLICAS  HEALTH   LEADER  PLACEMENT\n\
             db       1   10GiB   2         healthy  3       1@a,3@b\n\
             scratch  12  512MiB  1         pending  -       -\n"
        );
        assert_eq!(volumes_table(&[]), "no volumes\n");
        let mut stuck = volumes[1].clone();
        stuck.error = Some("no data domain left".into());
        assert!(
            volumes_table(&[stuck]).ends_with("note: scratch is pending: no data domain left\n")
        );
    }
}
