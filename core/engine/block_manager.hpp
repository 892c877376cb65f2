// The paged KV cache's bookkeeping: which blocks are free, who holds which,
// and (with prefix caching) which full blocks hold which tokens.
//
// A block holds `block_tokens` consecutive tokens of one sequence. A full block
// may be shared by several sequences whose token prefixes are identical up to
// and including that block; it is then found by the hash of that whole prefix
// and reference-counted. A block whose last holder lets go stays cached
// (evictable, least recently released first) until its memory is needed.
#pragma once

#include <cstdint>
#include <list>
#include <optional>
#include <span>
#include <unordered_map>
#include <vector>

namespace hostrun::core {

class BlockManager {
 public:
  BlockManager(int32_t num_blocks, int32_t block_tokens, bool prefix_caching);

  int32_t num_blocks() const noexcept { return int32_t(blocks_.size()); }
  int32_t block_tokens() const noexcept { return block_tokens_; }
  bool prefix_caching() const noexcept { return prefix_caching_; }
  // Blocks that allocate() can hand out now: never used, or cached but unheld.
  int32_t available() const noexcept { return int32_t(free_.size() + evictable_.size()); }
  // Blocks some sequence holds.
  int32_t held() const noexcept { return num_blocks() - available(); }

  // A block for new tokens (reference count 1), or nullopt when the cache is full.
  std::optional<int32_t> allocate();
  // One holder lets go of `block`.
  void release(int32_t block);
  void release_all(std::vector<int32_t>& blocks);

  // Hash of a full block's tokens chained to the hash of everything before it.
  // `inputs` is a digest of what else decides the block's K/V: the images
  // whose embeddings replace some of its tokens, and where (0 when none), so
  // two requests whose placeholder ids agree but whose images differ never
  // share a block.
  static uint64_t chain_hash(uint64_t parent, std::span<const int32_t> block_tokens, uint64_t inputs = 0);

  // Prefix caching: the cached block for this prefix hash whose tokens (and
  // inputs digest) match exactly, now held once more; nullopt when there is none.
  std::optional<int32_t> acquire_cached(uint64_t prefix_hash, std::span<const int32_t> tokens, uint64_t inputs = 0);
  // Records that `block` (full, held) holds `tokens`, the block ending the prefix with `prefix_hash`.
  void publish(int32_t block, uint64_t prefix_hash, std::span<const int32_t> tokens, uint64_t inputs = 0);

 private:
  struct Block {
    int32_t holders = 0;
    bool cached = false;  // published under `hash`
    uint64_t hash = 0;
    std::vector<int32_t> tokens;  // the block's tokens and inputs digest, to rule out hash collisions
    uint64_t inputs = 0;
    std::list<int32_t>::iterator evictable_at;
  };
  void forget(int32_t block);

  int32_t block_tokens_;
  bool prefix_caching_;
  std::vector<Block> blocks_;
  std::vector<int32_t> free_;          // never published, or forgotten
  std::list<int32_t> evictable_;       // cached and unheld, least recently released first
  std::unordered_map<uint64_t, int32_t> by_hash_;
};

}  // namespace hostrun::core
