//! The operator's commands over a node's admin HTTP API
//! ([`metro_node::admin`]): `volume`, `domain`, `cluster status`,
//! `node list`. Every command takes `--admin http://HOST:PORT` (else the
//! `METRO_ADMIN` environment variable, else [`DEFAULT_ADMIN`]) and
//! `--output human|json`: human tables by default, or the API's JSON
//! answer as is (for scripts). Errors exit non-zero with the API's message.

pub mod client;
pub mod cluster;
pub mod domain;
pub mod table;
pub mod volume;

use anyhow::Context;
use clap::Args;
use metro_node::client::admin_http::AdminClient;
use serde::Serialize;
use serde::de::DeserializeOwned;

/// Where the CLI looks when neither `--admin` nor `METRO_ADMIN` is set.
pub const DEFAULT_ADMIN: &str = "http://127.0.0.1:7080";
/// The environment variable naming the admin endpoint.
pub const ADMIN_ENV: &str = "METRO_ADMIN";

/// How a command prints its answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    /// Tables and sentences.
    Human,
    /// The API's JSON answer, pretty-printed.
    Json,
}

/// The flags every admin command takes.
#[derive(Debug, Clone, Args)]
pub struct AdminArgs {
    /// The admin API of any node, http://HOST:PORT [env: METRO_ADMIN;
    /// default: http://127.0.0.1:7080].
    #[arg(long, global = true)]
    pub admin: Option<String>,
    /// human (tables) or json (the API's answer, for scripts).
    #[arg(long, value_enum, default_value_t = Output::Human, global = true)]
    pub output: Output,
}

impl AdminArgs {
    /// The endpoint: `--admin`, else `$METRO_ADMIN`, else the default.
    pub fn url(&self) -> String {
        self.admin
            .clone()
            .or_else(|| std::env::var(ADMIN_ENV).ok().filter(|v| !v.is_empty()))
            .unwrap_or_else(|| DEFAULT_ADMIN.to_owned())
    }

    pub fn client(&self) -> anyhow::Result<AdminClient> {
        Ok(AdminClient::new(&self.url())?)
    }
}

/// Runs `f` on a fresh single-threaded runtime.
pub fn block_on<T>(f: impl Future<Output = anyhow::Result<T>>) -> anyhow::Result<T> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    runtime.block_on(f)
}

/// Calls the API and prints the answer: JSON as received, or `human(&T)`.
pub fn show<T: DeserializeOwned>(
    args: &AdminArgs,
    method: &str,
    path: &str,
    body: Option<&impl Serialize>,
    human: impl FnOnce(&T) -> String,
) -> anyhow::Result<()> {
    let client = args.client()?;
    let value: serde_json::Value = block_on(async { Ok(client.call(method, path, body).await?) })?;
    match args.output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&value)?),
        Output::Human => {
            let typed: T = serde_json::from_value(value)
                .with_context(|| format!("decoding the answer of {path}"))?;
            print!("{}", human(&typed));
        }
    }
    Ok(())
}
