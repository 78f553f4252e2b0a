//! A connection to one containerd: every request carries the `letterbox` namespace, and
//! work that creates content or snapshots carries a lease, so containerd's garbage
//! collector keeps it until what the work produced is referenced.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use containerd_client::services::v1::leases_client::LeasesClient;
use containerd_client::services::v1::version_client::VersionClient;
use containerd_client::services::v1::{CreateRequest, DeleteRequest};
use containerd_client::tonic::metadata::MetadataValue;
use containerd_client::tonic::transport::Channel;
use containerd_client::tonic::Request;

use super::{ContainersError, NAMESPACE};

#[derive(Clone)]
pub struct Client {
    channel: Channel,
    socket: PathBuf,
}

/// The first connection attempts come quickly: containerd is usually up within a second.
const RETRY_DELAY: Duration = Duration::from_millis(100);

/// How long an unfinished import's lease lives if the agent dies before deleting it: then
/// containerd's garbage collector removes the half-imported content by itself.
const LEASE_EXPIRY: Duration = Duration::from_secs(3600);

impl Client {
    /// Connects to containerd's socket, retrying until it answers `version` or `timeout`
    /// has passed (containerd creates the socket a moment after it starts).
    pub async fn connect(socket: &Path, timeout: Duration) -> Result<Client, ContainersError> {
        let deadline = Instant::now() + timeout;
        loop {
            let attempt = match containerd_client::connect(socket).await {
                Ok(channel) => {
                    let client = Client {
                        channel,
                        socket: socket.to_path_buf(),
                    };
                    match client.version().await {
                        Ok(_) => return Ok(client),
                        Err(e) if Instant::now() >= deadline => return Err(e),
                        Err(_) => None,
                    }
                }
                Err(e) => Some(e),
            };
            if Instant::now() >= deadline {
                if let Some(source) = attempt {
                    return Err(ContainersError::NotReady {
                        socket: socket.to_path_buf(),
                        waited_secs: timeout.as_secs(),
                        source,
                    });
                }
            }
            tokio::time::sleep(RETRY_DELAY).await;
        }
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    pub fn channel(&self) -> Channel {
        self.channel.clone()
    }

    /// containerd's version, e.g. "1.7.24~ds1".
    pub async fn version(&self) -> Result<String, ContainersError> {
        let reply = VersionClient::new(self.channel())
            .version(())
            .await
            .map_err(ContainersError::rpc("version"))?;
        Ok(reply.into_inner().version)
    }

    /// A request in the agent's namespace.
    pub fn request<T>(&self, message: T) -> Request<T> {
        let mut request = Request::new(message);
        request.metadata_mut().insert(
            "containerd-namespace",
            MetadataValue::from_static(NAMESPACE),
        );
        request
    }

    /// A request in the agent's namespace, under `lease`.
    pub fn leased<T>(&self, message: T, lease: &Lease) -> Request<T> {
        let mut request = self.request(message);
        if let Ok(id) = MetadataValue::try_from(lease.id.as_str()) {
            request.metadata_mut().insert("containerd-lease", id);
        }
        request
    }

    /// A lease that expires by itself if it is never deleted.
    pub async fn create_lease(&self, purpose: &str) -> Result<Lease, ContainersError> {
        let expires = std::time::SystemTime::now() + LEASE_EXPIRY;
        let labels = HashMap::from([("containerd.io/gc.expire".to_string(), rfc3339(expires))]);
        let id = format!(
            "letterbox-{purpose}-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default()
                .as_nanos()
        );
        LeasesClient::new(self.channel())
            .create(self.request(CreateRequest {
                id: id.clone(),
                labels,
            }))
            .await
            .map_err(ContainersError::rpc(format!("create lease {id}")))?;
        Ok(Lease { id })
    }

    /// Deletes the lease and waits for the garbage collection it triggers, so anything the
    /// lease held and nothing references is gone when this returns.
    pub async fn delete_lease(&self, lease: Lease) -> Result<(), ContainersError> {
        LeasesClient::new(self.channel())
            .delete(self.request(DeleteRequest {
                id: lease.id.clone(),
                sync: true,
            }))
            .await
            .map_err(ContainersError::rpc(format!("delete lease {}", lease.id)))?;
        Ok(())
    }
}

/// A containerd lease: what is created under it survives garbage collection while it lives.
#[derive(Debug)]
pub struct Lease {
    pub id: String,
}

/// `time` as RFC 3339 in UTC, as containerd's `gc.expire` label wants it.
fn rfc3339(time: std::time::SystemTime) -> String {
    prost_types::Timestamp::from(time).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lease_expiry_is_rfc3339_utc() {
        let at = |secs| std::time::UNIX_EPOCH + Duration::from_secs(secs);
        assert_eq!(rfc3339(at(951_782_400)), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(at(1_795_000_000)), "2026-11-18T11:06:40Z");
    }
}
