//! The bookkeeping of one overlapped backward pass, apart from tensors and communication: which
//! gradients have arrived, which buckets are complete, and which bucket is reduced next.
//!
//! Buckets are started strictly in one fixed order (a permutation of the buckets, the same on
//! every rank): a bucket that completes early waits for every bucket before it in that order.
//! Collectives must be issued in the same sequence on every rank, and the moment a gradient
//! completes differs between ranks (a layer that layerdrop skipped on one rank, a different
//! graph on another); reducing buckets in completion order would pair bucket 3 on one rank with
//! bucket 5 on another.

use std::ops::Range;

/// What one gradient's arrival changed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Arrival {
    /// The bucket this arrival completed, if any.
    pub ready: Option<usize>,
    /// The buckets to start now, in order.
    pub launch: Vec<usize>,
}

/// The state of one backward pass over a fixed bucket layout.
#[derive(Debug, Clone)]
pub struct Schedule {
    /// Per parameter, its bucket.
    bucket_of: Vec<usize>,
    /// Per bucket, how many parameters it holds.
    size: Vec<usize>,
    /// The launch order.
    order: Vec<usize>,
    armed: bool,
    pending: Vec<usize>,
    seen: Vec<bool>,
    ready: Vec<bool>,
    /// Position in `order` of the next bucket to start.
    next: usize,
    ready_log: Vec<usize>,
    launch_log: Vec<usize>,
    error: Option<String>,
}

impl Schedule {
    /// A schedule for `buckets` buckets holding the parameter ranges `groups` (`Flat::groups`;
    /// a bucket past the groups holds no parameter, like the lone stop-slot buffer of a model
    /// without parameters). The first launch order is the reverse of the bucket order: buckets
    /// hold parameters in name order, and the backward pass finishes the last layers first.
    pub fn new(groups: &[Range<usize>], buckets: usize) -> Self {
        let buckets = buckets.max(groups.len());
        let params = groups.last().map_or(0, |g| g.end);
        let mut bucket_of = vec![0; params];
        let mut size = vec![0; buckets];
        for (b, g) in groups.iter().enumerate() {
            for p in g.clone() {
                bucket_of[p] = b;
            }
            size[b] = g.len();
        }
        Self {
            bucket_of,
            order: (0..buckets).rev().collect(),
            pending: size.clone(),
            size,
            armed: false,
            seen: vec![false; params],
            ready: vec![false; buckets],
            next: 0,
            ready_log: Vec::new(),
            launch_log: Vec::new(),
            error: None,
        }
    }

    /// Number of buckets.
    pub fn buckets(&self) -> usize {
        self.size.len()
    }

    /// The launch order.
    pub fn order(&self) -> &[usize] {
        &self.order
    }

    /// Replaces the launch order (between backward passes); it must be a permutation of the
    /// buckets.
    pub fn set_order(&mut self, order: Vec<usize>) -> Result<(), String> {
        let mut sorted = order.clone();
        sorted.sort_unstable();
        if sorted != (0..self.buckets()).collect::<Vec<_>>() {
            return Err(format!(
                "bucket order {order:?} is not a permutation of the {} buckets",
                self.buckets()
            ));
        }
        if self.armed {
            return Err("the bucket order cannot change during a backward pass".into());
        }
        self.order = order;
        Ok(())
    }

    /// Starts a backward pass whose gradients are final (the last micro-batch of a step): from
    /// now on arrivals count. Buckets without parameters are complete at once; returns the
    /// buckets to start now.
    pub fn arm(&mut self) -> Arrival {
        self.armed = true;
        self.pending.clone_from(&self.size);
        self.seen.fill(false);
        self.ready.fill(false);
        self.next = 0;
        self.ready_log.clear();
        self.launch_log.clear();
        self.error = None;
        let mut out = Arrival::default();
        for b in 0..self.buckets() {
            if self.size[b] == 0 {
                self.ready[b] = true;
                self.ready_log.push(b);
            }
        }
        out.launch = self.advance();
        out
    }

    /// Whether arrivals count (between [`arm`](Self::arm) and [`finish`](Self::finish)).
    pub fn armed(&self) -> bool {
        self.armed
    }

    /// Parameter `param`'s gradient holds this pass's contribution. Unarmed (an earlier
    /// micro-batch: DDP's `no_sync`), nothing happens. A second arrival of one parameter in one
    /// pass is an error (its bucket may already be on the wire), reported by `finish`.
    pub fn arrived(&mut self, param: usize) -> Arrival {
        if !self.armed {
            return Arrival::default();
        }
        let Some(&b) = self.bucket_of.get(param) else {
            self.error
                .get_or_insert_with(|| format!("gradient hook of unknown parameter {param}"));
            return Arrival::default();
        };
        if std::mem::replace(&mut self.seen[param], true) {
            self.error.get_or_insert_with(|| {
                format!(
                    "parameter {param}'s gradient was accumulated twice in one backward pass, \
                     so its bucket may have been reduced before the second time: set \
                     dist.overlap: false"
                )
            });
            return Arrival::default();
        }
        self.pending[b] -= 1;
        let mut out = Arrival::default();
        if self.pending[b] == 0 {
            self.ready[b] = true;
            self.ready_log.push(b);
            out.ready = Some(b);
            out.launch = self.advance();
        }
        out
    }

    /// Ends the pass: buckets still incomplete (parameters this rank's backward did not reach,
    /// like a layer skipped by layerdrop: their gradients stay zero) complete now in bucket
    /// order; returns them and the buckets to start, and disarms. The error of the pass, if any,
    /// comes back instead.
    pub fn finish(&mut self) -> Result<(Vec<usize>, Vec<usize>), String> {
        self.armed = false;
        if let Some(e) = self.error.take() {
            return Err(e);
        }
        let mut late = Vec::new();
        for b in 0..self.buckets() {
            if !self.ready[b] {
                self.ready[b] = true;
                self.ready_log.push(b);
                late.push(b);
            }
        }
        let launch = self.advance();
        Ok((late, launch))
    }

    /// The order in which buckets completed in the last pass.
    pub fn ready_log(&self) -> &[usize] {
        &self.ready_log
    }

    /// The order in which buckets were started in the last pass.
    pub fn launch_log(&self) -> &[usize] {
        &self.launch_log
    }

    /// Starts every bucket whose turn has come.
    fn advance(&mut self) -> Vec<usize> {
        let mut out = Vec::new();
        while self.next < self.order.len() && self.ready[self.order[self.next]] {
            out.push(self.order[self.next]);
            self.next += 1;
        }
        self.launch_log.extend_from_slice(&out);
        out
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// Buckets [0, 1], [2], [3, 4, 5].
    fn three() -> Schedule {
        Schedule::new(&[0..2, 2..3, 3..6], 3)
    }

    /// Feeds `arrivals` in order; returns the launch log.
    fn run(s: &mut Schedule, arrivals: &[usize]) -> Vec<usize> {
        let mut launched = s.arm().launch;
        for &p in arrivals {
            launched.extend(s.arrived(p).launch);
        }
        let (_, rest) = s.finish().unwrap();
        launched.extend(rest);
        assert_eq!(launched, s.launch_log());
        launched
    }

    #[test]
    fn buckets_start_in_the_fixed_order_whatever_order_gradients_arrive_in() {
        // The default order is 2, 1, 0. Every arrival order starts them the same way.
        let orders: [&[usize]; 4] = [
            &[5, 4, 3, 2, 1, 0],
            &[0, 1, 2, 3, 4, 5],
            &[2, 0, 5, 1, 3, 4],
            &[1, 3, 0, 4, 2, 5],
        ];
        let mut logs = Vec::new();
        for a in orders {
            let mut s = three();
            assert_eq!(run(&mut s, a), [2, 1, 0], "arrivals {a:?}");
            logs.push(s.ready_log().to_vec());
        }
        // ... while the completion order did differ.
        assert_eq!(logs[0], [2, 1, 0]);
        assert_eq!(logs[1], [0, 1, 2]);
    }

    #[test]
    fn a_bucket_starts_as_soon_as_it_and_those_before_it_are_complete() {
        let mut s = three();
        assert!(s.arm().launch.is_empty());
        // Bucket 0 completes first but waits for 2 and 1.
        assert_eq!(s.arrived(0).launch, Vec::<usize>::new());
        assert_eq!(
            s.arrived(1),
            Arrival {
                ready: Some(0),
                launch: vec![]
            }
        );
        assert_eq!(s.arrived(3).launch, Vec::<usize>::new());
        assert_eq!(s.arrived(4).launch, Vec::<usize>::new());
        assert_eq!(s.arrived(5).launch, [2]);
        assert_eq!(s.arrived(2).launch, [1, 0]);
        assert_eq!(s.finish().unwrap(), (vec![], vec![]));
    }

    #[test]
    fn gradients_before_arming_do_not_count_and_unreached_buckets_complete_at_the_end() {
        let mut s = three();
        // An earlier micro-batch (no_sync): nothing counts, nothing starts.
        for p in 0..6 {
            assert_eq!(s.arrived(p), Arrival::default());
        }
        s.arm();
        // Bucket 1's parameter is never reached (layerdrop): 2 starts, 1 and 0 wait for the end.
        for p in [3, 4, 5, 0, 1] {
            s.arrived(p);
        }
        assert_eq!(s.launch_log(), [2]);
        assert_eq!(s.finish().unwrap(), (vec![1], vec![1, 0]));
        assert_eq!(s.ready_log(), [2, 0, 1]);
        assert!(!s.armed());
        assert_eq!(s.arrived(0), Arrival::default());
    }

    #[test]
    fn a_gradient_accumulated_twice_in_one_pass_is_an_error() {
        let mut s = three();
        s.arm();
        s.arrived(2);
        s.arrived(2);
        assert!(s.finish().unwrap_err().contains("accumulated twice"));
        // The next pass starts clean.
        assert_eq!(run(&mut s, &[0, 1, 2, 3, 4, 5]), [2, 1, 0]);
    }

    #[test]
    fn the_order_can_be_replaced_by_a_permutation_between_passes_only() {
        let mut s = three();
        assert!(s.set_order(vec![0, 0, 1]).is_err());
        assert!(s.set_order(vec![0, 1]).is_err());
        s.set_order(vec![0, 2, 1]).unwrap();
        assert_eq!(run(&mut s, &[3, 4, 5, 2, 0, 1]), [0, 2, 1]);
        s.arm();
        assert!(s.set_order(vec![2, 1, 0]).is_err());
    }

    #[test]
    fn buckets_without_parameters_are_complete_at_once() {
        // No parameters: the stop slot's buffer alone.
        let mut s = Schedule::new(&[], 1);
        assert_eq!(s.arm().launch, [0]);
        assert_eq!(s.finish().unwrap(), (vec![], vec![]));
    }
}
