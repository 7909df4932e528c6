// Errors, backends, the crosscoder's configuration, the model and its codes and weight metrics.

#include <fmt/format.h>
#include <nanobind/stl/map.h>
#include <nanobind/stl/shared_ptr.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/vector.h>

#include "arrays.hpp"
#include "bindings.hpp"
#include "crosscoder/config.hpp"
#include "crosscoder/error.hpp"
#include "crosscoder/latent_metrics.hpp"
#include "crosscoder/model.hpp"

namespace crosscoder::python {

std::shared_ptr<Backend> backend_from(const nb::handle& argument) {
  if (argument.is_none()) return best_backend();
  if (nb::isinstance<Backend>(argument)) return nb::cast<std::shared_ptr<Backend>>(argument);
  if (nb::isinstance<nb::str>(argument)) {
    const std::string name = nb::cast<std::string>(argument);
    if (name == "best") return best_backend();
    return make_backend(parse_backend_kind(name));
  }
  throw Error(fmt::format("backend: expected a Backend or one of 'best', 'cpu', 'cuda', got {}",
                          nb::cast<std::string>(nb::repr(argument))));
}

bool interrupted() {
  nb::gil_scoped_acquire gil;
  if (PyErr_CheckSignals() == 0) return false;
  PyErr_Clear();  // the caller raises KeyboardInterrupt itself, after the checkpoint
  return true;
}

void bind_errors(nb::module_& m) {
  static nb::exception<Error> error(m, "Error");
  error.attr("__doc__") =
      "Raised for bad input, unreadable files and failed operations; the message names the "
      "file, tensor, shape or option.";
  static nb::exception<Cancelled> cancelled(m, "Cancelled", error);
  cancelled.attr("__doc__") = "A long operation stopped because it was asked to.";
}

namespace {

CrosscoderConfig make_config(int sources, int width, int latents, const std::string& activation,
                             int k, std::vector<int> exclusive, std::vector<int> source_models,
                             const std::string& normalisation, std::vector<int> matryoshka_groups,
                             float jumprelu_initial_threshold, float jumprelu_bandwidth) {
  CrosscoderConfig config;
  config.sources = sources;
  config.width = width;
  config.latents = latents;
  config.activation = parse_activation(activation);
  config.k = k;
  config.exclusive = std::move(exclusive);
  config.source_models = std::move(source_models);
  config.normalisation = parse_normalisation(normalisation);
  config.matryoshka_groups = std::move(matryoshka_groups);
  config.jumprelu_initial_threshold = jumprelu_initial_threshold;
  config.jumprelu_bandwidth = jumprelu_bandwidth;
  config.validate();
  return config;
}

void bind_backends(nb::module_& m) {
  nb::class_<Backend>(m, "Backend", "Where the crosscoder's arrays live and its kernels run.")
      .def_prop_ro("kind", [](const Backend& b) { return std::string(to_string(b.kind())); })
      .def("describe", &Backend::describe)
      .def_prop_rw(
          "matmul_precision",
          [](const Backend& b) { return std::string(to_string(b.matmul_precision())); },
          [](Backend& b, const std::string& text) {
            b.set_matmul_precision(parse_matmul_precision(text));
          },
          "'float32', 'tf32' or 'bfloat16' (the CUDA backend's dense GEMMs)")
      .def("__repr__", [](const Backend& b) { return fmt::format("<Backend {}>", b.describe()); });

  m.def(
      "available_backends",
      [] {
        nb::list out;
        for (const BackendInfo& info : available_backends()) {
          nb::dict entry;
          entry["kind"] = std::string(to_string(info.kind));
          entry["built"] = info.built;
          entry["usable"] = info.usable;
          entry["reason"] = info.reason;
          entry["device"] = info.device;
          out.append(entry);
        }
        return out;
      },
      "Every backend: whether it is built in, usable now, and why not.");
  m.def("best_backend", &best_backend, "The CUDA backend when a device is usable, else the CPU.");
  m.def(
      "make_backend",
      [](const std::string& kind) { return make_backend(parse_backend_kind(kind)); },
      nb::arg("kind"), "A backend of the given kind ('cpu' or 'cuda'); raises Error if unusable.");
}

void bind_config(nb::module_& m) {
  nb::class_<CrosscoderConfig>(m, "CrosscoderConfig",
                               "The shape and variant of a crosscoder (see docs/training.md).")
      .def(
          "__init__",
          [](CrosscoderConfig* self, int sources, int width, int latents,
             const std::string& activation, int k, std::vector<int> exclusive,
             std::vector<int> source_models, const std::string& normalisation,
             std::vector<int> matryoshka_groups, float jumprelu_initial_threshold,
             float jumprelu_bandwidth) {
            new (self) CrosscoderConfig(
                make_config(sources, width, latents, activation, k, std::move(exclusive),
                            std::move(source_models), normalisation, std::move(matryoshka_groups),
                            jumprelu_initial_threshold, jumprelu_bandwidth));
          },
          nb::kw_only(), nb::arg("sources") = 2, nb::arg("width"), nb::arg("latents"),
          nb::arg("activation") = "batchtopk", nb::arg("k") = 32,
          nb::arg("exclusive") = std::vector<int>{}, nb::arg("source_models") = std::vector<int>{},
          nb::arg("normalisation") = "scalar", nb::arg("matryoshka_groups") = std::vector<int>{},
          nb::arg("jumprelu_initial_threshold") = 0.001f, nb::arg("jumprelu_bandwidth") = 0.001f)
      .def_rw("sources", &CrosscoderConfig::sources)
      .def_rw("width", &CrosscoderConfig::width)
      .def_rw("latents", &CrosscoderConfig::latents)
      .def_prop_rw(
          "activation",
          [](const CrosscoderConfig& c) { return std::string(to_string(c.activation)); },
          [](CrosscoderConfig& c, const std::string& t) { c.activation = parse_activation(t); },
          "'relu', 'topk', 'batchtopk' or 'jumprelu'")
      .def_rw("k", &CrosscoderConfig::k)
      .def_rw("exclusive", &CrosscoderConfig::exclusive)
      .def_rw("source_models", &CrosscoderConfig::source_models)
      .def_prop_rw(
          "normalisation",
          [](const CrosscoderConfig& c) { return std::string(to_string(c.normalisation)); },
          [](CrosscoderConfig& c, const std::string& t) {
            c.normalisation = parse_normalisation(t);
          },
          "'none', 'scalar', 'mean_and_scale' or 'per_channel'")
      .def_rw("matryoshka_groups", &CrosscoderConfig::matryoshka_groups)
      .def_rw("jumprelu_initial_threshold", &CrosscoderConfig::jumprelu_initial_threshold)
      .def_rw("jumprelu_bandwidth", &CrosscoderConfig::jumprelu_bandwidth)
      .def_prop_ro("input_width", &CrosscoderConfig::input_width)
      .def_prop_ro("shared_latents", &CrosscoderConfig::shared_latents)
      .def_prop_ro("models", &CrosscoderConfig::models)
      .def("exclusive_owner", &CrosscoderConfig::exclusive_owner, nb::arg("latent"),
           "The model a latent is exclusive to, or -1 when shared.")
      .def("validate", &CrosscoderConfig::validate)
      .def("to_json", &CrosscoderConfig::to_json)
      .def_static("from_json",
                  [](const std::string& json) { return CrosscoderConfig::from_json(json); })
      .def("__repr__", [](const CrosscoderConfig& c) {
        return fmt::format("CrosscoderConfig({})", c.to_json());
      });
}

// The codes as a dense [rows, latents] array (zeros where a latent is inactive).
nb::ndarray<nb::numpy, float> dense_codes(const HostSparseCodes& c, std::int64_t latents) {
  if (latents <= 0) throw Error(fmt::format("dense: latents {} must be positive", latents));
  std::vector<float> out(size(c.rows * latents), 0.0f);
  for (std::int64_t r = 0; r < c.rows; ++r) {
    for (auto j = c.row_ptr[size(r)]; j < c.row_ptr[size(r + 1)]; ++j) {
      const std::int32_t f = c.latent[size(j)];
      if (f >= latents)
        throw Error(fmt::format("dense: latent {} in the codes is ≥ latents {}", f, latents));
      out[size(r * latents + f)] = c.value[size(j)];
    }
  }
  return to_numpy(std::move(out), {size(c.rows), size(latents)});
}

void bind_codes(nb::module_& m) {
  nb::class_<HostSparseCodes>(m, "SparseCodes",
                              "Latent activations in compressed-row form (CSR): row r's active "
                              "latents are latents[row_ptr[r]:row_ptr[r + 1]].")
      .def_ro("rows", &HostSparseCodes::rows)
      .def_prop_ro(
          "row_ptr",
          [](const HostSparseCodes& c) {
            return nb::ndarray<nb::numpy, const std::int64_t>(c.row_ptr.data(), {c.row_ptr.size()});
          },
          nb::rv_policy::reference_internal)
      .def_prop_ro(
          "latents",
          [](const HostSparseCodes& c) {
            return nb::ndarray<nb::numpy, const std::int32_t>(c.latent.data(), {c.latent.size()});
          },
          nb::rv_policy::reference_internal)
      .def_prop_ro(
          "values",
          [](const HostSparseCodes& c) {
            return nb::ndarray<nb::numpy, const float>(c.value.data(), {c.value.size()});
          },
          nb::rv_policy::reference_internal)
      .def("dense", &dense_codes, nb::arg("latents"),
           "The codes as a dense float32 array [rows, latents].")
      .def("__repr__", [](const HostSparseCodes& c) {
        return fmt::format("<SparseCodes {} rows, {} active>", c.rows, c.value.size());
      });
}

// Float32 rows of the model's input width, checked against the model's sources and width.
RowsView<const float> model_rows(const Crosscoder& model, const nb::ndarray<nb::ro>& x,
                                 const char* what) {
  const CrosscoderConfig& c = model.config();
  return rows_of<float>(x, what, c.input_width(), c.sources, c.width);
}

nb::dict parameter_arrays(const Crosscoder& model) {
  const CrosscoderParameters& p = model.parameters();
  const CrosscoderConfig& c = model.config();
  const auto F = size(c.latents), D = size(c.input_width());
  nb::dict out;
  out["encoder_weight"] = to_numpy(p.encoder_weight.download(), {F, D});
  out["encoder_bias"] = to_numpy(p.encoder_bias.download(), {F});
  out["decoder_weight"] = to_numpy(p.decoder_weight.download(), {F, D});
  out["decoder_bias"] = to_numpy(p.decoder_bias.download(), {D});
  if (p.threshold.size() > 0) out["threshold"] = to_numpy(p.threshold.download(), {F});
  return out;
}

void bind_crosscoder(nb::module_& m) {
  nb::class_<Crosscoder>(m, "Crosscoder",
                         "A trained or freshly initialised crosscoder over M sources of width d.")
      .def(
          "__init__",
          [](Crosscoder* self, const CrosscoderConfig& config, nb::handle backend,
             std::uint64_t seed) { new (self) Crosscoder(config, backend_from(backend), seed); },
          nb::arg("config"), nb::arg("backend") = "best", nb::arg("seed") = 0)
      .def_static(
          "load",
          [](const std::string& path, nb::handle backend) {
            return Crosscoder::load(path, backend_from(backend));
          },
          nb::arg("path"), nb::arg("backend") = "best", "Reads a model file (safetensors).")
      .def(
          "save",
          [](const Crosscoder& model, const std::string& path,
             const std::map<std::string, std::string>& metadata) {
            nb::gil_scoped_release release;
            model.save(path, metadata);
          },
          nb::arg("path"), nb::arg("metadata") = std::map<std::string, std::string>{},
          "Writes the model atomically (safetensors), with extra metadata strings.")
      .def_prop_ro("config", &Crosscoder::config)
      .def_prop_ro("backend", &Crosscoder::backend)
      .def_prop_rw("batch_threshold", &Crosscoder::batch_threshold,
                   &Crosscoder::set_batch_threshold,
                   "BatchTopK's learnt inference threshold (negative: none learnt)")
      .def(
          "encode",
          [](const Crosscoder& model, nb::ndarray<nb::ro> x) {
            const auto rows = model_rows(model, x, "encode: x");
            HostSparseCodes codes;
            {
              nb::gil_scoped_release release;
              codes = model.encode(rows.span(), rows.rows);
            }
            return codes;
          },
          nb::arg("x"),
          "Latent activations of rows x (float32 [N, M, d] or [N, M·d], raw units) as SparseCodes.")
      .def(
          "encode_dense",
          [](const Crosscoder& model, nb::ndarray<nb::ro> x) {
            const auto rows = model_rows(model, x, "encode_dense: x");
            HostSparseCodes codes;
            {
              nb::gil_scoped_release release;
              codes = model.encode(rows.span(), rows.rows);
            }
            return dense_codes(codes, model.config().latents);
          },
          nb::arg("x"), "Latent activations as a dense float32 array [N, F].")
      .def(
          "reconstruct",
          [](const Crosscoder& model, nb::ndarray<nb::ro> x) {
            const auto rows = model_rows(model, x, "reconstruct: x");
            std::vector<float> out;
            {
              nb::gil_scoped_release release;
              out = model.reconstruct(rows.span(), rows.rows);
            }
            const CrosscoderConfig& c = model.config();
            return to_numpy(std::move(out), {size(rows.rows), size(c.sources), size(c.width)});
          },
          nb::arg("x"), "The crosscoder's reconstruction of x in raw units, float32 [N, M, d].")
      .def(
          "decoder_vectors",
          [](const Crosscoder& model) {
            const CrosscoderConfig& c = model.config();
            return to_numpy(model.decoder_vectors(),
                            {size(c.latents), size(c.sources), size(c.width)});
          },
          "Decoder vectors in normalised units [F, M, d] (the decoder weight).")
      .def(
          "raw_decoder_vectors",
          [](const Crosscoder& model) {
            const CrosscoderConfig& c = model.config();
            return to_numpy(model.raw_decoder_vectors(),
                            {size(c.latents), size(c.sources), size(c.width)});
          },
          "Decoder vectors in raw activation units [F, M, d]: what a latent adds to a source's "
          "activations per unit of activation (each source's block divided by its scale).")
      .def(
          "decoder_norms",
          [](const Crosscoder& model) {
            const CrosscoderConfig& c = model.config();
            return to_numpy(model.decoder_norms(), {size(c.latents), size(c.sources)});
          },
          "Per-source decoder norms in normalised units [F, M].")
      .def(
          "relative_decoder_norms",
          [](const Crosscoder& model) {
            const CrosscoderConfig& c = model.config();
            return to_numpy(model.relative_decoder_norms(), {size(c.latents), size(c.sources)});
          },
          "‖d_{f,m}‖ / Σ_m' ‖d_{f,m'}‖ [F, M] (0 for an all-zero latent).")
      .def(
          "weight_metrics",
          [](const Crosscoder& model, double exclusive_threshold, const std::string& rule) {
            return weight_metrics(model, exclusive_threshold, parse_class_rule(rule));
          },
          nb::arg("exclusive_threshold") = 0.9, nb::arg("class_rule") = "relative_norm",
          "Decoder norms, relative norms, cosines and latent classes (no data needed).")
      .def("parameters", &parameter_arrays,
           "Copies of the parameters as NumPy arrays: encoder_weight [F, M·d], encoder_bias [F], "
           "decoder_weight [F, M·d], decoder_bias [M·d], threshold [F] (JumpReLU).")
      .def(
          "fit_normaliser",
          [](Crosscoder& model, nb::ndarray<nb::ro> x) {
            const auto rows = model_rows(model, x, "fit_normaliser: x");
            nb::gil_scoped_release release;
            model.fit_normaliser(rows.span(), rows.rows);
          },
          nb::arg("x"), "Fits the input normaliser to rows x (the trainer does this itself).")
      .def_prop_ro(
          "normaliser",
          [](const Crosscoder& model) {
            const Normaliser& n = model.normaliser();
            nb::dict out;
            out["fitted"] = n.fitted;
            out["scale"] = copy_to_numpy(n.scale, {n.scale.size()});
            out["mean"] = copy_to_numpy(n.mean, {n.mean.size()});
            return out;
          },
          "The input normaliser: scale (one per source, or per channel) and mean.")
      .def("__repr__", [](const Crosscoder& model) {
        const CrosscoderConfig& c = model.config();
        return fmt::format("<Crosscoder {} sources × {} → {} latents, {} (k={}), on {}>", c.sources,
                           c.width, c.latents, to_string(c.activation), c.k,
                           model.backend()->describe());
      });
}

void bind_weight_metrics(nb::module_& m) {
  m.attr("SHARED_LATENT") = kSharedLatent;
  m.attr("MIXED_LATENT") = kMixedLatent;
  nb::class_<WeightMetrics>(m, "WeightMetrics",
                            "Decoder-weight metrics of every latent (docs/diff.md).")
      .def_ro("sources", &WeightMetrics::sources)
      .def_ro("latents", &WeightMetrics::latents)
      .def_ro("exclusive_threshold", &WeightMetrics::exclusive_threshold)
      .def_prop_ro(
          "decoder_norm", [](const WeightMetrics& w) { return table(w.decoder_norm, w.latents); },
          nb::rv_policy::move)
      .def_prop_ro(
          "relative_norm", [](const WeightMetrics& w) { return table(w.relative_norm, w.latents); },
          nb::rv_policy::move)
      .def_prop_ro(
          "normalised_difference",
          [](const WeightMetrics& w) { return table(w.normalised_difference, w.latents); },
          nb::rv_policy::move)
      .def_prop_ro(
          "decoder_cosine",
          [](const WeightMetrics& w) { return table(w.decoder_cosine, w.latents); },
          nb::rv_policy::move)
      .def_prop_ro(
          "encoder_cosine",
          [](const WeightMetrics& w) { return table(w.encoder_cosine, w.latents); },
          nb::rv_policy::move)
      .def_prop_ro(
          "latent_class", [](const WeightMetrics& w) { return table(w.latent_class, w.latents); },
          nb::rv_policy::move,
          "[F] the source a latent is exclusive to, SHARED_LATENT (-1) or MIXED_LATENT (-2)")
      .def_ro("models", &WeightMetrics::models)
      .def_prop_ro(
          "model_relative_norm",
          [](const WeightMetrics& w) { return table(w.model_relative_norm, w.latents); },
          nb::rv_policy::move)
      .def_prop_ro(
          "model_class", [](const WeightMetrics& w) { return table(w.model_class, w.latents); },
          nb::rv_policy::move)
      .def_prop_ro(
          "peak_source", [](const WeightMetrics& w) { return table(w.peak_source, w.latents); },
          nb::rv_policy::move);
}

}  // namespace

void bind_model(nb::module_& m) {
  bind_backends(m);
  bind_config(m);
  bind_codes(m);
  bind_crosscoder(m);
  bind_weight_metrics(m);
}

}  // namespace crosscoder::python
