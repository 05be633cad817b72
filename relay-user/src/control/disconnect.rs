//! Ending one allocation at an operator's request (`DELETE /api/allocations/{id}`,
//! `relay status --disconnect`): a job on the shard that holds it, which ends it through
//! the core's own removal path (the one expiry takes), so the shard's loop then clears
//! the kernel maps, closes the relay socket and frees the port as for any other end.

use std::{sync::Arc, time::Instant};

use relay_proto::server::{AllocationId, FiveTuple};

use super::{Control, QUERY_TIMEOUT};

/// Why an allocation could not be ended.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum DisconnectError {
    #[error("`{0}` is not an allocation id (the hexadecimal id `relay status` shows)")]
    BadId(String),
    #[error("no allocation {0} (ended already?)")]
    NotFound(String),
    /// Some shard did not answer: the allocation may be there.
    #[error("no allocation {id} on the shards that answered; {missing} did not answer in time")]
    ShardsMissing { id: String, missing: String },
}

impl Control {
    /// Ends allocation `id` (its printed, hexadecimal form). Ids name their shard, so at
    /// most one shard finds it. Returns its user and client. Blocks.
    pub fn disconnect(&self, id: &str) -> Result<(Arc<str>, FiveTuple), DisconnectError> {
        let parsed: AllocationId = id
            .parse()
            .map_err(|_| DisconnectError::BadId(id.to_owned()))?;
        let answers = self.gather(QUERY_TIMEOUT, move |s| s.disconnect(Instant::now(), parsed));
        let mut missing = Vec::new();
        for (answer, shard) in answers.into_iter().zip(&self.shards) {
            match answer {
                Some(Some(found)) => return Ok(found),
                Some(None) => {}
                None => missing.push(shard.name.as_str()),
            }
        }
        if missing.is_empty() {
            Err(DisconnectError::NotFound(id.to_owned()))
        } else {
            Err(DisconnectError::ShardsMissing {
                id: id.to_owned(),
                missing: missing.join(", "),
            })
        }
    }
}
