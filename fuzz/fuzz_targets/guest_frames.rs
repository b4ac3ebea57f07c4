//! The host's decoder of the guest's control port: any byte stream must decode to messages or
//! an error, without panicking and without allocating beyond the frame limit.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vmtest_init::protocol::{FrameReader, GuestMessage};

fuzz_target!(|data: &[u8]| {
    let mut reader = FrameReader::new(data);
    while let Ok(Some(_)) = reader.next_frame::<GuestMessage>() {}
});
