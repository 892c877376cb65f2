#include "engine/block_manager.hpp"

#include <algorithm>
#include <cassert>

namespace hostrun::core {

BlockManager::BlockManager(int32_t num_blocks, int32_t block_tokens, bool prefix_caching)
    : block_tokens_(block_tokens), prefix_caching_(prefix_caching), blocks_(size_t(std::max(num_blocks, 0))) {
  free_.reserve(blocks_.size());
  // Hand out low block numbers first: easier to read in logs and tests.
  for (int32_t b = num_blocks - 1; b >= 0; --b) free_.push_back(b);
}

std::optional<int32_t> BlockManager::allocate() {
  int32_t block;
  if (!free_.empty()) {
    block = free_.back();
    free_.pop_back();
  } else if (!evictable_.empty()) {
    block = evictable_.front();
    evictable_.pop_front();
    forget(block);
  } else {
    return std::nullopt;
  }
  blocks_[size_t(block)].holders = 1;
  return block;
}

void BlockManager::release(int32_t block) {
  Block& b = blocks_[size_t(block)];
  assert(b.holders > 0);
  if (--b.holders > 0) return;
  if (b.cached) {
    evictable_.push_back(block);
    b.evictable_at = std::prev(evictable_.end());
  } else {
    free_.push_back(block);
  }
}

void BlockManager::release_all(std::vector<int32_t>& held_blocks) {
  // Release the tail first so the prefix (most shareable) blocks are the
  // most recently released and so the last to be evicted.
  for (auto it = held_blocks.rbegin(); it != held_blocks.rend(); ++it) release(*it);
  held_blocks.clear();
}

uint64_t BlockManager::chain_hash(uint64_t parent, std::span<const int32_t> tokens, uint64_t inputs) {
  // FNV-1a over the parent hash and the token ids, then a final avalanche
  // (splitmix64) so near-identical prefixes land far apart in the map.
  uint64_t h = 1469598103934665603ull ^ parent;
  auto mix = [&](uint32_t v) {
    for (int i = 0; i < 4; ++i) {
      h ^= (v >> (8 * i)) & 0xFF;
      h *= 1099511628211ull;
    }
  };
  for (int32_t t : tokens) mix(uint32_t(t));
  mix(uint32_t(inputs));
  mix(uint32_t(inputs >> 32));
  h ^= h >> 30;
  h *= 0xbf58476d1ce4e5b9ull;
  h ^= h >> 27;
  h *= 0x94d049bb133111ebull;
  h ^= h >> 31;
  return h;
}

std::optional<int32_t> BlockManager::acquire_cached(uint64_t prefix_hash, std::span<const int32_t> tokens,
                                                   uint64_t inputs) {
  if (!prefix_caching_) return std::nullopt;
  auto it = by_hash_.find(prefix_hash);
  if (it == by_hash_.end()) return std::nullopt;
  int32_t block = it->second;
  Block& b = blocks_[size_t(block)];
  if (b.inputs != inputs || !std::equal(b.tokens.begin(), b.tokens.end(), tokens.begin(), tokens.end()))
    return std::nullopt;
  if (b.holders == 0) evictable_.erase(b.evictable_at);
  ++b.holders;
  return block;
}

void BlockManager::publish(int32_t block, uint64_t prefix_hash, std::span<const int32_t> tokens, uint64_t inputs) {
  if (!prefix_caching_) return;
  Block& b = blocks_[size_t(block)];
  if (b.cached) return;
  // Two sequences may compute the same prefix at once; the first one published wins.
  if (by_hash_.count(prefix_hash)) return;
  b.cached = true;
  b.hash = prefix_hash;
  b.tokens.assign(tokens.begin(), tokens.end());
  b.inputs = inputs;
  by_hash_[prefix_hash] = block;
}

void BlockManager::forget(int32_t block) {
  Block& b = blocks_[size_t(block)];
  if (!b.cached) return;
  by_hash_.erase(b.hash);
  b.cached = false;
  b.tokens.clear();
}

}  // namespace hostrun::core
