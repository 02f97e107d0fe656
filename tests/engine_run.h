#pragma once
// Driving an Engine without its loop thread: tests that submit requests, step the engine themselves and
// compare what came out.
#include <gtest/gtest.h>

#include <chrono>
#include <memory>
#include <vector>

#include "runtime/engine.h"

namespace uberlm {

// Steps `engine` until it has no work; every event of each stream, in order. Each event must be free of
// errors and each stream must finish.
inline std::vector<std::vector<StreamEvent>> step_until_done(Engine& engine,
                                                             const std::vector<std::shared_ptr<RequestStream>>& streams) {
  std::vector<std::vector<StreamEvent>> events(streams.size());
  std::vector<bool> finished(streams.size(), false);
  while (engine.has_work()) {
    engine.run_step();
    for (size_t i = 0; i < streams.size(); ++i) {
      StreamEvent event;
      while (streams[i]->next(event, std::chrono::milliseconds(0))) {
        EXPECT_TRUE(event.error.empty()) << "stream " << i << ": " << event.error;
        finished[i] = finished[i] || event.finished;
        events[i].push_back(std::move(event));
      }
    }
  }
  for (size_t i = 0; i < streams.size(); ++i) EXPECT_TRUE(finished[i]) << "stream " << i;
  return events;
}

}  // namespace uberlm
