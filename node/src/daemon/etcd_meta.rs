//! [`EtcdMetaStore`]: fabric's [`MetaStore`] seam over an external etcd
//! (v3 API, etcd >= 3.4) through `etcd-client`.
//!
//! The contract is fabric's (`metro_fabric::meta`); etcd provides it
//! natively: reads are linearizable (etcd's default), transactions map to
//! etcd `Txn`s, watches are etcd watches with `prev_kv`, and elections use
//! etcd's `v3election` service (campaign/resign) plus a range for `leader`.
//!
//! Every call except [`MetaStore::campaign`] and [`WatchStream::next`]
//! (which wait by design) is bounded by [`EtcdConfig::request_timeout`].
//! Error mapping: connection failures, gRPC `Unavailable`/`DeadlineExceeded`/
//! `Cancelled`, transport errors and our own timeouts are
//! [`MetaError::Unreachable`]; "lease not found" is
//! [`MetaError::LeaseNotFound`]; a failed transaction compare is a
//! result with `succeeded == false`; anything else is
//! [`MetaError::Failed`].
//!
//! The client reconnects on its own: after etcd comes back, the same
//! [`EtcdMetaStore`] works again. Watches do not survive a disconnection;
//! they end with `Unreachable` and the caller re-watches (see the contract).

use std::collections::VecDeque;
use std::future::Future;
use std::time::Duration;

use crate::limits::{
    ETCD_CONNECT_TIMEOUT_MS, ETCD_KEEP_ALIVE_INTERVAL_MS, ETCD_KEEP_ALIVE_TIMEOUT_MS,
    ETCD_REQUEST_TIMEOUT_MS,
};
use etcd_client::{
    Client, Compare as EtcdCompare, CompareOp, ConnectOptions, DeleteOptions, EventType,
    GetOptions, LeaderKey, PutOptions, ResignOptions, SortOrder, SortTarget, Txn,
    TxnOp as EtcdTxnOp, TxnOpResponse, WatchOptions,
};
use metro_fabric::meta::{
    Compare, CompareTarget, ElectionStore, EventKind, KeyValue, KvStore, Leadership, Lease,
    LeaseId, LeaseStore, MetaError, RangeResult, Result, Revision, TxnOp, TxnResult, WatchEvent,
    WatchStore, WatchStream, WriteResult, election_prefix,
};
use tonic::Code;

/// Where and how to reach etcd.
#[derive(Clone, Debug)]
pub struct EtcdConfig {
    /// Client URLs, e.g. `http://127.0.0.1:2379`.
    pub endpoints: Vec<String>,
    pub request_timeout: Duration,
    pub connect_timeout: Duration,
}

impl EtcdConfig {
    /// `endpoints` with the default timeouts.
    pub fn new(endpoints: Vec<String>) -> Self {
        Self {
            endpoints,
            request_timeout: Duration::from_millis(ETCD_REQUEST_TIMEOUT_MS),
            connect_timeout: Duration::from_millis(ETCD_CONNECT_TIMEOUT_MS),
        }
    }
}

/// [`MetaStore`] over etcd. Cheap to clone; clones share the connection.
#[derive(Clone)]
pub struct EtcdMetaStore {
    client: Client,
    request_timeout: Duration,
}

impl std::fmt::Debug for EtcdMetaStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdMetaStore")
            .field("request_timeout", &self.request_timeout)
            .finish_non_exhaustive()
    }
}

fn unreachable_error(reason: impl Into<String>) -> MetaError {
    MetaError::Unreachable {
        reason: reason.into(),
    }
}

/// Maps an etcd-client error (see the module docs); `lease` names the lease
/// the request involved, for "lease not found".
fn map_error(error: etcd_client::Error, lease: Option<LeaseId>) -> MetaError {
    use etcd_client::Error as E;
    let reason = error.to_string();
    let lease_missing = reason.contains("lease not found");
    match (&error, lease) {
        (_, Some(lease)) if lease_missing => MetaError::LeaseNotFound { lease },
        (E::TransportError(_) | E::IoError(_), _) => unreachable_error(reason),
        (E::LeaseKeepAliveError(_) | E::WatchError(_), _) => unreachable_error(reason),
        (E::GRpcStatus(status), _) if status_is_unreachable(status) => unreachable_error(reason),
        _ => MetaError::Failed { reason },
    }
}

fn status_is_unreachable(status: &tonic::Status) -> bool {
    match status.code() {
        Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled => true,
        // Connection-level failures surface as `Unknown` with the cause inside.
        Code::Unknown => {
            let message = status.message().to_ascii_lowercase();
            [
                "transport",
                "connection",
                "h2 protocol",
                "broken pipe",
                "reset",
            ]
            .iter()
            .any(|needle| message.contains(needle))
        }
        _ => false,
    }
}

fn convert_kv(kv: &etcd_client::KeyValue) -> KeyValue {
    KeyValue {
        key: kv.key().to_vec(),
        value: kv.value().to_vec(),
        create_revision: kv.create_revision(),
        mod_revision: kv.mod_revision(),
        version: kv.version(),
        lease: (kv.lease() != 0).then_some(kv.lease()),
    }
}

fn header_revision(header: Option<&etcd_client::ResponseHeader>) -> Revision {
    header.map_or(0, etcd_client::ResponseHeader::revision)
}

fn put_options(lease: Option<LeaseId>) -> PutOptions {
    let options = PutOptions::new().with_prev_key();
    match lease {
        Some(lease) => options.with_lease(lease),
        None => options,
    }
}

fn to_etcd_compare(compare: &Compare) -> EtcdCompare {
    let key = compare.key.clone();
    match compare.target {
        CompareTarget::CreateRevision => {
            EtcdCompare::create_revision(key, CompareOp::Equal, compare.revision)
        }
        CompareTarget::ModRevision => {
            EtcdCompare::mod_revision(key, CompareOp::Equal, compare.revision)
        }
    }
}

fn to_etcd_op(op: TxnOp) -> EtcdTxnOp {
    match op {
        TxnOp::Put { key, value, lease } => EtcdTxnOp::put(key, value, Some(put_options(lease))),
        TxnOp::Delete { key } => EtcdTxnOp::delete(key, None),
    }
}

impl EtcdMetaStore {
    /// A client for `config.endpoints`. Connects lazily: this succeeds even
    /// while etcd is down, and calls fail as unreachable until it is up.
    pub async fn connect(config: EtcdConfig) -> Result<Self> {
        let options = ConnectOptions::new()
            .with_connect_timeout(config.connect_timeout)
            .with_timeout(config.request_timeout)
            .with_keep_alive(
                Duration::from_millis(ETCD_KEEP_ALIVE_INTERVAL_MS),
                Duration::from_millis(ETCD_KEEP_ALIVE_TIMEOUT_MS),
            )
            .with_keep_alive_while_idle(true);
        let connect = Client::connect(&config.endpoints, Some(options));
        let client = tokio::time::timeout(config.request_timeout, connect)
            .await
            .map_err(|_| unreachable_error("timed out connecting to etcd"))?
            .map_err(|error| map_error(error, None))?;
        Ok(Self {
            client,
            request_timeout: config.request_timeout,
        })
    }

    /// Runs one request on a clone of the client, bounded by the request
    /// timeout, mapping errors (`lease`: see [`map_error`]).
    async fn call<T, F, Fut>(&self, lease: Option<LeaseId>, request: F) -> Result<T>
    where
        F: FnOnce(Client) -> Fut,
        Fut: Future<Output = std::result::Result<T, etcd_client::Error>>,
    {
        let timeout = self.request_timeout;
        match tokio::time::timeout(timeout, request(self.client.clone())).await {
            Ok(result) => result.map_err(|error| map_error(error, lease)),
            Err(_) => Err(unreachable_error(format!(
                "etcd request timed out after {timeout:?}"
            ))),
        }
    }

    async fn txn_inner(&self, compares: Vec<Compare>, ops: Vec<TxnOp>) -> Result<TxnResult> {
        let lease = ops.iter().find_map(|op| match op {
            TxnOp::Put { lease, .. } => *lease,
            TxnOp::Delete { .. } => None,
        });
        let reads: Vec<EtcdTxnOp> = compares
            .iter()
            .map(|compare| EtcdTxnOp::get(compare.key.clone(), None))
            .collect();
        let txn = Txn::new()
            .when(compares.iter().map(to_etcd_compare).collect::<Vec<_>>())
            .and_then(ops.into_iter().map(to_etcd_op).collect::<Vec<_>>())
            .or_else(reads);
        let response = self
            .call(lease, |mut client| async move { client.txn(txn).await })
            .await?;
        let revision = header_revision(response.header());
        let succeeded = response.succeeded();
        let current = if succeeded {
            Vec::new()
        } else {
            let responses = response.op_responses();
            responses
                .iter()
                .map(|op| match op {
                    TxnOpResponse::Get(get) => get.kvs().first().map(convert_kv),
                    _ => None,
                })
                .collect()
        };
        Ok(TxnResult {
            succeeded,
            revision,
            current,
        })
    }

    async fn watch_inner(&self, prefix: &[u8], start: Option<Revision>) -> Result<EtcdWatch> {
        let mut options = WatchOptions::new().with_prefix().with_prev_key();
        if let Some(start) = start {
            options = options.with_start_revision(start);
        }
        let prefix = prefix.to_vec();
        let mut watch = EtcdWatch {
            stream: None,
            pending: VecDeque::new(),
            ended: None,
        };
        // Open the stream and wait for etcd to confirm the watch, so that a
        // down etcd or a compacted start revision fails here.
        let stream = self
            .call(None, |mut client| async move {
                let mut stream = client.watch(prefix, Some(options)).await?;
                loop {
                    let Some(response) = stream.message().await? else {
                        return Err(etcd_client::Error::WatchError("watch stream closed".into()));
                    };
                    watch.absorb(&response);
                    if response.created() || response.canceled() {
                        return Ok((stream, watch));
                    }
                }
            })
            .await;
        let (stream, mut watch) = stream?;
        if let Some(error) = watch.ended.take() {
            return Err(error);
        }
        watch.stream = Some(stream);
        Ok(watch)
    }

    async fn campaign_inner(
        &self,
        election: &str,
        value: &[u8],
        lease: LeaseId,
    ) -> Result<Leadership> {
        let mut client = self.client.clone();
        let response = client
            .campaign(election, value, lease)
            .await
            .map_err(|error| map_error(error, Some(lease)))?;
        let leader = response.leader().ok_or_else(|| MetaError::Failed {
            reason: "campaign without leader".into(),
        })?;
        Ok(Leadership {
            election: election.to_owned(),
            key: leader.key().to_vec(),
            revision: leader.rev(),
            lease: leader.lease(),
        })
    }
}

impl KvStore for EtcdMetaStore {
    async fn get(&self, key: &[u8]) -> Result<Option<KeyValue>> {
        let key = key.to_vec();
        let response = self
            .call(
                None,
                |mut client| async move { client.get(key, None).await },
            )
            .await?;
        Ok(response.kvs().first().map(convert_kv))
    }

    async fn range(&self, prefix: &[u8]) -> Result<RangeResult> {
        let prefix = prefix.to_vec();
        let options = GetOptions::new().with_prefix();
        let response = self
            .call(None, |mut client| async move {
                client.get(prefix, Some(options)).await
            })
            .await?;
        let kvs = response.kvs().iter().map(convert_kv).collect();
        Ok(RangeResult {
            kvs,
            revision: header_revision(response.header()),
        })
    }

    async fn put(&self, key: &[u8], value: &[u8], lease: Option<LeaseId>) -> Result<WriteResult> {
        let (key, value) = (key.to_vec(), value.to_vec());
        let options = put_options(lease);
        let response = self
            .call(lease, |mut client| async move {
                client.put(key, value, Some(options)).await
            })
            .await?;
        let prev = response.prev_key().map(convert_kv);
        Ok(WriteResult {
            revision: header_revision(response.header()),
            prev,
        })
    }

    async fn delete(&self, key: &[u8]) -> Result<WriteResult> {
        let key = key.to_vec();
        let options = DeleteOptions::new().with_prev_key();
        let response = self
            .call(None, |mut client| async move {
                client.delete(key, Some(options)).await
            })
            .await?;
        let prev = response.prev_kvs().first().map(convert_kv);
        Ok(WriteResult {
            revision: header_revision(response.header()),
            prev,
        })
    }

    async fn txn(&self, compares: Vec<Compare>, ops: Vec<TxnOp>) -> Result<TxnResult> {
        self.txn_inner(compares, ops).await
    }
}

impl LeaseStore for EtcdMetaStore {
    async fn grant(&self, ttl: Duration) -> Result<Lease> {
        let secs = ttl.as_secs() + u64::from(ttl.subsec_nanos() > 0);
        let secs = i64::try_from(secs).unwrap_or(i64::MAX);
        let response = self
            .call(None, |mut client| async move {
                client.lease_grant(secs, None).await
            })
            .await?;
        if !response.error().is_empty() {
            return Err(MetaError::Failed {
                reason: response.error().to_owned(),
            });
        }
        let ttl = Duration::from_secs(u64::try_from(response.ttl()).unwrap_or(0));
        Ok(Lease {
            id: response.id(),
            ttl,
        })
    }

    async fn keep_alive_once(&self, lease: LeaseId) -> Result<()> {
        // `lease_keep_alive` sends one keep-alive and waits for its answer
        // (TTL 0, an error, when the lease is gone); dropping the returned
        // keeper and stream closes the gRPC stream.
        self.call(Some(lease), |mut client| async move {
            client.lease_keep_alive(lease).await
        })
        .await
        .map(drop)
    }

    async fn revoke(&self, lease: LeaseId) -> Result<()> {
        self.call(Some(lease), |mut client| async move {
            client.lease_revoke(lease).await
        })
        .await
        .map(drop)
    }
}

impl WatchStore for EtcdMetaStore {
    type Watch = EtcdWatch;

    async fn watch(&self, prefix: &[u8], start: Option<Revision>) -> Result<EtcdWatch> {
        self.watch_inner(prefix, start).await
    }
}

impl ElectionStore for EtcdMetaStore {
    async fn campaign(&self, election: &str, value: &[u8], lease: LeaseId) -> Result<Leadership> {
        self.campaign_inner(election, value, lease).await
    }

    async fn resign(&self, leadership: &Leadership) -> Result<()> {
        let leader = LeaderKey::new()
            .with_name(leadership.election.clone())
            .with_key(leadership.key.clone())
            .with_rev(leadership.revision)
            .with_lease(leadership.lease);
        let options = ResignOptions::new().with_leader(leader);
        self.call(None, |mut client| async move {
            client.resign(Some(options)).await
        })
        .await
        .map(drop)
    }

    async fn leader(&self, election: &str) -> Result<Option<KeyValue>> {
        let prefix = election_prefix(election);
        let options = GetOptions::new()
            .with_prefix()
            .with_sort(SortTarget::Create, SortOrder::Ascend)
            .with_limit(1);
        let response = self
            .call(None, |mut client| async move {
                client.get(prefix, Some(options)).await
            })
            .await?;
        Ok(response.kvs().first().map(convert_kv))
    }
}

/// A watch on etcd: one etcd watch stream, pulled by [`WatchStream::next`]
/// (gRPC flow control holds etcd back while the consumer is slow). At most
/// one etcd response's events are buffered here.
pub struct EtcdWatch {
    stream: Option<etcd_client::WatchStream>,
    pending: VecDeque<WatchEvent>,
    ended: Option<MetaError>,
}

impl std::fmt::Debug for EtcdWatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdWatch")
            .field("pending", &self.pending.len())
            .field("ended", &self.ended)
            .finish_non_exhaustive()
    }
}

impl EtcdWatch {
    /// Takes in one etcd response: its events, or its cancellation.
    fn absorb(&mut self, response: &etcd_client::WatchResponse) {
        if response.canceled() {
            let compacted = response.compact_revision();
            self.ended = Some(if compacted > 0 {
                MetaError::Compacted {
                    revision: compacted,
                }
            } else {
                let reason = format!("watch cancelled by etcd: {}", response.cancel_reason());
                MetaError::Failed { reason }
            });
            return;
        }
        for event in response.events() {
            let Some(kv) = event.kv() else { continue };
            let kind = match event.event_type() {
                EventType::Put => EventKind::Put,
                EventType::Delete => EventKind::Delete,
            };
            let prev = event.prev_kv().map(convert_kv);
            self.pending.push_back(WatchEvent {
                kind,
                kv: convert_kv(kv),
                prev,
            });
        }
    }

    async fn next_inner(&mut self) -> Result<WatchEvent> {
        loop {
            if let Some(event) = self.pending.pop_front() {
                return Ok(event);
            }
            if let Some(error) = &self.ended {
                return Err(error.clone());
            }
            let Some(stream) = self.stream.as_mut() else {
                self.ended = Some(unreachable_error("watch stream closed"));
                continue;
            };
            match stream.message().await {
                Ok(Some(response)) => self.absorb(&response),
                Ok(None) => self.ended = Some(unreachable_error("etcd closed the watch stream")),
                Err(error) => {
                    // A broken stream is a broken connection, whatever the code.
                    let error = match map_error(error, None) {
                        MetaError::Failed { reason } => unreachable_error(reason),
                        other => other,
                    };
                    self.ended = Some(error);
                }
            }
            if self.ended.is_some() {
                self.stream = None;
            }
        }
    }
}

impl WatchStream for EtcdWatch {
    fn next(&mut self) -> impl Future<Output = Result<WatchEvent>> + Send {
        self.next_inner()
    }
}
