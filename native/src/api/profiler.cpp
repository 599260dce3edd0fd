// Operator profiling: libtorch's (legacy, CPU) profiler around a stretch of work on the calling thread, summarised
// per operator and autograd node as calls, self time and total time. Self time is what a nested stack of
// push/pop events leaves after its children, so a table sorted by it shows where a pass spends its time.
#include <torch/csrc/autograd/profiler_legacy.h>

#include <algorithm>
#include <fstream>
#include <map>
#include <string>
#include <vector>

#include "common.h"

namespace {

namespace prof = torch::autograd::profiler;

struct OpTotals {
  int64_t calls = 0;
  double self_us = 0, total_us = 0;
};

struct Open {
  const prof::LegacyEvent* push;
  double child_us;
};

// Pairs each thread's push/pop events as a stack; an operator nested in itself (a recursive op) counts both times
// in calls and self time but only the outermost in total time.
std::map<std::string, OpTotals> summarise(const prof::thread_event_lists& threads) {
  std::map<std::string, OpTotals> totals;
  for (const auto& events : threads) {
    std::vector<Open> stack;
    std::map<std::string, int> depth;
    for (const auto& e : events) {
      if (e.kind() == prof::EventKind::PushRange) {
        stack.push_back({&e, 0.0});
        ++depth[e.name()];
      } else if (e.kind() == prof::EventKind::PopRange && !stack.empty()) {
        const Open open = stack.back();
        stack.pop_back();
        const double elapsed = open.push->cpuElapsedUs(e);
        const std::string name = open.push->name();
        auto& t = totals[name];
        ++t.calls;
        t.self_us += elapsed - open.child_us;
        if (--depth[name] == 0) t.total_us += elapsed;
        if (!stack.empty()) stack.back().child_us += elapsed;
      }
    }
  }
  return totals;
}

}  // namespace

extern "C" {

sl_status sl_profiler_start(void) {
  SL_TRY
  if (torch::profiler::impl::profilerEnabled()) throw sl::ArgumentError("the profiler is already running");
  prof::enableProfilerLegacy(torch::profiler::impl::ProfilerConfig(torch::profiler::impl::ProfilerState::CPU));
  SL_CATCH
}

sl_status sl_profiler_stop(const char* path) {
  SL_TRY
  if (!torch::profiler::impl::profilerEnabled()) throw sl::ArgumentError("the profiler is not running");
  const auto totals = summarise(prof::disableProfilerLegacy());
  if (path == nullptr) return SL_OK;  // stopped, summary discarded
  std::vector<std::pair<std::string, OpTotals>> rows(totals.begin(), totals.end());
  std::sort(rows.begin(), rows.end(), [](const auto& a, const auto& b) { return a.second.self_us > b.second.self_us; });
  std::ofstream out(path);
  if (!out) throw sl::ArgumentError(std::string("cannot write the profile to ") + path);
  out << "op\tcalls\tself_ms\ttotal_ms\n";
  for (const auto& [name, t] : rows)
    out << name << '\t' << t.calls << '\t' << t.self_us / 1000.0 << '\t' << t.total_us / 1000.0 << '\n';
  if (!out) throw sl::ArgumentError(std::string("failed writing the profile to ") + path);
  SL_CATCH
}

}  // extern "C"
