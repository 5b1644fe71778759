// Python binding. Arrays arrive as integer addresses (tensor.data_ptr(), array.ctypes.data)
// so the module is independent of the torch version it runs under.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <stdexcept>
#include <string>

#include "dispersion.h"

namespace py = pybind11;

namespace {

uda::Options make_options(int64_t batch, int64_t height, int64_t width, int32_t ignore_index,
                          int connectivity, int64_t min_area, double depth_weight,
                          int weighting, float fill, int64_t max_instances) {
  if (connectivity != 4 && connectivity != 8) {
    throw std::invalid_argument("connectivity must be 4 or 8");
  }
  if (weighting < 0 || weighting > 2) throw std::invalid_argument("unknown weighting code");
  if (batch <= 0 || height <= 0 || width <= 0) throw std::invalid_argument("empty batch");
  uda::Options o;
  o.batch = batch;
  o.height = height;
  o.width = width;
  o.ignore_index = ignore_index;
  o.connectivity = connectivity;
  o.min_area = min_area;
  o.depth_weight = depth_weight;
  o.weighting = static_cast<uda::Weighting>(weighting);
  o.fill = fill;
  o.max_instances = max_instances;
  return o;
}

template <typename T>
T* address(uintptr_t value) {
  return reinterpret_cast<T*>(value);
}

// Called by the CPU backend from the calling thread while it works without the GIL: true when
// a signal handler raised (KeyboardInterrupt for Ctrl-C), whose error then stays set.
bool python_signal_pending() {
  py::gil_scoped_acquire acquire;
  return PyErr_CheckSignals() != 0;
}

py::array_t<double> to_table(const std::vector<double>& values) {
  const py::ssize_t rows = static_cast<py::ssize_t>(values.size() / uda::kNumColumns);
  py::array_t<double> table({rows, static_cast<py::ssize_t>(uda::kNumColumns)});
  std::copy(values.begin(), values.end(), table.mutable_data());
  return table;
}

}  // namespace

PYBIND11_MODULE(_native, m) {
  m.doc() = "Native kernels of uda_dispersion (CPU, and CUDA when built with it).";
  m.attr("table_columns") =
      py::make_tuple("batch", "class", "area", "x", "y", "z", "dispersion");

  m.def(
      "cpu_dispersion",
      [](uintptr_t labels, int label_type, uintptr_t depth, uintptr_t out, uintptr_t ids,
         int64_t batch,
         int64_t height, int64_t width, int32_t ignore_index, int connectivity,
         int64_t min_area, double depth_weight, int weighting, float fill, int64_t max_instances,
         int num_threads) {
        const uda::Options o = make_options(batch, height, width, ignore_index, connectivity,
                                            min_area, depth_weight, weighting, fill,
                                            max_instances);
        if (label_type < 0 || label_type > 4) throw std::invalid_argument("unknown label type");
        std::vector<double> table;
        try {
          py::gil_scoped_release release;
          table = uda::cpu_dispersion(address<const void>(labels),
                                      static_cast<uda::LabelType>(label_type),
                                      address<const float>(depth), address<float>(out),
                                      address<int32_t>(ids), o, num_threads,
                                      python_signal_pending);
        } catch (const uda::Interrupted&) {
          throw py::error_already_set();
        }
        return to_table(table);
      },
      "Dispersion map of a contiguous B x H x W batch (labels of `label_type`: uint8, int8, "
      "int16, int32, int64; float32 depth) on the CPU; `ids` may be 0; max_instances -1 for "
      "no limit. Runs without the GIL and raises what a signal handler raises (Ctrl-C: "
      "KeyboardInterrupt) within milliseconds. Returns the N x 7 instance table.");

#ifdef UDA_DISPERSION_WITH_CUDA
  m.attr("has_cuda") = true;
  m.def("cuda_workspace_bytes", [](int64_t batch, int64_t height, int64_t width) {
    return uda::cuda_workspace_bytes(make_options(batch, height, width, 255, 8, 0, 1.0, 0, 0, -1));
  });
  m.def(
      "cuda_dispersion",
      [](uintptr_t labels, uintptr_t depth, uintptr_t out, uintptr_t ids, uintptr_t offsets,
         uintptr_t workspace, int64_t batch, int64_t height, int64_t width, int32_t ignore_index,
         int connectivity, int64_t min_area, double depth_weight, int weighting, float fill,
         int64_t max_instances, int device, uintptr_t stream) {
        const uda::Options o = make_options(batch, height, width, ignore_index, connectivity,
                                            min_area, depth_weight, weighting, fill,
                                            max_instances);
        py::gil_scoped_release release;
        uda::cuda_dispersion(address<const int32_t>(labels), address<const float>(depth),
                             address<float>(out), address<int32_t>(ids),
                             address<int32_t>(offsets), address<void>(workspace), o, device,
                             address<void>(stream));
      },
      "Queues the dispersion map of a B x H x W batch in device memory on `stream`; waits "
      "for the device only to check max_instances where an image could exceed it.");
  m.def(
      "cuda_table",
      [](uintptr_t workspace, uintptr_t table, int64_t count, int64_t batch, int64_t height,
         int64_t width, int device, uintptr_t stream) {
        const uda::Options o = make_options(batch, height, width, 255, 8, 0, 1.0, 0, 0, -1);
        py::gil_scoped_release release;
        uda::cuda_table(address<const void>(workspace), address<double>(table), count, o,
                        device, address<void>(stream));
      },
      "Queues a copy of the first `count` instance-table rows left in `workspace`.");
#else
  m.attr("has_cuda") = false;
#endif
}
