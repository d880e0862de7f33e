//! The worker team the forward pass runs on, and process-level memory hygiene.
//!
//! A decode step issues over a hundred parallel regions (one per fused mat-mul), each a
//! few tens of microseconds long. Waking sleeping threads for each would cost as much as
//! the work, so workers spin on an epoch counter between regions and only go to sleep
//! after [`SPIN_TIME`] without work. The calling thread is worker 0: a team of `n`
//! threads starts `n − 1`.
//!
//! Parallel code does not take the pool as an argument: [`Pool::install`] makes it the
//! current pool of the calling thread, and [`for_each_mut`] uses the current pool (or
//! runs sequentially when there is none, or when called from inside a parallel region).

use std::cell::Cell;
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How long an idle worker polls for work before sleeping.
pub const SPIN_TIME: Duration = Duration::from_millis(1);
/// Busy-wait iterations before a waiting thread starts yielding its core, so that an
/// oversubscribed machine (several processes, or tests in parallel) still makes progress.
const BUSY_SPINS: u32 = 2000;

/// One step of waiting: busy first, then yielding to other threads.
#[inline]
fn pause(spins: u32) {
    if spins < BUSY_SPINS {
        std::hint::spin_loop();
    } else {
        std::thread::yield_now();
    }
}

/// One parallel region: every thread calls `f(thread_index)`.
struct Job<'a> {
    f: &'a (dyn Fn(usize) + Sync),
}

struct Shared {
    /// Bumped to publish a job.
    epoch: AtomicU64,
    /// The current job (on the publishing thread's stack; valid until `pending` is 0).
    job: AtomicPtr<Job<'static>>,
    /// Workers that have not finished the current job.
    pending: AtomicUsize,
    /// A worker's job panicked.
    panicked: AtomicBool,
    sleepers: AtomicUsize,
    lock: Mutex<()>,
    wake: Condvar,
    quit: AtomicBool,
}

/// A worker team. It has one job slot, so it must never run two regions at once: it is
/// `Send` (an engine thread may own it) but not `Sync`, so only the thread holding it can
/// start a region, and a region started inside a region runs inline.
pub struct Pool {
    n: usize,
    shared: Arc<Shared>,
    workers: Vec<JoinHandle<()>>,
    /// Not `Sync`: two threads sharing `&Pool` could publish two jobs into one slot.
    single_owner: std::marker::PhantomData<Cell<()>>,
}

thread_local! {
    /// The pool installed on this thread, and whether this thread is inside a region.
    static CURRENT: Cell<*const Pool> = const { Cell::new(std::ptr::null()) };
    static IN_REGION: Cell<bool> = const { Cell::new(false) };
}

impl Pool {
    /// A team of `n` threads (0: one per available core), counting the caller.
    pub fn new(n: usize) -> Self {
        let n = if n == 0 { std::thread::available_parallelism().map_or(1, |n| n.get()) } else { n };
        let shared = Arc::new(Shared {
            epoch: AtomicU64::new(0),
            job: AtomicPtr::new(std::ptr::null_mut()),
            pending: AtomicUsize::new(0),
            panicked: AtomicBool::new(false),
            sleepers: AtomicUsize::new(0),
            lock: Mutex::new(()),
            wake: Condvar::new(),
            quit: AtomicBool::new(false),
        });
        let workers = (1..n)
            .map(|index| {
                let shared = shared.clone();
                std::thread::Builder::new()
                    .name(format!("pupil-worker-{index}"))
                    .spawn(move || worker(&shared, index))
                    .expect("spawning a worker thread")
            })
            .collect();
        Self { n, shared, workers, single_owner: std::marker::PhantomData }
    }

    pub fn current_num_threads(&self) -> usize {
        self.n
    }

    /// Runs `f` with this pool as the calling thread's current pool.
    pub fn install<R>(&self, f: impl FnOnce() -> R) -> R {
        struct Restore(*const Pool);
        impl Drop for Restore {
            fn drop(&mut self) {
                CURRENT.with(|c| c.set(self.0));
            }
        }
        let _restore = Restore(CURRENT.with(|c| c.replace(self as *const Pool)));
        f()
    }

    /// Calls `f(i)` on every thread `i` of the team and returns when all have finished.
    fn run(&self, f: &(dyn Fn(usize) + Sync)) {
        if self.n == 1 || IN_REGION.with(Cell::get) {
            (0..self.n).for_each(f);
            return;
        }
        let job = Job { f };
        let s = &*self.shared;
        s.pending.store(self.n - 1, Ordering::Relaxed);
        // The pointer outlives its use: this function does not return (or unwind) before
        // every worker has finished with it.
        s.job.store(&job as *const Job as *mut Job<'static>, Ordering::Relaxed);
        s.epoch.fetch_add(1, Ordering::SeqCst);
        if s.sleepers.load(Ordering::SeqCst) > 0 {
            let _guard = s.lock.lock().unwrap_or_else(|e| e.into_inner());
            s.wake.notify_all();
        }
        IN_REGION.with(|r| r.set(true));
        let mine = catch_unwind(AssertUnwindSafe(|| f(0)));
        IN_REGION.with(|r| r.set(false));
        let mut spins = 0u32;
        while s.pending.load(Ordering::Acquire) != 0 {
            pause(spins);
            spins = spins.saturating_add(1);
        }
        if let Err(panic) = mine {
            resume_unwind(panic);
        }
        if s.panicked.swap(false, Ordering::Relaxed) {
            panic!("a pupil worker thread panicked");
        }
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        self.shared.quit.store(true, Ordering::SeqCst);
        {
            let _guard = self.shared.lock.lock().unwrap_or_else(|e| e.into_inner());
            self.shared.wake.notify_all();
        }
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}

fn worker(s: &Shared, index: usize) {
    let mut seen = 0u64;
    loop {
        // Spin for new work, then sleep.
        let start = Instant::now();
        let mut spins = 0u32;
        loop {
            let epoch = s.epoch.load(Ordering::Acquire);
            if epoch != seen {
                seen = epoch;
                break;
            }
            if s.quit.load(Ordering::Acquire) {
                return;
            }
            spins = spins.saturating_add(1);
            if spins.is_multiple_of(64) && start.elapsed() > SPIN_TIME {
                s.sleepers.fetch_add(1, Ordering::SeqCst);
                let mut guard = s.lock.lock().unwrap_or_else(|e| e.into_inner());
                while s.epoch.load(Ordering::SeqCst) == seen && !s.quit.load(Ordering::SeqCst) {
                    guard = s.wake.wait(guard).unwrap_or_else(|e| e.into_inner());
                }
                drop(guard);
                s.sleepers.fetch_sub(1, Ordering::SeqCst);
            } else {
                pause(spins);
            }
        }
        // SAFETY: the publisher keeps the job alive until `pending` reaches 0, which
        // happens only after this call.
        let job = unsafe { &*s.job.load(Ordering::Relaxed) };
        IN_REGION.with(|r| r.set(true));
        if catch_unwind(AssertUnwindSafe(|| (job.f)(index))).is_err() {
            s.panicked.store(true, Ordering::Relaxed);
        }
        IN_REGION.with(|r| r.set(false));
        s.pending.fetch_sub(1, Ordering::Release);
    }
}

/// Threads of the current pool (1 without one).
pub fn current_num_threads() -> usize {
    // SAFETY: a non-null CURRENT points at a pool inside its `install` call.
    CURRENT.with(|c| unsafe { c.get().as_ref() }.map_or(1, Pool::current_num_threads))
}

/// A raw pointer the threads of one region share; see the SAFETY notes where it is used.
struct SharedPtr<T>(*mut T);
// SAFETY: only used to hand out disjoint `&mut T`s, one per index (see `for_each_mut`).
unsafe impl<T: Send> Sync for SharedPtr<T> {}

impl<T> SharedPtr<T> {
    /// # Safety
    /// `i` must be in bounds and handed to no other thread during the region.
    #[allow(clippy::mut_from_ref)]
    unsafe fn item(&self, i: usize) -> &mut T {
        &mut *self.0.add(i)
    }
}

/// An f32 buffer that the tasks of one parallel region write disjoint parts of (rows of
/// a product, bands of a gradient). It holds the buffer's exclusive borrow for its
/// lifetime, so nothing else can read or write the buffer meanwhile; every use must hand
/// each task a part no other task touches during the region, and the SAFETY notes at the
/// uses say why theirs do.
pub(crate) struct DisjointMut<'a> {
    ptr: *mut f32,
    len: usize,
    buf: std::marker::PhantomData<&'a mut [f32]>,
}

// SAFETY: see the type's contract: tasks never touch the same element, and the borrow it
// holds keeps every other access out while it lives.
unsafe impl Sync for DisjointMut<'_> {}
unsafe impl Send for DisjointMut<'_> {}

impl<'a> DisjointMut<'a> {
    pub(crate) fn new(buf: &'a mut [f32]) -> Self {
        Self { ptr: buf.as_mut_ptr(), len: buf.len(), buf: std::marker::PhantomData }
    }

    /// # Safety
    /// No other task may access `offset..offset + len` while the slice lives.
    #[allow(clippy::mut_from_ref)]
    pub(crate) unsafe fn slice(&self, offset: usize, len: usize) -> &mut [f32] {
        assert!(offset.checked_add(len).is_some_and(|end| end <= self.len), "disjoint slice out of bounds");
        std::slice::from_raw_parts_mut(self.ptr.add(offset), len)
    }

    /// # Safety
    /// No other task may access element `i` during the region.
    pub(crate) unsafe fn write(&self, i: usize, v: f32) {
        assert!(i < self.len, "disjoint write out of bounds");
        *self.ptr.add(i) = v;
    }
}

/// Calls `f` on every item, spreading the items over the current pool's threads (each
/// thread claims the next unclaimed item).
pub fn for_each_mut<T: Send>(items: &mut [T], f: impl Fn(&mut T) + Sync) {
    let base = SharedPtr(items.as_mut_ptr());
    // SAFETY: `for_each_index` hands every index in 0..len to exactly one call, and
    // `items` is borrowed mutably for the whole region.
    for_each_index(items.len(), |i| f(unsafe { base.item(i) }));
}

/// Calls `f(i)` for every `i` in `0..n`, spread over the current pool's threads like
/// [`for_each_mut`], without a list of items (so without an allocation).
pub fn for_each_index(n: usize, f: impl Fn(usize) + Sync) {
    let pool = CURRENT.with(Cell::get);
    if pool.is_null() || n <= 1 {
        (0..n).for_each(f);
        return;
    }
    let next = AtomicUsize::new(0);
    let body = |_thread: usize| loop {
        let i = next.fetch_add(1, Ordering::Relaxed);
        if i >= n {
            break;
        }
        f(i);
    };
    // SAFETY: non-null CURRENT points at a pool inside its `install` call.
    unsafe { &*pool }.run(&body);
}

/// Returns freed heap pages to the OS (glibc keeps them otherwise), so resident memory
/// after loading reflects what the model actually holds. A no-op elsewhere.
pub fn release_free_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        extern "C" {
            fn malloc_trim(pad: usize) -> i32;
        }
        // SAFETY: malloc_trim only releases free memory; it is thread-safe in glibc.
        unsafe {
            malloc_trim(0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A compile-time check that `Pool` is not `Sync`: were it, `<Pool as NotSync<_>>`
    /// would match both impls below and this would not compile.
    #[allow(dead_code)]
    trait NotSync<A> {
        fn check() {}
    }
    impl<T: ?Sized> NotSync<()> for T {}
    impl<T: ?Sized + Sync> NotSync<u8> for T {}
    const _: fn() = <Pool as NotSync<_>>::check;
    const _: fn() = || {
        fn is_send<T: Send>() {}
        is_send::<Pool>();
    };

    #[test]
    fn every_item_is_visited_once_on_every_team_size() {
        for n in [1, 2, 3] {
            let pool = Pool::new(n);
            for round in 0..200 {
                let mut items: Vec<usize> = vec![0; 37 + round % 5];
                pool.install(|| for_each_mut(&mut items, |v| *v += 1));
                assert!(items.iter().all(|&v| v == 1), "n={n} round={round}");
            }
        }
    }

    #[test]
    fn nested_regions_run_inline_and_workers_wake_after_sleeping() {
        let pool = Pool::new(2);
        let mut outer = vec![vec![0u32; 8]; 4];
        pool.install(|| for_each_mut(&mut outer, |inner| for_each_mut(inner, |v| *v += 1)));
        assert!(outer.iter().flatten().all(|&v| v == 1));
        std::thread::sleep(SPIN_TIME * 3); // the worker is asleep now
        let mut items = vec![0u8; 64];
        pool.install(|| for_each_mut(&mut items, |v| *v = 7));
        assert!(items.iter().all(|&v| v == 7));
        assert_eq!(current_num_threads(), 1, "no pool outside install");
        assert_eq!(pool.install(current_num_threads), 2);
    }

    #[test]
    fn a_panicking_item_reaches_the_caller_and_the_pool_survives() {
        let pool = Pool::new(2);
        let mut items: Vec<u32> = (0..32).collect();
        let r = catch_unwind(AssertUnwindSafe(|| pool.install(|| for_each_mut(&mut items, |v| assert!(*v != 17)))));
        assert!(r.is_err());
        let mut again = vec![0u32; 16];
        pool.install(|| for_each_mut(&mut again, |v| *v = 1));
        assert!(again.iter().all(|&v| v == 1));
    }
}
