//! The log on a real, small filesystem filled to the brim: the server says NOT_SERVING and
//! acknowledges nothing while it cannot write, then recovers without losing what it took.
//!
//! Needs root (it mounts a tmpfs, as CI can); elsewhere it says so and passes without running.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{FRANCE, request, settings, start_with};
use tonic::Code;
use tonic::transport::Channel;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use triage_proto::v1::{ErrorKind, FeedbackRequest, Preferences};

/// A tmpfs mounted for one test, unmounted when dropped.
struct SmallDisk {
    dir: tempfile::TempDir,
}

impl SmallDisk {
    fn mount(bytes: usize) -> Option<Self> {
        let dir = tempfile::tempdir().ok()?;
        let mounted = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={bytes}"), "tmpfs"])
            .arg(dir.path())
            .output()
            .ok()?;
        if !mounted.status.success() {
            eprintln!(
                "skipped: cannot mount a tmpfs here ({}); run as root to test a full disk",
                String::from_utf8_lossy(&mounted.stderr).trim()
            );
            return None;
        }
        Some(Self { dir })
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Fills the filesystem with `filler` until a write fails.
    fn fill(&self) -> PathBuf {
        use std::io::Write;
        let filler = self.path().join("filler");
        let mut file = std::fs::File::create(&filler).expect("filler");
        let chunk = vec![0u8; 4096];
        while file.write_all(&chunk).is_ok() {}
        // Smaller pieces take what a partial page has left.
        while file.write_all(&chunk[..64]).is_ok() {}
        filler
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

async fn health(channel: Channel) -> ServingStatus {
    let status = HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: "triage.v1.Router".into(),
        })
        .await
        .expect("health answers")
        .into_inner()
        .status;
    ServingStatus::try_from(status).unwrap_or(ServingStatus::Unknown)
}

/// Polls `health` until it reports `want` (or fails after 20 s).
async fn wait_for_health(channel: &Channel, want: ServingStatus) {
    for _ in 0..200 {
        if health(channel.clone()).await == want {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("health never became {want:?}");
}

fn report(request_id: &str, id: &str, model: &str) -> FeedbackRequest {
    FeedbackRequest {
        request_id: request_id.into(),
        feedback_id: id.into(),
        model: model.into(),
        error: ErrorKind::ErrorRateLimited as i32,
        retry_after_ms: Some(60_000),
        ..Default::default()
    }
}

#[tokio::test]
async fn a_full_disk_stops_acknowledgements_and_the_log_recovers_when_space_returns() {
    let Some(disk) = SmallDisk::mount(1 << 20) else {
        return;
    };
    let mut s = settings();
    s.log.dir = disk.path().join("log");
    let (server, mut client) = start_with(s).await;
    let channel = Channel::from_shared(format!("http://{}", server.addr))
        .expect("uri")
        .connect()
        .await
        .expect("connects");
    assert_eq!(health(channel.clone()).await, ServingStatus::Serving);

    let filler = disk.fill();
    // Small records may still fit in a segment's last page: report until one is refused.
    let mut refused = None;
    let mut acknowledged = 0;
    for i in 0..500 {
        let routed = match client.route(request(FRANCE, Preferences::default())).await {
            Ok(r) => r.into_inner(),
            Err(status) => {
                assert_eq!(status.code(), Code::Unavailable, "{status:?}");
                break;
            }
        };
        let id = format!("f{i}");
        match client
            .feedback(report(&routed.request_id, &id, &routed.model))
            .await
        {
            Ok(_) => acknowledged += 1,
            Err(status) => {
                refused = Some((status, routed, id));
                break;
            }
        }
    }
    let (status, routed, id) = refused.expect("a full disk refuses acknowledgements");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(status.message().contains("retry"), "{status:?}");
    wait_for_health(&channel, ServingStatus::NotServing).await;
    let route = client
        .route(request(FRANCE, Preferences::default()))
        .await
        .expect_err("no decision is taken that cannot be logged");
    assert_eq!(route.code(), Code::Unavailable);

    // Room again: the writer retries, writes what it had queued, and health comes back.
    std::fs::remove_file(filler).expect("free the disk");
    wait_for_health(&channel, ServingStatus::Serving).await;
    // The refused report was either refused at the door (the stall was known) or queued and
    // written once the disk had room: its retry is stored once either way.
    client
        .feedback(report(&routed.request_id, &id, &routed.model))
        .await
        .expect("taken now");
    let again = client
        .feedback(report(&routed.request_id, &id, &routed.model))
        .await
        .expect("a retry")
        .into_inner();
    assert!(again.duplicate);
    // ... and applied: the rate limit opened the model's breaker.
    assert_eq!(
        common::model_health(&mut client, &routed.model)
            .await
            .as_deref(),
        Some("open")
    );
    let after = client
        .route(request(FRANCE, Preferences::default()))
        .await
        .expect("routes again")
        .into_inner();
    client
        .feedback(report(&after.request_id, "after", &after.model))
        .await
        .expect("acknowledged again");
    server.shutdown().await.expect("clean shutdown");

    // Every acknowledged report, the late one and the new one are in the log.
    let (records, _) = triage_log::read_log(&disk.path().join("log")).expect("reads");
    let reports = records
        .iter()
        .filter(|r| matches!(r, triage_log::LogRecord::Feedback(_)))
        .count();
    assert_eq!(reports, acknowledged + 2);
}
