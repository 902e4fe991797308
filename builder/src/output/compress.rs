//! initramfs compression the kernel can unpack: gzip and zstd (both multi-threaded; their
//! output does not depend on the worker count) and xz with the CRC32 check the kernel's decompressor
//! requires.

use std::io::{self, Write};

use crate::profile::Compression;

/// A compressing writer; `finish` flushes the stream end and returns the inner writer.
pub enum Compressor<W: Write> {
    Gzip(super::pargzip::ParallelGzip<W>),
    Zstd(zstd::stream::write::Encoder<'static, W>),
    Xz(xz2::write::XzEncoder<W>),
}

impl<W: Write> Compressor<W> {
    /// `level` defaults to gzip 9, zstd 12, xz 6. `workers` bounds gzip's and zstd's threads
    /// (the output is identical for any count).
    pub fn new(kind: Compression, level: Option<u32>, out: W, workers: u32) -> io::Result<Self> {
        Ok(match kind {
            Compression::Gzip => Compressor::Gzip(super::pargzip::ParallelGzip::new(out, level.unwrap_or(9), workers)?),
            Compression::Zstd => {
                let mut e = zstd::stream::write::Encoder::new(out, level.unwrap_or(12) as i32)?;
                e.multithread(workers.max(1))?;
                e.include_checksum(true)?;
                Compressor::Zstd(e)
            }
            Compression::Xz => {
                let stream =
                    xz2::stream::Stream::new_easy_encoder(6, xz2::stream::Check::Crc32).map_err(io::Error::other)?;
                Compressor::Xz(xz2::write::XzEncoder::new_stream(out, stream))
            }
        })
    }

    pub fn finish(self) -> io::Result<W> {
        match self {
            Compressor::Gzip(e) => e.finish(),
            Compressor::Zstd(e) => e.finish(),
            Compressor::Xz(e) => e.finish(),
        }
    }
}

impl<W: Write> Write for Compressor<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Compressor::Gzip(e) => e.write(buf),
            Compressor::Zstd(e) => e.write(buf),
            Compressor::Xz(e) => e.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Compressor::Gzip(e) => e.flush(),
            Compressor::Zstd(e) => e.flush(),
            Compressor::Xz(e) => e.flush(),
        }
    }
}

/// A reader that undoes whichever of the three produced `input` (by magic number).
pub fn decompressor<'a, R: io::BufRead + 'a>(mut input: R) -> io::Result<Box<dyn io::Read + 'a>> {
    let head = input.fill_buf()?.to_vec();
    Ok(if head.starts_with(&[0x1f, 0x8b]) {
        Box::new(flate2::bufread::MultiGzDecoder::new(input))
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Box::new(zstd::stream::read::Decoder::with_buffer(input)?)
    } else if head.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0]) {
        Box::new(xz2::bufread::XzDecoder::new_multi_decoder(input))
    } else if head.starts_with(b"070701") {
        Box::new(input)
    } else {
        return Err(io::Error::new(io::ErrorKind::InvalidData, "not a gzip, zstd, xz or uncompressed newc stream"));
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn round_trips_and_is_independent_of_workers() {
        let data: Vec<u8> = (0..300_000u32).flat_map(|i| (i % 251).to_le_bytes()).collect();
        for kind in [Compression::Gzip, Compression::Zstd, Compression::Xz] {
            let mut outputs = Vec::new();
            for workers in [1, 2, 4] {
                let mut c = Compressor::new(kind, None, Vec::new(), workers).unwrap();
                c.write_all(&data).unwrap();
                outputs.push(c.finish().unwrap());
            }
            assert!(outputs.windows(2).all(|w| w[0] == w[1]), "{kind:?} output depends on the worker count");
            let mut back = Vec::new();
            decompressor(&outputs[0][..]).unwrap().read_to_end(&mut back).unwrap();
            assert_eq!(back, data, "{kind:?}");
        }
    }

    #[test]
    fn xz_uses_crc32() {
        let mut c = Compressor::new(Compression::Xz, None, Vec::new(), 1).unwrap();
        c.write_all(b"x").unwrap();
        let out = c.finish().unwrap();
        // Stream flags: byte 7 is the check type; 0x01 = CRC32.
        assert_eq!(out[7], 0x01);
    }
}
