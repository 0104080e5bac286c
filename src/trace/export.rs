//! Sends finished spans to the collector over OTLP/HTTP (protobuf, `POST /v1/traces`) in
//! batches, from a bounded queue, on a task of its own. A request only ever `try_send`s into
//! the queue: a full queue drops the span (counted), so a slow or dead collector never slows
//! a request. A failed export drops its batch (counted) and logs once per outage.

use std::{sync::Arc, time::Duration};

use bytes::Bytes;
use http_body_util::Full;
use hyper_util::rt::TokioIo;
use prometheus::IntCounter;
use tokio::sync::mpsc;

use super::{otlp, Endpoint};

/// Spans sent in one request at most.
const MAX_BATCH: usize = 512;
/// How long a span waits for its batch to fill before the batch is sent anyway.
const BATCH_DELAY: Duration = Duration::from_secs(1);
/// Connecting and answering, per export request.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(5);

/// The counters of what became of spans.
#[derive(Debug, Clone)]
pub struct Counters {
    /// Spans the collector accepted.
    pub exported: IntCounter,
    /// Spans dropped because the queue was full.
    pub queue_full: IntCounter,
    /// Spans dropped because their export failed.
    pub export_failed: IntCounter,
}

/// Where the exporter sends and as whom; read at every batch, so a reload takes effect at the
/// next one.
pub type Destination = Arc<arc_swap::ArcSwapOption<(Endpoint, String)>>;

/// Takes batches of encoded spans off `queue` and posts them to the destination in force
/// until the queue closes.
pub async fn run(mut queue: mpsc::Receiver<Vec<u8>>, to: Destination, counters: Counters) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    let mut failing = false;
    loop {
        // Whatever is waiting, then more until the batch is full or its time is up.
        if queue.recv_many(&mut batch, MAX_BATCH).await == 0 {
            return;
        }
        let deadline = tokio::time::Instant::now() + BATCH_DELAY;
        while batch.len() < MAX_BATCH {
            let room = MAX_BATCH - batch.len();
            match tokio::time::timeout_at(deadline, queue.recv_many(&mut batch, room)).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
        let n = batch.len() as u64;
        let Some(dest) = to.load_full() else {
            // Tracing was turned off by a reload: what was queued goes nowhere.
            counters.export_failed.inc_by(n);
            batch.clear();
            continue;
        };
        let (endpoint, service) = &*dest;
        let body = otlp::export_request(service, &batch);
        batch.clear();
        match tokio::time::timeout(EXPORT_TIMEOUT, post(endpoint, body)).await {
            Ok(Ok(())) => {
                counters.exported.inc_by(n);
                if failing {
                    tracing::info!(endpoint = %endpoint, "trace export recovered");
                    failing = false;
                }
            }
            outcome => {
                counters.export_failed.inc_by(n);
                if !failing {
                    let error = match outcome {
                        Ok(Err(e)) => e,
                        _ => "timed out".to_owned(),
                    };
                    tracing::warn!(endpoint = %endpoint, error, "trace export failed; spans are dropped until it recovers");
                    failing = true;
                }
            }
        }
    }
}

/// One export request on a new connection (a batch a second at most: not worth pooling).
async fn post(endpoint: &Endpoint, body: Vec<u8>) -> Result<(), String> {
    let stream = tokio::net::TcpStream::connect((endpoint.host.as_str(), endpoint.port))
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let _ = stream.set_nodelay(true);
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let req = http::Request::post(&endpoint.path)
        .header(http::header::HOST, endpoint.authority())
        .header(http::header::CONTENT_TYPE, "application/x-protobuf")
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| e.to_string())?;
    let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
    if resp.status().is_success() {
        Ok(())
    } else {
        Err(format!("collector answered {}", resp.status()))
    }
}
