//! A handler's outcome packed into one scalar: XDP action and reason, or the reason the
//! packet goes up.

use relay_common::Reason;

const ERR: u64 = 1 << 63;

#[inline(always)]
pub fn pack(r: Result<(u32, Reason), Reason>) -> u64 {
    match r {
        Ok((action, reason)) => ((action as u64) << 32) | reason as u64,
        Err(reason) => ERR | reason as u64,
    }
}

#[inline(always)]
pub fn unpack(v: u64) -> Result<(u32, Reason), Reason> {
    let reason = reason_from(v as u32);
    if v & ERR != 0 {
        Err(reason)
    } else {
        Ok(((v >> 32) as u32, reason))
    }
}

#[inline(always)]
pub fn reason_from(n: u32) -> Reason {
    let mut i = 0;
    while i < Reason::ALL.len() {
        if Reason::ALL[i] as u32 == n {
            return Reason::ALL[i];
        }
        i += 1;
    }
    Reason::Malformed
}
