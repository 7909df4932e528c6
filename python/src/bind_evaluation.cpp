// Language-model scores under splicing: cross-entropy, KL and CE loss recovered with bootstrap
// intervals (lm_evaluation.hpp). The caller runs the model; crosscoder.hf.evaluate_splice does
// it for Hugging Face models.

#include <fmt/format.h>
#include <nanobind/stl/optional.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/vector.h>

#include <optional>

#include "arrays.hpp"
#include "bindings.hpp"
#include "crosscoder/error.hpp"
#include "crosscoder/lm_evaluation.hpp"

namespace crosscoder::python {
namespace {

void bind_report(nb::module_& m) {
  nb::class_<Interval>(m, "Interval", "A statistic and its bootstrap 95% interval.")
      .def_ro("value", &Interval::value)
      .def_ro("low", &Interval::low)
      .def_ro("high", &Interval::high)
      .def("__repr__", [](const Interval& i) {
        return fmt::format("{:.4f} [{:.4f}, {:.4f}]", i.value, i.low, i.high);
      });
  nb::class_<ConditionScores>(m, "ConditionScores", "Cross-entropy (and KL) of one condition.")
      .def_ro("name", &ConditionScores::name)
      .def_ro("sequences", &ConditionScores::sequences)
      .def_ro("tokens", &ConditionScores::tokens)
      .def_ro("cross_entropy", &ConditionScores::cross_entropy)
      .def_ro("has_kl", &ConditionScores::has_kl)
      .def_ro("kl", &ConditionScores::kl);
  nb::class_<LanguageModelReport>(m, "LanguageModelReport",
                                  "Per-condition scores over sequences (docs/evaluation.md).")
      .def_ro("sequences", &LanguageModelReport::sequences)
      .def_ro("resamples", &LanguageModelReport::resamples)
      .def_ro("conditions", &LanguageModelReport::conditions)
      .def("condition", &LanguageModelReport::condition, nb::arg("name"),
           nb::rv_policy::reference_internal)
      .def("recovered", &LanguageModelReport::recovered, nb::arg("spliced"),
           nb::arg("clean") = "clean", nb::arg("zero") = "zero",
           "CE loss recovered, (CE_zero − CE_spliced) / (CE_zero − CE_clean), with its interval.");
}

void bind_scores(nb::module_& m) {
  nb::class_<LanguageModelScores>(m, "LanguageModelScores",
                                  "Accumulates next-token cross-entropy and KL per sequence and "
                                  "condition; result() bootstraps over sequences.")
      .def(nb::init<std::vector<std::string>>(), nb::arg("conditions"))
      .def(
          "add",
          [](LanguageModelScores& scores, std::int64_t sequence, int condition,
             nb::ndarray<nb::ro> logits, nb::ndarray<nb::ro> targets,
             std::optional<nb::ndarray<nb::ro>> reference) {
            const auto rows = rows_of<float>(logits, "LanguageModelScores.add: logits", -1);
            const auto wanted =
                vector_of<std::int32_t>(targets, "LanguageModelScores.add: targets", rows.rows);
            std::span<const float> reference_span;
            if (reference) {
              const auto ref =
                  rows_of<float>(*reference, "LanguageModelScores.add: reference", rows.columns);
              if (ref.rows != rows.rows)
                throw Error(fmt::format("LanguageModelScores.add: reference has {} rows, logits {}",
                                        ref.rows, rows.rows));
              reference_span = ref.span();
            }
            nb::gil_scoped_release release;
            scores.add(sequence, condition, rows.span(), static_cast<int>(rows.columns), wanted,
                       reference_span);
          },
          nb::arg("sequence"), nb::arg("condition"), nb::arg("logits"), nb::arg("targets"),
          nb::arg("reference") = nb::none(),
          "Scores logits float32 [T, vocab] against targets int32 [T] (< 0: skipped); with "
          "reference logits [T, vocab], also KL(reference ‖ logits).")
      .def("result", &LanguageModelScores::result, nb::arg("resamples") = 1000, nb::arg("seed") = 0,
           nb::call_guard<nb::gil_scoped_release>());
}

}  // namespace

void bind_evaluation(nb::module_& m) {
  bind_report(m);
  bind_scores(m);
}

}  // namespace crosscoder::python
