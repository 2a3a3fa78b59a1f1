//! Images in the containerd namespace: reading an image's manifest and
//! config from the content store, unpacking its layers into the
//! snapshotter (Diff.Apply + Snapshots.Commit, what containerd's Go
//! client does on the client side), and importing images without a
//! registry: layer tars plus config are written to the content store with
//! an OCI manifest and `Images.Create`d.
//!
//! Where the layers come from: `esb images build` builds ESB's base images
//! through the Docker engine API (debootstrap, then an image-create from a
//! single tar), and image functions are built with Docker's build API. So
//! an image missing from the namespace is exported from the local Docker
//! engine when one answers (`docker save` format: `manifest.json`, the
//! config JSON, one uncompressed tar per layer) and imported; the Docker
//! image id is kept as a label, and a rebuilt Docker image is imported
//! again. [`import_layers`] takes any layer tars, so a containerd-only host
//! can import a root file system tar directly.

use std::collections::HashMap;

use containerd_client::services::v1::snapshots::{
    CommitSnapshotRequest, PrepareSnapshotRequest, RemoveSnapshotRequest, StatSnapshotRequest,
};
use containerd_client::services::v1::{
    ApplyRequest, CreateImageRequest, GetImageRequest, Image, ReadContentRequest,
    UpdateImageRequest, WriteAction, WriteContentRequest,
};
use containerd_client::services::v1::{CreateRequest as LeaseCreate, DeleteRequest as LeaseDelete};
use containerd_client::types::Descriptor;
use futures_util::StreamExt;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tonic::Code;

use crate::spec::ImageDefaults;
use crate::{ContainerdEngine, ContainerdError};

/// Label recording the Docker image id an image was imported from.
pub const LABEL_DOCKER_ID: &str = "io.esb.docker-image-id";

const MANIFEST_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";
const CONFIG_TYPE: &str = "application/vnd.oci.image.config.v1+json";
const LAYER_TYPE: &str = "application/vnd.oci.image.layer.v1.tar";

/// An image as the engine uses it.
#[derive(Debug, Clone)]
pub struct ResolvedImage {
    /// ENTRYPOINT, CMD, ENV, WORKDIR, USER.
    pub defaults: ImageDefaults,
    /// The config's labels.
    pub labels: HashMap<String, String>,
    /// The snapshot holding the unpacked layers (the top layer's chain id).
    pub chain_id: String,
}

pub(crate) fn digest_of(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(data)))
}

/// The chain ids of a layer stack (OCI image spec: `sha256(parent + " " +
/// diff_id)`).
pub(crate) fn chain_ids(diff_ids: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for diff in diff_ids {
        let next = match out.last() {
            None => diff.clone(),
            Some(parent) => digest_of(format!("{parent} {diff}").as_bytes()),
        };
        out.push(next);
    }
    out
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

fn defaults_of(config: &Value) -> (ImageDefaults, HashMap<String, String>) {
    let c = &config["config"];
    let labels = c["Labels"]
        .as_object()
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
                .collect()
        })
        .unwrap_or_default();
    (
        ImageDefaults {
            env: strings(&c["Env"]),
            entrypoint: strings(&c["Entrypoint"]),
            cmd: strings(&c["Cmd"]),
            working_dir: c["WorkingDir"]
                .as_str()
                .filter(|w| !w.is_empty())
                .map(str::to_string),
            user: c["User"]
                .as_str()
                .filter(|u| !u.is_empty())
                .map(str::to_string),
        },
        labels,
    )
}

fn bad(what: impl std::fmt::Display) -> ContainerdError {
    ContainerdError::Image(what.to_string())
}

impl ContainerdEngine {
    async fn read_blob(&self, digest: &str) -> Result<Vec<u8>, ContainerdError> {
        let mut stream = self
            .client()
            .content()
            .read(self.request(ReadContentRequest {
                digest: digest.to_string(),
                offset: 0,
                size: 0,
            }))
            .await?
            .into_inner();
        let mut out = Vec::new();
        while let Some(chunk) = stream.next().await {
            out.extend_from_slice(&chunk?.data);
        }
        Ok(out)
    }

    async fn write_blob(
        &self,
        lease: &str,
        data: &[u8],
        labels: HashMap<String, String>,
    ) -> Result<Descriptor, ContainerdError> {
        let digest = digest_of(data);
        let total = i64::try_from(data.len()).map_err(bad)?;
        let reference = format!("esb-import-{}", &digest[7..]);
        let mut requests = Vec::new();
        let mut offset = 0usize;
        for chunk in data.chunks(1 << 20) {
            requests.push(WriteContentRequest {
                action: WriteAction::Write as i32,
                r#ref: reference.clone(),
                total,
                expected: digest.clone(),
                offset: i64::try_from(offset).map_err(bad)?,
                data: chunk.to_vec(),
                labels: HashMap::new(),
            });
            offset += chunk.len();
        }
        requests.push(WriteContentRequest {
            action: WriteAction::Commit as i32,
            r#ref: reference,
            total,
            expected: digest.clone(),
            offset: total,
            data: Vec::new(),
            labels,
        });
        let mut request = self.request(tokio_stream_iter(requests));
        request.metadata_mut().insert(
            "containerd-lease",
            lease.parse().map_err(|_| bad("lease id"))?,
        );
        match self.client().content().write(request).await {
            Ok(response) => {
                let mut responses = response.into_inner();
                while let Some(r) = responses.next().await {
                    match r {
                        Ok(_) => {}
                        Err(s) if s.code() == Code::AlreadyExists => break,
                        Err(s) => return Err(s.into()),
                    }
                }
            }
            Err(s) if s.code() == Code::AlreadyExists => {}
            Err(s) => return Err(s.into()),
        }
        Ok(Descriptor {
            media_type: String::new(),
            digest,
            size: total,
            annotations: HashMap::new(),
        })
    }

    /// Imports an image made of `layers` (uncompressed tars, bottom first)
    /// and an image `config` (OCI/Docker config JSON; its `rootfs.diff_ids`
    /// are set from the layers) as `name`, replacing an image of that name.
    pub async fn import_layers(
        &self,
        name: &str,
        layers: &[&[u8]],
        config: &Value,
        labels: HashMap<String, String>,
    ) -> Result<(), ContainerdError> {
        let lease = format!("esb-import-{}", uuid_like());
        self.client()
            .leases()
            .create(self.request(LeaseCreate {
                id: lease.clone(),
                labels: HashMap::new(),
            }))
            .await?;
        let result = self
            .import_in_lease(&lease, name, layers, config, labels)
            .await;
        let _ = self
            .client()
            .leases()
            .delete(self.request(LeaseDelete {
                id: lease,
                sync: false,
            }))
            .await;
        result
    }

    async fn import_in_lease(
        &self,
        lease: &str,
        name: &str,
        layers: &[&[u8]],
        config: &Value,
        labels: HashMap<String, String>,
    ) -> Result<(), ContainerdError> {
        let mut layer_descs = Vec::new();
        let mut diff_ids = Vec::new();
        for layer in layers {
            let mut desc = self.write_blob(lease, layer, HashMap::new()).await?;
            desc.media_type = LAYER_TYPE.to_string();
            diff_ids.push(desc.digest.clone());
            layer_descs.push(desc);
        }
        let mut config = config.clone();
        config["rootfs"] = json!({"type": "layers", "diff_ids": diff_ids});
        if config.get("architecture").is_none() {
            config["architecture"] = json!("amd64");
        }
        if config.get("os").is_none() {
            config["os"] = json!("linux");
        }
        let config_bytes = serde_json::to_vec(&config).map_err(bad)?;
        let chain = chain_ids(&diff_ids);
        let mut config_labels = HashMap::new();
        if let Some(top) = chain.last() {
            config_labels.insert(
                format!("containerd.io/gc.ref.snapshot.{}", self.snapshotter()),
                top.clone(),
            );
        }
        let mut config_desc = self.write_blob(lease, &config_bytes, config_labels).await?;
        config_desc.media_type = CONFIG_TYPE.to_string();
        let manifest = json!({
            "schemaVersion": 2,
            "mediaType": MANIFEST_TYPE,
            "config": {"mediaType": CONFIG_TYPE, "digest": config_desc.digest, "size": config_desc.size},
            "layers": layer_descs.iter().map(|d| json!({"mediaType": LAYER_TYPE, "digest": d.digest, "size": d.size})).collect::<Vec<_>>(),
        });
        let manifest_bytes = serde_json::to_vec(&manifest).map_err(bad)?;
        let mut manifest_labels = HashMap::from([(
            "containerd.io/gc.ref.content.config".to_string(),
            config_desc.digest.clone(),
        )]);
        for (i, d) in layer_descs.iter().enumerate() {
            manifest_labels.insert(
                format!("containerd.io/gc.ref.content.l.{i}"),
                d.digest.clone(),
            );
        }
        let mut manifest_desc = self
            .write_blob(lease, &manifest_bytes, manifest_labels)
            .await?;
        manifest_desc.media_type = MANIFEST_TYPE.to_string();
        let image = Image {
            name: name.to_string(),
            labels,
            target: Some(manifest_desc),
            created_at: None,
            updated_at: None,
        };
        let created = self
            .client()
            .images()
            .create(self.request(CreateImageRequest {
                image: Some(image.clone()),
                source_date_epoch: None,
            }))
            .await;
        match created {
            Ok(_) => {}
            Err(s) if s.code() == Code::AlreadyExists => {
                self.client()
                    .images()
                    .update(self.request(UpdateImageRequest {
                        image: Some(image),
                        update_mask: None,
                        source_date_epoch: None,
                    }))
                    .await?;
            }
            Err(s) => return Err(s.into()),
        }
        // Unpack now, still inside the lease.
        self.unpack(&layer_descs, &diff_ids).await?;
        Ok(())
    }

    async fn snapshot_exists(&self, key: &str) -> Result<bool, ContainerdError> {
        match self
            .client()
            .snapshots()
            .stat(self.request(StatSnapshotRequest {
                snapshotter: self.snapshotter().to_string(),
                key: key.to_string(),
            }))
            .await
        {
            Ok(_) => Ok(true),
            Err(s) if s.code() == Code::NotFound => Ok(false),
            Err(s) => Err(s.into()),
        }
    }

    /// Applies each layer onto its parent and commits it under its chain id
    /// (layers already unpacked are skipped).
    async fn unpack(
        &self,
        layers: &[Descriptor],
        diff_ids: &[String],
    ) -> Result<(), ContainerdError> {
        let _guard = self.inner.unpack_lock.lock().await;
        let chain = chain_ids(diff_ids);
        let mut parent = String::new();
        for (layer, chain_id) in layers.iter().zip(&chain) {
            if !self.snapshot_exists(chain_id).await? {
                let key = format!("extract-{}-{chain_id}", uuid_like());
                let mounts = self
                    .client()
                    .snapshots()
                    .prepare(self.request(PrepareSnapshotRequest {
                        snapshotter: self.snapshotter().to_string(),
                        key: key.clone(),
                        parent: parent.clone(),
                        labels: HashMap::new(),
                    }))
                    .await?
                    .into_inner()
                    .mounts;
                let applied = self
                    .client()
                    .diff()
                    .apply(self.request(ApplyRequest {
                        diff: Some(layer.clone()),
                        mounts,
                        payloads: HashMap::new(),
                        sync_fs: false,
                    }))
                    .await;
                let committed = match applied {
                    Ok(_) => self
                        .client()
                        .snapshots()
                        .commit(self.request(CommitSnapshotRequest {
                            snapshotter: self.snapshotter().to_string(),
                            name: chain_id.clone(),
                            key: key.clone(),
                            labels: HashMap::new(),
                        }))
                        .await
                        .map(|_| ()),
                    Err(e) => Err(e),
                };
                if let Err(e) = committed {
                    let _ = self
                        .client()
                        .snapshots()
                        .remove(self.request(RemoveSnapshotRequest {
                            snapshotter: self.snapshotter().to_string(),
                            key,
                        }))
                        .await;
                    if e.code() != Code::AlreadyExists {
                        return Err(e.into());
                    }
                }
            }
            parent = chain_id.clone();
        }
        Ok(())
    }

    /// The image named `name` in the namespace, unpacked; imported from the
    /// local Docker engine first when it is missing there or older than
    /// Docker's image of that name.
    pub async fn resolve_image(&self, name: &str) -> Result<ResolvedImage, ContainerdError> {
        // The import runs in its own task: a caller that gives up (a
        // request's 30 s integration timeout during a first import) does
        // not abort it, and callers of the same image wait for one import.
        let engine = self.clone();
        let owned = name.to_string();
        tokio::spawn(async move {
            let _guard = engine.inner.import_lock.lock().await;
            engine.import_if_stale(&owned).await
        })
        .await
        .map_err(|e| bad(format!("import of {name}: {e}")))??;
        self.read_image(name).await
    }

    async fn import_if_stale(&self, name: &str) -> Result<(), ContainerdError> {
        let found = match self
            .client()
            .images()
            .get(self.request(GetImageRequest {
                name: name.to_string(),
            }))
            .await
        {
            Ok(r) => r.into_inner().image,
            Err(s) if s.code() == Code::NotFound => None,
            Err(s) => return Err(s.into()),
        };
        let docker_id = self.docker_image_id(name).await;
        let stale = match (&found, &docker_id) {
            (None, _) => true,
            (Some(image), Some(id)) => image.labels.get(LABEL_DOCKER_ID) != Some(id),
            (Some(_), None) => false,
        };
        if stale {
            if docker_id.is_none() {
                return Err(bad(format!(
                    "image {name} is not in containerd namespace {} and no Docker engine has it to import (build it with `esb images build` / `esb build` while Docker runs, or import a root file system tar)",
                    self.namespace()
                )));
            }
            self.import_from_docker(name).await?;
        }
        Ok(())
    }

    async fn read_image(&self, name: &str) -> Result<ResolvedImage, ContainerdError> {
        let image = self
            .client()
            .images()
            .get(self.request(GetImageRequest {
                name: name.to_string(),
            }))
            .await?
            .into_inner()
            .image
            .ok_or_else(|| bad(format!("image {name} not found")))?;
        let target = image
            .target
            .ok_or_else(|| bad(format!("image {name} has no target")))?;
        let manifest: Value =
            serde_json::from_slice(&self.read_blob(&target.digest).await?).map_err(bad)?;
        let manifest = if manifest.get("manifests").is_some() {
            // An index: the linux/amd64 manifest.
            let entry = manifest["manifests"]
                .as_array()
                .and_then(|m| {
                    m.iter().find(|d| {
                        d["platform"]["os"] == "linux" && d["platform"]["architecture"] == "amd64"
                    })
                })
                .ok_or_else(|| bad(format!("image {name} has no linux/amd64 manifest")))?;
            let digest = entry["digest"].as_str().unwrap_or_default().to_string();
            serde_json::from_slice(&self.read_blob(&digest).await?).map_err(bad)?
        } else {
            manifest
        };
        let config_digest = manifest["config"]["digest"]
            .as_str()
            .ok_or_else(|| bad(format!("image {name}: manifest without config")))?;
        let config: Value =
            serde_json::from_slice(&self.read_blob(config_digest).await?).map_err(bad)?;
        let diff_ids = strings(&config["rootfs"]["diff_ids"]);
        let layers: Vec<Descriptor> = manifest["layers"]
            .as_array()
            .map(|l| {
                l.iter()
                    .map(|d| Descriptor {
                        media_type: d["mediaType"].as_str().unwrap_or(LAYER_TYPE).to_string(),
                        digest: d["digest"].as_str().unwrap_or_default().to_string(),
                        size: d["size"].as_i64().unwrap_or_default(),
                        annotations: HashMap::new(),
                    })
                    .collect()
            })
            .unwrap_or_default();
        if layers.len() != diff_ids.len() || layers.is_empty() {
            return Err(bad(format!(
                "image {name}: layers and diff ids do not match"
            )));
        }
        self.unpack(&layers, &diff_ids).await?;
        let (defaults, labels) = defaults_of(&config);
        let chain_id = chain_ids(&diff_ids).pop().unwrap_or_default();
        Ok(ResolvedImage {
            defaults,
            labels,
            chain_id,
        })
    }

    async fn docker_image_id(&self, name: &str) -> Option<String> {
        let docker = self.docker()?;
        docker.inspect_image(name).await.ok()?.id
    }

    /// Exports `name` from the Docker engine and imports it.
    async fn import_from_docker(&self, name: &str) -> Result<(), ContainerdError> {
        let docker = self
            .docker()
            .ok_or_else(|| bad("no Docker engine to import from"))?;
        let id = docker
            .inspect_image(name)
            .await
            .map_err(bad)?
            .id
            .unwrap_or_default();
        tracing::info!("importing image {name} from the Docker engine into containerd");
        let mut stream = docker.export_image(name);
        let mut archive = Vec::new();
        while let Some(chunk) = stream.next().await {
            archive.extend_from_slice(&chunk.map_err(bad)?);
        }
        let entries = tar_entries(&archive)?;
        let get = |path: &str| {
            entries
                .get(path)
                .map(|&(start, len)| &archive[start..start + len])
                .ok_or_else(|| bad(format!("docker export of {name}: no {path}")))
        };
        let manifest: Value = serde_json::from_slice(get("manifest.json")?).map_err(bad)?;
        let first = &manifest[0];
        let config: Value =
            serde_json::from_slice(get(first["Config"].as_str().unwrap_or_default())?)
                .map_err(bad)?;
        let mut layers = Vec::new();
        for layer in strings(&first["Layers"]) {
            layers.push(get(&layer)?);
        }
        let labels = HashMap::from([(LABEL_DOCKER_ID.to_string(), id)]);
        self.import_layers(name, &layers, &config, labels).await
    }
}

fn uuid_like() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    format!("{:x}{:x}", std::process::id(), nanos)
}

fn tokio_stream_iter<T: Send + 'static>(
    items: Vec<T>,
) -> impl futures_util::Stream<Item = T> + Send + 'static {
    futures_util::stream::iter(items)
}

fn octal(field: &[u8]) -> Option<usize> {
    let text = std::str::from_utf8(field).ok()?;
    let text = text.trim_matches(|c: char| c == '\0' || c == ' ');
    if text.is_empty() {
        return Some(0);
    }
    usize::from_str_radix(text, 8).ok()
}

/// Regular files of a (docker save) tar: path → (offset, length). Handles
/// ustar prefixes and GNU long names; nothing is extracted to disk.
pub(crate) fn tar_entries(tar: &[u8]) -> Result<HashMap<String, (usize, usize)>, ContainerdError> {
    let mut out = HashMap::new();
    let mut pos = 0usize;
    let mut long_name: Option<String> = None;
    while pos + 512 <= tar.len() {
        let header = &tar[pos..pos + 512];
        if header.iter().all(|b| *b == 0) {
            break;
        }
        let cstr = |f: &[u8]| {
            let end = f.iter().position(|b| *b == 0).unwrap_or(f.len());
            String::from_utf8_lossy(&f[..end]).into_owned()
        };
        let size = octal(&header[124..136]).ok_or_else(|| bad("bad tar header"))?;
        let kind = header[156];
        let data = pos + 512;
        let end = data
            .checked_add(size)
            .filter(|e| *e <= tar.len())
            .ok_or_else(|| bad("truncated tar"))?;
        let mut name = cstr(&header[0..100]);
        if &header[257..262] == b"ustar" {
            let prefix = cstr(&header[345..500]);
            if !prefix.is_empty() {
                name = format!("{prefix}/{name}");
            }
        }
        match kind {
            b'L' => long_name = Some(cstr(&tar[data..end])),
            b'0' | 0 => {
                let name = long_name.take().unwrap_or(name);
                out.insert(name.trim_start_matches("./").to_string(), (data, size));
            }
            _ => {
                long_name = None;
            }
        }
        pos = data + size.div_ceil(512) * 512;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chain_ids_follow_the_oci_rule() {
        let a = "sha256:aa".to_string();
        let b = "sha256:bb".to_string();
        let chain = chain_ids(&[a.clone(), b.clone()]);
        assert_eq!(chain[0], a);
        assert_eq!(chain[1], digest_of(b"sha256:aa sha256:bb"));
    }

    #[test]
    fn tar_entries_find_files() {
        let mut tar = Vec::new();
        for (name, body) in [
            ("manifest.json", &b"[1]"[..]),
            ("abc/layer.tar", &b"xyz"[..]),
        ] {
            let mut h = [0u8; 512];
            h[..name.len()].copy_from_slice(name.as_bytes());
            let size = format!("{:011o}\0", body.len());
            h[124..136].copy_from_slice(size.as_bytes());
            h[156] = b'0';
            tar.extend_from_slice(&h);
            tar.extend_from_slice(body);
            tar.resize(tar.len().div_ceil(512) * 512, 0);
        }
        tar.extend_from_slice(&[0u8; 1024]);
        let entries = tar_entries(&tar).unwrap();
        let (start, len) = entries["abc/layer.tar"];
        assert_eq!(&tar[start..start + len], b"xyz");
        assert!(entries.contains_key("manifest.json"));
    }

    #[test]
    fn image_config_gives_the_defaults() {
        let config = json!({"config": {"Env": ["A=1"], "Entrypoint": ["/lambda-entrypoint.sh"], "Cmd": ["app.handler"], "WorkingDir": "/var/task", "Labels": {"io.esb.runtime": "python3.11"}}});
        let (d, labels) = defaults_of(&config);
        assert_eq!(d.entrypoint, vec!["/lambda-entrypoint.sh"]);
        assert_eq!(d.cmd, vec!["app.handler"]);
        assert_eq!(d.working_dir.as_deref(), Some("/var/task"));
        assert_eq!(labels["io.esb.runtime"], "python3.11");
    }
}
