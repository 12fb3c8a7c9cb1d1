//! NBD on real replicated volumes: three in-process nodes (`daemon::start`
//! on 127.0.0.1, QUIC with certificates from a fresh cluster CA, kvstore in
//! a temporary directory), one volume replicated on all three, and an NBD
//! listener ([`HostBackend`]) on two of them. Real clients from qemu-utils
//! write through node A's NBD and read through node B's:
//! - `qemu-io` writes patterns at many offsets (aligned, unaligned, large,
//!   the end of the volume) through A and verifies them through B;
//! - `qemu-img convert` copies a random 8 MiB raw file into the volume
//!   through A and back out through B: byte-identical;
//! - zeroes, discard and flush through A read back through B;
//! - then all three replicas catch up to one applied index and one
//!   block-map digest (within a deadline).
//!
//! A missing qemu tool fails the test, naming the Debian package.

use crate::common;

use crate::qemu::{qemu_io, random_bytes, run};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use metro_fabric::env::NodeId;
use metro_fabric::volume::{BLOCK_BYTES_U64, VolumeId};
use metro_node::daemon::config::NodeConfig;
use metro_node::daemon::{self, Node};
use metro_node::nbd::host::{HostBackend, NbdListener};

const MIB: u64 = 1024 * 1024;
const NODES: [NodeId; 3] = [1, 2, 3];
const VOLUME: VolumeId = VolumeId(1);
const EXPORT: &str = "vol";
/// The volume: exactly the size of the file `qemu-img convert` copies.
const SIZE_BYTES: u64 = 8 * MIB;
/// How long the followers may take to catch up once the clients are done.
const CATCH_UP_MAX: Duration = Duration::from_secs(30);
/// Three nodes and two NBD listeners on their own runtime; the directory
/// is removed on drop.
struct Harness {
    rt: tokio::runtime::Runtime,
    dir: PathBuf,
    nodes: Vec<Node>,
    nbd: Vec<NbdListener>,
}

fn configs(dir: &Path) -> Vec<NodeConfig> {
    let domains: Vec<String> = NODES.iter().map(|id| format!("domain-{id}")).collect();
    let nodes: Vec<(NodeId, &str)> = NODES
        .iter()
        .copied()
        .zip(domains.iter().map(String::as_str))
        .collect();
    common::inproc::node_configs(dir, "nbdhost", &nodes, |_| {}).expect("node configurations")
}

impl Harness {
    fn start() -> Self {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        let dir = common::scratch_dir("nbd-host");
        let _ = std::fs::remove_dir_all(&dir);
        let configs = configs(&dir);
        let (nodes, nbd) = rt.block_on(async {
            let mut nodes = Vec::new();
            for config in &configs {
                nodes.push(daemon::start(config).await.expect("start a node"));
            }
            let size_blocks = SIZE_BYTES / BLOCK_BYTES_U64;
            nodes[0]
                .host
                .create_volume(VOLUME, size_blocks, &NODES)
                .await
                .expect("create the volume");
            let mut nbd = Vec::new();
            for node in &nodes[..2] {
                let backend = HostBackend::new(Arc::clone(&node.host))
                    .with_export(EXPORT, VOLUME, SIZE_BYTES);
                let addr = "127.0.0.1:0".parse().expect("address");
                let listener = NbdListener::start(addr, Arc::new(backend)).await;
                nbd.push(listener.expect("NBD listener"));
            }
            (nodes, nbd)
        });
        Self {
            rt,
            dir,
            nodes,
            nbd,
        }
    }

    /// The URI of the export on node A (0) or B (1).
    fn uri(&self, which: usize) -> String {
        self.nbd[which].uri(EXPORT)
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        for listener in &self.nbd {
            listener.stop();
        }
        self.rt.block_on(async {
            for node in &self.nodes {
                node.stop().await;
            }
        });
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// (offset, length, pattern): aligned, unaligned, large, at the end.
fn pattern_cases() -> Vec<(u64, u64, u8)> {
    vec![
        (0, 64 * 1024, 0xab),
        (MIB, 4096, 0x11),
        (MIB + 4096 * 3, 128 * 1024, 0x22),
        (SIZE_BYTES - 64 * 1024, 64 * 1024, 0x33),
        (2 * MIB + 100, 1000, 0x44),
        (3 * MIB + 4000, 8300, 0x55),
        (4 * MIB + 512, 512, 0x66),
        (5 * MIB, 2 * MIB, 0x77),
        (7 * MIB + 1, 300 * 1024 + 5, 0x88),
    ]
}

fn write_through_a_read_through_b(h: &Harness) {
    let cases = pattern_cases();
    let writes: Vec<String> = cases
        .iter()
        .map(|(off, len, pat)| format!("write -P {pat:#x} {off} {len}"))
        .collect();
    let out = qemu_io(&h.uri(0), &writes);
    assert_eq!(out.matches("wrote ").count(), cases.len(), "{out}");
    let mut reads: Vec<String> = cases
        .iter()
        .map(|(off, len, pat)| format!("read -P {pat:#x} {off} {len}"))
        .collect();
    // The bytes around unaligned writes are untouched (still zero).
    reads.push(format!("read -P 0 {} 100", 2 * MIB));
    reads.push(format!("read -P 0 {} 3000", 2 * MIB + 1100));
    reads.push(format!("read -P 0 {} 512", 4 * MIB));
    let out = qemu_io(&h.uri(1), &reads);
    assert_eq!(out.matches("read ").count(), reads.len(), "{out}");
}

fn zeroes_discard_flush(h: &Harness) {
    qemu_io(
        &h.uri(0),
        &[
            "write -P 0x5a 0 1M".into(),
            "write -z 4096 8192".into(),
            "discard 512k 256k".into(),
            "flush".into(),
        ],
    );
    let reads = [
        "read -P 0x5a 0 4096",
        "read -P 0 4096 8192",
        "read -P 0x5a 12288 512000",
        "read -P 0 512k 256k",
        "read -P 0x5a 768k 256k",
    ];
    let reads: Vec<String> = reads.iter().map(|s| s.to_string()).collect();
    qemu_io(&h.uri(1), &reads);
}

fn convert_in_and_out(h: &Harness) {
    let src = h.dir.join("random.raw");
    let out = h.dir.join("copy.raw");
    let data = random_bytes(SIZE_BYTES as usize, 42);
    std::fs::write(&src, &data).expect("write the source file");
    let path = |p: &Path| p.display().to_string();
    let into = ["convert", "-n", "-f", "raw", "-O", "raw"];
    let mut args: Vec<String> = into.iter().map(|s| s.to_string()).collect();
    args.extend([path(&src), h.uri(0)]);
    run("qemu-img", &args);
    let out_of = ["convert", "-f", "raw", "-O", "raw"];
    let mut args: Vec<String> = out_of.iter().map(|s| s.to_string()).collect();
    args.extend([h.uri(1), path(&out)]);
    run("qemu-img", &args);
    let copy = std::fs::read(&out).expect("read the copy");
    assert_eq!(copy.len(), data.len(), "copy size");
    assert!(
        copy == data,
        "the copy through node B differs from the source"
    );
}

#[test]
fn qemu_clients_through_two_nodes() {
    let h = Harness::start();
    write_through_a_read_through_b(&h);
    zeroes_discard_flush(&h);
    convert_in_and_out(&h);
    every_replica_holds_the_same_blocks(&h);
}

/// Polls every node's status until all report one applied index and one
/// block-map digest (the followers caught up); fails, listing them, after
/// [`CATCH_UP_MAX`].
fn every_replica_holds_the_same_blocks(h: &Harness) {
    h.rt.block_on(async {
        let deadline = tokio::time::Instant::now() + CATCH_UP_MAX;
        loop {
            let mut replicas = Vec::new();
            for node in &h.nodes {
                let status = node.host.status(VOLUME).await.expect("status");
                replicas.push((status.applied_index, status.blocks_nonzero, status.digest));
            }
            let first = replicas[0];
            if first.0.is_some() && replicas.iter().all(|r| *r == first) {
                assert!(first.1 > 0, "the volume holds no block: {replicas:?}");
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "replicas differ after {CATCH_UP_MAX:?} (applied, blocks, digest): {replicas:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
}
