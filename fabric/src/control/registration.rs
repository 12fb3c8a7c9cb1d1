//! [`NodeRegistration`]: a node announces itself to the cluster.
//!
//! Model: the node grants a lease of [`RegistrationConfig::ttl`], writes
//! its [`NodeInfo`] at [`ClusterKeys::node`] attached to that lease, and
//! renews the lease every TTL / [`KEEP_ALIVES_PER_TTL`]. The key lives
//! exactly as long as the lease: a node whose lease lapses (crash,
//! partition from the store, a stall longer than the TTL) is *down* for the
//! coordinator, which repairs its replicas after its repair delay.
//!
//! Contract:
//! - [`NodeRegistration::run`] never returns; drop it (abort the task) to
//!   stop renewing, or call [`NodeRegistration::deregister`] to leave at once.
//! - When the store answers that the lease is gone (`LeaseNotFound`: it
//!   expired or was revoked) the node reports it ([`RegistrationStatus`],
//!   `leases_lost` + 1, `registered == false`) and registers again under a
//!   new lease.
//! - When the store is unreachable the node keeps retrying with backoff
//!   (from [`STORE_RETRY_MIN_MS`] doubling to [`STORE_RETRY_MAX_MS`]); its lease survives a
//!   store restart (etcd renews every lease then). Nothing on the data path
//!   waits for registration: I/O on existing volumes goes on regardless.
//! - Status is published through the runtime's watch channel
//!   ([`NodeRegistration::subscribe`]).

use std::sync::Arc;
use std::time::Duration;

use openraft::rt::{Watch, WatchSender};
use openraft::{AsyncRuntime, Instant as _};
use parking_lot::Mutex;

use crate::backoff::Backoff;
use crate::control::keys::ClusterKeys;
use crate::control::state::{NodeInfo, encode};
use crate::limits::{
    KEEP_ALIVES_PER_TTL, NODE_LEASE_TTL_MS, STORE_RETRY_MAX_MS, STORE_RETRY_MIN_MS,
};
use crate::meta::{Lease, LeaseId, MetaError, MetaStore};

/// Registration settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RegistrationConfig {
    pub ttl: Duration,
    pub retry_min: Duration,
    pub retry_max: Duration,
}

impl Default for RegistrationConfig {
    fn default() -> Self {
        Self {
            ttl: Duration::from_millis(NODE_LEASE_TTL_MS),
            retry_min: Duration::from_millis(STORE_RETRY_MIN_MS),
            retry_max: Duration::from_millis(STORE_RETRY_MAX_MS),
        }
    }
}

/// What a node knows about its own registration.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RegistrationStatus {
    /// The node key is written under a lease last renewed successfully.
    pub registered: bool,
    /// The current lease, if one was granted.
    pub lease: Option<LeaseId>,
    /// How many leases were found expired or revoked ("lease lost").
    pub leases_lost: u64,
    /// How many times a lease was granted and the key written.
    pub registrations: u64,
    /// The last store error, cleared by the next success.
    pub last_error: Option<String>,
}

type StatusSender<RT> = <<RT as AsyncRuntime>::Watch as Watch>::Sender<RegistrationStatus>;
/// The receiving side of [`NodeRegistration::subscribe`].
pub type StatusReceiver<RT> = <<RT as AsyncRuntime>::Watch as Watch>::Receiver<RegistrationStatus>;

/// A node's registration loop (see the module contract).
pub struct NodeRegistration<RT: AsyncRuntime, M: MetaStore> {
    membership: M,
    keys: ClusterKeys,
    info: NodeInfo,
    config: RegistrationConfig,
    status: StatusSender<RT>,
    lease: Arc<Mutex<Option<LeaseId>>>,
}

impl<RT: AsyncRuntime, M: MetaStore> std::fmt::Debug for NodeRegistration<RT, M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeRegistration")
            .field("node", &self.info.id)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl<RT: AsyncRuntime, M: MetaStore> NodeRegistration<RT, M> {
    pub fn new(
        membership: M,
        keys: ClusterKeys,
        info: NodeInfo,
        config: RegistrationConfig,
    ) -> Self {
        let (status, _) = RT::Watch::channel(RegistrationStatus::default());
        Self {
            membership,
            keys,
            info,
            config,
            status,
            lease: Arc::new(Mutex::new(None)),
        }
    }

    /// A receiver of status changes.
    pub fn subscribe(&self) -> StatusReceiver<RT> {
        self.status.subscribe()
    }

    /// The status now.
    pub fn status(&self) -> RegistrationStatus {
        self.status.borrow_watched().clone()
    }

    fn update(&self, change: impl FnOnce(&mut RegistrationStatus)) {
        self.status.send_if_modified(|status| {
            let before = status.clone();
            change(status);
            *status != before
        });
    }

    fn set_lease(&self, lease: Option<LeaseId>) {
        *self.lease.lock() = lease;
    }

    /// Registers and keeps the registration alive, forever.
    pub async fn run(&self) {
        loop {
            let lease = self.register().await;
            self.keep_alive(lease).await;
            self.update(|s| {
                s.registered = false;
                s.leases_lost += 1;
            });
        }
    }

    /// Grants a lease and writes the node key under it, retrying until the
    /// store answers.
    async fn register(&self) -> Lease {
        let key = self.keys.node(self.info.id);
        let value = encode(&self.info);
        let mut backoff = self.backoff(1);
        loop {
            let attempt = async {
                let lease = self.membership.grant(self.config.ttl).await?;
                self.set_lease(Some(lease.id));
                self.membership
                    .put(key.as_bytes(), &value, Some(lease.id))
                    .await?;
                Ok::<Lease, MetaError>(lease)
            };
            match attempt.await {
                Ok(lease) => {
                    self.update(|s| {
                        s.registered = true;
                        s.lease = Some(lease.id);
                        s.registrations += 1;
                        s.last_error = None;
                    });
                    return lease;
                }
                Err(error) => {
                    self.update(|s| s.last_error = Some(error.to_string()));
                    backoff.wait::<RT>().await;
                }
            }
        }
    }

    /// Renews `lease` every TTL / [`KEEP_ALIVES_PER_TTL`] until the store
    /// says it is gone. While renewals fail, the node counts as registered
    /// until a TTL has passed since the start of the last successful one.
    async fn keep_alive(&self, lease: Lease) {
        let every = lease.ttl / KEEP_ALIVES_PER_TTL;
        let mut backoff = self.backoff(2);
        let mut wait = every;
        let mut last_ok = RT::Instant::now();
        loop {
            RT::sleep(wait).await;
            let sent = RT::Instant::now();
            match self.membership.keep_alive_once(lease.id).await {
                Ok(()) => {
                    last_ok = sent;
                    self.update(|s| {
                        s.registered = true;
                        s.last_error = None;
                    });
                    backoff.reset();
                    wait = every;
                }
                Err(MetaError::LeaseNotFound { .. }) => return,
                Err(error) => {
                    let lapsed = RT::Instant::now() - last_ok >= lease.ttl;
                    self.update(|s| {
                        s.last_error = Some(error.to_string());
                        s.registered &= !lapsed;
                    });
                    wait = backoff.next_delay().min(every);
                }
            }
        }
    }

    /// A store-retry backoff seeded by this node and `purpose` (no two
    /// nodes, nor two loops of one node, retry in lockstep).
    fn backoff(&self, purpose: u64) -> Backoff {
        let seed = self.info.id.rotate_left(16) ^ purpose ^ 0x5245_4749;
        Backoff::new(self.config.retry_min, self.config.retry_max, seed)
    }

    /// Leaves the cluster now: revokes the current lease (deleting the node
    /// key). A running [`Self::run`] registers again; stop it first.
    pub async fn deregister(&self) -> Result<(), MetaError> {
        let lease = *self.lease.lock();
        if let Some(lease) = lease {
            match self.membership.revoke(lease).await {
                Ok(()) | Err(MetaError::LeaseNotFound { .. }) => {}
                Err(error) => return Err(error),
            }
        }
        self.update(|s| s.registered = false);
        Ok(())
    }
}
