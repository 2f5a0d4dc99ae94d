//! Every limit of the server, in one place, with its default.

use std::time::Duration;

use crate::ipnet::IpNet;

/// The server's limits. Every field has a documented default ([`Limits::default`]);
/// change any of them with struct update syntax:
///
/// ```
/// use std::time::Duration;
/// use korv_server::Limits;
/// let limits = Limits { request_timeout: Duration::from_secs(5), ..Limits::default() };
/// assert_eq!(limits.max_frame, 8 * 1024 * 1024);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Largest frame payload read or written, in bytes. Default 8 MiB. A larger
    /// request frame is answered `413` and skipped; a larger response becomes a
    /// `500` "response too large".
    pub max_frame: usize,
    /// Requests of one stream that run at once. Default 128. Beyond it the
    /// server stops reading the stream (SSH flow control) until one finishes.
    /// Answers not yet written are bounded apart: at 8 × `max_frame` bytes
    /// waiting for a client that does not read them, the stream is closed.
    pub max_in_flight_per_stream: usize,
    /// Watches (`WATCH`, protocol 1.1) one stream may hold at once. Default
    /// 64. Beyond it a `WATCH` is answered `429`. Watches do not count
    /// against `max_in_flight_per_stream` nor the request timeout.
    pub max_watches_per_stream: usize,
    /// Frames of one watch handed to the stream's writer and not yet
    /// written, at most. Default 1024 (and 1 MiB beyond the first frame).
    /// A watch whose client does not read fast enough to keep within it
    /// ends with `503` after the frames already queued.
    pub watch_queue: usize,
    /// Streams (channels) one SSH connection may hold open. Default 16. Beyond
    /// it channel opens are refused with "resource shortage".
    pub max_streams_per_connection: usize,
    /// SSH connections served at once. Default 1024. Beyond it a new TCP
    /// connection is closed at once, before the SSH handshake.
    pub max_connections: usize,
    /// Connections that have not yet authenticated, at once. Default 64 (like
    /// OpenSSH's `MaxStartups`). When they are all taken, a new connection
    /// takes the place of the oldest one that has not sent its SSH version
    /// (or of one from a source holding more places than the newcomer's),
    /// never one of its own source's; when there is none, it is closed at once.
    pub max_unauthenticated: usize,
    /// Unauthenticated connections one source may hold at once. Default 8.
    /// A source is an IPv4 address, or an IPv6 /64 network (what one host
    /// usually gets). Beyond it, that source's new connections are closed at
    /// once. Sources in `exempt_networks` have no per-source limit; setting
    /// it to `max_unauthenticated` turns it off for all.
    pub max_unauthenticated_per_source: usize,
    /// Time a connection has to send its SSH version line. Default 10 s
    /// (clients send it as soon as they connect); the authentication
    /// deadline applies too, whichever is shorter. A connection that has not
    /// sent its version then is closed.
    pub version_timeout: Duration,
    /// Time a connection has to authenticate. Default 30 s (like OpenSSH's
    /// `LoginGraceTime`). A connection still unauthenticated then is closed.
    pub auth_timeout: Duration,
    /// The unit of penalty for a source whose connection ends without
    /// authenticating (never sends its version, fails to authenticate,
    /// passes a deadline). Default 2 s; zero turns penalties off. Each such
    /// connection adds one unit to the source's debt, which drains in real
    /// time; once the debt exceeds 3 × `penalty_base` (or reaches
    /// `penalty_max`, if that is less), the source's new connections are
    /// refused until it has drained. Each penalty doubles the source's unit;
    /// it halves back for each `penalty_max` without offence.
    /// A successful authentication clears the source's debt (not a penalty
    /// already running).
    pub penalty_base: Duration,
    /// The longest penalty. Default 10 minutes.
    pub penalty_max: Duration,
    /// Networks with neither per-source limit nor penalties (their
    /// connections still count towards `max_unauthenticated`). Default
    /// loopback, `127.0.0.0/8` and `::1`: when a local relay forwards every
    /// client, they all come from loopback and are not one source.
    pub exempt_networks: Vec<IpNet>,
    /// Authentication attempts per connection. Default 6 (OpenSSH's `MaxAuthTries`).
    pub max_auth_attempts: usize,
    /// Time a handler has to answer. Default 30 s. Past it the request is
    /// answered `504` and the handler is cancelled.
    pub request_timeout: Duration,
    /// A connection with no traffic for this long is closed. Default 10 minutes;
    /// `None` keeps idle connections forever.
    pub idle_timeout: Option<Duration>,
    /// Interval of SSH keepalive probes to the client. Default 30 s; `None`
    /// sends none.
    pub keepalive_interval: Option<Duration>,
    /// Keepalive probes left unanswered before the connection is dropped.
    /// Default 3.
    pub keepalive_max: usize,
    /// On shutdown, time in-flight requests get to finish. Default 10 s; the
    /// ones still running then are answered `503`.
    pub shutdown_grace: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_frame: korv_proto::DEFAULT_MAX_FRAME,
            max_in_flight_per_stream: 128,
            max_watches_per_stream: 64,
            watch_queue: 1024,
            max_streams_per_connection: 16,
            max_connections: 1024,
            max_unauthenticated: 64,
            max_unauthenticated_per_source: 8,
            version_timeout: Duration::from_secs(10),
            auth_timeout: Duration::from_secs(30),
            penalty_base: Duration::from_secs(2),
            penalty_max: Duration::from_secs(600),
            exempt_networks: vec![IpNet::LOOPBACK_V4, IpNet::LOOPBACK_V6],
            max_auth_attempts: 6,
            request_timeout: Duration::from_secs(30),
            idle_timeout: Some(Duration::from_secs(600)),
            keepalive_interval: Some(Duration::from_secs(30)),
            keepalive_max: 3,
            shutdown_grace: Duration::from_secs(10),
        }
    }
}
