//! Reading concatenated gzip members one at a time while seeing their raw bytes.
//!
//! apk files are several gzip members back to back, and every trust check is over the *raw
//! compressed* bytes of one member. [`GzipMember`] consumes exactly one member from a
//! `BufRead`, so a `BufRead` wrapper that records or hashes what is consumed gives each
//! member's raw bytes without buffering the file or decompressing twice.

use std::io::{self, BufRead, Read};

use sha2::{Digest, Sha256};

/// What happens to raw bytes as they are consumed.
pub(crate) enum Tap {
    Off,
    /// Keep a copy (small members: signature, control, index).
    Record(Vec<u8>),
    /// Hash on the fly (the data member, which can be large).
    Sha256(Box<Sha256>),
}

/// A `BufRead` that passes every consumed byte to its `Tap` and counts them.
pub(crate) struct TappedReader<R> {
    inner: R,
    tap: Tap,
    consumed: u64,
    /// A reader asked for more after the input ended: a decompressor reading through it
    /// wanted bytes the file does not have.
    ran_dry: bool,
}

impl<R: BufRead> TappedReader<R> {
    pub fn new(inner: R) -> Self {
        TappedReader { inner, tap: Tap::Off, consumed: 0, ran_dry: false }
    }

    /// Whether a read came up empty at the end of the input since the last call.
    pub fn take_ran_dry(&mut self) -> bool {
        std::mem::take(&mut self.ran_dry)
    }

    /// Installs a new tap and returns the old one.
    pub fn set_tap(&mut self, tap: Tap) -> Tap {
        std::mem::replace(&mut self.tap, tap)
    }

    pub fn consumed(&self) -> u64 {
        self.consumed
    }

    pub fn at_eof(&mut self) -> io::Result<bool> {
        Ok(self.inner.fill_buf()?.is_empty())
    }
}

impl<R: BufRead> Read for TappedReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let available = self.fill_buf()?;
        let n = available.len().min(buf.len());
        buf[..n].copy_from_slice(&available[..n]);
        self.consume(n);
        Ok(n)
    }
}

impl<R: BufRead> BufRead for TappedReader<R> {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        let buf = self.inner.fill_buf()?;
        self.ran_dry |= buf.is_empty();
        Ok(buf)
    }

    fn consume(&mut self, amt: usize) {
        if amt == 0 {
            return;
        }
        // fill_buf returns the already-buffered bytes without I/O here.
        if let Ok(buf) = self.inner.fill_buf() {
            let taken = &buf[..amt.min(buf.len())];
            match &mut self.tap {
                Tap::Off => {}
                Tap::Record(v) => v.extend_from_slice(taken),
                Tap::Sha256(h) => h.update(taken),
            }
        }
        self.consumed += amt as u64;
        self.inner.consume(amt);
    }
}

/// A reader that fails (rather than truncates) once more than `limit` bytes pass through.
pub(crate) struct LimitedReader<R> {
    inner: R,
    remaining: u64,
    limit: u64,
}

/// Marker carried inside the `io::Error` so callers can report `TooLarge` precisely.
#[derive(Debug)]
pub(crate) struct LimitExceeded(pub u64);

impl std::fmt::Display for LimitExceeded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "more than {} bytes", self.0)
    }
}

impl std::error::Error for LimitExceeded {}

impl<R: Read> LimitedReader<R> {
    pub fn new(inner: R, limit: u64) -> Self {
        LimitedReader { inner, remaining: limit, limit }
    }
}

impl<R: Read> Read for LimitedReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        // Ask for one byte more than allowed so an oversize stream is detected, not cut.
        let want = buf.len().min(self.remaining.saturating_add(1).min(usize::MAX as u64) as usize);
        let n = self.inner.read(&mut buf[..want])?;
        if n as u64 > self.remaining {
            return Err(io::Error::other(LimitExceeded(self.limit)));
        }
        self.remaining -= n as u64;
        Ok(n)
    }
}

/// Whether an I/O error came from a `LimitedReader`.
pub(crate) fn limit_exceeded(e: &io::Error) -> Option<u64> {
    e.get_ref().and_then(|inner| inner.downcast_ref::<LimitExceeded>()).map(|l| l.0)
}

/// Decompresses exactly one gzip member from `input` into memory (at most `limit` bytes).
pub(crate) fn read_member<R: BufRead>(input: &mut TappedReader<R>, limit: u64) -> io::Result<Vec<u8>> {
    let mut out = Vec::new();
    LimitedReader::new(GzipMember::new(input), limit).read_to_end(&mut out)?;
    Ok(out)
}

/// One gzip member read from `input` and no byte past it: its header, its deflate stream and
/// its trailer, whose CRC-32 and length are checked. zlib-rs inflates (in zlib's gzip mode),
/// not flate2's default backend, which all hyve's gzip output goes through: inflating the
/// packages is the largest cost of a warm build, and zlib-rs takes about a quarter less CPU
/// for it than miniz_oxide (0.76 s against 1.04 s for `minimal`, perf). (flate2 on zlib-rs
/// would also move the gzip *compression* hyve's outputs must repeat byte for byte onto code
/// that picks its SIMD paths at run time.)
pub(crate) struct GzipMember<R> {
    input: R,
    inflate: zlib_rs::Inflate,
    done: bool,
}

impl<R: BufRead> GzipMember<R> {
    pub fn new(input: R) -> Self {
        // 16 + 15: a gzip header (not zlib's), a window of 2^15 bytes.
        GzipMember { input, inflate: zlib_rs::Inflate::new(true, 16 + 15), done: false }
    }
}

impl<R: BufRead> Read for GzipMember<R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if self.done || out.is_empty() {
            return Ok(0);
        }
        loop {
            let input = self.input.fill_buf()?;
            let ended = input.is_empty();
            let (was_in, was_out) = (self.inflate.total_in(), self.inflate.total_out());
            let status = self.inflate.decompress(input, out, zlib_rs::InflateFlush::NoFlush).map_err(|e| {
                let detail = self.inflate.error_message().unwrap_or(e.as_str());
                io::Error::new(io::ErrorKind::InvalidData, format!("corrupt gzip stream: {detail}"))
            })?;
            let consumed = (self.inflate.total_in() - was_in) as usize;
            let produced = (self.inflate.total_out() - was_out) as usize;
            self.input.consume(consumed);
            if status == zlib_rs::Status::StreamEnd {
                self.done = true;
                return Ok(produced);
            }
            if produced > 0 {
                return Ok(produced);
            }
            if ended || consumed == 0 {
                // No input left, or (with both buffers non-empty) none taken: the member is
                // cut short.
                return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "the gzip member ends early"));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flate2::{write::GzEncoder, Compression};
    use std::io::Write;

    fn gz(data: &[u8]) -> Vec<u8> {
        let mut e = GzEncoder::new(Vec::new(), Compression::default());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    #[test]
    fn members_split_exactly_with_raw_bytes() {
        let (a, b) = (gz(b"first member"), gz(&vec![7u8; 100_000]));
        let file = [a.clone(), b.clone()].concat();
        // A tiny buffer forces many fill_buf/consume rounds across the member boundary.
        let mut r = TappedReader::new(io::BufReader::with_capacity(7, &file[..]));
        r.set_tap(Tap::Record(Vec::new()));
        assert_eq!(read_member(&mut r, 1 << 20).unwrap(), b"first member");
        let Tap::Record(raw_a) = r.set_tap(Tap::Record(Vec::new())) else { panic!() };
        assert_eq!(raw_a, a);
        assert_eq!(r.consumed(), a.len() as u64);
        assert_eq!(read_member(&mut r, 1 << 20).unwrap().len(), 100_000);
        let Tap::Record(raw_b) = r.set_tap(Tap::Off) else { panic!() };
        assert_eq!(raw_b, b);
        assert!(r.at_eof().unwrap());
    }

    #[test]
    fn limit_is_an_error_not_a_truncation() {
        let data = gz(&[0u8; 5000]);
        let mut r = TappedReader::new(&data[..]);
        let e = read_member(&mut r, 4999).unwrap_err();
        assert_eq!(limit_exceeded(&e), Some(4999));
        let mut r = TappedReader::new(&data[..]);
        assert_eq!(read_member(&mut r, 5000).unwrap().len(), 5000);
    }

    /// The trailer is checked: a wrong CRC-32 or length is corrupt data, not a short read.
    #[test]
    fn a_member_whose_trailer_does_not_match_fails() {
        let data = gz(b"some data whose trailer is checked");
        for at in [data.len() - 8, data.len() - 1] {
            let mut bad = data.clone();
            bad[at] ^= 1;
            let e = read_member(&mut TappedReader::new(&bad[..]), 1 << 20).unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::InvalidData, "{e}");
        }
        let mut not_gzip = data.clone();
        not_gzip[0] = 0x78;
        assert_eq!(
            read_member(&mut TappedReader::new(&not_gzip[..]), 1 << 20).unwrap_err().kind(),
            io::ErrorKind::InvalidData
        );
    }

    #[test]
    fn truncated_member_fails() {
        let data = gz(b"some data that will be cut");
        let mut r = TappedReader::new(&data[..data.len() - 3]);
        assert_eq!(read_member(&mut r, 1 << 20).unwrap_err().kind(), io::ErrorKind::UnexpectedEof);
    }
}
