//! A client of the snapshots service on a unix socket.

use std::path::{Path, PathBuf};

use hyper_util::rt::TokioIo;
use tokio::net::UnixStream;
use tonic::transport::{Channel, Endpoint, Uri};
use tower::service_fn;

use crate::proto::snapshots::snapshots_client::SnapshotsClient;

/// A connected client of the `Snapshots` service.
pub type Client = SnapshotsClient<Channel>;

/// Connects to the snapshots service listening on the unix socket `path`.
///
/// # Errors
/// The transport error when the socket cannot be reached (missing, refused, no access).
pub async fn connect(path: &Path) -> Result<Client, tonic::transport::Error> {
    let path: PathBuf = path.to_owned();
    // The URI is required by the API but never used: the connector ignores it.
    let channel = Endpoint::from_static("http://[::]:50051")
        .connect_with_connector(service_fn(move |_: Uri| {
            let path = path.clone();
            async move { Ok::<_, std::io::Error>(TokioIo::new(UnixStream::connect(path).await?)) }
        }))
        .await?;
    Ok(SnapshotsClient::new(channel))
}
