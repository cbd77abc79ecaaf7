//! openraft's own storage test suite, run against the redb log store and state machine.

use openraft::testing::log::{StoreBuilder, Suite};
use openraft::StorageError;

use super::{LogStore, StateMachine};
use crate::cluster::types::TypeConfig;

struct Builder;

impl StoreBuilder<TypeConfig, LogStore, StateMachine, tempfile::TempDir> for Builder {
    async fn build(
        &self,
    ) -> Result<(tempfile::TempDir, LogStore, StateMachine), StorageError<TypeConfig>> {
        let dir = tempfile::tempdir()
            .map_err(|e| StorageError::read(openraft::errors::ErrorSource::from_error(&e)))?;
        let log = LogStore::open(dir.path())
            .map_err(|e| StorageError::read(openraft::errors::ErrorSource::from_error(&e)))?;
        let sm = StateMachine::open(dir.path().to_path_buf(), 3)
            .map_err(|e| StorageError::read(openraft::errors::ErrorSource::from_error(&e)))?;
        Ok((dir, log, sm))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redb_store_passes_openraft_storage_suite() -> Result<(), StorageError<TypeConfig>> {
    Suite::test_all(Builder).await
}
