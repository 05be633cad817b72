//! The quotas' side of [`Shared`](super::Shared): the limits in force, the source a
//! per-source quota counts, and whose allocation a count belongs to. Apart from the port
//! bookkeeping because it is plain data and arithmetic the admin view and the snapshot use
//! too, with no lock or pool in it.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::Arc;

use crate::auth::CredentialKind;
use crate::server::config::ServerConfig;

/// Allocation quotas in force for the whole relay.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Limits {
    /// Allocations held at once, all shards together; beyond it 508 (or 300).
    pub max_allocations: usize,
    /// Allocations per configured (static) username, all shards together; beyond it 486.
    pub max_allocations_per_user: usize,
    /// Allocations per TURN REST username, all shards together; beyond it 486.
    pub max_allocations_per_rest_user: usize,
    /// TURN REST allocations per client source ([`source_of`]), all shards together;
    /// beyond it 486. Static users' allocations are not counted.
    pub max_allocations_per_source: usize,
}

impl Limits {
    /// The initial quotas of `config`.
    pub fn of(config: &ServerConfig) -> Self {
        Self {
            max_allocations: config.max_allocations,
            max_allocations_per_user: config.max_allocations_per_user,
            max_allocations_per_rest_user: config.max_allocations_per_rest_user,
            max_allocations_per_source: config.max_allocations_per_source,
        }
    }

    /// The per-username quota for `credential`.
    pub fn per_user(&self, credential: CredentialKind) -> usize {
        match credential {
            CredentialKind::Static => self.max_allocations_per_user,
            CredentialKind::Rest => self.max_allocations_per_rest_user,
        }
    }
}

/// The source a per-source quota counts: the client's IPv4 address, or its IPv6 /64 (one
/// host or home network; privacy addresses change within it). As an address: the /64's
/// first one.
pub fn source_of(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => {
            let prefix = u128::from(v6) & !u128::from(u64::MAX);
            IpAddr::V6(Ipv6Addr::from(prefix))
        }
        v4 => v4,
    }
}

/// Whose allocation it is, as the quotas count it.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Owner<'a> {
    pub user: &'a Arc<str>,
    pub credential: CredentialKind,
    /// The client's IP address.
    pub client: IpAddr,
}

impl Owner<'_> {
    /// The source key, for allocations a per-source quota counts (REST ones).
    pub(super) fn source(&self) -> Option<IpAddr> {
        (self.credential == CredentialKind::Rest).then(|| source_of(self.client))
    }
}

/// One fewer for `key`; a count that reaches 0 leaves the map (it stays as small as the
/// set of owners holding something).
pub(super) fn uncount<K, Q>(counts: &mut HashMap<K, usize>, key: &Q)
where
    K: std::borrow::Borrow<Q> + std::hash::Hash + Eq,
    Q: std::hash::Hash + Eq + ?Sized,
{
    if let Some(n) = counts.get_mut(key) {
        *n -= 1;
        if *n == 0 {
            counts.remove(key);
        }
    }
}
