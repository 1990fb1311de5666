//! The tick's work spread over the machine's cores: pools (and agents) are
//! independent, so a tick splits them into contiguous runs of about equal
//! work, one per thread, and keeps their order.
//!
//! Scoped threads, started per call: a tick runs a few such stages a
//! second, and a thread start (tens of microseconds) is nothing next to
//! the milliseconds each stage takes at the fleet sizes where it matters.
//! Small inputs stay on the calling thread.

use std::num::NonZeroUsize;

/// Below this much work (items plus their weights) a stage runs on the
/// calling thread: a thread start would cost more than it saves.
const MIN_PARALLEL_WORK: usize = 512;

/// How many threads the tick uses.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct Threads(NonZeroUsize);

impl Threads {
    /// `n` threads; 0 means one per core the process may use.
    pub fn new(n: usize) -> Self {
        let cores = std::thread::available_parallelism().map_or(1, NonZeroUsize::get);
        Self(NonZeroUsize::new(if n == 0 { cores } else { n }).unwrap_or(NonZeroUsize::MIN))
    }

    /// One thread: everything on the caller's.
    pub const ONE: Self = Self(NonZeroUsize::MIN);

    /// The number of threads.
    pub fn get(self) -> usize {
        self.0.get()
    }

    /// `f(index, item)` for every item, in up to `self` threads (the
    /// caller's included), results in item order. `weight` says how much
    /// work an item is, relative to the others. A panic in `f` reaches the
    /// caller, as it would on one thread.
    pub fn map<T, R, W, F>(self, items: &mut [T], weight: W, f: F) -> Vec<R>
    where
        T: Send,
        R: Send,
        W: Fn(&T) -> usize,
        F: Fn(usize, &mut T) -> R + Sync,
    {
        self.map_with(items, weight, || (), |(), i, t| f(i, t))
    }

    /// As [`Threads::map`], with scratch state each thread makes once
    /// (`init`) and `f` reuses for every item of its run.
    pub fn map_with<T, R, S, W, I, F>(self, items: &mut [T], weight: W, init: I, f: F) -> Vec<R>
    where
        T: Send,
        R: Send,
        W: Fn(&T) -> usize,
        I: Fn() -> S + Sync,
        F: Fn(&mut S, usize, &mut T) -> R + Sync,
    {
        let runs = split(items, self.get(), &weight);
        let (f, init) = (&f, &init);
        let run = move |(start, chunk): (usize, &mut [T])| -> Vec<R> {
            let mut scratch = init();
            chunk
                .iter_mut()
                .enumerate()
                .map(|(i, t)| f(&mut scratch, start + i, t))
                .collect()
        };
        let mut runs = runs.into_iter();
        let Some(first) = runs.next() else {
            return Vec::new();
        };
        if runs.len() == 0 {
            return run(first);
        }
        // A worker's panic is re-raised here, so the engine's catch of a
        // failed tick sees it as it would on one thread.
        std::thread::scope(|s| {
            let others: Vec<_> = runs.map(|r| s.spawn(move || run(r))).collect();
            let mut out = run(first);
            for h in others {
                match h.join() {
                    Ok(part) => out.extend(part),
                    Err(panic) => std::panic::resume_unwind(panic),
                }
            }
            out
        })
    }
}

/// Contiguous runs of `items` (with their start index), about equal in
/// total weight, at most `threads` of them; one run when the work is small.
fn split<'a, T>(
    items: &'a mut [T],
    threads: usize,
    weight: &impl Fn(&T) -> usize,
) -> Vec<(usize, &'a mut [T])> {
    let total: usize = items.iter().map(|t| weight(t) + 1).sum();
    let threads = threads.min(items.len()).max(1);
    if threads == 1 || total < MIN_PARALLEL_WORK {
        return vec![(0, items)];
    }
    let per = total.div_ceil(threads);
    let mut runs = Vec::with_capacity(threads);
    let mut rest = items;
    let mut start = 0;
    while !rest.is_empty() {
        let mut n = 0;
        let mut acc = 0;
        // The last thread takes whatever is left.
        let last = runs.len() + 1 == threads;
        while n < rest.len() && (last || acc < per) {
            acc += weight(&rest[n]) + 1;
            n += 1;
        }
        let (run, tail) = rest.split_at_mut(n);
        runs.push((start, run));
        start += n;
        rest = tail;
    }
    runs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn results_keep_item_order_whatever_the_threads() {
        for threads in [1, 2, 3, 8] {
            let mut items: Vec<usize> = (0..5000).collect();
            let out = Threads::new(threads).map(
                &mut items,
                |&w| w % 7,
                |i, x| {
                    *x += 1;
                    (i, *x)
                },
            );
            assert_eq!(out.len(), 5000);
            assert!(
                out.iter()
                    .enumerate()
                    .all(|(i, &(j, x))| i == j && x == i + 1)
            );
        }
    }

    #[test]
    fn runs_cover_everything_once_in_about_equal_work() {
        let mut items: Vec<usize> = (0..1000).collect();
        let runs = split(&mut items, 2, &|&w| w);
        assert_eq!(runs.len(), 2);
        assert_eq!(runs[0].0, 0);
        assert_eq!(runs[1].0, runs[0].1.len());
        assert_eq!(runs[0].1.len() + runs[1].1.len(), 1000);
        let work = |r: &[usize]| r.iter().map(|w| w + 1).sum::<usize>();
        let (a, b) = (work(runs[0].1), work(runs[1].1));
        assert!(a.abs_diff(b) < 2000, "{a} vs {b}");
        // Small inputs stay on the caller's thread.
        let mut few = vec![1usize; 10];
        assert_eq!(split(&mut few, 2, &|_| 0).len(), 1);
    }

    #[test]
    #[should_panic(expected = "boom")]
    fn a_workers_panic_reaches_the_caller() {
        let mut items: Vec<usize> = (0..5000).collect();
        Threads::new(2).map(
            &mut items,
            |_| 1,
            |i, _| {
                assert!(i != 4000, "boom");
            },
        );
    }
}
