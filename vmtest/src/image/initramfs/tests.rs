use std::io::{Cursor, Read};

use super::*;
use crate::image::elf::test_support::{compile_rust, temp_dir};

/// One entry read back from an archive.
#[derive(Debug, PartialEq, Eq)]
struct ReadEntry {
    name: String,
    mode: u32,
    data: Vec<u8>,
    rdev: (u32, u32),
    ino: u32,
}

fn read_back(archive: &[u8]) -> Vec<ReadEntry> {
    let mut entries = Vec::new();
    let mut input = Cursor::new(archive);
    loop {
        let mut reader = cpio::NewcReader::new(input).unwrap();
        let entry = reader.entry().clone();
        if entry.is_trailer() {
            input = reader.finish().unwrap();
            break;
        }
        let mut data = Vec::new();
        reader.read_to_end(&mut data).unwrap();
        assert_eq!((entry.uid(), entry.gid(), entry.mtime()), (0, 0, 0));
        entries.push(ReadEntry {
            name: entry.name().to_owned(),
            mode: entry.mode(),
            data,
            rdev: (entry.rdev_major(), entry.rdev_minor()),
            ino: entry.ino(),
        });
        input = reader.finish().unwrap();
    }
    assert_eq!(input.position() as usize, archive.len(), "bytes after the trailer");
    entries
}

fn write(initramfs: &Initramfs) -> Vec<u8> {
    let mut out = Vec::new();
    let written = initramfs.write_to(&mut out).unwrap();
    assert_eq!(written, out.len() as u64);
    out
}

#[test]
fn written_archive_reads_back() {
    let dir = temp_dir("initramfs-basic");
    let host = dir.path().join("payload");
    std::fs::write(&host, b"from the host\n").unwrap();

    let mut initramfs = Initramfs::new();
    initramfs
        .add_bytes("/init", b"#!/bin/true\n".to_vec(), 0o755)
        .unwrap()
        .add_char_device("/dev/console", 5, 1, 0o600)
        .unwrap()
        .add_symlink("/bin/sh", "busybox")
        .unwrap()
        .add_host_file("/usr/share/x/payload", &host, 0o644)
        .unwrap()
        .add_dir("/tmp", 0o1777)
        .unwrap();
    let entries = read_back(&write(&initramfs));

    let summary: Vec<(&str, u32)> = entries.iter().map(|e| (e.name.as_str(), e.mode)).collect();
    assert_eq!(
        summary,
        [
            ("bin", 0o040755),
            ("bin/sh", 0o120777),
            ("dev", 0o040755),
            ("dev/console", 0o020600),
            ("init", 0o100755),
            ("tmp", 0o041777),
            ("usr", 0o040755),
            ("usr/share", 0o040755),
            ("usr/share/x", 0o040755),
            ("usr/share/x/payload", 0o100644),
        ]
    );
    let by_name = |n: &str| entries.iter().find(|e| e.name == n).unwrap();
    assert_eq!(by_name("init").data, b"#!/bin/true\n");
    assert_eq!(by_name("bin/sh").data, b"busybox");
    assert_eq!(by_name("dev/console").rdev, (5, 1));
    assert_eq!(by_name("usr/share/x/payload").data, b"from the host\n");
    let mut inos: Vec<u32> = entries.iter().map(|e| e.ino).collect();
    inos.dedup();
    assert_eq!(inos.len(), entries.len(), "inode numbers are unique");
}

#[test]
fn output_is_deterministic_and_independent_of_insertion_order() {
    let mut a = Initramfs::new();
    a.add_bytes("/b/x", "1", 0o644).unwrap().add_bytes("/a", "2", 0o644).unwrap();
    let mut b = Initramfs::new();
    b.add_bytes("/a", "2", 0o644).unwrap().add_bytes("/b/x", "1", 0o644).unwrap();
    assert_eq!(write(&a), write(&b));
}

#[test]
fn parents_precede_children_even_with_sibling_prefixes() {
    let mut initramfs = Initramfs::new();
    initramfs.add_bytes("/a-b", "", 0o644).unwrap().add_bytes("/a/b", "", 0o644).unwrap();
    let names: Vec<String> = read_back(&write(&initramfs)).into_iter().map(|e| e.name).collect();
    assert_eq!(names, ["a", "a-b", "a/b"]);
}

#[test]
fn last_addition_wins() {
    let mut initramfs = Initramfs::new();
    initramfs.add_bytes("/etc/x", "old", 0o600).unwrap();
    initramfs.add_bytes("/etc//./x", "new", 0o644).unwrap();
    initramfs.add_symlink("/etc/y", "x").unwrap();
    initramfs.add_bytes("/etc/y", "file now", 0o644).unwrap();
    // An explicit directory keeps its children and takes the new mode; an implicit parent
    // never changes an existing directory's mode.
    initramfs.add_dir("/etc", 0o700).unwrap();
    initramfs.add_bytes("/etc/z", "", 0o644).unwrap();
    assert_eq!(
        initramfs.listing(),
        [
            ("/etc".into(), 0o040700),
            ("/etc/x".into(), 0o100644),
            ("/etc/y".into(), 0o100644),
            ("/etc/z".into(), 0o100644),
        ]
    );
    let entries = read_back(&write(&initramfs));
    assert_eq!(entries[1].data, b"new");
}

#[test]
fn conflicting_additions_are_errors_and_change_nothing() {
    let mut initramfs = Initramfs::new();
    initramfs.add_bytes("/lib", "a file", 0o644).unwrap();
    let before = initramfs.listing();
    let err = initramfs.add_bytes("/lib/x/libc.so.6", "", 0o644).unwrap_err();
    assert_eq!(
        err.to_string(),
        "failed to add /lib/x/libc.so.6 to the initramfs: /lib is not a directory"
    );
    assert_eq!(initramfs.listing(), before);

    initramfs.add_bytes("/usr/lib/libc.so.6", "", 0o644).unwrap();
    let err = initramfs.add_symlink("/usr/lib", "lib64").unwrap_err();
    assert_eq!(
        err.to_string(),
        "failed to add /usr/lib to the initramfs: it is a directory with entries below it"
    );
}

#[test]
fn invalid_guest_paths_are_rejected() {
    let mut initramfs = Initramfs::new();
    for (path, reason) in [
        ("init", "must be absolute"),
        ("/a/../b", "`..`"),
        ("/", "root"),
        ("//.", "root"),
        ("/a\0b", "NUL"),
    ] {
        let err = initramfs.add_dir(path, 0o755).unwrap_err();
        assert!(matches!(err, InitramfsError::InvalidPath { .. }), "{path:?}: {err}");
        assert!(err.to_string().contains(reason), "{path:?}: {err}");
    }
    assert!(initramfs.add_symlink("/x", "").is_err());
    assert!(initramfs.listing().is_empty());
}

#[test]
fn missing_host_files_fail_when_added() {
    let dir = temp_dir("initramfs-missing");
    let mut initramfs = Initramfs::new();
    let missing = dir.path().join("nope");
    let err = initramfs.add_host_file("/x", &missing, 0o644).unwrap_err();
    assert!(err.to_string().starts_with(&format!("failed to read {}: ", missing.display())));
    let err = initramfs.add_host_file("/x", dir.path(), 0o644).unwrap_err();
    assert!(matches!(err, InitramfsError::NotAFile { .. }), "{err}");
}

#[test]
fn host_files_are_read_at_write_time() {
    let dir = temp_dir("initramfs-late");
    let host = dir.path().join("f");
    std::fs::write(&host, "early").unwrap();
    let mut initramfs = Initramfs::new();
    initramfs.add_host_file("/f", &host, 0o644).unwrap();
    std::fs::write(&host, "later, and longer").unwrap();
    let mut out = Vec::new();
    initramfs.write_to(&mut out).unwrap();
    assert_eq!(read_back(&out)[0].data, b"later, and longer");
}

#[test]
fn a_file_swapped_for_a_fifo_is_an_error_not_a_hang() {
    let dir = temp_dir("initramfs-fifo");
    let host = dir.path().join("f");
    std::fs::write(&host, "a file when added").unwrap();
    let mut initramfs = Initramfs::new();
    initramfs.add_host_file("/f", &host, 0o644).unwrap();
    std::fs::remove_file(&host).unwrap();
    rustix::fs::mknodat(
        rustix::fs::CWD,
        &host,
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from_raw_mode(0o600),
        0,
    )
    .unwrap();
    // Written on another thread: a hang fails the test instead of stopping it.
    let (send, receive) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = send.send(initramfs.write_to(io::sink()).map_err(|e| e.to_string()));
    });
    let result = receive.recv_timeout(std::time::Duration::from_secs(10));
    let err = result.expect("writing the initramfs blocked on the FIFO").unwrap_err();
    assert!(err.contains(&format!("{}", host.display())), "{err}");
    assert!(err.contains("not a regular file"), "{err}");
}

#[test]
fn newc_size_fields_are_checked() {
    assert_eq!(newc_file_size("f", 0).unwrap(), 0);
    assert_eq!(newc_file_size("f", u64::from(u32::MAX)).unwrap(), u32::MAX);
    let err = newc_file_size("boot/huge", 5 << 30).unwrap_err();
    assert_eq!(
        err.to_string(),
        "failed to add /boot/huge to the initramfs: file size 5368709120 exceeds newc's limit \
         of 4294967295"
    );
    assert!(newc_field("x", "entry count", u64::from(u32::MAX) + 1).is_err());
}

#[test]
fn write_errors_name_the_entry() {
    struct Full;
    impl Write for Full {
        fn write(&mut self, _: &[u8]) -> io::Result<usize> {
            Err(io::Error::new(io::ErrorKind::StorageFull, "disk full"))
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }
    let mut initramfs = Initramfs::new();
    initramfs.add_bytes("/init", "x", 0o755).unwrap();
    let err = initramfs.write_to(Full).unwrap_err();
    assert_eq!(err.to_string(), "failed to write /init to the initramfs: disk full");
}

/// The real dynamic binary under test: the running test executable, which is a glibc binary on
/// the supported hosts.
fn dynamic_host_binary() -> Option<PathBuf> {
    let exe = std::env::current_exe().unwrap();
    let info = crate::image::elf::read_elf(&exe).unwrap();
    if info.interp.is_none() {
        crate::__testing::missing(&format!("{} is statically linked", exe.display()));
        return None;
    }
    Some(exe)
}

#[test]
fn closure_of_a_dynamic_host_binary() {
    let Some(exe) = dynamic_host_binary() else {
        return;
    };
    let closure = LibrarySearch::host().closure(&exe).unwrap();
    let interp = closure.interp.clone().expect("a dynamic binary has an interpreter");
    assert!(interp.exists(), "{}", interp.display());
    let names: Vec<&str> = closure.libraries.iter().map(|l| l.name.as_str()).collect();
    assert!(names.contains(&"libc.so.6"), "{names:?}");
    // libc needs the loader by its soname: resolved like any other library.
    let loader_name = interp.file_name().unwrap().to_str().unwrap();
    assert!(names.contains(&loader_name), "{names:?}");

    let mut initramfs = Initramfs::new();
    initramfs.add_elf_with_libraries("/init", &exe).unwrap();
    let interp_guest = interp.to_str().unwrap();
    let real_interp = std::fs::canonicalize(&interp).unwrap();
    let lib_dir = real_interp.parent().unwrap();
    let libc_guest = lib_dir.join("libc.so.6");
    let listing = initramfs.listing();
    let mode_of = |p: &str| listing.iter().find(|(n, _)| n == p).map(|(_, m)| *m);
    assert_eq!(mode_of("/init"), Some(0o100755));
    assert_eq!(mode_of(interp_guest), Some(0o100755), "{listing:?}");
    assert_eq!(mode_of(libc_guest.to_str().unwrap()), Some(0o100755), "{listing:?}");
    // The loader, needed again by its soname from the library directory, is a symlink to the
    // one copy at the PT_INTERP path (unless both are the same path).
    let loader_in_lib_dir = lib_dir.join(loader_name);
    if loader_in_lib_dir != interp {
        assert_eq!(mode_of(loader_in_lib_dir.to_str().unwrap()), Some(0o120777), "{listing:?}");
    }
    // Every entry is a real directory, file or symlink to a file: no directory symlinks.
    for (name, mode) in &listing {
        if mode & 0o170000 == 0o120000 {
            let Node::Symlink(target) = &initramfs.entries[&name[1..]].node else { panic!() };
            assert_eq!(mode_of(target), Some(0o100755), "{name} -> {target}");
        }
    }
}

#[test]
fn static_musl_binary_has_no_closure() {
    let dir = temp_dir("initramfs-musl");
    let source = "fn main() { println!(\"static\"); }\n";
    let Some(binary) = compile_rust(dir.path(), source, Some("x86_64-unknown-linux-musl")) else {
        return;
    };
    let closure = LibrarySearch::host().closure(&binary).unwrap();
    assert_eq!(closure.interp, None);
    assert!(closure.libraries.is_empty(), "{:?}", closure.libraries);

    let mut initramfs = Initramfs::new();
    initramfs.add_elf_with_libraries("/sbin/init", &binary).unwrap();
    assert_eq!(initramfs.listing(), [("/sbin".into(), 0o040755), ("/sbin/init".into(), 0o100755)]);
}

#[test]
fn non_elf_binaries_are_a_clear_error() {
    let dir = temp_dir("initramfs-notelf");
    let script = dir.path().join("run.sh");
    std::fs::write(&script, "#!/bin/sh\n").unwrap();
    let mut initramfs = Initramfs::new();
    let err = initramfs.add_elf_with_libraries("/init", &script).unwrap_err();
    assert_eq!(err.to_string(), format!("{} is not an ELF file", script.display()));
    assert!(initramfs.listing().is_empty());
}

#[test]
fn libraries_in_the_same_file_are_added_once() {
    // Two needed names for one file: the second becomes a symlink to the first copy.
    use crate::image::elf::test_support::{fake_elf, FakeElf};
    let dir = temp_dir("initramfs-alias");
    let lib = dir.path().join("lib");
    std::fs::create_dir(&lib).unwrap();
    let spec = FakeElf { machine: 183, ..FakeElf::default() };
    std::fs::write(lib.join("libfoo.so.1"), fake_elf(&spec)).unwrap();
    std::os::unix::fs::symlink("libfoo.so.1", lib.join("libfoo.so")).unwrap();
    let bin = dir.path().join("bin");
    let spec =
        FakeElf { machine: 183, needed: &["libfoo.so.1", "libfoo.so"], ..FakeElf::default() };
    std::fs::write(&bin, fake_elf(&spec)).unwrap();

    let search = LibrarySearch { conf_dirs: vec![lib.clone()], ..LibrarySearch::default() };
    let mut initramfs = Initramfs::new();
    initramfs.add_elf_with_libraries_from(&search, "/bin/x", &bin).unwrap();
    // No interpreter: libraries go to the directory they really are in on the host.
    let real_lib = std::fs::canonicalize(&lib).unwrap();
    let first = real_lib.join("libfoo.so.1");
    let first = first.to_str().unwrap();
    let second = format!("{}/libfoo.so", real_lib.display());
    assert!(initramfs.contains(first));
    assert_eq!(initramfs.entries[&second[1..]].node, Node::Symlink(first.to_owned()));
}

/// Proves the library layout by booting: a dynamically linked Rust `/init` packed with its closure
/// must print and power off. Needs QEMU and a kernel, so it runs only when asked:
/// `VMTEST_BOOT_KERNEL=/path/to/vmlinuz cargo test -p vmtest --lib boots_ -- --ignored`.
#[test]
#[ignore = "boots QEMU; set VMTEST_BOOT_KERNEL to an x86_64 kernel image"]
#[cfg(target_arch = "x86_64")]
fn boots_a_dynamic_init() {
    let Some(kernel) = std::env::var_os("VMTEST_BOOT_KERNEL") else {
        crate::__testing::missing("VMTEST_BOOT_KERNEL is not set");
        return;
    };
    let dir = temp_dir("initramfs-boot");
    let source = r#"
        use std::io::Write;
        extern "C" {
            fn sync();
            fn reboot(cmd: i32) -> i32;
        }
        const RB_POWER_OFF: i32 = 0x4321_fedc;
        fn main() {
            println!("hello from init");
            std::io::stdout().flush().unwrap();
            // SAFETY: plain syscalls without pointers; PID 1 powers the VM off.
            unsafe {
                sync();
                reboot(RB_POWER_OFF);
            }
            eprintln!("reboot failed: {}", std::io::Error::last_os_error());
        }
    "#;
    let binary = compile_rust(dir.path(), source, None).expect("rustc builds the init");
    let info = crate::image::elf::read_elf(&binary).unwrap();
    assert!(info.interp.is_some(), "the init under test must be dynamically linked");

    let mut initramfs = Initramfs::new();
    initramfs.add_elf_with_libraries("/init", &binary).unwrap();
    for (path, mode) in initramfs.listing() {
        eprintln!("{mode:06o} {path}");
    }
    let cpio = dir.path().join("initramfs.cpio");
    let file = std::fs::File::create(&cpio).unwrap();
    initramfs.write_to(std::io::BufWriter::new(file)).unwrap();

    let output = std::process::Command::new("timeout")
        .args(["60", "qemu-system-x86_64", "-M", "pc", "-accel", "tcg", "-m", "512M"])
        .args(["-nodefaults", "-no-user-config", "-display", "none", "-serial", "stdio"])
        .args(["-no-reboot", "-kernel"])
        .arg(&kernel)
        .arg("-initrd")
        .arg(&cpio)
        .args(["-append", "console=ttyS0 panic=-1 quiet"])
        .output()
        .expect("failed to run qemu-system-x86_64");
    let stdout = String::from_utf8_lossy(&output.stdout);
    eprintln!("{stdout}{}", String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success(), "QEMU: {}", output.status);
    assert!(stdout.contains("hello from init"), "no greeting on the console");
    assert!(!stdout.contains("Kernel panic"), "the guest panicked");
}
