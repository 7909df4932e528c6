// The diff: one streaming pass over a dataset (crosscoder::diff) and its report as Python
// objects, rankings, JSON, CSV and HTML.

#include <fmt/format.h>
#include <nanobind/stl/optional.h>
#include <nanobind/stl/shared_ptr.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/vector.h>

#include <optional>

#include "arrays.hpp"
#include "bindings.hpp"
#include "crosscoder/dataset.hpp"
#include "crosscoder/diff.hpp"
#include "crosscoder/diff_report.hpp"
#include "crosscoder/error.hpp"
#include "crosscoder/report_csv.hpp"
#include "crosscoder/report_html.hpp"
#include "crosscoder/vocabulary.hpp"

namespace crosscoder::python {
namespace {

template <typename T>
nb::ndarray<nb::numpy, T> column(const std::vector<T>& values) {
  return copy_to_numpy(values, {values.size()});
}

void bind_parts(nb::module_& m) {
  nb::class_<DataMetrics>(m, "DataMetrics", "Per-latent statistics over the dataset's rows.")
      .def_ro("rows", &DataMetrics::rows)
      .def_prop_ro(
          "frequency", [](const DataMetrics& d) { return column(d.frequency); },
          nb::rv_policy::move)
      .def_prop_ro(
          "mean_activation", [](const DataMetrics& d) { return column(d.mean_activation); },
          nb::rv_policy::move)
      .def_prop_ro(
          "max_activation", [](const DataMetrics& d) { return column(d.max_activation); },
          nb::rv_policy::move)
      .def_ro("dead_latents", &DataMetrics::dead_latents)
      .def_ro("mse", &DataMetrics::mse)
      .def_ro("fve", &DataMetrics::fve)
      .def_ro("l0", &DataMetrics::l0);

  nb::class_<LatentContrast>(m, "LatentContrast",
                             "Cohen's d and AUROC of every latent between rows labelled 1 and 0.")
      .def_ro("positives", &LatentContrast::positives)
      .def_ro("negatives", &LatentContrast::negatives)
      .def_prop_ro(
          "mean_positive", [](const LatentContrast& c) { return column(c.mean_positive); },
          nb::rv_policy::move)
      .def_prop_ro(
          "mean_negative", [](const LatentContrast& c) { return column(c.mean_negative); },
          nb::rv_policy::move)
      .def_prop_ro(
          "firing_positive", [](const LatentContrast& c) { return column(c.firing_positive); },
          nb::rv_policy::move)
      .def_prop_ro(
          "firing_negative", [](const LatentContrast& c) { return column(c.firing_negative); },
          nb::rv_policy::move)
      .def_prop_ro(
          "cohens_d", [](const LatentContrast& c) { return column(c.cohens_d); },
          nb::rv_policy::move)
      .def_prop_ro(
          "auroc", [](const LatentContrast& c) { return column(c.auroc); }, nb::rv_policy::move)
      .def(
          "ranking",
          [](const LatentContrast& c) {
            std::vector<std::int32_t> order = c.ranking();
            const std::size_t n = order.size();
            return to_numpy(std::move(order), {n});
          },
          "Latents by decreasing Cohen's d.");

  nb::class_<LatentScaling>(m, "LatentScaling",
                            "Latent Scaling (Minder et al. 2025) of the measured latents.")
      .def_prop_ro(
          "latents", [](const LatentScaling& s) { return column(s.latents); }, nb::rv_policy::move)
      .def_prop_ro(
          "reference_source", [](const LatentScaling& s) { return column(s.reference_source); },
          nb::rv_policy::move)
      .def_prop_ro(
          "beta_error",
          [](const LatentScaling& s) {
            return table(s.beta_error, static_cast<std::int64_t>(s.latents.size()));
          },
          nb::rv_policy::move)
      .def_prop_ro(
          "beta_reconstruction",
          [](const LatentScaling& s) {
            return table(s.beta_reconstruction, static_cast<std::int64_t>(s.latents.size()));
          },
          nb::rv_policy::move)
      .def_prop_ro(
          "nu_error",
          [](const LatentScaling& s) {
            return table(s.nu_error, static_cast<std::int64_t>(s.latents.size()));
          },
          nb::rv_policy::move)
      .def_prop_ro(
          "nu_reconstruction",
          [](const LatentScaling& s) {
            return table(s.nu_reconstruction, static_cast<std::int64_t>(s.latents.size()));
          },
          nb::rv_policy::move)
      .def_prop_ro(
          "active_rows", [](const LatentScaling& s) { return column(s.active_rows); },
          nb::rv_policy::move);

  nb::class_<LatentExamples>(m, "LatentExamples",
                             "Top-activating and quantile-sampled rows of every latent.")
      .def_ro("latents", &LatentExamples::latents)
      .def_ro("rows", &LatentExamples::rows)
      .def_prop_ro(
          "top_rows", [](const LatentExamples& e) { return table(e.top_rows, e.latents); },
          nb::rv_policy::move)
      .def_prop_ro(
          "top_values", [](const LatentExamples& e) { return table(e.top_values, e.latents); },
          nb::rv_policy::move)
      .def_prop_ro(
          "sample_rows", [](const LatentExamples& e) { return table(e.sample_rows, e.latents); },
          nb::rv_policy::move)
      .def_prop_ro(
          "sample_values",
          [](const LatentExamples& e) { return table(e.sample_values, e.latents); },
          nb::rv_policy::move)
      .def_prop_ro(
          "histogram", [](const LatentExamples& e) { return table(e.histogram, e.latents); },
          nb::rv_policy::move)
      .def_prop_ro(
          "active_rows", [](const LatentExamples& e) { return column(e.active_rows); },
          nb::rv_policy::move)
      .def_prop_ro(
          "top_windows",
          [](const LatentExamples& e) -> nb::object {
            if (e.top_windows.empty()) return nb::none();
            const auto top = size(e.options.top), window = size(e.window());
            return nb::cast(copy_to_numpy(e.top_windows, {size(e.latents), top, window}));
          },
          "[F, top, window] token ids around each top example (-1: outside the "
          "document), or None without token ids")
      .def(
          "save", [](const LatentExamples& e, const std::string& path) { save_examples(path, e); },
          nb::arg("path"))
      .def_static(
          "load", [](const std::string& path) { return load_examples(path); }, nb::arg("path"));
  m.def(
      "load_examples", [](const std::string& path) { return load_examples(path); }, nb::arg("path"),
      "Reads an examples file written by `crosscoder diff --examples`.");
}

template <typename T>
nb::object optional_part(nb::handle self, const std::optional<T>& part) {
  if (!part) return nb::none();
  return nb::cast(&*part, nb::rv_policy::reference_internal, self);
}

void bind_vocabulary(nb::module_& m) {
  nb::class_<Vocabulary>(m, "Vocabulary",
                         "Token ids to text: a Hugging Face tokenizer.json, llama2.c's "
                         "tokenizer.bin or a .txt of one piece per line.")
      .def_static(
          "load", [](const std::string& path) { return Vocabulary::load(path); }, nb::arg("path"))
      .def("__len__", &Vocabulary::size)
      .def("piece", &Vocabulary::piece, nb::arg("id"), "The piece as stored (e.g. 'Ġthe').")
      .def(
          "token_text",
          [](const Vocabulary& v, std::int32_t id) {
            const std::string text = v.token_text(id);
            return nb::bytes(text.data(), text.size());
          },
          nb::arg("id"), "The bytes the token stands for (may be part of a UTF-8 character).")
      .def(
          "decode",
          [](const Vocabulary& v, nb::ndarray<nb::ro> ids) {
            const std::string text =
                v.decode(vector_of<std::int32_t>(ids, "Vocabulary.decode: ids"));
            return nb::str(text.data(), text.size());
          },
          nb::arg("ids"),
          "The text of int32 token ids (ids < 0 skipped, as in example windows); bytes that "
          "are not UTF-8 raise UnicodeDecodeError: use printable() for display.")
      .def(
          "printable",
          [](const Vocabulary& v, nb::ndarray<nb::ro> ids) {
            return printable(v.decode(vector_of<std::int32_t>(ids, "Vocabulary.printable: ids")));
          },
          nb::arg("ids"), "decode() for display: control characters and stray bytes escaped.");
}

void bind_report(nb::module_& m) {
  nb::class_<DiffReport>(m, "DiffReport",
                         "Everything `crosscoder diff` measures: weight metrics, data metrics, "
                         "contrast, latent scaling and examples (the parts measured).")
      .def_ro("model_config", &DiffReport::model_config)
      .def_ro("source_names", &DiffReport::source_names)
      .def_prop_ro("weights",
                   [](nb::handle self) {
                     return nb::cast(&nb::cast<const DiffReport&>(self).weights,
                                     nb::rv_policy::reference_internal, self);
                   })
      .def_prop_ro("data",
                   [](nb::handle self) {
                     return optional_part(self, nb::cast<const DiffReport&>(self).data);
                   })
      .def_prop_ro("contrast",
                   [](nb::handle self) {
                     return optional_part(self, nb::cast<const DiffReport&>(self).contrast);
                   })
      .def_prop_ro("scaling",
                   [](nb::handle self) {
                     return optional_part(self, nb::cast<const DiffReport&>(self).scaling);
                   })
      .def_prop_ro("examples",
                   [](nb::handle self) {
                     return optional_part(self, nb::cast<const DiffReport&>(self).examples);
                   })
      .def("metric_names", &latent_metric_names,
           "Names of the per-latent columns (relative_norm_1, cohens_d, frequency, ...).")
      .def(
          "metric",
          [](const DiffReport& r, const std::string& name) {
            std::vector<double> values = latent_metric(r, name);
            const std::size_t n = values.size();
            return to_numpy(std::move(values), {n});
          },
          nb::arg("name"), "One per-latent column as float64 [F].")
      .def(
          "rank",
          [](const DiffReport& r, const std::string& metric, bool ascending,
             std::optional<std::string> only_class) {
            std::optional<int> latent_class;
            if (only_class) latent_class = parse_latent_class(*only_class);
            std::vector<std::int32_t> order = rank_latents(r, metric, ascending, latent_class);
            const std::size_t n = order.size();
            return to_numpy(std::move(order), {n});
          },
          nb::arg("metric"), nb::arg("ascending") = false, nb::arg("only_class") = nb::none(),
          "Latents ordered by a metric, optionally only one class ('shared', 'mixed', or a "
          "'exclusive:<source index>').")
      .def("json", &diff_report_json, "The same JSON as `crosscoder diff --json`.")
      .def(
          "write_json",
          [](const DiffReport& r, const std::string& path) { write_diff_report_json(path, r); },
          nb::arg("path"))
      .def(
          "write_csv",
          [](const DiffReport& r, const std::string& path) { write_diff_report_csv(path, r); },
          nb::arg("path"))
      .def(
          "write_html",
          [](const DiffReport& r, const std::string& path, const std::string& title, int top,
             int feature_pages, const std::string& vocabulary) {
            HtmlReportOptions options;
            options.title = title;
            options.top = top;
            options.feature_pages = feature_pages;
            std::optional<Vocabulary> vocab;
            if (!vocabulary.empty()) {
              vocab = Vocabulary::load(vocabulary);
              options.vocabulary = &*vocab;
            }
            write_diff_report_html(path, r, options);
          },
          nb::arg("path"), nb::kw_only(), nb::arg("title") = "crosscoder diff",
          nb::arg("top") = 100, nb::arg("feature_pages") = 200, nb::arg("vocabulary") = "",
          "The self-contained HTML report (feature pages with examples when collected).");
}

DiffReport diff_from_python(const Crosscoder& model,
                            const std::shared_ptr<ActivationDataset>& dataset,
                            double exclusive_threshold, const std::string& class_rule,
                            std::int64_t rows, std::optional<nb::ndarray<nb::ro>> labels,
                            const std::string& cohens_d, nb::handle scaling,
                            std::size_t max_scaling_latents, bool examples, int example_top,
                            int example_samples, int window_before, int window_after,
                            std::int64_t chunk_rows, bool progress, nb::object on_progress) {
  DiffOptions options;
  options.exclusive_threshold = exclusive_threshold;
  options.class_rule = parse_class_rule(class_rule);
  options.rows = rows;
  if (labels) {
    const auto values = vector_of<std::int8_t>(*labels, "diff: labels");
    options.labels.emplace(values.begin(), values.end());
  }
  options.cohens_d = parse_cohens_d(cohens_d);
  if (nb::isinstance<nb::str>(scaling)) {
    const std::string name = nb::cast<std::string>(scaling);
    if (name == "exclusive_to_last")
      options.scaling = ScalingLatents::exclusive_to_last;
    else if (name == "none")
      options.scaling = ScalingLatents::none;
    else
      throw Error(fmt::format(
          "diff: scaling '{}': expected 'exclusive_to_last', 'none' or a list of latents", name));
  } else {
    options.scaling = ScalingLatents::listed;
    options.scaling_latents = nb::cast<std::vector<std::int32_t>>(scaling);
  }
  options.max_scaling_latents = max_scaling_latents;
  if (examples && dataset) {
    ExampleOptions e;
    e.top = example_top;
    e.samples = example_samples;
    e.reservoir = std::max(e.reservoir, example_samples);
    e.window_before = window_before;
    e.window_after = window_after;
    options.examples = e;
  }
  options.pass.chunk_rows = chunk_rows;
  options.pass.label = "diff";
  options.pass.show_progress = progress;
  PythonStop stop;
  options.pass.on_progress = stop.wrap<std::int64_t, std::int64_t>(on_progress);
  options.pass.should_stop = stop.should_stop();
  try {
    nb::gil_scoped_release release;
    return dataset ? diff(model, *dataset, options) : diff(model, options);
  } catch (const Error& error) {
    stop.raise(error);
  }
}

}  // namespace

void bind_diff(nb::module_& m) {
  bind_vocabulary(m);
  bind_parts(m);
  bind_report(m);
  m.def("diff", &diff_from_python, nb::arg("model"), nb::arg("dataset") = nb::none(), nb::kw_only(),
        nb::arg("exclusive_threshold") = 0.9, nb::arg("class_rule") = "relative_norm",
        nb::arg("rows") = 0, nb::arg("labels") = nb::none(), nb::arg("cohens_d") = "pooled",
        nb::arg("scaling") = "exclusive_to_last", nb::arg("max_scaling_latents") = 1000,
        nb::arg("examples") = true, nb::arg("example_top") = 20, nb::arg("example_samples") = 10,
        nb::arg("window_before") = 16, nb::arg("window_after") = 4, nb::arg("chunk_rows") = 4096,
        nb::arg("progress") = true, nb::arg("on_progress") = nb::none(),
        "The diff report of a crosscoder: weight metrics alone without a dataset; with one, one "
        "streaming pass adds data metrics, Cohen's d / AUROC (labels from the dataset or the "
        "`labels` array), latent scaling and max-activating examples (examples=False skips them). "
        "The "
        "same report as `crosscoder diff`; Ctrl-C stops the pass (KeyboardInterrupt).");
  m.def("check_fits", &check_fits, nb::arg("model"), nb::arg("dataset"),
        "Raises Error when the dataset's sources or width differ from the model's.");
}

}  // namespace crosscoder::python
