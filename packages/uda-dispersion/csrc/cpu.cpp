// CPU backend. One raster pass finds the runs of equal labels in each row and joins each run
// with the touching runs of the row above (union-find over runs, all classes at once), so the
// labelling, the per-instance sums, the depth range and the input checks come out of a single
// pass over the pixels. Painting writes whole runs back.
#include <algorithm>
#include <atomic>
#include <limits>
#include <stdexcept>
#include <string>
#include <thread>

#include "dispersion.h"

namespace uda {
namespace {

struct Run {
  int32_t row;
  int32_t begin;  // first column
  int32_t end;    // one past the last column
  int32_t label;  // ignore_index for a run of ignored pixels
  double depth_sum;
};

struct InstanceSums {
  int64_t area = 0;
  int64_t sum_col = 0;
  int64_t sum_row = 0;
  double sum_depth = 0.0;
  int32_t label = 0;
};

struct InputError {
  bool bad_label = false;
  int64_t label = 0;
  bool bad_depth = false;
};

// Sum, min and max of depth[begin, end), in four independent chains for speed.
void depth_stats(const float* depth, int32_t begin, int32_t end, double& sum, float& lo,
                 float& hi) {
  double s[4] = {0.0, 0.0, 0.0, 0.0};
  float l[4] = {lo, lo, lo, lo};
  float h[4] = {hi, hi, hi, hi};
  int32_t k = begin;
  for (; k + 4 <= end; k += 4) {
    for (int j = 0; j < 4; ++j) {
      const float d = depth[k + j];
      s[j] += d;
      l[j] = std::min(l[j], d);
      h[j] = std::max(h[j], d);
    }
  }
  for (; k < end; ++k) {
    s[0] += depth[k];
    l[0] = std::min(l[0], depth[k]);
    h[0] = std::max(h[0], depth[k]);
  }
  sum = (s[0] + s[1]) + (s[2] + s[3]);
  lo = std::min(std::min(l[0], l[1]), std::min(l[2], l[3]));
  hi = std::max(std::max(h[0], h[1]), std::max(h[2], h[3]));
}

// Scratch memory of one worker thread, reused from image to image.
class ImageWorker {
 public:
  // Writes the map (and image-local instance ids) of one image; returns its instance table.
  template <typename Label>
  std::vector<double> process(const Label* labels, const float* depth, float* out, int32_t* ids,
                              int64_t batch_index, const Options& o, InputError& error) {
    find_runs(labels, depth, o, error);
    if (error.bad_label || error.bad_depth) return {};
    join_runs(o);
    number_instances(o);
    std::vector<double> table = disperse(batch_index, o);
    paint(out, ids, table, o);
    return table;
  }

 private:
  std::vector<Run> runs_;
  std::vector<int32_t> row_start_;  // first run of each row, plus the end of the last row
  std::vector<int32_t> parent_;
  std::vector<int32_t> instance_of_run_;  // -1 for runs of ignored pixels
  std::vector<InstanceSums> sums_;
  float depth_min_ = 0.0f;
  float depth_max_ = 0.0f;

  template <typename Label>
  void find_runs(const Label* labels, const float* depth, const Options& o, InputError& error) {
    const int32_t width = static_cast<int32_t>(o.width);
    const int64_t ignore = o.ignore_index;
    runs_.clear();
    row_start_.resize(o.height + 1);
    float lo = std::numeric_limits<float>::infinity();
    float hi = -lo;
    for (int32_t r = 0; r < o.height; ++r) {
      row_start_[r] = static_cast<int32_t>(runs_.size());
      const Label* row = labels + int64_t{r} * width;
      const float* drow = depth + int64_t{r} * width;
      int32_t c = 0;
      while (c < width) {
        const Label label = row[c];
        int32_t end = c + 1;
        while (end < width && row[end] == label) ++end;
        const int64_t value = static_cast<int64_t>(label);
        const bool ignored = value == ignore;
        if (!ignored && (value < 0 || value > std::numeric_limits<int32_t>::max())) {
          error.bad_label = true;
          error.label = value;
        }
        double sum = 0.0;
        float run_lo = lo;
        float run_hi = hi;
        depth_stats(drow, c, end, sum, run_lo, run_hi);
        if (!std::isfinite(sum)) error.bad_depth = true;
        if (!ignored) {
          lo = run_lo;
          hi = run_hi;
        }
        runs_.push_back({r, c, end, ignored ? o.ignore_index : static_cast<int32_t>(value), sum});
        c = end;
      }
    }
    row_start_[o.height] = static_cast<int32_t>(runs_.size());
    depth_min_ = lo;
    depth_max_ = hi;
  }

  int32_t find(int32_t x) {
    while (parent_[x] != x) {
      parent_[x] = parent_[parent_[x]];
      x = parent_[x];
    }
    return x;
  }

  void unite(int32_t a, int32_t b) {
    a = find(a);
    b = find(b);
    if (a < b) {
      parent_[b] = a;
    } else if (b < a) {
      parent_[a] = b;
    }
  }

  // Runs of the same label touch when their column ranges overlap (4-connectivity) or
  // overlap once widened by one column (8-connectivity: diagonal contact).
  void join_runs(const Options& o) {
    const int32_t reach = o.connectivity == 8 ? 1 : 0;
    parent_.resize(runs_.size());
    for (size_t i = 0; i < runs_.size(); ++i) parent_[i] = static_cast<int32_t>(i);
    for (int64_t r = 1; r < o.height; ++r) {
      int32_t above = row_start_[r - 1];
      const int32_t above_end = row_start_[r];
      for (int32_t i = row_start_[r]; i < row_start_[r + 1]; ++i) {
        const Run& run = runs_[i];
        while (above < above_end && runs_[above].end + reach <= run.begin) ++above;
        if (run.label == o.ignore_index) continue;
        for (int32_t j = above; j < above_end && runs_[j].begin < run.end + reach; ++j) {
          if (runs_[j].label == run.label) unite(i, j);
        }
      }
    }
  }

  // Roots are the first run of their component, so numbering roots in run order numbers
  // instances in raster order of their first pixel.
  void number_instances(const Options& o) {
    instance_of_run_.resize(runs_.size());
    sums_.clear();
    for (size_t i = 0; i < runs_.size(); ++i) {
      const Run& run = runs_[i];
      if (run.label == o.ignore_index) {
        instance_of_run_[i] = -1;
        continue;
      }
      const int32_t root = find(static_cast<int32_t>(i));
      int32_t instance;
      if (root == static_cast<int32_t>(i)) {
        instance = static_cast<int32_t>(sums_.size());
        sums_.emplace_back();
        sums_.back().label = run.label;
      } else {
        instance = instance_of_run_[root];
      }
      instance_of_run_[i] = instance;
      const int64_t length = run.end - run.begin;
      InstanceSums& s = sums_[instance];
      s.area += length;
      s.sum_col += (int64_t{run.begin} + run.end - 1) * length / 2;
      s.sum_row += int64_t{run.row} * length;
      s.sum_depth += run.depth_sum;
    }
  }

  std::vector<double> disperse(int64_t batch_index, const Options& o) {
    const size_t n = sums_.size();
    std::vector<double> table(n * kNumColumns);
    std::vector<int32_t> kept;
    const double range = double{depth_max_} - double{depth_min_};
    for (size_t i = 0; i < n; ++i) {
      const InstanceSums& s = sums_[i];
      const double area = static_cast<double>(s.area);
      double* row = &table[i * kNumColumns];
      row[kBatch] = static_cast<double>(batch_index);
      row[kClass] = s.label;
      row[kArea] = area;
      row[kX] = (static_cast<double>(s.sum_col) / area + 0.5) / static_cast<double>(o.width);
      row[kY] = (static_cast<double>(s.sum_row) / area + 0.5) / static_cast<double>(o.height);
      row[kZ] = range > 0.0 ? o.depth_weight * (s.sum_depth / area - depth_min_) / range : 0.0;
      row[kDispersion] = o.fill;
      if (s.area >= o.min_area) kept.push_back(static_cast<int32_t>(i));
    }
    // Each pair once: u_ji = -u_ij.
    struct Centroid {
      double x, y, z, weight;
      double label;
    };
    std::vector<Centroid> c(kept.size());
    for (size_t k = 0; k < kept.size(); ++k) {
      const double* row = &table[kept[k] * kNumColumns];
      c[k] = {row[kX], row[kY], row[kZ], supporter_weight(o.weighting, row[kArea]), row[kClass]};
    }
    std::vector<double> sums(kept.size() * 4, 0.0);  // sum w u (x, y, z) and sum w
    for (size_t i = 0; i < c.size(); ++i) {
      double* si = &sums[i * 4];
      for (size_t j = i + 1; j < c.size(); ++j) {
        if (c[j].label == c[i].label) continue;
        const double dx = c[j].x - c[i].x;
        const double dy = c[j].y - c[i].y;
        const double dz = c[j].z - c[i].z;
        const double distance = std::sqrt(dx * dx + dy * dy + dz * dz);
        if (distance <= kMinDistance) continue;
        const double inverse = 1.0 / distance;
        const double ux = dx * inverse, uy = dy * inverse, uz = dz * inverse;
        double* sj = &sums[j * 4];
        si[0] += c[j].weight * ux;
        si[1] += c[j].weight * uy;
        si[2] += c[j].weight * uz;
        si[3] += c[j].weight;
        sj[0] -= c[i].weight * ux;
        sj[1] -= c[i].weight * uy;
        sj[2] -= c[i].weight * uz;
        sj[3] += c[i].weight;
      }
    }
    for (size_t k = 0; k < kept.size(); ++k) {
      const double* sk = &sums[k * 4];
      table[kept[k] * kNumColumns + kDispersion] =
          dispersion_value(sk[0], sk[1], sk[2], sk[3], o.fill);
    }
    return table;
  }

  void paint(float* out, int32_t* ids, const std::vector<double>& table, const Options& o) {
    for (size_t i = 0; i < runs_.size(); ++i) {
      const Run& run = runs_[i];
      const int32_t instance = instance_of_run_[i];
      const int64_t start = int64_t{run.row} * o.width;
      const float value = instance < 0
                              ? o.fill
                              : static_cast<float>(table[instance * kNumColumns + kDispersion]);
      std::fill(out + start + run.begin, out + start + run.end, value);
      if (ids != nullptr) std::fill(ids + start + run.begin, ids + start + run.end, instance);
    }
  }
};

template <typename Label>
std::vector<double> run_batch(const Label* labels, const float* depth, float* out, int32_t* ids,
                              const Options& o, int num_threads) {
  const int64_t pixels = o.height * o.width;
  std::vector<std::vector<double>> tables(o.batch);
  std::vector<InputError> errors(o.batch);
  std::atomic<int64_t> next{0};
  auto work = [&]() {
    ImageWorker worker;
    for (int64_t b = next++; b < o.batch; b = next++) {
      const int64_t offset = b * pixels;
      tables[b] = worker.process(labels + offset, depth + offset, out + offset,
                                 ids == nullptr ? nullptr : ids + offset, b, o, errors[b]);
    }
  };
  const int64_t workers = std::max<int64_t>(1, std::min<int64_t>(num_threads, o.batch));
  std::vector<std::thread> threads;
  for (int64_t t = 1; t < workers; ++t) threads.emplace_back(work);
  work();
  for (std::thread& t : threads) t.join();

  for (const InputError& e : errors) {
    if (e.bad_label) {
      throw std::invalid_argument("labels must be in [0, 2^31) apart from the ignore value (" +
                                  std::to_string(o.ignore_index) + "), found " +
                                  std::to_string(e.label));
    }
    if (e.bad_depth) throw std::invalid_argument("depth holds NaN or infinite values");
  }
  std::vector<double> table;
  int32_t first_id = 0;
  for (int64_t b = 0; b < o.batch; ++b) {
    if (ids != nullptr && first_id > 0) {
      int32_t* image_ids = ids + b * pixels;
      for (int64_t p = 0; p < pixels; ++p) {
        if (image_ids[p] >= 0) image_ids[p] += first_id;
      }
    }
    first_id += static_cast<int32_t>(tables[b].size() / kNumColumns);
    table.insert(table.end(), tables[b].begin(), tables[b].end());
  }
  return table;
}

}  // namespace

std::vector<double> cpu_dispersion(const void* labels, LabelType label_type, const float* depth,
                                   float* out, int32_t* ids, const Options& o, int num_threads) {
  switch (label_type) {
    case LabelType::kUInt8:
      return run_batch(static_cast<const uint8_t*>(labels), depth, out, ids, o, num_threads);
    case LabelType::kInt8:
      return run_batch(static_cast<const int8_t*>(labels), depth, out, ids, o, num_threads);
    case LabelType::kInt16:
      return run_batch(static_cast<const int16_t*>(labels), depth, out, ids, o, num_threads);
    case LabelType::kInt32:
      return run_batch(static_cast<const int32_t*>(labels), depth, out, ids, o, num_threads);
    case LabelType::kInt64:
      return run_batch(static_cast<const int64_t*>(labels), depth, out, ids, o, num_threads);
  }
  throw std::invalid_argument("unsupported label type");
}

}  // namespace uda
