//! The host's end of the modules port: answers the guest's `modprobe` requests.
//!
//! One thread per VM reads [`ModuleRequest`] frames from the port's socket and answers each
//! with [`ModuleReply`] frames: the modules to load (resolved by the kernel's
//! [`ModuleProvider`]) and their decompressed images, or why not. Requests are untrusted: their
//! size, name and list of loaded modules are bounded, and a name is only ever looked up, never
//! made into a path. Undecodable bytes are skipped up to the next frame.

use std::io::{self, BufReader, BufWriter, Read, Write};
use std::os::unix::net::UnixStream;
use std::sync::Arc;

use vmtest_init::protocol::{
    encode_module_frame, FrameError, ModuleFrameReader, ModuleHeader, ModuleReply, ModuleRequest,
    MAX_MODULE_NAME_LEN, MAX_MODULE_REQUEST_LEN, MODULE_CHUNK_LEN, MODULE_PROTOCOL_VERSION,
};

use crate::kernel::{ModuleProvider, Resolved};

/// Most names a request may list as loaded.
const MAX_LOADED: usize = 8192;
/// Longest module name the kernel has (`MODULE_NAME_LEN`, with room to spare).
const MAX_LOADED_NAME_LEN: usize = 64;

/// Serves the port on its own thread until the VM closes it.
pub(crate) fn spawn(
    stream: UnixStream,
    provider: Arc<ModuleProvider>,
) -> io::Result<std::thread::JoinHandle<()>> {
    let reader = stream.try_clone()?;
    std::thread::Builder::new()
        .name("vmtest-modules".into())
        .spawn(move || serve(BufReader::new(reader), BufWriter::new(stream), &provider))
}

/// Answers every request read from `input` on `output`, until `input` ends or `output` fails.
pub(crate) fn serve(input: impl Read, mut output: impl Write, provider: &ModuleProvider) {
    let mut requests = ModuleFrameReader::new(input, MAX_MODULE_REQUEST_LEN);
    loop {
        let request = match requests.next_frame::<ModuleRequest>() {
            Ok(Some(request)) => request,
            Ok(None) | Err(FrameError::Io(_)) => return,
            // Garbage, or the rest of a request a dying helper cut short: no nonce to answer.
            Err(_) => continue,
        };
        if answer(&request, provider, &mut output).and_then(|()| output.flush()).is_err() {
            return;
        }
    }
}

/// Writes the answer to one request.
fn answer(
    request: &ModuleRequest,
    provider: &ModuleProvider,
    out: &mut impl Write,
) -> io::Result<()> {
    let nonce = request.nonce;
    let resolved = check(request).and_then(|()| provider.resolve(&request.name, &request.loaded));
    let modules = match resolved {
        Ok(Resolved::BuiltIn) => return send(out, &ModuleReply::BuiltIn { nonce }),
        Ok(Resolved::Modules(modules)) => modules,
        Err(message) => return send(out, &ModuleReply::Failed { nonce, message }),
    };
    let mut images = Vec::with_capacity(modules.len());
    for (module, _) in &modules {
        match provider.image(module) {
            Ok(image) => images.push(image),
            Err(message) => return send(out, &ModuleReply::Failed { nonce, message }),
        }
    }
    let headers = modules
        .iter()
        .zip(&images)
        .map(|((module, wanted), image)| ModuleHeader {
            name: module.name.clone(),
            len: image.len() as u64,
            wanted: *wanted,
        })
        .collect();
    send(out, &ModuleReply::Modules { nonce, modules: headers })?;
    for image in &images {
        for chunk in image.chunks(MODULE_CHUNK_LEN) {
            send(out, &ModuleReply::Data { nonce, data: chunk.to_vec() })?;
        }
    }
    Ok(())
}

/// Checks a request's version and bounds; the error is the message for the guest.
fn check(request: &ModuleRequest) -> Result<(), String> {
    if request.version != MODULE_PROTOCOL_VERSION {
        return Err(format!(
            "the guest's modprobe speaks module protocol {}, the host {MODULE_PROTOCOL_VERSION}",
            request.version
        ));
    }
    let name = &request.name;
    // Aliases hold more than module names do (`devname:net/tun`, `pci:v*d*`); the name is
    // only compared with the index, never used as a path.
    if name.is_empty()
        || name.len() > MAX_MODULE_NAME_LEN
        || !name.bytes().all(|b| b.is_ascii_graphic())
    {
        let shown: String = name.chars().take(64).collect();
        return Err(format!(
            "Module name {shown:?} is not a module name or alias (printable ASCII, at most \
             {MAX_MODULE_NAME_LEN} bytes)"
        ));
    }
    if request.loaded.len() > MAX_LOADED
        || request.loaded.iter().any(|n| n.len() > MAX_LOADED_NAME_LEN)
    {
        return Err("the request's list of loaded modules is too long".to_owned());
    }
    Ok(())
}

fn send(out: &mut impl Write, reply: &ModuleReply) -> io::Result<()> {
    out.write_all(&encode_module_frame(reply).map_err(io::Error::other)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::fixture_kernel;
    use vmtest_init::protocol::MAX_FRAME_LEN;

    fn request(nonce: u64, name: &str) -> Vec<u8> {
        let request = ModuleRequest {
            version: MODULE_PROTOCOL_VERSION,
            nonce,
            name: name.into(),
            loaded: vec![],
        };
        encode_module_frame(&request).unwrap()
    }

    fn replies(wire: &[u8]) -> Vec<ModuleReply> {
        let mut reader = ModuleFrameReader::new(wire, MAX_FRAME_LEN);
        std::iter::from_fn(|| reader.next_frame().unwrap()).collect()
    }

    #[test]
    fn answers_each_request_in_turn() {
        let (_dir, kernel) = fixture_kernel("modserver");
        let provider = kernel.module_provider();
        let mut input = request(1, "rtnl-link-vxlan");
        input.extend_from_slice(b"\xf7vmtmod\x01\xff\xff\xff\xff garbage");
        input.extend(request(2, "no-such-thing"));
        let bad_version =
            ModuleRequest { version: 99, nonce: 3, name: "dummy".into(), loaded: vec![] };
        input.extend(encode_module_frame(&bad_version).unwrap());
        input.extend(request(4, "bad\nname"));
        let mut output = Vec::new();
        serve(&input[..], &mut output, &provider);

        let got = replies(&output);
        let ModuleReply::Modules { nonce: 1, modules } = &got[0] else { panic!("{:?}", got[0]) };
        let names: Vec<&str> = modules.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(names, ["udp_tunnel", "ip6_udp_tunnel", "vxlan"]);
        assert!(modules[2].wanted && !modules[0].wanted && !modules[1].wanted);
        let data: Vec<u8> = got[1..]
            .iter()
            .take_while(|r| matches!(r, ModuleReply::Data { nonce: 1, .. }))
            .flat_map(|r| match r {
                ModuleReply::Data { data, .. } => data.clone(),
                _ => unreachable!(),
            })
            .collect();
        let lens: u64 = modules.iter().map(|m| m.len).sum();
        assert_eq!(data.len() as u64, lens);
        assert!(data.starts_with(b"\x7fELF"), "the images are sent decompressed");
        let rest: Vec<&ModuleReply> = got
            .iter()
            .filter(|r| !matches!(r, ModuleReply::Modules { .. } | ModuleReply::Data { .. }))
            .collect();
        let messages: Vec<(u64, &str)> = rest
            .iter()
            .map(|r| match r {
                ModuleReply::Failed { nonce, message } => (*nonce, message.as_str()),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(messages.len(), 3, "{messages:?}");
        assert!(messages[0].0 == 2 && messages[0].1.contains("Module no-such-thing not found"));
        assert!(messages[1].0 == 3 && messages[1].1.contains("module protocol 99"));
        assert!(messages[2].0 == 4 && messages[2].1.contains("not a module name"));
    }

    #[test]
    fn refuses_oversized_requests() {
        let mut long = request(1, "dummy");
        let huge = ModuleRequest {
            version: MODULE_PROTOCOL_VERSION,
            nonce: 2,
            name: "x".repeat(MAX_MODULE_NAME_LEN + 1),
            loaded: vec![],
        };
        long.extend(encode_module_frame(&huge).unwrap());
        let many = ModuleRequest {
            version: MODULE_PROTOCOL_VERSION,
            nonce: 3,
            name: "dummy".into(),
            loaded: vec!["y".repeat(100)],
        };
        long.extend(encode_module_frame(&many).unwrap());
        let (_dir, kernel) = fixture_kernel("modserver-bounds");
        let mut output = Vec::new();
        serve(&long[..], &mut output, &kernel.module_provider());
        let failed: Vec<u64> = replies(&output)
            .iter()
            .filter_map(|r| match r {
                ModuleReply::Failed { nonce, .. } => Some(*nonce),
                _ => None,
            })
            .collect();
        assert_eq!(failed, [1, 2, 3], "dummy is not in the fixture; the others are refused");
    }
}
