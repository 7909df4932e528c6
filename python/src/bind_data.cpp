// Activation datasets (read) and the activation writer (sharded datasets with a manifest).

#include <fmt/format.h>
#include <nanobind/stl/shared_ptr.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/vector.h>

#include <filesystem>
#include <memory>

#include "arrays.hpp"
#include "bindings.hpp"
#include "crosscoder/activation_writer.hpp"
#include "crosscoder/dataset.hpp"
#include "crosscoder/error.hpp"

namespace crosscoder::python {
namespace {

std::vector<std::filesystem::path> paths_from(const nb::handle& argument) {
  std::vector<std::filesystem::path> paths;
  if (nb::isinstance<nb::str>(argument)) {
    paths.emplace_back(nb::cast<std::string>(argument));
  } else if (nb::hasattr(argument, "__fspath__")) {
    paths.emplace_back(nb::cast<std::string>(argument.attr("__fspath__")()));
  } else {
    for (nb::handle item : argument) paths.emplace_back(nb::cast<std::string>(nb::str(item)));
  }
  if (paths.empty()) throw Error("ActivationDataset.open: no paths given");
  return paths;
}

// [first, first + count) clipped to the dataset, with a message naming the call.
std::int64_t checked_count(const ActivationDataset& data, std::int64_t first, std::int64_t count,
                           const char* what) {
  if (count < 0) count = data.rows() - first;
  if (first < 0 || count < 0 || first + count > data.rows()) {
    throw Error(fmt::format("{}: rows [{}, {}) are outside the dataset's {} rows", what, first,
                            first + count, data.rows()));
  }
  return count;
}

void bind_dataset(nb::module_& m) {
  nb::class_<ActivationDataset>(m, "ActivationDataset",
                                "Paired activations of M sources, read without loading them "
                                "(memory-mapped .npy / safetensors shards or a manifest).")
      .def_static(
          "open",
          [](nb::handle paths) {
            return std::make_shared<ActivationDataset>(ActivationDataset::open(paths_from(paths)));
          },
          nb::arg("paths"),
          "Opens a manifest (.json), one .npy per source, one [N, M, d] .npy, or a safetensors "
          "file (a path or a list of paths).")
      .def_prop_ro("sources", &ActivationDataset::sources)
      .def_prop_ro("width", &ActivationDataset::width)
      .def_prop_ro("rows", &ActivationDataset::rows)
      .def("__len__", [](const ActivationDataset& d) { return d.rows(); })
      .def_prop_ro("source_names", &ActivationDataset::source_names)
      .def_prop_ro("has_labels", &ActivationDataset::has_labels)
      .def_prop_ro("has_token_ids", &ActivationDataset::has_token_ids)
      .def_prop_ro("has_document_ids", &ActivationDataset::has_document_ids)
      .def_prop_ro("identity", &ActivationDataset::identity)
      .def(
          "read",
          [](const ActivationDataset& d, std::int64_t first, std::int64_t count) {
            count = checked_count(d, first, count, "ActivationDataset.read");
            std::vector<float> out(size(count * d.sources() * d.width()));
            {
              nb::gil_scoped_release release;
              d.read(first, count, out.data());
            }
            return to_numpy(std::move(out), {size(count), size(d.sources()), size(d.width())});
          },
          nb::arg("first") = 0, nb::arg("count") = -1,
          "Rows [first, first + count) as float32 [count, M, d] (count -1: to the end).")
      .def(
          "read_source",
          [](const ActivationDataset& d, int source, std::int64_t first, std::int64_t count) {
            count = checked_count(d, first, count, "ActivationDataset.read_source");
            std::vector<float> out(size(count * d.width()));
            {
              nb::gil_scoped_release release;
              d.read_source(source, first, count, out.data());
            }
            return to_numpy(std::move(out), {size(count), size(d.width())});
          },
          nb::arg("source"), nb::arg("first") = 0, nb::arg("count") = -1)
      .def(
          "read_labels",
          [](const ActivationDataset& d, std::int64_t first, std::int64_t count) {
            count = checked_count(d, first, count, "ActivationDataset.read_labels");
            std::vector<std::int8_t> out(size(count));
            d.read_labels(first, count, out.data());
            return to_numpy(std::move(out), {size(count)});
          },
          nb::arg("first") = 0, nb::arg("count") = -1)
      .def(
          "read_token_ids",
          [](const ActivationDataset& d, std::int64_t first, std::int64_t count) {
            count = checked_count(d, first, count, "ActivationDataset.read_token_ids");
            std::vector<std::int32_t> out(size(count));
            d.read_token_ids(first, count, out.data());
            return to_numpy(std::move(out), {size(count)});
          },
          nb::arg("first") = 0, nb::arg("count") = -1)
      .def(
          "read_document_ids",
          [](const ActivationDataset& d, std::int64_t first, std::int64_t count) {
            count = checked_count(d, first, count, "ActivationDataset.read_document_ids");
            std::vector<std::int32_t> out(size(count));
            d.read_document_ids(first, count, out.data());
            return to_numpy(std::move(out), {size(count)});
          },
          nb::arg("first") = 0, nb::arg("count") = -1)
      .def(
          "attach_labels",
          [](ActivationDataset& d, const std::string& path) { d.attach_labels(path); },
          nb::arg("path"), "Attaches per-row labels from a .npy file of N integers.")
      .def("describe", &ActivationDataset::describe)
      .def("__repr__", [](const ActivationDataset& d) {
        return fmt::format("<ActivationDataset {}>", d.describe());
      });
}

ActivationWriterOptions writer_options(std::vector<std::string> source_names, int width,
                                       const std::string& dtype, std::int64_t shard_rows,
                                       bool labels, bool token_ids, bool document_ids,
                                       bool overwrite) {
  ActivationWriterOptions options;
  options.source_names = std::move(source_names);
  options.width = width;
  options.dtype = parse_stored_type(dtype, "ActivationWriter dtype");
  options.shard_rows = shard_rows;
  options.labels = labels;
  options.token_ids = token_ids;
  options.document_ids = document_ids;
  options.overwrite = overwrite;
  return options;
}

void bind_writer(nb::module_& m) {
  nb::class_<ActivationWriter>(m, "ActivationWriter",
                               "Writes a sharded activation dataset with a manifest; close() "
                               "(or leaving a `with` block) writes the manifest atomically.")
      .def(
          "__init__",
          [](ActivationWriter* self, const std::string& directory,
             std::vector<std::string> source_names, int width, const std::string& dtype,
             std::int64_t shard_rows, bool labels, bool token_ids, bool document_ids,
             bool overwrite) {
            new (self) ActivationWriter(
                directory, writer_options(std::move(source_names), width, dtype, shard_rows, labels,
                                          token_ids, document_ids, overwrite));
          },
          nb::arg("directory"), nb::kw_only(), nb::arg("source_names"), nb::arg("width"),
          nb::arg("dtype") = "f32", nb::arg("shard_rows") = 65536, nb::arg("labels") = false,
          nb::arg("token_ids") = false, nb::arg("document_ids") = false,
          nb::arg("overwrite") = false)
      .def(
          "append",
          [](ActivationWriter& w, int source, nb::ndarray<nb::ro> rows) {
            const auto view = rows_of<float>(rows, "ActivationWriter.append: rows", w.width());
            nb::gil_scoped_release release;
            w.append(source, view.span());
          },
          nb::arg("source"), nb::arg("rows"), "Appends float32 rows [n, d] of one source.")
      .def(
          "append_all",
          [](ActivationWriter& w, nb::ndarray<nb::ro> rows) {
            const auto view = rows_of<float>(rows, "ActivationWriter.append_all: rows",
                                             static_cast<std::int64_t>(w.sources()) * w.width(),
                                             w.sources(), w.width());
            nb::gil_scoped_release release;
            w.append_all(view.span());
          },
          nb::arg("rows"), "Appends paired rows of every source, float32 [n, M, d].")
      .def(
          "append_labels",
          [](ActivationWriter& w, nb::ndarray<nb::ro> labels) {
            w.append_labels(vector_of<std::int8_t>(labels, "ActivationWriter.append_labels"));
          },
          nb::arg("labels"), "Appends int8 labels (1, 0, or -1 for unlabelled).")
      .def(
          "append_token_ids",
          [](ActivationWriter& w, nb::ndarray<nb::ro> ids) {
            w.append_token_ids(vector_of<std::int32_t>(ids, "ActivationWriter.append_token_ids"));
          },
          nb::arg("token_ids"))
      .def(
          "append_document_ids",
          [](ActivationWriter& w, nb::ndarray<nb::ro> ids) {
            w.append_document_ids(
                vector_of<std::int32_t>(ids, "ActivationWriter.append_document_ids"));
          },
          nb::arg("document_ids"))
      .def("rows", &ActivationWriter::rows, nb::arg("source"))
      .def_prop_ro("sources", &ActivationWriter::sources)
      .def_prop_ro("width", &ActivationWriter::width)
      .def(
          "close", [](ActivationWriter& w) { return w.close().string(); },
          "Writes the last shards and the manifest; returns the manifest's path.")
      .def(
          "__enter__", [](ActivationWriter& w) -> ActivationWriter& { return w; },
          nb::rv_policy::reference)
      .def(
          "__exit__",
          [](ActivationWriter& w, nb::handle type, nb::handle, nb::handle) {
            // On an exception the dataset is left without a manifest (incomplete, not readable).
            if (type.is_none() && !w.closed()) w.close();
          },
          nb::arg("type").none(), nb::arg("value").none(), nb::arg("traceback").none());
}

}  // namespace

void bind_data(nb::module_& m) {
  bind_dataset(m);
  bind_writer(m);
}

}  // namespace crosscoder::python
