// Threads for the CPU work of a request: parsing a large body, tokenizing a
// prompt (a 15 MiB prompt takes seconds). Done on the server's I/O threads,
// such work stalls every connection they serve, /health and running streams
// included; handed to this pool, the I/O threads only read and write.
#pragma once

#include <boost/asio/post.hpp>
#include <boost/asio/thread_pool.hpp>

#include <cstddef>
#include <functional>
#include <hostrun/log.hpp>

namespace hostrun::http {

class WorkerPool {
 public:
  WorkerPool(int threads, Logger log) : pool_(size_t(threads > 0 ? threads : 1)), log_(std::move(log)) {}
  ~WorkerPool() { join(); }
  WorkerPool(const WorkerPool&) = delete;
  WorkerPool& operator=(const WorkerPool&) = delete;

  // Runs `work` on one of the threads, in order of posting. What it throws is
  // logged, never left to end a thread.
  void post(std::function<void()> work) {
    boost::asio::post(pool_, [this, work = std::move(work)] {
      try {
        work();
      } catch (const std::exception& e) {
        log_.error("a request's work failed: {}", e.what());
      } catch (...) {
        log_.error("a request's work failed");
      }
    });
  }

  // Waits for everything posted so far, then ends the threads.
  void join() noexcept { pool_.join(); }

 private:
  boost::asio::thread_pool pool_;
  Logger log_;
};

}  // namespace hostrun::http
