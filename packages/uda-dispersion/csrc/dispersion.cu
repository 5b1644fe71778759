// CUDA backend. Pixels of the whole batch are labelled together by union-find with atomics
// (Playne & Hawick 2018): every pixel starts as its own root, pixels join same-label
// neighbours with atomicMin so the root of an instance is its first pixel in raster order, and
// a scan over root flags numbers instances in that order (the CPU numbering). Per-instance sums
// accumulate runs per thread and merge equal instances within a warp before one atomic per
// run, so a huge instance costs a few thousand atomics, not a million. All kernels run on the
// caller's stream.
#include <cuda_runtime.h>

#include <climits>
#include <stdexcept>
#include <string>
#include <vector>

#include "dispersion.h"

namespace uda {
namespace {

constexpr int kThreads = 256;
constexpr int kScanItems = 8;
constexpr int kScanTile = kThreads * kScanItems;
constexpr int kSegment = 16;  // pixels of one row summed by one thread
constexpr int kMaxBlocks = 4096;
constexpr unsigned kFullMask = 0xffffffffu;

void check(cudaError_t status, const char* what) {
  if (status != cudaSuccess) {
    throw std::runtime_error(std::string("uda_dispersion CUDA error in ") + what + ": " +
                             cudaGetErrorString(status));
  }
}

int blocks_for(int64_t n) {
  const int64_t blocks = (n + kThreads - 1) / kThreads;
  return static_cast<int>(blocks < 1 ? 1 : (blocks > kMaxBlocks ? kMaxBlocks : blocks));
}

int64_t align(int64_t bytes) { return (bytes + 255) / 256 * 256; }

// Device scratch memory, carved from one caller-owned buffer. Per-instance arrays have room
// for one instance per pixel; acc_* hold integer or double sums, then the centroid.
struct Workspace {
  int32_t* parent;
  int32_t* instance;  // exclusive scan of root flags: the instance id at each root pixel
  int32_t* tile_sums;
  int32_t* depth_range;  // per image: ordered-int min and max of valid depths
  int32_t* kept;         // per image: instances of at least min_area (for max_instances)
  int32_t* area;
  int32_t* label;
  int32_t* batch;
  float* dispersion;
  unsigned long long* acc_x;
  unsigned long long* acc_y;
  double* acc_z;
  int64_t bytes;

  Workspace(void* base, const Options& o) {
    const int64_t n = o.batch * o.height * o.width;
    const int64_t tiles = (n + kScanTile - 1) / kScanTile;
    char* p = static_cast<char*>(base);
    int64_t used = 0;
    auto take = [&](int64_t size) {
      char* q = p == nullptr ? nullptr : p + used;
      used += align(size);
      return q;
    };
    parent = reinterpret_cast<int32_t*>(take(n * 4));
    instance = reinterpret_cast<int32_t*>(take(n * 4));
    tile_sums = reinterpret_cast<int32_t*>(take((tiles + 1) * 4));
    depth_range = reinterpret_cast<int32_t*>(take(o.batch * 2 * 4));
    kept = reinterpret_cast<int32_t*>(take(o.batch * 4));
    area = reinterpret_cast<int32_t*>(take(n * 4));
    label = reinterpret_cast<int32_t*>(take(n * 4));
    batch = reinterpret_cast<int32_t*>(take(n * 4));
    dispersion = reinterpret_cast<float*>(take(n * 4));
    acc_x = reinterpret_cast<unsigned long long*>(take(n * 8));
    acc_y = reinterpret_cast<unsigned long long*>(take(n * 8));
    acc_z = reinterpret_cast<double*>(take(n * 8));
    bytes = used;
  }
};

__device__ __forceinline__ int32_t ordered(float f) {
  const int32_t i = __float_as_int(f);
  return i >= 0 ? i : i ^ 0x7fffffff;
}

__device__ __forceinline__ float unordered(int32_t i) {
  return __int_as_float(i >= 0 ? i : i ^ 0x7fffffff);
}

__device__ __forceinline__ int32_t find_root(const int32_t* parent, int32_t x) {
  const volatile int32_t* p = parent;
  int32_t next = p[x];
  while (next != x) {
    x = next;
    next = p[x];
  }
  return x;
}

// Joins the trees of a and b; the smaller root wins, so roots stay first pixels.
__device__ void unite(int32_t* parent, int32_t a, int32_t b) {
  bool done = false;
  while (!done) {
    a = find_root(parent, a);
    b = find_root(parent, b);
    if (a < b) {
      const int32_t old = atomicMin(&parent[b], a);
      done = old == b;
      b = old;
    } else if (b < a) {
      const int32_t old = atomicMin(&parent[a], b);
      done = old == a;
      a = old;
    } else {
      done = true;
    }
  }
}

__global__ void init_kernel(int32_t* parent, int32_t* depth_range, int32_t* kept, int64_t n,
                            int64_t batch) {
  for (int64_t p = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; p < n;
       p += int64_t{gridDim.x} * blockDim.x) {
    parent[p] = static_cast<int32_t>(p);
    if (p < batch) {
      depth_range[2 * p] = INT_MAX;
      depth_range[2 * p + 1] = INT_MIN;
      kept[p] = 0;
    }
  }
}

// A pixel joins its same-label neighbours above and to the left. With 8-connectivity, when the
// pixel above matches, the other upper neighbours and the left one already share its tree.
__global__ void merge_kernel(const int32_t* labels, int32_t* parent, Options o) {
  const int64_t n = o.batch * o.height * o.width;
  const int64_t image = o.height * o.width;
  for (int64_t p = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; p < n;
       p += int64_t{gridDim.x} * blockDim.x) {
    const int32_t l = labels[p];
    if (l == o.ignore_index) continue;
    const int64_t col = p % o.width;
    const bool top = (p % image) < o.width;
    const int32_t q = static_cast<int32_t>(p);
    const int32_t w = static_cast<int32_t>(o.width);
    const bool up = !top && labels[p - w] == l;
    const bool left = col > 0 && labels[p - 1] == l;
    if (up) unite(parent, q, q - w);
    if (up && o.connectivity == 8) continue;
    if (left) unite(parent, q, q - 1);
    if (o.connectivity == 8 && !top) {
      if (!left && col > 0 && labels[p - w - 1] == l) unite(parent, q, q - w - 1);
      if (col + 1 < o.width && labels[p - w + 1] == l) unite(parent, q, q - w + 1);
    }
  }
}

__global__ void compress_kernel(const int32_t* labels, int32_t* parent, Options o) {
  const int64_t n = o.batch * o.height * o.width;
  for (int64_t p = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; p < n;
       p += int64_t{gridDim.x} * blockDim.x) {
    if (labels[p] != o.ignore_index) parent[p] = find_root(parent, static_cast<int32_t>(p));
  }
}

__device__ __forceinline__ bool is_root(const int32_t* labels, const int32_t* parent,
                                        int64_t p, int32_t ignore_index) {
  return labels[p] != ignore_index && parent[p] == p;
}

// Exclusive block scan of one value per thread; returns the thread's prefix, sets *total.
__device__ int32_t block_exclusive_scan(int32_t value, int32_t* total) {
  __shared__ int32_t warp_sums[kThreads / 32];
  const int lane = threadIdx.x % 32;
  const int warp = threadIdx.x / 32;
  int32_t inclusive = value;
  for (int offset = 1; offset < 32; offset *= 2) {
    const int32_t other = __shfl_up_sync(kFullMask, inclusive, offset);
    if (lane >= offset) inclusive += other;
  }
  if (lane == 31) warp_sums[warp] = inclusive;
  __syncthreads();
  if (warp == 0) {
    int32_t s = lane < kThreads / 32 ? warp_sums[lane] : 0;
    for (int offset = 1; offset < 32; offset *= 2) {
      const int32_t other = __shfl_up_sync(kFullMask, s, offset);
      if (lane >= offset) s += other;
    }
    if (lane < kThreads / 32) warp_sums[lane] = s;
  }
  __syncthreads();
  const int32_t warp_prefix = warp > 0 ? warp_sums[warp - 1] : 0;
  *total = warp_sums[kThreads / 32 - 1];
  __syncthreads();
  return warp_prefix + inclusive - value;
}

// Numbers roots within tiles of kScanTile pixels.
__global__ void scan_tiles_kernel(const int32_t* labels, const int32_t* parent,
                                  int32_t* instance, int32_t* tile_sums, Options o) {
  const int64_t n = o.batch * o.height * o.width;
  const int64_t base = blockIdx.x * int64_t{kScanTile} + threadIdx.x * int64_t{kScanItems};
  int32_t count = 0;
  for (int k = 0; k < kScanItems; ++k) {
    const int64_t p = base + k;
    if (p < n && is_root(labels, parent, p, o.ignore_index)) ++count;
  }
  int32_t total = 0;
  int32_t prefix = block_exclusive_scan(count, &total);
  for (int k = 0; k < kScanItems; ++k) {
    const int64_t p = base + k;
    if (p >= n) break;
    instance[p] = prefix;
    if (is_root(labels, parent, p, o.ignore_index)) ++prefix;
  }
  if (threadIdx.x == 0) tile_sums[blockIdx.x] = total;
}

// One block turns the tile counts into tile offsets; tile_sums[tiles] gets the total.
__global__ void scan_tile_sums_kernel(int32_t* tile_sums, int64_t tiles) {
  int32_t carry = 0;
  for (int64_t start = 0; start < tiles; start += kThreads) {
    const int64_t t = start + threadIdx.x;
    const int32_t value = t < tiles ? tile_sums[t] : 0;
    int32_t total = 0;
    const int32_t prefix = block_exclusive_scan(value, &total);
    if (t < tiles) tile_sums[t] = carry + prefix;
    carry += total;
  }
  if (threadIdx.x == 0) tile_sums[tiles] = carry;
}

// Finishes the numbering, records per-image offsets and clears each instance's sums.
__global__ void number_kernel(const int32_t* labels, const int32_t* parent, int32_t* offsets,
                              Workspace ws, Options o) {
  const int64_t n = o.batch * o.height * o.width;
  const int64_t image = o.height * o.width;
  for (int64_t p = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; p < n;
       p += int64_t{gridDim.x} * blockDim.x) {
    const int32_t id = ws.instance[p] + ws.tile_sums[p / kScanTile];
    ws.instance[p] = id;
    if (p % image == 0) offsets[p / image] = id;
    if (p == n - 1) offsets[o.batch] = ws.tile_sums[(n + kScanTile - 1) / kScanTile];
    if (is_root(labels, parent, p, o.ignore_index)) {
      ws.area[id] = 0;
      ws.label[id] = labels[p];
      ws.batch[id] = static_cast<int32_t>(p / image);
      ws.acc_x[id] = 0;
      ws.acc_y[id] = 0;
      ws.acc_z[id] = 0.0;
    }
  }
}

struct RunSums {
  int32_t id = -1;
  int32_t area = 0;
  unsigned long long cols = 0;
  unsigned long long rows = 0;
  double depth = 0.0;
};

__device__ __forceinline__ void add_sums(const RunSums& s, Workspace& ws) {
  atomicAdd(&ws.area[s.id], s.area);
  atomicAdd(&ws.acc_x[s.id], s.cols);
  atomicAdd(&ws.acc_y[s.id], s.rows);
  atomicAdd(&ws.acc_z[s.id], s.depth);
}

// Lanes holding the same instance pool their sums; the lowest of them adds the pool.
__device__ void add_sums_warp(RunSums s, Workspace& ws) {
  const unsigned peers = __match_any_sync(kFullMask, s.id);
  const int lane = threadIdx.x % 32;
  RunSums pooled = s;
  for (int i = 0; i < 32; ++i) {
    const int32_t area = __shfl_sync(kFullMask, s.area, i);
    const unsigned long long cols = __shfl_sync(kFullMask, s.cols, i);
    const unsigned long long rows = __shfl_sync(kFullMask, s.rows, i);
    const double depth = __shfl_sync(kFullMask, s.depth, i);
    if (i != lane && ((peers >> i) & 1u)) {
      pooled.area += area;
      pooled.cols += cols;
      pooled.rows += rows;
      pooled.depth += depth;
    }
  }
  if (s.id >= 0 && lane == __ffs(peers) - 1) add_sums(pooled, ws);
}

// Grid: x over (row, segment) pairs of one image, y over images. Each thread walks kSegment
// pixels of a row, summing runs of one instance, and tracks the image's depth range.
__global__ void reduce_kernel(const int32_t* labels, const float* depth, const int32_t* parent,
                              Workspace ws, Options o) {
  const int64_t segments = (o.width + kSegment - 1) / kSegment;
  const int64_t b = blockIdx.y;
  const int64_t t = blockIdx.x * int64_t{blockDim.x} + threadIdx.x;
  float lo = INFINITY;
  float hi = -INFINITY;
  RunSums run;
  if (t < o.height * segments) {
    const int64_t row = t / segments;
    const int64_t begin = (t % segments) * kSegment;
    const int64_t end = begin + kSegment < o.width ? begin + kSegment : o.width;
    const int64_t row_start = (b * o.height + row) * o.width;
    for (int64_t c = begin; c < end; ++c) {
      const int64_t p = row_start + c;
      int32_t id = -1;
      float d = 0.0f;
      if (labels[p] != o.ignore_index) {
        id = ws.instance[parent[p]];
        d = depth[p];
        lo = fminf(lo, d);
        hi = fmaxf(hi, d);
      }
      if (id != run.id) {
        if (run.id >= 0) add_sums(run, ws);
        run = RunSums{};
        run.id = id;
      }
      run.area += 1;
      run.cols += static_cast<unsigned long long>(c);
      run.rows += static_cast<unsigned long long>(row);
      run.depth += d;
    }
  }
  add_sums_warp(run, ws);

  __shared__ float block_lo[kThreads / 32];
  __shared__ float block_hi[kThreads / 32];
  for (int offset = 16; offset > 0; offset /= 2) {
    lo = fminf(lo, __shfl_xor_sync(kFullMask, lo, offset));
    hi = fmaxf(hi, __shfl_xor_sync(kFullMask, hi, offset));
  }
  const int lane = threadIdx.x % 32;
  const int warp = threadIdx.x / 32;
  if (lane == 0) {
    block_lo[warp] = lo;
    block_hi[warp] = hi;
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    for (int i = 1; i < kThreads / 32; ++i) {
      lo = fminf(lo, block_lo[i]);
      hi = fmaxf(hi, block_hi[i]);
    }
    if (lo <= hi) {
      atomicMin(&ws.depth_range[2 * b], ordered(lo));
      atomicMax(&ws.depth_range[2 * b + 1], ordered(hi));
    }
  }
}

// Counts each image's instances of at least min_area.
__global__ void count_kept_kernel(const int32_t* offsets, Workspace ws, Options o) {
  const int32_t count = offsets[o.batch];
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < count;
       i += int64_t{gridDim.x} * blockDim.x) {
    if (ws.area[i] >= o.min_area) atomicAdd(&ws.kept[ws.batch[i]], 1);
  }
}

// Waits for the device and throws std::invalid_argument when an image holds more than
// max_instances instances of at least min_area.
void check_instance_count(const int32_t* offsets, Workspace& ws, const Options& o,
                          cudaStream_t stream) {
  count_kept_kernel<<<blocks_for(o.batch * o.height * o.width), kThreads, 0, stream>>>(offsets,
                                                                                       ws, o);
  check(cudaGetLastError(), "kernel launch");
  std::vector<int32_t> kept(o.batch);
  check(cudaMemcpyAsync(kept.data(), ws.kept, o.batch * sizeof(int32_t), cudaMemcpyDeviceToHost,
                        stream),
        "cudaMemcpyAsync");
  check(cudaStreamSynchronize(stream), "cudaStreamSynchronize");
  for (int64_t b = 0; b < o.batch; ++b) {
    if (kept[b] > o.max_instances) {
      throw std::invalid_argument(too_many_instances(b, kept[b], o));
    }
  }
}

// Sums become centroids (x, y, z) in place.
__global__ void centroid_kernel(const int32_t* offsets, Workspace ws, Options o) {
  const int32_t count = offsets[o.batch];
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < count;
       i += int64_t{gridDim.x} * blockDim.x) {
    const double area = ws.area[i];
    const int32_t b = ws.batch[i];
    const double lo = unordered(ws.depth_range[2 * b]);
    const double hi = unordered(ws.depth_range[2 * b + 1]);
    const double range = hi - lo;
    const double x = (static_cast<double>(ws.acc_x[i]) / area + 0.5) / o.width;
    const double y = (static_cast<double>(ws.acc_y[i]) / area + 0.5) / o.height;
    const double z = range > 0.0 ? o.depth_weight * (ws.acc_z[i] / area - lo) / range : 0.0;
    ws.acc_x[i] = __double_as_longlong(x);
    ws.acc_y[i] = __double_as_longlong(y);
    ws.acc_z[i] = z;
  }
}

__device__ __forceinline__ double centroid_x(const Workspace& ws, int64_t i) {
  return __longlong_as_double(ws.acc_x[i]);
}

__device__ __forceinline__ double centroid_y(const Workspace& ws, int64_t i) {
  return __longlong_as_double(ws.acc_y[i]);
}

// One warp per instance sums the directions to every supporter of its image.
__global__ void dispersion_kernel(const int32_t* offsets, Workspace ws, Options o) {
  const int32_t count = offsets[o.batch];
  const int lane = threadIdx.x % 32;
  const int64_t warps = int64_t{gridDim.x} * blockDim.x / 32;
  for (int64_t i = (blockIdx.x * int64_t{blockDim.x} + threadIdx.x) / 32; i < count;
       i += warps) {
    if (ws.area[i] < o.min_area) {
      if (lane == 0) ws.dispersion[i] = o.fill;
      continue;
    }
    const int32_t b = ws.batch[i];
    const int32_t cls = ws.label[i];
    const double xi = centroid_x(ws, i);
    const double yi = centroid_y(ws, i);
    const double zi = ws.acc_z[i];
    double sx = 0.0, sy = 0.0, sz = 0.0, sw = 0.0;
    for (int64_t j = offsets[b] + lane; j < offsets[b + 1]; j += 32) {
      if (ws.area[j] < o.min_area || ws.label[j] == cls) continue;
      const double dx = centroid_x(ws, j) - xi;
      const double dy = centroid_y(ws, j) - yi;
      const double dz = ws.acc_z[j] - zi;
      const double distance = sqrt(dx * dx + dy * dy + dz * dz);
      if (distance <= kMinDistance) continue;
      const double w = supporter_weight(o.weighting, ws.area[j]);
      sx += w * dx / distance;
      sy += w * dy / distance;
      sz += w * dz / distance;
      sw += w;
    }
    for (int offset = 16; offset > 0; offset /= 2) {
      sx += __shfl_xor_sync(kFullMask, sx, offset);
      sy += __shfl_xor_sync(kFullMask, sy, offset);
      sz += __shfl_xor_sync(kFullMask, sz, offset);
      sw += __shfl_xor_sync(kFullMask, sw, offset);
    }
    if (lane == 0) ws.dispersion[i] = dispersion_value(sx, sy, sz, sw, o.fill);
  }
}

__global__ void paint_kernel(const int32_t* labels, const int32_t* parent, float* out,
                             int32_t* ids, Workspace ws, Options o) {
  const int64_t n = o.batch * o.height * o.width;
  for (int64_t p = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; p < n;
       p += int64_t{gridDim.x} * blockDim.x) {
    const bool valid = labels[p] != o.ignore_index;
    const int32_t id = valid ? ws.instance[parent[p]] : -1;
    out[p] = valid ? ws.dispersion[id] : o.fill;
    if (ids != nullptr) ids[p] = id;
  }
}

__global__ void table_kernel(Workspace ws, double* table, int64_t count) {
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < count;
       i += int64_t{gridDim.x} * blockDim.x) {
    double* row = table + i * kNumColumns;
    row[kBatch] = ws.batch[i];
    row[kClass] = ws.label[i];
    row[kArea] = ws.area[i];
    row[kX] = centroid_x(ws, i);
    row[kY] = centroid_y(ws, i);
    row[kZ] = ws.acc_z[i];
    row[kDispersion] = ws.dispersion[i];
  }
}

void use_device(int device) {
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess || count == 0) {
    cudaGetLastError();
    throw std::runtime_error(
        "uda_dispersion: no CUDA device usable by its CUDA runtime (no GPU, or a driver older "
        "than the CUDA version the module was built with)");
  }
  check(cudaSetDevice(device), "cudaSetDevice");
}

}  // namespace

int64_t cuda_workspace_bytes(const Options& options) {
  return Workspace(nullptr, options).bytes;
}

void cuda_dispersion(const int32_t* labels, const float* depth, float* out, int32_t* ids,
                     int32_t* offsets, void* workspace, const Options& o, int device,
                     void* stream_handle) {
  const int64_t n = o.batch * o.height * o.width;
  if (n >= INT_MAX) throw std::invalid_argument("batch too large: at most 2^31 - 2 pixels");
  if (o.batch > 65535) throw std::invalid_argument("batch too large: at most 65535 images");
  use_device(device);
  const cudaStream_t stream = static_cast<cudaStream_t>(stream_handle);
  Workspace ws(workspace, o);
  const int blocks = blocks_for(n);
  const int64_t tiles = (n + kScanTile - 1) / kScanTile;
  const int64_t segments = o.height * ((o.width + kSegment - 1) / kSegment);
  const dim3 reduce_grid(static_cast<unsigned>((segments + kThreads - 1) / kThreads),
                         static_cast<unsigned>(o.batch));

  init_kernel<<<blocks, kThreads, 0, stream>>>(ws.parent, ws.depth_range, ws.kept, n, o.batch);
  merge_kernel<<<blocks, kThreads, 0, stream>>>(labels, ws.parent, o);
  compress_kernel<<<blocks, kThreads, 0, stream>>>(labels, ws.parent, o);
  scan_tiles_kernel<<<static_cast<unsigned>(tiles), kThreads, 0, stream>>>(
      labels, ws.parent, ws.instance, ws.tile_sums, o);
  scan_tile_sums_kernel<<<1, kThreads, 0, stream>>>(ws.tile_sums, tiles);
  number_kernel<<<blocks, kThreads, 0, stream>>>(labels, ws.parent, offsets, ws, o);
  reduce_kernel<<<reduce_grid, kThreads, 0, stream>>>(labels, depth, ws.parent, ws, o);
  if (o.max_instances >= 0 && instance_bound(o) > o.max_instances) {
    check_instance_count(offsets, ws, o, stream);
  }
  centroid_kernel<<<blocks, kThreads, 0, stream>>>(offsets, ws, o);
  dispersion_kernel<<<blocks, kThreads, 0, stream>>>(offsets, ws, o);
  paint_kernel<<<blocks, kThreads, 0, stream>>>(labels, ws.parent, out, ids, ws, o);
  check(cudaGetLastError(), "kernel launch");
}

void cuda_table(const void* workspace, double* table, int64_t count, const Options& o,
                int device, void* stream_handle) {
  if (count <= 0) return;
  use_device(device);
  Workspace ws(const_cast<void*>(workspace), o);
  table_kernel<<<blocks_for(count), kThreads, 0, static_cast<cudaStream_t>(stream_handle)>>>(
      ws, table, count);
  check(cudaGetLastError(), "kernel launch");
}

}  // namespace uda
