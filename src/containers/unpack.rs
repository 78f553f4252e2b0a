//! Unpacking: each layer applied by containerd's diff service onto an overlayfs snapshot of
//! its parent, and committed under its chain ID, so a layer already unpacked (by this image
//! or another one sharing it) is found by name and skipped.

use std::collections::HashMap;
use std::path::PathBuf;

use containerd_client::services::v1::diff_client::DiffClient;
use containerd_client::services::v1::snapshots::snapshots_client::SnapshotsClient;
use containerd_client::services::v1::snapshots::{
    CommitSnapshotRequest, PrepareSnapshotRequest, RemoveSnapshotRequest, StatSnapshotRequest,
};
use containerd_client::services::v1::ApplyRequest;
use containerd_client::tonic::Code;
use oci_spec::image::Descriptor;

use super::client::Lease;
use super::{wire, Client, ContainersError, SNAPSHOTTER};

/// The chain IDs of a layer stack: the first layer's diff ID, then
/// sha256(parent chain ID + " " + diff ID) (OCI image spec, "Layer ChainID").
pub(super) fn chain_ids(diff_ids: &[String]) -> Vec<String> {
    use sha2::{Digest, Sha256};
    let mut chain: Vec<String> = Vec::with_capacity(diff_ids.len());
    for diff_id in diff_ids {
        let id = match chain.last() {
            None => diff_id.clone(),
            Some(parent) => format!(
                "sha256:{}",
                data_encoding::HEXLOWER
                    .encode(&Sha256::digest(format!("{parent} {diff_id}").as_bytes()))
            ),
        };
        chain.push(id);
    }
    chain
}

/// Whether the snapshotter has a snapshot named `key`.
pub async fn snapshot_exists(client: &Client, key: &str) -> Result<bool, ContainersError> {
    let request = StatSnapshotRequest {
        snapshotter: SNAPSHOTTER.into(),
        key: key.into(),
    };
    match SnapshotsClient::new(client.channel())
        .stat(client.request(request))
        .await
    {
        Ok(_) => Ok(true),
        Err(status) if status.code() == Code::NotFound => Ok(false),
        Err(status) => Err(ContainersError::rpc(format!("stat snapshot {key}"))(status)),
    }
}

/// Applies each layer missing from the chain onto its parent, committing it under its
/// chain ID. Returns how many layers it unpacked.
pub(super) async fn unpack(
    client: &Client,
    lease: &Lease,
    layers: &[Descriptor],
    diff_ids: &[String],
    chain: &[String],
) -> Result<usize, ContainersError> {
    let mut snapshots = SnapshotsClient::new(client.channel());
    let mut unpacked = 0;
    for (i, (layer, chain_id)) in layers.iter().zip(chain).enumerate() {
        if snapshot_exists(client, chain_id).await? {
            continue;
        }
        let parent = if i == 0 {
            String::new()
        } else {
            chain[i - 1].clone()
        };
        let key = format!("letterbox-extract-{chain_id}");
        remove_snapshot(client, &key).await?;
        let mounts = snapshots
            .prepare(client.leased(
                PrepareSnapshotRequest {
                    snapshotter: SNAPSHOTTER.into(),
                    key: key.clone(),
                    parent,
                    labels: HashMap::new(),
                },
                lease,
            ))
            .await
            .map_err(ContainersError::rpc(format!("prepare snapshot {key}")))?
            .into_inner()
            .mounts;
        let applied = DiffClient::new(client.channel())
            .apply(client.leased(
                ApplyRequest {
                    diff: Some(wire(layer)),
                    mounts,
                    ..Default::default()
                },
                lease,
            ))
            .await
            .map_err(ContainersError::rpc(format!(
                "apply layer {}",
                layer.digest()
            )));
        let applied = match applied {
            Ok(reply) => reply.into_inner().applied.map(|d| d.digest),
            Err(e) => {
                remove_snapshot(client, &key).await?;
                return Err(e);
            }
        };
        if applied.as_deref() != Some(diff_ids[i].as_str()) {
            remove_snapshot(client, &key).await?;
            return Err(ContainersError::Layout {
                path: PathBuf::from(layer.digest().to_string()),
                message: format!(
                    "the layer unpacks to {}, but the image config says {}",
                    applied.unwrap_or_default(),
                    diff_ids[i]
                ),
            });
        }
        let committed = snapshots
            .commit(client.leased(
                CommitSnapshotRequest {
                    snapshotter: SNAPSHOTTER.into(),
                    name: chain_id.clone(),
                    key: key.clone(),
                    labels: HashMap::new(),
                },
                lease,
            ))
            .await;
        match committed {
            Ok(_) => unpacked += 1,
            // Another import committed the same layer meanwhile: it is there, all the same.
            Err(status) if status.code() == Code::AlreadyExists => {
                remove_snapshot(client, &key).await?
            }
            Err(status) => {
                return Err(ContainersError::rpc(format!("commit snapshot {chain_id}"))(
                    status,
                ))
            }
        }
    }
    Ok(unpacked)
}

/// Removes a snapshot if it exists.
pub async fn remove_snapshot(client: &Client, key: &str) -> Result<(), ContainersError> {
    let request = RemoveSnapshotRequest {
        snapshotter: SNAPSHOTTER.into(),
        key: key.into(),
    };
    match SnapshotsClient::new(client.channel())
        .remove(client.request(request))
        .await
    {
        Ok(_) => Ok(()),
        Err(status) if status.code() == Code::NotFound => Ok(()),
        Err(status) => Err(ContainersError::rpc(format!("remove snapshot {key}"))(
            status,
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chain_ids_follow_the_oci_definition() {
        let a = format!("sha256:{}", "a".repeat(64));
        let b = format!("sha256:{}", "b".repeat(64));
        let chain = chain_ids(&[a.clone(), b.clone()]);
        assert_eq!(chain[0], a);
        // printf 'sha256:aaa…a sha256:bbb…b' | sha256sum
        assert_eq!(
            chain[1],
            "sha256:ccd722928bd92476ba1745586fed6e45a102504185ad88cd89e01ff116fd146c"
        );
    }
}
