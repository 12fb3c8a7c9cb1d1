//! Seeds that failed while the simulator grew, replayed. Each test pins
//! the options its seeds run with (as `metro-sim options` prints them: a
//! change in how options derive from a seed fails the test instead of
//! silently retargeting it), requires a clean verdict, and, where the run
//! report can show it, asserts that the scenario the test is named for
//! happened.
//!
//! Where a seed stopped reaching its scenario (the derivation or the
//! simulation changed after it was found), a new seed that reaches it was
//! found by a scan and replaced it; the test's comment says how.
//!
//! Every seed here runs the workload it was found with, the mixed one
//! ([`mixed`]): the retrying-clients and repair workloads came later.

use metro_sim::options::{SimOptions, Workload};
use metro_sim::run::{RunReport, run_seed_untraced};

/// `options`, after requiring them to be exactly `pinned` (the lines
/// `metro-sim options` prints).
fn pinned(options: SimOptions, pinned: &[&str]) -> SimOptions {
    assert_eq!(
        options.to_string(),
        pinned.join("\n"),
        "seed {} no longer derives the options it was kept for: find a seed that reaches \
         the test's scenario under the new derivation, then pin its options",
        options.seed
    );
    options
}

/// Runs `options` and requires a clean verdict.
fn clean(options: SimOptions) -> RunReport {
    let seed = options.seed;
    let report = run_seed_untraced(options);
    assert_eq!(
        report.violations, 0,
        "seed {seed} fails; replay: metro-sim run --seed {seed} (with the test's --env/--eio)\n{:#?}",
        report.messages
    );
    report
}

/// Runs `options`, pinned (see [`pinned`]), and requires a clean verdict.
fn passes(options: SimOptions, pins: &[&str]) -> RunReport {
    clean(pinned(options, pins))
}

/// The options of `seed` with the mixed workload, whatever it draws.
fn mixed(seed: u64) -> SimOptions {
    SimOptions::from_seed(seed)
        .with_workload(Workload::Mixed)
        .without_repair()
}

/// The seed without environment faults, as the seeds found before those
/// existed ran (`--env off`).
fn no_env(seed: u64) -> SimOptions {
    mixed(seed).without_env_faults()
}

/// The seed's environment faults on, EIO as `eio` says (`--env on --eio
/// on|off`).
fn env_faults(seed: u64, eio: bool) -> SimOptions {
    mixed(seed).with_env_faults(Some(eio))
}

/// Two data replicas and a witness, where the witness won the first
/// election (the one its own initialization starts) and then held the
/// longest log: these stalled (no write in the 30 s liveness budget) while
/// the simulator kept witnesses from campaigning. As in production,
/// witnesses now campaign, and the seeds pass.
#[test]
fn witness_with_longest_log_may_lead() {
    for (seed, pinned) in [(97, OPTIONS_97), (119, OPTIONS_119), (171, OPTIONS_171)] {
        let report = passes(no_env(seed), pinned);
        assert!(
            report.roles.witness_terms_led > 0,
            "seed {seed}: no witness led: {:?}",
            report.roles
        );
    }
}

const OPTIONS_97: &[&str] = &[
    "seed=97 topology=[d0:datax1 d1:datax2 d2:datax2 d3:witnessx1]",
    "  latency intra=54+15us d0-d1=5990+5121us d0-d2=3982+3092us d0-d3=4145+3159us d1-d2=12579+3329us d1-d3=13790+4181us d2-d3=8832+5685us",
    "  faults loss=7524ppm dup=7138ppm spike=293ppm/450ms fsync=243us safety=9s every~3875ms weights(crash,partition,isolate)=[3, 1, 2] tear=263521ppm",
    "  env off",
    "  workload volumes=4x2replicas clients=6 writes=765996ppm dr_snapshots=20000ppm think<=5ms blocks=32 snapshot_logs=256 witness_never_campaigns=false kind=mixed repair=off bug=None",
];
const OPTIONS_119: &[&str] = &[
    "seed=119 topology=[d0:datax2 d1:datax2 d2:witnessx1]",
    "  latency intra=274+156us d0-d1=10168+5325us d0-d2=4353+2692us d1-d2=12681+12346us",
    "  faults loss=9041ppm dup=9761ppm spike=1413ppm/143ms fsync=296us safety=17s every~2435ms weights(crash,partition,isolate)=[3, 4, 0] tear=485305ppm",
    "  env off",
    "  workload volumes=3x2replicas clients=8 writes=734030ppm dr_snapshots=20000ppm think<=15ms blocks=32 snapshot_logs=0 witness_never_campaigns=false kind=mixed repair=off bug=None",
];
const OPTIONS_171: &[&str] = &[
    "seed=171 topology=[d0:datax3 d1:datax3 d2:witnessx1]",
    "  latency intra=100+27us d0-d1=7968+1398us d0-d2=5172+775us d1-d2=5340+153us",
    "  faults loss=11623ppm dup=1897ppm spike=167ppm/151ms fsync=212us safety=13s every~2158ms weights(crash,partition,isolate)=[4, 4, 2] tear=362198ppm",
    "  env off",
    "  workload volumes=4x2replicas clients=5 writes=700843ppm dr_snapshots=20000ppm think<=16ms blocks=32 snapshot_logs=64 witness_never_campaigns=false kind=mixed repair=off bug=None",
];

/// A host that retried a forwarded write through another node after the
/// first hop timed out (the write may have been applied there) and then
/// reported "no leader": the client took the write as never applied, and a
/// later read saw it (seed 57: block 29, write 41). The retry was reverted:
/// a hop that may have delivered the request ends the attempt with an
/// outcome-unknown error.
///
/// The report shows the scenario's outcome side: writes whose client was
/// left not knowing (outcome unknown) that a later read saw applied.
#[test]
fn a_forwarded_write_that_timed_out_is_never_reported_as_not_applied() {
    for (seed, pinned) in [(46, OPTIONS_46), (57, OPTIONS_57), (122, OPTIONS_122)] {
        let report = passes(no_env(seed), pinned);
        assert!(
            report.ops.writes_unknown_seen > 0,
            "seed {seed}: no write of unknown outcome took effect: {:?}",
            report.ops
        );
    }
}

const OPTIONS_46: &[&str] = &[
    "seed=46 topology=[d0:datax3 d1:datax2 d2:witnessx1]",
    "  latency intra=357+204us d0-d1=10297+5766us d0-d2=9101+5094us d1-d2=2251+1535us",
    "  faults loss=6070ppm dup=4675ppm spike=441ppm/407ms fsync=1541us safety=19s every~2699ms weights(crash,partition,isolate)=[4, 4, 0] tear=191509ppm",
    "  env off",
    "  workload volumes=3x2replicas clients=4 writes=605245ppm dr_snapshots=20000ppm think<=30ms blocks=32 snapshot_logs=0 witness_never_campaigns=false kind=mixed repair=off bug=None",
];
const OPTIONS_57: &[&str] = &[
    "seed=57 topology=[d0:datax3 d1:datax3 d2:witnessx1]",
    "  latency intra=65+9us d0-d1=10688+4706us d0-d2=11804+11784us d1-d2=2360+2046us",
    "  faults loss=12130ppm dup=608ppm spike=1669ppm/330ms fsync=1288us safety=8s every~1432ms weights(crash,partition,isolate)=[3, 1, 0] tear=178541ppm",
    "  env off",
    "  workload volumes=3x2replicas clients=6 writes=633910ppm dr_snapshots=20000ppm think<=4ms blocks=32 snapshot_logs=256 witness_never_campaigns=false kind=mixed repair=off bug=None",
];
const OPTIONS_122: &[&str] = &[
    "seed=122 topology=[d0:datax1 d1:datax3 d2:witnessx1]",
    "  latency intra=395+312us d0-d1=9102+4585us d0-d2=5817+5368us d1-d2=6497+1207us",
    "  faults loss=10121ppm dup=5670ppm spike=2000ppm/148ms fsync=1150us safety=15s every~2304ms weights(crash,partition,isolate)=[3, 4, 0] tear=328640ppm",
    "  env off",
    "  workload volumes=4x2replicas clients=8 writes=551310ppm dr_snapshots=20000ppm think<=3ms blocks=32 snapshot_logs=1000 witness_never_campaigns=false kind=mixed repair=off bug=None",
];

/// The same seeds with witnesses that never campaign (`elect(false)` on
/// every witness replica once it is open), which production does not do.
///
/// Replay: `metro-sim run --seed 97 --witness-never-campaigns` (also 119,
/// 171). Diagnosis so far: the witness (node 6 of 97) led term 1 and holds
/// the longest log (last index 41; data nodes 1 and 2 hold 36 and 29). In
/// the liveness phase, with every fault healed, node 2 stays a candidate in
/// term 9, node 1 shows a vote for node 2 in term 9 although its own log is
/// longer, and the witness stays in term 2: no leader for 30 virtual
/// seconds, though 1 and 2 together are a majority and 1's log is the
/// longest of the two. Every Raft core still answers queries. Whether this
/// is openraft's election under `enable_elect = false` or stalled log I/O in
/// fabric's storage is not settled; a witness role that must never lead
/// needs it settled first (fabric would have to set `elect(false)` itself,
/// and the metadata must let a data node with a shorter log win).
///
/// With the options pinned here (4, 3 and 4 volumes; 2 replicas and a
/// witness each) all three seeds pass: the stall no longer reproduces.
/// Whether it was fixed or these seeds were retargeted before their
/// options were pinned is not settled; the test stays ignored until a seed
/// that stalls is found again.
#[test]
#[ignore = "liveness stall with non-campaigning witnesses: see the comment"]
fn non_campaigning_witness_stalls() {
    for (seed, pins) in [(97, OPTIONS_97), (119, OPTIONS_119), (171, OPTIONS_171)] {
        let mut options = pinned(no_env(seed), pins);
        options.witness_never_campaigns = true;
        clean(options);
    }
}

/// Seeds whose outage window was wrongly held to progress while a node
/// whose disk had failed still awaited its supervisor (a modelling bug,
/// fixed: a window that begins while a node awaits its supervisor, or in
/// which a disk returns an I/O error, is not clean), with EIO faults on.
///
/// Seed 64 no longer reached this once its options were pinned (no etcd
/// outage, no supervisor restart). Seed 231 (`--env on --eio on`) replaces
/// it, found by scanning seeds 0..450 of `--env on --eio on` with an etcd
/// outage weight for an outage window that begins while a node whose disk
/// failed awaits its supervisor (`faults.outages_awaiting_supervisor`;
/// eight seeds from 231 on, none below): its one etcd outage (`outages ==
/// 1`) begins so (`outages_awaiting_supervisor == 1`, `outages_disk_failed
/// == 1`) and the supervisor then restarts the node (`supervisor_restarts
/// == 1`).
#[test]
fn outage_window_with_failed_disk_is_not_clean() {
    let report = passes(env_faults(231, true), OPTIONS_231_EIO);
    assert!(
        report.faults.outages_awaiting_supervisor > 0,
        "no outage window began while a node awaited its supervisor: {:?}",
        report.faults
    );
    assert!(
        report.env.supervisor_restarts > 0,
        "no supervisor restart: {:?}",
        report.env
    );
}

const OPTIONS_231_EIO: &[&str] = &[
    "seed=231 topology=[d0:datax2 d1:datax1 d2:witnessx1]",
    "  latency intra=58+21us d0-d1=11930+2553us d0-d2=7697+5117us d1-d2=5337+5040us",
    "  faults loss=7916ppm dup=7255ppm spike=817ppm/476ms fsync=1603us safety=14s every~2920ms weights(crash,partition,isolate)=[4, 1, 0] tear=129161ppm",
    "  env eio=true eio_write=[2, 3]@2049ppm eio_read=[]@602ppm corrupt_at=never weights(etcd_outage,etcd_cut)=[2, 1] coordinators=true clock_rate=[n1:709718ppm n4:1039444ppm]",
    "  workload volumes=3x2replicas clients=8 writes=793720ppm dr_snapshots=20000ppm think<=22ms blocks=32 snapshot_logs=256 witness_never_campaigns=false kind=mixed repair=off bug=None",
];

/// A leader that restarted before its followers campaigned resumed its
/// term (openraft's `enable_leader_restore`, on by default) with the
/// committed log id it read back from disk. That lags what it had
/// acknowledged: fabric queues `save_committed` and the apply batches
/// without awaiting them, and the crash dropped them. Its read-index reads
/// then used the stale committed index and missed acknowledged writes.
///
/// Seed 94 (`--env on --eio off`): node 2, leader of vol-1 in term 2,
/// acknowledged write 222 at index 65 and crashed 0.3 ms later with 64 as
/// its durable committed index; restarted 0.75 s later as leader of term 2
/// (followers had not campaigned yet) and a sweep read blocks 28-29 at
/// index 64, seeing writes 188 and 152 instead of 222. Seeds 44 and 94
/// with EIO (`--env on --eio on`) are the same (44: the witness, node 3,
/// restored as leader with committed 160 after acknowledging write 290 at
/// 161); EIO played no part in them. With the `apply-rider` patch in
/// `fabric/wip` (the committed id rides in the next log write, so it lags
/// more), 31 of seeds 0..200 failed this way with every environment fault
/// off. Fixed in fabric: `host::base_raft_config` turns leader restore off,
/// so a restarted leader campaigns and commits a blank entry of a new term
/// before it serves.
///
/// The report shows only that nodes crashed and restarted, not that a
/// leader did before its followers campaigned.
#[test]
fn a_restarted_leader_does_not_serve_stale_reads() {
    let runs = [
        (env_faults(94, false), OPTIONS_94),
        (env_faults(44, true), OPTIONS_44_EIO),
        (env_faults(94, true), OPTIONS_94_EIO),
    ];
    for (options, pinned) in runs {
        let seed = options.seed;
        let report = passes(options, pinned);
        assert!(report.faults.crashes > 0, "seed {seed}: no crash");
    }
}

const OPTIONS_94: &[&str] = &[
    "seed=94 topology=[d0:datax1 d1:datax3 d2:witnessx1]",
    "  latency intra=60+26us d0-d1=5962+1269us d0-d2=13458+12381us d1-d2=14808+8197us",
    "  faults loss=1678ppm dup=5049ppm spike=1923ppm/429ms fsync=1652us safety=17s every~1851ms weights(crash,partition,isolate)=[2, 3, 1] tear=159751ppm",
    "  env eio=false eio_write=[5]@274ppm eio_read=[2]@1507ppm corrupt_at=never weights(etcd_outage,etcd_cut)=[1, 2] coordinators=true clock_rate=[n1:1225339ppm n3:1255656ppm n4:780691ppm]",
    "  workload volumes=3x2replicas clients=8 writes=598846ppm dr_snapshots=20000ppm think<=4ms blocks=32 snapshot_logs=64 witness_never_campaigns=false kind=mixed repair=off bug=None",
];
const OPTIONS_44_EIO: &[&str] = &[
    "seed=44 topology=[d0:datax1 d1:datax1 d2:witnessx1]",
    "  latency intra=65+61us d0-d1=4191+2030us d0-d2=11810+1340us d1-d2=2985+592us",
    "  faults loss=8520ppm dup=4891ppm spike=1337ppm/346ms fsync=2038us safety=13s every~2985ms weights(crash,partition,isolate)=[4, 1, 1] tear=34050ppm",
    "  env eio=true eio_write=[3]@888ppm eio_read=[]@2125ppm corrupt_at=never weights(etcd_outage,etcd_cut)=[1, 0] coordinators=true clock_rate=[n1:1285707ppm n2:1037765ppm]",
    "  workload volumes=2x2replicas clients=6 writes=554970ppm dr_snapshots=20000ppm think<=30ms blocks=32 snapshot_logs=0 witness_never_campaigns=false kind=mixed repair=off bug=None",
];
const OPTIONS_94_EIO: &[&str] = &[
    "seed=94 topology=[d0:datax1 d1:datax3 d2:witnessx1]",
    "  latency intra=60+26us d0-d1=5962+1269us d0-d2=13458+12381us d1-d2=14808+8197us",
    "  faults loss=1678ppm dup=5049ppm spike=1923ppm/429ms fsync=1652us safety=17s every~1851ms weights(crash,partition,isolate)=[2, 3, 1] tear=159751ppm",
    "  env eio=true eio_write=[5]@274ppm eio_read=[2]@1507ppm corrupt_at=never weights(etcd_outage,etcd_cut)=[1, 2] coordinators=true clock_rate=[n1:1225339ppm n3:1255656ppm n4:780691ppm]",
    "  workload volumes=3x2replicas clients=8 writes=598846ppm dr_snapshots=20000ppm think<=4ms blocks=32 snapshot_logs=64 witness_never_campaigns=false kind=mixed repair=off bug=None",
];

/// Found by the disk EIO faults on reads: kvstore's compaction asserted
/// (`compaction.rs`, "victim fully relocated") when a read of its victim
/// failed with EIO; it now refuses with `Corrupt`, poisoning the store, and
/// the supervisor restarts the node (`--env on --eio on`).
///
/// Seed 76 no longer reached this once its options were pinned (no
/// supervisor restart). Seed 151 (`--env on --eio on`) replaces it, found
/// by scanning the first 120 seeds of 0..3000 whose pinned options inject
/// EIO on reads only (`eio_write=[]`, `eio_read` non-empty) for a
/// supervisor restart: node 3's disk fails one read (`disk_errors == 1`)
/// and its supervisor restarts it (`supervisor_restarts == 1`). With no
/// EIO on writes, every disk error here is a failed read, so the restart
/// is one a failed read caused. The report cannot show whether that read
/// was compaction's.
#[test]
fn eio_on_read_during_compaction_poisons_the_store() {
    let report = passes(env_faults(151, true), OPTIONS_151_EIO);
    assert!(
        report.faults.disk_errors > 0,
        "no read failed: {:?}",
        report.faults
    );
    assert!(
        report.env.supervisor_restarts > 0,
        "no supervisor restart after a failed read: {:?}",
        report.env
    );
}

const OPTIONS_151_EIO: &[&str] = &[
    "seed=151 topology=[d0:datax2 d1:datax1 d2:datax3 d3:witnessx1]",
    "  latency intra=358+209us d0-d1=574+532us d0-d2=9290+7862us d0-d3=9244+262us d1-d2=1500+281us d1-d3=8798+1483us d2-d3=7508+7496us",
    "  faults loss=5256ppm dup=6861ppm spike=1071ppm/226ms fsync=2569us safety=18s every~1516ms weights(crash,partition,isolate)=[1, 3, 2] tear=489814ppm",
    "  env eio=true eio_write=[]@2098ppm eio_read=[3]@909ppm corrupt_at=never weights(etcd_outage,etcd_cut)=[1, 1] coordinators=true clock_rate=[n4:1103197ppm]",
    "  workload volumes=4x2replicas clients=7 writes=360671ppm dr_snapshots=20000ppm think<=3ms blocks=32 snapshot_logs=256 witness_never_campaigns=false kind=mixed repair=off bug=None",
];

/// Seeds that lost acknowledged writes with the environment faults on and
/// EIO off when those faults were parked (`--env on --eio off`); they pass
/// against this fabric (after the forward-retry revert and the leader
/// restore fix).
#[test]
fn env_faults_keep_acknowledged_writes() {
    for (seed, pinned) in [(6, OPTIONS_6), (10, OPTIONS_10), (14, OPTIONS_14)] {
        let report = passes(env_faults(seed, false), pinned);
        assert!(report.ops.writes_acked > 0, "seed {seed}: nothing acked");
    }
}

const OPTIONS_6: &[&str] = &[
    "seed=6 topology=[d0:datax2 d1:datax1 d2:datax2]",
    "  latency intra=142+36us d0-d1=13428+7948us d0-d2=13147+9570us d1-d2=6208+1012us",
    "  faults loss=2376ppm dup=3585ppm spike=555ppm/289ms fsync=962us safety=11s every~1910ms weights(crash,partition,isolate)=[1, 2, 2] tear=302696ppm",
    "  env eio=false eio_write=[]@1478ppm eio_read=[2]@507ppm corrupt_at=never weights(etcd_outage,etcd_cut)=[2, 1] coordinators=true clock_rate=[n1:1221857ppm n4:811756ppm]",
    "  workload volumes=2x3replicas clients=7 writes=395450ppm dr_snapshots=20000ppm think<=14ms blocks=32 snapshot_logs=64 witness_never_campaigns=false kind=mixed repair=off bug=None",
];
const OPTIONS_10: &[&str] = &[
    "seed=10 topology=[d0:datax1 d1:datax1 d2:witnessx1]",
    "  latency intra=133+111us d0-d1=8747+3294us d0-d2=8049+5128us d1-d2=11835+5439us",
    "  faults loss=13535ppm dup=2187ppm spike=602ppm/332ms fsync=640us safety=18s every~2884ms weights(crash,partition,isolate)=[1, 2, 0] tear=31034ppm",
    "  env eio=false eio_write=[2, 3]@823ppm eio_read=[1]@302ppm corrupt_at=never weights(etcd_outage,etcd_cut)=[0, 2] coordinators=true clock_rate=[n1:1062878ppm n2:995764ppm]",
    "  workload volumes=2x2replicas clients=7 writes=561273ppm dr_snapshots=20000ppm think<=26ms blocks=32 snapshot_logs=1000 witness_never_campaigns=false kind=mixed repair=off bug=None",
];
const OPTIONS_14: &[&str] = &[
    "seed=14 topology=[d0:datax1 d1:datax2 d2:datax1]",
    "  latency intra=136+26us d0-d1=2014+538us d0-d2=7680+5933us d1-d2=13846+6092us",
    "  faults loss=1298ppm dup=7171ppm spike=269ppm/149ms fsync=1574us safety=16s every~3175ms weights(crash,partition,isolate)=[2, 2, 0] tear=83342ppm",
    "  env eio=false eio_write=[]@2407ppm eio_read=[1]@2946ppm corrupt_at=never weights(etcd_outage,etcd_cut)=[0, 0] coordinators=false clock_rate=[]",
    "  workload volumes=2x3replicas clients=4 writes=516376ppm dr_snapshots=20000ppm think<=30ms blocks=32 snapshot_logs=1000 witness_never_campaigns=false kind=mixed repair=off bug=None",
];

/// A clean etcd outage window was held to a write being acknowledged
/// within it although a volume had not recovered from an earlier
/// disruption: seed 59 (`--env on --eio off`) lost vol-2's leader (node 4,
/// corrupted and lost for good) 3.4 s before the outage; its election took
/// until 1.6 s into the outage (openraft adds a smaller-log timeout of
/// twice the election timeout for a node that saw a longer log) and the
/// new leader's first AppendEntries was lost (an RPC timeout more), while
/// every client sat on a vol-2 write. A window is now clean only if every
/// volume acknowledged a write since the last disruption.
///
/// Seed 59 no longer reached this once its options were pinned (no etcd
/// outage; node 1 corrupted). Seed 209 (`--env on --eio off`) replaces it,
/// found by scanning the first 150 seeds of 0..3000 with an etcd outage
/// weight and a corruption early in the safety phase: node 3 leads a
/// volume when its disk is corrupted (`corrupted_was_leading`) and is lost
/// for good (`corrupted_lost`), and an outage window begins quiet with a
/// volume that has not acknowledged a write since the last disruption
/// (`outages_unrecovered == 1`), which the fix keeps from being judged.
#[test]
fn outage_window_needs_every_volume_recovered() {
    let report = passes(env_faults(209, false), OPTIONS_209);
    assert!(
        report.faults.outages_unrecovered > 0,
        "no outage window began with a volume unrecovered: {:?}",
        report.faults
    );
    assert!(
        report.faults.corrupted_was_leading && report.env.corrupted_lost,
        "no leader lost to corruption: {:?} {:?}",
        report.faults,
        report.env
    );
}

const OPTIONS_209: &[&str] = &[
    "seed=209 topology=[d0:datax2 d1:datax1 d2:datax1]",
    "  latency intra=50+34us d0-d1=909+436us d0-d2=10576+4393us d1-d2=4898+98us",
    "  faults loss=5774ppm dup=4826ppm spike=1611ppm/215ms fsync=2840us safety=14s every~2627ms weights(crash,partition,isolate)=[1, 1, 2] tear=397118ppm",
    "  env eio=false eio_write=[2]@1089ppm eio_read=[]@1272ppm corrupt_at=4554ms weights(etcd_outage,etcd_cut)=[2, 0] coordinators=true clock_rate=[n4:1160281ppm]",
    "  workload volumes=2x3replicas clients=5 writes=314545ppm dr_snapshots=20000ppm think<=28ms blocks=32 snapshot_logs=0 witness_never_campaigns=false kind=mixed repair=off bug=None",
];

/// The registration check sampled node 1 (seed 253, `--env on --eio on`)
/// as down from 4.8 s on, missing an incarnation that ran for 0.7 ms at
/// 9.14 s and granted a fresh lease (live until 14.1 s): "the store still
/// holds its registration" at 12.4 s. It now counts from the node's last
/// call that reached the store.
#[test]
fn registration_check_sees_short_incarnations() {
    let report = passes(env_faults(253, true), OPTIONS_253_EIO);
    assert!(
        report.env.supervisor_restarts > 0,
        "no supervisor restart, so no short incarnation: {:?}",
        report.env
    );
}

const OPTIONS_253_EIO: &[&str] = &[
    "seed=253 topology=[d0:datax2 d1:datax1 d2:witnessx1]",
    "  latency intra=155+135us d0-d1=7255+6773us d0-d2=12817+6999us d1-d2=6927+3784us",
    "  faults loss=19800ppm dup=2401ppm spike=1485ppm/306ms fsync=577us safety=18s every~1140ms weights(crash,partition,isolate)=[2, 2, 0] tear=471947ppm",
    "  env eio=true eio_write=[4]@2465ppm eio_read=[]@1386ppm corrupt_at=never weights(etcd_outage,etcd_cut)=[0, 1] coordinators=true clock_rate=[n1:786632ppm n3:1014564ppm]",
    "  workload volumes=2x2replicas clients=5 writes=513668ppm dr_snapshots=20000ppm think<=3ms blocks=32 snapshot_logs=64 witness_never_campaigns=false kind=mixed repair=off bug=None",
];

/// Latent corruption that kvstore's own recovery does not read but the
/// replicas' reopening does (node 3 of seed 603: "value CRC mismatch" in
/// the first log segment while vol-2 reads its Raft log back) was reported
/// as a node failing to recover from its own disk. It is the expected
/// fail-stop outcome on the corrupted node: it stays down for good.
///
/// The corrupted node is node 2 under the pinned options; it stays down.
#[test]
fn corruption_found_by_a_replica_reopening_is_fail_stop() {
    let report = passes(mixed(603), OPTIONS_603);
    assert!(report.faults.corrupted.is_some(), "no disk corrupted");
    assert!(report.env.corrupted_lost, "the corrupted node recovered");
}

const OPTIONS_603: &[&str] = &[
    "seed=603 topology=[d0:datax1 d1:datax1 d2:witnessx1]",
    "  latency intra=79+65us d0-d1=7521+1002us d0-d2=2055+1036us d1-d2=2165+1526us",
    "  faults loss=9135ppm dup=1011ppm spike=1995ppm/156ms fsync=2366us safety=10s every~1737ms weights(crash,partition,isolate)=[3, 1, 0] tear=355804ppm",
    "  env eio=true eio_write=[3]@773ppm eio_read=[1]@1179ppm corrupt_at=4411ms weights(etcd_outage,etcd_cut)=[2, 2] coordinators=false clock_rate=[n3:1115487ppm]",
    "  workload volumes=3x2replicas clients=6 writes=753575ppm dr_snapshots=20000ppm think<=20ms blocks=32 snapshot_logs=64 witness_never_campaigns=false kind=mixed repair=off bug=None",
];

/// A leader whose disk held corrupted block data kept leading and failed
/// every read of those blocks ("value CRC mismatch"), so the volume never
/// served them again although a healthy replica held them: seed 635
/// (node 4's latent corruption lands in a log segment holding vol-1's
/// block values; node 4 reopens, since recovery reads only the record
/// headers, and stays vol-1's leader; the final sweep failed through every
/// node). Nothing wrong was served and no acknowledged write was lost: an
/// availability bug. Fixed in fabric: a read that finds the replica's own
/// data damaged (`VolumeRead` reports `ReadFailure::damaged`) shuts that
/// group down on that node (fail-stop), and the others elect a leader.
///
/// Seed 635 no longer reached this once its options were pinned (node 5,
/// corrupted, refused to recover). Seed 391 (its own options) replaces it,
/// found by scanning the first 150 seeds of 0..3000 whose corruption falls
/// in the safety phase for a corrupted node that reopens and leads: node 4
/// leads a volume when its disk is corrupted, reopens on the damaged disk
/// (`corrupted_lost == false`) and leads 2 terms after reopening
/// (`corrupted_terms_led == 2`). The report cannot show whether one of its
/// reads found the damage. Seed 391 drifted in turn when the coordinator's
/// admin calls changed (fenced group changes, repair jobs); the same scan
/// (first match from 0) found seed 394: node 2 leads when its disk is
/// corrupted, reopens and leads a term after.
#[test]
fn a_leader_with_corrupted_data_fails_stop() {
    let report = passes(mixed(394), OPTIONS_394);
    assert!(report.faults.corrupted.is_some(), "no disk corrupted");
    assert!(
        !report.env.corrupted_lost,
        "the corrupted node did not reopen"
    );
    assert!(
        report.faults.corrupted_terms_led > 0,
        "the corrupted node did not lead after reopening: {:?}",
        report.faults
    );
}

const OPTIONS_394: &[&str] = &[
    "seed=394 topology=[d0:datax1 d1:datax2 d2:datax3]",
    "  latency intra=103+40us d0-d1=1630+49us d0-d2=5044+149us d1-d2=3887+414us",
    "  faults loss=2673ppm dup=8590ppm spike=1675ppm/229ms fsync=2005us safety=16s every~1365ms weights(crash,partition,isolate)=[3, 3, 2] tear=435131ppm",
    "  env eio=false eio_write=[]@2534ppm eio_read=[]@522ppm corrupt_at=8185ms weights(etcd_outage,etcd_cut)=[1, 0] coordinators=true clock_rate=[n6:1046163ppm]",
    "  workload volumes=2x3replicas clients=7 writes=590483ppm dr_snapshots=20000ppm think<=25ms blocks=32 snapshot_logs=64 witness_never_campaigns=false kind=mixed repair=off bug=None",
];

/// A witness that lagged got a Raft snapshot from a data leader and
/// installed its blocks: "witness 6: holds 30 blocks of vol-2" (seed 181,
/// its own options). A witness now installs a snapshot's metadata only.
/// Replay: `metro-sim run --seed 181`.
///
/// The report shows witnesses holding a Raft snapshot at the end (built or
/// installed: it cannot tell which), which the no-blocks check then read.
#[test]
fn a_witness_installs_no_blocks_from_a_snapshot() {
    let report = passes(mixed(181), OPTIONS_181);
    assert!(
        report.roles.witness_snapshots > 0,
        "no witness holds a snapshot: {:?}",
        report.roles
    );
}

const OPTIONS_181: &[&str] = &[
    "seed=181 topology=[d0:datax2 d1:datax1 d2:datax2 d3:witnessx1]",
    "  latency intra=117+91us d0-d1=5806+2652us d0-d2=10945+4306us d0-d3=3267+1165us d1-d2=5794+273us d1-d3=4052+1347us d2-d3=3775+79us",
    "  faults loss=583ppm dup=8089ppm spike=774ppm/120ms fsync=1037us safety=18s every~3082ms weights(crash,partition,isolate)=[1, 4, 2] tear=91891ppm",
    "  env off",
    "  workload volumes=3x2replicas clients=7 writes=750131ppm dr_snapshots=20000ppm think<=23ms blocks=32 snapshot_logs=64 witness_never_campaigns=false kind=mixed repair=off bug=None",
];
