//! Child processes for tests and tasks: killed when dropped, started with an
//! announced address, or awaited until they listen.

use std::io::{self, BufRead, BufReader};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A child process that is killed and reaped when dropped, so that a failing
/// test or task leaves no server behind.
#[derive(Debug)]
pub struct KillOnDrop(pub Child);

impl KillOnDrop {
    /// Starts `command`.
    ///
    /// # Errors
    /// The program cannot be started; the error names it.
    pub fn spawn(command: &mut Command) -> io::Result<KillOnDrop> {
        command.spawn().map(KillOnDrop).map_err(|err| {
            io::Error::new(
                err.kind(),
                format!("cannot start {:?}: {err}", command.get_program()),
            )
        })
    }

    /// The child's process id.
    pub fn id(&self) -> u32 {
        self.0.id()
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `command`, whose first line on stdout must be `prefix` followed by
/// what it announces (such as `listening 127.0.0.1:40123` with the prefix
/// `"listening "`), and returns the child with that text. The child is
/// killed if the line does not come or does not match.
///
/// # Errors
/// The program cannot be started, or its first line is missing or does not
/// start with `prefix`.
pub fn spawn_announcing(command: &mut Command, prefix: &str) -> io::Result<(KillOnDrop, String)> {
    let mut child = KillOnDrop::spawn(command.stdout(Stdio::piped()))?;
    let stdout = child
        .0
        .stdout
        .take()
        .ok_or_else(|| io::Error::other("no stdout"))?;
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line)?;
    let announced = line
        .trim_end()
        .strip_prefix(prefix)
        .ok_or_else(|| {
            io::Error::other(format!(
                "{:?} did not start: its first line is {line:?}",
                command.get_program()
            ))
        })?
        .to_owned();
    Ok((child, announced))
}

/// Starts `command`, a server told to listen on port 0, and reads its
/// stderr until a line says `marker` followed by the address it bound (such
/// as `korv: host listening on 127.0.0.1:40123 (store …)` with the marker
/// `"listening on "`); returns the child and that address. The port is the
/// server's from the start, so no other program can take it in between, as
/// it can one picked by [`free_port`](crate::net::free_port) beforehand.
///
/// A thread copies the rest of stderr to this process's stderr (a test's
/// captured output), so the child never blocks on a full pipe.
///
/// # Errors
/// The program cannot be started, it exits without naming its address, or
/// it names none within `within`.
pub fn spawn_listening(
    command: &mut Command,
    marker: &str,
    within: Duration,
) -> io::Result<(KillOnDrop, SocketAddr)> {
    let mut child = KillOnDrop::spawn(command.stderr(Stdio::piped()))?;
    let stderr = child
        .0
        .stderr
        .take()
        .ok_or_else(|| io::Error::other("no stderr"))?;
    let (found, address) = std::sync::mpsc::channel();
    let marker = marker.to_owned();
    std::thread::spawn(move || {
        let mut found = Some(found);
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            let bound = line
                .split_once(&marker)
                .and_then(|(_, rest)| rest.split_whitespace().next())
                .and_then(|addr| addr.parse::<SocketAddr>().ok());
            if let (Some(addr), Some(sender)) = (bound, &found) {
                let _ = sender.send(addr);
                found = None;
            }
            eprintln!("{line}");
        }
    });
    match address.recv_timeout(within) {
        Ok(addr) => Ok((child, addr)),
        Err(std::sync::mpsc::RecvTimeoutError::Timeout) => Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!(
                "{:?} named no address after {within:?}",
                command.get_program()
            ),
        )),
        Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
            let status = child.0.wait()?;
            Err(io::Error::other(format!(
                "{:?} exited ({status}) without naming the address it listens on",
                command.get_program()
            )))
        }
    }
}

/// Waits until something accepts TCP connections on 127.0.0.1:`port`, for a
/// `child` that does not say when it is ready. Polls every 10 ms; stops at
/// once if the child exits.
///
/// # Errors
/// The child exited, or nothing listened within `within`.
pub fn wait_until_listening(child: &mut Child, port: u16, within: Duration) -> io::Result<()> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let started = Instant::now();
    loop {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return Ok(());
        }
        if let Some(status) = child.try_wait()? {
            return Err(io::Error::other(format!(
                "the process exited ({status}) before listening on {addr}"
            )));
        }
        if started.elapsed() >= within {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("nothing listens on {addr} after {within:?}"),
            ));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}
