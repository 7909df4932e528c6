#include "crosscoder/capture.hpp"

#include <fmt/format.h>

#include <memory>
#include <vector>

#include "crosscoder/error.hpp"

namespace crosscoder {

ActivationHook capture_hook(ActivationWriter& writer, int source, int layer,
                            PositionFilter positions) {
  if (source < 0 || source >= writer.sources()) {
    throw Error(fmt::format("capture: source {} out of range [0, {})", source, writer.sources()));
  }
  // The hook is copied around as a std::function; `fired` is shared by the copies.
  auto fired = std::make_shared<bool>(false);
  return [&writer, source, layer, positions = std::move(positions), fired](
             int at_layer, float* rows, int n_rows, int d, const RowInfo* info) {
    if (at_layer != layer || n_rows <= 0 || (positions.once && *fired)) return;
    if (d != writer.width()) {
      throw Error(fmt::format("capture at layer {}: rows of width {} but the dataset's width is {}",
                              layer, d, writer.width()));
    }
    std::vector<float> chosen;
    for (int r = 0; r < n_rows; ++r) {
      if (!position_selected(positions, info[r])) continue;
      chosen.insert(chosen.end(), rows + static_cast<std::ptrdiff_t>(r) * d,
                    rows + static_cast<std::ptrdiff_t>(r + 1) * d);
    }
    if (chosen.empty()) return;
    writer.append(source, chosen);
    *fired = true;
  };
}

}  // namespace crosscoder
