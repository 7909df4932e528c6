// Training: TrainConfig, the Trainer's single steps, and the whole loop (`train`) over a dataset
// or a Python iterator of batches, with a progress callback and Ctrl-C that saves a checkpoint.

#include <fmt/format.h>
#include <nanobind/stl/function.h>
#include <nanobind/stl/shared_ptr.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/vector.h>

#include <cstring>
#include <exception>
#include <functional>
#include <map>
#include <memory>

#include "arrays.hpp"
#include "bindings.hpp"
#include "crosscoder/batch_source.hpp"
#include "crosscoder/dataset.hpp"
#include "crosscoder/error.hpp"
#include "crosscoder/shuffled_batches.hpp"
#include "crosscoder/train_loop.hpp"
#include "crosscoder/trainer.hpp"

namespace crosscoder::python {
namespace {

// Every TrainConfig field once: bound as an attribute and accepted as a keyword of __init__.
template <typename Visit>
void for_each_train_field(Visit&& visit) {
  visit("steps", &TrainConfig::steps);
  visit("batch_size", &TrainConfig::batch_size);
  visit("learning_rate", &TrainConfig::learning_rate);
  visit("beta1", &TrainConfig::beta1);
  visit("beta2", &TrainConfig::beta2);
  visit("epsilon", &TrainConfig::epsilon);
  visit("warmup_steps", &TrainConfig::warmup_steps);
  visit("decay_fraction", &TrainConfig::decay_fraction);
  visit("gradient_clip", &TrainConfig::gradient_clip);
  visit("l1_coefficient", &TrainConfig::l1_coefficient);
  visit("l0_coefficient", &TrainConfig::l0_coefficient);
  visit("partition_l1", &TrainConfig::partition_l1);
  visit("unit_norm_decoder", &TrainConfig::unit_norm_decoder);
  visit("auxk_coefficient", &TrainConfig::auxk_coefficient);
  visit("matryoshka_weights", &TrainConfig::matryoshka_weights);
  visit("aux_k", &TrainConfig::aux_k);
  visit("dead_after_tokens", &TrainConfig::dead_after_tokens);
  visit("k_initial", &TrainConfig::k_initial);
  visit("k_anneal_steps", &TrainConfig::k_anneal_steps);
  visit("threshold_momentum", &TrainConfig::threshold_momentum);
  visit("threshold_start_step", &TrainConfig::threshold_start_step);
  visit("normaliser_rows", &TrainConfig::normaliser_rows);
  visit("tile_rows", &TrainConfig::tile_rows);
  visit("seed", &TrainConfig::seed);
}

void bind_train_config(nb::module_& m) {
  auto cls = nb::class_<TrainConfig>(m, "TrainConfig",
                                     "Optimiser, schedule and loss settings (docs/training.md); "
                                     "every field is also a keyword of the constructor.");
  cls.def(
      "__init__",
      [](TrainConfig* self, nb::kwargs kwargs) {
        new (self) TrainConfig();
        std::map<std::string, std::function<void(nb::handle)>> setters;
        for_each_train_field([&](const char* name, auto member) {
          setters[name] = [self, member](nb::handle value) {
            using Field = std::remove_reference_t<decltype(self->*member)>;
            self->*member = nb::cast<Field>(value);
          };
        });
        for (auto [key, value] : kwargs) {
          const std::string name = nb::cast<std::string>(key);
          const auto setter = setters.find(name);
          if (setter == setters.end())
            throw Error(fmt::format("TrainConfig: no field named '{}'", name));
          setter->second(value);
        }
      },
      nb::arg("kwargs"));
  for_each_train_field([&](const char* name, auto member) { cls.def_rw(name, member); });
  cls.attr("AUTOMATIC") = TrainConfig::kAutomatic;
  cls.def("validate", &TrainConfig::validate)
      .def("to_json", &TrainConfig::to_json)
      .def_static("from_json", [](const std::string& json) { return TrainConfig::from_json(json); })
      .def("__repr__",
           [](const TrainConfig& c) { return fmt::format("TrainConfig({})", c.to_json()); });

  m.def("study_dfc_partition_l1", &study_dfc_partition_l1, nb::arg("config"),
        nb::arg("sparsity_coef"), nb::arg("exclusive_sparsity_coef"),
        "TrainConfig.partition_l1 values that reproduce the study's DFC objective (dfc.py).");
}

void bind_step_report(nb::module_& m) {
  nb::class_<StepReport>(m, "StepReport", "What one optimisation step measured.")
      .def_ro("step", &StepReport::step)
      .def_ro("loss", &StepReport::loss)
      .def_ro("reconstruction", &StepReport::reconstruction)
      .def_ro("sparsity", &StepReport::sparsity)
      .def_ro("auxk", &StepReport::auxk)
      .def_ro("mse", &StepReport::mse)
      .def_ro("fve", &StepReport::fve)
      .def_ro("l0", &StepReport::l0)
      .def_ro("dead_fraction", &StepReport::dead_fraction)
      .def_ro("gradient_norm", &StepReport::gradient_norm)
      .def_ro("learning_rate", &StepReport::learning_rate)
      .def_ro("k", &StepReport::k)
      .def("__repr__", [](const StepReport& r) {
        return fmt::format("<StepReport step {} loss {:.5f} L0 {:.1f} dead {:.1f}%>", r.step,
                           r.loss, r.l0, 100.0 * r.dead_fraction);
      });
}

// Batches from a Python iterator of float32 arrays [rows, M, d] (or [rows, M·d]): the bridge
// that lets activations captured in Python stream into training without touching the disk.
class PythonBatches : public BatchSource {
 public:
  PythonBatches(nb::object iterator, int sources, int width, std::string identity, PythonStop& stop)
      : iterator_(std::move(iterator)),
        sources_(sources),
        width_(width),
        identity_(std::move(identity)),
        stop_(stop) {}
  ~PythonBatches() override {
    nb::gil_scoped_acquire gil;
    iterator_.reset();
  }
  int sources() const override { return sources_; }
  int width() const override { return width_; }
  std::string identity() const override { return identity_; }
  void fill(std::int64_t step, std::int64_t rows, float* out, std::int8_t* /*labels*/) override {
    nb::gil_scoped_acquire gil;
    try {
      nb::object batch;
      try {
        batch = iterator_.attr("__next__")();
      } catch (nb::python_error& e) {
        if (!e.matches(PyExc_StopIteration)) throw;
        throw Error(
            fmt::format("the batch iterator ended at step {}; the run needs a batch for "
                        "every step (TrainConfig.steps)",
                        step + 1));
      }
      const auto array = nb::cast<nb::ndarray<nb::ro>>(batch);
      const auto view =
          rows_of<float>(array, "train: a batch from the iterator",
                         static_cast<std::int64_t>(sources_) * width_, sources_, width_);
      if (view.rows != rows) {
        throw Error(fmt::format("train: the iterator's batch {} has {} rows, but batch_size is {}",
                                step + 1, view.rows, rows));
      }
      std::memcpy(out, view.data,
                  static_cast<std::size_t>(rows * sources_ * width_) * sizeof(float));
    } catch (nb::python_error&) {
      stop_.record_failure(std::current_exception());
      throw Error("train: the batch iterator raised");
    } catch (nb::cast_error&) {
      throw Error(fmt::format("train: batch {} from the iterator is not an array", step + 1));
    }
  }

 private:
  nb::object iterator_;
  int sources_, width_;
  std::string identity_;
  PythonStop& stop_;
};

StepReport train_from_python(Trainer& trainer, nb::handle data, const std::string& checkpoint,
                             std::int64_t checkpoint_every, bool resume, bool progress,
                             nb::object on_step, std::int64_t shuffle_seed,
                             double shuffle_buffer_mb, std::int64_t first_row,
                             std::int64_t row_count, const std::string& data_identity) {
  const CrosscoderConfig& config = trainer.model().config();
  PythonStop stop;
  std::unique_ptr<BatchSource> source;
  if (nb::isinstance<ActivationDataset>(data)) {
    ShuffleOptions shuffle;
    shuffle.seed =
        shuffle_seed >= 0 ? static_cast<std::uint64_t>(shuffle_seed) : trainer.config().seed;
    if (shuffle_buffer_mb <= 0)
      throw Error(fmt::format("train: shuffle_buffer_mb {} must be positive", shuffle_buffer_mb));
    shuffle.buffer_bytes = static_cast<std::int64_t>(shuffle_buffer_mb * 1024 * 1024);
    shuffle.first_row = first_row;
    shuffle.row_count = row_count;
    source = std::make_unique<ShuffledBatches>(nb::cast<std::shared_ptr<ActivationDataset>>(data),
                                               shuffle);
  } else {
    if (!nb::hasattr(data, "__iter__"))
      throw Error("train: data must be an ActivationDataset or an iterable of batches");
    const std::string identity =
        data_identity.empty()
            ? fmt::format("python:{}", nb::cast<std::string>(nb::str(data.type().attr("__name__"))))
            : data_identity;
    source = std::make_unique<PythonBatches>(nb::iter(data), config.sources, config.width, identity,
                                             stop);
  }

  TrainingOptions options;
  options.checkpoint = checkpoint;
  options.checkpoint_every = checkpoint_every;
  options.resume = resume;
  options.show_progress = progress;
  options.on_step = stop.wrap<const StepReport&, double>(on_step);
  options.should_stop = stop.should_stop();
  try {
    nb::gil_scoped_release release;
    return train(trainer, *source, options);
  } catch (const Error& error) {
    stop.raise(error);
  }
}

void bind_trainer(nb::module_& m) {
  nb::class_<Trainer>(m, "Trainer", "Adam steps on a crosscoder (it keeps the model alive).")
      .def(nb::init<Crosscoder&, const TrainConfig&>(), nb::arg("model"), nb::arg("config"),
           nb::keep_alive<1, 2>())
      .def(
          "step",
          [](Trainer& trainer, nb::ndarray<nb::ro> x) {
            const CrosscoderConfig& c = trainer.model().config();
            const auto rows =
                rows_of<float>(x, "Trainer.step: x", c.input_width(), c.sources, c.width);
            nb::gil_scoped_release release;
            return trainer.step(rows.span(), rows.rows);
          },
          nb::arg("x"), "One optimisation step on the rows x (float32 [B, M, d] or [B, M·d]).")
      .def_prop_ro("steps_done", &Trainer::steps_done)
      .def_prop_ro("config", &Trainer::config)
      .def("learning_rate_at", &Trainer::learning_rate_at, nb::arg("step"))
      .def("k_at", &Trainer::k_at, nb::arg("step"))
      .def(
          "save_checkpoint",
          [](const Trainer& trainer, const std::string& path, const std::string& data_state) {
            nb::gil_scoped_release release;
            trainer.save_checkpoint(path, data_state);
          },
          nb::arg("path"), nb::arg("data_state") = "",
          "Writes model, optimiser state and counters atomically (resumable).")
      .def(
          "load_checkpoint",
          [](Trainer& trainer, const std::string& path) { return trainer.load_checkpoint(path); },
          nb::arg("path"), "Restores a checkpoint; returns the data state saved with it.");

  m.def("train", &train_from_python, nb::arg("trainer"), nb::arg("data"), nb::kw_only(),
        nb::arg("checkpoint") = "", nb::arg("checkpoint_every") = 0, nb::arg("resume") = false,
        nb::arg("progress") = true, nb::arg("on_step") = nb::none(), nb::arg("shuffle_seed") = -1,
        nb::arg("shuffle_buffer_mb") = 512.0, nb::arg("first_row") = 0, nb::arg("row_count") = -1,
        nb::arg("data_identity") = "",
        "Trains until trainer.config.steps on an ActivationDataset (shuffled) or an iterable of "
        "float32 batches [batch_size, M, d]. on_step(report, tokens_per_second) is called after "
        "every step. Ctrl-C (or an exception in on_step) stops after the current step, saves the "
        "checkpoint and raises KeyboardInterrupt (or that exception); resume=True continues.");
}

}  // namespace

void bind_training(nb::module_& m) {
  bind_train_config(m);
  bind_step_report(m);
  bind_trainer(m);
}

}  // namespace crosscoder::python
