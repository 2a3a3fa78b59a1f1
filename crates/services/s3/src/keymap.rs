//! How S3 object keys become files: every key, whatever its length or
//! characters, is stored under a fixed-size name, and the key itself is
//! kept beside it.
//!
//! s3s-fs maps `<bucket>/<key>` straight onto a path, so a key longer than a
//! file name (~170 bytes, once s3s-fs base64-encodes it into its metadata
//! file name), `a/b` when `a` is an object (a file cannot be a directory)
//! and the reverse all failed with 500. [`MappedFs`] sits between s3s and
//! s3s-fs and hands s3s-fs a *storage key* instead of the client's key:
//!
//! - object data: `<root>/<bucket>/.esb-objects/<sha256(key) hex>` (s3s-fs
//!   keeps its metadata sidecars for that storage key, as before);
//! - the key: `<root>/<bucket>/.esb-keys/<sha256(key) hex>` holds the key's
//!   bytes, written (temporary file, fsync, rename) before the object so a
//!   stored object always has its key;
//! - an in-memory index (bucket -> sorted set of keys), loaded at start from
//!   `.esb-keys`, answers ListObjects/ListObjectsV2 in key byte order with
//!   prefix, delimiter, start-after, marker and continuation tokens (the
//!   last key or common prefix returned, base64url-encoded).
//!
//! Any key s3s accepts maps to one 64-character name, so no key can name a
//! path outside its bucket (the access check still refuses `.`/`..`
//! segments and NUL with 400, as the robustness contract asks).
//!
//! Writes: s3s-fs writes an object to a temporary file and renames it into
//! place, so a failed or interrupted PUT never leaves a partial object;
//! this layer then fsyncs the object before answering. A full disk
//! (`ENOSPC`/`EDQUOT`) answers `507 InsufficientStorage` and removes a key
//! file it had just written.
//!
//! Old layout: data directories written by earlier versions (objects as
//! plain paths) are migrated at start ([`migrate_bucket`]): each object file
//! moves under `.esb-objects`, its sidecar metadata is renamed, its key is
//! recorded. Empty directory markers (`dir/` objects) of the old layout are
//! dropped.

use std::collections::{BTreeSet, HashMap};
use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::RwLock;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use s3s::dto::{
    AbortMultipartUploadInput, AbortMultipartUploadOutput, CommonPrefix,
    CompleteMultipartUploadInput, CompleteMultipartUploadOutput, CopyObjectInput, CopyObjectOutput,
    CopySource, CreateBucketInput, CreateBucketOutput, CreateMultipartUploadInput,
    CreateMultipartUploadOutput, DeleteBucketInput, DeleteBucketOutput, DeleteObjectInput,
    DeleteObjectOutput, DeleteObjectsInput, DeleteObjectsOutput, GetBucketLocationInput,
    GetBucketLocationOutput, GetObjectInput, GetObjectOutput, HeadBucketInput, HeadBucketOutput,
    HeadObjectInput, HeadObjectOutput, ListBucketsInput, ListBucketsOutput, ListObjectsInput,
    ListObjectsOutput, ListObjectsV2Input, ListObjectsV2Output, ListPartsInput, ListPartsOutput,
    Object, PutObjectInput, PutObjectOutput, Timestamp, UploadPartCopyInput, UploadPartCopyOutput,
    UploadPartInput, UploadPartOutput,
};
use s3s::{S3, S3Error, S3ErrorCode, S3Request, S3Response, S3Result, s3_error};
use sha2::{Digest as _, Sha256};

/// Directory (inside a bucket) holding object data by hashed name.
pub const OBJECTS_DIR: &str = ".esb-objects";
/// Directory (inside a bucket) holding each object's key by hashed name.
pub const KEYS_DIR: &str = ".esb-keys";

/// The fixed-size file name of `key`: SHA-256 of its bytes, hex.
pub fn storage_name(key: &str) -> String {
    hex::encode(Sha256::digest(key.as_bytes()))
}

/// The key s3s-fs is given for `key`.
pub fn storage_key(key: &str) -> String {
    format!("{OBJECTS_DIR}/{}", storage_name(key))
}

/// One page of a listing.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Page {
    /// Keys, in byte order.
    pub keys: Vec<String>,
    /// Common prefixes, in byte order.
    pub prefixes: Vec<String>,
    /// More entries follow.
    pub truncated: bool,
    /// The last key or prefix returned (where the next page starts).
    pub last: Option<String>,
}

/// Lists `keys` (sorted) S3-style: entries after `after` that start with
/// `prefix`, keys holding `delimiter` after the prefix rolled up into one
/// common prefix, at most `max` entries.
pub fn list_page(
    keys: &BTreeSet<String>,
    prefix: &str,
    delimiter: Option<&str>,
    after: Option<&str>,
    max: usize,
) -> Page {
    let mut page = Page::default();
    let start = match after {
        Some(a) if a >= prefix => Bound::Excluded(a.to_string()),
        _ => Bound::Included(prefix.to_string()),
    };
    let mut count = 0usize;
    for key in keys.range((start, Bound::Unbounded)) {
        if !key.starts_with(prefix) {
            break;
        }
        let entry = match delimiter.filter(|d| !d.is_empty()) {
            Some(d) => match key[prefix.len()..].find(d) {
                Some(pos) => {
                    let cp = &key[..prefix.len() + pos + d.len()];
                    if page.prefixes.last().is_some_and(|l| l == cp)
                        || after.is_some_and(|a| cp <= a)
                    {
                        continue;
                    }
                    Err(cp.to_string())
                }
                None => Ok(key.clone()),
            },
            None => Ok(key.clone()),
        };
        if count == max {
            page.truncated = max > 0;
            break;
        }
        count += 1;
        match entry {
            Ok(k) => {
                page.last = Some(k.clone());
                page.keys.push(k);
            }
            Err(cp) => {
                page.last = Some(cp.clone());
                page.prefixes.push(cp);
            }
        }
    }
    page
}

fn is_disk_full(e: &S3Error) -> bool {
    let mut cur = e.source().map(|s| s as &(dyn std::error::Error + 'static));
    while let Some(err) = cur {
        if let Some(io) = err.downcast_ref::<std::io::Error>()
            && io_is_disk_full(io)
        {
            return true;
        }
        cur = err.source();
    }
    false
}

fn io_is_disk_full(io: &std::io::Error) -> bool {
    matches!(
        io.kind(),
        std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded
    )
}

/// S3's answer to a full disk: 507 `InsufficientStorage`.
fn insufficient_storage() -> S3Error {
    let code =
        S3ErrorCode::from_bytes(b"InsufficientStorage").unwrap_or(S3ErrorCode::InternalError);
    let mut e = S3Error::with_message(
        code,
        "There is not enough storage space to store the object.",
    );
    e.set_status_code(http::StatusCode::INSUFFICIENT_STORAGE);
    e
}

fn map_storage_error(e: S3Error) -> S3Error {
    if is_disk_full(&e) {
        tracing::warn!("s3: disk full while writing an object");
        insufficient_storage()
    } else {
        e
    }
}

fn io_error(e: std::io::Error) -> S3Error {
    if io_is_disk_full(&e) {
        tracing::warn!("s3: disk full while writing an object key");
        insufficient_storage()
    } else {
        S3Error::internal_error(e)
    }
}

/// Writes `bytes` to `path` durably: temporary file, fsync, rename, fsync
/// of the directory.
fn write_durable(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write as _;
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let tmp = dir.join(format!(
        ".tmp-{}-{}",
        std::process::id(),
        uuid::Uuid::new_v4().simple()
    ));
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        std::fs::File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> std::io::Result<T> + Send + 'static,
) -> S3Result<T> {
    match tokio::task::spawn_blocking(f).await {
        Ok(r) => r.map_err(io_error),
        Err(e) => Err(S3Error::internal_error(e)),
    }
}

/// Moves a bucket written by the old layout (keys as paths) to the hashed
/// layout. Returns the keys found. `root` is the s3s-fs root.
pub fn migrate_bucket(root: &Path, bucket: &str) -> std::io::Result<Vec<String>> {
    let bucket_dir = root.join(bucket);
    let mut files = Vec::new();
    let mut dirs = vec![bucket_dir.clone()];
    let mut seen_dirs = Vec::new();
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir)? {
            let entry = entry?;
            let path = entry.path();
            let ft = entry.file_type()?;
            if dir == bucket_dir {
                let name = entry.file_name();
                if name == OBJECTS_DIR || name == KEYS_DIR {
                    continue;
                }
            }
            if ft.is_dir() {
                seen_dirs.push(path.clone());
                dirs.push(path);
            } else if ft.is_file() {
                files.push(path);
            }
        }
    }
    let b64 = |s: &str| URL_SAFE_NO_PAD.encode(s);
    let mut keys = Vec::new();
    for path in files {
        let Some(key) = path
            .strip_prefix(&bucket_dir)
            .ok()
            .and_then(Path::to_str)
            .map(str::to_string)
        else {
            tracing::warn!("s3: not migrating {} (name is not UTF-8)", path.display());
            continue;
        };
        let name = storage_name(&key);
        write_durable(&bucket_dir.join(KEYS_DIR).join(&name), key.as_bytes())?;
        std::fs::create_dir_all(bucket_dir.join(OBJECTS_DIR))?;
        std::fs::rename(&path, bucket_dir.join(OBJECTS_DIR).join(&name))?;
        for suffix in ["metadata.json", "internal.json"] {
            let old = root.join(format!(
                ".bucket-{}.object-{}.{suffix}",
                b64(bucket),
                b64(&key)
            ));
            if old.exists() {
                let new = root.join(format!(
                    ".bucket-{}.object-{}.{suffix}",
                    b64(bucket),
                    b64(&storage_key(&key))
                ));
                std::fs::rename(old, new)?;
            }
        }
        keys.push(key);
    }
    // Deepest first, so parents are empty by the time they are tried.
    seen_dirs.sort_by_key(|d| std::cmp::Reverse(d.components().count()));
    for d in seen_dirs {
        let _ = std::fs::remove_dir(d);
    }
    if !keys.is_empty() {
        tracing::info!(
            "s3: migrated {} object(s) of bucket {bucket} to the hashed key layout",
            keys.len()
        );
    }
    Ok(keys)
}

/// Reads a bucket's keys from `.esb-keys`, dropping key files whose object
/// is gone (a crash between writing the key and the object).
fn load_bucket(root: &Path, bucket: &str) -> std::io::Result<BTreeSet<String>> {
    let dir = root.join(bucket).join(KEYS_DIR);
    let mut keys = BTreeSet::new();
    let entries = match std::fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(keys),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if name.starts_with(".tmp-") {
            let _ = std::fs::remove_file(entry.path());
            continue;
        }
        let key = match std::fs::read(entry.path()).map(String::from_utf8) {
            Ok(Ok(k)) if storage_name(&k) == name => k,
            _ => {
                tracing::warn!("s3: ignoring damaged key file {}", entry.path().display());
                continue;
            }
        };
        if root.join(bucket).join(OBJECTS_DIR).join(name).is_file() {
            keys.insert(key);
        } else {
            let _ = std::fs::remove_file(entry.path());
        }
    }
    Ok(keys)
}

/// s3s-fs behind the key mapping (see the module doc).
#[derive(Debug)]
pub struct MappedFs {
    inner: s3s_fs::FileSystem,
    root: PathBuf,
    index: RwLock<HashMap<String, BTreeSet<String>>>,
    /// Told about each key a DeleteObjects removed (the HTTP-level hook in
    /// `server.rs` cannot see them: they are in the request body).
    hook: crate::HookSlot,
}

impl MappedFs {
    /// Wraps s3s-fs at `root` (canonical), migrating old-layout buckets and
    /// loading the key index.
    pub fn new(root: &Path) -> Result<Self, String> {
        let mut index = HashMap::new();
        for entry in std::fs::read_dir(root).map_err(|e| e.to_string())? {
            let entry = entry.map_err(|e| e.to_string())?;
            let Some(name) = entry.file_name().to_str().map(str::to_string) else {
                continue;
            };
            if name.starts_with('.') || !entry.file_type().map_err(|e| e.to_string())?.is_dir() {
                continue;
            }
            migrate_bucket(root, &name).map_err(|e| format!("migrating bucket {name}: {e}"))?;
            let keys = load_bucket(root, &name).map_err(|e| format!("bucket {name}: {e}"))?;
            index.insert(name, keys);
        }
        let inner = s3s_fs::FileSystem::new(root).map_err(|e| format!("{e:?}"))?;
        Ok(Self {
            inner,
            root: root.to_path_buf(),
            index: RwLock::new(index),
            hook: crate::HookSlot::default(),
        })
    }

    /// Reports every key a DeleteObjects removes to `hook` (one
    /// `WriteKind::Delete` each, before the response goes out).
    pub fn with_hook(mut self, hook: crate::HookSlot) -> Self {
        self.hook = hook;
        self
    }

    fn key_path(&self, bucket: &str, key: &str) -> PathBuf {
        self.root
            .join(bucket)
            .join(KEYS_DIR)
            .join(storage_name(key))
    }

    fn object_path(&self, bucket: &str, key: &str) -> PathBuf {
        self.root
            .join(bucket)
            .join(OBJECTS_DIR)
            .join(storage_name(key))
    }

    /// Records `key` on disk before its object is written. Returns whether
    /// the key file is new (to remove it if the write fails).
    async fn remember(&self, bucket: &str, key: &str) -> S3Result<bool> {
        if !self.root.join(bucket).is_dir() {
            return Err(s3_error!(NoSuchBucket));
        }
        let path = self.key_path(bucket, key);
        let key = key.to_string();
        blocking(move || {
            if path.is_file() {
                return Ok(false);
            }
            write_durable(&path, key.as_bytes()).map(|()| true)
        })
        .await
    }

    /// After a successful write: fsync the object, add the key to the index.
    async fn stored(&self, bucket: &str, key: &str) -> S3Result<()> {
        let object = self.object_path(bucket, key);
        blocking(move || {
            std::fs::File::open(&object)?.sync_all()?;
            if let Some(dir) = object.parent() {
                std::fs::File::open(dir)?.sync_all()?;
            }
            Ok(())
        })
        .await?;
        self.index
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .entry(bucket.to_string())
            .or_default()
            .insert(key.to_string());
        Ok(())
    }

    /// After a failed write: drop a key file written for it.
    async fn forget_new(&self, bucket: &str, key: &str, created: bool) {
        if created {
            let path = self.key_path(bucket, key);
            let _ = tokio::task::spawn_blocking(move || std::fs::remove_file(path)).await;
        }
    }

    /// After a delete: drop the key everywhere.
    async fn forget(&self, bucket: &str, key: &str) {
        if let Some(set) = self
            .index
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .get_mut(bucket)
        {
            set.remove(key);
        }
        let path = self.key_path(bucket, key);
        let _ = tokio::task::spawn_blocking(move || std::fs::remove_file(path)).await;
    }

    fn page(
        &self,
        bucket: &str,
        prefix: &str,
        delimiter: Option<&str>,
        after: Option<&str>,
        max: usize,
    ) -> S3Result<Page> {
        let index = self.index.read().unwrap_or_else(|e| e.into_inner());
        match index.get(bucket) {
            Some(keys) => Ok(list_page(keys, prefix, delimiter, after, max)),
            None if self.root.join(bucket).is_dir() => Ok(Page::default()),
            None => Err(s3_error!(NoSuchBucket)),
        }
    }

    async fn objects(&self, bucket: &str, keys: Vec<String>, url: bool) -> Vec<Object> {
        let paths: Vec<(String, PathBuf)> = keys
            .into_iter()
            .map(|k| {
                let p = self.object_path(bucket, &k);
                (k, p)
            })
            .collect();
        let stats = tokio::task::spawn_blocking(move || {
            paths
                .into_iter()
                .filter_map(|(k, p)| std::fs::metadata(&p).ok().map(|m| (k, m)))
                .collect::<Vec<_>>()
        })
        .await
        .unwrap_or_default();
        stats
            .into_iter()
            .map(|(k, m)| Object {
                key: Some(encode(&k, url)),
                size: i64::try_from(m.len()).ok(),
                last_modified: m.modified().ok().map(Timestamp::from),
                ..Default::default()
            })
            .collect()
    }
}

/// `encoding-type=url`: percent-encode everything but unreserved characters
/// and `/` (botocore decodes with `unquote_plus`, so `+` and space must be
/// encoded).
fn encode(s: &str, url: bool) -> String {
    use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
    const SET: &AsciiSet = &NON_ALPHANUMERIC
        .remove(b'-')
        .remove(b'_')
        .remove(b'.')
        .remove(b'~')
        .remove(b'/');
    if url {
        utf8_percent_encode(s, SET).to_string()
    } else {
        s.to_string()
    }
}

fn token_encode(s: &str) -> String {
    URL_SAFE_NO_PAD.encode(s)
}

fn token_decode(t: &str) -> S3Result<String> {
    URL_SAFE_NO_PAD
        .decode(t)
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
        .ok_or_else(|| {
            s3_error!(
                InvalidArgument,
                "The continuation token provided is incorrect"
            )
        })
}

fn max_keys(v: Option<i32>) -> usize {
    usize::try_from(v.unwrap_or(1000).clamp(0, 1000)).unwrap_or(1000)
}

fn map_copy_source(source: &mut CopySource) {
    if let CopySource::Bucket { key, .. } = source {
        *key = storage_key(key).into_boxed_str();
    }
}

#[async_trait::async_trait]
impl S3 for MappedFs {
    async fn create_bucket(
        &self,
        req: S3Request<CreateBucketInput>,
    ) -> S3Result<S3Response<CreateBucketOutput>> {
        let bucket = req.input.bucket.clone();
        let out = self.inner.create_bucket(req).await?;
        self.index
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .entry(bucket)
            .or_default();
        Ok(out)
    }

    async fn delete_bucket(
        &self,
        req: S3Request<DeleteBucketInput>,
    ) -> S3Result<S3Response<DeleteBucketOutput>> {
        let bucket = req.input.bucket.clone();
        let nonempty = self
            .index
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&bucket)
            .is_some_and(|s| !s.is_empty());
        if nonempty {
            return Err(s3_error!(BucketNotEmpty));
        }
        let out = self.inner.delete_bucket(req).await?;
        self.index
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&bucket);
        Ok(out)
    }

    async fn head_bucket(
        &self,
        req: S3Request<HeadBucketInput>,
    ) -> S3Result<S3Response<HeadBucketOutput>> {
        self.inner.head_bucket(req).await
    }

    async fn list_buckets(
        &self,
        req: S3Request<ListBucketsInput>,
    ) -> S3Result<S3Response<ListBucketsOutput>> {
        self.inner.list_buckets(req).await
    }

    async fn get_bucket_location(
        &self,
        req: S3Request<GetBucketLocationInput>,
    ) -> S3Result<S3Response<GetBucketLocationOutput>> {
        self.inner.get_bucket_location(req).await
    }

    async fn put_object(
        &self,
        mut req: S3Request<PutObjectInput>,
    ) -> S3Result<S3Response<PutObjectOutput>> {
        let (bucket, key) = (req.input.bucket.clone(), req.input.key.clone());
        let created = self.remember(&bucket, &key).await?;
        req.input.key = storage_key(&key);
        match self.inner.put_object(req).await {
            Ok(out) => {
                self.stored(&bucket, &key).await?;
                Ok(out)
            }
            Err(e) => {
                self.forget_new(&bucket, &key, created).await;
                Err(map_storage_error(e))
            }
        }
    }

    async fn get_object(
        &self,
        mut req: S3Request<GetObjectInput>,
    ) -> S3Result<S3Response<GetObjectOutput>> {
        req.input.key = storage_key(&req.input.key);
        self.inner.get_object(req).await
    }

    async fn head_object(
        &self,
        mut req: S3Request<HeadObjectInput>,
    ) -> S3Result<S3Response<HeadObjectOutput>> {
        req.input.key = storage_key(&req.input.key);
        self.inner.head_object(req).await
    }

    async fn delete_object(
        &self,
        mut req: S3Request<DeleteObjectInput>,
    ) -> S3Result<S3Response<DeleteObjectOutput>> {
        let (bucket, key) = (req.input.bucket.clone(), req.input.key.clone());
        req.input.key = storage_key(&key);
        let out = self.inner.delete_object(req).await?;
        self.forget(&bucket, &key).await;
        Ok(out)
    }

    async fn delete_objects(
        &self,
        mut req: S3Request<DeleteObjectsInput>,
    ) -> S3Result<S3Response<DeleteObjectsOutput>> {
        let bucket = req.input.bucket.clone();
        let mut names = HashMap::new();
        for object in &mut req.input.delete.objects {
            let stored = storage_key(&object.key);
            names.insert(stored.clone(), object.key.clone());
            object.key = stored;
        }
        let hook = self.hook.0.clone().filter(|h| h.watches(&bucket));
        let trace = req
            .headers
            .get("x-amzn-trace-id")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let mut out = self.inner.delete_objects(req).await?;
        // One id for the request, as S3 gives its notifications.
        let request_id = uuid::Uuid::new_v4().simple().to_string().to_uppercase()[..16].to_string();
        for deleted in out.output.deleted.iter_mut().flatten() {
            if let Some(k) = deleted.key.as_mut()
                && let Some(original) = names.get(k.as_str())
            {
                self.forget(&bucket, original).await;
                *k = original.clone();
                if let Some(hook) = &hook {
                    hook.written(crate::ObjectWrite {
                        bucket: bucket.clone(),
                        key: original.clone(),
                        kind: crate::WriteKind::Delete,
                        size: None,
                        etag: None,
                        trace: trace.clone(),
                        request_id: request_id.clone(),
                    })
                    .await;
                }
            }
        }
        for error in out.output.errors.iter_mut().flatten() {
            if let Some(k) = error.key.as_mut()
                && let Some(original) = names.get(k.as_str())
            {
                *k = original.clone();
            }
        }
        Ok(out)
    }

    async fn copy_object(
        &self,
        mut req: S3Request<CopyObjectInput>,
    ) -> S3Result<S3Response<CopyObjectOutput>> {
        let (bucket, key) = (req.input.bucket.clone(), req.input.key.clone());
        let created = self.remember(&bucket, &key).await?;
        req.input.key = storage_key(&key);
        map_copy_source(&mut req.input.copy_source);
        match self.inner.copy_object(req).await {
            Ok(out) => {
                self.stored(&bucket, &key).await?;
                Ok(out)
            }
            Err(e) => {
                self.forget_new(&bucket, &key, created).await;
                Err(map_storage_error(e))
            }
        }
    }

    async fn list_objects_v2(
        &self,
        req: S3Request<ListObjectsV2Input>,
    ) -> S3Result<S3Response<ListObjectsV2Output>> {
        let input = req.input;
        let url = input
            .encoding_type
            .as_ref()
            .is_some_and(|e| e.as_str() == s3s::dto::EncodingType::URL);
        let token = input
            .continuation_token
            .as_deref()
            .map(token_decode)
            .transpose()?;
        let after = match (token.as_deref(), input.start_after.as_deref()) {
            (Some(t), Some(s)) => Some(if t >= s { t } else { s }),
            (t, s) => t.or(s),
        };
        let prefix = input.prefix.as_deref().unwrap_or("");
        let max = max_keys(input.max_keys);
        let page = self.page(
            &input.bucket,
            prefix,
            input.delimiter.as_deref(),
            after,
            max,
        )?;
        let count = page.keys.len() + page.prefixes.len();
        let contents = self.objects(&input.bucket, page.keys, url).await;
        let output = ListObjectsV2Output {
            key_count: i32::try_from(count).ok(),
            max_keys: i32::try_from(max).ok(),
            is_truncated: Some(page.truncated),
            contents: (!contents.is_empty()).then_some(contents),
            common_prefixes: (!page.prefixes.is_empty()).then(|| {
                page.prefixes
                    .iter()
                    .map(|p| CommonPrefix {
                        prefix: Some(encode(p, url)),
                    })
                    .collect()
            }),
            next_continuation_token: page
                .truncated
                .then(|| page.last.as_deref().map(token_encode))
                .flatten(),
            continuation_token: input.continuation_token,
            delimiter: input.delimiter.map(|d| encode(&d, url)),
            encoding_type: input.encoding_type,
            prefix: input.prefix.map(|p| encode(&p, url)),
            start_after: input.start_after.map(|s| encode(&s, url)),
            name: Some(input.bucket),
            ..Default::default()
        };
        Ok(S3Response::new(output))
    }

    async fn list_objects(
        &self,
        req: S3Request<ListObjectsInput>,
    ) -> S3Result<S3Response<ListObjectsOutput>> {
        let input = req.input;
        let url = input
            .encoding_type
            .as_ref()
            .is_some_and(|e| e.as_str() == s3s::dto::EncodingType::URL);
        let prefix = input.prefix.as_deref().unwrap_or("");
        let max = max_keys(input.max_keys);
        let page = self.page(
            &input.bucket,
            prefix,
            input.delimiter.as_deref(),
            input.marker.as_deref(),
            max,
        )?;
        let contents = self.objects(&input.bucket, page.keys, url).await;
        let output = ListObjectsOutput {
            max_keys: i32::try_from(max).ok(),
            is_truncated: Some(page.truncated),
            contents: (!contents.is_empty()).then_some(contents),
            common_prefixes: (!page.prefixes.is_empty()).then(|| {
                page.prefixes
                    .iter()
                    .map(|p| CommonPrefix {
                        prefix: Some(encode(p, url)),
                    })
                    .collect()
            }),
            next_marker: page
                .truncated
                .then(|| page.last.as_deref().map(|l| encode(l, url)))
                .flatten(),
            marker: input.marker.map(|m| encode(&m, url)),
            delimiter: input.delimiter.map(|d| encode(&d, url)),
            encoding_type: input.encoding_type,
            prefix: input.prefix.map(|p| encode(&p, url)),
            name: Some(input.bucket),
            ..Default::default()
        };
        Ok(S3Response::new(output))
    }

    async fn create_multipart_upload(
        &self,
        mut req: S3Request<CreateMultipartUploadInput>,
    ) -> S3Result<S3Response<CreateMultipartUploadOutput>> {
        let key = req.input.key.clone();
        req.input.key = storage_key(&key);
        let mut out = self
            .inner
            .create_multipart_upload(req)
            .await
            .map_err(map_storage_error)?;
        out.output.key = Some(key);
        Ok(out)
    }

    async fn upload_part(
        &self,
        mut req: S3Request<UploadPartInput>,
    ) -> S3Result<S3Response<UploadPartOutput>> {
        req.input.key = storage_key(&req.input.key);
        self.inner.upload_part(req).await.map_err(map_storage_error)
    }

    async fn upload_part_copy(
        &self,
        mut req: S3Request<UploadPartCopyInput>,
    ) -> S3Result<S3Response<UploadPartCopyOutput>> {
        req.input.key = storage_key(&req.input.key);
        map_copy_source(&mut req.input.copy_source);
        self.inner
            .upload_part_copy(req)
            .await
            .map_err(map_storage_error)
    }

    async fn list_parts(
        &self,
        mut req: S3Request<ListPartsInput>,
    ) -> S3Result<S3Response<ListPartsOutput>> {
        let key = req.input.key.clone();
        req.input.key = storage_key(&key);
        let mut out = self.inner.list_parts(req).await?;
        out.output.key = Some(key);
        Ok(out)
    }

    async fn complete_multipart_upload(
        &self,
        mut req: S3Request<CompleteMultipartUploadInput>,
    ) -> S3Result<S3Response<CompleteMultipartUploadOutput>> {
        let (bucket, key) = (req.input.bucket.clone(), req.input.key.clone());
        let created = self.remember(&bucket, &key).await?;
        req.input.key = storage_key(&key);
        match self.inner.complete_multipart_upload(req).await {
            Ok(mut out) => {
                self.stored(&bucket, &key).await?;
                // s3s sends this output through a keep-alive future.
                if let Some(fut) = out.output.future.take() {
                    let original = key.clone();
                    out.output.future = Some(Box::pin(async move {
                        let mut done = fut.await?;
                        done.key = Some(original);
                        Ok(done)
                    }));
                }
                out.output.key = Some(key);
                Ok(out)
            }
            Err(e) => {
                self.forget_new(&bucket, &key, created).await;
                Err(map_storage_error(e))
            }
        }
    }

    async fn abort_multipart_upload(
        &self,
        mut req: S3Request<AbortMultipartUploadInput>,
    ) -> S3Result<S3Response<AbortMultipartUploadOutput>> {
        req.input.key = storage_key(&req.input.key);
        self.inner.abort_multipart_upload(req).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(keys: &[&str]) -> BTreeSet<String> {
        keys.iter().map(|k| (*k).to_string()).collect()
    }

    #[test]
    fn storage_names_are_fixed_size_and_stay_in_one_directory() {
        for key in ["a", &"k".repeat(1024), "../../etc/passwd", "a/b/", "ü\u{1}"] {
            let s = storage_key(key);
            assert_eq!(s.len(), OBJECTS_DIR.len() + 1 + 64);
            assert_eq!(s.matches('/').count(), 1);
        }
        assert_ne!(storage_name("a"), storage_name("a/"));
    }

    #[test]
    fn listing_with_prefix_delimiter_and_pages() {
        let keys = set(&["a", "a/b", "a/c/d", "b", "b0", "c/x", "c/y"]);
        let p = list_page(&keys, "", Some("/"), None, 1000);
        assert_eq!(p.keys, ["a", "b", "b0"]);
        assert_eq!(p.prefixes, ["a/", "c/"]);
        let p = list_page(&keys, "a/", Some("/"), None, 1000);
        assert_eq!(p.keys, ["a/b"]);
        assert_eq!(p.prefixes, ["a/c/"]);
        // Pages of 2 through everything, resuming after the last entry.
        let mut after = None;
        let mut seen = Vec::new();
        loop {
            let p = list_page(&keys, "", Some("/"), after.as_deref(), 2);
            seen.extend(p.keys.iter().cloned());
            seen.extend(p.prefixes.iter().cloned());
            if !p.truncated {
                break;
            }
            after = p.last;
        }
        seen.sort();
        assert_eq!(seen, ["a", "a/", "b", "b0", "c/"]);
        let p = list_page(&keys, "", None, Some("b"), 1000);
        assert_eq!(p.keys, ["b0", "c/x", "c/y"]);
        let p = list_page(&keys, "", None, None, 0);
        assert!(p.keys.is_empty() && !p.truncated);
    }

    #[test]
    fn url_encoding_is_reversible_by_unquote_plus() {
        assert_eq!(encode("a b+c/ü", true), "a%20b%2Bc/%C3%BC");
        assert_eq!(encode("a b", false), "a b");
    }
}
