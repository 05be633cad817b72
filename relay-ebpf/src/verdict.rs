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
    if (n as usize) < Reason::ALL.len() {
        // SAFETY: `Reason` is `repr(u32)` and its values are 0..ALL.len() (checked below).
        unsafe { core::mem::transmute::<u32, Reason>(n) }
    } else {
        Reason::Malformed
    }
}

// `reason_from` indexes instead of searching (a search of up to 36 comparisons ran on
// every packet): every value below `ALL.len()` must be a reason.
const _: () = {
    let mut i = 0;
    while i < Reason::ALL.len() {
        assert!(Reason::ALL[i] as usize == i);
        i += 1;
    }
};
