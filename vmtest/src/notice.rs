//! The one way library code (the kernel store, the userland) tells the user something: a
//! [`warn`]ing or a progress [`note`]. It never prints itself: the host harness and the command
//! lines [`install`] where notices go (`vmtest: ...` lines on stderr, [`to_stderr`]); until one
//! does, a notice reaches no one.

use std::sync::RwLock;

/// What kind of thing a notice says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Level {
    /// Something is wrong but the work goes on (a damaged store entry skipped).
    Warning,
    /// What is being done and why it takes time (an index built once per kernel).
    Note,
}

/// Where notices go.
pub(crate) type Handler = fn(Level, &str);

static HANDLER: RwLock<Option<Handler>> = RwLock::new(None);

/// Sends every notice of this process to `handler` from now on.
pub(crate) fn install(handler: Handler) {
    *HANDLER.write().unwrap_or_else(|e| e.into_inner()) = Some(handler);
}

fn send(level: Level, text: &str) {
    let handler = *HANDLER.read().unwrap_or_else(|e| e.into_inner());
    if let Some(handler) = handler {
        handler(level, text);
    }
}

/// A warning: `text` says what is wrong and what was done about it.
pub(crate) fn warn(text: &str) {
    send(Level::Warning, text);
}

/// A progress note: `text` says what is being done.
pub(crate) fn note(text: &str) {
    send(Level::Note, text);
}

/// A notice as one line for the user: `vmtest: warning: <text>` or `vmtest: <text>`.
pub(crate) fn line(level: Level, text: &str) -> String {
    match level {
        Level::Warning => format!("vmtest: warning: {text}"),
        Level::Note => format!("vmtest: {text}"),
    }
}

/// The handler of the harness and the command lines: each notice as a [`line`] on stderr.
pub(crate) fn to_stderr(level: Level, text: &str) {
    eprintln!("{}", line(level, text));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notices_read_as_vmtest_lines() {
        assert_eq!(line(Level::Warning, "x is damaged"), "vmtest: warning: x is damaged");
        assert_eq!(line(Level::Note, "indexing"), "vmtest: indexing");
    }
}
