//! A TensorBoard event-file writer: scalars and PNG images as `tf.Event` protobufs in TFRecord
//! framing. Written here (≈100 lines) rather than through tensorboard-rs, whose writer panics on
//! I/O errors, leaves `add_text`/`add_histogram` unimplemented and swaps non-square image sides.

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

/// Appends events to `events.out.tfevents.<time>.<host>.<pid>` in a run folder.
pub struct EventWriter {
    path: PathBuf,
    file: BufWriter<File>,
}

impl EventWriter {
    pub fn create(dir: &Path) -> io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let host = std::fs::read_to_string("/etc/hostname").map(|h| h.trim().to_owned()).unwrap_or_default();
        let host = if host.is_empty() { "localhost".to_owned() } else { host };
        let name = format!("events.out.tfevents.{}.{host}.{}", wall_time() as u64, std::process::id());
        let path = dir.join(name);
        let mut writer = Self { file: BufWriter::new(File::create(&path)?), path };
        let mut event = Proto::default();
        event.double(1, wall_time());
        event.bytes(3, b"brain.Event:2");
        writer.record(&event.0)?;
        writer.flush()?;
        Ok(writer)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn scalar(&mut self, tag: &str, value: f64, step: u64) -> io::Result<()> {
        let mut value_msg = Proto::default();
        value_msg.bytes(1, tag.as_bytes());
        value_msg.float(2, value as f32);
        self.summary(&value_msg, step)
    }

    /// An RGB image given as `[3, h, w]` uint8 planes (the layout of our batches).
    pub fn image_chw(&mut self, tag: &str, chw: &[u8], h: usize, w: usize, step: u64) -> io::Result<()> {
        let mut rgb = image::RgbImage::new(w as u32, h as u32);
        for (i, pixel) in rgb.pixels_mut().enumerate() {
            *pixel = image::Rgb([chw[i], chw[h * w + i], chw[2 * h * w + i]]);
        }
        let mut png = Vec::new();
        image::DynamicImage::ImageRgb8(rgb)
            .write_to(&mut io::Cursor::new(&mut png), image::ImageFormat::Png)
            .map_err(io::Error::other)?;
        let mut image_msg = Proto::default();
        image_msg.varint(1, h as u64);
        image_msg.varint(2, w as u64);
        image_msg.varint(3, 3);
        image_msg.bytes(4, &png);
        let mut value_msg = Proto::default();
        value_msg.bytes(1, tag.as_bytes());
        value_msg.bytes(4, &image_msg.0);
        self.summary(&value_msg, step)
    }

    fn summary(&mut self, value: &Proto, step: u64) -> io::Result<()> {
        let mut summary = Proto::default();
        summary.bytes(1, &value.0);
        let mut event = Proto::default();
        event.double(1, wall_time());
        event.varint(2, step);
        event.bytes(5, &summary.0);
        self.record(&event.0)
    }

    /// TFRecord framing: length, masked CRC of the length, data, masked CRC of the data.
    fn record(&mut self, data: &[u8]) -> io::Result<()> {
        let length = (data.len() as u64).to_le_bytes();
        self.file.write_all(&length)?;
        self.file.write_all(&masked_crc32c(&length).to_le_bytes())?;
        self.file.write_all(data)?;
        self.file.write_all(&masked_crc32c(data).to_le_bytes())
    }

    pub fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

fn wall_time() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0)
}

/// Minimal protobuf encoder for the few message shapes above.
#[derive(Default)]
struct Proto(Vec<u8>);

impl Proto {
    fn key(&mut self, field: u32, wire_type: u8) {
        self.raw_varint(((field as u64) << 3) | wire_type as u64);
    }

    fn raw_varint(&mut self, mut value: u64) {
        while value >= 0x80 {
            self.0.push((value as u8) | 0x80);
            value >>= 7;
        }
        self.0.push(value as u8);
    }

    fn varint(&mut self, field: u32, value: u64) {
        self.key(field, 0);
        self.raw_varint(value);
    }

    fn double(&mut self, field: u32, value: f64) {
        self.key(field, 1);
        self.0.extend_from_slice(&value.to_le_bytes());
    }

    fn float(&mut self, field: u32, value: f32) {
        self.key(field, 5);
        self.0.extend_from_slice(&value.to_le_bytes());
    }

    fn bytes(&mut self, field: u32, value: &[u8]) {
        self.key(field, 2);
        self.raw_varint(value.len() as u64);
        self.0.extend_from_slice(value);
    }
}

/// CRC-32C (Castagnoli), bitwise; event files are small enough that a table is not worth it.
fn crc32c(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &byte in data {
        crc ^= byte as u32;
        for _ in 0..8 {
            crc = if crc & 1 == 1 { (crc >> 1) ^ 0x82F6_3B78 } else { crc >> 1 };
        }
    }
    !crc
}

fn masked_crc32c(data: &[u8]) -> u32 {
    let crc = crc32c(data);
    (crc.rotate_right(15)).wrapping_add(0xa282_ead8)
}

#[cfg(test)]
mod tests {
    #[test]
    fn crc32c_check_value() {
        // The standard check value of CRC-32C for "123456789".
        assert_eq!(super::crc32c(b"123456789"), 0xE306_9283);
    }
}
