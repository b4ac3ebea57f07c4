//! A test program for the boot test: what it does is chosen by its first argument.

use std::io::Write;
use std::path::Path;
use std::process::exit;
use std::time::Duration;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str).unwrap_or("") {
        "ok" => {
            println!("hello stdout");
            eprintln!("hello stderr");
            for (k, v) in std::env::vars() {
                println!("env {k}={v}");
            }
            println!("cwd {}", std::env::current_dir().unwrap().display());
        }
        "exit3" => exit(3),
        "sleep" => loop {
            std::thread::sleep(Duration::from_secs(60));
        },
        "abort" => std::process::abort(),
        "stream" => {
            for i in 0..3 {
                println!("line {i}");
                std::io::stdout().flush().unwrap();
                std::thread::sleep(Duration::from_millis(20));
            }
            eprintln!("err line");
        }
        "orphan" => {
            std::process::Command::new("/bin/probe").arg("sleep").spawn().unwrap();
            println!("spawned");
        }
        "big" => {
            let chunk = vec![b'x'; 1 << 20];
            let mut out = std::io::stdout().lock();
            for _ in 0..9 {
                out.write_all(&chunk).unwrap();
            }
            out.write_all(b"END").unwrap();
        }
        "module" => exit(!Path::new("/sys/module").join(&args[2]).exists() as i32),
        "system" => {
            let flags = std::fs::read_to_string("/sys/class/net/lo/flags").unwrap();
            let flags = u32::from_str_radix(flags.trim().trim_start_matches("0x"), 16).unwrap();
            println!("lo_up {}", flags & 1 == 1);
            print!("{}", std::fs::read_to_string("/proc/mounts").unwrap());
        }
        other => {
            eprintln!("unknown mode {other:?}");
            exit(100)
        }
    }
}
