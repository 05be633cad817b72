//! Parse arbitrary bytes as ChannelData and as a TCP frame; round-trip what parses.

#![no_main]

use libfuzzer_sys::fuzz_target;
use relay_proto::stun::*;

fuzz_target!(|data: &[u8]| {
    let _ = classify(data);
    if let Ok(Some(n)) = frame_len(data) {
        assert!(n <= data.len());
        if classify(data) == PacketKind::ChannelData {
            // A whole TCP frame (with its padding) is always a valid ChannelData.
            let cd = ChannelData::parse(&data[..n]).expect("framed ChannelData parses");
            assert_eq!(
                usize::from(u16::from_be_bytes([data[2], data[3]])),
                cd.payload().len()
            );
        }
    }
    let Ok(cd) = ChannelData::parse(data) else {
        return;
    };
    assert!(classify(data) == PacketKind::ChannelData);
    let mut out = vec![0u8; cd.payload().len() + 8];
    for pad in [false, true] {
        let n = write_channel_data(&mut out, cd.channel(), cd.payload(), pad).expect("fits");
        let again = ChannelData::parse(&out[..n]).expect("written ChannelData parses");
        assert_eq!(
            (again.channel(), again.payload()),
            (cd.channel(), cd.payload())
        );
        if pad {
            assert_eq!(n % 4, 0);
            assert_eq!(frame_len(&out[..n]), Ok(Some(n)));
        }
    }
});
