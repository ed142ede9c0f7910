// Gradient-ready notifications that tch does not expose: a post-accumulate-grad hook on a leaf
// tensor (what `Tensor.register_post_accumulate_grad_hook` installs in PyTorch), calling a C
// function with a context pointer and an index once the tensor's .grad holds this backward's
// contribution. The overlapped all-reduce (trainer/src/dist/overlap/) counts these to know
// when every gradient of a bucket is final.
//
// libtorch keeps one such hook per tensor (PyTorch's Python hooks share it as a dictionary), so
// installing replaces and clearing removes it. The callback runs on the thread that runs the
// tensor's AccumulateGrad node: the caller's thread for CPU tensors, libtorch's device thread
// for CUDA tensors. It must not throw (it is C); errors are reported through the context.
#include <torch/csrc/autograd/function_hook.h>
#include <torch/csrc/autograd/variable.h>

#include <cstdio>
#include <exception>
#include <memory>

namespace {

using ready_fn = void (*)(void* ctx, size_t index);

struct ReadyHook final : torch::autograd::PostAccumulateGradHook {
  ReadyHook(ready_fn fn, void* ctx, size_t index) : fn_(fn), ctx_(ctx), index_(index) {}
  void operator()(const torch::autograd::Variable& /*tensor*/) override { fn_(ctx_, index_); }

 private:
  ready_fn fn_;
  void* ctx_;
  size_t index_;
};

int fail(char* msg, size_t len, const char* what) {
  if (msg != nullptr && len > 0) {
    std::snprintf(msg, len, "%s", what);
  }
  return 1;
}

}  // namespace

// Installs on `tensor` (a leaf that requires grad) a hook calling fn(ctx, index) after each
// accumulation into its gradient, replacing any post-accumulate-grad hook it had. Returns 0, or
// 1 with a message (a tensor that is not a leaf requiring grad, or libtorch refusing).
extern "C" int syncdiff_set_grad_ready_hook(const at::Tensor* tensor, ready_fn fn, void* ctx,
                                            size_t index, char* msg, size_t len) {
  if (tensor == nullptr || fn == nullptr) {
    return fail(msg, len, "null tensor or callback");
  }
  try {
    if (!tensor->defined() || !tensor->requires_grad() || !tensor->is_leaf()) {
      return fail(msg, len, "the tensor is not a leaf that requires grad");
    }
    torch::autograd::impl::set_post_acc_grad_hooks(*tensor,
                                                   std::make_unique<ReadyHook>(fn, ctx, index));
    return 0;
  } catch (const std::exception& e) {
    return fail(msg, len, e.what());
  }
}

// Removes the post-accumulate-grad hook of `tensor` (none installed is fine). Returns 0, or 1
// with a message.
extern "C" int syncdiff_clear_grad_ready_hook(const at::Tensor* tensor, char* msg, size_t len) {
  if (tensor == nullptr) {
    return fail(msg, len, "null tensor");
  }
  try {
    if (tensor->defined() && tensor->requires_grad()) {
      torch::autograd::impl::set_post_acc_grad_hooks(*tensor, nullptr);
    }
    return 0;
  } catch (const std::exception& e) {
    return fail(msg, len, e.what());
  }
}
