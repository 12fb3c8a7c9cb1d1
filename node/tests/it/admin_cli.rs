//! The `metro` CLI's admin commands, run as the real binary against an
//! in-process cluster's admin API (see `admin_harness`): `cluster status`,
//! `node list`, `volume create|list|inspect|delete|snapshot|snapshots|
//! delete-snapshot|clone`,
//! `domain list|activate|deactivate`, human and `--output json`, the
//! `METRO_ADMIN` variable, `--help` everywhere, and clear failures (bad
//! sizes, duplicate names and snapshots, a deleted snapshot, no server).

use crate::admin_harness::{Cluster, metro, metro_ok as ok, wait_for};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_over_the_admin_api() {
    let cluster = Cluster::start().await;
    let url = cluster.server.url();
    let admin = url.as_str();

    let status = wait_for("a coordinator", async || {
        let out = ok(&["cluster", "status"], admin).await;
        let ready = out.contains("3/3 nodes up") && !out.contains("coordinator node -");
        ready.then_some(out)
    })
    .await;
    assert!(status.contains("no volumes"), "{status}");

    let created = ok(
        &[
            "volume",
            "create",
            "db",
            "--size",
            "16MiB",
            "--replicas",
            "3",
        ],
        admin,
    )
    .await;
    assert_eq!(
        created,
        "volume db created: id 1, 16MiB, 3 replicas (placement pending)\n"
    );
    let dup = metro(
        &["volume", "create", "db", "--size", "1MiB", "--admin", admin],
        None,
    )
    .await;
    assert_eq!(dup.code, 1);
    assert!(dup.stderr.contains("already exists"), "{}", dup.stderr);
    let bad = metro(
        &["volume", "create", "x", "--size", "10XB", "--admin", admin],
        None,
    )
    .await;
    assert_eq!(bad.code, 2);
    assert!(bad.stderr.contains("bad size"), "{}", bad.stderr);
    let odd = metro(
        &["volume", "create", "x", "--size", "1000", "--admin", admin],
        None,
    )
    .await;
    assert_eq!(odd.code, 1);
    assert!(odd.stderr.contains("4096-byte blocks"), "{}", odd.stderr);

    // METRO_ADMIN instead of --admin; JSON for scripts.
    let json = metro(
        &["volume", "list", "--output", "json"],
        Some(("METRO_ADMIN", admin)),
    )
    .await;
    assert_eq!(json.code, 0, "{}", json.stderr);
    let list: serde_json::Value = serde_json::from_str(&json.stdout).unwrap();
    assert_eq!(list[0]["name"], "db");
    assert_eq!(list[0]["size_bytes"], 16 << 20);

    let table = wait_for("db placed", async || {
        let out = ok(&["volume", "list"], admin).await;
        (!out.contains("pending") && !out.contains("creating")).then_some(out)
    })
    .await;
    let mut lines = table.lines();
    assert_eq!(
        lines.next().unwrap().split_whitespace().collect::<Vec<_>>(),
        [
            "NAME",
            "ID",
            "SIZE",
            "REPLICAS",
            "HEALTH",
            "LEADER",
            "PLACEMENT"
        ]
    );
    let row: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
    assert_eq!(&row[..4], ["db", "1", "16MiB", "3"]);
    assert_eq!(row[6], "1@a,2@b,3@c");

    let inspect = ok(&["volume", "inspect", "db"], admin).await;
    assert!(inspect.starts_with("volume db (id 1)\n"), "{inspect}");
    assert!(inspect.contains("replica on node 1"), "{inspect}");

    let snap = ok(&["volume", "snapshot", "db", "--snapshot", "s1"], admin).await;
    assert!(
        snap.starts_with("snapshot s1 of db taken at log index "),
        "{snap}"
    );
    let twice = metro(
        &[
            "volume",
            "snapshot",
            "db",
            "--snapshot",
            "s1",
            "--admin",
            admin,
        ],
        None,
    )
    .await;
    assert_eq!(twice.code, 1);
    assert!(twice.stderr.contains("409 conflict"), "{}", twice.stderr);
    let listed = ok(&["volume", "snapshots", "db"], admin).await;
    let mut lines = listed.lines();
    assert!(lines.next().unwrap().starts_with("NAME"), "{listed}");
    assert!(lines.next().unwrap().starts_with("s1 "), "{listed}");
    let cloned = ok(
        &[
            "volume",
            "clone",
            "db",
            "--snapshot",
            "s1",
            "--target",
            "db2",
        ],
        admin,
    )
    .await;
    assert!(
        cloned.starts_with("volume db2 (id ")
            && cloned.ends_with("created from snapshot s1 of db\n"),
        "{cloned}"
    );
    let deleted = ok(
        &["volume", "delete-snapshot", "db", "--snapshot", "s1"],
        admin,
    )
    .await;
    assert_eq!(deleted, "snapshot s1 of db deleted\n");
    assert_eq!(
        ok(&["volume", "snapshots", "db"], admin).await,
        "no snapshots\n"
    );
    let clone = metro(
        &[
            "volume",
            "clone",
            "db",
            "--snapshot",
            "s1",
            "--target",
            "db3",
            "--admin",
            admin,
        ],
        None,
    )
    .await;
    assert_eq!(clone.code, 1);
    assert!(clone.stderr.contains("404 not_found"), "{}", clone.stderr);
    ok(&["volume", "delete", "db2"], admin).await;

    let domains = ok(&["domain", "list"], admin).await;
    assert!(
        domains.starts_with("NAME  ROLE  STATE   NODES UP  NODES DOWN\n"),
        "{domains}"
    );
    assert_eq!(
        ok(&["domain", "deactivate", "c"], admin).await,
        "domain c is now inactive\n"
    );
    assert!(
        ok(&["domain", "list"], admin)
            .await
            .contains("c     data  inactive")
    );
    assert_eq!(
        ok(&["domain", "activate", "c"], admin).await,
        "domain c is now active\n"
    );
    let unknown = metro(&["domain", "activate", "zz", "--admin", admin], None).await;
    assert!(
        unknown.stderr.contains("no domain named"),
        "{}",
        unknown.stderr
    );

    let nodes: serde_json::Value =
        serde_json::from_str(&ok(&["node", "list", "--output", "json"], admin).await).unwrap();
    assert_eq!(nodes.as_array().unwrap().len(), 3);
    assert!(
        ok(&["node", "list"], admin)
            .await
            .starts_with("ID  DOMAIN  STATE")
    );

    let status = ok(&["cluster", "status"], admin).await;
    assert!(status.contains("VOLUMES\nNAME"), "{status}");

    assert_eq!(
        ok(&["volume", "delete", "db"], admin).await,
        "volume db (id 1) deleted\n"
    );
    assert!(ok(&["volume", "list"], admin).await.contains("no volumes"));

    let down = metro(&["volume", "list", "--admin", "http://127.0.0.1:1"], None).await;
    assert_eq!(down.code, 1);
    assert!(
        down.stderr.contains("cannot reach the admin API"),
        "{}",
        down.stderr
    );

    for command in [
        &["volume", "--help"][..],
        &["volume", "create", "--help"],
        &["volume", "list", "--help"],
        &["volume", "inspect", "--help"],
        &["volume", "delete", "--help"],
        &["volume", "snapshot", "--help"],
        &["volume", "snapshots", "--help"],
        &["volume", "delete-snapshot", "--help"],
        &["volume", "clone", "--help"],
        &["domain", "list", "--help"],
        &["domain", "activate", "--help"],
        &["domain", "deactivate", "--help"],
        &["cluster", "status", "--help"],
        &["node", "list", "--help"],
        &["client", "--help"],
    ] {
        let help = metro(command, None).await;
        assert_eq!(help.code, 0, "{command:?}");
        assert!(help.stdout.contains("Usage: metro"), "{command:?}");
    }
    cluster.stop().await;
}
