// Counts the ATen operators the calling thread dispatches, through libtorch's RecordFunction
// observers (the mechanism its profiler uses). The benchmarks and tests use it to count the
// tensor operations of an optimizer step; nothing else registers a callback, and none is
// registered outside a count, so training pays nothing for it.
#include <ATen/record_function.h>

#include <cstdint>

namespace {

thread_local uint64_t ops = 0;
thread_local at::CallbackHandle handle = 0;

std::unique_ptr<at::ObserverContext> on_start(const at::RecordFunction&) {
  ++ops;
  return nullptr;
}

}  // namespace

// Starts counting on this thread (from zero). Returns 0 when a count is already running.
extern "C" int syncdiff_opcount_start() {
  if (handle != 0) {
    return 0;
  }
  ops = 0;
  handle = at::addThreadLocalCallback(
      at::RecordFunctionCallback(on_start).needsInputs(false).scopes({at::RecordScope::FUNCTION}));
  return handle != 0 ? 1 : 0;
}

// Stops counting on this thread; returns the operators counted since the start.
extern "C" uint64_t syncdiff_opcount_stop() {
  if (handle != 0) {
    at::removeCallback(handle);
    handle = 0;
  }
  return ops;
}
