//! `metro client create|write|read|status|delete`: the direct data-path
//! client, over [`MetroClient`] (QUIC) with a client certificate. Volumes
//! are addressed by id and created on explicit members; it bypasses the
//! control plane (use `metro volume` for named, placed volumes).

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use metro_fabric::env::NodeId;
use metro_fabric::volume::{BLOCK_BYTES, BlockData, VolumeId};
use metro_node::client::{ClientConfig, MetroClient};
use metro_node::daemon::config::{parse_address, parse_node_id};
use metro_node::pki::CLIENT_ID_MIN;

#[derive(Debug, Args)]
pub struct ClientArgs {
    /// The certificates directory from `metro cluster init --clients N`.
    #[arg(long)]
    certs_dir: PathBuf,
    /// This client's id (1000000.. as issued).
    #[arg(long, default_value_t = CLIENT_ID_MIN)]
    client_id: u64,
    /// A node as ID=HOST:PORT (repeatable; give every node).
    #[arg(long = "node", required = true)]
    nodes: Vec<String>,
    /// The volume id.
    #[arg(long)]
    volume: u64,
    #[command(subcommand)]
    command: ClientCommand,
}

#[derive(Debug, Subcommand)]
enum ClientCommand {
    /// Create the volume (idempotent).
    Create {
        #[arg(long)]
        size_blocks: u64,
        /// Member node ids, comma-separated.
        #[arg(long, value_delimiter = ',', required = true)]
        members: Vec<u64>,
    },
    /// Write `--blocks` blocks of the byte `--fill`, or the file `--file`
    /// (zero-padded to whole blocks), at block `--offset`.
    Write {
        #[arg(long)]
        offset: u64,
        #[arg(long)]
        file: Option<PathBuf>,
        #[arg(long, default_value_t = 0xab)]
        fill: u8,
        #[arg(long, default_value_t = 1)]
        blocks: u32,
    },
    /// Read blocks; writes them to `--out` or prints their CRC32C.
    Read {
        #[arg(long)]
        offset: u64,
        #[arg(long, default_value_t = 1)]
        blocks: u32,
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Every node's report on its replica.
    Status,
    /// Delete the volume everywhere.
    Delete,
}

fn client(args: &ClientArgs) -> anyhow::Result<MetroClient> {
    let mut nodes = BTreeMap::<NodeId, _>::new();
    for pair in &args.nodes {
        let (id, addr) = pair
            .split_once('=')
            .with_context(|| format!("--node {pair:?}: expected ID=HOST:PORT"))?;
        nodes.insert(
            parse_node_id("node id", id)?,
            parse_address("node address", addr)?,
        );
    }
    let config = ClientConfig::new(args.certs_dir.clone(), args.client_id, nodes);
    Ok(MetroClient::connect(config)?)
}

fn payload(file: Option<&PathBuf>, fill: u8, blocks: u32) -> anyhow::Result<BlockData> {
    let mut bytes = match file {
        Some(path) => std::fs::read(path).with_context(|| format!("reading {}", path.display()))?,
        None => vec![fill; blocks as usize * BLOCK_BYTES],
    };
    if bytes.is_empty() {
        bail!("nothing to write");
    }
    bytes.resize(bytes.len().div_ceil(BLOCK_BYTES) * BLOCK_BYTES, 0);
    Ok(BlockData::new(bytes)?)
}

/// Runs one volume command on a fresh tokio runtime.
pub fn run(args: ClientArgs) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    runtime.block_on(async move {
        let client = client(&args)?;
        let volume = VolumeId(args.volume);
        match &args.command {
            ClientCommand::Create {
                size_blocks,
                members,
            } => {
                client.create_volume(volume, *size_blocks, members).await?;
                println!("{volume}: created on nodes {members:?}");
            }
            ClientCommand::Write {
                offset,
                file,
                fill,
                blocks,
            } => {
                let data = payload(file.as_ref(), *fill, *blocks)?;
                let count = data.block_count();
                let index = client.write(volume, *offset, data).await?;
                println!("{volume}: wrote {count} blocks at {offset} (log index {index})");
            }
            ClientCommand::Read { offset, blocks, out } => {
                let data = client.read(volume, *offset, *blocks).await?;
                match out {
                    Some(path) => std::fs::write(path, data.as_bytes())
                        .with_context(|| format!("writing {}", path.display()))?,
                    None => println!(
                        "{volume}: {blocks} blocks at {offset}, crc32c {:#010x}",
                        crc32c::crc32c(data.as_bytes())
                    ),
                }
            }
            ClientCommand::Status => {
                for node in client.nodes().to_vec() {
                    match client.status(volume, node).await {
                        Ok(s) => println!(
                            "node {node}: leader {:?} voters {:?} applied {:?} blocks {} digest {:#010x}",
                            s.leader, s.voters, s.applied_index, s.blocks_nonzero, s.digest
                        ),
                        Err(err) => println!("node {node}: {err}"),
                    }
                }
            }
            ClientCommand::Delete => {
                client.delete_volume(volume).await?;
                println!("{volume}: deleted");
            }
        }
        client.close();
        anyhow::Ok(())
    })
}
