//! Moving a room's state into a new raft group: what is kept, what is
//! forgotten, and the room indices the new group's entries take.

use openraft::entry::RaftEntry;
use openraft::storage::{RaftLogReader, RaftLogStorage, RaftLogStorageExt, RaftStateMachine};
use openraft::vote::RaftLeaderId;
use skygit_consensus::model::{ApplyOutcome, ChatRequest, Command, ConversationId, GroupStart};
use skygit_consensus::types::{Entry, LogId};
use skygit_storage::{GroupRole, RoomStorage, StorageError};
use ulid::Ulid;

fn log_id(term: u64, index: u64) -> LogId {
    openraft::LogId::new(
        openraft::vote::leader_id_adv::LeaderId::new(term, 1).to_committed(),
        index,
    )
}

fn post(n: u128, text: &str) -> ChatRequest {
    ChatRequest {
        id: Ulid(n),
        sender: skygit_consensus::model::UserId::new("ana").expect("user"),
        at: 1_700_000_000_000,
        command: Command::Post {
            conversation: ConversationId::new("general").expect("conversation"),
            content: text.into(),
            attachments: Vec::new(),
        },
        signature: None,
    }
}

fn synced(n: u128, up_to_index: u64) -> ChatRequest {
    ChatRequest {
        command: Command::Synced {
            up_to_index,
            commit_sha: "a".repeat(40),
        },
        ..post(n, "")
    }
}

/// Appends `reqs` from raft index `first` and applies them.
async fn append_and_apply(s: &mut RoomStorage, term: u64, first: u64, reqs: Vec<ChatRequest>) {
    let entries: Vec<Entry> = reqs
        .into_iter()
        .zip(first..)
        .map(|(r, i)| Entry::new_normal(log_id(term, i), r))
        .collect();
    s.log
        .blocking_append(entries.clone())
        .await
        .expect("append");
    let stream = futures::stream::iter(entries.into_iter().map(|e| Ok((e, None))));
    s.state_machine.apply(stream).await.expect("apply");
}

/// Opens the room again once the closed one's background tasks let go
/// of its database.
async fn reopen(dir: &std::path::Path) -> RoomStorage {
    for _ in 0..100 {
        match RoomStorage::open(dir) {
            Ok(s) => return s,
            Err(_) => tokio::time::sleep(std::time::Duration::from_millis(20)).await,
        }
    }
    RoomStorage::open(dir).expect("reopen")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_group_keeps_the_chat_state_and_numbers_on_from_its_base() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut s = RoomStorage::open(dir.path()).expect("open");
    assert_eq!(s.group().start, GroupStart::default());
    s.log
        .save_vote(&openraft::Vote::new(1, 1))
        .await
        .expect("vote");
    append_and_apply(&mut s, 1, 1, (1..=5).map(|n| post(n, "old")).collect()).await;
    let queued = post(99, "waiting");
    s.outbox.put(&queued).await.expect("outbox");
    // In the log, never known to be committed: carried.
    s.log
        .blocking_append([Entry::new_normal(log_id(1, 6), post(50, "tail"))])
        .await
        .expect("append");

    // A founder may not start below what it applied.
    let refused = s
        .begin_group(GroupStart { epoch: 1, base: 4 }, GroupRole::Founder)
        .await;
    assert!(
        matches!(refused, Err(StorageError::Epoch { .. })),
        "{:?}",
        refused.err()
    );
    let on_disk = s.db.group().expect("group");
    assert_eq!(on_disk.start.epoch, 0, "a refused switch changes nothing");

    let next = GroupStart {
        epoch: 1,
        base: 1000,
    };
    let carried = s
        .begin_group(next, GroupRole::Founder)
        .await
        .expect("switch");
    assert_eq!(carried, 1, "the log's unapplied tail is carried");
    assert_eq!(s.group().start, next);
    assert!(s.group().seeded);
    // The old group's raft state is gone...
    assert_eq!(s.log.read_vote().await.expect("vote"), None);
    let state = s.log.get_log_state().await.expect("log state");
    assert_eq!(state.last_log_id, None);
    let (applied, _) = s.state_machine.applied_state().await.expect("applied");
    assert_eq!(applied, None);
    // ...the chat state and the outbox are kept.
    let general = ConversationId::new("general").expect("conversation");
    let kept = s.reader.messages(&general, None, None, 100).expect("read");
    assert_eq!(kept.len(), 5);
    assert_eq!(s.outbox.len(), 2);
    let waiting: Vec<Ulid> = s
        .outbox
        .list(10)
        .expect("list")
        .iter()
        .map(|r| r.id)
        .collect();
    assert_eq!(waiting, [Ulid(50), Ulid(99)]);

    // The new group's entries take room indices from the base on, and a
    // repeated request id is still a duplicate.
    let mut events = s.state_machine.subscribe();
    append_and_apply(&mut s, 1, 1, vec![post(6, "new"), post(3, "again")]).await;
    let first = events.recv().await.expect("event");
    assert_eq!(first.index, 1001);
    assert_eq!(first.outcome, ApplyOutcome::Applied { index: 1001 });
    let second = events.recv().await.expect("event");
    assert_eq!(
        second.outcome,
        ApplyOutcome::Duplicate { original_index: 3 }
    );
    let journal = s.reader.journal(0, 100).expect("journal");
    assert_eq!(
        journal.iter().map(|c| c.index).collect::<Vec<_>>(),
        vec![1, 2, 3, 4, 5, 1001]
    );
    // A synced record names room indices too: one at or past its own
    // entry's room index is refused, one below it is applied.
    append_and_apply(&mut s, 1, 3, vec![synced(7, 1003), synced(8, 1001)]).await;
    let refused = events.recv().await.expect("event");
    assert!(
        matches!(refused.outcome, ApplyOutcome::Rejected { .. }),
        "{refused:?}"
    );
    assert_eq!(s.reader.journal(0, 100).expect("journal"), Vec::new());

    // Reopened, the group and the room indices are as they were.
    drop(events);
    drop(s);
    let mut s = reopen(dir.path()).await;
    assert_eq!(s.group().start, next);
    let all = s.reader.messages(&general, None, None, 100).expect("read");
    assert_eq!(all.last().map(|m| m.index), Some(1001));
    // Epochs only increase.
    let again = s.begin_group(next, GroupRole::Founder).await;
    assert!(
        matches!(again, Err(StorageError::Epoch { .. })),
        "{:?}",
        again.err()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_joiner_applies_nothing_before_the_groups_snapshot() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut s = RoomStorage::open(dir.path()).expect("open");
    append_and_apply(&mut s, 1, 1, vec![post(1, "old"), post(2, "newer")]).await;
    // The whole journal is carried (the group's snapshot will replace
    // this node's chat state; what the group has is a duplicate there).
    let carried = s
        .begin_group(GroupStart { epoch: 2, base: 7 }, GroupRole::Joiner)
        .await
        .expect("switch");
    assert_eq!(carried, 2);
    assert_eq!(
        s.outbox.list(10).expect("list"),
        [post(1, "old"), post(2, "newer")]
    );
    assert!(!s.group().seeded);
    let entry = Entry::new_normal(log_id(1, 1), post(3, "new"));
    let stream = futures::stream::iter([Ok((entry, None))]);
    let e = s
        .state_machine
        .apply(stream)
        .await
        .expect_err("an unseeded joiner refuses the group's entries");
    assert!(e.to_string().contains("snapshot"), "{e}");
    let general = ConversationId::new("general").expect("conversation");
    assert_eq!(
        s.reader
            .messages(&general, None, None, 10)
            .expect("read")
            .len(),
        2
    );
}

/// A snapshot carries its group: installing one of another group is
/// refused, one of this group seeds a joiner.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_seeds_only_a_joiner_of_its_own_group() {
    use openraft::storage::RaftSnapshotBuilder;
    let (founder_dir, joiner_dir, stranger_dir) = (
        tempfile::tempdir().expect("tempdir"),
        tempfile::tempdir().expect("tempdir"),
        tempfile::tempdir().expect("tempdir"),
    );
    let group = GroupStart { epoch: 3, base: 2 };
    let mut founder = RoomStorage::open(founder_dir.path()).expect("open");
    append_and_apply(&mut founder, 1, 1, vec![post(1, "a"), post(2, "b")]).await;
    founder
        .begin_group(group, GroupRole::Founder)
        .await
        .expect("found");
    append_and_apply(&mut founder, 1, 1, vec![post(3, "c")]).await;
    let snap = founder
        .state_machine
        .build_snapshot()
        .await
        .expect("snapshot");

    let mut joiner = RoomStorage::open(joiner_dir.path()).expect("open");
    joiner
        .begin_group(group, GroupRole::Joiner)
        .await
        .expect("join");
    joiner
        .state_machine
        .install_snapshot(&snap.meta, snap.snapshot.clone())
        .await
        .expect("install");
    assert!(joiner.group().seeded);
    let general = ConversationId::new("general").expect("conversation");
    let got = joiner
        .reader
        .messages(&general, None, None, 10)
        .expect("read");
    assert_eq!(got.iter().map(|m| m.index).collect::<Vec<_>>(), [1, 2, 3]);

    let mut stranger = RoomStorage::open(stranger_dir.path()).expect("open");
    stranger
        .begin_group(GroupStart { epoch: 4, base: 2 }, GroupRole::Joiner)
        .await
        .expect("join");
    let e = stranger
        .state_machine
        .install_snapshot(&snap.meta, snap.snapshot)
        .await
        .expect_err("another group's snapshot");
    assert!(e.to_string().contains("epoch 3"), "{e}");
}
