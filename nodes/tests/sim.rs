//! `skygit sim` as a user runs it: one seed replays the same run in
//! another process, another seed does not; each planted bug is caught by
//! a sweep of at most 100 seeds; a sweep without planted bugs passes.

use std::process::Command;

use serde_json::Value;

/// Runs `skygit sim ARGS --json`; answers whether it exited 0, the JSON
/// of its last line and everything it printed.
fn sim(args: &[&str]) -> (bool, Value, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_skygit"))
        .arg("sim")
        .args(args)
        .arg("--json")
        .output()
        .expect("skygit runs");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let last = stdout.lines().last().unwrap_or_default();
    let json: Value = serde_json::from_str(last).unwrap_or_else(|e| {
        panic!(
            "the last line is not JSON ({e}):\n{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out.status.success(), json, stdout)
}

/// The settings the tests run with: a small room for a few simulated
/// minutes, so that a sweep takes minutes of wall time.
const SHORT: [&str; 4] = ["--nodes", "3", "--duration", "120s"];

#[test]
fn one_seed_replays_the_same_run_in_another_process() {
    let a = sim(&[&SHORT[..], &["--seed", "7"]].concat());
    let b = sim(&[&SHORT[..], &["--seed", "7"]].concat());
    let c = sim(&[&SHORT[..], &["--seed", "8"]].concat());
    for (ok, j, out) in [&a, &b, &c] {
        assert!(ok, "the run failed:\n{out}");
        assert_eq!(j["ok"], Value::Bool(true), "{out}");
        for field in [
            "seed",
            "digest",
            "violations",
            "sim_seconds",
            "wall_seconds",
            "speedup",
        ] {
            assert!(!j[field].is_null(), "the report lacks {field}: {j}");
        }
        assert!(
            j["events"].as_u64().unwrap_or(0) > 1000,
            "a run has events: {j}"
        );
    }
    assert_eq!(a.1["digest"], b.1["digest"], "the same seed gave two runs");
    assert_ne!(a.1["digest"], c.1["digest"], "two seeds gave one run");
}

/// Runs of five nodes whose faults include losing a majority of the
/// voters: three survivors are enough to re-form the group.
const REFORMING: [&str; 6] = [
    "--nodes",
    "5",
    "--duration",
    "120s",
    "--fault-classes",
    "majority-loss,partition,crash,power-loss,link-failure",
];

fn caught_within_100(canary: &str) {
    caught_within_100_of(&SHORT, canary)
}

fn caught_within_100_of(runs: &[&str], canary: &str) {
    let (ok, j, out) = sim(&[
        runs,
        &["--sweep", "100", "--stop-on-failure", "--canary", canary],
    ]
    .concat());
    assert!(!ok, "a sweep with {canary} planted exited 0:\n{out}");
    let failures = j["failures"].as_array().cloned().unwrap_or_default();
    assert!(
        !failures.is_empty(),
        "no seed of 100 caught {canary}:\n{out}"
    );
    let replay = failures[0]["replay"].as_str().unwrap_or_default();
    assert!(
        replay.contains(&format!("--canary {canary}")) && replay.contains("--seed "),
        "the replay command names the canary and the seed: {replay}"
    );
    println!(
        "{canary}: caught after {} runs; first failure: {}",
        j["runs"], failures[0]
    );
}

#[test]
fn committer_ignoring_cas_is_caught() {
    caught_within_100("committer-ignores-cas");
}

#[test]
fn duplicate_apply_is_caught() {
    caught_within_100("duplicate-apply");
}

#[test]
fn ack_before_durable_is_caught() {
    caught_within_100("ack-before-durable");
}

#[test]
fn a_founder_skipping_the_compare_and_swap_is_caught() {
    caught_within_100_of(&REFORMING, "founder-skips-cas");
}

/// Survivors of a lost majority re-form, and no acknowledged message is
/// lost or doubled across the epochs; prints the time from each loss to
/// a leader of the new group.
#[test]
fn a_sweep_with_majority_losses_re_forms_and_passes() {
    let (ok, j, out) = sim(&[&REFORMING[..], &["--sweep", "40", "--seed", "2000"]].concat());
    assert!(ok, "{out}");
    assert_eq!(j["ok"], 40, "{j}");
    let recovered = j["reform_seconds"].as_array().map_or(0, Vec::len);
    assert!(recovered > 0, "no run re-formed after a majority loss: {j}");
    println!(
        "{}",
        out.lines()
            .find(|l| l.contains("re-forming"))
            .unwrap_or_default()
    );
}

/// Split two-node rooms re-form (neither half reaches a majority of the
/// two voters; the branch lets one found) and merge when the network
/// heals: nothing acknowledged is lost or doubled.
#[test]
fn split_two_node_rooms_re_form_and_merge() {
    let (ok, j, out) = sim(&[
        "--nodes",
        "2",
        "--duration",
        "120s",
        "--fault-classes",
        "partition,crash,link-failure",
        "--sweep",
        "30",
        "--seed",
        "4000",
    ]);
    assert!(ok, "{out}");
    assert_eq!(j["ok"], 30, "{j}");
    assert!(
        j["max_group_epoch"].as_u64().unwrap_or(0) >= 1,
        "no run re-formed: {j}"
    );
}

#[test]
fn a_sweep_of_200_seeds_without_canaries_passes() {
    let (ok, j, out) = sim(&[&SHORT[..], &["--sweep", "200", "--seed", "1000"]].concat());
    assert!(ok, "{out}");
    assert_eq!(j["runs"], 200, "{j}");
    assert_eq!(j["ok"], 200, "{j}");
    assert_eq!(j["failures"].as_array().map(Vec::len), Some(0), "{j}");
}

#[test]
fn a_bad_canary_name_is_a_clear_error() {
    let out = Command::new(env!("CARGO_BIN_EXE_skygit"))
        .args(["sim", "--canary", "nonsense"])
        .output()
        .expect("skygit runs");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("unknown canary") && err.contains("duplicate-apply"),
        "{err}"
    );
}
