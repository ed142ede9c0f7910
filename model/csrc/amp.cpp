// Mixed precision switches that tch does not expose, taken from libtorch itself so that the
// casting policy is the one PyTorch's `torch.autocast` and `torch.backends.*.allow_tf32` use:
//
// - autocast regions (at::autocast): per device type, thread local, nested like the Python
//   context manager (enabled flag, lower-precision dtype, weight-cast cache, nesting count);
// - TF32 for cuBLAS matmuls and cuDNN convolutions (at::globalContext(), process wide).
//
// Every function catches C++ exceptions and reports them as a non-zero return and a message in
// the caller's buffer, so no exception crosses into Rust.
#include <ATen/Context.h>
#include <ATen/autocast_mode.h>

#include <cstdio>
#include <cstring>
#include <exception>

namespace {

// The device types and dtypes the Rust side names (model/src/autocast.rs keeps the same codes).
bool device_type(int code, at::DeviceType* out) {
  switch (code) {
    case 0:
      *out = at::kCPU;
      return true;
    case 1:
      *out = at::kCUDA;
      return true;
    default:
      return false;
  }
}

bool low_dtype(int code, at::ScalarType* out) {
  switch (code) {
    case 0:
      *out = at::kBFloat16;
      return true;
    case 1:
      *out = at::kHalf;
      return true;
    default:
      return false;
  }
}

int fail(char* msg, size_t len, const char* what) {
  if (msg != nullptr && len > 0) {
    std::snprintf(msg, len, "%s", what);
  }
  return 1;
}

}  // namespace

// What an autocast region replaced, restored at its end (as torch.autocast.__exit__ does).
struct syncdiff_autocast_prev {
  int enabled;
  int dtype;  // at::ScalarType as an int
  int cache;
};

// Enters an autocast region on this thread: autocast for `device` on with `dtype` as the lower
// precision, the weight-cast cache on, one nesting level more. Writes the previous state to
// `prev`. Returns 0, or 1 with a message (an unknown code, or libtorch refusing the dtype).
extern "C" int syncdiff_autocast_enter(int device, int dtype, syncdiff_autocast_prev* prev,
                                       char* msg, size_t len) {
  at::DeviceType dev;
  at::ScalarType low;
  if (!device_type(device, &dev)) {
    return fail(msg, len, "unknown device type code");
  }
  if (!low_dtype(dtype, &low)) {
    return fail(msg, len, "unknown autocast dtype code");
  }
  try {
    if (!at::autocast::is_autocast_available(dev)) {
      return fail(msg, len, "libtorch has no autocast for this device type");
    }
    prev->enabled = at::autocast::is_autocast_enabled(dev) ? 1 : 0;
    prev->dtype = static_cast<int>(at::autocast::get_autocast_dtype(dev));
    prev->cache = at::autocast::is_autocast_cache_enabled() ? 1 : 0;
    at::autocast::set_autocast_enabled(dev, true);
    at::autocast::set_autocast_dtype(dev, low);
    at::autocast::set_autocast_cache_enabled(true);
    at::autocast::increment_nesting();
    return 0;
  } catch (const std::exception& e) {
    return fail(msg, len, e.what());
  }
}

// Leaves the region `syncdiff_autocast_enter` opened: one nesting level less (the weight-cast
// cache is cleared when the outermost region ends), then the previous state back.
extern "C" int syncdiff_autocast_exit(int device, const syncdiff_autocast_prev* prev, char* msg,
                                      size_t len) {
  at::DeviceType dev;
  if (!device_type(device, &dev)) {
    return fail(msg, len, "unknown device type code");
  }
  try {
    if (at::autocast::decrement_nesting() == 0) {
      at::autocast::clear_cache();
    }
    at::autocast::set_autocast_enabled(dev, prev->enabled != 0);
    at::autocast::set_autocast_dtype(dev, static_cast<at::ScalarType>(prev->dtype));
    at::autocast::set_autocast_cache_enabled(prev->cache != 0);
    return 0;
  } catch (const std::exception& e) {
    return fail(msg, len, e.what());
  }
}

// Whether autocast is on for `device` on this thread (0 or 1; -1 for an unknown code).
extern "C" int syncdiff_autocast_enabled(int device) {
  at::DeviceType dev;
  if (!device_type(device, &dev)) {
    return -1;
  }
  try {
    return at::autocast::is_autocast_enabled(dev) ? 1 : 0;
  } catch (...) {
    return -1;
  }
}

// TF32 for cuBLAS matmuls and cuDNN convolutions, process wide (what
// torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32 set). Only flags:
// safe to call without a GPU.
extern "C" int syncdiff_set_tf32(int on, char* msg, size_t len) {
  try {
    at::globalContext().setAllowTF32CuBLAS(on != 0);
    at::globalContext().setAllowTF32CuDNN(on != 0);
    return 0;
  } catch (const std::exception& e) {
    return fail(msg, len, e.what());
  }
}

// The TF32 flags: bit 0 cuBLAS, bit 1 cuDNN (-1 on an error).
extern "C" int syncdiff_tf32() {
  try {
    int out = 0;
    if (at::globalContext().allowTF32CuBLAS()) {
      out |= 1;
    }
    if (at::globalContext().allowTF32CuDNN()) {
      out |= 2;
    }
    return out;
  } catch (...) {
    return -1;
  }
}
