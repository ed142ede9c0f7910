//! A TensorBoard event-file writer: TFRecord framing (length, masked CRC32C, payload, masked
//! CRC32C) around hand-encoded `Event` protocol buffers: scalars and PNG images.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

/// Writes `events.out.tfevents.<time>.<host>` in a log directory.
#[derive(Debug)]
pub struct EventWriter {
    path: PathBuf,
    out: BufWriter<File>,
}

fn masked_crc(data: &[u8]) -> u32 {
    let c = crc32c::crc32c(data);
    (c.rotate_right(15)).wrapping_add(0xa282_ead8)
}

fn varint(mut v: u64, out: &mut Vec<u8>) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// A length-delimited field.
fn bytes_field(field: u64, data: &[u8], out: &mut Vec<u8>) {
    varint(field << 3 | 2, out);
    varint(data.len() as u64, out);
    out.extend_from_slice(data);
}

/// An `Event` with wall time and step, plus its payload fields.
fn event(step: i64, payload: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
    let wall = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0);
    let mut e = Vec::new();
    varint(1 << 3 | 1, &mut e);
    e.extend_from_slice(&wall.to_le_bytes());
    varint(2 << 3, &mut e);
    varint(step as u64, &mut e);
    payload(&mut e);
    e
}

impl EventWriter {
    /// Creates the log directory and a new event file in it.
    pub fn create(dir: &Path) -> std::io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let secs = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let host =
            std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_else(|_| "host".into());
        let path = dir.join(format!("events.out.tfevents.{secs}.{}", host.trim()));
        let mut w = Self {
            out: BufWriter::new(File::create(&path)?),
            path,
        };
        let version = event(0, |e| bytes_field(3, b"brain.Event:2", e));
        w.record(&version)?;
        Ok(w)
    }

    /// The file written.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn record(&mut self, data: &[u8]) -> std::io::Result<()> {
        let len = (data.len() as u64).to_le_bytes();
        self.out.write_all(&len)?;
        self.out.write_all(&masked_crc(&len).to_le_bytes())?;
        self.out.write_all(data)?;
        self.out.write_all(&masked_crc(data).to_le_bytes())
    }

    /// Logs `value` under `tag` at `step`.
    pub fn scalar(&mut self, tag: &str, value: f32, step: i64) -> std::io::Result<()> {
        let mut v = Vec::new();
        bytes_field(1, tag.as_bytes(), &mut v);
        varint(2 << 3 | 5, &mut v);
        v.extend_from_slice(&value.to_le_bytes());
        let mut summary = Vec::new();
        bytes_field(1, &v, &mut summary);
        let e = event(step, |e| bytes_field(5, &summary, e));
        self.record(&e)
    }

    /// Logs a PNG image of `width` x `height` pixels under `tag` at `step`.
    pub fn image(
        &mut self,
        tag: &str,
        png: &[u8],
        width: u32,
        height: u32,
        step: i64,
    ) -> std::io::Result<()> {
        let mut img = Vec::new();
        varint(1 << 3, &mut img);
        varint(u64::from(height), &mut img);
        varint(2 << 3, &mut img);
        varint(u64::from(width), &mut img);
        varint(3 << 3, &mut img);
        varint(3, &mut img); // RGB
        bytes_field(4, png, &mut img);
        let mut v = Vec::new();
        bytes_field(1, tag.as_bytes(), &mut v);
        bytes_field(4, &img, &mut v);
        let mut summary = Vec::new();
        bytes_field(1, &v, &mut summary);
        let e = event(step, |e| bytes_field(5, &summary, e));
        self.record(&e)
    }

    /// Writes buffered events to disk (TensorBoard sees them after this).
    pub fn flush(&mut self) -> std::io::Result<()> {
        self.out.flush()
    }
}

impl Drop for EventWriter {
    fn drop(&mut self) {
        let _ = self.out.flush();
    }
}
