// Building blocks of the CUDA backend's kernels on the host emulator, called directly, outside
// the preconditions the backend's own callers keep (only in crosscoder_cuda_emulation_tests).
#include <gtest/gtest.h>

#include <vector>

#define CROSSCODER_CUDA_EMULATION 1
#include "selection_kernels.cuh"

namespace crosscoder::cuda_emulated {
namespace {

__global__ void choose_digit_once(const unsigned* histogram, int bins, unsigned long long remaining,
                                  DigitChoice* out) {
  __shared__ unsigned long long scratch[kThreads];
  __shared__ DigitChoice choice;  // static in the emulator: it keeps the previous launch's answer
  const DigitChoice chosen = choose_digit(histogram, bins, remaining, scratch, &choice);
  if (threadIdx.x == 0) *out = chosen;
}

DigitChoice choose(const std::vector<unsigned>& histogram, unsigned long long remaining) {
  DigitChoice out{~0u, ~0ull};
  CROSSCODER_LAUNCH(choose_digit_once, dim3(1), dim3(kThreads), 0, nullptr, histogram.data(),
                    static_cast<int>(histogram.size()), remaining, &out);
  return out;
}

void expect_choice(const DigitChoice& got, unsigned digit, unsigned long long rank) {
  EXPECT_EQ(got.digit, digit);
  EXPECT_EQ(got.remaining, rank);
}

// choose_digit's callers keep 1 ≤ remaining ≤ the histogram's total. Outside that it must still
// write its shared answer rather than return what an earlier launch left there: the rank is
// clamped into range, and an empty histogram gives digit 0.
TEST(EmulatedKernels, ChooseDigitAnswersOutsideItsPrecondition) {
  std::vector<unsigned> histogram(kMaxRadixBins, 0);
  histogram[5] = 3;    // ranks 3 to 5
  histogram[100] = 2;  // ranks 1 and 2 (the larger digit first)
  expect_choice(choose(histogram, 1), 100, 1);
  expect_choice(choose(histogram, 4), 5, 2);
  {
    SCOPED_TRACE("beyond the total: the last entry");
    expect_choice(choose(histogram, 9), 5, 3);
  }
  {
    SCOPED_TRACE("rank 0: the first entry");
    expect_choice(choose(histogram, 0), 100, 1);
  }
  {
    SCOPED_TRACE("an empty histogram");
    expect_choice(choose(std::vector<unsigned>(kMaxRadixBins, 0), 3), 0, 1);
  }
}

}  // namespace
}  // namespace crosscoder::cuda_emulated
