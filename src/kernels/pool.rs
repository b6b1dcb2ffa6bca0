//! The worker threads a model computes with. A decode step is ~150 parallel products and loops
//! of 10-500 µs each with short serial work between them; a pool whose idle workers sleep pays a
//! futex wake-up and a context switch at most of those hand-offs (rayon's did: ~55 switches per
//! token, 7 % of the step idle at 2 threads). Here the calling thread takes part in every job and
//! idle workers spin for `SPIN` before they sleep, so a job reaches them within a cache-line
//! transfer while work keeps coming, and an idle pool costs nothing.
//!
//! Jobs are index ranges: `for_each_index(n, f)` runs `f(0..n)` across the pool, each index
//! once, in no fixed order. Work runs on the pool that `Pool::install` made current on the
//! calling thread; with none current (or from inside a job) it runs serially on the caller, so
//! every function here is also correct, and deterministic, without a pool.

use std::cell::{Cell, RefCell, UnsafeCell};
use std::panic::{self, AssertUnwindSafe};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

/// How long an idle worker spins before it sleeps: longer than the gaps inside a decode step
/// and between tokens (sampling, detokenising), short enough not to hold a core once the
/// application stops generating.
const SPIN: Duration = Duration::from_millis(2);

fn nothing(_: usize) {}

/// A job as the workers see it: the task function with its lifetime erased (see `run`).
#[derive(Clone, Copy)]
struct Job {
    f: *const (dyn Fn(usize) + Sync + 'static),
    n: usize,
}

struct Shared {
    workers: usize,
    /// One job at a time: several sessions of one model may compute from several threads.
    dispatch: Mutex<()>,
    /// Written by the dispatcher (holding `dispatch`) before `epoch` moves on, read by workers
    /// after they see it move; never written while a worker may read it (`run` waits for
    /// `pending` to reach 0 first).
    job: UnsafeCell<Job>,
    epoch: AtomicU64,
    next: AtomicUsize,
    /// Workers that have not finished the current job.
    pending: AtomicUsize,
    panicked: AtomicBool,
    sleepers: AtomicUsize,
    sleep: Mutex<()>,
    wake: Condvar,
    stop: AtomicBool,
}

// SAFETY: every field but `job` is Sync; `job` is only written under `dispatch` while no worker
// reads it (the protocol above), and the function it points to is Sync.
unsafe impl Sync for Shared {}
// SAFETY: as above; the raw pointer in `job` is only dereferenced under that protocol.
unsafe impl Send for Shared {}

thread_local! {
    static CURRENT: RefCell<Option<Arc<Shared>>> = const { RefCell::new(None) };
    /// Set while this thread runs a task: nested parallel calls run serially.
    static IN_TASK: Cell<bool> = const { Cell::new(false) };
}

/// `n_threads` threads: the caller of each job and `n_threads - 1` workers.
pub struct Pool {
    shared: Arc<Shared>,
    handles: Vec<JoinHandle<()>>,
}

impl Pool {
    /// Starts `n_threads - 1` worker threads; 0 = one thread per available core.
    pub fn new(n_threads: usize) -> std::io::Result<Pool> {
        let n_threads = match n_threads {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        };
        let workers = n_threads - 1;
        let shared = Arc::new(Shared {
            workers,
            dispatch: Mutex::new(()),
            job: UnsafeCell::new(Job { f: &nothing, n: 0 }),
            epoch: AtomicU64::new(0),
            next: AtomicUsize::new(0),
            pending: AtomicUsize::new(0),
            panicked: AtomicBool::new(false),
            sleepers: AtomicUsize::new(0),
            sleep: Mutex::new(()),
            wake: Condvar::new(),
            stop: AtomicBool::new(false),
        });
        let mut pool = Pool {
            shared,
            handles: Vec::with_capacity(workers),
        };
        for i in 0..workers {
            let shared = pool.shared.clone();
            // A failed spawn drops `pool`, which stops the workers already started.
            let handle = std::thread::Builder::new()
                .name(format!("bit-ttt-{}", i + 1))
                .spawn(move || worker(&shared))?;
            pool.handles.push(handle);
        }
        Ok(pool)
    }

    /// Threads that compute a job, the caller's included.
    pub fn n_threads(&self) -> usize {
        self.shared.workers + 1
    }

    /// Runs `f` on this thread with this pool current: the parallel functions of this module
    /// called inside spread their work over the pool.
    pub fn install<R>(&self, f: impl FnOnce() -> R) -> R {
        struct Restore(Option<Arc<Shared>>);
        impl Drop for Restore {
            fn drop(&mut self) {
                CURRENT.with(|c| *c.borrow_mut() = self.0.take());
            }
        }
        let _restore = Restore(CURRENT.with(|c| c.replace(Some(self.shared.clone()))));
        f()
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        {
            let _sleep = self.shared.sleep.lock();
            self.shared.wake.notify_all();
        }
        for h in self.handles.drain(..) {
            let _ = h.join();
        }
    }
}

/// Threads the current pool computes with (1 without one, or inside a task).
pub fn current_num_threads() -> usize {
    current().map_or(1, |s| s.workers + 1)
}

/// How many of `n` items to give each task: about four tasks per thread (so that threads that
/// finish early take more), within `min..=max`.
pub fn per_task(n: usize, min: usize, max: usize) -> usize {
    (n / (4 * current_num_threads())).clamp(min, max)
}

/// How many of `n` items to give each task so that every thread of the current pool gets one
/// contiguous share: for products that stream their rows from memory once, where one long run
/// per thread lets the hardware prefetcher follow (the ternary decode product; the output
/// heads' tasks of 4,096 rows, 5 MB, are long runs already and did not move).
pub fn share(n: usize) -> usize {
    n.div_ceil(current_num_threads())
}

fn current() -> Option<Arc<Shared>> {
    if IN_TASK.with(Cell::get) {
        return None;
    }
    CURRENT.with(|c| c.borrow().clone())
}

/// Runs `f(i)` for every i in `0..n`, across the current pool.
pub fn for_each_index(n: usize, f: impl Fn(usize) + Sync) {
    match current() {
        Some(s) if n > 1 && s.workers > 0 => run(&s, n, &f),
        _ => (0..n).for_each(f),
    }
}

/// Runs `f` on every item, across the current pool.
pub fn for_each<T: Send>(items: Vec<T>, f: impl Fn(T) + Sync) {
    let slots: Vec<Mutex<Option<T>>> = items.into_iter().map(|t| Mutex::new(Some(t))).collect();
    for_each_index(slots.len(), |i| {
        if let Some(t) = slots[i].lock().take() {
            f(t)
        }
    });
}

/// `items.map(f)` across the current pool, results in the items' order.
pub fn map<T: Send, R: Send>(items: Vec<T>, f: impl Fn(T) -> R + Sync) -> Vec<R> {
    let slots: Vec<Mutex<(Option<T>, Option<R>)>> = items
        .into_iter()
        .map(|t| Mutex::new((Some(t), None)))
        .collect();
    for_each_index(slots.len(), |i| {
        let item = slots[i].lock().0.take();
        if let Some(t) = item {
            let r = f(t);
            slots[i].lock().1 = Some(r);
        }
    });
    slots
        .into_iter()
        .map(|s| s.into_inner().1.expect("every task ran"))
        .collect()
}

/// `f(i, chunk)` for the i-th chunk of `chunk` elements of `data` (the last may be shorter),
/// across the current pool.
pub fn chunks_mut<T: Send>(data: &mut [T], chunk: usize, f: impl Fn(usize, &mut [T]) + Sync) {
    for_each(
        data.chunks_mut(chunk.max(1)).enumerate().collect(),
        |(i, c)| f(i, c),
    );
}

fn run_tasks(s: &Shared, job: Job) {
    IN_TASK.with(|t| t.set(true));
    let ran = panic::catch_unwind(AssertUnwindSafe(|| {
        loop {
            let i = s.next.fetch_add(1, Ordering::Relaxed);
            if i >= job.n || s.panicked.load(Ordering::Relaxed) {
                break;
            }
            // SAFETY: `job.f` points to the function of the job being run, which `run` keeps
            // alive until every worker has left this loop (`pending` reaches 0).
            unsafe { (*job.f)(i) };
        }
    }));
    IN_TASK.with(|t| t.set(false));
    if ran.is_err() {
        s.panicked.store(true, Ordering::SeqCst);
    }
}

fn run(s: &Shared, n: usize, f: &(dyn Fn(usize) + Sync)) {
    let _one_job = s.dispatch.lock();
    // SAFETY: only the lifetime is erased. The workers call `f` only between seeing this job's
    // epoch and decrementing `pending`, and this function does not return (nor unwind) before
    // `pending` is 0, so `f` outlives every use.
    let f: *const (dyn Fn(usize) + Sync + 'static) = unsafe { std::mem::transmute(f) };
    // SAFETY: `dispatch` is held and the previous job's workers are all done (`pending` was 0
    // when it returned), so no thread reads `job` now.
    unsafe { *s.job.get() = Job { f, n } };
    s.next.store(0, Ordering::Relaxed);
    s.panicked.store(false, Ordering::Relaxed);
    s.pending.store(s.workers, Ordering::Relaxed);
    s.epoch.fetch_add(1, Ordering::SeqCst);
    if s.sleepers.load(Ordering::SeqCst) > 0 {
        let _sleep = s.sleep.lock();
        s.wake.notify_all();
    }
    run_tasks(s, Job { f, n });
    let mut spins = 0u32;
    while s.pending.load(Ordering::Acquire) != 0 {
        spins = spins.wrapping_add(1);
        if spins.is_multiple_of(64) {
            // A worker may have lost its core (more threads than cores): let it run.
            std::thread::yield_now();
        } else {
            std::hint::spin_loop();
        }
    }
    if s.panicked.load(Ordering::SeqCst) {
        panic!("a task of a parallel job panicked");
    }
}

fn worker(s: &Shared) {
    let mut seen = 0u64;
    while let Some(epoch) = next_epoch(s, seen) {
        seen = epoch;
        // SAFETY: read after seeing the epoch it belongs to (Acquire pairs with the SeqCst
        // increment that followed the write); not written again before `pending` reaches 0.
        let job = unsafe { *s.job.get() };
        run_tasks(s, job);
        s.pending.fetch_sub(1, Ordering::Release);
    }
}

/// Waits for a job after `seen`: spins for `SPIN`, then sleeps. None once the pool stops.
fn next_epoch(s: &Shared, seen: u64) -> Option<u64> {
    let start = Instant::now();
    let mut spins = 0u32;
    loop {
        let e = s.epoch.load(Ordering::Acquire);
        if e != seen {
            return Some(e);
        }
        if s.stop.load(Ordering::Relaxed) {
            return None;
        }
        spins = spins.wrapping_add(1);
        if !spins.is_multiple_of(64) {
            std::hint::spin_loop();
            continue;
        }
        if start.elapsed() < SPIN {
            std::thread::yield_now();
            continue;
        }
        let mut guard = s.sleep.lock();
        s.sleepers.fetch_add(1, Ordering::SeqCst);
        // Checked under the lock that `run` takes to notify: a job dispatched after this check
        // finds `sleepers` > 0 and waits for this thread to sleep before it notifies.
        while s.epoch.load(Ordering::SeqCst) == seen && !s.stop.load(Ordering::SeqCst) {
            s.wake.wait(&mut guard);
        }
        s.sleepers.fetch_sub(1, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_index_runs_once_on_every_pool_size() {
        for threads in [1, 2, 3, 5] {
            let pool = Pool::new(threads).unwrap();
            assert_eq!(pool.n_threads(), threads);
            for n in [0, 1, 2, 7, 100, 1000] {
                let hits: Vec<AtomicUsize> = (0..n).map(|_| AtomicUsize::new(0)).collect();
                pool.install(|| {
                    assert_eq!(current_num_threads(), threads);
                    for_each_index(n, |i| {
                        hits[i].fetch_add(1, Ordering::Relaxed);
                    })
                });
                assert!(
                    hits.iter().all(|h| h.load(Ordering::Relaxed) == 1),
                    "{threads} {n}"
                );
            }
        }
    }

    #[test]
    fn map_keeps_order_and_chunks_cover_the_slice() {
        let pool = Pool::new(3).unwrap();
        pool.install(|| {
            let squares = map((0..500u64).collect(), |x| x * x);
            assert_eq!(squares, (0..500u64).map(|x| x * x).collect::<Vec<_>>());
            let mut v = vec![0usize; 1001];
            chunks_mut(&mut v, 10, |i, c| c.iter_mut().for_each(|x| *x += i + 1));
            assert!(v.iter().enumerate().all(|(j, &x)| x == j / 10 + 1));
        });
    }

    #[test]
    fn without_a_pool_and_when_nested_work_runs_serially() {
        assert_eq!(current_num_threads(), 1);
        let pool = Pool::new(2).unwrap();
        let sum = AtomicUsize::new(0);
        pool.install(|| {
            for_each_index(8, |_| {
                assert_eq!(current_num_threads(), 1);
                for_each_index(8, |j| {
                    sum.fetch_add(j, Ordering::Relaxed);
                });
            })
        });
        assert_eq!(sum.load(Ordering::Relaxed), 8 * 28);
        assert_eq!(
            current_num_threads(),
            1,
            "install restores the previous pool"
        );
    }

    #[test]
    fn a_panicking_task_reaches_the_caller_and_the_pool_still_works() {
        let pool = Pool::new(2).unwrap();
        let r = panic::catch_unwind(AssertUnwindSafe(|| {
            pool.install(|| for_each_index(64, |i| assert!(i != 40, "task 40")))
        }));
        assert!(r.is_err());
        let count = AtomicUsize::new(0);
        pool.install(|| {
            for_each_index(64, |_| {
                count.fetch_add(1, Ordering::Relaxed);
            })
        });
        assert_eq!(count.load(Ordering::Relaxed), 64);
    }

    #[test]
    fn jobs_from_several_threads_and_after_the_workers_sleep() {
        let pool = Pool::new(2).unwrap();
        let total = AtomicUsize::new(0);
        std::thread::scope(|sc| {
            for _ in 0..3 {
                sc.spawn(|| {
                    pool.install(|| {
                        for _ in 0..200 {
                            for_each_index(10, |i| {
                                total.fetch_add(i, Ordering::Relaxed);
                            });
                        }
                    })
                });
            }
        });
        assert_eq!(total.load(Ordering::Relaxed), 3 * 200 * 45);
        std::thread::sleep(SPIN * 3);
        pool.install(|| {
            for_each_index(10, |i| {
                total.fetch_add(i, Ordering::Relaxed);
            })
        });
        assert_eq!(total.load(Ordering::Relaxed), 3 * 200 * 45 + 45);
    }
}
