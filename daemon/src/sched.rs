//! The backend scheduler: long-lived worker threads run every request's blocking work (device
//! calls, registry writes), fed from one queue per uid served round-robin.
//!
//! * **Fair**: a worker that comes free takes the next job of the next uid in turn, so a uid that
//!   floods the daemon delays another uid's request by at most one job per worker, whatever the
//!   length of its own queue.
//! * **Bounded**: at most `scheduler.max_queued` jobs wait in all, and `scheduler.max_queued_per_uid`
//!   for one uid; beyond that a request is refused `busy` at once.
//! * **Deadlines**: every job carries its request's deadline. A job still queued at its deadline
//!   is answered "timed out" without running; a running job has the deadline as its thread's
//!   ([`crate::backend::deadline`]), so a device call after it is refused before it reaches the
//!   device. A job whose caller went away (connection closed) is dropped unrun.
//!
//! * **Whole requests**: a request's whole handling (arguments, authorization, backend work,
//!   result, audit line, response write) runs on one worker ([`Scheduler::submit_work`]), so it
//!   costs no thread hand-over beyond the queue: no runtime task per request, no wake-up back to
//!   the runtime, and a fixed set of threads. Work a request hands over again
//!   ([`Scheduler::submit`]) runs in place when it is already on a worker ([`on_worker`]).
//! * **Per-uid budget** ([`Scheduler::enter`]): before a request is decoded, its uid must have
//!   room in a budget counted in KiB of request frames, so one uid's flood of large frames on
//!   many connections cannot fill the runtime's threads with decoding and encoding either.
//!
//! Compared with a `spawn_blocking` per request and a timeout that abandoned the task but not
//! the work, timed-out work no longer reaches the device and one uid cannot starve another.

use std::collections::{HashMap, VecDeque};
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::Instant;

use tokio::sync::oneshot;

use crate::backend::deadline;

/// Why a job did not produce an answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refused {
    /// The queue (total, or this uid's) is full.
    Full,
    /// Still queued at its deadline: not run.
    Expired,
    /// The scheduler is shutting down.
    Closed,
}

/// Counters of the scheduler, reported by `status`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SchedStats {
    /// Worker threads.
    pub workers: usize,
    /// Jobs waiting now.
    pub queued: usize,
    /// Jobs running now.
    pub running: usize,
    /// Jobs started since start.
    pub started: u64,
    /// Jobs answered "timed out" without running (queued past their deadline).
    pub expired: u64,
    /// Jobs dropped unrun because their caller had gone.
    pub abandoned: u64,
    /// Jobs refused because a queue was full.
    pub rejected: u64,
    /// Device calls refused because the request's deadline passed while its job ran.
    pub late_refused: u64,
}

/// How often queued work is checked for a passed deadline (besides when a worker takes it).
const EXPIRY_SWEEP: std::time::Duration = std::time::Duration::from_millis(250);

/// Bounds and threads.
#[derive(Clone, Copy, Debug)]
pub struct SchedConfig {
    /// Worker threads.
    pub workers: usize,
    /// Most jobs waiting in all.
    pub max_queued: usize,
    /// Most jobs waiting for one uid.
    pub max_queued_per_uid: usize,
    /// Budget of one uid's requests between frame read and answer written, in KiB of request
    /// frame (each request counts 1 + its frame's size in KiB).
    pub uid_budget_kib: u32,
}

/// Work queued on the scheduler.
pub trait Work: Send {
    /// Runs the work and delivers its answer.
    fn run(self: Box<Self>);
    /// Delivers the refusal without running: the queue was full or closed, or the work was
    /// still queued at its deadline ([`Refused::Expired`]).
    fn refuse(self: Box<Self>, why: Refused);
    /// True when nobody waits for the answer any more: dropped unrun ([`Work::discard`]).
    fn abandoned(&self) -> bool;
    /// Drops abandoned work (wiping what it holds, if anything).
    fn discard(self: Box<Self>) {}
}

thread_local! {
    static ON_WORKER: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// True on a scheduler worker thread: work that would be queued can run right here, in the
/// slot this thread already holds.
pub fn on_worker() -> bool {
    ON_WORKER.with(std::cell::Cell::get)
}

struct Call<T, F> {
    f: F,
    tx: oneshot::Sender<Result<T, Refused>>,
}

impl<T: Send, F: FnOnce() -> T + Send> Work for Call<T, F> {
    fn run(self: Box<Self>) {
        let Call { f, tx } = *self;
        let _ = tx.send(Ok(f()));
    }
    fn refuse(self: Box<Self>, why: Refused) {
        let _ = self.tx.send(Err(why));
    }
    fn abandoned(&self) -> bool {
        self.tx.is_closed()
    }
}

struct Job {
    deadline: Instant,
    task: Box<dyn Work>,
}

#[derive(Default)]
struct Queues {
    by_uid: HashMap<u32, VecDeque<Job>>,
    /// Uids with waiting jobs, in the order they will be served.
    turn: VecDeque<u32>,
    queued: usize,
    /// Jobs running now: never more than the worker count.
    busy: usize,
    /// Workers waiting for a job: a new job wakes one only if there is one (a wake-up is a
    /// system call).
    idle: usize,
    closed: bool,
}

impl Queues {
    fn pop(&mut self) -> Option<Job> {
        while let Some(uid) = self.turn.pop_front() {
            let Some(q) = self.by_uid.get_mut(&uid) else {
                continue;
            };
            let job = q.pop_front();
            if q.is_empty() {
                self.by_uid.remove(&uid);
            } else {
                self.turn.push_back(uid);
            }
            if job.is_some() {
                self.queued -= 1;
                return job;
            }
        }
        None
    }
}

#[derive(Default)]
struct Counters {
    running: AtomicUsize,
    started: AtomicU64,
    expired: AtomicU64,
    abandoned: AtomicU64,
    rejected: AtomicU64,
}

struct Inner {
    cfg: SchedConfig,
    queues: Mutex<Queues>,
    ready: Condvar,
    counters: Counters,
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, Queues> {
        self.queues.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn work(&self) {
        let mut q = self.lock();
        loop {
            if q.busy < self.cfg.workers {
                if let Some(job) = q.pop() {
                    q.busy += 1;
                    drop(q);
                    self.run_job(job);
                    q = self.lock();
                    // This thread takes the next job itself: nobody to wake.
                    q.busy -= 1;
                    continue;
                }
            }
            if q.closed {
                return;
            }
            q.idle += 1;
            q = self.ready.wait(q).unwrap_or_else(PoisonError::into_inner);
            q.idle -= 1;
        }
    }

    /// Refuses work still queued at its deadline; a panic there leaves the thread alive.
    fn expire(&self, task: Box<dyn Work>) {
        self.counters.expired.fetch_add(1, Ordering::Relaxed);
        let _ = std::panic::catch_unwind(AssertUnwindSafe(|| task.refuse(Refused::Expired)));
    }

    /// Takes every queued job whose deadline has passed out of the queues and refuses it, so a
    /// request is answered at its deadline even while every worker is stuck in a device call
    /// that does not return.
    fn expire_overdue(&self) {
        let now = Instant::now();
        let overdue: Vec<Job> = {
            let mut q = self.lock();
            if q.queued == 0 {
                return;
            }
            let mut out = Vec::new();
            for jobs in q.by_uid.values_mut() {
                let (late, keep): (VecDeque<Job>, VecDeque<Job>) =
                    jobs.drain(..).partition(|j| now >= j.deadline);
                *jobs = keep;
                out.extend(late);
            }
            q.by_uid.retain(|_, jobs| !jobs.is_empty());
            let Queues { by_uid, turn, .. } = &mut *q;
            turn.retain(|uid| by_uid.contains_key(uid));
            q.queued -= out.len();
            out
        };
        for job in overdue {
            self.expire(job.task);
        }
    }

    fn run_job(&self, job: Job) {
        {
            let c = &self.counters;
            if job.task.abandoned() {
                c.abandoned.fetch_add(1, Ordering::Relaxed);
                job.task.discard();
                return;
            }
            if Instant::now() >= job.deadline {
                self.expire(job.task);
                return;
            }
            c.started.fetch_add(1, Ordering::Relaxed);
            c.running.fetch_add(1, Ordering::Relaxed);
            let task = job.task;
            // A panicking job drops its answer channel (its caller sees `internal`); the worker
            // thread lives on.
            let _ = std::panic::catch_unwind(AssertUnwindSafe(|| {
                deadline::with(job.deadline, || task.run())
            }));
            c.running.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

/// The scheduler: worker threads and the per-uid queues.
pub struct Scheduler {
    inner: Arc<Inner>,
    active: Mutex<HashMap<u32, Arc<tokio::sync::Semaphore>>>,
}

/// A uid's place among its requests being decoded, run or answered ([`Scheduler::enter`]).
pub type Active = tokio::sync::OwnedSemaphorePermit;

impl Scheduler {
    /// Starts `cfg.workers` threads (at least one).
    pub fn start(cfg: SchedConfig) -> std::io::Result<Scheduler> {
        let cfg = SchedConfig {
            workers: cfg.workers.max(1),
            max_queued: cfg.max_queued.max(1),
            max_queued_per_uid: cfg.max_queued_per_uid.max(1),
            uid_budget_kib: cfg.uid_budget_kib.max(1),
        };
        let inner = Arc::new(Inner {
            cfg,
            queues: Mutex::new(Queues::default()),
            ready: Condvar::new(),
            counters: Counters::default(),
        });
        // Answers queued requests at their deadline even when no worker comes free.
        let weak = Arc::downgrade(&inner);
        std::thread::Builder::new()
            .name("custodyd-expiry".into())
            .spawn(move || loop {
                std::thread::sleep(EXPIRY_SWEEP);
                match weak.upgrade() {
                    Some(inner) if !inner.lock().closed => inner.expire_overdue(),
                    _ => return,
                }
            })?;
        for i in 0..cfg.workers {
            let inner = inner.clone();
            std::thread::Builder::new()
                .name(format!("custodyd-worker-{i}"))
                .spawn(move || {
                    ON_WORKER.with(|w| w.set(true));
                    inner.work()
                })?;
        }
        Ok(Scheduler {
            inner,
            active: Mutex::new(HashMap::new()),
        })
    }

    /// Queues `f` for `uid`, to start before `deadline`; the answer arrives on the receiver:
    /// `Err(Expired)` if it did not start in time, a closed channel if it panicked.
    pub fn submit<T, F>(
        &self,
        uid: u32,
        deadline: Instant,
        f: F,
    ) -> Result<oneshot::Receiver<Result<T, Refused>>, Refused>
    where
        T: Send + 'static,
        F: FnOnce() -> T + Send + 'static,
    {
        let (tx, rx) = oneshot::channel();
        self.submit_work(uid, deadline, Box::new(Call { f, tx }))?;
        Ok(rx)
    }

    /// Queues `work` for `uid`, to start before `deadline` (else it is refused
    /// [`Refused::Expired`]). A refusal now (queue full, shutting down) is delivered to `work`
    /// ([`Work::refuse`]) before this returns it.
    pub fn submit_work(
        &self,
        uid: u32,
        deadline: Instant,
        work: Box<dyn Work>,
    ) -> Result<(), Refused> {
        let wake = {
            let mut q = self.inner.lock();
            let cfg = &self.inner.cfg;
            let mine = q.by_uid.get(&uid).map_or(0, VecDeque::len);
            let refused = if q.closed {
                Some(Refused::Closed)
            } else if q.queued >= cfg.max_queued || mine >= cfg.max_queued_per_uid {
                Some(Refused::Full)
            } else {
                None
            };
            if let Some(why) = refused {
                drop(q);
                if why == Refused::Full {
                    self.inner.counters.rejected.fetch_add(1, Ordering::Relaxed);
                }
                work.refuse(why);
                return Err(why);
            }
            if mine == 0 {
                q.turn.push_back(uid);
            }
            q.by_uid.entry(uid).or_default().push_back(Job {
                deadline,
                task: work,
            });
            q.queued += 1;
            q.idle > 0
        };
        if wake {
            self.inner.ready.notify_one();
        }
        Ok(())
    }

    /// Waits until `uid`'s requests in progress (from frame read to answer written, over all
    /// its connections) leave room for one of `frame_len` bytes in its budget
    /// (`uid_budget_kib`; a request counts 1 + its size in KiB, at most the whole budget), and
    /// takes that room until the returned permit drops. Decoding, running and encoding cost
    /// about in proportion to the bytes, so one uid's flood of large frames occupies at most its
    /// budget's worth of the runtime's threads, however many connections it uses, while small
    /// requests (a pipelined `ping`) are hardly limited. None when shutting down.
    pub async fn enter(&self, uid: u32, frame_len: usize) -> Option<Active> {
        let budget = self.inner.cfg.uid_budget_kib;
        let sem = {
            let mut m = self.active.lock().unwrap_or_else(PoisonError::into_inner);
            m.entry(uid)
                .or_insert_with(|| Arc::new(tokio::sync::Semaphore::new(budget as usize)))
                .clone()
        };
        let units = u32::try_from(1 + frame_len / 1024)
            .unwrap_or(u32::MAX)
            .min(budget);
        sem.acquire_many_owned(units).await.ok()
    }

    /// The counters now.
    pub fn stats(&self) -> SchedStats {
        let c = &self.inner.counters;
        SchedStats {
            workers: self.inner.cfg.workers,
            queued: self.inner.lock().queued,
            running: c.running.load(Ordering::Relaxed),
            started: c.started.load(Ordering::Relaxed),
            expired: c.expired.load(Ordering::Relaxed),
            abandoned: c.abandoned.load(Ordering::Relaxed),
            rejected: c.rejected.load(Ordering::Relaxed),
            late_refused: deadline::refused(),
        }
    }
}

impl Drop for Scheduler {
    /// Stops the workers once the queue is empty; jobs running now finish (not waited for).
    fn drop(&mut self) {
        self.inner.lock().closed = true;
        self.inner.ready.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;
    use std::time::Duration;

    fn sched(workers: usize, max_queued: usize, per_uid: usize) -> Scheduler {
        Scheduler::start(SchedConfig {
            workers,
            max_queued,
            max_queued_per_uid: per_uid,
            uid_budget_kib: 4096,
        })
        .unwrap()
    }

    fn later() -> Instant {
        Instant::now() + Duration::from_secs(60)
    }

    /// Holds a worker in a job of uid 0 until the sender sends; the receiver answers once that
    /// job has ended.
    fn hold_worker(s: &Scheduler) -> (mpsc::Sender<()>, oneshot::Receiver<Result<(), Refused>>) {
        let (gate_tx, gate_rx) = mpsc::channel::<()>();
        let held = s
            .submit(0, later(), move || gate_rx.recv().unwrap())
            .unwrap();
        (gate_tx, held)
    }

    /// One worker, held busy; uid 1 queues ten jobs, then uid 2 one: uid 2's runs second.
    #[test]
    fn uids_are_served_in_turn() {
        let s = sched(1, 100, 100);
        let (gate_tx, hold) = hold_worker(&s);
        let order = Arc::new(Mutex::new(Vec::new()));
        let mut rxs = Vec::new();
        for i in 0..10 {
            let o = order.clone();
            rxs.push(
                s.submit(1, later(), move || o.lock().unwrap().push((1, i)))
                    .unwrap(),
            );
        }
        let o = order.clone();
        rxs.push(
            s.submit(2, later(), move || o.lock().unwrap().push((2, 0)))
                .unwrap(),
        );
        gate_tx.send(()).unwrap();
        hold.blocking_recv().unwrap().unwrap();
        for rx in rxs {
            rx.blocking_recv().unwrap().unwrap();
        }
        let order = order.lock().unwrap();
        assert_eq!(order[0], (1, 0));
        assert_eq!(order[1], (2, 0), "{order:?}");
        assert_eq!(order.len(), 11);
    }

    /// A job still queued at its deadline is answered `Expired` and never runs; a full queue
    /// refuses at once.
    #[test]
    fn expired_jobs_do_not_run_and_queues_are_bounded() {
        let s = sched(1, 100, 2);
        let (gate_tx, hold) = hold_worker(&s);
        let ran = Arc::new(AtomicU64::new(0));
        let r = ran.clone();
        let soon = Instant::now() + Duration::from_millis(20);
        let expiring = s
            .submit(7, soon, move || r.fetch_add(1, Ordering::SeqCst))
            .unwrap();
        let r = ran.clone();
        let _second = s.submit(7, later(), move || r.fetch_add(1, Ordering::SeqCst));
        let third = s.submit(7, later(), || 0);
        assert_eq!(third.err(), Some(Refused::Full));
        std::thread::sleep(Duration::from_millis(50));
        gate_tx.send(()).unwrap();
        hold.blocking_recv().unwrap().unwrap();
        assert_eq!(expiring.blocking_recv().unwrap(), Err(Refused::Expired));
        let st = s.stats();
        assert_eq!((st.expired, st.rejected), (1, 1), "{st:?}");
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(ran.load(Ordering::SeqCst), 1, "only the second job ran");
    }

    /// With the only worker stuck, a queued job is still answered `Expired` at its deadline
    /// (within a sweep), and the stuck job's uid queue is left consistent.
    #[test]
    fn queued_jobs_expire_while_every_worker_is_stuck() {
        let s = sched(1, 100, 100);
        let (gate_tx, hold) = hold_worker(&s);
        std::thread::sleep(Duration::from_millis(20));
        let soon = Instant::now() + Duration::from_millis(50);
        let expiring = s.submit(5, soon, || ()).unwrap();
        let waiting = s.submit(6, later(), || 6).unwrap();
        // The worker comes free after 3 s whatever happens, so a failure cannot hang.
        let release = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_secs(3));
            gate_tx.send(()).unwrap();
        });
        let answered = expiring.blocking_recv().unwrap();
        assert_eq!(answered, Err(Refused::Expired));
        assert!(
            Instant::now() < soon + Duration::from_secs(2),
            "answered only after the worker came free"
        );
        assert_eq!(s.stats().queued, 1);
        release.join().unwrap();
        hold.blocking_recv().unwrap().unwrap();
        assert_eq!(waiting.blocking_recv().unwrap(), Ok(6));
        assert_eq!(s.stats().expired, 1);
    }

    /// The running job sees its deadline; a caller that went away gets its job dropped.
    #[test]
    fn running_jobs_carry_their_deadline_and_abandoned_jobs_are_dropped() {
        let s = sched(1, 100, 100);
        let d = later();
        let seen = s.submit(3, d, deadline::current).unwrap();
        assert_eq!(seen.blocking_recv().unwrap(), Ok(Some(d)));
        let (gate_tx, hold) = hold_worker(&s);
        let ran = Arc::new(AtomicU64::new(0));
        let r = ran.clone();
        drop(s.submit(4, later(), move || r.fetch_add(1, Ordering::SeqCst)));
        gate_tx.send(()).unwrap();
        hold.blocking_recv().unwrap().unwrap();
        let st = s.submit(0, later(), || ()).unwrap();
        st.blocking_recv().unwrap().unwrap();
        assert_eq!(ran.load(Ordering::SeqCst), 0);
        assert_eq!(s.stats().abandoned, 1);
    }
}
