//! Stopping a long job cleanly: the CLI turns SIGINT/SIGTERM into a `Cancel` flag, and the
//! build checks it before each package is unpacked and inside every stream it writes, so an
//! interrupted build unwinds through the normal error path — temporary directories are
//! removed, the previous output stays — instead of dying with debris on disk.

use std::io::{self, Read, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// Shared "stop now" flag.
#[derive(Debug, Clone, Default)]
pub struct Cancel(Arc<AtomicBool>);

/// The message the interrupted stream fails with; `is_cancelled` recognises it.
const MESSAGE: &str = "interrupted";

impl Cancel {
    pub fn new() -> Self {
        Cancel::default()
    }

    /// The flag itself, for `signal_hook::flag::register`.
    pub fn flag(&self) -> Arc<AtomicBool> {
        Arc::clone(&self.0)
    }

    pub fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }

    /// An error to stop with when cancelled.
    pub fn check(&self) -> io::Result<()> {
        if self.is_cancelled() {
            Err(io::Error::other(MESSAGE))
        } else {
            Ok(())
        }
    }

    /// `inner`, failing its next read or write once cancelled.
    pub fn wrap<T>(&self, inner: T) -> Cancellable<T> {
        Cancellable { inner, cancel: self.clone() }
    }
}

/// A reader or writer that stops when its `Cancel` is set.
pub struct Cancellable<T> {
    inner: T,
    cancel: Cancel,
}

impl<W: Write> Write for Cancellable<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.cancel.check()?;
        self.inner.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

impl<R: Read> Read for Cancellable<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.cancel.check()?;
        self.inner.read(buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_stop_once_cancelled() {
        let cancel = Cancel::new();
        let mut written = Vec::new();
        let mut w = cancel.wrap(&mut written);
        w.write_all(b"before").unwrap();
        cancel.flag().store(true, Ordering::SeqCst); // what the signal handler does
        assert_eq!(w.write_all(b"after").unwrap_err().to_string(), "interrupted");
        assert_eq!(written, b"before");
        let mut r = cancel.wrap(&b"data"[..]);
        assert!(r.read(&mut [0u8; 4]).is_err());
    }
}
