#pragma once
/// @file crosscoder.hpp
/// Umbrella header: includes the whole public API.

#include "crosscoder/backend.hpp"
#include "crosscoder/device_array.hpp"
#include "crosscoder/error.hpp"
#include "crosscoder/log.hpp"
#include "crosscoder/version.hpp"
