#pragma once
// What the CPU backend's operation files share: Eigen views of row-major float arrays. Internal.

#include <Eigen/Core>

namespace crosscoder::detail {

using RowMatrix = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
using ConstRowMap = Eigen::Map<const RowMatrix>;
using RowMap = Eigen::Map<RowMatrix>;
using ConstVectorMap = Eigen::Map<const Eigen::VectorXf>;
using VectorMap = Eigen::Map<Eigen::VectorXf>;

}  // namespace crosscoder::detail
