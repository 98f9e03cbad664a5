//! openraft's storage conformance suite against the RocksDB log store and
//! state machine.

use openraft::testing::log::{StoreBuilder, Suite};
use openraft::type_config::TypeConfigExt;
use openraft::StorageError;
use skygit_consensus::TypeConfig;
use skygit_storage::{LogStore, RoomStorage, StateMachine};

struct Builder;

impl StoreBuilder<TypeConfig, LogStore, StateMachine, tempfile::TempDir> for Builder {
    async fn build(
        &self,
    ) -> Result<(tempfile::TempDir, LogStore, StateMachine), StorageError<TypeConfig>> {
        let dir =
            tempfile::tempdir().map_err(|e| StorageError::read(TypeConfig::err_from_error(&e)))?;
        let s = RoomStorage::open(dir.path())
            .map_err(|e| StorageError::read(TypeConfig::err_from_error(&e)))?;
        Ok((dir, s.log, s.state_machine))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openraft_storage_suite() -> Result<(), StorageError<TypeConfig>> {
    Suite::test_all(Builder).await?;
    Ok(())
}

/// Reads of more entries than one chunk: a full read returns every entry
/// (openraft's contract), a limited read a bounded prefix, a stream all of
/// them in order, in chunks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_reads_return_every_entry() {
    use futures::StreamExt;
    use openraft::entry::RaftEntry;
    use openraft::storage::{RaftLogReader, RaftLogStorage, RaftLogStorageExt};
    use openraft::vote::RaftLeaderId;

    let dir = tempfile::tempdir().unwrap();
    let mut log = RoomStorage::open(dir.path()).unwrap().log;
    let leader = openraft::vote::leader_id_adv::LeaderId::new(1, 1).to_committed();
    let entry = |i| skygit_consensus::types::Entry::new_blank(openraft::LogId::new(leader, i));
    log.blocking_append((1..=10_000).map(entry)).await.unwrap();

    let all = log.try_get_log_entries(1..=10_000).await.unwrap();
    assert_eq!(all.len(), 10_000);
    assert!(all.iter().zip(1..).all(|(e, i)| e.index() == i));

    let limited = log.limited_get_log_entries(1, 10_001).await.unwrap();
    assert!(!limited.is_empty() && limited.len() < 10_000);
    assert_eq!(limited[0].index(), 1);

    let streamed: Vec<_> = log.entries_stream(1..10_001).await.collect().await;
    assert_eq!(streamed.len(), 10_000);
    assert!(streamed
        .iter()
        .zip(1..)
        .all(|(e, i)| e.as_ref().unwrap().index() == i));

    // Entries up to 5,000 purged: a stream from the start holds what is left.
    log.purge(openraft::LogId::new(leader, 5_000))
        .await
        .unwrap();
    let streamed: Vec<_> = log.entries_stream(1..10_001).await.collect().await;
    assert_eq!(streamed.len(), 5_000);
    assert_eq!(streamed[0].as_ref().unwrap().index(), 5_001);
}
