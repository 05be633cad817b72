//! Hostile input: every prefix, every bit flip, arbitrary bytes. Nothing may panic, and
//! nothing allocates in the code under test (all lists are fixed-capacity).

use super::super::fixtures::*;
use super::*;
use proptest::prelude::*;

const VECTORS: [&[u8]; 4] = [&REQUEST, &RESPONSE_V4, &RESPONSE_V6, &REQUEST_LONG_TERM];

#[test]
fn every_prefix_is_rejected_without_panic() {
    for v in VECTORS {
        for n in 0..v.len() {
            assert!(Message::parse(&v[..n]).is_err(), "prefix {n} accepted");
            // A prefix of a stream is "need more", never an error or a bogus frame.
            assert_eq!(frame_len(&v[..n]), Ok(None), "prefix {n}");
            let _ = ChannelData::parse(&v[..n]);
        }
    }
}

#[test]
fn every_bit_flip_is_handled() {
    for v in VECTORS {
        for bit in 0..v.len() * 8 {
            let mut m = v.to_vec();
            m[bit / 8] ^= 1 << (bit % 8);
            if let Ok(msg) = Message::parse(&m) {
                exercise(&msg);
            }
            let _ = frame_len(&m);
        }
    }
}

#[test]
fn fingerprinted_vectors_catch_any_flip_after_the_header() {
    // A flipped body bit breaks the TLV structure or the CRC, or (a length grown to swallow
    // the rest) hides the FINGERPRINT inside another value; it is never accepted as intact.
    for v in [&REQUEST[..], &RESPONSE_V4, &RESPONSE_V6] {
        for bit in HEADER_LEN * 8..v.len() * 8 {
            let mut m = v.to_vec();
            m[bit / 8] ^= 1 << (bit % 8);
            let intact = Message::parse(&m).is_ok_and(|m| m.has_fingerprint());
            assert!(!intact, "bit {bit} flip accepted");
        }
    }
}

/// A valid header followed by `body`, so the fuzzing reaches the TLV walk.
fn with_header(body: &[u8]) -> Vec<u8> {
    let mut m = vec![0x00, 0x01, 0, 0, 0x21, 0x12, 0xa4, 0x42];
    m.extend_from_slice(&[7; 12]);
    m.extend_from_slice(body);
    let len = (body.len() as u16).to_be_bytes();
    m[2..4].copy_from_slice(&len);
    m
}

proptest! {
    #[test]
    fn arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
        if let Ok(m) = Message::parse(&bytes) {
            exercise(&m);
        }
        let _ = frame_len(&bytes);
        let _ = classify(&bytes);
        let _ = ChannelData::parse(&bytes);
    }

    #[test]
    fn arbitrary_attributes(words in proptest::collection::vec(any::<[u8; 4]>(), 0..40)) {
        let body: Vec<u8> = words.concat();
        let m = with_header(&body);
        if let Ok(msg) = Message::parse(&m) {
            exercise(&msg);
        }
    }
}
