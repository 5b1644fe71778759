// Instance directional dispersion: declarations shared by the CPU and CUDA backends.
// Tensors cross the Python boundary as raw addresses, so nothing here depends on libtorch.
#pragma once

#include <cmath>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#ifdef __CUDACC__
#define UDA_HOST_DEVICE __host__ __device__
#else
#define UDA_HOST_DEVICE
#endif

namespace uda {

enum class Weighting : int { kUniform = 0, kArea = 1, kSqrtArea = 2 };

// Label dtypes the CPU backend reads directly (CUDA takes int32).
enum class LabelType : int { kUInt8 = 0, kInt8 = 1, kInt16 = 2, kInt32 = 3, kInt64 = 4 };

struct Options {
  int64_t batch = 0;
  int64_t height = 0;
  int64_t width = 0;
  int32_t ignore_index = 255;
  int connectivity = 8;
  int64_t min_area = 16;
  double depth_weight = 1.0;
  Weighting weighting = Weighting::kUniform;
  float fill = -1.0f;
  int64_t max_instances = -1;  // most instances of at least min_area per image; -1: no limit
};

// Thrown by the CPU backend when `interrupted` reported a pending signal (the Python error
// is already set; the binding re-raises it).
struct Interrupted {};

// Supporters closer than this (in the joint image-depth space) give no direction.
constexpr double kMinDistance = 1e-6;

// Columns of the per-instance table: one row per instance, instances numbered image by image
// in raster order of their first pixel.
enum TableColumn : int { kBatch, kClass, kArea, kX, kY, kZ, kDispersion, kNumColumns };

UDA_HOST_DEVICE inline double supporter_weight(Weighting weighting, double area) {
  switch (weighting) {
    case Weighting::kArea:
      return area;
    case Weighting::kSqrtArea:
      return sqrt(area);
    default:
      return 1.0;
  }
}

// delta = 1 - |sum_j w_j u_j| / sum_j w_j, or `fill` when there is no supporter.
UDA_HOST_DEVICE inline float dispersion_value(double sx, double sy, double sz, double sw,
                                              float fill) {
  if (sw <= 0.0) return fill;
  const double value = 1.0 - sqrt(sx * sx + sy * sy + sz * sz) / sw;
  return static_cast<float>(value < 0.0 ? 0.0 : value);
}

// The ValueError text when an image holds more than max_instances instances of min_area.
inline std::string too_many_instances(int64_t image, int64_t count, const Options& o) {
  return "image " + std::to_string(image) + " of the batch has " + std::to_string(count) +
         " instances of at least min_area=" + std::to_string(o.min_area) +
         " pixels, more than max_instances=" + std::to_string(o.max_instances) +
         "; every pair of them is compared (N^2 work), so raise min_area, or pass a larger "
         "max_instances (None for no limit)";
}

// Largest possible number of instances of at least min_area in one image.
inline int64_t instance_bound(const Options& o) {
  const int64_t pixels = o.height * o.width;
  return o.min_area > 1 ? pixels / o.min_area : pixels;
}

// labels: B*H*W of `label_type`; depth: B*H*W float32; out: B*H*W float32; ids: B*H*W int32
// or null. Returns the instance table, row-major, kNumColumns values per instance. Throws
// std::invalid_argument on negative labels (other than ignore_index), non-finite depth and
// images over max_instances. `interrupted` is called from the calling thread every few
// milliseconds of long work; when it returns true the work stops and Interrupted is thrown.
std::vector<double> cpu_dispersion(const void* labels, LabelType label_type, const float* depth,
                                   float* out, int32_t* ids, const Options& options,
                                   int num_threads, const std::function<bool()>& interrupted);

#ifdef UDA_DISPERSION_WITH_CUDA
// Bytes of device scratch memory cuda_dispersion needs for this batch.
int64_t cuda_workspace_bytes(const Options& options);

// All pointers are device memory; offsets receives the B + 1 first instance ids per image
// (offsets[B] is the instance count). Everything is queued on `stream`, nothing reaches the host.
void cuda_dispersion(const int32_t* labels, const float* depth, float* out, int32_t* ids,
                     int32_t* offsets, void* workspace, const Options& options, int device,
                     void* stream);

// Writes the first `count` table rows left in `workspace` by the last cuda_dispersion call.
void cuda_table(const void* workspace, double* table, int64_t count, const Options& options,
                int device, void* stream);
#endif

}  // namespace uda
