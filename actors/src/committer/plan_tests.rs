//! Table-driven tests of the committer's rules ([`super`]).

use std::time::Duration;

use skygit_consensus::model::{Change, ChangeKind, ConversationId, RoomSettings, UserId};
use ulid::Ulid;

use super::*;

fn post(index: u64, conversation: &str) -> Change {
    Change {
        index,
        term: 1,
        request: Ulid::from_parts(index, 1),
        sender: UserId::new("ana").unwrap(),
        at: 1_700_000_000_000 + index as i64 * 1000,
        conversation: ConversationId::new(conversation).unwrap(),
        kind: ChangeKind::Post {
            message: Ulid::from_parts(index, 1),
            content: format!("message {index}"),
            attachments: Vec::new(),
        },
        signature: None,
    }
}

fn round<'a>(
    watermark: u64,
    synced: u64,
    changes: &'a [Change],
    settings: &'a RoomSettings,
    new_config: Option<&'a RoomConfig>,
) -> Round<'a> {
    Round {
        head_sha: "head",
        watermark,
        from_cache: false,
        synced,
        epoch: 0,
        changes,
        settings,
        new_config,
    }
}

#[test]
fn a_committer_never_writes_after_a_newer_groups_founding() {
    let superseded = |head, ours| Some(Plan::Fail(CommitterError::Superseded { head, ours }));
    assert_eq!(check_epoch(1, 0), superseded(1, 0));
    assert_eq!(check_epoch(7, 3), superseded(7, 3));
    for (head, ours) in [(0, 0), (3, 3), (2, 3)] {
        assert_eq!(check_epoch(head, ours), None, "{head} {ours}");
    }
}

#[test]
fn a_later_groups_commits_carry_its_epoch() {
    let settings = RoomSettings::default();
    let changes = [post(4, "general")];
    let mut r = round(3, 3, &changes, &settings, None);
    r.epoch = 2;
    let Plan::Commit { req, .. } = plan_round(&r) else {
        panic!("a commit");
    };
    assert_eq!(layout::group_epoch(&req.message), 2);
    assert_eq!(layout::watermark(&req.message), Some(4));
    r.epoch = 0;
    let Plan::Commit { req, .. } = plan_round(&r) else {
        panic!("a commit");
    };
    assert!(!req.message.contains("Group-Epoch"), "{}", req.message);
}

#[test]
fn a_head_behind_the_synced_record_is_reread_or_refused() {
    let rewound = |repo, room| Some(Plan::Fail(CommitterError::Rewound { repo, room }));
    // (watermark, synced, from_cache, expected)
    for (w, s, cached, expected) in [
        (5, 5, false, None),
        (6, 5, false, None),
        (6, 5, true, None),
        (4, 5, true, Some(Plan::Reread)),
        (4, 5, false, rewound(4, 5)),
        (0, 9, false, rewound(0, 9)),
    ] {
        assert_eq!(check_head(w, s, cached), expected, "{w} {s} {cached}");
        // The round's plan says the same before anything else.
        let settings = RoomSettings::default();
        let changes = [post(w + 1, "general")];
        let mut r = round(w, s, &changes, &settings, None);
        r.from_cache = cached;
        if let Some(p) = expected {
            assert_eq!(plan_round(&r), p);
        }
    }
}

#[test]
fn with_nothing_to_write_the_flush_ends_and_records_an_unrecorded_watermark() {
    let settings = RoomSettings::default();
    // (watermark, synced, record)
    for (w, s, record) in [(0, 0, None), (7, 7, None), (9, 7, Some(9))] {
        assert_eq!(
            plan_round(&round(w, s, &[], &settings, None)),
            Plan::Done { record },
            "{w} {s}"
        );
    }
}

#[test]
fn the_journal_is_one_commit_on_the_head_it_was_read_from() {
    let settings = RoomSettings::default();
    let changes = [post(4, "general"), post(5, "ops"), post(6, "general")];
    let Plan::Commit {
        req,
        first,
        last,
        changes: n,
        settings: with_settings,
        more,
    } = plan_round(&round(3, 3, &changes, &settings, None))
    else {
        panic!("no commit");
    };
    assert_eq!(
        (first, last, n, with_settings, more),
        (4, 6, 3, false, false)
    );
    assert_eq!(req.expected_head.as_deref(), Some("head"));
    assert!(
        req.message.contains("Raft-Last-Index: 6"),
        "{}",
        req.message
    );
    assert!(req.files.iter().all(|(p, _)| p != layout::CONFIG_PATH));
    // Exactly what rendering the changes gives.
    let batch = layout::render(&changes).unwrap();
    assert_eq!(req.files, batch.files);
    assert_eq!(req.time_secs, batch.time_secs);
}

#[test]
fn changed_settings_ride_with_the_batch_or_alone_on_the_same_watermark() {
    let settings = RoomSettings {
        commit_interval_secs: Some(42),
        voters: Some(5),
        changed_index: 8,
        changed_at: 1_700_000_123_456,
    };
    let config = RoomConfig::default().with_settings(&settings);
    // Alone: the watermark stays, the message says so.
    let Plan::Commit {
        req,
        first,
        last,
        changes,
        settings: with_settings,
        more,
    } = plan_round(&round(7, 7, &[], &settings, Some(&config)))
    else {
        panic!("no commit");
    };
    assert_eq!(
        (first, last, changes, with_settings, more),
        (7, 7, 0, true, false)
    );
    assert_eq!(
        req.files,
        vec![(layout::CONFIG_PATH.to_owned(), config.to_bytes())]
    );
    assert_eq!(req.message, layout::settings_message(&config, 7, 8));
    assert_eq!(req.time_secs, 1_700_000_123);
    // With a batch: one commit, files sorted by path, config among them.
    let changes = [post(8, "general"), post(9, "zeta")];
    let Plan::Commit {
        req,
        last,
        settings: with_settings,
        ..
    } = plan_round(&round(7, 7, &changes, &settings, Some(&config)))
    else {
        panic!("no commit");
    };
    assert!(with_settings);
    assert_eq!(last, 9);
    let paths: Vec<&str> = req.files.iter().map(|(p, _)| p.as_str()).collect();
    let mut sorted = paths.clone();
    sorted.sort();
    assert_eq!(paths, sorted);
    assert!(paths.contains(&layout::CONFIG_PATH));
    assert_eq!(paths.len(), 3);
}

#[test]
fn a_lost_race_or_an_unknown_outcome_is_read_again_and_anything_else_fails() {
    for (e, reread) in [
        (CommitterError::Repo(RepoError::Conflict), true),
        (
            CommitterError::Repo(RepoError::Unknown("reset".into())),
            true,
        ),
        (CommitterError::Timeout(Duration::from_secs(30)), true),
        (CommitterError::Repo(RepoError::Denied("no".into())), false),
        (
            CommitterError::Repo(RepoError::Unavailable("down".into())),
            false,
        ),
        (
            CommitterError::Repo(RepoError::RateLimited { retry_after_ms: 10 }),
            false,
        ),
        (CommitterError::Storage("disk".into()), false),
        (CommitterError::Stopped, false),
    ] {
        assert_eq!(rereads(&e), reread, "{e:?}");
    }
}
