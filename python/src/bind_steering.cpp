// Steering (Steerer and its interventions) and splicing (Splicer) on rows the caller owns: the
// rows are changed in place, so a torch tensor or NumPy array passed in is steered without a copy.

#include <fmt/format.h>
#include <nanobind/stl/optional.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/vector.h>

#include <optional>
#include <type_traits>

#include "arrays.hpp"
#include "bindings.hpp"
#include "crosscoder/error.hpp"
#include "crosscoder/hook.hpp"
#include "crosscoder/splice.hpp"
#include "crosscoder/steering.hpp"

namespace crosscoder::python {
namespace {

PositionFilter position_filter(nb::handle positions, bool once) {
  PositionFilter filter;
  filter.once = once;
  if (nb::isinstance<nb::str>(positions)) {
    const std::string mode = nb::cast<std::string>(positions);
    if (mode == "all")
      filter.mode = PositionMode::all;
    else if (mode == "last_prompt")
      filter.mode = PositionMode::last_prompt;
    else if (mode == "prompt")
      filter.mode = PositionMode::prompt;
    else if (mode == "generated")
      filter.mode = PositionMode::generated;
    else
      throw Error(
          fmt::format("positions '{}': expected 'all', 'last_prompt', 'prompt', "
                      "'generated' or a list of token positions",
                      mode));
  } else {
    filter.mode = PositionMode::listed;
    filter.positions = nb::cast<std::vector<std::int64_t>>(positions);
  }
  return filter;
}

// One RowInfo per row from optional per-row arrays; by default row i is prompt position i and
// the last row is the last prompt token.
std::vector<RowInfo> row_infos(std::int64_t rows,
                               const std::optional<nb::ndarray<nb::ro>>& position,
                               const std::optional<nb::ndarray<nb::ro>>& prompt,
                               const std::optional<nb::ndarray<nb::ro>>& last_prompt) {
  std::vector<RowInfo> info(size(rows));
  for (std::int64_t r = 0; r < rows; ++r) {
    info[size(r)].position = r;
    info[size(r)].prompt = true;
    info[size(r)].last_prompt = r == rows - 1;
  }
  if (position) {
    const auto values = vector_of<std::int64_t>(*position, "position", rows);
    for (std::int64_t r = 0; r < rows; ++r) info[size(r)].position = values[size(r)];
  }
  if (prompt) {
    const auto values = vector_of<bool>(*prompt, "prompt", rows);
    for (std::int64_t r = 0; r < rows; ++r) info[size(r)].prompt = values[size(r)];
  }
  if (last_prompt) {
    const auto values = vector_of<bool>(*last_prompt, "last_prompt", rows);
    for (std::int64_t r = 0; r < rows; ++r) info[size(r)].last_prompt = values[size(r)];
  }
  return info;
}

std::span<const float> paired_rows(const Crosscoder& model,
                                   const std::optional<nb::ndarray<nb::ro>>& paired,
                                   std::int64_t rows) {
  if (!paired) return {};
  const CrosscoderConfig& c = model.config();
  const auto view = rows_of<float>(*paired, "paired", c.input_width(), c.sources, c.width);
  if (view.rows != rows)
    throw Error(fmt::format("paired: {} rows, but rows has {}", view.rows, rows));
  return view.span();
}

int checked_rows(std::int64_t rows) {
  if (rows > std::numeric_limits<int>::max())
    throw Error(fmt::format("rows: {} rows at once is more than a hook call takes", rows));
  return static_cast<int>(rows);
}

// Steerer.apply and Splicer.apply: the same arguments, rows changed in place; paired rows
// (every source's rows of the same tokens) take the tool's paired path.
template <typename Tool>
void apply_rows(Tool& tool, nb::ndarray<> rows, std::optional<nb::ndarray<nb::ro>> position,
                std::optional<nb::ndarray<nb::ro>> prompt,
                std::optional<nb::ndarray<nb::ro>> last_prompt,
                std::optional<nb::ndarray<nb::ro>> paired) {
  const char* what = std::is_same_v<Tool, Steerer> ? "Steerer.apply: rows" : "Splicer.apply: rows";
  const auto view = writable_rows(rows, what, -1);
  const auto info = row_infos(view.rows, position, prompt, last_prompt);
  const auto other = paired_rows(tool.model(), paired, view.rows);
  nb::gil_scoped_release release;
  if (other.empty())
    tool.apply(view.data, checked_rows(view.rows), static_cast<int>(view.columns), info.data());
  else
    tool.apply_paired(view.data, checked_rows(view.rows), static_cast<int>(view.columns),
                      info.data(), other);
}

void bind_interventions(nb::module_& m) {
  nb::class_<Intervention>(m, "Intervention",
                           "One latent's intervention: 'add' (x += α·d_j), 'scale' (x += "
                           "(α − 1)·f_j·d_j), 'clamp' (f_j set to α) or 'project_out'.")
      .def(
          "__init__",
          [](Intervention* self, const std::string& kind, int latent, double strength,
             bool in_max_activation_units) {
            new (self) Intervention{parse_intervention_kind(kind), latent, strength,
                                    in_max_activation_units};
          },
          nb::arg("kind"), nb::arg("latent"), nb::arg("strength") = 1.0,
          nb::arg("in_max_activation_units") = false)
      .def_prop_rw(
          "kind", [](const Intervention& i) { return std::string(to_string(i.kind)); },
          [](Intervention& i, const std::string& kind) { i.kind = parse_intervention_kind(kind); })
      .def_rw("latent", &Intervention::latent)
      .def_rw("strength", &Intervention::strength)
      .def_rw("in_max_activation_units", &Intervention::in_max_activation_units)
      .def("__repr__", [](const Intervention& i) {
        return fmt::format("Intervention('{}', latent={}, strength={})", to_string(i.kind),
                           i.latent, i.strength);
      });
}

void bind_steerer(nb::module_& m) {
  nb::class_<Steerer>(m, "Steerer",
                      "Applies interventions to one source's activation rows in place "
                      "(docs/steering.md). Keeps the model alive.")
      .def(
          "__init__",
          [](Steerer* self, const Crosscoder& model, int source,
             std::vector<Intervention> interventions, nb::handle positions, bool once) {
            new (self)
                Steerer(model, source, std::move(interventions), position_filter(positions, once));
          },
          nb::arg("model"), nb::arg("source"), nb::arg("interventions"),
          nb::arg("positions") = "all", nb::arg("once") = false, nb::keep_alive<1, 2>())
      .def("apply", &apply_rows<Steerer>, nb::arg("rows"), nb::kw_only(),
           nb::arg("position") = nb::none(), nb::arg("prompt") = nb::none(),
           nb::arg("last_prompt") = nb::none(), nb::arg("paired") = nb::none(),
           "Steers float32 rows [n, d] in place. position (int64 [n]), prompt and last_prompt "
           "(bool [n]) describe each row for the position filter (default: a prompt of n "
           "tokens); paired [n, M, d] holds every source's rows of the same tokens (paired "
           "steering, as the study encoded both models together).")
      .def(
          "activations",
          [](const Steerer& steerer, nb::ndarray<nb::ro> rows,
             std::optional<nb::ndarray<nb::ro>> paired) {
            const auto view = rows_of<float>(rows, "Steerer.activations: rows", -1);
            const auto other = paired_rows(steerer.model(), paired, view.rows);
            std::vector<float> out;
            {
              nb::gil_scoped_release release;
              out = steerer.activations(view.data, checked_rows(view.rows), other);
            }
            const std::size_t latents = steerer.latents().size();
            return to_numpy(std::move(out), {size(view.rows), latents});
          },
          nb::arg("rows"), nb::arg("paired") = nb::none(),
          "f_j of the steered latents (Steerer.latents) for each row, float32 [n, latents].")
      .def_prop_ro("latents", &Steerer::latents)
      .def(
          "direction",
          [](const Steerer& steerer, int latent) {
            const auto d = steerer.direction(latent);
            return to_numpy(std::vector<float>(d.begin(), d.end()), {d.size()});
          },
          nb::arg("latent"), "d_j in raw units for this source, float32 [d].")
      .def("reset", &Steerer::reset, "Re-arms a once=True steerer for the next prompt.")
      .def(
          "set_max_activations",
          [](Steerer& steerer, nb::ndarray<nb::ro> values) {
            steerer.set_max_activations(vector_of<double>(values, "set_max_activations"));
          },
          nb::arg("max_activation"),
          "Per-latent maxima (float64 [F], e.g. DiffReport.data.max_activation) for "
          "interventions in max-activation units.");
}

void bind_splicer(nb::module_& m) {
  nb::class_<Splicer>(m, "Splicer",
                      "Replaces one source's rows by the crosscoder's reconstruction (or an "
                      "ablation or a diffing patch) in place (docs/evaluation.md).")
      .def(
          "__init__",
          [](Splicer* self, const Crosscoder& model, int source, const std::string& kind,
             int other_source, std::vector<int> latents, std::optional<nb::ndarray<nb::ro>> mean,
             nb::handle positions) {
            SpliceOptions options;
            options.kind = parse_splice_kind(kind);
            options.other_source = other_source;
            options.latents = std::move(latents);
            if (mean) {
              const auto values = vector_of<float>(*mean, "Splicer: mean", model.config().width);
              options.mean.assign(values.begin(), values.end());
            }
            options.positions = position_filter(positions, false);
            new (self) Splicer(model, source, std::move(options));
          },
          nb::arg("model"), nb::arg("source"), nb::arg("kind") = "reconstruction",
          nb::arg("other_source") = -1, nb::arg("latents") = std::vector<int>{},
          nb::arg("mean") = nb::none(), nb::arg("positions") = "all", nb::keep_alive<1, 2>())
      .def("apply", &apply_rows<Splicer>, nb::arg("rows"), nb::kw_only(),
           nb::arg("position") = nb::none(), nb::arg("prompt") = nb::none(),
           nb::arg("last_prompt") = nb::none(), nb::arg("paired") = nb::none(),
           "Splices float32 rows [n, d] in place.")
      .def_prop_ro("source", &Splicer::source)
      .def_prop_ro("kind",
                   [](const Splicer& s) { return std::string(to_string(s.options().kind)); });
}

}  // namespace

void bind_steering(nb::module_& m) {
  bind_interventions(m);
  bind_steerer(m);
  bind_splicer(m);
}

}  // namespace crosscoder::python
