//! A gzip writer that uses several cores, pigz-style: the input is cut into fixed 1 MiB
//! blocks, each deflated on its own by a worker and ended with a sync flush (a byte-aligned
//! empty stored block), so the pieces concatenate into one deflate stream any gunzip reads.
//! Block boundaries depend only on the input, so the bytes are the same for any number of
//! workers. Blocks do not share a dictionary (miniz_oxide cannot preset one); at 1 MiB that
//! costs well under 1% of size.
//!
//! Written here rather than taken from `gzp`: that crate's deflate backends need zlib-ng
//! (cmake and a C compiler) and it owns the gzip header, which must stay byte-stable here.

use std::collections::BTreeMap;
use std::io::{self, Write};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use flate2::{Compress, Compression, FlushCompress, Status};

/// Input bytes per independently deflated block.
pub const BLOCK: usize = 1 << 20;

/// `data` as raw deflate, ending with a sync flush, or with the final block when `last`.
fn deflate_block(data: &[u8], level: u32, last: bool) -> Vec<u8> {
    let mut c = Compress::new(Compression::new(level), false);
    let mut out = Vec::with_capacity(data.len() + data.len() / 16 + 64);
    let flush = if last { FlushCompress::Finish } else { FlushCompress::Sync };
    loop {
        let consumed = c.total_in() as usize;
        let status = c.compress_vec(&data[consumed..], &mut out, flush).expect("deflate of a buffer cannot fail");
        let all_in = c.total_in() as usize == data.len();
        // Finished when everything went in and the flush completed: the stream end for the
        // last block, room left in `out` for a sync flush.
        if all_in && (status == Status::StreamEnd || (!last && out.len() < out.capacity())) {
            return out;
        }
        out.reserve(64 << 10);
    }
}

struct Job {
    index: u64,
    data: Vec<u8>,
    last: bool,
}

/// The gzip member header: no name, mtime 0 (reproducible), XFL from the level, OS Unix.
fn header(level: u32) -> [u8; 10] {
    let xfl = match level {
        9 => 2,
        1 => 4,
        _ => 0,
    };
    [0x1f, 0x8b, 8, 0, 0, 0, 0, 0, xfl, 3]
}

pub struct ParallelGzip<W: Write> {
    out: W,
    pending: Vec<u8>,
    crc: crc32fast::Hasher,
    size: u64,
    next_index: u64,
    next_to_write: u64,
    done: BTreeMap<u64, Vec<u8>>,
    jobs: Option<Sender<Job>>,
    results: Receiver<(u64, Vec<u8>)>,
    threads: Vec<JoinHandle<()>>,
    /// Blocks handed out and not yet written, at most `2 × workers` (bounds memory).
    in_flight: u64,
    max_in_flight: u64,
}

impl<W: Write> ParallelGzip<W> {
    pub fn new(mut out: W, level: u32, workers: u32) -> io::Result<Self> {
        out.write_all(&header(level))?;
        let (job_tx, job_rx) = channel::<Job>();
        let (result_tx, results) = channel();
        let job_rx = Arc::new(Mutex::new(job_rx));
        let threads = (0..workers.max(1))
            .map(|_| {
                let (jobs, results) = (Arc::clone(&job_rx), result_tx.clone());
                std::thread::spawn(move || loop {
                    let job = jobs.lock().expect("not poisoned").recv();
                    let Ok(job) = job else { return };
                    let compressed = deflate_block(&job.data, level, job.last);
                    if results.send((job.index, compressed)).is_err() {
                        return;
                    }
                })
            })
            .collect();
        Ok(ParallelGzip {
            out,
            pending: Vec::with_capacity(BLOCK),
            crc: crc32fast::Hasher::new(),
            size: 0,
            next_index: 0,
            next_to_write: 0,
            done: BTreeMap::new(),
            jobs: Some(job_tx),
            results,
            threads,
            in_flight: 0,
            max_in_flight: 2 * u64::from(workers.max(1)),
        })
    }

    fn dispatch(&mut self, last: bool) -> io::Result<()> {
        while self.in_flight >= self.max_in_flight {
            self.collect_one()?;
        }
        let data = std::mem::replace(&mut self.pending, Vec::with_capacity(BLOCK));
        let job = Job { index: self.next_index, data, last };
        self.jobs.as_ref().expect("open until finish").send(job).map_err(|_| worker_died())?;
        self.next_index += 1;
        self.in_flight += 1;
        Ok(())
    }

    /// Waits for one block and writes every block that is now next in order.
    fn collect_one(&mut self) -> io::Result<()> {
        let (index, bytes) = self.results.recv().map_err(|_| worker_died())?;
        self.done.insert(index, bytes);
        while let Some(bytes) = self.done.remove(&self.next_to_write) {
            self.out.write_all(&bytes)?;
            self.next_to_write += 1;
            self.in_flight -= 1;
        }
        Ok(())
    }

    /// Deflates the rest, writes the trailer (CRC-32, size mod 2^32) and returns the writer.
    pub fn finish(mut self) -> io::Result<W> {
        self.dispatch(true)?;
        while self.in_flight > 0 {
            self.collect_one()?;
        }
        self.jobs = None; // workers see the channel close and exit
        for t in self.threads.drain(..) {
            t.join().map_err(|_| worker_died())?;
        }
        let crc = std::mem::take(&mut self.crc).finalize();
        self.out.write_all(&crc.to_le_bytes())?;
        self.out.write_all(&(self.size as u32).to_le_bytes())?;
        self.out.flush()?;
        Ok(self.out)
    }
}

fn worker_died() -> io::Error {
    io::Error::other("a gzip worker thread died")
}

impl<W: Write> Write for ParallelGzip<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = buf.len().min(BLOCK - self.pending.len());
        self.pending.extend_from_slice(&buf[..n]);
        self.crc.update(&buf[..n]);
        self.size += n as u64;
        if self.pending.len() == BLOCK {
            self.dispatch(false)?;
        }
        Ok(n)
    }

    /// Blocks are only cut at fixed sizes (so output stays reproducible); flush writes out
    /// what is finished.
    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn gzip(data: &[u8], workers: u32) -> Vec<u8> {
        let mut g = ParallelGzip::new(Vec::new(), 9, workers).unwrap();
        for chunk in data.chunks(100_000) {
            g.write_all(chunk).unwrap();
        }
        g.finish().unwrap()
    }

    #[test]
    fn any_gunzip_reads_it_and_workers_do_not_change_the_bytes() {
        // Compressible text plus noise, across several blocks and not a multiple of BLOCK.
        let mut data: Vec<u8> = (0..3 * BLOCK + 12_345).map(|i| b"hyve initramfs "[i % 15]).collect();
        let mut x = 1u32;
        for b in data.iter_mut().skip(BLOCK).take(BLOCK / 2) {
            x = x.wrapping_mul(1_103_515_245).wrapping_add(12_345);
            *b = (x >> 24) as u8;
        }
        let one = gzip(&data, 1);
        assert_eq!(one, gzip(&data, 2));
        assert_eq!(one, gzip(&data, 7));
        let mut back = Vec::new();
        flate2::read::GzDecoder::new(&one[..]).read_to_end(&mut back).unwrap();
        assert!(back == data, "round trip");
        assert_eq!(&one[..10], &header(9));
        // Exactly one block, and nothing at all.
        for len in [BLOCK, 0] {
            let out = gzip(&data[..len], 3);
            let mut back = Vec::new();
            flate2::read::GzDecoder::new(&out[..]).read_to_end(&mut back).unwrap();
            assert_eq!(back.len(), len);
        }
    }
}
