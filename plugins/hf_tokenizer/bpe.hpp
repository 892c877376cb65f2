// Byte-level BPE: vocabulary, merge ranks, and the merge loop.
#pragma once

#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "hostrun/tokenizer.hpp"

namespace hostrun::hf {

// Hash for string keys that also accepts string_view, so lookups of a piece
// of the input never allocate.
struct StringHash {
  using is_transparent = void;
  size_t operator()(std::string_view s) const noexcept;
};
using BytesToId = std::unordered_map<std::string, TokenId, StringHash, std::equal_to<>>;

// (left id, right id) -> (rank, merged id), open addressing. 280k merges fit
// in a flat array that a lookup touches once or twice, where a node-based map
// would chase pointers on every probe of the merge loop.
class MergeTable {
 public:
  struct Entry {
    uint64_t key = kEmpty;
    int32_t rank = 0;
    TokenId merged = 0;
  };
  static constexpr uint64_t kEmpty = ~uint64_t(0);

  void reserve(size_t count);
  // Returns false when the pair was already present; like HF (whose merge map is
  // collected from the list, later entries replacing earlier), the later rank wins.
  bool insert(TokenId left, TokenId right, int32_t rank, TokenId merged);
  const Entry* find(TokenId left, TokenId right) const noexcept {
    uint64_t key = make_key(left, right);
    size_t mask = slots_.size() - 1;
    for (size_t i = mix(key) & mask;; i = (i + 1) & mask) {
      const Entry& e = slots_[i];
      if (e.key == key) return &e;
      if (e.key == kEmpty) return nullptr;
    }
  }
  size_t size() const noexcept { return count_; }

 private:
  static uint64_t make_key(TokenId a, TokenId b) noexcept { return (uint64_t(uint32_t(a)) << 32) | uint32_t(b); }
  static size_t mix(uint64_t k) noexcept {
    k ^= k >> 33;
    k *= 0xff51afd7ed558ccdull;
    k ^= k >> 33;
    return size_t(k);
  }
  std::vector<Entry> slots_;
  size_t count_ = 0;
};

class BpeModel {
 public:
  BpeModel();
  ~BpeModel();

  // Filled by the loader.
  BytesToId bytes_to_id;          // model vocabulary, keyed by raw bytes
  TokenId byte_ids[256] = {};     // the token of each single byte
  MergeTable merges;
  bool ignore_merges = false;     // a piece that is itself in the vocabulary is one token

  // Appends the ids of one pre-token (raw bytes, non-empty).
  void encode_piece(std::string_view piece, std::vector<TokenId>& ids) const;

 private:
  void merge(std::string_view piece, std::vector<TokenId>& ids) const;

  // pre-token -> ids, shared by all threads. Sharded so that concurrent
  // encoders rarely wait on one lock; a full shard is simply emptied (the
  // pieces that matter come back at once, and no eviction order is kept).
  struct CacheShard {
    std::mutex lock;
    std::unordered_map<std::string, std::vector<TokenId>, StringHash, std::equal_to<>> entries;
  };
  static constexpr size_t kCacheShards = 16;
  static constexpr size_t kCacheShardCapacity = 4096;
  static constexpr size_t kCacheMaxPiece = 256;  // longer pieces rarely repeat
  std::unique_ptr<CacheShard[]> cache_;
};

}  // namespace hostrun::hf
