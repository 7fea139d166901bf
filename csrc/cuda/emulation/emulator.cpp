// The CUDA emulator's runtime (see include/fastffnn_emulation.h): threads as
// fibers, the block scheduler, barriers and warp collectives with their
// checks, poisoned shared memory, the emulated device's properties, and the
// PTX instructions fastffnn's kernels use, written from the PTX ISA's text.
#include <c10/cuda/CUDAGraphsC10Utils.h>
#include <c10/util/Exception.h>
#include <c10/util/Half.h>
#include <cuda_runtime.h>
#include <torch/library.h>
#include <sys/mman.h>
#include <ucontext.h>

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <map>
#include <memory>
#include <mutex>
#include <numeric>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "fastffnn_emulation.h"

#if defined(__SANITIZE_ADDRESS__)
#define FASTFFNN_EMU_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define FASTFFNN_EMU_ASAN 1
#endif
#endif
#ifdef FASTFFNN_EMU_ASAN
#include <sanitizer/asan_interface.h>
#include <sanitizer/common_interface_defs.h>
#endif

namespace fastffnn::emu {

namespace {

// ------------------------------------------------------------------ settings
enum class Schedule : int { Ascending = 0, Descending = 1, Random = 2 };

struct Settings {
  Schedule schedule = Schedule::Ascending;
  uint64_t seed = 0;
  // An H100 (sm_90) unless a test says otherwise.
  int cc_major = 9;
  int cc_minor = 0;
  int smem_optin = 232448;  // cudaDevAttrMaxSharedMemoryPerBlockOptin: 227 KB
  int sm_count = 132;
  int max_grid_x = 0x7FFFFFFF;  // cudaDevAttrMaxGridDimX
  // The PTX target (major * 10 + minor) of the code the device runs, as
  // cudaFuncGetAttributes' ptxVersion says; 0: code built for the device
  // itself. Lower: a build whose only code for it is older PTX, JIT-compiled
  // at load (TORCH_CUDA_ARCH_LIST="7.5+PTX" on an sm_90), where the mma the
  // kernels hold for sm_80 and newer is the __trap() branch.
  int ptx_version = 0;
  bool capturing = false;
  bool device_steps = false;
};

Settings g_settings;
// No device runs code for a newer arch than its own: a ptx_version above the device's is the device's.
int code_arch() {
  const int device = g_settings.cc_major * 10 + g_settings.cc_minor;
  return g_settings.ptx_version != 0 ? std::min(g_settings.ptx_version, device) : device;
}

std::mutex g_mutex;  // one grid at a time, and the state below
std::vector<std::string> g_launch_log;
std::map<const void*, int> g_max_dynamic_smem;  // cudaFuncAttributeMaxDynamicSharedMemorySize per kernel
cudaError_t g_last_error = cudaSuccess;
constexpr int kDefaultDynamicSmem = 48 * 1024;  // what a kernel may use before cudaFuncSetAttribute

// ------------------------------------------------------------------- fibers
enum class Wait { Ready, Barrier, Warp, Done, Failed };
enum class Collective { Shuffle, MmaTf32, MmaBf16, MmaF16 };

const char* collective_name(Collective c) {
  switch (c) {
    case Collective::Shuffle:
      return "__shfl_xor_sync";
    case Collective::MmaTf32:
      return "mma.sync.m16n8k8.tf32";
    case Collective::MmaBf16:
      return "mma.sync.m16n8k16.bf16";
    case Collective::MmaF16:
      return "mma.sync.m16n8k16.f16";
  }
  return "?";
}

// A fiber's saved context. On x86-64, a switch saves the callee-saved
// registers and the FPU control words on the old stack and swaps stack
// pointers (no system call, unlike swapcontext, which saves the signal mask);
// elsewhere, ucontext.
#if defined(__x86_64__)
struct Context {
  void* sp = nullptr;
};

extern "C" void fastffnn_emu_switch(void** save_sp, void* new_sp);
asm(R"(
  .pushsection .text
  .globl fastffnn_emu_switch
  .hidden fastffnn_emu_switch
  .type fastffnn_emu_switch,@function
fastffnn_emu_switch:
  pushq %rbp
  pushq %rbx
  pushq %r12
  pushq %r13
  pushq %r14
  pushq %r15
  subq $8, %rsp
  stmxcsr (%rsp)
  fnstcw 4(%rsp)
  movq %rsp, (%rdi)
  movq %rsi, %rsp
  ldmxcsr (%rsp)
  fldcw 4(%rsp)
  addq $8, %rsp
  popq %r15
  popq %r14
  popq %r13
  popq %r12
  popq %rbx
  popq %rbp
  ret
  .size fastffnn_emu_switch, .-fastffnn_emu_switch
  .popsection
)");

// A new fiber's stack, laid out as fastffnn_emu_switch leaves a suspended
// one, returning into entry() with the stack aligned as after a call, and
// with the creating thread's floating-point control words (rounding mode,
// flush-to-zero), as the ucontext path would have.
void make_context(Context& c, char* stack, size_t size, void (*entry)()) {
  uint32_t mxcsr = 0;
  uint16_t fpu_cw = 0;
  asm volatile("stmxcsr %0" : "=m"(mxcsr));
  asm volatile("fnstcw %0" : "=m"(fpu_cw));
  auto* top = reinterpret_cast<uint64_t*>((reinterpret_cast<uintptr_t>(stack + size) & ~uintptr_t(15)));
  *--top = 0;  // entry()'s would-be return address: it never returns
  *--top = reinterpret_cast<uint64_t>(entry);
  for (int i = 0; i < 6; ++i) *--top = 0;  // rbp, rbx, r12-r15
  *--top = static_cast<uint64_t>(fpu_cw) << 32 | mxcsr;
  c.sp = top;
}
void switch_context(Context& from, Context& to) { fastffnn_emu_switch(&from.sp, to.sp); }
#else
struct Context {
  ucontext_t uc;
};
void make_context(Context& c, char* stack, size_t size, void (*entry)()) {
  getcontext(&c.uc);
  c.uc.uc_stack.ss_sp = stack;
  c.uc.uc_stack.ss_size = size;
  c.uc.uc_link = nullptr;
  makecontext(&c.uc, entry, 0);
}
void switch_context(Context& from, Context& to) { swapcontext(&from.uc, &to.uc); }
#endif

#ifdef FASTFFNN_EMU_ASAN
constexpr size_t kStackBytes = 1 << 20;  // ASan's redzones make frames several times larger
#else
constexpr size_t kStackBytes = 256 << 10;
#endif
constexpr size_t kGuardBytes = 4096;

struct Fiber {
  Context context;
  char* stack = nullptr;  // kStackBytes above a PROT_NONE guard page, which catches overflows
  ThreadState state{};
  int linear = 0, warp = 0, lane = 0;
  Wait wait = Wait::Ready;
  const char* file = nullptr;
  int line = 0;
  // a pending warp collective
  Collective kind = Collective::Shuffle;
  unsigned mask = 0;
  int lane_mask = 0;
  uint64_t in_bits = 0, out_bits = 0;
  uint32_t a[4] = {}, b[2] = {};
  float c[4] = {}, d[4] = {};
};

// The fibers' stacks, kept between launches.
class StackPool {
 public:
  ~StackPool() {
    for (char* s : stacks_) munmap(s - kGuardBytes, kStackBytes + kGuardBytes);
  }
  char* get(size_t i) {
    while (stacks_.size() <= i) {
      void* p = mmap(nullptr, kStackBytes + kGuardBytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
      TORCH_CHECK(p != MAP_FAILED, "fastffnn emulator: cannot map a fiber stack");
      mprotect(p, kGuardBytes, PROT_NONE);
      stacks_.push_back(static_cast<char*>(p) + kGuardBytes);
    }
    return stacks_[i];
  }

 private:
  std::vector<char*> stacks_;
};

StackPool g_stacks;

// One grid's execution, block after block.
struct Runner {
  const char* name;
  dim3 grid, block;
  size_t dynamic_smem;
  void (*body)(void*);
  void* ctx;

  std::vector<Fiber> fibers;
  int threads = 0;
  Context scheduler;
  Fiber* current = nullptr;
  std::string error;
  int done = 0, at_barrier = 0;
  std::vector<unsigned> warp_waiting, warp_done;  // per warp: lanes at a collective, lanes exited
  std::vector<int> order;
  uint3 block_idx{};
  std::unique_ptr<unsigned char[]> dynamic;  // poisoned per block
  std::map<const void*, std::unique_ptr<unsigned char[]>> statics;
#ifdef FASTFFNN_EMU_ASAN
  void* fake_stack = nullptr;
  const void* scheduler_stack_bottom = nullptr;
  size_t scheduler_stack_size = 0;
#endif
};

thread_local Runner* t_runner = nullptr;

std::string where(const Runner& r, const Fiber& f) {
  std::ostringstream s;
  s << "thread (" << f.state.thread_idx.x << "," << f.state.thread_idx.y << "," << f.state.thread_idx.z
    << ") [warp " << f.warp << " lane " << f.lane << "] of block (" << r.block_idx.x << "," << r.block_idx.y << ","
    << r.block_idx.z << ")";
  return s.str();
}

std::string site(const char* file, int line) {
  std::string f = file ? std::filesystem::path(file).lexically_normal().string() : "?";
  const auto cut = f.rfind("csrc/");
  if (cut != std::string::npos) f = f.substr(cut);
  return f + ":" + std::to_string(line);
}

Runner& runner() {
  TORCH_CHECK(t_runner != nullptr && t_runner->current != nullptr,
              "fastffnn emulator: a device function ran outside a kernel");
  return *t_runner;
}

// Switches between the scheduler and a fiber, telling ASan about the stacks.
void switch_to_fiber(Runner& r, Fiber& f) {
  r.current = &f;
#ifdef FASTFFNN_EMU_ASAN
  __sanitizer_start_switch_fiber(&r.fake_stack, f.stack, kStackBytes);
#endif
  switch_context(r.scheduler, f.context);
#ifdef FASTFFNN_EMU_ASAN
  __sanitizer_finish_switch_fiber(r.fake_stack, nullptr, nullptr);
#endif
  r.current = nullptr;
}

void switch_to_scheduler(Runner& r, Fiber& f, bool finished) {
#ifdef FASTFFNN_EMU_ASAN
  void* fake = nullptr;
  __sanitizer_start_switch_fiber(finished ? nullptr : &fake, r.scheduler_stack_bottom, r.scheduler_stack_size);
#endif
  switch_context(f.context, r.scheduler);
#ifdef FASTFFNN_EMU_ASAN
  __sanitizer_finish_switch_fiber(fake, nullptr, nullptr);
#endif
}

void fiber_main() {
  Runner& r = *t_runner;
  Fiber& f = *r.current;
#ifdef FASTFFNN_EMU_ASAN
  __sanitizer_finish_switch_fiber(nullptr, &r.scheduler_stack_bottom, &r.scheduler_stack_size);
#endif
  // An exception must not unwind past the bottom of a fiber's stack: it becomes the launch's error
  // (recorded inside the handler, acted on after it, so that the exception is freed before the switch).
  std::string thrown;
  try {
    r.body(r.ctx);
  } catch (const std::exception& e) {
    thrown = e.what();
  } catch (...) {
    thrown = "an exception that is not a std::exception";
  }
  if (!thrown.empty()) {
    if (r.error.empty()) r.error = "an exception in " + where(r, f) + ": " + thrown;
    f.wait = Wait::Failed;
    switch_to_scheduler(r, f, true);
    std::abort();
  }
  f.wait = Wait::Done;
  switch_to_scheduler(r, f, true);
  std::abort();  // a finished fiber is never resumed
}

// Called in a fiber: records the first error and leaves for good.
[[noreturn]] void fail(const std::string& message) {
  Runner& r = runner();
  Fiber& f = *r.current;
  if (r.error.empty()) r.error = message;
  f.wait = Wait::Failed;
  switch_to_scheduler(r, f, true);
  std::abort();
}

void block_until_released(Runner& r, Fiber& f) {
  switch_to_scheduler(r, f, false);
}

// ------------------------------------------------------------- the scheduler
// All lanes of a warp collective: the lanes of `f`'s warp whose bit `mask` sets.
std::vector<Fiber*> lanes_of(Runner& r, const Fiber& f, unsigned mask, std::string& error) {
  std::vector<Fiber*> out;
  const int base = f.warp * 32;
  for (int lane = 0; lane < 32; ++lane) {
    if (!(mask >> lane & 1u)) continue;
    if (base + lane >= r.threads) {
      error = std::string(collective_name(f.kind)) + " at " + site(f.file, f.line) + " in " + where(r, f) +
              " names lane " + std::to_string(lane) + ", which this block does not have";
      return {};
    }
    out.push_back(&r.fibers[base + lane]);
  }
  return out;
}

void perform_shuffle(Runner& r, const std::vector<Fiber*>& lanes, unsigned mask) {
  for (Fiber* f : lanes) {
    const int src = f->lane ^ f->lane_mask;
    if (src >= 32 || !(mask >> src & 1u)) {
      r.error = "__shfl_xor_sync at " + site(f->file, f->line) + ": " + where(r, *f) + " reads lane " +
                std::to_string(src) + ", outside the mask 0x" + [&] {
                  std::ostringstream s;
                  s << std::hex << mask;
                  return s.str();
                }() + " (its value is undefined on a GPU)";
      return;
    }
    f->out_bits = r.fibers[f->warp * 32 + src].in_bits;
  }
}

void perform_mma(Runner& r, const std::vector<Fiber*>& lanes);

// A fiber stopped at a warp collective: if every lane of the mask is there,
// check that they agree and carry it out.
void arrive_at_collective(Runner& r, Fiber& f) {
  std::string error;
  if (!(f.mask >> f.lane & 1u)) {
    r.error = std::string(collective_name(f.kind)) + " at " + site(f.file, f.line) + ": " + where(r, f) +
              " is not in its own mask";
    return;
  }
  unsigned& waiting = r.warp_waiting[f.warp];
  waiting |= 1u << f.lane;
  if (const unsigned gone = r.warp_done[f.warp] & f.mask) {
    r.error = std::string(collective_name(f.kind)) + " at " + site(f.file, f.line) + " in " + where(r, f) +
              " waits for lane " + std::to_string(__builtin_ctz(gone)) +
              ", which has exited: a collective reached by only part of a warp";
    return;
  }
  if ((waiting & f.mask) != f.mask) return;  // not everyone is here yet
  auto lanes = lanes_of(r, f, f.mask, error);
  if (!error.empty()) {
    r.error = error;
    return;
  }
  for (Fiber* l : lanes) {
    if (l->kind != f.kind || l->file != f.file || l->line != f.line || l->mask != f.mask) {
      r.error = "lanes of warp " + std::to_string(f.warp) + " of block (" + std::to_string(r.block_idx.x) +
                ",...) met at different warp collectives: lane " + std::to_string(f.lane) + " at " +
                collective_name(f.kind) + " " + site(f.file, f.line) + ", lane " + std::to_string(l->lane) + " at " +
                collective_name(l->kind) + " " + site(l->file, l->line);
      return;
    }
  }
  if (f.kind == Collective::Shuffle) {
    perform_shuffle(r, lanes, f.mask);
  } else {
    perform_mma(r, lanes);
  }
  if (!r.error.empty()) return;
  for (Fiber* l : lanes) l->wait = Wait::Ready;
  waiting &= ~f.mask;
}

void arrive_at_barrier(Runner& r, Fiber& f) {
  ++r.at_barrier;
  if (r.done > 0) {
    for (const Fiber& other : r.fibers) {
      if (other.wait == Wait::Done) {
        r.error = "__syncthreads at " + site(f.file, f.line) + " reached by " + where(r, f) + " after " +
                  where(r, other) + " exited (undefined on a GPU)";
        return;
      }
    }
  }
  if (r.at_barrier < r.threads) return;
  for (const Fiber& other : r.fibers) {
    if (other.file != f.file || other.line != f.line) {
      r.error = "threads of block (" + std::to_string(r.block_idx.x) + ",...) wait at different __syncthreads: " +
                where(r, f) + " at " + site(f.file, f.line) + ", " + where(r, other) + " at " +
                site(other.file, other.line);
      return;
    }
  }
  for (Fiber& other : r.fibers) other.wait = Wait::Ready;
  r.at_barrier = 0;
}

void exited(Runner& r, Fiber& f) {
  ++r.done;
  r.warp_done[f.warp] |= 1u << f.lane;
  if (r.at_barrier == 0 && r.warp_waiting[f.warp] == 0) return;
  for (const Fiber& other : r.fibers) {
    if (other.wait == Wait::Barrier) {
      r.error = where(r, f) + " exited while " + where(r, other) + " waits at __syncthreads " +
                site(other.file, other.line) + " (undefined on a GPU)";
      return;
    }
    if (other.wait == Wait::Warp && other.warp == f.warp && (other.mask >> f.lane & 1u)) {
      r.error = std::string(collective_name(other.kind)) + " at " + site(other.file, other.line) + " in " +
                where(r, other) + " waits for lane " + std::to_string(f.lane) +
                ", which has exited: a collective reached by only part of a warp";
      return;
    }
  }
}

std::string deadlock_report(const Runner& r) {
  std::map<std::string, std::vector<int>> groups;
  for (const Fiber& f : r.fibers) {
    std::string what;
    if (f.wait == Wait::Barrier) {
      what = "__syncthreads at " + site(f.file, f.line);
    } else if (f.wait == Wait::Warp) {
      what = std::string(collective_name(f.kind)) + " at " + site(f.file, f.line);
    } else {
      continue;
    }
    groups[what].push_back(f.linear);
  }
  std::ostringstream s;
  s << "deadlock in block (" << r.block_idx.x << "," << r.block_idx.y << "," << r.block_idx.z << "): ";
  bool first = true;
  for (const auto& [what, ids] : groups) {
    s << (first ? "" : "; ") << ids.size() << " thread(s) wait at " << what << " (threads " << ids.front();
    if (ids.size() > 1) s << " .. " << ids.back();
    s << ")";
    first = false;
  }
  s << "; " << r.done << " exited";
  return s.str();
}

void make_order(std::vector<int>& o, int n, Schedule schedule, std::mt19937_64& rng) {
  o.resize(n);
  std::iota(o.begin(), o.end(), 0);
  if (schedule == Schedule::Descending) std::reverse(o.begin(), o.end());
  if (schedule == Schedule::Random) std::shuffle(o.begin(), o.end(), rng);
}

void run_block(Runner& r, uint3 block_idx, std::mt19937_64& rng) {
  r.block_idx = block_idx;
  r.done = r.at_barrier = 0;
  r.statics.clear();
  r.warp_waiting.assign((r.threads + 31) / 32, 0u);
  r.warp_done.assign((r.threads + 31) / 32, 0u);
  if (r.dynamic_smem > 0) std::memset(r.dynamic.get(), 0xFF, r.dynamic_smem);
  int i = 0;
  for (unsigned z = 0; z < r.block.z; ++z) {
    for (unsigned y = 0; y < r.block.y; ++y) {
      for (unsigned x = 0; x < r.block.x; ++x, ++i) {
        Fiber& f = r.fibers[i];
        f = Fiber{};
        f.stack = g_stacks.get(i);
#ifdef FASTFFNN_EMU_ASAN
        __asan_unpoison_memory_region(f.stack, kStackBytes);  // frames of abandoned fibers
#endif
        f.state = ThreadState{uint3{x, y, z}, block_idx, r.block, r.grid};
        f.linear = i;
        f.warp = i / 32;
        f.lane = i % 32;
        make_context(f.context, f.stack, kStackBytes, fiber_main);
      }
    }
  }
  while (r.done < r.threads) {
    bool ran = false;
    make_order(r.order, r.threads, g_settings.schedule, rng);
    for (int idx : r.order) {
      Fiber& f = r.fibers[idx];
      if (f.wait != Wait::Ready) continue;
      ran = true;
      switch_to_fiber(r, f);
      if (r.error.empty()) {
        switch (f.wait) {
          case Wait::Done:
            exited(r, f);
            break;
          case Wait::Barrier:
            arrive_at_barrier(r, f);
            break;
          case Wait::Warp:
            arrive_at_collective(r, f);
            break;
          default:
            break;
        }
      }
      if (!r.error.empty()) return;
    }
    if (!ran && r.done < r.threads) {
      r.error = deadlock_report(r);
      return;
    }
  }
}

// Called in a fiber at a collective: stops until the scheduler carries it out.
void wait_for_warp(Collective kind, unsigned mask, const char* file, int line) {
  Runner& r = runner();
  Fiber& f = *r.current;
  f.kind = kind;
  f.mask = mask;
  f.file = file;
  f.line = line;
  f.wait = Wait::Warp;
  block_until_released(r, f);
}

// ------------------------------------------------------------------ PTX: mma
// The fragment layouts of the PTX ISA (9.7.14.5.7, 9.7.14.5.8), with
// groupID = %laneid >> 2 and threadID_in_group = %laneid % 4. Elements are
// numbered as the ISA numbers them: a 16-bit register holds two consecutive
// elements, the lower-numbered one in its low half.
struct At {
  int row, col;
};

// m16n8k8 .tf32: A is 16 x 8 in four registers, B 8 x 8 in two.
At tf32_a(int lane, int i) {
  const int g = lane >> 2, t = lane % 4;
  return {(i == 0 || i == 2) ? g : g + 8, (i == 0 || i == 1) ? t : t + 4};
}
At tf32_b(int lane, int i) {
  const int g = lane >> 2, t = lane % 4;
  return {i == 0 ? t : t + 4, g};
}
// m16n8k16 .f16/.bf16: A is 16 x 16, elements a0..a7; B 16 x 8, b0..b3.
At half_a(int lane, int i) {
  const int g = lane >> 2, t = lane % 4;
  const bool upper_rows = !((0 <= i && i < 2) || (4 <= i && i < 6));
  return {upper_rows ? g + 8 : g, t * 2 + (i & 1) + (i >= 4 ? 8 : 0)};
}
At half_b(int lane, int i) {
  const int g = lane >> 2, t = lane % 4;
  return {t * 2 + (i & 1) + (i >= 2 ? 8 : 0), g};
}
// The accumulators (C, D) of both shapes: 16 x 8, c0..c3.
At accumulator(int lane, int i) {
  const int g = lane >> 2, t = lane % 4;
  return {i < 2 ? g : g + 8, t * 2 + (i & 1)};
}

float bits_to_float(uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

double half_bits_to_double(uint16_t h, Collective kind) {
  if (kind == Collective::MmaBf16) return bits_to_float(static_cast<uint32_t>(h) << 16);
  c10::Half v;
  v.x = h;
  return static_cast<float>(v);
}

void perform_mma(Runner& r, const std::vector<Fiber*>& lanes) {
  const Fiber& first = *lanes.front();
  if (lanes.size() != 32) {
    r.error = std::string(collective_name(first.kind)) + " at " + site(first.file, first.line) +
              " needs all 32 lanes of the warp (.sync.aligned)";
    return;
  }
  const bool tf32 = first.kind == Collective::MmaTf32;
  const int K = tf32 ? 8 : 16;
  double A[16][16], B[16][8], D[16][8];
  // A .tf32 operand is what cvt.rna.tf32.f32 makes: a float32 whose low 13 bits are zero.
  auto not_tf32 = [&](const Fiber& f, const char* operand, int reg, uint32_t bits) {
    if (!(bits & 0x1FFFu)) return false;
    std::ostringstream s;
    s << collective_name(first.kind) << " at " << site(first.file, first.line) << ": " << where(r, f) << " passes "
      << operand << "[" << reg << "] = 0x" << std::hex << bits
      << ", not a .tf32 value (convert it with cvt.rna.tf32.f32 first)";
    r.error = s.str();
    return true;
  };
  for (const Fiber* f : lanes) {
    for (int reg = 0; reg < 4; ++reg) {
      if (tf32) {
        if (not_tf32(*f, "a", reg, f->a[reg])) return;
        const At at = tf32_a(f->lane, reg);
        A[at.row][at.col] = bits_to_float(f->a[reg]);
      } else {
        for (int half = 0; half < 2; ++half) {
          const At at = half_a(f->lane, reg * 2 + half);
          A[at.row][at.col] = half_bits_to_double(static_cast<uint16_t>(f->a[reg] >> (16 * half)), first.kind);
        }
      }
    }
    for (int reg = 0; reg < 2; ++reg) {
      if (tf32) {
        if (not_tf32(*f, "b", reg, f->b[reg])) return;
        const At at = tf32_b(f->lane, reg);
        B[at.row][at.col] = bits_to_float(f->b[reg]);
      } else {
        for (int half = 0; half < 2; ++half) {
          const At at = half_b(f->lane, reg * 2 + half);
          B[at.row][at.col] = half_bits_to_double(static_cast<uint16_t>(f->b[reg] >> (16 * half)), first.kind);
        }
      }
    }
    for (int i = 0; i < 4; ++i) {
      const At at = accumulator(f->lane, i);
      D[at.row][at.col] = f->c[i];
    }
  }
  // The ISA leaves the accumulation order and rounding unspecified (at least
  // single precision): exact products, summed in double, rounded once.
  for (int m = 0; m < 16; ++m) {
    for (int n = 0; n < 8; ++n) {
      double s = D[m][n];
      for (int k = 0; k < K; ++k) s += A[m][k] * B[k][n];
      D[m][n] = s;
    }
  }
  for (Fiber* f : lanes) {
    for (int i = 0; i < 4; ++i) {
      const At at = accumulator(f->lane, i);
      f->d[i] = static_cast<float>(D[at.row][at.col]);
    }
  }
}

void mma(Collective kind, float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2], const char* file,
         int line) {
  Runner& r = runner();
  Fiber& f = *r.current;
  // mma.sync needs sm_80 code on an sm_80 device: below either, the kernel's own branch is __trap()
  if (code_arch() < 80) {
    fail(std::string(collective_name(kind)) + " at " + site(file, line) + " in " + where(r, f) +
         " on code for sm_" + std::to_string(code_arch()) + ": the kernel's branch below sm_80 is __trap()");
  }
  std::memcpy(f.a, a, sizeof(f.a));
  std::memcpy(f.b, b, sizeof(f.b));
  std::memcpy(f.c, d, sizeof(f.c));
  wait_for_warp(kind, 0xFFFFFFFFu, file, line);
  std::memcpy(d, f.d, sizeof(f.d));
}

std::string format_dim(dim3 d) {
  return "(" + std::to_string(d.x) + "," + std::to_string(d.y) + "," + std::to_string(d.z) + ")";
}

}  // namespace

// ------------------------------------------------------------ device side
const ThreadState& this_thread() { return runner().current->state; }

void syncthreads(const char* file, int line) {
  Runner& r = runner();
  Fiber& f = *r.current;
  f.file = file;
  f.line = line;
  f.wait = Wait::Barrier;
  block_until_released(r, f);
}

uint64_t shfl_xor_bits(unsigned mask, uint64_t bits, int lane_mask, const char* file, int line) {
  Runner& r = runner();
  Fiber& f = *r.current;
  f.in_bits = bits;
  f.lane_mask = lane_mask;
  wait_for_warp(Collective::Shuffle, mask, file, line);
  return f.out_bits;
}

void trap(const char* file, int line) {
  Runner& r = runner();
  fail("__trap() at " + site(file, line) + " in " + where(r, *r.current));
}

void* dynamic_shared() { return runner().dynamic.get(); }

void* static_shared(const void* key, size_t bytes, size_t align) {
  Runner& r = runner();
  auto it = r.statics.find(key);
  if (it == r.statics.end()) {
    std::unique_ptr<unsigned char[]> buffer(new unsigned char[bytes + align]);
    std::memset(buffer.get(), 0xFF, bytes + align);
    it = r.statics.emplace(key, std::move(buffer)).first;
  }
  auto p = reinterpret_cast<uintptr_t>(it->second.get());
  return reinterpret_cast<void*>((p + align - 1) / align * align);
}

uint32_t cvt_rna_tf32(float x) {
  // PTX ISA, cvt: .rna rounds to nearest with ties away from zero; .tf32 keeps
  // (at least) 10 mantissa bits. Modelled as a float32 whose low 13 bits are
  // zero. Adding half of the dropped range to the magnitude rounds ties away
  // from zero; a carry into the exponent is the right result (up to infinity).
  uint32_t u;
  std::memcpy(&u, &x, 4);
  if ((u & 0x7F800000u) == 0x7F800000u) return (u & 0x007FFFFFu) ? 0x7FFFE000u : u;  // NaN, infinity
  return (u + 0x1000u) & ~0x1FFFu;
}

void mma_m16n8k8_tf32(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2], const char* file, int line) {
  mma(Collective::MmaTf32, d, a, b, file, line);
}
void mma_m16n8k16_bf16(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2], const char* file,
                       int line) {
  mma(Collective::MmaBf16, d, a, b, file, line);
}
void mma_m16n8k16_f16(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2], const char* file, int line) {
  mma(Collective::MmaF16, d, a, b, file, line);
}

// --------------------------------------------------------------- host side
void run_grid(const char* name, const void* kernel, dim3 grid, dim3 block, size_t dynamic_smem,
              void (*body)(void*), void* ctx) {
  const std::lock_guard<std::mutex> lock(g_mutex);
  TORCH_CHECK(t_runner == nullptr, "fastffnn emulator: a kernel launched another kernel");
  g_launch_log.push_back(std::string(name) + " grid=" + format_dim(grid) + " block=" + format_dim(block) +
                         " smem=" + std::to_string(dynamic_smem));
  const uint64_t threads = static_cast<uint64_t>(block.x) * block.y * block.z;
  // The launch checks a GPU makes; a failed launch runs nothing and leaves
  // its error for cudaGetLastError, as on the device.
  if (grid.x == 0 || grid.y == 0 || grid.z == 0 || threads == 0 || threads > 1024 || block.z > 64 ||
      grid.y > 65535 || grid.z > 65535 || grid.x > static_cast<unsigned>(g_settings.max_grid_x)) {
    g_last_error = cudaErrorInvalidConfiguration;
    return;
  }
  // Within the kernel's attribute, and the device's limit (the emulated device may have been changed
  // since the attribute was set).
  const auto limit = g_max_dynamic_smem.find(kernel);
  if (dynamic_smem > static_cast<size_t>(limit == g_max_dynamic_smem.end() ? kDefaultDynamicSmem : limit->second) ||
      dynamic_smem > static_cast<size_t>(g_settings.smem_optin)) {
    g_last_error = cudaErrorInvalidValue;
    return;
  }
  Runner r;
  r.name = name;
  r.grid = grid;
  r.block = block;
  r.dynamic_smem = dynamic_smem;
  r.body = body;
  r.ctx = ctx;
  r.threads = static_cast<int>(threads);
  r.fibers.resize(r.threads);
  if (dynamic_smem > 0) r.dynamic.reset(new unsigned char[dynamic_smem]);
  std::mt19937_64 rng(g_settings.seed * 0x9E3779B97F4A7C15ull + g_launch_log.size());
  std::vector<uint3> blocks;
  for (unsigned z = 0; z < grid.z; ++z) {
    for (unsigned y = 0; y < grid.y; ++y) {
      for (unsigned x = 0; x < grid.x; ++x) blocks.push_back(uint3{x, y, z});
    }
  }
  std::vector<int> block_order;
  make_order(block_order, static_cast<int>(blocks.size()), g_settings.schedule, rng);
  struct Current {  // t_runner for this grid, cleared however it ends
    explicit Current(Runner* r) { t_runner = r; }
    ~Current() { t_runner = nullptr; }
  } current(&r);
  for (int b : block_order) {
    run_block(r, blocks[b], rng);
    if (!r.error.empty()) break;
  }
  TORCH_CHECK(r.error.empty(), "fastffnn emulator: kernel ", name, " (grid ", format_dim(grid), ", block ",
              format_dim(block), "): ", r.error);
}

cudaError_t get_device(int* device) {
  *device = 0;
  return cudaSuccess;
}

cudaError_t device_attribute(int* value, cudaDeviceAttr attr, int device) {
  if (device != 0) return cudaErrorInvalidValue;
  switch (attr) {
    case cudaDevAttrComputeCapabilityMajor:
      *value = g_settings.cc_major;
      return cudaSuccess;
    case cudaDevAttrComputeCapabilityMinor:
      *value = g_settings.cc_minor;
      return cudaSuccess;
    case cudaDevAttrMaxSharedMemoryPerBlockOptin:
      *value = g_settings.smem_optin;
      return cudaSuccess;
    case cudaDevAttrMaxSharedMemoryPerBlock:
      *value = kDefaultDynamicSmem;
      return cudaSuccess;
    case cudaDevAttrMultiProcessorCount:
      *value = g_settings.sm_count;
      return cudaSuccess;
    case cudaDevAttrMaxGridDimX:
      *value = g_settings.max_grid_x;
      return cudaSuccess;
  }
  return cudaErrorInvalidValue;
}

cudaError_t set_func_attribute(const void* kernel, cudaFuncAttribute attr, int value) {
  const std::lock_guard<std::mutex> lock(g_mutex);
  if (attr != cudaFuncAttributeMaxDynamicSharedMemorySize || value < 0 || value > g_settings.smem_optin) {
    return cudaErrorInvalidValue;
  }
  g_max_dynamic_smem[kernel] = value;
  return cudaSuccess;
}

cudaError_t func_attributes(cudaFuncAttributes* attr, const void* kernel) {
  if (attr == nullptr || kernel == nullptr) return cudaErrorInvalidValue;
  const std::lock_guard<std::mutex> lock(g_mutex);
  *attr = cudaFuncAttributes{};
  attr->ptxVersion = code_arch();
  attr->binaryVersion = g_settings.cc_major * 10 + g_settings.cc_minor;
  const auto limit = g_max_dynamic_smem.find(kernel);
  attr->maxDynamicSharedSizeBytes = limit == g_max_dynamic_smem.end() ? kDefaultDynamicSmem : limit->second;
  return cudaSuccess;
}

cudaError_t take_last_error() {
  const std::lock_guard<std::mutex> lock(g_mutex);
  const cudaError_t e = g_last_error;
  g_last_error = cudaSuccess;
  return e;
}

const char* error_string(cudaError_t error) {
  switch (error) {
    case cudaSuccess:
      return "no error";
    case cudaErrorInvalidValue:
      return "invalid argument";
    case cudaErrorInvalidConfiguration:
      return "invalid configuration argument";
    case cudaErrorLaunchFailure:
      return "unspecified launch failure";
  }
  return "unknown error";
}

bool capturing() { return g_settings.capturing; }
bool device_steps() { return g_settings.device_steps; }

namespace {

// torch.ops.fastffnn._emu_configure(key, value): the schedule, and the
// emulated device's properties.
void configure(c10::string_view key, int64_t value) {
  const std::lock_guard<std::mutex> lock(g_mutex);
  if (key == "schedule") {
    TORCH_CHECK_VALUE(value >= 0 && value <= 2, "fastffnn emulator: schedule must be 0 (ascending), "
                      "1 (descending) or 2 (random), got ", value);
    g_settings.schedule = static_cast<Schedule>(value);
  } else if (key == "seed") {
    g_settings.seed = static_cast<uint64_t>(value);
  } else if (key == "cc_major" || key == "cc_minor" || key == "smem_optin" || key == "sm_count" ||
             key == "max_grid_x" || key == "ptx_version") {
    TORCH_CHECK_VALUE(value > 0 || ((key == "cc_minor" || key == "ptx_version") && value == 0),
                      "fastffnn emulator: ", std::string(key), " must be positive, got ", value);
    TORCH_CHECK_VALUE(value <= 0x7FFFFFFF, "fastffnn emulator: ", std::string(key), " is too large: ", value);
    int& field = key == "cc_major"     ? g_settings.cc_major
                 : key == "cc_minor"   ? g_settings.cc_minor
                 : key == "smem_optin" ? g_settings.smem_optin
                 : key == "max_grid_x" ? g_settings.max_grid_x
                 : key == "ptx_version" ? g_settings.ptx_version
                                       : g_settings.sm_count;
    field = static_cast<int>(value);  // kernels keep their attributes, as on a device
  } else if (key == "capturing") {
    g_settings.capturing = value != 0;
  } else if (key == "device_steps") {
    g_settings.device_steps = value != 0;
  } else {
    TORCH_CHECK_VALUE(false, "fastffnn emulator: unknown setting '", std::string(key), "'");
  }
}

std::vector<std::string> launches(bool clear) {
  const std::lock_guard<std::mutex> lock(g_mutex);
  std::vector<std::string> out = g_launch_log;
  if (clear) g_launch_log.clear();
  return out;
}

}  // namespace

}  // namespace fastffnn::emu

TORCH_LIBRARY_FRAGMENT(fastffnn, m) {
  m.def("_emu_configure(str key, int value) -> ()", &fastffnn::emu::configure);
  m.def("_emu_launches(bool clear=True) -> str[]", &fastffnn::emu::launches);
}
