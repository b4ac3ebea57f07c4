//! The modules port from both ends: the host's server reading the guest's requests, the guest
//! reading the host's answers, and the alias index over the same bytes (glob patterns).
#![no_main]

use libfuzzer_sys::fuzz_target;
use vmtest_init::protocol::{ModuleFrameReader, ModuleReply, MAX_FRAME_LEN};

fuzz_target!(|data: &[u8]| {
    vmtest::__fuzz::module_requests(data);
    let mut replies = ModuleFrameReader::new(data, MAX_FRAME_LEN);
    loop {
        match replies.next_frame::<ModuleReply>() {
            Ok(Some(_)) | Err(vmtest_init::protocol::FrameError::Decode(_)) => {}
            Ok(None) | Err(_) => break,
        }
    }
});
