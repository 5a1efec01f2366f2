//! Reused temporaries: a per-thread pool of spare vectors for the kernels' per-call scratch
//! (per-piece partial sums, per-row statistics before they are split into the outputs).
//!
//! Why: a kernel that allocates a few hundred KiB of temporaries per call and frees them at
//! its end makes glibc's allocator return that memory to the kernel (the heap's top is trimmed
//! past `M_TRIM_THRESHOLD`, 128 KiB by default) and take it back on the next call, page fault
//! by page fault; in a multi-threaded process each give-back is also a TLB shoot-down across
//! the threads' CPUs, a virtual-machine exit on a VM. Measured on this project's 2-vCPU KVM
//! guest (`perf stat -e page-faults`, round 14): LayerNorm 4096x4096 backward took 1033 page
//! faults per call, BatchNorm1d 4096x1024 training 28, LayerNorm 8192x768 forward 26, and
//! the same runs with glibc told not to trim (`MALLOC_TRIM_THRESHOLD_`) were 1.27x, 1.27x and
//! 1.07x faster at two threads. Which temporaries churn depends on the allocator, its settings
//! and what else the process allocates, so the kernels do not leave it to chance: the large
//! temporaries come from [`Scratch`], whose vectors go back to this thread's pool when dropped
//! and serve the next call on the same thread (the caller's thread, or a pool worker: both live
//! across calls).
//!
//! The pool keeps at most [`KEEP_VECTORS`] vectors and [`KEEP_BYTES`] bytes per thread (past
//! either bound the smallest vectors are freed, so many small temporaries do not shut a large
//! one out; a vector larger than [`KEEP_BYTES`] is never kept), and frees everything when its
//! thread exits. A vector goes to the pool of the thread that drops it. Nothing here can
//! panic: a pool that cannot be reached (its thread is exiting, or a nested take on the same
//! thread holds it) only means a fresh vector.

use std::any::Any;
use std::cell::RefCell;
use std::ops::{Deref, DerefMut};

/// Spare vectors kept per thread at most.
pub const KEEP_VECTORS: usize = 32;
/// Bytes of spare vectors kept per thread at most (by capacity).
pub const KEEP_BYTES: usize = 64 << 20;

thread_local! {
    /// This thread's spare vectors: each a `Box<Vec<T>>` for some `T`, with its bytes.
    static SPARE: RefCell<Vec<(usize, Box<dyn Any>)>> = const { RefCell::new(Vec::new()) };
}

/// A vector from this thread's pool ([`Scratch::filled`]); back to the pool when dropped.
pub struct Scratch<T: Copy + 'static> {
    /// Always `Some` until the drop hands it back. Boxed: the box is the pool's entry (a
    /// `Box<dyn Any>`), so handing the vector back and taking it again allocates nothing.
    #[allow(clippy::box_collection)]
    v: Option<Box<Vec<T>>>,
}

impl<T: Copy + 'static> Scratch<T> {
    /// `len` copies of `value`, as `vec![value; len]`, in a vector from this thread's pool when
    /// it has one of this element type (the one with the most capacity).
    pub fn filled(value: T, len: usize) -> Scratch<T> {
        let mut v = take::<T>().unwrap_or_default();
        v.clear();
        v.resize(len, value);
        Scratch { v: Some(v) }
    }

    /// `len` elements for the caller to overwrite: each one `value` or what an earlier user of
    /// the vector left there (no pass over memory that is still in place; [`Scratch::filled`]
    /// when the contents matter).
    pub fn any(value: T, len: usize) -> Scratch<T> {
        let mut v = take::<T>().unwrap_or_default();
        v.truncate(len);
        v.resize(len, value);
        Scratch { v: Some(v) }
    }

    /// A copy of `values` in a vector from this thread's pool.
    pub fn copy_of(values: &[T]) -> Scratch<T> {
        let mut v = take::<T>().unwrap_or_default();
        v.clear();
        v.extend_from_slice(values);
        Scratch { v: Some(v) }
    }
}

/// Takes this thread's spare `Vec<T>` with the largest capacity out of the pool.
#[allow(clippy::box_collection)] // the pool's entry itself (see `Scratch::v`)
fn take<T: Copy + 'static>() -> Option<Box<Vec<T>>> {
    let (_, boxed) = SPARE
        .try_with(|s| {
            let mut s = s.try_borrow_mut().ok()?;
            let best = s
                .iter()
                .enumerate()
                .filter(|(_, (_, b))| b.is::<Vec<T>>())
                .max_by_key(|(_, (size, _))| *size)?
                .0;
            Some(s.swap_remove(best))
        })
        .ok()
        .flatten()?;
    boxed.downcast::<Vec<T>>().ok()
}

/// The bytes a vector holds (by capacity).
fn bytes<T>(v: &Vec<T>) -> usize {
    v.capacity().saturating_mul(std::mem::size_of::<T>())
}

impl<T: Copy + 'static> Drop for Scratch<T> {
    fn drop(&mut self) {
        let Some(v) = self.v.take() else {
            return;
        };
        let size = bytes(&v);
        if size == 0 || size > KEEP_BYTES {
            return;
        }
        let _ = SPARE.try_with(|s| {
            let Ok(mut s) = s.try_borrow_mut() else {
                return;
            };
            s.push((size, v));
            // over either bound: the smallest vectors go first (the new one, if it is the
            // smallest), so a large temporary is not shut out by many small ones
            while s.len() > KEEP_VECTORS || s.iter().map(|e| e.0).sum::<usize>() > KEEP_BYTES {
                let Some(smallest) = s.iter().enumerate().min_by_key(|(_, e)| e.0).map(|m| m.0)
                else {
                    break;
                };
                s.swap_remove(smallest);
            }
        });
    }
}

impl<T: Copy + 'static> Deref for Scratch<T> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        self.v.as_deref().map_or(&[], |v| v.as_slice())
    }
}

impl<T: Copy + 'static> DerefMut for Scratch<T> {
    fn deref_mut(&mut self) -> &mut [T] {
        self.v.as_deref_mut().map_or(&mut [], |v| v.as_mut_slice())
    }
}

impl<'a, T: Copy + 'static> IntoIterator for &'a Scratch<T> {
    type Item = &'a T;
    type IntoIter = std::slice::Iter<'a, T>;
    fn into_iter(self) -> Self::IntoIter {
        self.iter()
    }
}

impl<'a, T: Copy + 'static> IntoIterator for &'a mut Scratch<T> {
    type Item = &'a mut T;
    type IntoIter = std::slice::IterMut<'a, T>;
    fn into_iter(self) -> Self::IntoIter {
        self.iter_mut()
    }
}

impl<T: Copy + std::fmt::Debug + 'static> std::fmt::Debug for Scratch<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// (vectors, bytes) in this thread's pool.
    fn held() -> (usize, usize) {
        SPARE.with(|s| {
            let s = s.borrow();
            (s.len(), s.iter().map(|e| e.0).sum())
        })
    }

    #[test]
    fn a_dropped_vector_serves_the_next_take_of_its_type() {
        std::thread::spawn(|| {
            assert_eq!(held(), (0, 0));
            let a = Scratch::filled(1.5f64, 1000);
            assert_eq!(&a[..3], &[1.5, 1.5, 1.5]);
            assert_eq!(a.len(), 1000);
            let ptr = a.as_ptr();
            drop(a);
            assert_eq!(held(), (1, 8000));
            // another type does not take it
            let b = Scratch::filled(0u32, 10);
            assert_eq!(held(), (1, 8000));
            drop(b);
            assert_eq!(held(), (2, 8040));
            // the same type does, refilled (shorter here), without reallocating
            let c = Scratch::filled(-2.0f64, 600);
            assert_eq!(c.as_ptr(), ptr);
            assert!(c.iter().all(|&v| v == -2.0));
            assert_eq!(c.len(), 600);
            assert_eq!(held(), (1, 40));
            drop(c);
            // `any` keeps what is there and fills only the new elements
            let e = Scratch::any(7.0f64, 700);
            assert_eq!(e.as_ptr(), ptr);
            assert!(e[..600].iter().all(|&v| v == -2.0) && e[600..].iter().all(|&v| v == 7.0));
            let _c = e;
            // a nested take of the same type while `c` is out gets a fresh vector
            let d = Scratch::copy_of(&[1.0f64, 2.0, 3.0]);
            assert_ne!(d.as_ptr(), ptr);
            assert_eq!(&d[..], &[1.0, 2.0, 3.0]);
        })
        .join()
        .expect("the scratch test thread");
    }

    #[test]
    fn the_pool_is_bounded() {
        std::thread::spawn(|| {
            // more vectors than it keeps
            let many: Vec<_> = (0..KEEP_VECTORS + 5)
                .map(|_| Scratch::filled(0u8, 16))
                .collect();
            drop(many);
            assert_eq!(held(), (KEEP_VECTORS, 16 * KEEP_VECTORS));
            // a larger vector still gets in: the smallest one leaves
            let big = Scratch::filled(0f64, 1000);
            let ptr = big.as_ptr();
            drop(big);
            assert_eq!(held(), (KEEP_VECTORS, 16 * (KEEP_VECTORS - 1) + 8000));
            assert_eq!(Scratch::filled(0f64, 3).as_ptr(), ptr);
            // a vector past the byte budget is freed, not kept
            std::thread::spawn(|| {
                drop(Scratch::filled(0u8, KEEP_BYTES + 1));
                assert_eq!(held(), (0, 0));
                drop(Scratch::filled(0u8, KEEP_BYTES));
                assert_eq!(held(), (1, KEEP_BYTES));
                // another type's vector would pass the budget: freed
                drop(Scratch::filled(0u16, 1));
                assert_eq!(held(), (1, KEEP_BYTES));
            })
            .join()
            .expect("the inner scratch test thread");
        })
        .join()
        .expect("the scratch test thread");
    }

    #[test]
    fn empty_and_zero_sized() {
        let e = Scratch::filled(0f32, 0);
        assert!(e.is_empty());
        drop(e);
        let z = Scratch::filled((), 5);
        assert_eq!(z.len(), 5);
    }
}
