#pragma once
/// @file crosscoder.hpp
/// Umbrella header: includes the whole public API.

#include "crosscoder/backend.hpp"
#include "crosscoder/batch_source.hpp"
#include "crosscoder/config.hpp"
#include "crosscoder/contrast.hpp"
#include "crosscoder/data_metrics.hpp"
#include "crosscoder/demo.hpp"
#include "crosscoder/device_array.hpp"
#include "crosscoder/diff_report.hpp"
#include "crosscoder/error.hpp"
#include "crosscoder/latent_metrics.hpp"
#include "crosscoder/latent_scaling.hpp"
#include "crosscoder/log.hpp"
#include "crosscoder/model.hpp"
#include "crosscoder/npy_source.hpp"
#include "crosscoder/progress.hpp"
#include "crosscoder/sparse_codes.hpp"
#include "crosscoder/synthetic.hpp"
#include "crosscoder/train_loop.hpp"
#include "crosscoder/trainer.hpp"
#include "crosscoder/version.hpp"
