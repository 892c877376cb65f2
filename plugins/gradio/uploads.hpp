// Files clients upload before a call, as Gradio's POST /upload takes them
// (@gradio/client sends each Blob of a call's data there, then passes the
// path it gets back). Kept in memory, bounded in size and count, and
// forgotten after a while: a path is good for the calls that follow its
// upload, not for storage.
#pragma once

#include <chrono>
#include <cstdint>
#include <map>
#include <mutex>
#include <optional>
#include <random>
#include <string>
#include <vector>

#include <hostrun/status.hpp>

namespace hostrun::gradio {

struct UploadLimits {
  size_t max_file_bytes = size_t(20) << 20;    // one file (OpenAI's limit for an image too)
  size_t max_total_bytes = size_t(256) << 20;  // every file kept
  std::chrono::seconds keep_for{600};          // after its upload
};

class UploadStore {
 public:
  explicit UploadStore(UploadLimits limits = {});

  // Keeps `bytes`; the path to name them by ("/hostrun-upload/<random>/<file
  // name>"). resource_exhausted past a limit (expired files go first).
  Result<std::string> put(std::string_view bytes, std::string_view file_name);
  // A copy of the file at `path`, if it is kept.
  std::optional<std::vector<uint8_t>> get(const std::string& path);
  size_t bytes_kept();

 private:
  struct File {
    std::vector<uint8_t> bytes;
    std::chrono::steady_clock::time_point expires;
  };
  void drop_expired(std::chrono::steady_clock::time_point now);  // lock held

  UploadLimits limits_;
  std::mutex mutex_;
  std::map<std::string, File> files_;
  size_t total_bytes_ = 0;
  std::mt19937_64 random_{std::random_device{}()};
};

}  // namespace hostrun::gradio
