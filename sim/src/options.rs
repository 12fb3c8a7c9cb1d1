//! [`SimOptions`]: everything one run varies, derived from its seed alone.
//!
//! A run prints its options before anything else, so a failing seed shows
//! at once what it simulated; the same seed always derives the same options
//! (a [`SplitMix64`] stream of its own, independent of the runtime's).

use std::fmt;

use metro_kvstore::SplitMix64;

/// Nodes in a cluster, at most.
pub const NODES_MAX: usize = 7;
/// Blocks of each simulated volume: small, so that clients collide often.
pub const VOLUME_BLOCKS: u64 = 32;
/// Volumes one cluster hosts, at least.
pub const SIM_VOLUMES_MIN: u64 = 2;
/// Volumes one cluster hosts, at most.
pub const SIM_VOLUMES_MAX: u64 = 4;

/// A deliberate bug on the simulator's side, to prove the checkers catch
/// what they claim to (never set by a seed).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PlantedBug {
    /// Clients count a write acknowledged as soon as it is sent, before the
    /// leader answered.
    EarlyAck,
    /// Disks acknowledge `fdatasync` without making anything durable.
    LyingFsync,
    /// Every node's state machines apply a session's duplicate requests
    /// again (`NodeStorage::plant_ignore_request_numbers`); only the
    /// [`Workload::RetryingClients`] workload sends session requests.
    NoDedup,
    /// Every node's group leaders apply a group change computed from voters
    /// the group no longer has (`VolumeHost::plant_unfenced_membership`);
    /// turns the [`RepairWorkload`] on (its stale replays are what a
    /// deposed coordinator sends).
    UnfencedMembership,
}

/// The `repair` workload (drawn from a stream of its own): coordinators
/// repair with a short delay, some crashes last long enough for a member to
/// be replaced, and stale group changes (as a deposed coordinator's late
/// calls) reach the group leaders (`repair.rs`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RepairWorkload {
    /// The coordinators' repair delay.
    pub delay_ms: u64,
    /// Chance that a crash lasts past the lease TTL and the repair delay.
    pub long_crash_ppm: u64,
    /// Chance, per fault tick, that a stale group change is sent.
    pub stale_change_ppm: u64,
}

/// Share of seeds that run the repair workload.
pub const REPAIR_SEEDS_PPM: u64 = 400_000;
/// The repair delay of that workload, at least and at most.
pub const REPAIR_DELAY_MS_MIN: u64 = 500;
pub const REPAIR_DELAY_MS_MAX: u64 = 3_000;

impl RepairWorkload {
    /// The repair workload `seed` draws, and whether the seed turns it on.
    pub fn draw(seed: u64) -> (Self, bool) {
        let mut rng = SplitMix64::new(seed ^ 0x7265_7061_6972_2121);
        let workload = Self {
            delay_ms: REPAIR_DELAY_MS_MIN
                + rng.below(REPAIR_DELAY_MS_MAX - REPAIR_DELAY_MS_MIN + 1),
            long_crash_ppm: 300_000 + rng.below(500_001),
            stale_change_ppm: 100_000 + rng.below(300_001),
        };
        (workload, rng.below(1_000_000) < REPAIR_SEEDS_PPM)
    }
}

impl fmt::Display for RepairWorkload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "repair(delay={}ms long_crash={}ppm stale_change={}ppm)",
            self.delay_ms, self.long_crash_ppm, self.stale_change_ppm
        )
    }
}

/// What the clients do (drawn from a stream of its own).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Workload {
    /// Plain writes and reads, never retried once their outcome is unknown
    /// (`workload.rs`).
    Mixed,
    /// Clients write through sessions, retry a write of unknown outcome
    /// with the same request id until acknowledged, then overwrite the
    /// same blocks and read them back; the network duplicates session
    /// requests on the client lane at `session_dup_ppm` and holds the copy
    /// back (`retrying.rs`).
    RetryingClients { session_dup_ppm: u64 },
}

/// Share of seeds whose clients retry through sessions.
pub const RETRYING_SEEDS_PPM: u64 = 350_000;
/// Chance that a session request on the client lane is duplicated, at
/// least (a seed of that workload draws one up to [`SESSION_DUP_PPM_MAX`]).
pub const SESSION_DUP_PPM_MIN: u64 = 150_000;
/// Chance that a session request on the client lane is duplicated, at most.
pub const SESSION_DUP_PPM_MAX: u64 = 400_000;

impl Workload {
    /// The workload `seed` draws ([`RETRYING_SEEDS_PPM`] of the seeds
    /// retry), from a stream of its own so that the seed's other options
    /// stay what they were before this draw existed.
    pub fn draw(seed: u64) -> Self {
        match Self::drawn(seed) {
            (retrying, true) => retrying,
            (_, false) => Self::Mixed,
        }
    }

    /// The retrying-clients workload as `seed` draws its rates, whether
    /// or not the seed turns it on (`--bug no-dedup` needs it).
    pub fn retrying(seed: u64) -> Self {
        Self::drawn(seed).0
    }

    /// The seed's retrying-clients rates, and whether it turns them on.
    fn drawn(seed: u64) -> (Self, bool) {
        let mut rng = SplitMix64::new(seed ^ 0x7265_7472_7969_6e67);
        let session_dup_ppm =
            SESSION_DUP_PPM_MIN + rng.below(SESSION_DUP_PPM_MAX - SESSION_DUP_PPM_MIN + 1);
        let on = rng.below(1_000_000) < RETRYING_SEEDS_PPM;
        (Self::RetryingClients { session_dup_ppm }, on)
    }

    /// Chance that a session request on the client lane is duplicated.
    pub fn session_dup_ppm(self) -> u64 {
        match self {
            Self::Mixed => 0,
            Self::RetryingClients { session_dup_ppm } => session_dup_ppm,
        }
    }
}

impl fmt::Display for Workload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Mixed => write!(f, "mixed"),
            Self::RetryingClients { session_dup_ppm } => {
                write!(f, "retrying-clients(session_dup={session_dup_ppm}ppm)")
            }
        }
    }
}

/// One failure domain of the topology.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DomainSpec {
    pub nodes: u64,
    /// A witness domain: its nodes host the witness voters placement adds.
    pub witness: bool,
}

/// Latency of one kind of link: `base_us` plus up to `jitter_us` uniformly.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Latency {
    pub base_us: u64,
    pub jitter_us: u64,
}

/// The default [`SimOptions::dr_snapshot_ppm`]: one operation in 50.
pub const DR_SNAPSHOT_PPM: u64 = 20_000;

/// Everything a run varies.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SimOptions {
    pub seed: u64,
    pub domains: Vec<DomainSpec>,
    /// Between nodes of one domain.
    pub intra_domain: Latency,
    /// Between domains `i < j`, indexed `[i][j]`.
    pub inter_domain: Vec<Vec<Latency>>,
    pub loss_ppm: u64,
    pub dup_ppm: u64,
    /// Chance that one message is delayed by a spike of `spike_ms`.
    pub spike_ppm: u64,
    pub spike_ms: u64,
    /// Time one group commit (write + fdatasync) keeps a node's disk busy.
    pub fsync_us: u64,
    /// Length of the safety phase (faults on), virtual seconds.
    pub safety_s: u64,
    /// Mean pause between injected faults.
    pub fault_interval_ms: u64,
    /// Relative weights of the fault kinds: crash, partition, isolate domain.
    pub fault_weights: [u64; 3],
    /// Chance a crash tears the unsynced tail instead of dropping it.
    pub tear_ppm: u64,
    pub clients: u64,
    pub write_ppm: u64,
    /// Chance that a client operation is a DR snapshot instead (not drawn
    /// from the seed, so the seeds' other draws stay as they were).
    pub dr_snapshot_ppm: u64,
    pub think_ms_max: u64,
    /// Raft snapshot (and log purge) every this many entries; 0: never.
    pub snapshot_logs: u64,
    /// Volumes created at boot (each its own Raft group, placed by
    /// fabric's `control::place`).
    pub volumes: u64,
    /// Data replicas of every volume (one per data domain); with two, the
    /// placement adds a witness voter.
    pub replicas: u8,
    /// Witness replicas only vote (`elect(false)`). Production lets them
    /// campaign; never set by a seed (see `tests/regressions.rs`).
    pub witness_never_campaigns: bool,
    /// Storage and control-plane faults (drawn from a stream of their own).
    pub env: EnvFaults,
    /// What the clients do (drawn from a stream of its own).
    pub workload: Workload,
    /// The repair workload, when on (needs coordinators to repair; its
    /// stale group changes run without them).
    pub repair: Option<RepairWorkload>,
    pub bug: Option<PlantedBug>,
}

/// Faults of a node's environment beyond the network: its disk, the
/// control-plane store ("etcd") and its clock. Drawn from a stream of their
/// own, so the other options of a seed stay what they were before these.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EnvFaults {
    /// Whether the EIO faults below are injected.
    pub eio: bool,
    /// Nodes (1-based ids) whose disk fails writes and fdatasyncs with EIO
    /// at `eio_write_ppm` per operation during the safety phase.
    pub eio_write_nodes: Vec<u64>,
    pub eio_write_ppm: u32,
    /// Nodes whose disk fails reads with EIO at `eio_read_ppm`.
    pub eio_read_nodes: Vec<u64>,
    pub eio_read_ppm: u32,
    /// When (ms into the safety phase) one byte of a sealed segment of one
    /// node's disk is flipped (latent corruption), if at all.
    pub corrupt_at_ms: Option<u64>,
    /// Relative weights of the control-plane faults, next to
    /// `fault_weights`: store outage, one node cut off from the store.
    pub control_weights: [u64; 2],
    /// Coordinators run on every node (only the elected one acts).
    pub coordinators: bool,
    /// Per node (index = id - 1): its clock's rate in ppm of true time
    /// (1_000_000: exact; below: a slow clock). It stretches what the
    /// simulator times for that node — its disk ticks, its supervisor, its
    /// registration's keep-alive period — and every span of its Raft
    /// groups (heartbeat interval, election timeouts and so the leader
    /// lease: `node::raft_config`), since openraft only times spans. The
    /// registration's and coordinator's own reads of the runtime's one
    /// virtual clock are not skewed (see `control.rs`).
    pub clock_rate_ppm: Vec<u64>,
}

/// Share of seeds whose environment faults are on.
pub const ENV_SEEDS_PPM: u64 = 500_000;
/// Share of those whose disks also fail with EIO.
pub const EIO_SEEDS_PPM: u64 = 500_000;
/// Chance that a node's clock drifts at all.
pub const CLOCK_DRIFT_PPM: u64 = 400_000;
/// The most a drifting clock is off, in ppm of its rate.
pub const CLOCK_DRIFT_MAX_PPM: u64 = 300_000;

impl EnvFaults {
    /// No disk, store or clock faults (and no coordinators).
    pub fn none() -> Self {
        Self {
            eio: false,
            eio_write_nodes: Vec::new(),
            eio_write_ppm: 0,
            eio_read_nodes: Vec::new(),
            eio_read_ppm: 0,
            corrupt_at_ms: None,
            control_weights: [0, 0],
            coordinators: false,
            clock_rate_ppm: vec![1_000_000; NODES_MAX],
        }
    }

    /// The environment faults `seed` draws for a run whose safety phase
    /// lasts `safety_s` seconds among `nodes` nodes (EIO on or off as the
    /// seed draws it), and whether the seed turns them on at all
    /// ([`ENV_SEEDS_PPM`]).
    pub fn draw(seed: u64, safety_s: u64, nodes: u64) -> (Self, bool) {
        let mut rng = SplitMix64::new(seed ^ 0x656e_7666_6175_6c74);
        let pick_nodes = |rng: &mut SplitMix64, max: u64| -> Vec<u64> {
            let count = rng.below(max + 1);
            let mut chosen: Vec<u64> = Vec::new();
            for _ in 0..count {
                let id = 1 + rng.below(nodes);
                if !chosen.contains(&id) {
                    chosen.push(id);
                }
            }
            chosen.sort_unstable();
            chosen
        };
        let eio_write_nodes = pick_nodes(&mut rng, 2);
        let eio_write_ppm = 200 + rng.below(2_801) as u32;
        let eio_read_nodes = pick_nodes(&mut rng, 1);
        let eio_read_ppm = 200 + rng.below(2_801) as u32;
        let corrupt_at_ms = (rng.below(3) == 0).then(|| {
            let lo = safety_s * 1_000 / 4;
            lo + rng.below(safety_s * 1_000 / 2)
        });
        let control_weights = [rng.below(3), rng.below(3)];
        let coordinators = rng.below(4) != 0;
        let clock_rate_ppm = (0..NODES_MAX)
            .map(|_| match rng.below(1_000_000) < CLOCK_DRIFT_PPM {
                true => 1_000_000 - CLOCK_DRIFT_MAX_PPM + rng.below(2 * CLOCK_DRIFT_MAX_PPM + 1),
                false => 1_000_000,
            })
            .collect();
        // Drawn last, so every draw above stays what it was before these
        // switches existed (the seeds in `tests/regressions.rs`).
        let on = rng.below(1_000_000) < ENV_SEEDS_PPM;
        let eio = rng.below(1_000_000) < EIO_SEEDS_PPM;
        let env = Self {
            eio,
            eio_write_nodes,
            eio_write_ppm,
            eio_read_nodes,
            eio_read_ppm,
            corrupt_at_ms,
            control_weights,
            coordinators,
            clock_rate_ppm,
        };
        (env, on)
    }

    /// Whether no environment fault is on.
    pub fn is_none(&self) -> bool {
        *self == Self::none()
    }

    /// The clock rate of node `id`, ppm of true time.
    pub fn clock_rate(&self, id: u64) -> u64 {
        self.clock_rate_ppm
            .get(id.saturating_sub(1) as usize)
            .copied()
            .unwrap_or(1_000_000)
    }

    /// A span of `node_time` on node `id`'s clock, in true time.
    pub fn true_span(&self, id: u64, node_time: std::time::Duration) -> std::time::Duration {
        let nanos = node_time.as_nanos() * 1_000_000 / u128::from(self.clock_rate(id).max(1));
        std::time::Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
    }
}

fn latency(rng: &mut SplitMix64, lo_us: u64, hi_us: u64) -> Latency {
    let base_us = lo_us + rng.below(hi_us - lo_us + 1);
    let jitter_us = rng.below(base_us + 1);
    Latency { base_us, jitter_us }
}

impl SimOptions {
    /// The options of `seed`.
    pub fn from_seed(seed: u64) -> Self {
        let mut rng = SplitMix64::new(seed ^ 0x6f70_7469_6f6e_7321);
        let data_domains = 2 + rng.below(2);
        let mut domains = Vec::new();
        let mut total = 0;
        for d in 0..data_domains {
            let left = data_domains - d;
            let room = (NODES_MAX as u64 - 1 - total) / left;
            let nodes = 1 + rng.below(room.clamp(1, 3));
            total += nodes;
            domains.push(DomainSpec {
                nodes,
                witness: false,
            });
        }
        if data_domains == 2 || (rng.below(2) == 0 && total < NODES_MAX as u64) {
            domains.push(DomainSpec {
                nodes: 1,
                witness: true,
            });
        }
        let intra_domain = latency(&mut rng, 50, 400);
        let inter_domain = (0..domains.len())
            .map(|_| {
                (0..domains.len())
                    .map(|_| latency(&mut rng, 500, 15_000))
                    .collect()
            })
            .collect();
        Self {
            seed,
            domains,
            intra_domain,
            inter_domain,
            loss_ppm: rng.below(20_001),
            dup_ppm: rng.below(10_001),
            spike_ppm: rng.below(2_001),
            spike_ms: 20 + rng.below(481),
            fsync_us: 100 + rng.below(2_901),
            safety_s: 8 + rng.below(13),
            fault_interval_ms: 800 + rng.below(3_201),
            fault_weights: [1 + rng.below(4), 1 + rng.below(4), rng.below(3)],
            tear_ppm: rng.below(500_001),
            clients: 3 + rng.below(6),
            write_ppm: 300_000 + rng.below(500_001),
            dr_snapshot_ppm: DR_SNAPSHOT_PPM,
            think_ms_max: rng.below(31),
            snapshot_logs: [0, 64, 256, 1_000][rng.below(4) as usize],
            volumes: 0,
            replicas: 0,
            witness_never_campaigns: false,
            env: EnvFaults::none(),
            workload: Workload::draw(seed),
            repair: None,
            bug: None,
        }
        .with_volumes(&mut rng)
        .with_env()
    }

    /// The options with `bug` planted. `NoDedup` also turns the seed's
    /// retrying-clients workload on (the only one sending session
    /// requests) if the seed drew the mixed one.
    pub fn with_bug(mut self, bug: PlantedBug) -> Self {
        self.bug = Some(bug);
        if bug == PlantedBug::NoDedup && self.workload == Workload::Mixed {
            self.workload = Workload::retrying(self.seed);
        }
        if bug == PlantedBug::UnfencedMembership && self.repair.is_none() {
            let repair = RepairWorkload::draw(self.seed).0;
            return self.with_repair(repair);
        }
        self
    }

    /// The options with the clients' workload `workload` instead of the
    /// drawn one.
    pub fn with_workload(mut self, workload: Workload) -> Self {
        self.workload = workload;
        self
    }

    /// Draws the volume count and replica count (after every other draw,
    /// so the rest of the options stay what they were before volumes).
    fn with_volumes(mut self, rng: &mut SplitMix64) -> Self {
        self.volumes = SIM_VOLUMES_MIN + rng.below(SIM_VOLUMES_MAX - SIM_VOLUMES_MIN + 1);
        let data = self.domains.iter().filter(|d| !d.witness).count() as u8;
        let witness = self.domains.iter().any(|d| d.witness);
        self.replicas = match rng.below(2) {
            0 if data > 2 && witness => 2,
            _ => data,
        };
        self
    }

    /// The options of `seed` on the topology `spec` instead of the drawn
    /// one: comma-separated domains, `N` for a data domain of N nodes,
    /// `wN` for a witness domain of N nodes (e.g. `2,2,2,w1`). Latencies
    /// of domains the seed did not draw are drawn from the seed too.
    pub fn with_topology(seed: u64, spec: &str) -> Result<Self, String> {
        let mut domains = Vec::new();
        for part in spec.split(',').map(str::trim) {
            let (witness, count) = match part.strip_prefix('w') {
                Some(count) => (true, count),
                None => (false, part),
            };
            let nodes: u64 = count
                .parse()
                .map_err(|_| format!("bad domain {part:?} in topology {spec:?}"))?;
            if nodes == 0 {
                return Err(format!("empty domain in topology {spec:?}"));
            }
            domains.push(DomainSpec { nodes, witness });
        }
        let data = domains.iter().filter(|d| !d.witness).count();
        let total: u64 = domains.iter().map(|d| d.nodes).sum();
        if data == 0 || total as usize > NODES_MAX {
            return Err(format!(
                "topology {spec:?} needs a data domain and at most {NODES_MAX} nodes"
            ));
        }
        let mut options = Self::from_seed(seed);
        let mut rng = SplitMix64::new(seed ^ 0x746f_706f_6c6f_6779);
        options.inter_domain = (0..domains.len())
            .map(|a| {
                (0..domains.len())
                    .map(
                        |b| match options.inter_domain.get(a).and_then(|r| r.get(b)) {
                            Some(drawn) => *drawn,
                            None => latency(&mut rng, 500, 15_000),
                        },
                    )
                    .collect()
            })
            .collect();
        options.domains = domains;
        Ok(options.with_volumes(&mut rng).with_env())
    }

    /// Draws the environment faults (disk, store, clocks) for the topology:
    /// on in [`ENV_SEEDS_PPM`] of the seeds, [`EnvFaults::none`] in the
    /// others.
    fn with_env(mut self) -> Self {
        let (env, on) = EnvFaults::draw(self.seed, self.safety_s, self.node_count());
        self.env = if on { env } else { EnvFaults::none() };
        let (repair, on) = RepairWorkload::draw(self.seed);
        if on && self.env.coordinators {
            self.with_repair(repair)
        } else {
            self
        }
    }

    /// The options with the repair workload `repair` on (its safety phase
    /// is long enough for a repair: [`Self::safety_phase_s`]).
    pub fn with_repair(mut self, repair: RepairWorkload) -> Self {
        self.repair = Some(repair);
        self
    }

    /// The options without the repair workload (as seeds found before it
    /// existed ran).
    pub fn without_repair(mut self) -> Self {
        self.repair = None;
        self
    }

    /// How long the safety phase lasts: `safety_s`, and under the repair
    /// workload at least long enough for a repair.
    pub fn safety_phase_s(&self) -> u64 {
        match self.repair {
            Some(_) => self.safety_s.max(crate::repair::REPAIR_SAFETY_S_MIN),
            None => self.safety_s,
        }
    }

    /// The seed's environment faults, on whatever the seed says; EIO as
    /// the seed draws it, or as `eio` says (`--env on`, `--eio on|off`).
    pub fn with_env_faults(mut self, eio: Option<bool>) -> Self {
        let (env, _) = EnvFaults::draw(self.seed, self.safety_s, self.node_count());
        self.env = env;
        if let Some(eio) = eio {
            self.env.eio = eio;
        }
        self
    }

    /// No environment faults (`--env off`).
    pub fn without_env_faults(mut self) -> Self {
        self.env = EnvFaults::none();
        self
    }

    /// Nodes in the cluster.
    pub fn node_count(&self) -> u64 {
        self.domains.iter().map(|d| d.nodes).sum()
    }

    /// The latency between domains `a` and `b`.
    pub fn link(&self, a: usize, b: usize) -> Latency {
        match a.cmp(&b) {
            std::cmp::Ordering::Equal => self.intra_domain,
            std::cmp::Ordering::Less => self.inter_domain[a][b],
            std::cmp::Ordering::Greater => self.inter_domain[b][a],
        }
    }
}

impl fmt::Display for SimOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let topology: Vec<String> = self
            .domains
            .iter()
            .enumerate()
            .map(|(i, d)| {
                let role = if d.witness { "witness" } else { "data" };
                format!("d{i}:{role}x{}", d.nodes)
            })
            .collect();
        writeln!(f, "seed={} topology=[{}]", self.seed, topology.join(" "))?;
        let mut links = vec![format!(
            "intra={}+{}us",
            self.intra_domain.base_us, self.intra_domain.jitter_us
        )];
        for a in 0..self.domains.len() {
            for b in a + 1..self.domains.len() {
                let l = self.link(a, b);
                links.push(format!("d{a}-d{b}={}+{}us", l.base_us, l.jitter_us));
            }
        }
        writeln!(f, "  latency {}", links.join(" "))?;
        writeln!(
            f,
            "  faults loss={}ppm dup={}ppm spike={}ppm/{}ms fsync={}us safety={}s every~{}ms weights(crash,partition,isolate)={:?} tear={}ppm",
            self.loss_ppm,
            self.dup_ppm,
            self.spike_ppm,
            self.spike_ms,
            self.fsync_us,
            self.safety_phase_s(),
            self.fault_interval_ms,
            self.fault_weights,
            self.tear_ppm
        )?;
        let env = &self.env;
        if env.is_none() {
            writeln!(f, "  env off")?;
        } else {
            let drift: Vec<String> = (1..=self.node_count())
                .filter(|id| env.clock_rate(*id) != 1_000_000)
                .map(|id| format!("n{id}:{}ppm", env.clock_rate(id)))
                .collect();
            let corrupt = env
                .corrupt_at_ms
                .map_or("never".to_string(), |ms| format!("{ms}ms"));
            writeln!(
                f,
                "  env eio={} eio_write={:?}@{}ppm eio_read={:?}@{}ppm corrupt_at={corrupt} weights(etcd_outage,etcd_cut)={:?} coordinators={} clock_rate=[{}]",
                env.eio,
                env.eio_write_nodes,
                env.eio_write_ppm,
                env.eio_read_nodes,
                env.eio_read_ppm,
                env.control_weights,
                env.coordinators,
                drift.join(" ")
            )?;
        }
        write!(
            f,
            "  workload volumes={}x{}replicas clients={} writes={}ppm dr_snapshots={}ppm think<={}ms blocks={} snapshot_logs={} witness_never_campaigns={} kind={} {} bug={:?}",
            self.volumes,
            self.replicas,
            self.clients,
            self.write_ppm,
            self.dr_snapshot_ppm,
            self.think_ms_max,
            VOLUME_BLOCKS,
            self.snapshot_logs,
            self.witness_never_campaigns,
            self.workload,
            self.repair
                .map_or("repair=off".to_string(), |r| r.to_string()),
            self.bug
        )
    }
}
