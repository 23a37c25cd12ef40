//! A TensorBoard event-file writer: scalars, PNG images, histograms, text and the HParams
//! plugin's session records as `tf.Event` protobufs in TFRecord framing. Written here rather than
//! through tensorboard-rs, whose writer panics on I/O errors, leaves `add_text`/`add_histogram`/
//! `add_hparams` unimplemented and swaps non-square image sides.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

/// The prefix of every event file's name; TensorBoard reads a folder's files in name order.
const EVENT_FILE_PREFIX: &str = "events.out.tfevents.";

/// Appends events to `events.out.tfevents.<time>.<host>.<pid>` in a run folder. I/O errors name
/// the file.
pub struct EventWriter {
    path: PathBuf,
    file: BufWriter<File>,
    /// Bytes handed to `file` so far (on disk after `flush`).
    written: u64,
}

impl EventWriter {
    /// A new event file in `dir`. If its header cannot be written (a full disk) the file is
    /// removed again rather than left empty.
    pub fn create(dir: &Path) -> io::Result<Self> {
        std::fs::create_dir_all(dir).map_err(|e| located(dir, e))?;
        let host = std::fs::read_to_string("/etc/hostname").map(|h| h.trim().to_owned()).unwrap_or_default();
        let host = if host.is_empty() { "localhost".to_owned() } else { host };
        let name = format!("{EVENT_FILE_PREFIX}{}.{host}.{}", wall_time() as u64, std::process::id());
        let path = dir.join(name);
        let file = File::create(&path).map_err(|e| located(&path, e))?;
        let mut writer = Self { file: BufWriter::new(file), path, written: 0 };
        let mut event = Proto::default();
        event.double(1, wall_time());
        event.bytes(3, b"brain.Event:2");
        if let Err(e) = writer.record(&event.0).and_then(|()| writer.flush()) {
            let _ = std::fs::remove_file(&writer.path);
            return Err(e);
        }
        Ok(writer)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Bytes written to the file, all of them on disk after [`EventWriter::flush`].
    pub fn bytes_written(&self) -> u64 {
        self.written
    }

    /// A `SessionLog.START` at `step`: TensorBoard then drops every point it had read for steps
    /// `>= step` (a run resumed from a checkpoint at `step - 1` redoes them).
    pub fn session_start(&mut self, step: u64) -> io::Result<()> {
        let mut session_log = Proto::default();
        session_log.varint(1, SESSION_LOG_START);
        let mut event = Proto::default();
        event.double(1, wall_time());
        event.varint(2, step);
        event.bytes(7, &session_log.0);
        self.record(&event.0)
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

    /// A histogram of `values` in [`HISTOGRAM_BUCKETS`] equal-width buckets (non-finite values skipped).
    pub fn histogram(&mut self, tag: &str, values: &[f64], step: u64) -> io::Result<()> {
        let values: Vec<f64> = values.iter().copied().filter(|v| v.is_finite()).collect();
        let (min, max) =
            values.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &v| (lo.min(v), hi.max(v)));
        let (min, max) = if values.is_empty() { (0.0, 0.0) } else { (min, max) };
        // Bucket i counts values up to bucket_limit[i] (TensorBoard's right edges).
        let buckets = if max > min { HISTOGRAM_BUCKETS } else { 1 };
        let width = (max - min) / buckets as f64;
        let mut counts = vec![0.0; buckets];
        for v in &values {
            let index = if width > 0.0 { ((v - min) / width) as usize } else { 0 };
            counts[index.min(buckets - 1)] += 1.0;
        }
        let limits: Vec<f64> =
            (1..=buckets).map(|i| if i == buckets { max } else { min + i as f64 * width }).collect();
        let mut histo = Proto::default();
        histo.double(1, min);
        histo.double(2, max);
        histo.double(3, values.len() as f64);
        histo.double(4, values.iter().sum());
        histo.double(5, values.iter().map(|v| v * v).sum());
        histo.packed_doubles(6, &limits);
        histo.packed_doubles(7, &counts);
        let mut value_msg = Proto::default();
        value_msg.bytes(1, tag.as_bytes());
        value_msg.bytes(5, &histo.0);
        self.summary(&value_msg, step)
    }

    /// Text (rendered as Markdown by TensorBoard's Text dashboard), e.g. the resolved config.
    pub fn text(&mut self, tag: &str, text: &str, step: u64) -> io::Result<()> {
        let mut tensor = Proto::default();
        tensor.varint(1, DT_STRING);
        tensor.bytes(2, &[]); // scalar shape
        tensor.bytes(8, text.as_bytes());
        // TextPluginData { version: 0 } serialises to nothing.
        self.plugin_summary(tag, "text", &[], &tensor, step)
    }

    /// Registers this run as a session of the HParams dashboard: the experiment (which hparams
    /// and metrics exist) and the session's hparam values. Log each metric as a scalar under its
    /// tag in `metric_tags` (e.g. `eval/acc1`); the dashboard shows its latest value.
    pub fn hparams(&mut self, hparams: &BTreeMap<String, HParam>, metric_tags: &[&str]) -> io::Result<()> {
        let mut experiment = Proto::default();
        for (name, value) in hparams {
            let mut info = Proto::default();
            info.bytes(1, name.as_bytes());
            info.varint(4, value.data_type());
            experiment.bytes(4, &info.0);
        }
        for tag in metric_tags {
            let mut metric_name = Proto::default();
            metric_name.bytes(2, tag.as_bytes());
            let mut info = Proto::default();
            info.bytes(1, &metric_name.0);
            experiment.bytes(5, &info.0);
        }
        experiment.double(3, wall_time());
        self.hparams_record(HPARAMS_EXPERIMENT, 2, &experiment)?;
        let mut start = Proto::default();
        for (name, value) in hparams {
            let mut entry = Proto::default();
            entry.bytes(1, name.as_bytes());
            entry.bytes(2, &value.to_proto().0);
            start.bytes(1, &entry.0);
        }
        start.double(5, wall_time());
        self.hparams_record(HPARAMS_SESSION_START, 3, &start)
    }

    /// Closes the HParams session (`success = false` marks it failed).
    pub fn hparams_end(&mut self, success: bool) -> io::Result<()> {
        let mut end = Proto::default();
        end.varint(1, if success { 1 } else { 2 });
        end.double(2, wall_time());
        self.hparams_record(HPARAMS_SESSION_END, 4, &end)
    }

    /// `HParamsPluginData { version: 0, <oneof field>: data }` under `tag`, at step 0.
    fn hparams_record(&mut self, tag: &str, field: u32, data: &Proto) -> io::Result<()> {
        let mut plugin_data = Proto::default();
        plugin_data.bytes(field, &data.0);
        // The hparams plugin reads a float32 scalar 0 as the value of these records.
        let mut tensor = Proto::default();
        tensor.varint(1, DT_FLOAT);
        tensor.bytes(2, &[]);
        tensor.float(5, 0.0);
        self.plugin_summary(tag, "hparams", &plugin_data.0, &tensor, 0)
    }

    /// A `Summary.Value` holding `tensor`, tagged for `plugin` with its serialised `content`.
    fn plugin_summary(
        &mut self,
        tag: &str,
        plugin: &str,
        content: &[u8],
        tensor: &Proto,
        step: u64,
    ) -> io::Result<()> {
        let mut plugin_data = Proto::default();
        plugin_data.bytes(1, plugin.as_bytes());
        plugin_data.bytes(2, content);
        let mut metadata = Proto::default();
        metadata.bytes(1, &plugin_data.0);
        let mut value_msg = Proto::default();
        value_msg.bytes(1, tag.as_bytes());
        value_msg.bytes(9, &metadata.0);
        value_msg.bytes(8, &tensor.0);
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
        let framed = (|| {
            self.file.write_all(&length)?;
            self.file.write_all(&masked_crc32c(&length).to_le_bytes())?;
            self.file.write_all(data)?;
            self.file.write_all(&masked_crc32c(data).to_le_bytes())
        })();
        framed.map_err(|e| located(&self.path, e))?;
        self.written += data.len() as u64 + 16;
        Ok(())
    }

    /// Writes out what is buffered and makes it durable (fsync).
    pub fn flush(&mut self) -> io::Result<()> {
        self.file.flush().and_then(|()| self.file.get_ref().sync_data()).map_err(|e| located(&self.path, e))
    }
}

/// Cuts a run folder's TensorBoard history back to a checkpoint's: `keep` = (file, bytes) keeps
/// that file's first `bytes` and removes the event files written after it (by later starts);
/// `None` removes every event file (the run starts over).
pub fn cut_back(dir: &Path, keep: Option<(&str, u64)>) -> io::Result<()> {
    let entries = match std::fs::read_dir(dir) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        other => other.map_err(|e| located(dir, e))?,
    };
    for entry in entries {
        let path = entry.map_err(|e| located(dir, e))?.path();
        let name = path.file_name().unwrap_or_default().to_string_lossy().into_owned();
        if !name.starts_with(EVENT_FILE_PREFIX) {
            continue;
        }
        match keep {
            Some((kept, bytes)) if name == kept => {
                let file =
                    std::fs::OpenOptions::new().write(true).open(&path).map_err(|e| located(&path, e))?;
                if file.metadata().map_err(|e| located(&path, e))?.len() > bytes {
                    file.set_len(bytes).map_err(|e| located(&path, e))?;
                }
            }
            Some((kept, _)) if name.as_str() < kept => {}
            _ => std::fs::remove_file(&path).map_err(|e| located(&path, e))?,
        }
    }
    Ok(())
}

/// An I/O error that names its file.
fn located(path: &Path, error: io::Error) -> io::Error {
    io::Error::new(error.kind(), format!("{}: {error}", path.display()))
}

/// Lets `pe_analyze::log_to_tensorboard` write spectra and per-layer metrics to a run's events.
impl pe_analyze::SummarySink for EventWriter {
    fn scalar(&mut self, tag: &str, value: f64, step: u64) -> io::Result<()> {
        EventWriter::scalar(self, tag, value, step)
    }

    fn histogram(&mut self, tag: &str, values: &[f64], step: u64) -> io::Result<()> {
        EventWriter::histogram(self, tag, values, step)
    }
}

pub const HISTOGRAM_BUCKETS: usize = 30;
const DT_FLOAT: u64 = 1;
const DT_STRING: u64 = 7;
const SESSION_LOG_START: u64 = 1;
const HPARAMS_EXPERIMENT: &str = "_hparams_/experiment";
const HPARAMS_SESSION_START: &str = "_hparams_/session_start_info";
const HPARAMS_SESSION_END: &str = "_hparams_/session_end_info";

/// One hyperparameter value as the HParams dashboard knows them.
#[derive(Debug, Clone, PartialEq)]
pub enum HParam {
    Number(f64),
    Text(String),
    Bool(bool),
}

impl HParam {
    /// Every scalar leaf of `value` under its dotted path (`optimizer.lr`); arrays become text,
    /// nulls are left out. Serialise a config with serde_json and pass it here.
    pub fn flatten(value: &serde_json::Value) -> BTreeMap<String, HParam> {
        fn walk(prefix: &str, value: &serde_json::Value, out: &mut BTreeMap<String, HParam>) {
            use serde_json::Value;
            let leaf = match value {
                Value::Object(map) => {
                    for (key, child) in map {
                        let path = if prefix.is_empty() { key.clone() } else { format!("{prefix}.{key}") };
                        walk(&path, child, out);
                    }
                    return;
                }
                Value::Null => return,
                Value::Bool(b) => HParam::Bool(*b),
                Value::Number(n) => HParam::Number(n.as_f64().unwrap_or(f64::NAN)),
                Value::String(text) => HParam::Text(text.clone()),
                Value::Array(_) => HParam::Text(value.to_string()),
            };
            out.insert(prefix.to_owned(), leaf);
        }
        let mut out = BTreeMap::new();
        walk("", value, &mut out);
        out
    }

    /// The `DataType` of `HParamInfo` (STRING 1, BOOL 2, FLOAT64 3).
    fn data_type(&self) -> u64 {
        match self {
            HParam::Text(_) => 1,
            HParam::Bool(_) => 2,
            HParam::Number(_) => 3,
        }
    }

    /// A `google.protobuf.Value`.
    fn to_proto(&self) -> Proto {
        let mut value = Proto::default();
        match self {
            HParam::Number(n) => value.double(2, *n),
            HParam::Text(text) => value.bytes(3, text.as_bytes()),
            HParam::Bool(b) => value.varint(4, u64::from(*b)),
        }
        value
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

    fn packed_doubles(&mut self, field: u32, values: &[f64]) {
        let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.bytes(field, &bytes);
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
