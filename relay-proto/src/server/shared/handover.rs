//! [`Shared`]'s handover side (read and restored by `snapshot.rs`): what a snapshot takes of
//! the reservations and quarantines, and how the next process restores them and adopts the
//! previous process's allocations. Apart from the per-request paths in `shared.rs` because it
//! runs only at an upgrade, and its checks (a port already taken) differ from admission's.

use std::sync::atomic::Ordering;
use std::time::Instant;

use super::quota::Owner;
use super::{Reservation, Shared};
use crate::server::allocation::{Family, Relayed};

impl Shared {
    /// Every reservation and quarantine with its deadline, for a snapshot.
    #[allow(clippy::type_complexity)]
    pub(crate) fn held_ports(&self) -> (Vec<([u8; 8], Reservation)>, Vec<(Family, u16, Instant)>) {
        let s = self.lock();
        let mut reservations: Vec<_> = s.reservations.iter().map(|(t, r)| (*t, *r)).collect();
        reservations.sort_by_key(|(t, _)| *t);
        let mut quarantined: Vec<_> = s
            .quarantined
            .iter()
            .map(|(&(f, p), &until)| (f, p, until))
            .collect();
        quarantined.sort_by_key(|&(f, p, _)| (f, p));
        (reservations, quarantined)
    }

    /// A reservation of the previous process: its port leaves the pool again. `false` if
    /// the family has no pool here or the port is taken.
    pub(crate) fn restore_reservation(&self, token: [u8; 8], r: Reservation) -> bool {
        let mut s = self.lock();
        let taken = s.pools[r.family.idx()]
            .as_mut()
            .is_some_and(|pool| pool.take(r.port));
        if taken {
            s.reservations.insert(token, r);
        }
        taken
    }

    /// A quarantined port of the previous process; `false` as for a reservation.
    pub(crate) fn restore_quarantine(&self, family: Family, port: u16, until: Instant) -> bool {
        let mut s = self.lock();
        let taken = s.pools[family.idx()]
            .as_mut()
            .is_some_and(|pool| pool.take(port));
        if taken {
            s.quarantined.insert((family, port), until);
        }
        taken
    }

    /// Counts an allocation of the previous process as if admitted here: its relayed ports
    /// leave the pools, its owner's quotas count it. `Err` names the port that is not free
    /// (or has no pool); nothing is taken then.
    pub(crate) fn adopt(
        &self,
        owner: Owner<'_>,
        relayed: &[Option<Relayed>; 2],
    ) -> Result<(), (Family, u16)> {
        let mut s = self.lock();
        let mut taken: Vec<(Family, u16)> = Vec::with_capacity(2);
        for r in relayed.iter().flatten() {
            let (family, port) = (Family::of(r.bind.ip()), r.bind.port());
            let ok = s.pools[family.idx()]
                .as_mut()
                .is_some_and(|pool| pool.take(port));
            if !ok {
                for (f, p) in taken {
                    s.release_port(f, p);
                }
                return Err((family, port));
            }
            taken.push((family, port));
        }
        for (family, port) in taken {
            self.mark_live(family, port, true);
        }
        *s.per_user.entry(owner.user.clone()).or_insert(0) += 1;
        if let Some(source) = owner.source() {
            *s.per_source.entry(source).or_insert(0) += 1;
        }
        self.allocations.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}
