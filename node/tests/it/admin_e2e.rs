//! End to end with real processes: a real etcd (tests/common), three
//! `metro node run` processes (QUIC with mutual TLS, kvstore on disk, one
//! data domain each, NBD and admin listeners), and the `metro` CLI against
//! their admin APIs:
//! - `cluster status` shows 3/3 nodes up and an elected coordinator;
//! - `volume create` through node 2, `volume list` through node 3: the
//!   coordinator places it on all three domains, creates its group, and
//!   it turns `healthy`;
//! - writes through node 1's NBD export (by the volume's name) show up in
//!   node 1's `/metrics` (write counter, bytes, latency histogram, a valid
//!   exposition);
//! - node 3 killed (SIGKILL): `node list` shows it down once its lease
//!   lapses, `cluster status` the volume `degraded`; `volume delete` is refused as unavailable (a replica's node
//!   is down) and changes nothing (node 1 still has its replica); after
//!   node 3 restarts it succeeds;
//! - `domain deactivate|activate` round trip.

use crate::common;

use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use crate::admin_harness::{metro, metro_ok, wait_for};
use common::EtcdServer;
use metro_fabric::env::NodeId;
use metro_node::admin::exposition::check_exposition;
use metro_node::client::admin_http::AdminClient;
use metro_node::demo::nbd_client::NbdClient;

const NODES: [NodeId; 3] = [1, 2, 3];
const DOMAINS: [&str; 3] = ["a", "b", "c"];
const WRITES: u64 = 16;

fn free_tcp() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

struct Processes {
    dir: PathBuf,
    children: BTreeMap<NodeId, Child>,
}

impl Processes {
    fn config(&self, id: NodeId) -> PathBuf {
        self.dir.join(format!("node-{id}.toml"))
    }

    fn start(&mut self, id: NodeId) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join(format!("node-{id}.log")))
            .unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_metro"))
            .args(["node", "run", "--log-level", "warn", "--config"])
            .arg(self.config(id))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start a node");
        self.children.insert(id, child);
    }

    fn kill(&mut self, id: NodeId) {
        let mut child = self.children.remove(&id).expect("running");
        child.kill().unwrap();
        child.wait().unwrap();
    }
}

impl Drop for Processes {
    fn drop(&mut self) {
        for child in self.children.values_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            for id in NODES {
                let log = std::fs::read_to_string(self.dir.join(format!("node-{id}.log")));
                eprintln!("--- node {id} log ---\n{}", log.unwrap_or_default());
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_against_real_nodes_and_etcd() {
    let etcd = EtcdServer::start("admin-e2e");
    let dir = common::scratch_dir("admin-e2e");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let init = metro(
        &[
            "cluster",
            "init",
            "--name",
            "e2e",
            "--nodes",
            "3",
            "--dir",
            dir.join("certs").to_str().unwrap(),
        ],
        None,
    )
    .await;
    assert_eq!(init.code, 0, "{}", init.stderr);
    let sockets: Vec<UdpSocket> = NODES
        .iter()
        .map(|_| UdpSocket::bind("127.0.0.1:0").unwrap())
        .collect();
    let quic: BTreeMap<NodeId, SocketAddr> = NODES
        .into_iter()
        .zip(sockets.iter().map(|s| s.local_addr().unwrap()))
        .collect();
    drop(sockets);
    let admin: BTreeMap<NodeId, SocketAddr> = NODES.iter().map(|id| (*id, free_tcp())).collect();
    let nbd: BTreeMap<NodeId, SocketAddr> = NODES.iter().map(|id| (*id, free_tcp())).collect();
    let mut procs = Processes {
        dir: dir.clone(),
        children: BTreeMap::new(),
    };
    for (id, domain) in NODES.iter().zip(DOMAINS) {
        let mut text = format!(
            "node_id = {id}\ndata_dir = {:?}\ncerts_dir = {:?}\nlisten = \"{}\"\n\
             nbd_listen = \"{}\"\nadmin_listen = \"{}\"\ncluster = \"e2e\"\n\
             domain = \"{domain}\"\netcd = [\"{}\"]\nnode_lease_ttl_s = 2\n[peers]\n",
            dir.join(format!("data-{id}")),
            dir.join("certs"),
            quic[id],
            nbd[id],
            admin[id],
            etcd.client_url(),
        );
        for (peer, addr) in quic.iter().filter(|(p, _)| *p != id) {
            text.push_str(&format!("{peer} = \"{addr}\"\n"));
        }
        std::fs::write(procs.config(*id), text).unwrap();
        procs.start(*id);
    }
    let url = |id: NodeId| format!("http://{}", admin[&id]);
    let (a1, a2, a3) = (url(1), url(2), url(3));

    let status = wait_for("3 nodes and a coordinator", async || {
        let run = metro(&["cluster", "status", "--admin", &a1], None).await;
        let ready = run.code == 0
            && run.stdout.contains("3/3 nodes up")
            && !run.stdout.contains("coordinator node -");
        ready.then_some(run.stdout)
    })
    .await;
    assert!(
        status.starts_with("cluster e2e: coordinator node "),
        "{status}"
    );

    let created = metro_ok(&["volume", "create", "db", "--size", "8MiB"], &a2).await;
    assert_eq!(
        created,
        "volume db created: id 1, 8MiB, 3 replicas (placement pending)\n"
    );
    let listed = wait_for("db healthy", async || {
        let out = metro_ok(&["volume", "list", "--output", "json"], &a3).await;
        let list: serde_json::Value = serde_json::from_str(&out).unwrap();
        let health = list[0]["health"].as_str().unwrap_or_default().to_owned();
        (health == "healthy").then_some(list)
    })
    .await;
    assert_eq!(listed[0]["placement"].as_array().unwrap().len(), 3);

    // I/O through node 1's NBD export of the volume's name.
    let mut client = wait_for("the NBD export db", async || {
        NbdClient::connect(nbd[&1], "db").await.ok()
    })
    .await;
    for i in 0..WRITES {
        client.write(i * 4096, &[0x5a; 4096]).await.unwrap();
    }
    assert_eq!(client.read(4096, 4096).await.unwrap(), vec![0x5a; 4096]);
    client.disconnect().await;
    let scrape = AdminClient::new(&a1)
        .unwrap()
        .raw("GET", "/metrics", None)
        .await
        .unwrap();
    let text = String::from_utf8(scrape.body).unwrap();
    check_exposition(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    for (line, value) in [
        ("metro_volume_writes_total{volume_id=\"1\"}", WRITES),
        (
            "metro_volume_write_bytes_total{volume_id=\"1\"}",
            WRITES * 4096,
        ),
        (
            "metro_volume_write_latency_seconds_count{volume_id=\"1\"}",
            WRITES,
        ),
        ("metro_volume_reads_total{volume_id=\"1\"}", 1),
        ("metro_node_registered", 1),
    ] {
        let expected = format!("{line} {value}\n");
        assert!(text.contains(&expected), "no {expected:?} in\n{text}");
    }

    // Node 3 dies: down in the node list; delete refused until it is back.
    procs.kill(3);
    wait_for("node 3 down", async || {
        let out = metro_ok(&["node", "list", "--output", "json"], &a1).await;
        let nodes: serde_json::Value = serde_json::from_str(&out).unwrap();
        let three = nodes.as_array()?.iter().find(|n| n["id"] == 3)?.clone();
        (three["up"] == false).then_some(())
    })
    .await;
    let status = wait_for("db degraded", async || {
        let status = metro_ok(&["cluster", "status"], &a2).await;
        status.contains(" degraded ").then_some(status)
    })
    .await;
    assert!(status.contains("2/3 nodes up"), "{status}");
    let refused = metro(&["volume", "delete", "db", "--admin", &a1], None).await;
    assert_eq!(refused.code, 1);
    assert!(refused.stderr.contains("node 3"), "{}", refused.stderr);
    assert!(
        refused.stderr.contains("503 unavailable"),
        "{}",
        refused.stderr
    );
    let still = metro_ok(&["volume", "inspect", "db"], &a1).await;
    assert!(
        still.contains("replica on node 1"),
        "nothing changed: {still}"
    );

    assert_eq!(
        metro_ok(&["domain", "deactivate", "b"], &a1).await,
        "domain b is now inactive\n"
    );
    assert!(
        metro_ok(&["domain", "list"], &a2)
            .await
            .contains("b     data  inactive")
    );
    metro_ok(&["domain", "activate", "b"], &a1).await;

    procs.start(3);
    wait_for("node 3 back", async || {
        let status = metro_ok(&["cluster", "status"], &a1).await;
        status.contains("3/3 nodes up").then_some(())
    })
    .await;
    let deleted = wait_for("db deleted", async || {
        let run = metro(&["volume", "delete", "db", "--admin", &a3], None).await;
        (run.code == 0).then_some(run.stdout)
    })
    .await;
    assert_eq!(deleted, "volume db (id 1) deleted\n");
    assert!(
        metro_ok(&["volume", "list"], &a2)
            .await
            .contains("no volumes")
    );
    drop(procs);
    drop(etcd);
}
