//! ICE attributes (RFC 8445 §16.1). The relay never acts on them; knowing them keeps
//! connectivity checks sent to us from drawing 420 replies.

use super::turn::{flag_attr, int_attr};
use super::{Attr, AttrType, expect_len, fixed, put};
use crate::stun::error::AttrError;
use crate::stun::header::TransactionId;

int_attr!(
    /// PRIORITY of the candidate being checked.
    Priority(u32), PRIORITY
);
int_attr!(
    /// ICE-CONTROLLED tie-breaker.
    IceControlled(u64), ICE_CONTROLLED
);
int_attr!(
    /// ICE-CONTROLLING tie-breaker.
    IceControlling(u64), ICE_CONTROLLING
);
flag_attr!(
    /// USE-CANDIDATE nomination flag.
    UseCandidate, USE_CANDIDATE
);

#[cfg(test)]
mod tests {
    use super::*;
    const T: TransactionId = TransactionId([0; 12]);

    #[test]
    fn rfc5769_values() {
        // §2.1 PRIORITY and ICE-CONTROLLED values.
        assert_eq!(
            Priority::decode(&[0x6e, 0x00, 0x01, 0xff], &T),
            Ok(Priority(0x6e0001ff))
        );
        assert_eq!(
            IceControlled::decode(&[0x93, 0x2f, 0xf9, 0xb1, 0x51, 0x26, 0x3b, 0x36], &T),
            Ok(IceControlled(0x932f_f9b1_5126_3b36))
        );
        let mut out = [0u8; 8];
        IceControlling(1).encode(&mut out, &T);
        assert_eq!(out, [0, 0, 0, 0, 0, 0, 0, 1]);
        assert!(IceControlling::decode(&[0; 4], &T).is_err());
        assert_eq!(UseCandidate::decode(&[], &T), Ok(UseCandidate));
        assert!(UseCandidate::decode(&[0; 4], &T).is_err());
    }
}
