use std::collections::BTreeMap;
use std::io::{Cursor, Read};
use std::path::PathBuf;

use super::*;
use crate::image::elf::test_support::{fake_elf, temp_dir, FakeElf};

/// One entry read back from an archive: mode (with file type) and contents.
type Entries = BTreeMap<String, (u32, Vec<u8>)>;

fn read_back(archive: &[u8]) -> Entries {
    let mut entries = Entries::new();
    let mut input = Cursor::new(archive);
    loop {
        let mut reader = cpio::NewcReader::new(input).unwrap();
        let entry = reader.entry().clone();
        if entry.is_trailer() {
            break;
        }
        let mut data = Vec::new();
        reader.read_to_end(&mut data).unwrap();
        entries.insert(format!("/{}", entry.name()), (entry.mode(), data));
        input = reader.finish().unwrap();
    }
    entries
}

fn archive(tree: &Initramfs) -> Entries {
    let mut out = Vec::new();
    tree.write_to(&mut out).unwrap();
    read_back(&out)
}

/// Host files for an image: a static init, a static program, a fixture, two modules.
struct Host {
    dir: tempfile::TempDir,
    init: PathBuf,
    program: PathBuf,
    fixture: String,
    harness_module: ModuleFile,
    test_module: ModuleFile,
}

fn host() -> Host {
    let dir = temp_dir("guest-image");
    let elf = fake_elf(&FakeElf { machine: 62, ..FakeElf::default() });
    let init = dir.path().join("init-binary");
    let program = dir.path().join("program");
    std::fs::write(&init, &elf).unwrap();
    std::fs::write(&program, [elf.as_slice(), b"program"].concat()).unwrap();
    let fixture = dir.path().join("data.txt");
    std::fs::write(&fixture, b"fixture\n").unwrap();
    let module = |name: &str| {
        let path = dir.path().join(format!("{name}.ko"));
        std::fs::write(&path, name).unwrap();
        ModuleFile { name: name.to_owned(), host_path: path }
    };
    Host {
        init,
        program,
        fixture: fixture.to_str().unwrap().to_owned(),
        harness_module: module("virtio_console"),
        test_module: module("dummy"),
        dir,
    }
}

fn test(id: u32, cwd: &str) -> PlannedTest {
    PlannedTest {
        id,
        name: format!("test{id}"),
        program: "/main".to_owned(),
        args: vec!["--flag".to_owned()],
        env: vec![("VMTEST_TEST".to_owned(), format!("test{id}"))],
        cwd: cwd.to_owned(),
        timeout_ms: 1000,
        capture: true,
    }
}

fn base(host: &Host) -> Base {
    let mut base = Base::new(&host.init, GuestUserland::default(), DebugInfo::Strip).unwrap();
    base.add_module(&host.harness_module).unwrap();
    base
}

fn payload(host: &Host, cwd: &str) -> Payload {
    let mut payload = Payload::new(cwd);
    payload.add_program("/main", &host.program, DebugInfo::Strip).unwrap();
    payload.add_fixture(&host.fixture).unwrap();
    payload.add_module(&host.test_module, vec![1, 2]).unwrap();
    payload.add_test(test(1, cwd));
    payload.add_test(test(2, cwd));
    payload.set_file_limits(FileLimits { test_files: 7, ..FileLimits::default() });
    payload
}

#[test]
fn image_holds_init_program_fixtures_modules_cwd_and_plan() {
    let host = host();
    let image = GuestImage { base: base(&host), payload: payload(&host, "/work/crate") };
    let entries = archive(&image.initramfs().unwrap());

    let file = |path: &str| entries.get(path).unwrap_or_else(|| panic!("{path} is missing"));
    assert_eq!(file("/init"), &(0o100755, std::fs::read(&host.init).unwrap()));
    assert_eq!(file("/main"), &(0o100755, std::fs::read(&host.program).unwrap()));
    assert_eq!(file("/dev/console").0, 0o020600);
    assert_eq!(file(&host.fixture).1, b"fixture\n");
    assert_eq!(file("/vmtest/modules/virtio_console.ko"), &(0o100644, b"virtio_console".to_vec()));
    assert_eq!(file("/vmtest/modules/dummy.ko"), &(0o100644, b"dummy".to_vec()));
    assert_eq!(file("/work/crate").0, 0o040755);
    // The userland beneath: its tree, where nothing else took the path; the fixture's parent
    // directories (in the host's temp dir) took /tmp.
    assert_eq!(file("/root").0, 0o040700);
    assert_eq!(file("/tmp").0, 0o040755);
    assert_eq!(file("/var/run"), &(0o120777, b"/run".to_vec()));

    let (mode, plan) = file(protocol::PLAN_PATH);
    assert_eq!(*mode, 0o100644);
    let plan: Plan = protocol::decode_frame(plan).unwrap();
    assert_eq!(plan.version, protocol::PROTOCOL_VERSION);
    let modules: Vec<_> =
        plan.modules.iter().map(|m| (m.name.as_str(), m.path.as_str(), &m.wanted_by[..])).collect();
    assert_eq!(
        modules,
        [
            ("virtio_console", "/vmtest/modules/virtio_console.ko", &[][..]),
            ("dummy", "/vmtest/modules/dummy.ko", &[1, 2][..]),
        ]
    );
    assert_eq!(plan.tests, [test(1, "/work/crate"), test(2, "/work/crate")]);
    assert_eq!(plan.files.test_files, 7);
}

#[test]
fn base_alone_has_nothing_of_a_run() {
    let host = host();
    let base = base(&host);
    let entries = archive(&base.initramfs().unwrap());
    for path in ["/init", "/dev/console", "/vmtest/modules/virtio_console.ko", "/tmp", "/bin"] {
        assert!(entries.contains_key(path), "{path} is missing from the base");
    }
    for path in [protocol::PLAN_PATH, "/main", &host.fixture, "/vmtest/modules/dummy.ko"] {
        assert!(!entries.contains_key(path), "{path} is in the base");
    }

    // Written to a file, it is the same archive.
    let out = host.dir.path().join("base.cpio");
    let size = base.write(&out).unwrap();
    let written = std::fs::read(&out).unwrap();
    assert_eq!(size, written.len() as u64);
    assert_eq!(read_back(&written), entries);
}

#[test]
fn every_payload_lies_over_the_same_base() {
    let host = host();
    let base = base(&host);
    let base_entries = archive(&base.initramfs().unwrap());
    let one = GuestImage { base: base.clone(), payload: payload(&host, "/work/one") };
    let mut other = Payload::new("/");
    other.add_test(test(9, "/"));
    let other = GuestImage { base: base.clone(), payload: other };

    for image in [&one, &other] {
        let entries = archive(&image.initramfs().unwrap());
        // Every entry of the base is in the image as the base has it, but for the fixture's
        // parent directories, which the payload has.
        let fixture_dirs: Vec<&Path> = Path::new(&host.fixture).ancestors().collect();
        for (path, entry) in &base_entries {
            if fixture_dirs.contains(&Path::new(path)) && image.payload.tree.contains(path) {
                continue;
            }
            assert_eq!(entries.get(path), Some(entry), "{path} differs from the base");
        }
        let plan: Plan = protocol::decode_frame(&entries[protocol::PLAN_PATH].1).unwrap();
        assert_eq!(plan.modules[0].name, "virtio_console", "the base's modules come first");
    }
    let plan = other.payload.plan(&other.base);
    assert_eq!(plan.modules.len(), 1);
    assert_eq!(plan.tests, [test(9, "/")]);
    assert_eq!(plan.files, FileLimits::default());
}

#[test]
fn the_payload_wins_where_the_parts_meet() {
    let host = host();
    let mut payload = Payload::new("/init-dir");
    // A program at the init's path replaces the base's init, as a later addition did.
    payload.add_program("/init", &host.program, DebugInfo::Strip).unwrap();
    // A payload module of the same file name replaces the base's file; the plan lists both.
    let same_file = ModuleFile {
        name: "virtio_console_again".to_owned(),
        host_path: host.test_module.host_path.clone(),
    };
    let renamed = host.dir.path().join("renamed");
    std::fs::create_dir(&renamed).unwrap();
    let path = renamed.join("virtio_console.ko");
    std::fs::copy(&same_file.host_path, &path).unwrap();
    payload.add_module(&ModuleFile { host_path: path, ..same_file }, vec![]).unwrap();
    let image = GuestImage { base: base(&host), payload };
    let entries = archive(&image.initramfs().unwrap());
    assert_eq!(entries["/init"].1, std::fs::read(&host.program).unwrap());
    assert_eq!(entries["/vmtest/modules/virtio_console.ko"].1, b"dummy");
    let plan: Plan = protocol::decode_frame(&entries[protocol::PLAN_PATH].1).unwrap();
    assert_eq!(plan.modules.len(), 2);
}

#[test]
fn working_directory_is_made_only_where_the_image_has_none() {
    let host = host();
    // The base has /init, a file: it stays one (the guest then fails to enter it).
    let image = GuestImage { base: base(&host), payload: Payload::new("/init") };
    assert_eq!(archive(&image.initramfs().unwrap())["/init"].0, 0o100755);
    // Where only the userland has it, the working directory is made over it, mode 0755.
    let image = GuestImage { base: base(&host), payload: Payload::new("/tmp") };
    assert_eq!(archive(&image.initramfs().unwrap())["/tmp"].0, 0o040755);
    // `/` is never added.
    let image = GuestImage { base: base(&host), payload: Payload::new("/") };
    assert!(!archive(&image.initramfs().unwrap()).contains_key("/"));
}

#[test]
fn the_init_goes_without_its_debug_sections_unless_they_are_kept() {
    let exe = std::env::current_exe().unwrap();
    let init = |debug_info| {
        let base = Base::new(&exe, GuestUserland::default(), debug_info).unwrap();
        archive(&base.initramfs().unwrap()).remove("/init").unwrap().1
    };
    let whole = std::fs::read(&exe).unwrap();
    assert!(init(DebugInfo::Keep) == whole, "kept: the binary as built");
    let stripped = init(DebugInfo::Strip);
    match crate::image::elf::strip::layout(&std::fs::File::open(&exe).unwrap(), &exe).unwrap() {
        Some(layout) => {
            assert_eq!(stripped.len() as u64, layout.len);
            assert!(stripped.len() < whole.len());
            assert_eq!(stripped[..16], whole[..16], "still the same ELF file");
        }
        // Built without debug info: nothing to leave out.
        None => assert!(stripped == whole),
    }
}

#[test]
fn a_missing_file_is_an_error_naming_it() {
    let host = host();
    let missing = host.dir.path().join("missing");
    let error =
        Base::new(&missing, GuestUserland::default(), DebugInfo::Strip).unwrap_err().to_string();
    assert!(error.contains(&missing.display().to_string()), "{error}");
    let mut payload = Payload::new("/");
    let error = payload.add_fixture(missing.to_str().unwrap()).unwrap_err().to_string();
    assert!(error.contains(&missing.display().to_string()), "{error}");
}

#[test]
fn the_shell_travels_in_the_plan_of_a_cold_and_of_a_warm_start() {
    let host = host();
    let mut payload = payload(&host, "/work/crate");
    payload.set_shell(protocol::ShellWhen::OnFailure);
    let image = GuestImage { base: base(&host), payload };
    let plan_in = |entries: &Entries| -> Plan {
        protocol::decode_frame(&entries[protocol::PLAN_PATH].1).unwrap()
    };
    assert_eq!(
        plan_in(&archive(&image.initramfs().unwrap())).shell,
        protocol::ShellWhen::OnFailure
    );
    let dir = temp_dir("shell-plan");
    let path = dir.path().join("payload.cpio");
    image.payload.write_warm(&image.base, &path).unwrap();
    let warm = read_back(&std::fs::read(&path).unwrap());
    assert_eq!(plan_in(&warm).shell, protocol::ShellWhen::OnFailure);
}
