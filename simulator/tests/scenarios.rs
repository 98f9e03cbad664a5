//! One scenario per fault class: the run injects that class (with the
//! repository host's error answers, link loss and clock skew that every
//! faulty run has), the report shows the faults happened, and every
//! invariant held. A scenario that injected nothing would prove nothing,
//! so each asserts its evidence.

use std::time::Duration;

use skygit_simulator::repo::RepoFaults;
use skygit_simulator::world::{run, FaultClass, Report, SimOptions};

fn scenario(seed: u64, classes: &[FaultClass], tweak: impl Fn(&mut SimOptions)) -> Report {
    let mut o = SimOptions {
        seed,
        nodes: 3,
        duration: Duration::from_secs(150),
        fault_every: Duration::from_secs(8),
        fault_classes: classes.iter().copied().collect(),
        ..SimOptions::default()
    };
    tweak(&mut o);
    let r = run(o).expect("the simulation runs");
    assert!(r.ok, "seed {seed} with {classes:?}: {:#?}", r.violations);
    r
}

#[test]
fn network_partitions_one_way_cuts_and_link_failures() {
    let r = scenario(3, &[FaultClass::Partition, FaultClass::LinkFailure], |_| {});
    assert!(
        r.faults.partitions + r.faults.asymmetric_partitions > 0,
        "{:?}",
        r.faults
    );
    assert!(r.faults.link_failures > 0, "{:?}", r.faults);
    assert!(
        r.net.retransmits > 0 && r.net.links_failed > 0,
        "{:?}",
        r.net
    );
    assert!(r.leader_changes > 0);
}

#[test]
fn repository_outages_errors_and_rate_limits() {
    let r = scenario(4, &[FaultClass::RepoOutage], |o| {
        o.fault_every = Duration::from_secs(45);
        o.repo_faults = Some(RepoFaults {
            p_5xx: 0.05,
            p_409: 0.1,
            p_422: 0.1,
            p_lost_answer: 0.1,
            p_rate_limit: 0.02,
            writes_per_minute: 5,
            ..RepoFaults::default()
        });
    });
    assert!(r.faults.repo_outages > 0, "{:?}", r.faults);
    let s = &r.repo;
    assert!(s.outage_refusals > 0 && s.injected_5xx > 0, "{s:?}");
    assert!(s.injected_conflicts > 0 && s.lost_answers > 0, "{s:?}");
    assert!(s.rate_limited > 0, "{s:?}");
    assert!(
        r.repo_commits > 2,
        "the room still committed: {}",
        r.repo_commits
    );
}

#[test]
fn crashes_and_power_losses_with_unsynced_writes_lost() {
    let r = scenario(5, &[FaultClass::Crash, FaultClass::PowerLoss], |_| {});
    assert!(
        r.faults.crashes > 0 && r.faults.power_losses > 0,
        "{:?}",
        r.faults
    );
    assert!(
        r.faults.lost_wal_bytes > 0,
        "a power loss lost unsynced writes: {:?}",
        r.faults
    );
}

#[test]
fn graceful_leaves_and_returns() {
    let r = scenario(6, &[FaultClass::Leave], |_| {});
    assert!(r.faults.graceful_leaves > 0, "{:?}", r.faults);
}

#[test]
fn a_power_cut_of_the_whole_room() {
    let r = scenario(7, &[FaultClass::PowerCut], |o| {
        o.fault_every = Duration::from_secs(30);
    });
    assert!(r.faults.power_losses >= 3, "{:?}", r.faults);
}

#[test]
fn skewed_clocks_and_a_workload_of_posts_edits_deletes_and_retries() {
    let r = scenario(8, &[FaultClass::LinkFailure], |_| {});
    assert!(r.faults.max_clock_skew_ms > 0, "{:?}", r.faults);
    let w = &r.workload;
    assert!(
        w.posts > 10 && w.edits > 0 && w.deletes > 0 && w.retries > 0,
        "{w:?}"
    );
    assert!(w.acked > 10, "{w:?}");
}

#[test]
fn a_calm_run_has_no_faults_and_holds_every_invariant() {
    let r = run(SimOptions {
        seed: 9,
        nodes: 3,
        faults: false,
        duration: Duration::from_secs(60),
        ..SimOptions::default()
    })
    .expect("the simulation runs");
    assert!(r.ok, "{:#?}", r.violations);
    assert_eq!(
        r.faults.crashes + r.faults.partitions + r.faults.repo_outages,
        0
    );
    assert_eq!(r.repo.injected_5xx, 0);
    assert_eq!(
        r.workload.acked,
        r.workload.posts + r.workload.edits + r.workload.deletes + r.workload.settings
            - r.workload.refused
            - r.workload.unanswered,
        "{:?}",
        r.workload
    );
}
