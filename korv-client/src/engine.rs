//! [`Engine`]: a runtime for blocking clients, driven by the thread that
//! waits on it.
//!
//! A blocking call on a runtime with its own worker thread costs two thread
//! wake-ups per request: the caller wakes the worker to send, and the worker
//! wakes the caller with the answer. On a loaded machine each wake-up waits
//! for a CPU. An engine is a current-thread runtime instead: the caller's
//! thread runs the connection's tasks, writes the request and waits for the
//! answer in the kernel itself, the way a synchronous socket client does.
//!
//! The connection still needs a driver when no one waits on it: SSH
//! keepalives, window updates, work spawned for callbacks. A background
//! thread drives it then. It steps aside as soon as a caller arrives, and
//! takes over again once no caller has come for [`LINGER`], or at once when
//! work is spawned. A loop of blocking calls never wakes it.

use std::future::Future;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::runtime::{EnterGuard, Runtime};
use tokio::sync::Notify;

/// How long the background thread leaves the runtime to callers after the
/// last one returned: longer than a program's usual pause between two
/// calls, short enough that keepalives and spawned work barely wait.
pub const LINGER: Duration = Duration::from_millis(2);

/// A Tokio runtime driven by whichever thread blocks on it, and by a
/// background thread when none does. See the [module](self) docs.
pub struct Engine {
    runtime: Arc<Runtime>,
    shared: Arc<Shared>,
    driver: Option<JoinHandle<()>>,
}

struct Shared {
    state: Mutex<State>,
    /// Wakes the background thread while it waits to drive.
    changed: Condvar,
    /// Tells the background thread to leave the runtime to a caller.
    step_aside: Notify,
    linger: Duration,
}

struct State {
    /// Threads inside [`Engine::block_on`].
    callers: usize,
    /// Whether the background thread is inside the runtime.
    driving: bool,
    /// Work was spawned: the background thread drives without lingering.
    spawned: bool,
    last_call: Instant,
    closing: bool,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Engine {
    /// Starts an engine and its background thread, named `name`.
    ///
    /// # Errors
    /// When the runtime or the thread cannot start.
    pub fn new(name: &str) -> std::io::Result<Engine> {
        Engine::with_linger(name, LINGER)
    }

    /// An engine whose background thread waits `linger` after the last
    /// caller before it drives (for tests).
    ///
    /// # Errors
    /// As [`Engine::new`].
    pub fn with_linger(name: &str, linger: Duration) -> std::io::Result<Engine> {
        let runtime = Arc::new(
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?,
        );
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                callers: 0,
                driving: false,
                spawned: false,
                last_call: Instant::now(),
                closing: false,
            }),
            changed: Condvar::new(),
            step_aside: Notify::new(),
            linger,
        });
        let driver = std::thread::Builder::new().name(name.into()).spawn({
            let runtime = Arc::clone(&runtime);
            let shared = Arc::clone(&shared);
            move || drive(&runtime, &shared)
        })?;
        Ok(Engine {
            runtime,
            shared,
            driver: Some(driver),
        })
    }

    /// Runs `future` to completion on the calling thread, which drives the
    /// runtime (its I/O, timers and tasks) meanwhile. Several threads may
    /// block at once: one drives, the others wait for their own futures.
    ///
    /// # Panics
    /// When called from inside an async runtime, as Tokio's `block_on`.
    pub fn block_on<F: Future>(&self, future: F) -> F::Output {
        let _caller = Caller::enter(&self.shared);
        self.runtime.block_on(future)
    }

    /// Spawns `future` on the runtime; the background thread drives it
    /// unless a caller already does.
    pub fn spawn<F>(&self, future: F) -> tokio::task::JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        let task = self.runtime.spawn(future);
        let mut state = self.shared.lock();
        if !state.driving && !state.spawned {
            state.spawned = true;
            if state.callers == 0 {
                self.shared.changed.notify_one();
            }
        }
        task
    }

    /// Enters the runtime's context, for code that must be dropped or
    /// built inside it.
    pub fn enter(&self) -> EnterGuard<'_> {
        self.runtime.enter()
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        self.shared.lock().closing = true;
        self.shared.changed.notify_one();
        self.shared.step_aside.notify_one();
        let Some(driver) = self.driver.take() else {
            return;
        };
        if tokio::runtime::Handle::try_current().is_err() {
            // The driver runs no user code, so the join is short; the
            // runtime and the connection's socket are gone when it returns.
            let _ = driver.join();
            return;
        }
        // Inside an async context, this engine's own (a task held the last
        // reference) or another runtime's, neither a join nor dropping a
        // runtime is allowed: a thread of its own does both.
        let runtime = Arc::clone(&self.runtime);
        let _ = std::thread::Builder::new()
            .name("korv-engine-drop".into())
            .spawn(move || {
                let _ = driver.join();
                drop(runtime);
            });
    }
}

/// One thread inside [`Engine::block_on`]; the count drops even if the
/// future panics.
struct Caller<'a>(&'a Shared);

impl<'a> Caller<'a> {
    fn enter(shared: &'a Shared) -> Self {
        let mut state = shared.lock();
        state.callers += 1;
        if state.driving {
            shared.step_aside.notify_one();
        }
        Caller(shared)
    }
}

impl Drop for Caller<'_> {
    fn drop(&mut self) {
        let mut state = self.0.lock();
        state.callers -= 1;
        state.last_call = Instant::now();
        if state.callers == 0 && state.spawned {
            self.0.changed.notify_one();
        }
    }
}

/// The background thread: waits while callers drive or linger, drives
/// until a caller arrives, and again.
fn drive(runtime: &Runtime, shared: &Shared) {
    loop {
        let mut state = shared.lock();
        loop {
            if state.closing {
                return;
            }
            let wait = if state.callers > 0 {
                // A caller drives; look again after a linger.
                shared.linger
            } else {
                let idle = state.last_call.elapsed();
                if state.spawned || idle >= shared.linger {
                    break;
                }
                shared.linger - idle
            };
            state = shared
                .changed
                .wait_timeout(state, wait)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        state.spawned = false;
        state.driving = true;
        drop(state);
        runtime.block_on(shared.step_aside.notified());
        shared.lock().driving = false;
    }
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc::channel;
    use std::thread;

    use super::*;

    /// Bounds every wait of these tests; none is reached when they pass.
    const BOUND: Duration = Duration::from_secs(10);
    /// So long that the background thread never drives on its own.
    const FOREVER: Duration = Duration::from_secs(3600);
    const NAME: &str = "korv-test-engine";

    fn thread_name() -> Option<String> {
        thread::current().name().map(String::from)
    }

    #[test]
    fn a_blocked_caller_runs_the_runtime_s_tasks_on_its_own_thread() {
        let engine = Engine::with_linger(NAME, FOREVER).unwrap();
        let (go, gate) = tokio::sync::oneshot::channel::<()>();
        // Spawned through Tokio, so that nothing asks the background
        // thread to drive it.
        let task = {
            let _entered = engine.enter();
            tokio::spawn(async move {
                let _ = gate.await;
                thread::current().id()
            })
        };
        let ran_on = engine.block_on(async move {
            go.send(()).unwrap();
            task.await.unwrap()
        });
        assert_eq!(
            ran_on,
            thread::current().id(),
            "the task ran on another thread than the caller's"
        );
    }

    #[test]
    fn work_spawned_while_no_caller_waits_runs_on_the_background_thread() {
        let engine = Engine::with_linger(NAME, FOREVER).unwrap();
        let (tx, rx) = channel();
        engine.spawn(async move { tx.send(thread_name()).unwrap() });
        assert_eq!(
            rx.recv_timeout(BOUND).expect("the spawned task never ran"),
            Some(NAME.into())
        );
    }

    #[test]
    fn the_background_thread_drives_once_no_caller_came_for_a_linger() {
        let engine = Engine::with_linger(NAME, Duration::from_millis(5)).unwrap();
        let (tx, rx) = channel();
        let (go, gate) = tokio::sync::oneshot::channel::<()>();
        {
            let _entered = engine.enter();
            tokio::spawn(async move {
                let _ = gate.await;
                tx.send(thread_name()).unwrap();
            });
        }
        // A call, so that the linger counts from its end.
        engine.block_on(tokio::task::yield_now());
        // Woken while no thread is in the runtime, as data arriving on an
        // idle connection wakes its reader.
        go.send(()).unwrap();
        assert_eq!(
            rx.recv_timeout(BOUND)
                .expect("nothing drove the runtime after the caller left"),
            Some(NAME.into())
        );
    }

    #[test]
    fn callers_on_several_threads_each_get_their_own_answer() {
        const THREADS: usize = 4;
        const CALLS: usize = 500;
        let engine = Arc::new(Engine::new(NAME).unwrap());
        let (to_server, mut requests) =
            tokio::sync::mpsc::unbounded_channel::<(usize, tokio::sync::oneshot::Sender<usize>)>();
        engine.spawn(async move {
            while let Some((n, reply)) = requests.recv().await {
                let _ = reply.send(n * 2);
            }
        });
        let (done, finished) = channel();
        let callers: Vec<_> = (0..THREADS)
            .map(|t| {
                let engine = Arc::clone(&engine);
                let to_server = to_server.clone();
                let done = done.clone();
                thread::spawn(move || {
                    for call in 0..CALLS {
                        let n = t * CALLS + call;
                        let answer = engine.block_on(async {
                            let (reply, answer) = tokio::sync::oneshot::channel();
                            to_server.send((n, reply)).unwrap();
                            answer.await.unwrap()
                        });
                        assert_eq!(answer, n * 2, "call {n} got another call's answer");
                    }
                    done.send(()).unwrap();
                })
            })
            .collect();
        // Bounded: a caller left waiting for a driver fails the test.
        for _ in 0..THREADS {
            finished
                .recv_timeout(BOUND)
                .expect("a caller never got its answers");
        }
        for caller in callers {
            caller.join().unwrap();
        }
    }

    #[test]
    fn a_caller_whose_future_panics_leaves_the_engine_working() {
        let engine = Engine::with_linger(NAME, FOREVER).unwrap();
        let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            engine.block_on(async { panic!("a handler's bug") })
        }));
        assert!(panicked.is_err());
        let (tx, rx) = channel();
        engine.spawn(async move { tx.send(thread_name()).unwrap() });
        assert_eq!(
            rx.recv_timeout(BOUND)
                .expect("the panicked caller still counts as driving"),
            Some(NAME.into())
        );
    }

    /// Tells, when dropped, whether its thread was panicking.
    struct Witness(std::sync::mpsc::Sender<bool>);

    impl Drop for Witness {
        fn drop(&mut self) {
            let _ = self.0.send(thread::panicking());
        }
    }

    /// Drops `engine` through `drop_it` and checks that its runtime went
    /// with it, without a panic: a task that never ends is dropped.
    fn assert_runtime_dropped(engine: Arc<Engine>, drop_it: impl FnOnce(Arc<Engine>)) {
        let (tx, rx) = channel();
        let witness = Witness(tx);
        engine.spawn(async move {
            let _witness = witness;
            std::future::pending::<()>().await;
        });
        drop_it(engine);
        assert_eq!(
            rx.recv_timeout(BOUND),
            Ok(false),
            "the runtime outlived its engine (Timeout), or went in a panic (true)"
        );
    }

    #[test]
    fn an_engine_whose_last_reference_a_task_drops_closes_its_runtime() {
        let engine = Arc::new(Engine::new(NAME).unwrap());
        let (go, gate) = tokio::sync::oneshot::channel::<()>();
        let last = Arc::clone(&engine);
        let (dropped, returned) = channel();
        engine.spawn(async move {
            let _ = gate.await;
            drop(last);
            dropped.send(()).unwrap();
        });
        assert_runtime_dropped(engine, |engine| {
            drop(engine);
            go.send(()).unwrap();
            returned
                .recv_timeout(BOUND)
                .expect("dropping its engine panicked the task");
        });
    }

    #[tokio::test]
    async fn an_engine_dropped_inside_another_runtime_closes_its_runtime() {
        let engine = Arc::new(Engine::new(NAME).unwrap());
        assert_runtime_dropped(engine, drop);
    }
}
