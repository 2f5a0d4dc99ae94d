//! The server's metrics, in the OpenMetrics text format that Prometheus
//! scrapes, served over plain HTTP on a listener of their own.
//!
//! Counting is `prometheus-client`'s (the Prometheus project's own Rust
//! client: atomics, a lock per histogram, no further runtime). What exists
//! elsewhere already, the admission counters and the shutdown state, is
//! read at each scrape rather than counted twice. The HTTP side answers
//! `GET /metrics` and nothing else, so it is a few lines over tokio rather
//! than an HTTP framework.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use crate::admission::Admission;

/// The longest HTTP request head read, and the time it has to arrive.
const MAX_HEAD: usize = 8 * 1024;
const HEAD_TIMEOUT: Duration = Duration::from_secs(10);
/// Scrapes answered at once; more connections wait to be accepted.
const MAX_SCRAPES: usize = 16;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    verb: &'static str,
    code: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: &'static str,
}

/// The counters and gauges that connections, streams and requests update.
#[derive(Debug)]
pub(crate) struct Metrics {
    requests: Family<RequestLabels, Counter>,
    latency: Histogram,
    in_flight: Gauge,
    frames_refused: Counter,
    connections: Gauge,
    streams: Gauge,
    authentications: Family<ResultLabels, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            requests: Family::default(),
            // 100 µs to about 26 s.
            latency: Histogram::new(exponential_buckets(0.0001, 4.0, 10)),
            in_flight: Gauge::default(),
            frames_refused: Counter::default(),
            connections: Gauge::default(),
            streams: Gauge::default(),
            authentications: Family::default(),
        }
    }
}

/// Decrements a gauge when dropped: an open connection, stream or request.
pub(crate) struct Open(Gauge);

impl Drop for Open {
    fn drop(&mut self) {
        self.0.dec();
    }
}

impl Metrics {
    /// Counts an answered request. `verb` is `None` for a frame that was not
    /// a request at all (empty, oversized, malformed), which is a frame
    /// refused.
    pub(crate) fn answered(&self, verb: Option<korv_proto::Verb>, code: u16, elapsed: Duration) {
        let Some(verb) = verb else {
            self.frames_refused.inc();
            return;
        };
        self.requests
            .get_or_create(&RequestLabels {
                verb: verb.as_str(),
                code,
            })
            .inc();
        self.latency.observe(elapsed.as_secs_f64());
    }

    /// Counts an authentication accepted or refused (after the client
    /// proved it holds the key).
    pub(crate) fn authentication(&self, accepted: bool) {
        let result = if accepted { "accepted" } else { "refused" };
        self.authentications
            .get_or_create(&ResultLabels { result })
            .inc();
    }

    pub(crate) fn request_started(&self) -> Open {
        Self::open(&self.in_flight)
    }

    pub(crate) fn stream_opened(&self) -> Open {
        Self::open(&self.streams)
    }

    pub(crate) fn connection_opened(&self) -> Open {
        Self::open(&self.connections)
    }

    fn open(gauge: &Gauge) -> Open {
        gauge.inc();
        Open(gauge.clone())
    }

    /// A registry of these metrics plus the admission counters and the
    /// shutdown state, every series labelled `instance_name="NAME"` when
    /// the server has a name.
    pub(crate) fn registry(
        &self,
        name: Option<&str>,
        admission: Arc<Admission>,
        shutdown: CancellationToken,
    ) -> Registry {
        let labels = name
            .map(|name| ("instance_name".into(), name.to_owned().into()))
            .into_iter();
        let mut registry = Registry::with_prefix_and_labels("korv", labels);
        registry.register(
            "requests",
            "Requests answered, by verb and status code",
            self.requests.clone(),
        );
        registry.register(
            "request_duration_seconds",
            "Time from reading a request to its answer",
            self.latency.clone(),
        );
        registry.register(
            "requests_in_flight",
            "Requests whose handler is running",
            self.in_flight.clone(),
        );
        registry.register(
            "frames_refused",
            "Frames that were not a request (empty, oversized, malformed), answered 400 or 413",
            self.frames_refused.clone(),
        );
        registry.register(
            "connections_open",
            "SSH connections open",
            self.connections.clone(),
        );
        registry.register("streams_open", "Korv streams open", self.streams.clone());
        registry.register(
            "authentications",
            "Authentications after a verified signature, by result",
            self.authentications.clone(),
        );
        registry.register_collector(Box::new(AtScrape {
            admission,
            shutdown,
        }));
        registry
    }
}

/// What is read at each scrape: admission's counters and the shutdown state.
#[derive(Debug)]
struct AtScrape {
    admission: Arc<Admission>,
    shutdown: CancellationToken,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: &'static str,
}

impl Collector for AtScrape {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let stats = self.admission.stats();
        let refused = [
            ("connection_limit", stats.refused_connection_limit),
            ("penalised", stats.refused_penalised),
            ("per_source", stats.refused_per_source),
            ("full", stats.refused_full),
            ("evicted", stats.evicted),
        ];
        let counter = ConstCounter::new(0_u64);
        let mut family = encoder.encode_descriptor(
            "admission_refusals",
            "Connections closed before authentication by admission, by reason",
            None,
            counter.metric_type(),
        )?;
        for (reason, count) in refused {
            ConstCounter::new(count).encode(family.encode_family(&ReasonLabels { reason })?)?;
        }
        let unauthenticated =
            ConstGauge::new(i64::try_from(stats.unauthenticated).unwrap_or(i64::MAX));
        unauthenticated.encode(encoder.encode_descriptor(
            "unauthenticated_connections",
            "Connections holding an unauthenticated place",
            None,
            unauthenticated.metric_type(),
        )?)?;
        // The runtime the scrape is answered on is the server's.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let alive = runtime.metrics().num_alive_tasks();
            let tasks = ConstGauge::new(i64::try_from(alive).unwrap_or(i64::MAX));
            tasks.encode(encoder.encode_descriptor(
                "tokio_tasks_alive",
                "Tasks alive in the server's tokio runtime (connections, streams, handlers, timers)",
                None,
                tasks.metric_type(),
            )?)?;
        }
        let shutting_down = ConstGauge::new(i64::from(self.shutdown.is_cancelled()));
        shutting_down.encode(encoder.encode_descriptor(
            "shutting_down",
            "1 once a graceful shutdown has started: no new connections, 503 for new requests",
            None,
            shutting_down.metric_type(),
        )?)?;
        Ok(())
    }
}

/// The text of every metric in `registry`.
pub(crate) fn render(registry: &Registry) -> String {
    let mut text = String::new();
    // Writing to a String cannot fail.
    let _ = prometheus_client::encoding::text::encode(&mut text, registry);
    text
}

/// Serves `GET /metrics` on `tcp` until `stop` fires, [`MAX_SCRAPES`] at
/// a time.
pub(crate) async fn serve(tcp: TcpListener, registry: Arc<Registry>, stop: CancellationToken) {
    let scrapes = Arc::new(tokio::sync::Semaphore::new(MAX_SCRAPES));
    loop {
        let permit = tokio::select! {
            () = stop.cancelled() => return,
            permit = Arc::clone(&scrapes).acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => return,
            },
        };
        let socket = tokio::select! {
            () = stop.cancelled() => return,
            accepted = tcp.accept() => match accepted {
                Ok((socket, _)) => socket,
                Err(err) => {
                    tracing::warn!(%err, "metrics: accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let registry = Arc::clone(&registry);
        tokio::spawn(async move {
            if let Err(err) = answer(socket, &registry).await {
                tracing::debug!(%err, "metrics: request failed");
            }
            drop(permit);
        });
    }
}

/// Reads one HTTP request head and answers it, then closes.
async fn answer(mut socket: TcpStream, registry: &Registry) -> io::Result<()> {
    let mut head = Vec::with_capacity(1024);
    let read = async {
        let mut chunk = [0_u8; 1024];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
            if head.len() > MAX_HEAD {
                return Err(io::Error::other("request head too large"));
            }
            let n = socket.read(&mut chunk).await?;
            if n == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            head.extend_from_slice(&chunk[..n]);
        }
        Ok(())
    };
    tokio::time::timeout(HEAD_TIMEOUT, read)
        .await
        .map_err(|_| io::Error::from(io::ErrorKind::TimedOut))??;
    let line = head.split(|b| *b == b'\r').next().unwrap_or_default();
    let mut words = line.split(|b| *b == b' ');
    let (method, target) = (words.next(), words.next());
    let (status, content_type, body) = match (method, target) {
        (Some(b"GET"), Some(b"/metrics")) => (
            "200 OK",
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            render(registry),
        ),
        (Some(b"GET"), _) => ("404 Not Found", "text/plain", "GET /metrics\n".to_owned()),
        _ => (
            "405 Method Not Allowed",
            "text/plain",
            "GET /metrics\n".to_owned(),
        ),
    };
    let response = format!(
        "HTTP/1.1 {status}\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    socket.write_all(response.as_bytes()).await?;
    socket.shutdown().await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Limits;
    use korv_proto::Verb;

    #[test]
    fn counts_requests_by_verb_and_code_and_refused_frames_apart() {
        let metrics = Metrics::default();
        let elapsed = Duration::from_millis(3);
        metrics.answered(Some(Verb::Get), 200, elapsed);
        metrics.answered(Some(Verb::Get), 200, elapsed);
        metrics.answered(Some(Verb::Store), 404, elapsed);
        metrics.answered(None, 413, elapsed);
        metrics.authentication(true);
        metrics.authentication(false);
        metrics.authentication(false);
        let open = metrics.connection_opened();
        let _streams = (metrics.stream_opened(), metrics.stream_opened());
        let shutdown = CancellationToken::new();
        let registry = metrics.registry(
            Some("web-1"),
            Admission::new(&Limits::default()),
            shutdown.clone(),
        );
        let text = render(&registry);
        for line in [
            r#"korv_requests_total{instance_name="web-1",verb="GET",code="200"} 2"#,
            r#"korv_requests_total{instance_name="web-1",verb="STORE",code="404"} 1"#,
            r#"korv_request_duration_seconds_count{instance_name="web-1"} 3"#,
            r#"korv_frames_refused_total{instance_name="web-1"} 1"#,
            r#"korv_authentications_total{instance_name="web-1",result="accepted"} 1"#,
            r#"korv_authentications_total{instance_name="web-1",result="refused"} 2"#,
            r#"korv_connections_open{instance_name="web-1"} 1"#,
            r#"korv_streams_open{instance_name="web-1"} 2"#,
            r#"korv_admission_refusals_total{instance_name="web-1",reason="full"} 0"#,
            r#"korv_shutting_down{instance_name="web-1"} 0"#,
        ] {
            assert!(text.contains(line), "no {line} in\n{text}");
        }
        drop(open);
        shutdown.cancel();
        let text = render(&registry);
        assert!(
            text.contains(r#"korv_connections_open{instance_name="web-1"} 0"#),
            "{text}"
        );
        assert!(
            text.contains(r#"korv_shutting_down{instance_name="web-1"} 1"#),
            "{text}"
        );
    }

    #[tokio::test]
    async fn serves_get_metrics_and_nothing_else() {
        let metrics = Metrics::default();
        metrics.answered(Some(Verb::Get), 200, Duration::from_millis(1));
        let stop = CancellationToken::new();
        let registry = metrics.registry(None, Admission::new(&Limits::default()), stop.clone());
        let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = tcp.local_addr().unwrap();
        tokio::spawn(serve(tcp, Arc::new(registry), stop.clone()));
        let get = |request: &'static str| async move {
            let mut socket = TcpStream::connect(addr).await.unwrap();
            socket.write_all(request.as_bytes()).await.unwrap();
            let mut answer = String::new();
            socket.read_to_string(&mut answer).await.unwrap();
            answer
        };
        let answer = get("GET /metrics HTTP/1.1\r\nhost: x\r\n\r\n").await;
        assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
        assert!(
            answer.contains(r#"korv_requests_total{verb="GET",code="200"} 1"#),
            "{answer}"
        );
        assert!(answer.ends_with("# EOF\n"), "{answer}");
        // This test's runtime has at least the serving task alive.
        let tasks = answer
            .lines()
            .find_map(|l| l.strip_prefix("korv_tokio_tasks_alive "))
            .and_then(|n| n.parse::<u64>().ok());
        assert!(tasks.is_some_and(|n| n >= 1), "{answer}");
        let answer = get("GET /other HTTP/1.1\r\n\r\n").await;
        assert!(answer.starts_with("HTTP/1.1 404 "), "{answer}");
        let answer = get("POST /metrics HTTP/1.1\r\n\r\n").await;
        assert!(answer.starts_with("HTTP/1.1 405 "), "{answer}");
        stop.cancel();
    }
}
