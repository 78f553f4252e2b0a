//! An OCI image layout (a directory with `index.json` and `blobs/`) into containerd: the
//! blobs into the content store, an image record, and the layers unpacked into a chain of
//! overlayfs snapshots. This is what `ctr images import` and its unpack do on the client
//! side; containerd-client has no helper for it, and the Transfer service that would do it
//! server-side is missing from containerd 1.6.
//!
//! Everything is written under a lease, then tied together with containerd's garbage
//! collection labels (image → manifest → config and layers → snapshot chain), so deleting
//! the lease keeps exactly what the image needs. Importing the same layout again writes and
//! unpacks nothing.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use containerd_client::services::v1::content_client::ContentClient;
use containerd_client::services::v1::images_client::ImagesClient;
use containerd_client::services::v1::{
    AbortRequest, CreateImageRequest, Image, Info, InfoRequest, UpdateImageRequest, UpdateRequest,
    WriteAction, WriteContentRequest,
};
use containerd_client::tonic::Code;
use oci_spec::image::{Arch, Descriptor, ImageConfiguration, ImageIndex, ImageManifest, MediaType};
use tokio::io::AsyncReadExt;

use super::client::Lease;
use super::unpack::{chain_ids, unpack};
use super::{wire, Client, ContainersError, SNAPSHOTTER};

/// Well below containerd's 16 MB gRPC message limit.
const CHUNK: usize = 1 << 20;

/// What an import found and did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Imported {
    pub name: String,
    /// The image's target: the manifest for this host's architecture.
    pub manifest: String,
    /// The snapshot holding the unpacked image (its top layer's chain ID): a container's
    /// root filesystem is a view or an active snapshot on top of it.
    pub chain_id: String,
    /// Blobs written to the content store (0 when all were already there).
    pub blobs_written: usize,
    /// Layers unpacked into new snapshots (0 when the chain already existed).
    pub layers_unpacked: usize,
}

/// Imports the image in the OCI layout at `layout` under `name`, and unpacks it.
pub async fn import_oci_layout(
    client: &Client,
    layout: &Path,
    name: &str,
) -> Result<Imported, ContainersError> {
    let index: ImageIndex = read_json(&layout.join("index.json"))?;
    let manifest_desc = host_manifest(&index, &layout.join("index.json"))?;
    let manifest_path = blob_path(layout, manifest_desc);
    let manifest: ImageManifest = read_json(&manifest_path)?;
    let config_path = blob_path(layout, manifest.config());
    let config: ImageConfiguration = read_json(&config_path)?;
    let diff_ids = config.rootfs().diff_ids();
    if diff_ids.len() != manifest.layers().len() {
        return Err(ContainersError::layout(
            &config_path,
            format!(
                "{} diff_ids for the manifest's {} layers",
                diff_ids.len(),
                manifest.layers().len()
            ),
        ));
    }
    let chain = chain_ids(diff_ids);
    let Some(top) = chain.last().cloned() else {
        return Err(ContainersError::layout(&manifest_path, "no layers"));
    };

    let lease = client.create_lease("import").await?;
    let result = import_under(
        client,
        &lease,
        layout,
        name,
        manifest_desc,
        &manifest,
        diff_ids,
        &chain,
    )
    .await;
    // The labels now hold what the image needs; the lease goes, success or not.
    let deleted = client.delete_lease(lease).await;
    let (blobs_written, layers_unpacked) = result?;
    deleted?;
    Ok(Imported {
        name: name.to_string(),
        manifest: manifest_desc.digest().to_string(),
        chain_id: top,
        blobs_written,
        layers_unpacked,
    })
}

#[allow(clippy::too_many_arguments)]
async fn import_under(
    client: &Client,
    lease: &Lease,
    layout: &Path,
    name: &str,
    manifest_desc: &Descriptor,
    manifest: &ImageManifest,
    diff_ids: &[String],
    chain: &[String],
) -> Result<(usize, usize), ContainersError> {
    let mut written = 0;
    let config = manifest.config();
    let top = chain.last().map(String::as_str).unwrap_or_default();
    let config_labels = [(format!("containerd.io/gc.ref.snapshot.{SNAPSHOTTER}"), top)];
    written += write_blob(client, lease, layout, config, &config_labels).await? as usize;
    for (layer, diff_id) in manifest.layers().iter().zip(diff_ids) {
        let labels = [("containerd.io/uncompressed".to_string(), diff_id.as_str())];
        written += write_blob(client, lease, layout, layer, &labels).await? as usize;
    }
    // The manifest last: its labels make the config and layers reachable from the image.
    let config_digest = config.digest().to_string();
    let layer_digests: Vec<String> = manifest
        .layers()
        .iter()
        .map(|l| l.digest().to_string())
        .collect();
    let mut manifest_labels = vec![(
        "containerd.io/gc.ref.content.config".to_string(),
        config_digest.as_str(),
    )];
    for (i, digest) in layer_digests.iter().enumerate() {
        manifest_labels.push((format!("containerd.io/gc.ref.content.l.{i}"), digest));
    }
    written += write_blob(client, lease, layout, manifest_desc, &manifest_labels).await? as usize;
    put_image(client, name, manifest_desc).await?;
    let unpacked = unpack(client, lease, manifest.layers(), diff_ids, chain).await?;
    Ok((written, unpacked))
}

/// The manifest to run here: the only one, or the one for this host's architecture.
fn host_manifest<'a>(
    index: &'a ImageIndex,
    path: &Path,
) -> Result<&'a Descriptor, ContainersError> {
    let manifests: Vec<&Descriptor> = index
        .manifests()
        .iter()
        .filter(|d| {
            matches!(d.media_type(), MediaType::ImageManifest)
                || d.media_type().to_string()
                    == "application/vnd.docker.distribution.manifest.v2+json"
        })
        .collect();
    let host = Arch::default();
    let for_host: Vec<&Descriptor> = manifests
        .iter()
        .copied()
        .filter(|d| {
            d.platform()
                .as_ref()
                .is_none_or(|p| *p.architecture() == host)
        })
        .collect();
    match (manifests.len(), for_host.as_slice()) {
        (0, _) => Err(ContainersError::layout(
            path,
            "no image manifest (a nested index is not supported)",
        )),
        (_, [one]) => Ok(one),
        (_, []) => Err(ContainersError::layout(
            path,
            format!("no manifest for this host's architecture ({host})"),
        )),
        _ => Err(ContainersError::layout(
            path,
            format!("several manifests for this host's architecture ({host})"),
        )),
    }
}

/// `blobs/ALGORITHM/HEX` (a parsed digest has neither `/` nor `..`).
fn blob_path(layout: &Path, desc: &Descriptor) -> PathBuf {
    let digest = desc.digest();
    layout
        .join("blobs")
        .join(digest.algorithm().as_ref())
        .join(digest.digest())
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, ContainersError> {
    let bytes = std::fs::read(path).map_err(|e| ContainersError::io(path, e))?;
    serde_json::from_slice(&bytes).map_err(|e| {
        let message = e.to_string();
        let position = format!(" at line {} column {}", e.line(), e.column());
        ContainersError::Layout {
            path: PathBuf::from(format!("{}:{}:{}", path.display(), e.line(), e.column())),
            message: message
                .strip_suffix(&position)
                .unwrap_or(&message)
                .to_string(),
        }
    })
}

/// Puts the blob into the content store unless it is there; sets `labels` on it either way.
/// Returns whether it was written.
async fn write_blob(
    client: &Client,
    lease: &Lease,
    layout: &Path,
    desc: &Descriptor,
    labels: &[(String, &str)],
) -> Result<bool, ContainersError> {
    let digest = desc.digest().to_string();
    let mut content = ContentClient::new(client.channel());
    let present = match content
        .info(client.leased(
            InfoRequest {
                digest: digest.clone(),
            },
            lease,
        ))
        .await
    {
        Ok(_) => true,
        Err(status) if status.code() == Code::NotFound => false,
        Err(status) => {
            return Err(ContainersError::rpc(format!("content info {digest}"))(
                status,
            ))
        }
    };
    if !present {
        stream_blob(client, lease, &blob_path(layout, desc), desc).await?;
    }
    if !labels.is_empty() {
        let info = Info {
            digest: digest.clone(),
            labels: labels
                .iter()
                .map(|(k, v)| (k.clone(), v.to_string()))
                .collect(),
            ..Default::default()
        };
        let paths = labels.iter().map(|(k, _)| format!("labels.{k}")).collect();
        content
            .update(client.leased(
                UpdateRequest {
                    info: Some(info),
                    update_mask: Some(prost_types::FieldMask { paths }),
                },
                lease,
            ))
            .await
            .map_err(ContainersError::rpc(format!("label content {digest}")))?;
    }
    Ok(!present)
}

/// Writes one blob in chunks and commits it; containerd checks its size and digest.
async fn stream_blob(
    client: &Client,
    lease: &Lease,
    path: &Path,
    desc: &Descriptor,
) -> Result<(), ContainersError> {
    let digest = desc.digest().to_string();
    let reference = format!("letterbox-import-{digest}");
    let mut content = ContentClient::new(client.channel());
    // An interrupted import leaves its ingest behind; appending to it would corrupt the blob.
    if let Err(status) = content
        .abort(client.leased(
            AbortRequest {
                r#ref: reference.clone(),
            },
            lease,
        ))
        .await
    {
        if status.code() != Code::NotFound {
            return Err(ContainersError::rpc(format!("abort ingest {reference}"))(
                status,
            ));
        }
    }
    let file = tokio::fs::File::open(path)
        .await
        .map_err(|e| ContainersError::io(path, e))?;
    let read_error: Arc<Mutex<Option<std::io::Error>>> = Arc::default();
    let first = WriteContentRequest {
        r#ref: reference.clone(),
        total: desc.size() as i64,
        expected: digest.clone(),
        ..Default::default()
    };
    let failed = read_error.clone();
    let requests =
        futures::stream::unfold((file, 0i64, false), move |(mut file, offset, committed)| {
            let first = first.clone();
            let failed = failed.clone();
            async move {
                if committed {
                    return None;
                }
                let mut data = vec![0; CHUNK];
                let n = match file.read(&mut data).await {
                    Ok(n) => n,
                    Err(e) => {
                        *failed.lock().unwrap_or_else(|p| p.into_inner()) = Some(e);
                        return None;
                    }
                };
                data.truncate(n);
                let action = if n == 0 {
                    WriteAction::Commit
                } else {
                    WriteAction::Write
                };
                let request = WriteContentRequest {
                    action: action as i32,
                    offset,
                    data,
                    ..first
                };
                Some((request, (file, offset + n as i64, n == 0)))
            }
        });
    let call = format!("write content {digest}");
    let mut replies = content
        .write(client.leased(requests, lease))
        .await
        .map_err(ContainersError::rpc(call.clone()))?
        .into_inner();
    let mut committed = false;
    while let Some(reply) = replies
        .message()
        .await
        .map_err(ContainersError::rpc(call.clone()))?
    {
        committed |= reply.action == WriteAction::Commit as i32;
    }
    if let Some(e) = read_error.lock().unwrap_or_else(|p| p.into_inner()).take() {
        return Err(ContainersError::io(path, e));
    }
    if !committed {
        return Err(ContainersError::layout(
            path,
            "containerd did not commit the blob",
        ));
    }
    Ok(())
}

/// Creates the image record, or points an existing one at this manifest.
async fn put_image(
    client: &Client,
    name: &str,
    manifest: &Descriptor,
) -> Result<(), ContainersError> {
    let image = Image {
        name: name.to_string(),
        target: Some(wire(manifest)),
        ..Default::default()
    };
    let mut images = ImagesClient::new(client.channel());
    match images
        .create(client.request(CreateImageRequest {
            image: Some(image.clone()),
            source_date_epoch: None,
        }))
        .await
    {
        Ok(_) => Ok(()),
        Err(status) if status.code() == Code::AlreadyExists => images
            .update(client.request(UpdateImageRequest {
                image: Some(image),
                update_mask: None,
                source_date_epoch: None,
            }))
            .await
            .map(drop)
            .map_err(ContainersError::rpc(format!("update image {name}"))),
        Err(status) => Err(ContainersError::rpc(format!("create image {name}"))(status)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broken_json_names_file_line_and_column() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("index.json");
        std::fs::write(
            &path,
            "{\n  \"schemaVersion\": 2,\n  \"manifests\": [,]\n}\n",
        )
        .unwrap();
        let err = read_json::<ImageIndex>(&path).unwrap_err().to_string();
        assert!(
            err.starts_with(&format!("{}:3:17: ", path.display())),
            "{err}"
        );
    }
}
