// The emulator's scheduler: CUDA threads as fibers on one OS thread. On x86-64 a fiber switch
// is a dozen instructions (save the callee-saved registers, swap stacks); glibc's swapcontext
// would also make a system call per switch for the signal mask, which made the selection tests
// a hundred times slower. Elsewhere swapcontext is used.
#include "emulator.hpp"

#include <cstdio>
#include <cstdlib>
#include <memory>
#include <vector>

#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/common_interface_defs.h>
#endif

#if !defined(__x86_64__)
#include <ucontext.h>
#endif

namespace crosscoder::emulation {
namespace {

constexpr std::size_t kFiberStackBytes = std::size_t{256} << 10;

#if defined(__x86_64__)
// switch_stacks(&from, to): saves the callee-saved registers on the current stack, stores its
// stack pointer in *from, loads `to` and restores the registers saved there.
extern "C" void crosscoder_emulator_switch_stacks(void** from, void* to);
asm(R"(
  .text
  .globl crosscoder_emulator_switch_stacks
  .type crosscoder_emulator_switch_stacks, @function
crosscoder_emulator_switch_stacks:
  pushq %rbp
  pushq %rbx
  pushq %r12
  pushq %r13
  pushq %r14
  pushq %r15
  movq %rsp, (%rdi)
  movq %rsi, %rsp
  popq %r15
  popq %r14
  popq %r13
  popq %r12
  popq %rbx
  popq %rbp
  ret
  .size crosscoder_emulator_switch_stacks, .-crosscoder_emulator_switch_stacks
  .section .note.GNU-stack,"",@progbits
  .text
)");
#endif

struct Fiber {
  std::unique_ptr<char[]> stack{new char[kFiberStackBytes]};
#if defined(__x86_64__)
  void* stack_pointer = nullptr;
#else
  ucontext_t context{};
#endif
  bool finished = false;
};

struct Scheduler {
  std::vector<Fiber> fibers;
  unsigned current = 0;
  bool in_kernel = false;
  void (*body)(void*) = nullptr;
  void* context = nullptr;
#if defined(__x86_64__)
  void* stack_pointer = nullptr;
#else
  ucontext_t context_of_scheduler{};
#endif
#if defined(__SANITIZE_ADDRESS__)
  const void* stack_bottom = nullptr;
  std::size_t stack_size = 0;
#endif
};

Scheduler& scheduler() {
  static Scheduler s;
  return s;
}

// From the running fiber to the scheduler.
void switch_to_scheduler(bool finished) {
  Scheduler& s = scheduler();
  Fiber& fiber = s.fibers[s.current];
#if defined(__SANITIZE_ADDRESS__)
  void* fake_stack = nullptr;
  __sanitizer_start_switch_fiber(finished ? nullptr : &fake_stack, s.stack_bottom, s.stack_size);
#endif
  (void)finished;
#if defined(__x86_64__)
  crosscoder_emulator_switch_stacks(&fiber.stack_pointer, s.stack_pointer);
#else
  swapcontext(&fiber.context, &s.context_of_scheduler);
#endif
#if defined(__SANITIZE_ADDRESS__)
  __sanitizer_finish_switch_fiber(fake_stack, &s.stack_bottom, &s.stack_size);
#endif
}

// From the scheduler into fiber t, until it reaches a barrier or ends.
void switch_to_fiber(unsigned t) {
  Scheduler& s = scheduler();
  s.current = t;
  Fiber& fiber = s.fibers[t];
#if defined(__SANITIZE_ADDRESS__)
  void* fake_stack = nullptr;
  __sanitizer_start_switch_fiber(&fake_stack, fiber.stack.get(), kFiberStackBytes);
#endif
#if defined(__x86_64__)
  crosscoder_emulator_switch_stacks(&s.stack_pointer, fiber.stack_pointer);
#else
  swapcontext(&s.context_of_scheduler, &fiber.context);
#endif
#if defined(__SANITIZE_ADDRESS__)
  __sanitizer_finish_switch_fiber(fake_stack, nullptr, nullptr);
#endif
}

[[noreturn]] void fiber_main() {
  Scheduler& s = scheduler();
#if defined(__SANITIZE_ADDRESS__)
  __sanitizer_finish_switch_fiber(nullptr, &s.stack_bottom, &s.stack_size);
#endif
  s.body(s.context);
  s.fibers[s.current].finished = true;
  switch_to_scheduler(true);
  std::abort();  // a finished fiber is never resumed
}

void start_fiber(Fiber& fiber) {
  fiber.finished = false;
#if defined(__x86_64__)
  // The stack as switch_stacks leaves it: six saved registers, then the address `ret` jumps
  // to, then a slot where fiber_main's return address would be (so that its stack pointer is
  // 8 modulo 16 on entry, as after a call).
  auto top =
      reinterpret_cast<std::uintptr_t>(fiber.stack.get() + kFiberStackBytes) & ~std::uintptr_t{15};
  auto* slot = reinterpret_cast<void**>(top);
  *--slot = nullptr;
  *--slot = reinterpret_cast<void*>(&fiber_main);
  for (int i = 0; i < 6; ++i) *--slot = nullptr;
  fiber.stack_pointer = slot;
#else
  getcontext(&fiber.context);
  fiber.context.uc_stack.ss_sp = fiber.stack.get();
  fiber.context.uc_stack.ss_size = kFiberStackBytes;
  fiber.context.uc_link = nullptr;
  makecontext(&fiber.context, reinterpret_cast<void (*)()>(&fiber_main), 0);
#endif
}

}  // namespace

void sync_threads() {
  if (!scheduler().in_kernel) {
    std::fprintf(stderr, "CUDA emulator: __syncthreads() outside a kernel\n");
    std::abort();
  }
  switch_to_scheduler(false);
}

void run_grid(void (*body)(void*), void* context) {
  Launch& launch = current_launch();
  Scheduler& s = scheduler();
  const Dim3 grid = launch.grid, block = launch.block;
  const unsigned threads = block.x * block.y * block.z;
  if (s.fibers.size() < threads) s.fibers.resize(threads);
  s.body = body;
  s.context = context;
  s.in_kernel = true;
  for (unsigned bz = 0; bz < grid.z; ++bz) {
    for (unsigned by = 0; by < grid.y; ++by) {
      for (unsigned bx = 0; bx < grid.x; ++bx) {
        launch.block_index = Dim3(bx, by, bz);
        for (unsigned t = 0; t < threads; ++t) start_fiber(s.fibers[t]);
        unsigned alive = threads;
        while (alive > 0) {
          unsigned finished = 0;
          // Odd blocks run their threads in reverse order: a kernel whose result depends on
          // the order of threads between two barriers (a shared-memory race) then gives two
          // different answers within one launch, which the parity tests see.
          const bool reverse = ((bx + by + bz) & 1u) != 0;
          for (unsigned i = 0; i < threads; ++i) {
            const unsigned t = reverse ? threads - 1 - i : i;
            if (s.fibers[t].finished) continue;
            launch.thread = Dim3(t % block.x, (t / block.x) % block.y, t / (block.x * block.y));
            switch_to_fiber(t);
            if (s.fibers[t].finished) ++finished;
          }
          if (finished != 0 && finished != alive) {
            std::fprintf(stderr,
                         "CUDA emulator: divergent __syncthreads() in block (%u, %u, %u): %u of "
                         "%u threads finished while the others wait at a barrier\n",
                         bx, by, bz, finished, alive);
            std::abort();
          }
          alive -= finished;
        }
      }
    }
  }
  s.in_kernel = false;
}

}  // namespace crosscoder::emulation
