//! The cases, written once. The including crate root defines `twin`: libtest's `#[test]` or
//! vmtest's `#[vm_test]`. The tests run in the order of their names; the first one to panic
//! is `failing_assert`, whose output keeps the standard panic hook's backtrace hint.

use super::twin;

#[twin]
fn passing() {}

#[twin]
fn failing_assert() {
    println!("printed before the assertion");
    assert_eq!(1 + 1, 3, "arithmetic");
}

#[twin]
fn returns_err() -> Result<(), String> {
    println!("about to return an error");
    Err("deliberate error".to_owned())
}

#[twin]
#[should_panic(expected = "boom")]
fn panics_as_expected() {
    panic!("boom");
}

#[twin]
#[should_panic]
fn does_not_panic() {}

#[twin]
#[should_panic(expected = "another message")]
fn panics_with_the_wrong_message() {
    panic!("boom");
}

#[twin]
#[ignore = "shows its reason"]
fn ignored_with_reason() {
    println!("ignored, but run on request");
}

#[twin]
#[ignore]
fn ignored_without_reason() {}

#[twin]
fn prints_to_stdout() {
    println!("a line from the test");
    print!("and one without a newline");
}

#[twin]
fn writes_to_stdout_then_stderr_then_stdout() {
    println!("first to stdout");
    eprintln!("then to stderr");
    println!("then to stdout again");
    panic!("after writing to both");
}

#[twin]
#[should_panic]
fn writes_to_both_and_does_not_panic() {
    println!("to stdout");
    eprintln!("to stderr");
    print!("to stdout, without a newline");
}
