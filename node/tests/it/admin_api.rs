//! The admin HTTP API over real HTTP on loopback, against three in-process
//! nodes (see `admin_harness`: real daemons with their control plane on a
//! shared embedded membership store; the elected coordinator places
//! volumes and creates their groups).
//!
//! Checks: volume create (unique ids from the CAS counter, also under
//! concurrent creates; duplicate names, bad sizes, zero or too many
//! replicas and malformed JSON refused with 4xx JSON errors), list,
//! inspect (with the local replica's Raft progress), delete; snapshots
//! (take, duplicate, list, delete) and a clone that reads as the source
//! did at the snapshot; domains list/deactivate/activate; cluster status and
//! node list; unknown paths and methods; and `/metrics`: a valid
//! exposition whose I/O counters and latency histogram move after writes
//! through the node's NBD endpoint.

use std::collections::BTreeSet;
use std::sync::Arc;

use crate::admin_harness::{CLUSTER, Cluster, MIB, NODES, seed_domains, wait_for};
use metro_fabric::control::DomainState;
use metro_fabric::volume::VolumeId;
use metro_node::admin::api::{
    CloneProgress, ClusterStatus, CreateVolume, Deleted, DomainView, NodeView, SnapshotView,
    VolumeDetail, VolumeSummary,
};
use metro_node::admin::exposition::check_exposition;
use metro_node::admin::{AdminService, NodeSlot};
use metro_node::client::admin_http::{AdminClient, ClientError};
use metro_node::demo::nbd_client::NbdClient;
use serde_json::json;

fn api_status(result: Result<serde_json::Value, ClientError>) -> (u16, String) {
    match result {
        Err(ClientError::Api { status, error }) => (status, error.error),
        other => panic!("expected an API error, got {other:?}"),
    }
}

async fn create(client: &AdminClient, body: serde_json::Value) -> (u16, String) {
    api_status(client.post("/v1/volumes", &body).await)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_api_over_http() {
    let cluster = Cluster::start().await;
    let (mem, host) = (&cluster.mem, cluster.host());
    let backend = &cluster.backend;
    let client = AdminClient::new(&cluster.server.url()).unwrap();

    // Cluster status and nodes before any volume.
    let status: ClusterStatus = wait_for("a coordinator", async || {
        let s: ClusterStatus = client.get("/v1/cluster").await.unwrap();
        (s.coordinator.is_some() && s.nodes.len() == 3).then_some(s)
    })
    .await;
    assert_eq!(status.cluster, CLUSTER);
    assert!(NODES.contains(&status.coordinator.unwrap()));
    assert_eq!(status.nodes.len(), 3);
    assert!(status.nodes.iter().all(|n| n.up));
    assert_eq!(status.domains.len(), 3);
    let listed: Vec<NodeView> = client.get("/v1/nodes").await.unwrap();
    assert_eq!(listed.iter().map(|n| n.id).collect::<Vec<_>>(), NODES);

    // Create: refusals first.
    let ok = |name: &str, size: u64, replicas: u32| json!({"name": name, "size_bytes": size, "replicas": replicas});
    assert_eq!(
        create(&client, ok("x", 1000, 1)).await,
        (400, "bad_request".into())
    );
    assert_eq!(create(&client, ok("x", 0, 1)).await.0, 400);
    assert_eq!(create(&client, ok("x", MIB, 0)).await.0, 400);
    assert_eq!(
        create(&client, ok("x", MIB, 4)).await.0,
        400,
        "3 data domains"
    );
    assert_eq!(create(&client, ok("x", MIB, 99)).await.0, 400);
    assert_eq!(create(&client, ok("Bad/Name", MIB, 1)).await.0, 400);
    assert_eq!(create(&client, json!({"name": "x"})).await.0, 400);
    let raw = client
        .raw("POST", "/v1/volumes", Some(b"{not json"))
        .await
        .unwrap();
    assert_eq!(raw.status, 400);
    let body: serde_json::Value = serde_json::from_slice(&raw.body).unwrap();
    assert_eq!(body["error"], "bad_request");
    assert!(body["message"].as_str().unwrap().contains("JSON"));

    let db: VolumeSummary = client
        .post(
            "/v1/volumes",
            &CreateVolume {
                name: "db".into(),
                size_bytes: 16 * MIB,
                replicas: 3,
            },
        )
        .await
        .unwrap();
    assert_eq!((db.id, db.health.as_str()), (1, "pending"));
    assert_eq!(
        create(&client, ok("db", MIB, 1)).await,
        (409, "conflict".into())
    );
    let logs: VolumeSummary = client
        .post("/v1/volumes", &ok("logs", MIB, 1))
        .await
        .unwrap();
    assert_eq!(logs.id, 2);

    // The coordinator places both and creates their groups.
    let detail: VolumeDetail = wait_for("db's group", async || {
        let d: VolumeDetail = client.get("/v1/volumes/db").await.unwrap();
        let created = d.status.as_ref().is_some_and(|s| s.group_created);
        let led = d.local.as_ref().is_some_and(|l| l.leader.is_some());
        (created && led).then_some(d)
    })
    .await;
    assert_eq!(detail.summary.placement.len(), 3);
    assert_eq!(detail.answered_by, 1);
    let local = detail.local.as_ref().unwrap();
    assert_eq!(local.voters, NODES);
    if local.leader == Some(1) {
        assert_eq!(local.progress.len(), 3, "{detail:?}");
    }
    let volumes: Vec<VolumeSummary> = client.get("/v1/volumes").await.unwrap();
    let names: Vec<&str> = volumes.iter().map(|v| v.name.as_str()).collect();
    assert_eq!(names, ["db", "logs"]);

    // I/O through NBD moves the counters.
    let id = VolumeId(detail.summary.id);
    backend.add_export("db", id, 16 * MIB).unwrap();
    let mut nbd_client = NbdClient::connect(cluster.nbd.addr, "db").await.unwrap();
    const WRITES: u64 = 20;
    for i in 0..WRITES {
        nbd_client
            .write(i * 4096, &[i as u8 + 1; 4096])
            .await
            .unwrap();
    }
    assert_eq!(nbd_client.read(0, 4096).await.unwrap(), vec![1u8; 4096]);
    nbd_client.disconnect().await;
    let scrape = client.raw("GET", "/metrics", None).await.unwrap();
    assert_eq!(scrape.status, 200);
    assert!(scrape.content_type.unwrap().starts_with("text/plain"));
    let text = String::from_utf8(scrape.body).unwrap();
    let samples = check_exposition(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    assert!(samples > 20, "{text}");
    let sample = |line: &str| -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(line)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("no sample {line}\n{text}"))
    };
    let vol = format!("{{volume_id=\"{}\"}}", id.0);
    assert_eq!(
        sample(&format!("metro_volume_writes_total{vol}")),
        WRITES as f64
    );
    assert_eq!(
        sample(&format!("metro_volume_write_bytes_total{vol}")),
        (WRITES * 4096) as f64
    );
    assert_eq!(sample(&format!("metro_volume_reads_total{vol}")), 1.0);
    assert_eq!(
        sample(&format!("metro_volume_write_latency_seconds_count{vol}")),
        WRITES as f64
    );
    assert!(sample(&format!("metro_raft_last_log_index{vol}")) >= WRITES as f64);
    assert!(sample(&format!("metro_raft_term{vol}")) >= 1.0);
    assert!(
        text.contains("metro_peer_rtt_seconds{peer=\"2\"}"),
        "{text}"
    );
    assert!(text.contains("metro_raft_leader_changes_total"));
    assert!(text.contains("\nmetro_node_registered 1\n"), "{text}");
    assert!(
        text.contains("\nmetro_coordinator_placements_total "),
        "{text}"
    );

    // Delete, and what is gone stays gone.
    let deleted: Deleted = client.delete("/v1/volumes/logs").await.unwrap();
    assert_eq!((deleted.name.as_str(), deleted.id), ("logs", 2));
    let gone = client.get::<serde_json::Value>("/v1/volumes/logs").await;
    assert_eq!(api_status(gone), (404, "not_found".into()));
    let again = client.delete::<serde_json::Value>("/v1/volumes/logs").await;
    assert_eq!(api_status(again).0, 404);
    let ids: Vec<u64> = client
        .get::<Vec<VolumeSummary>>("/v1/volumes")
        .await
        .unwrap()
        .iter()
        .map(|v| v.id)
        .collect();
    assert_eq!(ids, [1]);
    let next: VolumeSummary = client
        .post("/v1/volumes", &ok("logs", MIB, 1))
        .await
        .unwrap();
    assert_eq!(next.id, 3, "ids are never reused");

    // Snapshots: take, refuse a duplicate or a bad name, list, clone (the
    // clone reads what db held at the snapshot, not what it holds now),
    // delete.
    let snap: SnapshotView = client
        .post("/v1/volumes/db/snapshots", &json!({"snapshot": "s1"}))
        .await
        .unwrap();
    assert_eq!((snap.name.as_str(), snap.volume.as_str()), ("s1", "db"));
    assert!(snap.log_index > WRITES, "{snap:?}");
    let twice = client
        .post::<serde_json::Value>("/v1/volumes/db/snapshots", &json!({"snapshot": "s1"}))
        .await;
    assert_eq!(api_status(twice), (409, "conflict".into()));
    let bad = client
        .post::<serde_json::Value>("/v1/volumes/db/snapshots", &json!({"snapshot": "S/1"}))
        .await;
    assert_eq!(api_status(bad).0, 400);
    let missing = client
        .post::<serde_json::Value>("/v1/volumes/nope/snapshots", &json!({"snapshot": "s1"}))
        .await;
    assert_eq!(api_status(missing).0, 404);
    let listed: Vec<SnapshotView> = client.get("/v1/volumes/db/snapshots").await.unwrap();
    assert_eq!(listed, vec![snap.clone()]);
    let mut nbd_client = NbdClient::connect(cluster.nbd.addr, "db").await.unwrap();
    nbd_client.write(0, &[0xee; 4096]).await.unwrap();
    nbd_client.disconnect().await;
    let clone: VolumeSummary = client
        .post(
            "/v1/volumes/db/clone",
            &json!({"snapshot": "s1", "target": "db2"}),
        )
        .await
        .unwrap();
    assert_eq!((clone.name.as_str(), clone.size_bytes), ("db2", 16 * MIB));
    let jobs: Vec<CloneProgress> = client.get("/v1/clones").await.unwrap();
    let job = jobs.iter().find(|j| j.target == "db2").expect("the job");
    assert_eq!(
        (job.state.as_str(), job.copied_blocks, job.scanned_blocks),
        ("done", WRITES, 16 * MIB / 4096)
    );
    backend
        .add_export("db2", VolumeId(clone.id), 16 * MIB)
        .unwrap();
    let mut nbd_client = NbdClient::connect(cluster.nbd.addr, "db2").await.unwrap();
    for i in [0, WRITES - 1] {
        let block = nbd_client.read(i * 4096, 4096).await.unwrap();
        assert_eq!(
            block,
            vec![i as u8 + 1; 4096],
            "db2 block {i} is db's at s1"
        );
    }
    assert_eq!(
        nbd_client.read(WRITES * 4096, 4096).await.unwrap(),
        vec![0; 4096]
    );
    nbd_client.disconnect().await;
    let taken = client
        .post::<serde_json::Value>(
            "/v1/volumes/db/clone",
            &json!({"snapshot": "s1", "target": "db2"}),
        )
        .await;
    assert_eq!(api_status(taken).0, 409, "db2 exists");
    let deleted: SnapshotView = client.delete("/v1/volumes/db/snapshots/s1").await.unwrap();
    assert_eq!(deleted, snap);
    let again = client
        .delete::<serde_json::Value>("/v1/volumes/db/snapshots/s1")
        .await;
    assert_eq!(api_status(again).0, 404);
    let gone = client
        .post::<serde_json::Value>(
            "/v1/volumes/db/clone",
            &json!({"snapshot": "s1", "target": "db3"}),
        )
        .await;
    assert_eq!(api_status(gone).0, 404);
    let _: Deleted = client.delete("/v1/volumes/db2").await.unwrap();

    // Domains.
    let domain: DomainView = client
        .post("/v1/domains/c/deactivate", &json!({}))
        .await
        .unwrap();
    assert_eq!(domain.state, DomainState::Inactive);
    let domains: Vec<DomainView> = client.get("/v1/domains").await.unwrap();
    assert_eq!(domains[2].state, DomainState::Inactive);
    assert_eq!((domains[2].nodes_up, domains[2].nodes_down), (1, 0));
    let back: DomainView = client
        .post("/v1/domains/c/activate", &json!({}))
        .await
        .unwrap();
    assert_eq!(back.state, DomainState::Active);
    let unknown = client
        .post::<serde_json::Value>("/v1/domains/zz/activate", &json!({}))
        .await;
    assert_eq!(api_status(unknown).0, 404);

    // Unknown paths and methods.
    assert_eq!(
        client.raw("GET", "/v2/nothing", None).await.unwrap().status,
        404
    );
    let put = client.raw("PUT", "/v1/volumes", None).await.unwrap();
    assert_eq!(put.status, 405);
    assert!(serde_json::from_slice::<serde_json::Value>(&put.body).is_ok());

    // Concurrent creates in another cluster (no coordinator there) get
    // distinct ids.
    seed_domains(mem, "race").await;
    let race = Arc::new(AdminService::new(
        mem.clone(),
        "race",
        NodeSlot::new(host, None),
    ));
    let mut tasks = Vec::new();
    for i in 0..12 {
        let race = Arc::clone(&race);
        tasks.push(tokio::spawn(async move {
            let request = CreateVolume {
                name: format!("v{i}"),
                size_bytes: MIB,
                replicas: 1,
            };
            race.create_volume(&request).await.map(|v| v.id)
        }));
    }
    let mut ids = BTreeSet::new();
    for task in tasks {
        ids.insert(task.await.unwrap().expect("create"));
    }
    assert_eq!(ids, (1..=12).collect::<BTreeSet<u64>>());

    cluster.stop().await;
}
