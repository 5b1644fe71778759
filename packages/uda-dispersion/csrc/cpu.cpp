// CPU backend. One raster pass finds the runs of equal labels in each row and joins each run
// with the touching runs of the row above (union-find over runs, all classes at once), so the
// labelling, the per-instance sums, the depth range and the input checks come out of a single
// pass over the pixels. Painting writes whole runs back.
#include <algorithm>
#include <atomic>
#include <chrono>
#include <limits>
#include <stdexcept>
#include <string>
#include <thread>

#if defined(__SSE2__) && !defined(UDA_DISPERSION_SCALAR)
#include <emmintrin.h>
#endif

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

// The kept instances' centroids and supporter weights, one array per coordinate.
struct Centroids {
  std::vector<double> x, y, z, weight, label;
  size_t size() const { return x.size(); }
};

// What one image holds between labelling and painting.
struct ImageState {
  std::vector<Run> runs;
  std::vector<int32_t> instance_of_run;  // -1 for runs of ignored pixels
  std::vector<double> table;
  std::vector<int32_t> kept;  // instances of at least min_area
  Centroids centroids;        // of the kept instances
  std::vector<double> sums;   // per kept instance: sum w u (x, y, z) and sum w
  InputError error;
};

// Scratch memory of one worker thread, reused from image to image.
class Labeller {
 public:
  // Finds the instances of one image and their table, leaving the dispersion at `fill`.
  template <typename Label>
  void process(const Label* labels, const float* depth, int64_t batch_index, const Options& o,
               ImageState& image) {
    find_runs(labels, depth, o, image);
    if (image.error.bad_label || image.error.bad_depth) return;
    join_runs(o, image.runs);
    number_instances(o, image);
    tabulate(batch_index, o, image);
  }

 private:
  std::vector<int32_t> row_start_;  // first run of each row, plus the end of the last row
  std::vector<int32_t> parent_;
  std::vector<InstanceSums> sums_;
  float depth_min_ = 0.0f;
  float depth_max_ = 0.0f;

  template <typename Label>
  void find_runs(const Label* labels, const float* depth, const Options& o, ImageState& image) {
    const int32_t width = static_cast<int32_t>(o.width);
    const int64_t ignore = o.ignore_index;
    std::vector<Run>& runs = image.runs;
    InputError& error = image.error;
    runs.clear();
    row_start_.resize(o.height + 1);
    float lo = std::numeric_limits<float>::infinity();
    float hi = -lo;
    for (int32_t r = 0; r < o.height; ++r) {
      row_start_[r] = static_cast<int32_t>(runs.size());
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
        runs.push_back({r, c, end, ignored ? o.ignore_index : static_cast<int32_t>(value), sum});
        c = end;
      }
    }
    row_start_[o.height] = static_cast<int32_t>(runs.size());
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
  void join_runs(const Options& o, const std::vector<Run>& runs) {
    const int32_t reach = o.connectivity == 8 ? 1 : 0;
    parent_.resize(runs.size());
    for (size_t i = 0; i < runs.size(); ++i) parent_[i] = static_cast<int32_t>(i);
    for (int64_t r = 1; r < o.height; ++r) {
      int32_t above = row_start_[r - 1];
      const int32_t above_end = row_start_[r];
      for (int32_t i = row_start_[r]; i < row_start_[r + 1]; ++i) {
        const Run& run = runs[i];
        while (above < above_end && runs[above].end + reach <= run.begin) ++above;
        if (run.label == o.ignore_index) continue;
        for (int32_t j = above; j < above_end && runs[j].begin < run.end + reach; ++j) {
          if (runs[j].label == run.label) unite(i, j);
        }
      }
    }
  }

  // Roots are the first run of their component, so numbering roots in run order numbers
  // instances in raster order of their first pixel.
  void number_instances(const Options& o, ImageState& image) {
    const std::vector<Run>& runs = image.runs;
    std::vector<int32_t>& instance_of_run = image.instance_of_run;
    instance_of_run.resize(runs.size());
    sums_.clear();
    for (size_t i = 0; i < runs.size(); ++i) {
      const Run& run = runs[i];
      if (run.label == o.ignore_index) {
        instance_of_run[i] = -1;
        continue;
      }
      const int32_t root = find(static_cast<int32_t>(i));
      int32_t instance;
      if (root == static_cast<int32_t>(i)) {
        instance = static_cast<int32_t>(sums_.size());
        sums_.emplace_back();
        sums_.back().label = run.label;
      } else {
        instance = instance_of_run[root];
      }
      instance_of_run[i] = instance;
      const int64_t length = run.end - run.begin;
      InstanceSums& s = sums_[instance];
      s.area += length;
      s.sum_col += (int64_t{run.begin} + run.end - 1) * length / 2;
      s.sum_row += int64_t{run.row} * length;
      s.sum_depth += run.depth_sum;
    }
  }

  void tabulate(int64_t batch_index, const Options& o, ImageState& image) {
    const size_t n = sums_.size();
    std::vector<double>& table = image.table;
    table.assign(n * kNumColumns, 0.0);
    image.kept.clear();
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
      if (s.area >= o.min_area) image.kept.push_back(static_cast<int32_t>(i));
    }
    Centroids& c = image.centroids;
    for (std::vector<double>* v : {&c.x, &c.y, &c.z, &c.weight, &c.label}) {
      v->resize(image.kept.size());
    }
    for (size_t k = 0; k < image.kept.size(); ++k) {
      const double* row = &table[image.kept[k] * kNumColumns];
      c.x[k] = row[kX];
      c.y[k] = row[kY];
      c.z[k] = row[kZ];
      c.weight[k] = supporter_weight(o.weighting, row[kArea]);
      c.label[k] = row[kClass];
    }
    image.sums.assign(image.kept.size() * 4, 0.0);
  }
};

// Instances whose sums one pass over the supporters accumulates together.
constexpr size_t kLanes = 8;
// Instance-supporter pairs per unit of work: a few milliseconds, so that a pending signal is
// seen quickly and threads share the rows of one large image.
constexpr size_t kPairsPerTask = size_t{1} << 21;

// Adds w_j u_ij to s for one lane: the definition's arithmetic, the same on every path.
inline void add_supporter(double xi, double yi, double zi, double li, double xj, double yj,
                          double zj, double wj, double lj, double* s) {
  const double dx = xj - xi;
  const double dy = yj - yi;
  const double dz = zj - zi;
  const double distance = std::sqrt(dx * dx + dy * dy + dz * dz);
  if (lj == li || !(distance > kMinDistance)) return;
  const double inverse = 1.0 / distance;
  s[0] += wj * (dx * inverse);
  s[1] += wj * (dy * inverse);
  s[2] += wj * (dz * inverse);
  s[3] += wj;
}

// Sums over the supporters of kept instances [begin, end), each in supporter index order
// (so the sums do not depend on how the rows are split into tasks or threads). With SSE2 two
// instances share each instruction; a pair that does not support adds +0.0, which leaves the
// sums as the scalar path leaves them.
void pair_sums(const Centroids& c, size_t begin, size_t end, double* sums) {
  const size_t n = c.size();
  for (size_t base = begin; base < end; base += kLanes) {
    const size_t lanes = std::min(kLanes, end - base);
    double xi[kLanes], yi[kLanes], zi[kLanes], li[kLanes];
    double s[kLanes][4] = {};
    for (size_t k = 0; k < kLanes; ++k) {
      const size_t i = base + std::min(k, lanes - 1);
      xi[k] = c.x[i];
      yi[k] = c.y[i];
      zi[k] = c.z[i];
      li[k] = c.label[i];
    }
#if defined(__SSE2__) && !defined(UDA_DISPERSION_SCALAR)
    constexpr size_t kGroups = kLanes / 2;
    __m128d ax[kGroups], ay[kGroups], az[kGroups], aw[kGroups];
    for (size_t g = 0; g < kGroups; ++g) ax[g] = ay[g] = az[g] = aw[g] = _mm_setzero_pd();
    const __m128d one = _mm_set1_pd(1.0);
    const __m128d min_distance = _mm_set1_pd(kMinDistance);
    for (size_t j = 0; j < n; ++j) {
      const __m128d xj = _mm_set1_pd(c.x[j]), yj = _mm_set1_pd(c.y[j]);
      const __m128d zj = _mm_set1_pd(c.z[j]), wj = _mm_set1_pd(c.weight[j]);
      const __m128d lj = _mm_set1_pd(c.label[j]);
      for (size_t g = 0; g < kGroups; ++g) {
        const __m128d dx = _mm_sub_pd(xj, _mm_loadu_pd(xi + 2 * g));
        const __m128d dy = _mm_sub_pd(yj, _mm_loadu_pd(yi + 2 * g));
        const __m128d dz = _mm_sub_pd(zj, _mm_loadu_pd(zi + 2 * g));
        const __m128d distance = _mm_sqrt_pd(_mm_add_pd(
            _mm_add_pd(_mm_mul_pd(dx, dx), _mm_mul_pd(dy, dy)), _mm_mul_pd(dz, dz)));
        const __m128d inverse = _mm_div_pd(one, distance);
        const __m128d supports = _mm_and_pd(_mm_cmpneq_pd(lj, _mm_loadu_pd(li + 2 * g)),
                                            _mm_cmpgt_pd(distance, min_distance));
        ax[g] = _mm_add_pd(ax[g], _mm_and_pd(supports, _mm_mul_pd(wj, _mm_mul_pd(dx, inverse))));
        ay[g] = _mm_add_pd(ay[g], _mm_and_pd(supports, _mm_mul_pd(wj, _mm_mul_pd(dy, inverse))));
        az[g] = _mm_add_pd(az[g], _mm_and_pd(supports, _mm_mul_pd(wj, _mm_mul_pd(dz, inverse))));
        aw[g] = _mm_add_pd(aw[g], _mm_and_pd(supports, wj));
      }
    }
    for (size_t g = 0; g < kGroups; ++g) {
      double lane[4][2];
      _mm_storeu_pd(lane[0], ax[g]);
      _mm_storeu_pd(lane[1], ay[g]);
      _mm_storeu_pd(lane[2], az[g]);
      _mm_storeu_pd(lane[3], aw[g]);
      for (size_t q = 0; q < 4; ++q) {
        s[2 * g][q] = lane[q][0];
        s[2 * g + 1][q] = lane[q][1];
      }
    }
#else
    for (size_t j = 0; j < n; ++j) {
      for (size_t k = 0; k < kLanes; ++k) {
        add_supporter(xi[k], yi[k], zi[k], li[k], c.x[j], c.y[j], c.z[j], c.weight[j],
                      c.label[j], s[k]);
      }
    }
#endif
    for (size_t k = 0; k < lanes; ++k) std::copy(s[k], s[k] + 4, sums + (base + k) * 4);
  }
}

// Turns an image's sums into dispersion values, writes its map (and ids) by runs and frees
// what the image no longer needs.
void paint(float* out, int32_t* ids, ImageState& image, const Options& o) {
  for (size_t k = 0; k < image.kept.size(); ++k) {
    const double* s = &image.sums[k * 4];
    image.table[image.kept[k] * kNumColumns + kDispersion] =
        dispersion_value(s[0], s[1], s[2], s[3], o.fill);
  }
  for (size_t i = 0; i < image.runs.size(); ++i) {
    const Run& run = image.runs[i];
    const int32_t instance = image.instance_of_run[i];
    const int64_t start = int64_t{run.row} * o.width;
    const float value =
        instance < 0 ? o.fill
                     : static_cast<float>(image.table[instance * kNumColumns + kDispersion]);
    std::fill(out + start + run.begin, out + start + run.end, value);
    if (ids != nullptr) std::fill(ids + start + run.begin, ids + start + run.end, instance);
  }
  image.runs = {};
  image.instance_of_run = {};
  image.centroids = {};
  image.sums = {};
}

// Runs task(t, worker) for t in [0, count) on `workers` threads (worker 0 is the calling
// thread). Between its tasks the calling thread asks `interrupted` every few milliseconds, and
// once it says yes no thread starts another task. Returns false when interrupted.
template <typename Task>
bool parallel_for(int64_t count, int64_t workers, const std::function<bool()>& interrupted,
                  Task task) {
  constexpr auto kPollInterval = std::chrono::milliseconds(20);
  std::atomic<int64_t> next{0};
  std::atomic<bool> stop{false};
  auto work = [&](int64_t worker) {
    auto last_poll = std::chrono::steady_clock::now();
    for (int64_t t = next++; t < count && !stop.load(std::memory_order_relaxed); t = next++) {
      task(t, worker);
      if (worker != 0 || !interrupted) continue;
      const auto now = std::chrono::steady_clock::now();
      if (now - last_poll < kPollInterval) continue;
      last_poll = now;
      if (interrupted()) stop = true;
    }
  };
  std::vector<std::thread> threads;
  for (int64_t w = 1; w < workers; ++w) threads.emplace_back(work, w);
  work(0);
  for (std::thread& t : threads) t.join();
  return !stop;
}

int64_t workers_for(int64_t count, int num_threads) {
  return std::max<int64_t>(1, std::min<int64_t>(num_threads, count));
}

// One unit of the pair step: rows [begin, end) of the kept instances of one image.
struct PairTask {
  int64_t image;
  size_t begin;
  size_t end;
};

template <typename Label>
std::vector<double> run_batch(const Label* labels, const float* depth, float* out, int32_t* ids,
                              const Options& o, int num_threads,
                              const std::function<bool()>& interrupted) {
  const int64_t pixels = o.height * o.width;
  std::vector<ImageState> images(o.batch);
  const int64_t labelling_workers = workers_for(o.batch, num_threads);
  std::vector<Labeller> labellers(labelling_workers);
  const bool labelled =
      parallel_for(o.batch, labelling_workers, interrupted, [&](int64_t b, int64_t worker) {
        labellers[worker].process(labels + b * pixels, depth + b * pixels, b, o, images[b]);
      });
  if (!labelled) throw Interrupted{};
  for (const ImageState& image : images) {
    const InputError& e = image.error;
    if (e.bad_label) {
      throw std::invalid_argument("labels must be in [0, 2^31) apart from the ignore value (" +
                                  std::to_string(o.ignore_index) + "), found " +
                                  std::to_string(e.label));
    }
    if (e.bad_depth) throw std::invalid_argument("depth holds NaN or infinite values");
  }
  for (int64_t b = 0; b < o.batch; ++b) {
    const int64_t kept = static_cast<int64_t>(images[b].kept.size());
    if (o.max_instances >= 0 && kept > o.max_instances) {
      throw std::invalid_argument(too_many_instances(b, kept, o));
    }
  }

  // The pair step, in blocks of rows; the thread that finishes an image's last block paints it.
  std::vector<PairTask> tasks;
  std::vector<std::atomic<int64_t>> tasks_left(o.batch);
  for (std::atomic<int64_t>& left : tasks_left) left = 0;
  for (int64_t b = 0; b < o.batch; ++b) {
    const size_t n = images[b].kept.size();
    const size_t rows = std::max(kLanes, kPairsPerTask / std::max<size_t>(n, 1) / kLanes * kLanes);
    size_t begin = 0;
    do {
      tasks.push_back({b, begin, std::min(n, begin + rows)});
      ++tasks_left[b];
      begin += rows;
    } while (begin < n);
  }
  const int64_t task_count = static_cast<int64_t>(tasks.size());
  const bool dispersed = parallel_for(
      task_count, workers_for(task_count, num_threads), interrupted, [&](int64_t t, int64_t) {
        const PairTask& task = tasks[t];
        ImageState& image = images[task.image];
        pair_sums(image.centroids, task.begin, task.end, image.sums.data());
        if (--tasks_left[task.image] == 0) {
          const int64_t offset = task.image * pixels;
          paint(out + offset, ids == nullptr ? nullptr : ids + offset, image, o);
        }
      });
  if (!dispersed) throw Interrupted{};

  std::vector<double> table;
  int32_t first_id = 0;
  for (int64_t b = 0; b < o.batch; ++b) {
    if (ids != nullptr && first_id > 0) {
      int32_t* image_ids = ids + b * pixels;
      for (int64_t p = 0; p < pixels; ++p) {
        if (image_ids[p] >= 0) image_ids[p] += first_id;
      }
    }
    const std::vector<double>& image_table = images[b].table;
    first_id += static_cast<int32_t>(image_table.size() / kNumColumns);
    table.insert(table.end(), image_table.begin(), image_table.end());
  }
  return table;
}

}  // namespace

std::vector<double> cpu_dispersion(const void* labels, LabelType label_type, const float* depth,
                                   float* out, int32_t* ids, const Options& o, int num_threads,
                                   const std::function<bool()>& interrupted) {
  switch (label_type) {
    case LabelType::kUInt8:
      return run_batch(static_cast<const uint8_t*>(labels), depth, out, ids, o, num_threads,
                       interrupted);
    case LabelType::kInt8:
      return run_batch(static_cast<const int8_t*>(labels), depth, out, ids, o, num_threads,
                       interrupted);
    case LabelType::kInt16:
      return run_batch(static_cast<const int16_t*>(labels), depth, out, ids, o, num_threads,
                       interrupted);
    case LabelType::kInt32:
      return run_batch(static_cast<const int32_t*>(labels), depth, out, ids, o, num_threads,
                       interrupted);
    case LabelType::kInt64:
      return run_batch(static_cast<const int64_t*>(labels), depth, out, ids, o, num_threads,
                       interrupted);
  }
  throw std::invalid_argument("unsupported label type");
}

}  // namespace uda
