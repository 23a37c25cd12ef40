//! A shard stream that survives the network: a failed open or read re-opens the shard and skips what
//! was already read, after a backoff (0.5 s, doubling, at most 8 s); after `retries` failures in a
//! row it gives up with the URL named and marks the failure fatal, so the run stops rather than
//! train without the shard. Remote shards also read ahead on a thread of their own, a bounded
//! number of chunks, so the network and the tar walk overlap.

use super::open::{open, ShardStream};
use super::urls::ShardUrl;
use std::io::{self, Read};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Why a stream gave up, once it has (shared with the tar walk, which only sees an I/O error).
pub type GaveUp = Arc<Mutex<Option<String>>>;

const FIRST_BACKOFF: Duration = Duration::from_millis(500);
const MAX_BACKOFF: Duration = Duration::from_secs(8);
/// Read-ahead chunk and how many of them a stream holds.
const CHUNK: usize = 1 << 20;
const CHUNKS_AHEAD: usize = 8;

/// Open `url` for a front-to-back read, retrying as described above; remote and `pipe:` shards
/// start reading ahead at once (so opening the next shard early overlaps its connection set-up).
pub fn open_retrying(url: &ShardUrl, retries: u32) -> (ShardStream, GaveUp) {
    let gave_up: GaveUp = Arc::default();
    let reader =
        Retrying { url: url.clone(), retries, inner: None, offset: 0, gave_up: Arc::clone(&gave_up) };
    let stream: ShardStream = match url {
        ShardUrl::Local(_) => Box::new(reader),
        _ => Box::new(ReadAhead::start(reader)),
    };
    (stream, gave_up)
}

struct Retrying {
    url: ShardUrl,
    retries: u32,
    inner: Option<ShardStream>,
    /// Bytes delivered so far.
    offset: u64,
    gave_up: GaveUp,
}

impl Retrying {
    fn give_up(&self, failures: u32, e: &io::Error) -> io::Error {
        let reason = match e.kind() {
            io::ErrorKind::NotFound => format!("{}: not found ({e})", self.url),
            _ if failures > 1 => format!("{}: {e} (gave up after {failures} attempts)", self.url),
            _ => format!("{}: {e}", self.url),
        };
        *self.gave_up.lock().unwrap_or_else(|p| p.into_inner()) = Some(reason.clone());
        io::Error::other(reason)
    }
}

impl Retrying {
    /// A failed attempt: `Err` when it was the last one allowed, otherwise wait out the backoff.
    fn failed(&mut self, failures: &mut u32, backoff: &mut Duration, e: io::Error) -> io::Result<()> {
        self.inner = None;
        *failures += 1;
        if e.kind() == io::ErrorKind::NotFound || *failures > self.retries {
            return Err(self.give_up(*failures, &e));
        }
        tracing::warn!(
            "{} at byte {}: {e}; retrying in {:.1} s ({failures}/{})",
            self.url,
            self.offset,
            backoff.as_secs_f64(),
            self.retries
        );
        std::thread::sleep(*backoff);
        *backoff = (*backoff * 2).min(MAX_BACKOFF);
        Ok(())
    }
}

impl Read for Retrying {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let (mut failures, mut backoff) = (0u32, FIRST_BACKOFF);
        loop {
            if self.inner.is_none() {
                match open(&self.url, self.offset) {
                    Ok(stream) => self.inner = Some(stream),
                    Err(e) => {
                        self.failed(&mut failures, &mut backoff, e)?;
                        continue;
                    }
                }
            }
            let Some(inner) = self.inner.as_mut() else { continue };
            match inner.read(buf) {
                Ok(n) => {
                    self.offset += n as u64;
                    return Ok(n);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => self.failed(&mut failures, &mut backoff, e)?,
            }
        }
    }
}

/// A reader thread that fills a bounded queue of chunks; dropping the reader stops it.
struct ReadAhead {
    rx: mpsc::Receiver<io::Result<Vec<u8>>>,
    chunk: Vec<u8>,
    at: usize,
    done: bool,
}

impl ReadAhead {
    fn start(mut source: Retrying) -> Self {
        let (tx, rx) = mpsc::sync_channel(CHUNKS_AHEAD);
        let spawned = std::thread::Builder::new().name("pe-wds-read".into()).spawn(move || loop {
            let mut chunk = vec![0; CHUNK];
            let filled = fill(&mut source, &mut chunk);
            let end = !matches!(filled, Ok(n) if n > 0);
            let sent = tx.send(filled.map(|n| {
                chunk.truncate(n);
                chunk
            }));
            if end || sent.is_err() {
                return;
            }
        });
        let (tx, failed) = mpsc::sync_channel(1);
        if let Err(e) = spawned {
            let _ = tx.send(Err(io::Error::other(format!("cannot start a read-ahead thread: {e}"))));
            return ReadAhead { rx: failed, chunk: Vec::new(), at: 0, done: false };
        }
        ReadAhead { rx, chunk: Vec::new(), at: 0, done: false }
    }
}

/// Read until `buf` is full or the stream ends.
fn fill(source: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match source.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

impl Read for ReadAhead {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.at == self.chunk.len() {
            if self.done {
                return Ok(0);
            }
            match self.rx.recv() {
                Ok(Ok(chunk)) if chunk.is_empty() => self.done = true,
                Ok(Ok(chunk)) => (self.chunk, self.at) = (chunk, 0),
                Ok(Err(e)) => {
                    self.done = true;
                    return Err(e);
                }
                Err(_) => return Err(io::Error::other("the read-ahead thread stopped")),
            }
        }
        let n = buf.len().min(self.chunk.len() - self.at);
        buf[..n].copy_from_slice(&self.chunk[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}
