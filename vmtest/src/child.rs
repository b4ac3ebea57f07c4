//! Inside the guest: one registered test, run in a child process of PID 1.
//!
//! PID 1 starts a fresh process for each test and hands it the test's name: a fork of its fork
//! server (see `vmtest-init`'s `forks.rs`), or, when the test collects LLVM profiles, `/init`
//! executed again with [`TEST_ENV`](vmtest_init::protocol::TEST_ENV) naming the test.
//! The exit status is the verdict: 0 passed, 101 panicked, 1 returned `Err` or did not panic as
//! `#[should_panic]` required.

use std::any::Any;

use crate::registry::{ShouldPanic, TESTS};

/// Runs the test named `name` (its libtest name, without a kernel suffix) and exits.
pub(crate) fn run_test(name: &str) -> ! {
    let Some(def) = TESTS.iter().find(|def| def.test_name() == name) else {
        eprintln!("vmtest: this binary has no test named `{name}`");
        std::process::exit(2);
    };
    let run = def.run;
    // libtest runs each test on a thread named after it, so panic messages read the same.
    let joined =
        std::thread::Builder::new().name(name.to_owned()).spawn(run).map(|handle| handle.join());
    let code = match joined {
        Err(e) => {
            eprintln!("vmtest: failed to spawn the test thread: {e}");
            1
        }
        Ok(Ok(result)) => returned(result, def.should_panic),
        Ok(Err(payload)) => panicked(payload.as_ref(), def.should_panic),
    };
    std::process::exit(code);
}

fn returned(result: Result<(), String>, should_panic: ShouldPanic) -> i32 {
    match (result, should_panic) {
        (Err(message), _) => {
            eprintln!("{message}");
            1
        }
        (Ok(()), ShouldPanic::No) => 0,
        (Ok(()), _) => {
            eprintln!("note: test did not panic as expected");
            1
        }
    }
}

fn panicked(payload: &(dyn Any + Send), should_panic: ShouldPanic) -> i32 {
    match should_panic {
        ShouldPanic::No => 101,
        ShouldPanic::Yes => 0,
        ShouldPanic::WithMessage(expected) => {
            let message = payload
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned());
            match message {
                Some(message) if message.contains(expected) => 0,
                Some(message) => {
                    eprintln!(
                        "note: panic did not contain expected string\n      \
                         panic message: {message:?}\n expected substring: {expected:?}"
                    );
                    1
                }
                None => {
                    eprintln!(
                        "note: expected panic with string value,\n found non-string value\n     \
                         expected substring: {expected:?}"
                    );
                    1
                }
            }
        }
    }
}
