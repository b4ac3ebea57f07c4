//! The guest's `modprobe`: kernel modules on demand.
//!
//! PID 1 links `/sbin/modprobe` and `/usr/sbin/modprobe` to its own binary and points
//! `/proc/sys/kernel/modprobe` there ([`install`]). When the kernel needs a module
//! (`request_module`: a socket family, a link type, a filesystem, a crypto algorithm) it runs
//! `modprobe -q -- <name>`; a test may run `modprobe <name>` itself. The binary, started as
//! `modprobe` ([`invoked_as_modprobe`]), asks the host over the [`MODULES_PORT`] for the module
//! by name or alias; the host resolves it, adds its dependencies and sends their decompressed
//! images, which are loaded here with `init_module`, dependencies first.
//!
//! Only one process can have a virtio-serial port open: concurrent helpers retry `EBUSY` with a
//! backoff. The port is closed before the first `init_module`, since a module's init may itself
//! request a module, whose helper then needs the port.

use std::ffi::CString;
use std::fs::File;
use std::io::{self, BufReader, Read, Write};
use std::path::Path;
use std::time::{Duration, Instant};

use rustix::event::{poll, PollFd, PollFlags, Timespec};
use rustix::io::Errno;

use crate::modules::KernelLog;
use crate::ports::{find_port, Lookup, VIRTIO_PORTS_DIR};
use crate::protocol::{
    encode_module_frame, ModuleFrameReader, ModuleHeader, ModuleReply, ModuleRequest,
    MAX_FRAME_LEN, MAX_MODULE_NAME_LEN, MODULES_PORT, MODULE_PROTOCOL_VERSION, PLAN_PATH,
};

/// Where the kernel looks for its module loader.
const MODPROBE_SYSCTL: &str = "/proc/sys/kernel/modprobe";
/// The paths the helper is installed at; the first is what the kernel runs.
const MODPROBE_PATHS: [&str; 2] = ["/sbin/modprobe", "/usr/sbin/modprobe"];
/// How long a request may take, port contention and the host's first alias index build
/// included.
const PATIENCE: Duration = Duration::from_secs(300);
/// Longest wait between two attempts to open a busy port.
const MAX_BACKOFF: Duration = Duration::from_millis(50);
/// Most bytes of module images one answer may announce.
const MAX_TOTAL_LEN: u64 = 1 << 30;
/// Largest request the guest sends: the host refuses longer ones.
const MAX_REQUEST_LEN: usize = crate::protocol::MAX_MODULE_REQUEST_LEN;

/// Links the running binary as `modprobe` and makes it the kernel's module loader. A
/// `modprobe` a test brought as a fixture is kept (and is what the kernel runs). Returns the
/// problems found, for the log; none is fatal (modules then just do not load on demand).
pub(crate) fn install() -> Vec<String> {
    let exe = match std::env::current_exe() {
        Ok(exe) => exe,
        Err(e) => {
            return vec![format!("modprobe not installed: failed to find PID 1's binary: {e}")]
        }
    };
    let mut problems = Vec::new();
    for path in MODPROBE_PATHS {
        if Path::new(path).symlink_metadata().is_ok() {
            continue;
        }
        if let Err(e) = link(&exe, Path::new(path)) {
            problems.push(format!("failed to link {path} to {}: {e}", exe.display()));
        }
    }
    if let Err(e) = std::fs::write(MODPROBE_SYSCTL, MODPROBE_PATHS[0]) {
        problems.push(format!("failed to write {MODPROBE_SYSCTL}: {e}"));
    }
    problems
}

/// Makes `path` a symlink to `target`, creating its directory.
fn link(target: &Path, path: &Path) -> io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::os::unix::fs::symlink(target, path)
}

/// Whether this process was started as the guest's `modprobe`: `argv[0]`'s file name is
/// `modprobe`, inside a vmtest guest (the plan exists). Anywhere else a binary called
/// `modprobe` is left alone.
pub fn invoked_as_modprobe() -> bool {
    let Some(argv0) = std::env::args_os().next() else { return false };
    Path::new(&argv0).file_name().is_some_and(|name| name == "modprobe")
        && Path::new(PLAN_PATH).exists()
}

/// Runs `modprobe` with this process's arguments and exits with its status.
pub fn modprobe_main() -> ! {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let code = match Invocation::parse(&args) {
        Ok(invocation) => invocation.run(),
        Err(message) => {
            eprintln!("modprobe: ERROR: {message}");
            1
        }
    };
    std::process::exit(code)
}

/// What `modprobe` was asked to do.
#[derive(Debug, Default, PartialEq, Eq)]
struct Invocation {
    quiet: bool,
    verbose: bool,
    remove: bool,
    /// Module names or aliases.
    names: Vec<String>,
    /// Module parameters (`name=value ...`) for the named module.
    params: String,
}

impl Invocation {
    /// Parses `modprobe [-q] [-v] [-r] [-a] [-b] [--] name [param=value ...]`.
    fn parse(args: &[String]) -> Result<Invocation, String> {
        let mut invocation = Invocation::default();
        let mut all = false;
        let mut rest = Vec::new();
        let mut options_done = false;
        for arg in args {
            if options_done || !arg.starts_with('-') || arg == "-" {
                rest.push(arg.clone());
                // Like kmod's: options stop at the module name; the rest are its parameters.
                options_done = true;
                continue;
            }
            if arg == "--" {
                options_done = true;
                continue;
            }
            let flags: Vec<String> = match arg.strip_prefix("--") {
                Some(long) => vec![long.to_owned()],
                None => arg[1..].chars().map(String::from).collect(),
            };
            for flag in flags {
                match flag.as_str() {
                    "q" | "quiet" => invocation.quiet = true,
                    "v" | "verbose" => invocation.verbose = true,
                    "r" | "remove" => invocation.remove = true,
                    "a" | "all" => all = true,
                    // Blacklists do not exist in the guest; accepted for compatibility.
                    "b" | "use-blacklist" => {}
                    other => {
                        let dash = if other.len() == 1 { "-" } else { "--" };
                        return Err(format!(
                            "unsupported option {dash}{other} (this modprobe takes -q, -v, -r, \
                             -a, -b)"
                        ));
                    }
                }
            }
        }
        if rest.is_empty() {
            return Err("missing module name".to_owned());
        }
        if all || invocation.remove {
            invocation.names = rest;
        } else {
            invocation.names = vec![rest.remove(0)];
            invocation.params = rest.join(" ");
        }
        Ok(invocation)
    }

    /// Does it; returns the exit status.
    fn run(&self) -> i32 {
        let mut status = 0;
        for name in &self.names {
            let result = if self.remove { remove(name) } else { self.load(name).map_err(|e| e.0) };
            if let Err(message) = result {
                if !self.quiet {
                    eprintln!("modprobe: {message}");
                }
                status = 1;
            }
        }
        status
    }

    /// Loads the module `name` names (a module or an alias), with what it depends on, and
    /// notes what it did in the kernel log.
    fn load(&self, name: &str) -> Result<(), Failure> {
        if is_live(&normalize(name)) {
            return Ok(());
        }
        let started = Instant::now();
        let result = self.fetch_and_load(name);
        let took = started.elapsed().as_millis();
        match &result {
            Ok(note) => kernel_log(&format!("{name}: {note} ({took} ms)")),
            Err(Failure(message)) => kernel_log(&format!("{name}: {message} ({took} ms)")),
        }
        result.map(|_| ())
    }

    /// [`load`](Self::load) without the note; returns what was done.
    fn fetch_and_load(&self, name: &str) -> Result<String, Failure> {
        let modules = match fetch(name)? {
            Fetched::BuiltIn => return Ok("built in".to_owned()),
            Fetched::Modules(modules) => modules,
        };
        let params = CString::new(self.params.as_str())
            .map_err(|_| Failure::fatal("module parameters contain a NUL byte"))?;
        let mut wanted_loaded = false;
        let mut wanted_failures = Vec::new();
        let mut any_wanted = false;
        let mut done = Vec::new();
        for (header, image) in &modules {
            if self.verbose {
                eprintln!("insmod {} (from the host)", header.name);
            }
            any_wanted |= header.wanted;
            let params = if header.wanted { params.as_c_str() } else { c"" };
            match load_image(&header.name, image, params) {
                Ok(()) => {
                    wanted_loaded |= header.wanted;
                    done.push(header.name.as_str());
                }
                Err(message) if header.wanted => wanted_failures.push(message),
                // A dependency that fails makes the modules that need it fail; those say so.
                Err(message) => {
                    if !self.quiet {
                        eprintln!("modprobe: {message}");
                    }
                }
            }
        }
        // An alias may match several modules (crypto implementations): one that loads is enough.
        if wanted_loaded || !any_wanted {
            return Ok(match done.is_empty() {
                true => "loaded already".to_owned(),
                false => format!("loaded {}", done.join(", ")),
            });
        }
        Err(Failure(format!("ERROR: {}", wanted_failures.join("; "))))
    }
}

/// Writes one informational line to the kernel log (dmesg), where a failed test's log shows
/// which modules were loaded for it.
fn kernel_log(line: &str) {
    let record = format!("<6>vmtest modprobe: {line}\n");
    let _ = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/kmsg")
        .and_then(|mut kmsg| kmsg.write_all(record.as_bytes()));
}

/// A failure message, as `modprobe: <message>` prints it.
#[derive(Debug)]
struct Failure(String);

impl Failure {
    fn fatal(message: impl std::fmt::Display) -> Failure {
        Failure(format!("FATAL: {message}"))
    }
}

/// A module name as the kernel spells it: `-` as `_`, except inside `[...]` (an alias pattern).
fn normalize(name: &str) -> String {
    let mut depth = 0u32;
    name.chars()
        .map(|c| match c {
            '[' => {
                depth += 1;
                c
            }
            ']' => {
                depth = depth.saturating_sub(1);
                c
            }
            '-' if depth == 0 => '_',
            c => c,
        })
        .collect()
}

/// Whether a module of this name is loaded and live (or built in with a `/sys/module` entry).
fn is_live(name: &str) -> bool {
    if name.is_empty() || name.contains('/') || name.starts_with('.') {
        return false;
    }
    let dir = Path::new("/sys/module").join(name);
    match std::fs::read_to_string(dir.join("initstate")) {
        Ok(state) => state.trim() == "live",
        // Built-in modules have no initstate.
        Err(_) => dir.is_dir() && !dir.join("refcnt").exists(),
    }
}

/// Loads one module image; "already loaded" counts as success.
fn load_image(name: &str, image: &[u8], params: &std::ffi::CStr) -> Result<(), String> {
    let log = KernelLog::from_now();
    match rustix::system::init_module(image, params) {
        Ok(()) | Err(Errno::EXIST) => Ok(()),
        Err(e) => {
            let mut message = format!("could not insert '{name}': {}", io::Error::from(e));
            let lines = log.relevant_lines(name);
            if !lines.is_empty() {
                message.push_str(&format!(" (dmesg: {})", lines.join(" | ")));
            }
            Err(message)
        }
    }
}

/// `modprobe -r`: unloads the named module (not its dependencies).
fn remove(name: &str) -> Result<(), String> {
    let module = normalize(name);
    let c_name = CString::new(module.as_str()).map_err(|_| "FATAL: bad module name".to_owned())?;
    match rustix::system::delete_module(&c_name, libc::O_NONBLOCK) {
        Ok(()) => Ok(()),
        Err(Errno::NOENT) if Path::new("/sys/module").join(&module).is_dir() => {
            Err(format!("FATAL: Module {module} is builtin."))
        }
        Err(Errno::NOENT) => Err(format!("FATAL: Module {module} is not currently loaded")),
        Err(e) => Err(format!("FATAL: failed to remove module {module}: {}", io::Error::from(e))),
    }
}

/// What the host answered.
#[derive(Debug, PartialEq, Eq)]
enum Fetched {
    BuiltIn,
    /// Images in load order; empty when everything is loaded already.
    Modules(Vec<(ModuleHeader, Vec<u8>)>),
}

/// Asks the host for `name`: opens the port (waiting while another helper has it), sends the
/// request, reads the answer and closes the port again.
fn fetch(name: &str) -> Result<Fetched, Failure> {
    if name.is_empty() || name.len() > MAX_MODULE_NAME_LEN {
        return Err(Failure::fatal(format!(
            "Module name `{name}` is empty or longer than {MAX_MODULE_NAME_LEN} bytes"
        )));
    }
    let deadline = Instant::now() + PATIENCE;
    let request = ModuleRequest {
        version: MODULE_PROTOCOL_VERSION,
        nonce: nonce(),
        name: name.to_owned(),
        loaded: loaded_modules(),
    };
    let mut frame = encode_module_frame(&request).map_err(Failure::fatal)?;
    if frame.len() > MAX_REQUEST_LEN {
        // Too many loaded modules to list: let the host send them all.
        let request = ModuleRequest { loaded: Vec::new(), ..request.clone() };
        frame = encode_module_frame(&request).map_err(Failure::fatal)?;
    }
    let mut port = open_port(deadline)?;
    port.write_all(&frame)
        .map_err(|e| Failure::fatal(format!("failed to send the request to the host: {e}")))?;
    let reader = BufReader::with_capacity(1 << 16, DeadlineReader { port: &port, deadline });
    let fetched = read_answer(reader, request.nonce).map_err(Failure);
    drop(port);
    fetched
}

/// Opens the modules port for reading and writing; retries while another process has it.
fn open_port(deadline: Instant) -> Result<File, Failure> {
    let device = match find_port(Path::new(VIRTIO_PORTS_DIR), MODULES_PORT) {
        Lookup::Found(entry) => Path::new("/dev").join(entry),
        Lookup::NotNamed | Lookup::NoPorts => {
            return Err(Failure::fatal(format!(
            "no virtio-serial port named {MODULES_PORT}: modules cannot be fetched from the host"
        )))
        }
    };
    let mut backoff = Duration::from_millis(1);
    loop {
        match File::options().read(true).write(true).open(&device) {
            Ok(port) => return Ok(port),
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) && Instant::now() < deadline => {
                std::thread::sleep(backoff);
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
            Err(e) => {
                return Err(Failure::fatal(format!("failed to open {}: {e}", device.display())))
            }
        }
    }
}

/// Reads the answer to the request with `nonce`: frames of other requests (left over by a
/// helper that died) and undecodable bytes are skipped.
fn read_answer(reader: impl Read, nonce: u64) -> Result<Fetched, String> {
    let mut frames = ModuleFrameReader::new(reader, MAX_FRAME_LEN);
    let mut next = move || -> Result<ModuleReply, String> {
        loop {
            match frames.next_frame::<ModuleReply>() {
                Ok(Some(reply)) if reply.nonce() == nonce => return Ok(reply),
                Ok(Some(_)) => {}
                Ok(None) => return Err("FATAL: the host closed the modules port".to_owned()),
                Err(crate::protocol::FrameError::Io(e)) => {
                    return Err(format!("FATAL: failed to read the host's answer: {e}"))
                }
                Err(_) => {}
            }
        }
    };
    let headers = match next()? {
        ModuleReply::BuiltIn { .. } => return Ok(Fetched::BuiltIn),
        ModuleReply::Failed { message, .. } => return Err(format!("FATAL: {message}")),
        ModuleReply::Data { .. } => {
            return Err("FATAL: the host sent module data before saying which modules".to_owned())
        }
        ModuleReply::Modules { modules, .. } => modules,
    };
    let total = headers.iter().try_fold(0u64, |sum, h| sum.checked_add(h.len));
    if total.is_none_or(|total| total > MAX_TOTAL_LEN) {
        return Err(format!(
            "FATAL: the host announced more than {MAX_TOTAL_LEN} bytes of modules"
        ));
    }
    let mut modules = Vec::with_capacity(headers.len());
    let mut pending: Vec<u8> = Vec::new();
    for header in headers {
        let len = usize::try_from(header.len).map_err(|_| "FATAL: module too large".to_owned())?;
        let mut image = std::mem::take(&mut pending);
        while image.len() < len {
            match next()? {
                ModuleReply::Data { data, .. } => image.extend_from_slice(&data),
                other => {
                    return Err(format!("FATAL: the host's answer broke off: {other:?}"));
                }
            }
        }
        pending = image.split_off(len);
        modules.push((header, image));
    }
    if !pending.is_empty() {
        return Err("FATAL: the host sent more module data than it announced".to_owned());
    }
    Ok(Fetched::Modules(modules))
}

/// Reads the port, giving up at a deadline.
struct DeadlineReader<'a> {
    port: &'a File,
    deadline: Instant,
}

impl Read for DeadlineReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            let left = self.deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("no answer within {} s", PATIENCE.as_secs()),
                ));
            }
            let mut fds = [PollFd::new(self.port, PollFlags::IN)];
            let timeout = Timespec::try_from(left).unwrap_or(Timespec { tv_sec: 1, tv_nsec: 0 });
            match poll(&mut fds, Some(&timeout)) {
                Ok(0) | Err(Errno::INTR) => continue,
                Ok(_) => return (&mut &*self.port).read(buf),
                Err(e) => return Err(e.into()),
            }
        }
    }
}

/// Names of the live modules, from `/proc/modules`.
fn loaded_modules() -> Vec<String> {
    let Ok(text) = std::fs::read_to_string("/proc/modules") else { return Vec::new() };
    text.lines()
        .filter(|line| line.split_whitespace().nth(4) == Some("Live"))
        .filter_map(|line| line.split_whitespace().next())
        .map(str::to_owned)
        .collect()
}

/// A number no other request of this boot uses.
fn nonce() -> u64 {
    let mut bytes = [0u8; 8];
    // SAFETY: getrandom writes at most `bytes.len()` bytes into the valid buffer.
    let got =
        unsafe { libc::getrandom(bytes.as_mut_ptr().cast(), bytes.len(), libc::GRND_NONBLOCK) };
    let random = if got == 8 { u64::from_ne_bytes(bytes) } else { 0 };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    random ^ now ^ (u64::from(std::process::id()) << 40)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn parses_what_the_kernel_and_people_pass() {
        let kernel = Invocation::parse(&args(&["-q", "--", "net-pf-38"])).unwrap();
        assert_eq!(
            kernel,
            Invocation { quiet: true, names: args(&["net-pf-38"]), ..Default::default() }
        );
        let params = Invocation::parse(&args(&["dummy", "numdummies=2", "foo=bar"])).unwrap();
        assert_eq!(params.names, ["dummy"]);
        assert_eq!(params.params, "numdummies=2 foo=bar");
        let remove = Invocation::parse(&args(&["-rqv", "dummy", "veth"])).unwrap();
        assert!(remove.remove && remove.quiet && remove.verbose);
        assert_eq!(remove.names, ["dummy", "veth"]);
        let all = Invocation::parse(&args(&["--all", "--quiet", "a", "b"])).unwrap();
        assert_eq!(all.names, ["a", "b"]);
        assert!(all.quiet && all.params.is_empty());
        // Options stop at the module name; what follows is a parameter.
        let late = Invocation::parse(&args(&["dummy", "-q"])).unwrap();
        assert!(!late.quiet && late.params == "-q");
    }

    #[test]
    fn refuses_what_it_does_not_do() {
        let err = Invocation::parse(&args(&["-C", "x.conf", "dummy"])).unwrap_err();
        assert!(err.contains("unsupported option -C"), "{err}");
        let err = Invocation::parse(&args(&["--first-time", "dummy"])).unwrap_err();
        assert!(err.contains("--first-time"), "{err}");
        assert!(Invocation::parse(&args(&["-q"])).unwrap_err().contains("missing module name"));
    }

    #[test]
    fn normalizes_like_kmod() {
        assert_eq!(normalize("rtnl-link-vxlan"), "rtnl_link_vxlan");
        assert_eq!(normalize("pci:v[0-9]d-x"), "pci:v[0-9]d_x");
    }

    fn frames(replies: &[ModuleReply]) -> Vec<u8> {
        replies.iter().flat_map(|r| encode_module_frame(r).unwrap()).collect()
    }

    fn header(name: &str, len: u64, wanted: bool) -> ModuleHeader {
        ModuleHeader { name: name.into(), len, wanted }
    }

    #[test]
    fn assembles_the_answer_to_its_own_request() {
        let mut wire = frames(&[
            // Left over from another request.
            ModuleReply::Modules { nonce: 1, modules: vec![header("old", 2, true)] },
            ModuleReply::Data { nonce: 1, data: vec![9] },
        ]);
        wire.extend_from_slice(b"\x00garbage");
        wire.extend(frames(&[
            ModuleReply::Modules {
                nonce: 5,
                modules: vec![header("udp_tunnel", 3, false), header("vxlan", 4, true)],
            },
            ModuleReply::Data { nonce: 5, data: vec![1, 2] },
            ModuleReply::Data { nonce: 1, data: vec![0; 10] },
            ModuleReply::Data { nonce: 5, data: vec![3, 4, 5, 6, 7] },
        ]));
        assert_eq!(
            read_answer(&wire[..], 5).unwrap(),
            Fetched::Modules(vec![
                (header("udp_tunnel", 3, false), vec![1, 2, 3]),
                (header("vxlan", 4, true), vec![4, 5, 6, 7]),
            ])
        );
        let built_in = frames(&[ModuleReply::BuiltIn { nonce: 5 }]);
        assert_eq!(read_answer(&built_in[..], 5).unwrap(), Fetched::BuiltIn);
        let failed =
            frames(&[ModuleReply::Failed { nonce: 5, message: "Module x not found".into() }]);
        assert_eq!(read_answer(&failed[..], 5).unwrap_err(), "FATAL: Module x not found");
    }

    #[test]
    fn refuses_a_broken_answer() {
        let short = frames(&[
            ModuleReply::Modules { nonce: 5, modules: vec![header("a", 3, true)] },
            ModuleReply::Data { nonce: 5, data: vec![1] },
        ]);
        assert!(read_answer(&short[..], 5).unwrap_err().contains("closed"));
        let long = frames(&[
            ModuleReply::Modules { nonce: 5, modules: vec![header("a", 1, true)] },
            ModuleReply::Data { nonce: 5, data: vec![1, 2] },
        ]);
        assert!(read_answer(&long[..], 5).unwrap_err().contains("more module data"));
        let huge = frames(&[ModuleReply::Modules {
            nonce: 5,
            modules: vec![header("a", u64::MAX, true), header("b", 2, true)],
        }]);
        assert!(read_answer(&huge[..], 5).unwrap_err().contains("announced more"));
        let data_first = frames(&[ModuleReply::Data { nonce: 5, data: vec![1] }]);
        assert!(read_answer(&data_first[..], 5).unwrap_err().contains("before saying"));
    }
}
