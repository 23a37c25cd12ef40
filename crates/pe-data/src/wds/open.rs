//! Opening one shard as a byte stream, once: a local file, an object through `object_store` (S3, GCS,
//! Azure, HTTP(S), streamed, never downloaded whole), or a `pipe:` command's standard output.
//!
//! Object stores are async; the loader's reader threads are not. One small tokio runtime serves
//! every stream, and a reader thread blocks on it per chunk. Stores are built once per bucket/host
//! from the environment (`AWS_*`, `GOOGLE_*`, `AZURE_*`), as the AWS CLI and the clouds' SDKs read
//! them; their own request retries are off, since [`super::retry`] retries whole streams.

use super::urls::ShardUrl;
use bytes::Bytes;
use futures::stream::BoxStream;
use futures::StreamExt;
use object_store::{ClientOptions, ObjectStore, ObjectStoreScheme, RetryConfig};
use std::collections::HashMap;
use std::io::{self, Read};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};

/// A shard's bytes, read front to back.
pub type ShardStream = Box<dyn Read + Send>;

/// Open `url` and skip its first `skip` bytes (a retry resumes where the last attempt stopped).
pub fn open(url: &ShardUrl, skip: u64) -> io::Result<ShardStream> {
    let mut stream: ShardStream = match url {
        ShardUrl::Local(path) => {
            let mut file = std::fs::File::open(path)?;
            if skip > 0 {
                io::Seek::seek(&mut file, io::SeekFrom::Start(skip))?;
            }
            return Ok(Box::new(io::BufReader::with_capacity(1 << 20, file)));
        }
        ShardUrl::Remote(url) => Box::new(ObjectReader::open(url)?),
        ShardUrl::Pipe(command) => Box::new(PipeReader::spawn(command)?),
    };
    // Streams cannot seek; servers and commands are not asked for ranges they may not support.
    let skipped = io::copy(&mut (&mut stream).take(skip), &mut io::sink())?;
    if skipped < skip {
        return Err(io::Error::new(io::ErrorKind::UnexpectedEof, format!("{url} is shorter than before")));
    }
    Ok(stream)
}

/// Read all of a small file (a dataset's `_info.json`); `Ok(None)` when it does not exist.
pub fn read_small(url: &ShardUrl) -> io::Result<Option<Vec<u8>>> {
    let mut bytes = Vec::new();
    match open(url, 0).and_then(|mut r| r.read_to_end(&mut bytes)) {
        Ok(_) => Ok(Some(bytes)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

fn runtime() -> io::Result<&'static tokio::runtime::Runtime> {
    static RUNTIME: OnceLock<std::result::Result<tokio::runtime::Runtime, String>> = OnceLock::new();
    RUNTIME
        .get_or_init(|| {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .thread_name("pe-wds-io")
                .enable_all()
                .build()
                .map_err(|e| e.to_string())
        })
        .as_ref()
        .map_err(|e| io::Error::other(format!("cannot start the I/O runtime: {e}")))
}

fn store_error(e: object_store::Error) -> io::Error {
    match e {
        object_store::Error::NotFound { .. } => io::Error::new(io::ErrorKind::NotFound, e.to_string()),
        e => io::Error::other(e.to_string()),
    }
}

/// The store of `url`'s bucket or host, built on first use.
fn store_for(url: &url::Url) -> io::Result<(Arc<dyn ObjectStore>, object_store::path::Path)> {
    static STORES: OnceLock<Mutex<HashMap<String, Arc<dyn ObjectStore>>>> = OnceLock::new();
    let (scheme, path) = ObjectStoreScheme::parse(url).map_err(|e| io::Error::other(e.to_string()))?;
    let path = object_store::path::Path::parse(path).map_err(|e| io::Error::other(e.to_string()))?;
    let origin = url[..url::Position::BeforePath].to_string();
    let mut stores = STORES.get_or_init(Default::default).lock().unwrap_or_else(|p| p.into_inner());
    if let Some(store) = stores.get(&origin) {
        return Ok((Arc::clone(store), path));
    }
    let no_retries = RetryConfig { max_retries: 0, ..Default::default() };
    // The cloud builders share these calls but no trait.
    macro_rules! from_env {
        ($builder:ty) => {
            Arc::new(
                <$builder>::from_env()
                    .with_url(url.as_str())
                    .with_retry(no_retries)
                    .build()
                    .map_err(store_error)?,
            )
        };
    }
    let store: Arc<dyn ObjectStore> = match scheme {
        ObjectStoreScheme::AmazonS3 => from_env!(object_store::aws::AmazonS3Builder),
        ObjectStoreScheme::GoogleCloudStorage => from_env!(object_store::gcp::GoogleCloudStorageBuilder),
        ObjectStoreScheme::MicrosoftAzure => from_env!(object_store::azure::MicrosoftAzureBuilder),
        ObjectStoreScheme::Http => Arc::new(
            object_store::http::HttpBuilder::new()
                .with_url(origin.as_str())
                .with_client_options(ClientOptions::new().with_allow_http(true))
                .with_retry(no_retries)
                .build()
                .map_err(store_error)?,
        ),
        other => return Err(io::Error::other(format!("{url}: {other:?} is not a remote store"))),
    };
    stores.insert(origin, Arc::clone(&store));
    Ok((store, path))
}

/// An object's body as a blocking reader.
struct ObjectReader {
    body: BoxStream<'static, object_store::Result<Bytes>>,
    chunk: Bytes,
}

impl ObjectReader {
    fn open(url: &url::Url) -> io::Result<Self> {
        let (store, path) = store_for(url)?;
        let got = runtime()?.block_on(store.get_opts(&path, Default::default())).map_err(store_error)?;
        Ok(ObjectReader { body: got.into_stream(), chunk: Bytes::new() })
    }
}

impl Read for ObjectReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.chunk.is_empty() {
            match runtime()?.block_on(self.body.next()) {
                None => return Ok(0),
                Some(chunk) => self.chunk = chunk.map_err(store_error)?,
            }
        }
        let n = buf.len().min(self.chunk.len());
        buf[..n].copy_from_slice(&self.chunk.split_to(n));
        Ok(n)
    }
}

/// A `pipe:` command's standard output; a failed command is a read error at its end.
struct PipeReader {
    command: String,
    child: Child,
    stdout: ChildStdout,
}

impl PipeReader {
    fn spawn(command: &str) -> io::Result<Self> {
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(command)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| io::Error::other(format!("cannot start `sh -c {command}`: {e}")))?;
        let stdout = child.stdout.take().ok_or_else(|| io::Error::other("no stdout"))?;
        Ok(PipeReader { command: command.to_string(), child, stdout })
    }
}

impl Read for PipeReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.stdout.read(buf)?;
        if n == 0 && !buf.is_empty() {
            let status = self.child.wait()?;
            if !status.success() {
                return Err(io::Error::other(format!("`{}` exited with {status}", self.command)));
            }
        }
        Ok(n)
    }
}

impl Drop for PipeReader {
    fn drop(&mut self) {
        // A shard stopped early (its last needed sample read) must not leave the command running.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
