#include "crosscoder/hook.hpp"

#include <algorithm>

namespace crosscoder {

bool position_selected(const PositionFilter& filter, const RowInfo& info) {
  switch (filter.mode) {
    case PositionMode::all:
      return true;
    case PositionMode::last_prompt:
      return info.prompt && info.last_prompt;
    case PositionMode::prompt:
      return info.prompt;
    case PositionMode::generated:
      return !info.prompt;
    case PositionMode::listed:
      return std::find(filter.positions.begin(), filter.positions.end(), info.position) !=
             filter.positions.end();
  }
  return false;
}

}  // namespace crosscoder
