//! Counting the tensor operations (ATen operators) a piece of code dispatches on the calling
//! thread, through libtorch's RecordFunction observers (csrc/opcount.cpp): the figure behind
//! "the optimizer step issues N operations" in the benchmarks and the tests that hold it.
//!
//! Every dispatched operator counts, including those a composite operator calls inside (a
//! `norm` is more than one); work other threads dispatch (autograd's device threads) does not.

unsafe extern "C" {
    fn syncdiff_opcount_start() -> i32;
    fn syncdiff_opcount_stop() -> u64;
}

/// Runs `f` and returns its result with the number of operators it dispatched on this thread,
/// or `None` for the count when a count is already running on this thread (counts do not nest).
pub fn count<T>(f: impl FnOnce() -> T) -> (T, Option<u64>) {
    // SAFETY: the shim only touches its own thread-local state and libtorch's callback registry.
    let started = unsafe { syncdiff_opcount_start() } == 1;
    let out = f();
    if !started {
        return (out, None);
    }
    // SAFETY: as above; stops the count this call started.
    let n = unsafe { syncdiff_opcount_stop() };
    (out, Some(n))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use tch::{Kind, Tensor};

    #[test]
    fn counts_each_operator_of_the_closure_and_nothing_after() {
        let a = Tensor::ones([8], (Kind::Float, tch::Device::Cpu));
        let b = Tensor::ones([8], (Kind::Float, tch::Device::Cpu));
        let one = |n: usize| {
            count(|| {
                for _ in 0..n {
                    let _ = a.shallow_clone().g_mul_scalar_(1.0);
                }
            })
            .1
            .unwrap()
        };
        let (ten, twenty) = (one(10), one(20));
        assert!(ten >= 10, "{ten}");
        assert_eq!(twenty - ten, ten, "each mul_ counts the same");
        let (inner, outer) = count(|| count(|| (&a + &b).sum(Kind::Float)).1);
        assert_eq!(inner, None, "counts do not nest");
        assert!(outer.unwrap() >= 2);
    }
}
