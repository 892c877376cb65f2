#include "bpe.hpp"

#include <algorithm>
#include <queue>

namespace hostrun::hf {

size_t StringHash::operator()(std::string_view s) const noexcept {
  // FNV-1a over 8-byte words: the pieces are short and this is the hot path.
  uint64_t h = 0xcbf29ce484222325ull ^ s.size();
  size_t i = 0;
  for (; i + 8 <= s.size(); i += 8) {
    uint64_t w;
    __builtin_memcpy(&w, s.data() + i, 8);
    h = (h ^ w) * 0x100000001b3ull;
    h ^= h >> 29;
  }
  for (; i < s.size(); ++i) h = (h ^ static_cast<uint8_t>(s[i])) * 0x100000001b3ull;
  return size_t(h ^ (h >> 32));
}

void MergeTable::reserve(size_t count) {
  size_t capacity = 16;
  while (capacity < count * 2) capacity <<= 1;
  slots_.assign(capacity, Entry{});
  count_ = 0;
}

bool MergeTable::insert(TokenId left, TokenId right, int32_t rank, TokenId merged) {
  if ((count_ + 1) * 2 > slots_.size()) {
    std::vector<Entry> old = std::move(slots_);
    reserve(std::max<size_t>(count_ + 1, old.size()));
    for (const Entry& e : old)
      if (e.key != kEmpty) insert(TokenId(e.key >> 32), TokenId(uint32_t(e.key)), e.rank, e.merged);
  }
  uint64_t key = make_key(left, right);
  size_t mask = slots_.size() - 1;
  for (size_t i = mix(key) & mask;; i = (i + 1) & mask) {
    Entry& e = slots_[i];
    if (e.key == key) {
      e.rank = rank;
      e.merged = merged;
      return false;
    }
    if (e.key == kEmpty) {
      e = Entry{key, rank, merged};
      ++count_;
      return true;
    }
  }
}

BpeModel::BpeModel() : cache_(new CacheShard[kCacheShards]) {}
BpeModel::~BpeModel() = default;

void BpeModel::encode_piece(std::string_view piece, std::vector<TokenId>& ids) const {
  if (piece.size() == 1) {
    ids.push_back(byte_ids[static_cast<uint8_t>(piece[0])]);
    return;
  }
  if (ignore_merges) {
    auto it = bytes_to_id.find(piece);
    if (it != bytes_to_id.end()) {
      ids.push_back(it->second);
      return;
    }
  }
  if (piece.size() > kCacheMaxPiece) {
    merge(piece, ids);
    return;
  }
  CacheShard& shard = cache_[StringHash{}(piece) % kCacheShards];
  {
    std::lock_guard<std::mutex> hold(shard.lock);
    auto it = shard.entries.find(piece);
    if (it != shard.entries.end()) {
      ids.insert(ids.end(), it->second.begin(), it->second.end());
      return;
    }
  }
  size_t first = ids.size();
  merge(piece, ids);
  std::vector<TokenId> made(ids.begin() + std::ptrdiff_t(first), ids.end());
  std::lock_guard<std::mutex> hold(shard.lock);
  if (shard.entries.size() >= kCacheShardCapacity) shard.entries.clear();
  shard.entries.emplace(std::string(piece), std::move(made));
}

// Repeatedly merges the adjacent pair with the lowest rank, the leftmost one
// on a tie, until no pair has a merge: exactly HF's Word::merge_all without
// dropout. Symbols form a linked list and candidate pairs wait in a min-heap,
// so a piece of n bytes costs O(n log n) however long it is (a 1 MB run of one
// letter included); stale heap entries are skipped when popped.
void BpeModel::merge(std::string_view piece, std::vector<TokenId>& ids) const {
  struct Symbol {
    TokenId id;
    int32_t prev, next;
    bool alive;
  };
  struct Candidate {
    int32_t rank;
    int32_t left;   // position of the left symbol
    int32_t right;  // position of the right symbol when the pair was made
    bool operator>(const Candidate& o) const noexcept { return rank != o.rank ? rank > o.rank : left > o.left; }
  };
  const int32_t n = int32_t(piece.size());
  std::vector<Symbol> symbols(static_cast<size_t>(n));
  for (int32_t i = 0; i < n; ++i)
    symbols[size_t(i)] = Symbol{byte_ids[static_cast<uint8_t>(piece[size_t(i)])], i - 1, i + 1 < n ? i + 1 : -1, true};

  std::vector<Candidate> storage;
  storage.reserve(size_t(n));
  std::priority_queue<Candidate, std::vector<Candidate>, std::greater<>> heap(std::greater<>{}, std::move(storage));
  auto consider = [&](int32_t left) {
    if (left < 0) return;
    int32_t right = symbols[size_t(left)].next;
    if (right < 0) return;
    if (const MergeTable::Entry* m = merges.find(symbols[size_t(left)].id, symbols[size_t(right)].id))
      heap.push(Candidate{m->rank, left, right});
  };
  for (int32_t i = 0; i + 1 < n; ++i) consider(i);

  while (!heap.empty()) {
    Candidate top = heap.top();
    heap.pop();
    Symbol& left = symbols[size_t(top.left)];
    if (!left.alive || left.next != top.right) continue;
    Symbol& right = symbols[size_t(top.right)];
    const MergeTable::Entry* m = merges.find(left.id, right.id);
    // The pair changed since it was queued (one side merged with another).
    if (!m || m->rank != top.rank) continue;
    left.id = m->merged;
    right.alive = false;
    left.next = right.next;
    if (right.next >= 0) symbols[size_t(right.next)].prev = top.left;
    consider(left.prev);
    consider(top.left);
  }
  for (int32_t i = 0; i >= 0 && i < n; i = symbols[size_t(i)].next) ids.push_back(symbols[size_t(i)].id);
}

}  // namespace hostrun::hf
