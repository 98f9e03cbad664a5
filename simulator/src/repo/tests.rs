//! Tests of [`super`] (repo.rs).
use super::*;
use skygit_actors::ports::PRESENCE_VERSION;

fn host(seed: u64, faults: RepoFaults) -> SimRepoHost {
    SimRepoHost::new(seed, faults, Trace::new(None).expect("trace"))
}

fn req(expected: Option<&str>, files: &[(&str, &str)], message: &str) -> CommitRequest {
    CommitRequest {
        expected_head: expected.map(str::to_owned),
        files: files
            .iter()
            .map(|(p, b)| (p.to_string(), b.as_bytes().to_vec()))
            .collect(),
        message: message.to_owned(),
        time_secs: 1_700_000_000,
    }
}

fn record(node: NodeId) -> PresenceRecord {
    PresenceRecord {
        version: PRESENCE_VERSION,
        user: format!("u{node}"),
        node_id: node,
        session_id: format!("s{node}"),
        last_seen: 1_700_000_000_000,
        dtls_fingerprint: "sha-256 AB:CD".into(),
        in_group: true,
        signals: Vec::new(),
        identity: None,
    }
}

#[tokio::test(start_paused = true)]
async fn cas_conflict_when_expected_head_is_stale() {
    let h = host(1, RepoFaults::none());
    let (a, b) = (h.client(1), h.client(2));
    let c1 = a.commit(req(None, &[("x", "1")], "init")).await.unwrap();
    // A second initial commit finds the branch taken.
    assert_eq!(
        b.commit(req(None, &[("y", "1")], "init too")).await,
        Err(RepoError::Conflict)
    );
    let c2 = a
        .commit(req(Some(&c1), &[("x", "2")], "second"))
        .await
        .unwrap();
    // b still believes c1 is the head.
    assert_eq!(
        b.commit(req(Some(&c1), &[("z", "3")], "stale")).await,
        Err(RepoError::Conflict)
    );
    // An unknown expected head is a conflict too.
    assert_eq!(
        b.commit(req(Some(&"0".repeat(40)), &[("z", "3")], "bogus"))
            .await,
        Err(RepoError::Conflict)
    );
    assert_eq!(h.head().map(|(s, _)| s), Some(c2.clone()));
    assert_eq!(h.stats().conflicts, 3);
    assert_eq!(h.stats().commits, 2);
    assert_eq!(a.calls(), 2);
    assert_eq!(b.calls(), 3);
    assert!(h.check_history().is_empty(), "{:?}", h.check_history());
}

#[tokio::test(start_paused = true)]
async fn linear_history_passes_check_history() {
    let h = host(2, RepoFaults::none());
    let clients = [h.client(1), h.client(2), h.client(3)];
    let mut head: Option<String> = None;
    for i in 0..30u32 {
        let c = &clients[(i % 3) as usize];
        let r = req(
            head.as_deref(),
            &[(&format!("d/{i}.txt"), "x")],
            &format!("c{i}"),
        );
        head = Some(c.commit(r).await.unwrap());
    }
    assert_eq!(h.head(), Some((head.unwrap(), "c29".into())));
    assert!(h.check_history().is_empty(), "{:?}", h.check_history());
    assert_eq!(h.files_at_head().len(), 30);
    assert_eq!(h.stats().commits, 30);
}

#[tokio::test(start_paused = true)]
async fn a_commit_of_an_older_group_after_a_newer_founding_is_reported() {
    use skygit_actors::layout::{founding_message, with_epoch};
    let h = host(4, RepoFaults::none());
    let c = h.client(1);
    let base = c
        .commit(req(None, &[("x", "0")], &founding_message(1, 0, 0, 0)))
        .await
        .unwrap();
    let later = c
        .commit(req(Some(&base), &[], &founding_message(2, 1, 0, 0)))
        .await
        .unwrap();
    let same = with_epoch("batch\n\nRaft-Last-Index: 3\n".into(), 1);
    let ok = c
        .commit(req(Some(&later), &[("a", "1")], &same))
        .await
        .unwrap();
    assert!(h.check_history().is_empty(), "{:?}", h.check_history());
    // An epoch-0 committer writes on top of the epoch-1 group's commits.
    let stale = c
        .commit(req(
            Some(&ok),
            &[("b", "1")],
            "batch\n\nRaft-Last-Index: 4\n",
        ))
        .await
        .unwrap();
    let v = h.check_history();
    assert_eq!(v.len(), 1, "{v:?}");
    assert!(
        v[0].starts_with("epoch fell") && v[0].contains(short(&stale)),
        "{v:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn ignoring_cas_loses_a_commit_and_check_history_reports_it() {
    let h = host(3, RepoFaults::none());
    let (a, b) = (h.client(1), h.client(2));
    let base = a.commit(req(None, &[("x", "0")], "init")).await.unwrap();
    h.set_ignore_cas(true);
    let ca = a
        .commit(req(Some(&base), &[("a", "1")], "from a"))
        .await
        .unwrap();
    let cb = b
        .commit(req(Some(&base), &[("b", "1")], "from b"))
        .await
        .unwrap();
    assert_ne!(ca, cb);
    assert_eq!(h.head().map(|(s, _)| s), Some(cb));
    // a's file is gone from the branch.
    assert!(!h.files_at_head().contains_key("a"));
    let v = h.check_history();
    assert_eq!(v.len(), 2, "{v:?}");
    assert!(
        v[0].starts_with("lost commit") && v[0].contains(short(&ca)),
        "{v:?}"
    );
    assert!(
        v[1].starts_with("double update") && v[1].contains(short(&base)),
        "{v:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn list_history_and_read_blob_agree_with_commits() {
    let h = host(4, RepoFaults::none());
    let c = h.client(1);
    let c1 = c
        .commit(req(
            None,
            &[
                (".messages/config.json", "{}"),
                ("a/b/c.json", "abc"),
                ("a/bc", "not under a/b"),
            ],
            "one",
        ))
        .await
        .unwrap();
    let c2 = c
        .commit(req(
            Some(&c1),
            &[("a/b/c.json", "changed"), ("a/b/d/e.json", "deep")],
            "two",
        ))
        .await
        .unwrap();

    let hist = c.history(&c2, 10).await.unwrap();
    let shas: Vec<_> = hist
        .iter()
        .map(|i| (i.sha.as_str(), i.message.as_str()))
        .collect();
    assert_eq!(shas, vec![(c2.as_str(), "two"), (c1.as_str(), "one")]);
    assert_eq!(c.history(&c2, 1).await.unwrap().len(), 1);
    assert!(c.history(&c2, 0).await.unwrap().is_empty());
    assert!(matches!(
        c.history(&"f".repeat(40), 5).await,
        Err(RepoError::NotFound(_))
    ));

    let listed = c.list(&c2, "a/b", 10).await.unwrap();
    let paths: Vec<_> = listed.iter().map(|e| e.path.as_str()).collect();
    assert_eq!(paths, vec!["a/b/c.json", "a/b/d/e.json"]);
    assert!(listed.iter().all(|e| e.kind == EntryKind::File));
    assert_eq!(listed[0].size, Some(7));
    assert_eq!(c.read_blob(&listed[0].id, 100).await.unwrap(), b"changed");
    // The old commit still has the old content.
    let old = c.list(&c1, "a/b/", 10).await.unwrap();
    assert_eq!(old.len(), 1);
    assert_eq!(c.read_blob(&old[0].id, 100).await.unwrap(), b"abc");
    // Everything, sorted.
    let all = c.list(&c2, "", 10).await.unwrap();
    let paths: Vec<_> = all.iter().map(|e| e.path.as_str()).collect();
    assert_eq!(
        paths,
        vec![
            ".messages/config.json",
            "a/b/c.json",
            "a/b/d/e.json",
            "a/bc"
        ]
    );
    // More than max: refused, never silently partial.
    assert!(matches!(
        c.list(&c2, "", 3).await,
        Err(RepoError::Invalid(_))
    ));
    assert_eq!(c.list(&c2, "", 4).await.unwrap().len(), 4);
    // A missing folder is empty; a file is not a folder.
    assert!(c.list(&c2, "nothing", 10).await.unwrap().is_empty());
    assert!(matches!(
        c.list(&c2, "a/bc", 10).await,
        Err(RepoError::Invalid(_))
    ));
    assert!(matches!(
        c.list(&"e".repeat(40), "", 10).await,
        Err(RepoError::NotFound(_))
    ));
    // Blob bounds.
    assert!(matches!(
        c.read_blob(&listed[0].id, 6).await,
        Err(RepoError::Invalid(_))
    ));
    assert!(matches!(
        c.read_blob(&"d".repeat(40), 6).await,
        Err(RepoError::NotFound(_))
    ));
    let files = h.files_at_head();
    assert_eq!(
        files.get("a/b/c.json").map(Vec::as_slice),
        Some(&b"changed"[..])
    );
    assert_eq!(files.len(), 4);
}

#[tokio::test(start_paused = true)]
async fn bad_input_is_refused_without_panic() {
    let h = host(5, RepoFaults::none());
    let c = h.client(1);
    let too_many: Vec<(String, Vec<u8>)> = (0..=MAX_FILES_PER_COMMIT)
        .map(|i| (format!("f{i}"), Vec::new()))
        .collect();
    let r = CommitRequest {
        expected_head: None,
        files: too_many,
        message: "m".into(),
        time_secs: 0,
    };
    assert!(matches!(c.commit(r).await, Err(RepoError::Invalid(_))));
    let r = CommitRequest {
        expected_head: None,
        files: vec![("big".into(), vec![0u8; MAX_BLOB_BYTES + 1])],
        message: "m".into(),
        time_secs: 0,
    };
    assert!(matches!(c.commit(r).await, Err(RepoError::Invalid(_))));
    for bad in ["", "/a", "a/", "a//b", "a/../b", "./a"] {
        assert!(
            matches!(
                c.commit(req(None, &[(bad, "x")], "m")).await,
                Err(RepoError::Invalid(_))
            ),
            "{bad:?}"
        );
    }
    // A file where a folder is, and the reverse.
    assert!(matches!(
        c.commit(req(None, &[("a", "x"), ("a/b", "y")], "m")).await,
        Err(RepoError::Invalid(_))
    ));
    let c1 = c.commit(req(None, &[("a/b", "y")], "m")).await.unwrap();
    assert!(matches!(
        c.commit(req(Some(&c1), &[("a", "x")], "m")).await,
        Err(RepoError::Invalid(_))
    ));
    // Nothing of the refused requests landed.
    assert_eq!(h.stats().commits, 1);
    assert!(h.check_history().is_empty());
    // Wild fault settings do not panic either.
    h.set_faults(RepoFaults {
        latency_min: Duration::from_millis(5),
        latency_max: Duration::from_millis(1),
        p_5xx: f64::NAN,
        p_409: -1.0,
        p_422: 7.0,
        ..RepoFaults::none()
    });
    assert_eq!(
        c.commit(req(Some(&c1), &[("c", "z")], "m")).await,
        Err(RepoError::Conflict)
    );
}

#[tokio::test(start_paused = true)]
async fn outage_refuses_everything_until_lifted() {
    let faults = RepoFaults {
        latency_min: Duration::from_millis(100),
        latency_max: Duration::from_millis(100),
        ..RepoFaults::none()
    };
    let h = host(6, faults);
    let c = h.client(1);
    let c1 = c.commit(req(None, &[("x", "1")], "init")).await.unwrap();
    let id = c.list(&c1, "", 10).await.unwrap()[0].id.clone();
    h.set_outage(true);
    let t0 = Instant::now();
    assert!(matches!(c.head().await, Err(RepoError::Unavailable(_))));
    // The refusal comes after the call's latency.
    assert_eq!(t0.elapsed(), Duration::from_millis(100));
    assert!(matches!(
        c.commit(req(Some(&c1), &[("x", "2")], "m")).await,
        Err(RepoError::Unavailable(_))
    ));
    assert!(matches!(
        c.history(&c1, 5).await,
        Err(RepoError::Unavailable(_))
    ));
    assert!(matches!(
        c.list(&c1, "", 5).await,
        Err(RepoError::Unavailable(_))
    ));
    assert!(matches!(
        c.read_blob(&id, 5).await,
        Err(RepoError::Unavailable(_))
    ));
    assert!(matches!(
        c.publish(record(1)).await,
        Err(PresenceError::Unavailable(_))
    ));
    assert!(matches!(
        c.fetch().await,
        Err(PresenceError::Unavailable(_))
    ));
    assert_eq!(h.stats().outage_refusals, 7);
    assert_eq!(h.head().map(|(s, _)| s), Some(c1.clone()));
    h.set_outage(false);
    assert_eq!(
        c.head().await.unwrap().map(|hd| hd.commit_sha),
        Some(c1.clone())
    );
    assert!(c.commit(req(Some(&c1), &[("x", "2")], "m")).await.is_ok());
    assert!(c.publish(record(1)).await.is_ok());
    assert_eq!(c.fetch().await.unwrap().len(), 1);
}

#[tokio::test(start_paused = true)]
async fn write_budget_rate_limits_and_frees_after_the_window() {
    let faults = RepoFaults {
        writes_per_minute: 3,
        writes_per_hour: 5,
        ..RepoFaults::none()
    };
    let h = host(7, faults);
    let (a, b) = (h.client(1), h.client(2));
    let t0 = Instant::now();
    for _ in 0..3 {
        a.publish(record(1)).await.unwrap();
        tokio::time::sleep(Duration::from_secs(10)).await;
    }
    // t0+30s: the minute holds 3 writes; the oldest leaves at t0+60s.
    match a.publish(record(1)).await {
        Err(PresenceError::RateLimited { retry_after_ms }) => {
            assert_eq!(retry_after_ms, 30_000)
        }
        other => panic!("{other:?}"),
    }
    match a.commit(req(None, &[("x", "1")], "m")).await {
        Err(RepoError::RateLimited { retry_after_ms }) => assert_eq!(retry_after_ms, 30_000),
        other => panic!("{other:?}"),
    }
    // Budgets are per client; reads are not limited.
    b.publish(record(2)).await.unwrap();
    assert!(a.head().await.is_ok());
    // Once the oldest write left the minute, one more fits.
    tokio::time::sleep_until(t0 + MINUTE).await;
    let c1 = a.commit(req(None, &[("x", "1")], "m")).await.unwrap();
    tokio::time::sleep(MINUTE).await;
    a.publish(record(1)).await.unwrap();
    // Five writes in the hour: the next waits for the first to leave it.
    let now = t0.elapsed();
    match a.commit(req(Some(&c1), &[("x", "2")], "m")).await {
        Err(RepoError::RateLimited { retry_after_ms }) => {
            assert_eq!(Duration::from_millis(retry_after_ms), HOUR - now)
        }
        other => panic!("{other:?}"),
    }
    tokio::time::sleep_until(t0 + HOUR).await;
    assert!(a.commit(req(Some(&c1), &[("x", "2")], "m")).await.is_ok());
    assert_eq!(h.stats().rate_limited, 3);
}

#[tokio::test(start_paused = true)]
async fn lost_answer_applies_the_commit_yet_answers_unknown() {
    let h = host(
        8,
        RepoFaults {
            p_lost_answer: 1.0,
            ..RepoFaults::none()
        },
    );
    let c = h.client(1);
    assert!(matches!(
        c.commit(req(None, &[("x", "1")], "init")).await,
        Err(RepoError::Unknown(_))
    ));
    // It landed: the head tells.
    let head = c.head().await.unwrap().expect("the commit landed");
    assert_eq!(head.message, "init");
    assert_eq!(
        h.files_at_head().get("x").map(Vec::as_slice),
        Some(&b"1"[..])
    );
    // Repeating it blindly conflicts.
    assert_eq!(
        c.commit(req(None, &[("x", "1")], "init")).await,
        Err(RepoError::Conflict)
    );
    let s = h.stats();
    assert_eq!((s.commits, s.lost_answers, s.conflicts), (1, 1, 1));
    assert!(h.check_history().is_empty());
}

#[tokio::test(start_paused = true)]
async fn presence_round_trip_skips_garbage() {
    let h = host(9, RepoFaults::none());
    let (a, b) = (h.client(1), h.client(2));
    a.publish(record(1)).await.unwrap();
    b.publish(record(2)).await.unwrap();
    let mut newer = record(2);
    newer.last_seen += 5000;
    b.publish(newer.clone()).await.unwrap();
    h.inject_presence(3, b"{not json".to_vec());
    // A record claiming another node's id than its slot's.
    h.inject_presence(4, record(5).to_json());
    let got = a.fetch().await.unwrap();
    assert_eq!(got, vec![record(1), newer]);
    // Publishing as another node, or a record readers refuse, fails
    // before reaching the host.
    assert!(matches!(
        a.publish(record(2)).await,
        Err(PresenceError::Unavailable(_))
    ));
    let mut bad = record(1);
    bad.user = String::new();
    assert!(matches!(
        a.publish(bad).await,
        Err(PresenceError::Unavailable(_))
    ));
    let s = h.stats();
    assert_eq!((s.presence_publishes, s.presence_fetches), (3, 1));
    // Presence never touches the branch.
    assert!(h.head().is_none());
}

/// A scripted run of two clients under heavy faults: every outcome and
/// the trace digest.
async fn scripted(seed: u64) -> (Vec<String>, String) {
    let trace = Trace::new(None).expect("trace");
    let faults = RepoFaults {
        p_5xx: 0.2,
        p_409: 0.1,
        p_422: 0.1,
        p_lost_answer: 0.15,
        p_rate_limit: 0.05,
        slow_read: 0.2,
        ..RepoFaults::default()
    };
    let h = SimRepoHost::new(seed, faults, trace.clone());
    let clients = [h.client(1), h.client(2)];
    let mut out = Vec::new();
    for i in 0..60usize {
        let c = &clients[i % 2];
        let head = c.head().await;
        out.push(format!("{head:?}"));
        let expected = match head {
            Ok(hd) => hd.map(|h| h.commit_sha),
            Err(_) => continue,
        };
        let r = req(
            expected.as_deref(),
            &[(&format!("f/{i}"), "x")],
            &format!("c{i}"),
        );
        out.push(format!("{:?}", c.commit(r).await));
        out.push(format!("{:?}", c.publish(record(c.node())).await));
        out.push(format!("{:?}", c.fetch().await.map(|v| v.len())));
    }
    out.push(format!("{:?}", h.stats()));
    assert!(h.check_history().is_empty(), "{:?}", h.check_history());
    (out, trace.digest())
}

#[tokio::test(start_paused = true)]
async fn same_seed_same_outcomes_other_seed_differs() {
    let a = scripted(1).await;
    let b = scripted(1).await;
    assert_eq!(a, b);
    let c = scripted(2).await;
    assert_ne!(a.0, c.0);
    assert_ne!(a.1, c.1);
    // The faults did happen.
    let joined = a.0.join("\n");
    assert!(joined.contains("Unavailable"), "{joined}");
    assert!(joined.contains("Conflict"), "{joined}");
    assert!(joined.contains("Unknown"), "{joined}");
}
