//! Lists the snapshots a running snapshotd serves, through the library's client.
//!
//! ```sh
//! cargo run -p snapshotd --example list -- /run/snapshotd/snapshotd.sock
//! ```

use snapshotd::client::connect;
use snapshotd::convert::{from_status, info_from_proto};
use snapshotd::proto::snapshots::ListSnapshotsRequest;

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let socket = std::env::args()
        .nth(1)
        .unwrap_or_else(|| snapshotd::config::DEFAULT_ADDRESS.to_string());
    let mut client = connect(socket.as_ref()).await?;
    let mut stream = client
        .list(ListSnapshotsRequest::default())
        .await
        .map_err(|s| from_status(&s))?
        .into_inner();
    while let Some(batch) = stream.message().await.map_err(|s| from_status(&s))? {
        for info in batch.info.into_iter().map(info_from_proto) {
            println!("{}\t{}\t{}", info.name, info.kind, info.parent);
        }
    }
    Ok(())
}
