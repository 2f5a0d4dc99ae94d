//! Which thread of a pool runs which job, and when a thread is added: the
//! pool's bookkeeping, apart from Python (the `pool` module runs its threads
//! attached to Python), so that it can be tested on its own.
//!
//! A [`Pool`] starts threads on demand, up to a maximum; each runs the
//! `worker` function the pool was made with, which loops:
//!
//! ```text
//! loop {
//!     while let Some(job) = pool.next_job() { run(job) }
//!     if !pool.wait_for_work() { break }
//! }
//! ```
//!
//! Jobs go to threads that are already draining the queue whenever there is
//! one: a thread between jobs, or in one, takes the next job itself before
//! it waits again. Under load one thread runs burst after burst, and a job
//! costs no thread wake-up. Only when no thread is draining is an idle
//! thread woken (or a new one started).
//!
//! A job that blocks (a callback sleeping, reading a file) must not hold up
//! the jobs behind it: a watchdog thread looks at the queue every [`STALL`]
//! while threads are draining, and when jobs waited a whole `STALL` without
//! any being taken it puts one more thread on them, while the pool has
//! room. A blocked job thus delays the others by at most about two
//! `STALL`s, and a burst of blocking jobs gets a thread each within about
//! two `STALL`s per job.
//!
//! A thread idle for [`KEEP_ALIVE`] ends, down to one: threads the
//! watchdog added for a blocking burst do not stay for the pool's life.
//!
//! No job runs, and no job is dropped, under the pool's lock.

use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// How long queued jobs may go untaken while threads are draining before
/// the watchdog adds a thread.
pub(crate) const STALL: Duration = Duration::from_millis(1);

/// How long a thread waits for work before it ends, unless it is the
/// pool's last.
pub(crate) const KEEP_ALIVE: Duration = Duration::from_secs(10);

/// A pool of threads running jobs of type `J`. Cheap to clone; clones share
/// the threads.
pub(crate) struct Pool<J> {
    shared: Arc<Shared<J>>,
}

impl<J> Clone for Pool<J> {
    fn clone(&self) -> Self {
        Pool {
            shared: Arc::clone(&self.shared),
        }
    }
}

struct Shared<J> {
    /// Thread names are `{name}-{n}`, and `{name}-watchdog`.
    name: &'static str,
    max_threads: usize,
    /// What each thread runs.
    worker: fn(Pool<J>),
    state: Mutex<State<J>>,
    /// Idle threads wait here for a wake-up.
    work: Condvar,
    /// The watchdog waits here while no thread is draining.
    watch: Condvar,
    /// How long an idle thread lives ([`KEEP_ALIVE`]; shorter in tests).
    keep_alive: Duration,
}

struct State<J> {
    queue: VecDeque<J>,
    /// Threads waiting for work, or about to: they looked at an empty
    /// queue and will wait for a wake-up unless one came meanwhile.
    idle: usize,
    /// Threads that take jobs from the queue before they wait again:
    /// between jobs or in one, or woken (or started) for that.
    draining: usize,
    /// Wake-ups sent to idle threads and not yet taken by one. A thread
    /// woken is counted both idle and draining until it takes its wake-up,
    /// so `threads == idle + draining - wakeups` at all times.
    wakeups: usize,
    /// Threads started and not yet finished.
    threads: usize,
    /// Threads ever started, for their names.
    started: usize,
    /// Jobs ever taken from the queue: the watchdog's sign of progress.
    taken: u64,
    /// Whether the watchdog thread was started.
    watchdog: bool,
    /// Whether the watchdog is looking at the queue every `STALL` (else it
    /// waits for a `submit` to ask it to).
    watching: bool,
    closed: bool,
}

/// A snapshot of a pool's bookkeeping, for tests.
#[cfg(test)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Counts {
    queued: usize,
    idle: usize,
    draining: usize,
    wakeups: usize,
    threads: usize,
    started: usize,
}

impl<J: Send + 'static> Pool<J> {
    /// A pool of at most `max_threads` threads (at least one), none started
    /// yet, each running `worker`.
    pub(crate) fn new(name: &'static str, max_threads: usize, worker: fn(Pool<J>)) -> Self {
        Self::with_keep_alive(name, max_threads, worker, KEEP_ALIVE)
    }

    fn with_keep_alive(
        name: &'static str,
        max_threads: usize,
        worker: fn(Pool<J>),
        keep_alive: Duration,
    ) -> Self {
        Pool {
            shared: Arc::new(Shared {
                name,
                max_threads: max_threads.max(1),
                worker,
                state: Mutex::new(State {
                    queue: VecDeque::new(),
                    idle: 0,
                    draining: 0,
                    wakeups: 0,
                    threads: 0,
                    started: 0,
                    taken: 0,
                    watchdog: false,
                    watching: false,
                    closed: false,
                }),
                work: Condvar::new(),
                watch: Condvar::new(),
                keep_alive,
            }),
        }
    }

    /// Queues `job`. Returns it back when the pool is closed, or when no
    /// thread can be started and none is running.
    pub(crate) fn submit(&self, job: J) -> Result<(), J> {
        let mut state = self.lock();
        if state.closed {
            return Err(job);
        }
        state.queue.push_back(job);
        if state.draining > 0 {
            // A draining thread takes it; the watchdog makes sure that the
            // thread is not stuck in a job meanwhile.
            if self.shared.max_threads > 1 && !state.watching {
                state.watching = true;
                let start = !state.watchdog;
                state.watchdog = true;
                drop(state);
                if start {
                    self.start_watchdog();
                } else {
                    self.shared.watch.notify_one();
                }
            }
            return Ok(());
        }
        if self.add_drainer(&mut state) {
            return Ok(());
        }
        // No thread is draining, so every thread is idle (and `add_drainer`
        // woke one) unless there is none: none could be started.
        if state.threads == 0
            && let Some(job) = state.queue.pop_back()
        {
            return Err(job);
        }
        Ok(())
    }

    /// Refuses new jobs and lets every thread finish once the queue is empty.
    /// Jobs already running are not interrupted.
    pub(crate) fn close(&self) {
        self.lock().closed = true;
        self.shared.work.notify_all();
        self.shared.watch.notify_all();
    }

    /// For a pool thread: the next job, or `None` when the queue is empty.
    /// The thread then stops draining and counts as idle, in the same step,
    /// so that a job queued after it looked wakes a thread (this one,
    /// maybe, before it even waits); it must call `wait_for_work` next.
    pub(crate) fn next_job(&self) -> Option<J> {
        let mut state = self.lock();
        match state.queue.pop_front() {
            Some(job) => {
                state.taken += 1;
                Some(job)
            }
            None => {
                state.draining -= 1;
                state.idle += 1;
                None
            }
        }
    }

    /// For a pool thread that `next_job` left idle: waits for a wake-up and
    /// returns true (the thread drains again), or false once the pool is
    /// closed and its queue empty (the thread must then end).
    pub(crate) fn wait_for_work(&self) -> bool {
        let mut state = self.lock();
        let mut idle_since = Instant::now();
        loop {
            if state.wakeups > 0 {
                // `add_drainer` counted this thread as draining.
                state.wakeups -= 1;
                state.idle -= 1;
                return true;
            }
            if state.closed {
                state.idle -= 1;
                if state.queue.is_empty() {
                    state.threads -= 1;
                    return false;
                }
                // Closing wakes every thread to finish the queue.
                state.draining += 1;
                return true;
            }
            let idle_for = idle_since.elapsed();
            if idle_for >= self.shared.keep_alive {
                if state.threads > 1 {
                    state.idle -= 1;
                    state.threads -= 1;
                    return false;
                }
                // The last thread stays.
                idle_since = Instant::now();
                continue;
            }
            state = self
                .shared
                .work
                .wait_timeout(state, self.shared.keep_alive - idle_for)
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .0;
        }
    }

    /// The bookkeeping as it stands.
    #[cfg(test)]
    fn counts(&self) -> Counts {
        let state = self.lock();
        Counts {
            queued: state.queue.len(),
            idle: state.idle,
            draining: state.draining,
            wakeups: state.wakeups,
            threads: state.threads,
            started: state.started,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State<J>> {
        // No job runs under this lock, so a poisoned lock only means a
        // panic between two plain field updates: the state is still usable.
        self.shared
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Puts one more thread on the queue: wakes an idle one, or starts one
    /// while the pool has room. Returns whether it did.
    fn add_drainer(&self, state: &mut State<J>) -> bool {
        if state.idle > state.wakeups {
            state.draining += 1;
            state.wakeups += 1;
            self.shared.work.notify_one();
            return true;
        }
        if state.threads >= self.shared.max_threads {
            return false;
        }
        state.draining += 1;
        state.threads += 1;
        state.started += 1;
        let worker = self.shared.worker;
        let pool = self.clone();
        let spawned = std::thread::Builder::new()
            .name(format!("{}-{}", self.shared.name, state.started))
            .spawn(move || worker(pool));
        if spawned.is_err() {
            state.draining -= 1;
            state.threads -= 1;
            return false;
        }
        true
    }

    fn start_watchdog(&self) {
        let pool = self.clone();
        let spawned = std::thread::Builder::new()
            .name(format!("{}-watchdog", self.shared.name))
            .spawn(move || pool.watchdog());
        if spawned.is_err() {
            // Without a watchdog a blocked job holds up the ones behind it
            // until it returns; the pool still works.
            let mut state = self.lock();
            state.watchdog = false;
            state.watching = false;
        }
    }

    /// The watchdog thread: while threads are draining, every `STALL` it
    /// checks that a job was taken since the last look whenever jobs were
    /// waiting all along, and otherwise puts one more thread on them.
    fn watchdog(self) {
        let mut state = self.lock();
        loop {
            if state.closed {
                return;
            }
            if !state.watching {
                state = self
                    .shared
                    .watch
                    .wait(state)
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                continue;
            }
            let waiting = !state.queue.is_empty();
            let taken = state.taken;
            state = self
                .shared
                .watch
                .wait_timeout(state, STALL)
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .0;
            if waiting && !state.queue.is_empty() && state.taken == taken {
                // Every draining thread is stuck in a job (or waiting for
                // something another thread holds, such as the GIL).
                self.add_drainer(&mut state);
            }
            if state.draining == 0 {
                state.watching = false;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::panic::AssertUnwindSafe;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::mpsc;
    use std::time::{Duration, Instant};

    use super::{Counts, Pool};

    type Job = Box<dyn FnOnce() + Send>;

    /// What the Python pool's threads do, without Python.
    fn worker(pool: Pool<Job>) {
        loop {
            while let Some(job) = pool.next_job() {
                let _ = std::panic::catch_unwind(AssertUnwindSafe(job));
            }
            if !pool.wait_for_work() {
                break;
            }
        }
    }

    const LIMIT: Duration = Duration::from_secs(20);

    fn submit(pool: &Pool<Job>, job: impl FnOnce() + Send + 'static) {
        assert!(pool.submit(Box::new(job)).is_ok());
    }

    /// Polls the bookkeeping until `settled` holds, for at most `LIMIT`.
    fn wait_until(pool: &Pool<Job>, settled: impl Fn(&Counts) -> bool) -> Counts {
        let deadline = Instant::now() + LIMIT;
        loop {
            let counts = pool.counts();
            if settled(&counts) {
                return counts;
            }
            assert!(Instant::now() < deadline, "never settled: {counts:?}");
            std::thread::yield_now();
        }
    }

    /// Every thread parked, nothing queued or in flight.
    fn parked(counts: &Counts) -> bool {
        counts.queued == 0
            && counts.draining == 0
            && counts.wakeups == 0
            && counts.idle == counts.threads
    }

    /// A job that says on `entered` that it runs, then blocks until the
    /// returned sender sends or is dropped (at most `LIMIT`).
    fn blocker(entered: &mpsc::Sender<()>) -> (mpsc::Sender<()>, impl FnOnce() + Send + 'static) {
        let (release, released) = mpsc::channel::<()>();
        let entered = entered.clone();
        let job = move || {
            entered.send(()).unwrap();
            let _ = released.recv_timeout(LIMIT);
        };
        (release, job)
    }

    #[test]
    fn a_job_submitted_as_the_only_thread_goes_idle_is_always_run() {
        // Each job is queued while the thread that ran the last one is on
        // its way from the empty queue to its wait: a lost wake-up leaves a
        // job queued with nobody to run it.
        for max_threads in [1, 2, 4] {
            let pool = Pool::new("test-race", max_threads, worker);
            let (done, finished) = mpsc::channel();
            for n in 0..5_000 {
                let done = done.clone();
                submit(&pool, move || done.send(n).unwrap());
                assert_eq!(finished.recv_timeout(LIMIT), Ok(n));
            }
            pool.close();
        }
    }

    #[test]
    fn a_job_submitted_when_every_thread_is_parked_at_the_maximum_is_run() {
        let max_threads = 3;
        let pool = Pool::new("test-parked", max_threads, worker);
        // Jobs that block until all of them run: each needs a thread of its
        // own, so the pool must grow to its maximum.
        let (entered, running) = mpsc::channel();
        let mut releases = Vec::new();
        for _ in 0..max_threads {
            let (release, blocked) = blocker(&entered);
            releases.push(release);
            submit(&pool, blocked);
        }
        for _ in 0..max_threads {
            running.recv_timeout(LIMIT).unwrap();
        }
        drop(releases);
        let (done, finished) = mpsc::channel();
        for n in 0..200 {
            let counts = wait_until(&pool, parked);
            assert_eq!(counts.threads, max_threads);
            let done = done.clone();
            submit(&pool, move || done.send(n).unwrap());
            assert_eq!(finished.recv_timeout(LIMIT), Ok(n));
        }
        assert_eq!(pool.counts().started, max_threads);
        pool.close();
    }

    #[test]
    fn a_blocked_job_holds_up_no_job_behind_it() {
        let pool = Pool::new("test-blocked", 4, worker);
        let (entered, running) = mpsc::channel();
        let (release, blocked) = blocker(&entered);
        submit(&pool, blocked);
        running.recv_timeout(LIMIT).unwrap();
        // The thread draining the queue is stuck: the watchdog must put
        // another on the jobs behind it.
        let (done, finished) = mpsc::channel();
        for n in 0..10 {
            let done = done.clone();
            submit(&pool, move || done.send(n).unwrap());
        }
        for n in 0..10 {
            assert_eq!(finished.recv_timeout(LIMIT), Ok(n));
        }
        release.send(()).unwrap();
        wait_until(&pool, parked);
        pool.close();
    }

    #[test]
    fn a_pool_at_its_maximum_runs_the_queue_as_its_threads_free_up() {
        let pool = Pool::new("test-full", 2, worker);
        let (entered, running) = mpsc::channel();
        let (release_a, a) = blocker(&entered);
        let (release_b, b) = blocker(&entered);
        submit(&pool, a);
        running.recv_timeout(LIMIT).unwrap();
        submit(&pool, b);
        running.recv_timeout(LIMIT).unwrap();
        let (done, finished) = mpsc::channel();
        submit(&pool, move || done.send("c").unwrap());
        let counts = pool.counts();
        assert_eq!((counts.threads, counts.queued), (2, 1), "{counts:?}");
        release_a.send(()).unwrap();
        assert_eq!(finished.recv_timeout(LIMIT), Ok("c"));
        release_b.send(()).unwrap();
        let counts = wait_until(&pool, parked);
        assert_eq!(counts.started, 2);
        pool.close();
    }

    #[test]
    fn closing_refuses_new_jobs_runs_the_queued_ones_and_ends_every_thread() {
        let pool = Pool::new("test-close", 1, worker);
        let (entered, running) = mpsc::channel();
        let (release, blocked) = blocker(&entered);
        submit(&pool, blocked);
        running.recv_timeout(LIMIT).unwrap();
        let (done, finished) = mpsc::channel();
        for n in 0..3 {
            let done = done.clone();
            submit(&pool, move || done.send(n).unwrap());
        }
        pool.close();
        assert!(pool.submit(Box::new(|| ())).is_err());
        release.send(()).unwrap();
        for n in 0..3 {
            assert_eq!(finished.recv_timeout(LIMIT), Ok(n));
        }
        wait_until(&pool, |counts| counts.threads == 0);
    }

    #[test]
    fn closing_an_idle_pool_ends_its_parked_threads() {
        let pool = Pool::new("test-close-idle", 2, worker);
        let (done, finished) = mpsc::channel();
        submit(&pool, move || done.send(()).unwrap());
        finished.recv_timeout(LIMIT).unwrap();
        wait_until(&pool, parked);
        pool.close();
        wait_until(&pool, |counts| counts.threads == 0);
    }

    #[test]
    fn a_panicking_job_leaves_the_pool_working() {
        let pool = Pool::new("test-panic", 1, worker);
        submit(&pool, || panic!("a job that panics"));
        let (done, finished) = mpsc::channel();
        submit(&pool, move || done.send(()).unwrap());
        finished.recv_timeout(LIMIT).unwrap();
        let counts = wait_until(&pool, parked);
        assert_eq!(counts.threads, 1);
        pool.close();
    }

    #[test]
    fn threads_idle_for_their_keep_alive_end_but_the_last() {
        let keep_alive = Duration::from_millis(20);
        let pool = Pool::with_keep_alive("test-keep-alive", 3, worker, keep_alive);
        let (entered, running) = mpsc::channel();
        let mut releases = Vec::new();
        for _ in 0..3 {
            let (release, blocked) = blocker(&entered);
            releases.push(release);
            submit(&pool, blocked);
        }
        for _ in 0..3 {
            running.recv_timeout(LIMIT).unwrap();
        }
        assert_eq!(pool.counts().threads, 3);
        drop(releases);
        let counts = wait_until(&pool, |counts| counts.threads == 1 && parked(counts));
        assert_eq!(counts.idle, 1);
        // The one left still serves.
        let (done, finished) = mpsc::channel();
        submit(&pool, move || done.send(()).unwrap());
        finished.recv_timeout(LIMIT).unwrap();
        pool.close();
        wait_until(&pool, |counts| counts.threads == 0);
    }

    #[test]
    fn jobs_from_many_threads_at_once_all_run_and_the_books_balance() {
        let pool = Pool::new("test-many", 3, worker);
        let ran = Arc::new(AtomicUsize::new(0));
        let submitters = 4;
        let each = 5_000;
        let (done, finished) = mpsc::channel();
        std::thread::scope(|scope| {
            for _ in 0..submitters {
                let pool = pool.clone();
                let ran = Arc::clone(&ran);
                let done = done.clone();
                scope.spawn(move || {
                    for _ in 0..each {
                        let ran = Arc::clone(&ran);
                        let done = done.clone();
                        submit(&pool, move || {
                            ran.fetch_add(1, Ordering::Relaxed);
                            done.send(()).unwrap();
                        });
                    }
                });
            }
        });
        for _ in 0..submitters * each {
            finished.recv_timeout(LIMIT).unwrap();
        }
        assert_eq!(ran.load(Ordering::Relaxed), submitters * each);
        let counts = wait_until(&pool, parked);
        assert!(counts.threads <= 3, "{counts:?}");
        pool.close();
        wait_until(&pool, |counts| counts.threads == 0);
    }
}
