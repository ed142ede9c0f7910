#![allow(clippy::unwrap_used)]
use super::*;
use std::sync::{Arc, Mutex};
use tch::{Device, Kind};

/// A backend that records what it is asked to do, with the gradient values it saw.
struct Record(Arc<Mutex<Vec<String>>>, Vec<Tensor>);

impl BucketReducer for Record {
    fn ready(&mut self, bucket: usize) -> Result<(), String> {
        self.0.lock().unwrap().push(format!("ready {bucket}"));
        Ok(())
    }
    fn launch(&mut self, bucket: usize) -> Result<(), String> {
        let sum = f64::try_from(self.1[bucket].sum(Kind::Double)).unwrap();
        self.0
            .lock()
            .unwrap()
            .push(format!("launch {bucket} sum {sum}"));
        Ok(())
    }
    fn wait(&mut self) -> Result<usize, String> {
        let n = self
            .0
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.starts_with("launch"))
            .count();
        Ok(n)
    }
}

fn leaf(n: i64, v: f64) -> Tensor {
    Tensor::full([n], v, (Kind::Float, Device::Cpu)).set_requires_grad(true)
}

/// Parameters a (2), b (3), c (4), d (1) in buckets of 5 elements: [a, b], [c, d].
fn flat() -> Flat {
    let p = ["a", "b", "c", "d"]
        .iter()
        .zip([(2, 1.0), (3, 2.0), (4, 3.0), (1, 4.0)])
        .map(|(n, (k, v))| (n.to_string(), leaf(k, v)))
        .collect();
    Flat::new(p, 5).unwrap()
}

/// A loss whose backward reaches d, c, b, a in that order (a chain: a feeds b's term ...).
fn loss(f: &Flat, with_d: bool) -> Tensor {
    let p = f.params();
    let x = p[0].sum(Kind::Float);
    let x = &x * p[1].sum(Kind::Float);
    let x = &x * p[2].sum(Kind::Float);
    if with_d {
        &x * p[3].sum(Kind::Float)
    } else {
        x
    }
}

fn with_record(f: &Flat) -> (Overlap, Arc<Mutex<Vec<String>>>) {
    let log = Arc::new(Mutex::new(Vec::new()));
    let grads = f
        .reduce_buffers()
        .iter()
        .map(Tensor::shallow_clone)
        .collect();
    let o = Overlap::new(f, Box::new(Record(log.clone(), grads)), 0).unwrap();
    (o, log)
}

#[test]
fn buckets_start_during_backward_once_every_gradient_in_them_is_final() {
    let f = flat();
    let (mut o, log) = with_record(&f);
    o.arm(false).unwrap();
    loss(&f, true).backward();
    // With sums a 2, b 6, c 12, d 4, the gradients are a 288, b 96, c 48, d 144 per element.
    // Bucket 1 (c, d) completed inside backward, before a and b, and started there with its
    // final gradients (4 * 48 + 144), then bucket 0 (2 * 288 + 3 * 96).
    let seen = log.lock().unwrap().clone();
    assert_eq!(
        seen,
        ["ready 1", "launch 1 sum 336", "ready 0", "launch 0 sum 864"]
    );
    let (stop, issued) = o.finish().unwrap();
    assert!(!stop);
    assert_eq!(issued, 2);
    assert_eq!(o.logs(), (vec![1, 0], vec![1, 0]));
}

#[test]
fn only_the_armed_micro_batch_reduces_and_unreached_gradients_complete_at_the_end() {
    let f = flat();
    let (mut o, log) = with_record(&f);
    // First micro-batch (not armed): its gradients accumulate, nothing starts.
    loss(&f, true).backward();
    assert!(log.lock().unwrap().is_empty());
    // Second micro-batch without d (a layer layerdrop skipped): bucket 1 cannot complete in
    // backward, so bucket 0, after it in the order, waits too; both start at finish.
    o.arm(true).unwrap();
    loss(&f, false).backward();
    assert_eq!(*log.lock().unwrap(), ["ready 0"]);
    let (stop, issued) = o.finish().unwrap();
    assert!(stop, "the stop flag rides in the last buffer");
    assert_eq!(issued, 2, "one set of all-reduces for two micro-batches");
    let seen = log.lock().unwrap().clone();
    assert_eq!(seen[1], "ready 1");
    assert!(seen[2].starts_with("launch 1") && seen[3].starts_with("launch 0"));
    // a's gradient holds both micro-batches: 2*3*4*... summed over the two passes.
    let a = Vec::<f32>::try_from(f.params()[0].grad()).unwrap();
    assert_eq!(a, [6.0 * 12.0 * 4.0 + 6.0 * 12.0; 2]);
}

#[test]
fn a_dropped_overlap_leaves_no_hook_behind() {
    let f = flat();
    let (mut o, log) = with_record(&f);
    o.arm(false).unwrap();
    drop(o);
    // The hooks are gone: a backward now reaches no freed context and records nothing.
    loss(&f, true).backward();
    assert!(log.lock().unwrap().is_empty());
    f.check().unwrap();
}

#[test]
fn a_tensor_that_is_not_a_trained_leaf_gets_no_hook() {
    let t = Tensor::ones([2], (Kind::Float, Device::Cpu));
    let err = crate::shim::call(|msg, len| unsafe {
        syncdiff_set_grad_ready_hook(t.as_ptr(), grad_ready, std::ptr::null_mut(), 0, msg, len)
    })
    .unwrap_err();
    assert_eq!(err, "the tensor is not a leaf that requires grad");
}
