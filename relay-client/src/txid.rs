//! Transaction ids without a random source: SHA-256 over a caller-given seed and a
//! counter. The caller seeds from the OS (or a constant in tests, for repeatable bytes).

use relay_proto::stun::TransactionId;
use sha2::{Digest, Sha256};

pub(crate) struct TxidGen {
    seed: [u8; 16],
    counter: u64,
}

impl TxidGen {
    pub(crate) fn new(seed: [u8; 16]) -> Self {
        Self { seed, counter: 0 }
    }

    pub(crate) fn next(&mut self) -> TransactionId {
        self.counter += 1;
        let digest = Sha256::new()
            .chain_update(self.seed)
            .chain_update(self.counter.to_be_bytes())
            .finalize();
        let mut id = [0u8; 12];
        id.copy_from_slice(&digest[..12]);
        TransactionId(id)
    }
}
