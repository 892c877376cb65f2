// awq_chunks: every group once, in order; groups that share a tensor in one
// chunk; chunks close at the byte target.
#include <doctest/doctest.h>

#include <set>
#include <string>

#include "chunks.hpp"

using hostrun::LinearInputGroup;
using hostrun::awq::awq_chunks;
using Chunks = std::vector<std::vector<size_t>>;

namespace {

// Llama's groups, layer by layer: q/k/v after input_layernorm; o_proj after
// v_proj without GQA, alone with it; gate/up after post_attention_layernorm;
// down after up_proj.
std::vector<LinearInputGroup> llama_groups(int layers, bool gqa) {
  std::vector<LinearInputGroup> groups;
  for (int l = 0; l < layers; ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    groups.push_back({{{p + "self_attn.q_proj", true}, {p + "self_attn.k_proj", true}, {p + "self_attn.v_proj", false}},
                      {p + "input_layernorm.weight"}});
    groups.push_back({{{p + "self_attn.o_proj", false}},
                      gqa ? std::vector<std::string>{} : std::vector<std::string>{p + "self_attn.v_proj.weight"}});
    groups.push_back({{{p + "mlp.gate_proj", false}, {p + "mlp.up_proj", false}},
                      {p + "post_attention_layernorm.weight"}});
    groups.push_back({{{p + "mlp.down_proj", false}}, {p + "mlp.up_proj.weight"}});
  }
  return groups;
}

void check_partition(const Chunks& chunks, size_t groups) {
  size_t next = 0;
  for (const auto& chunk : chunks) {
    CHECK_FALSE(chunk.empty());
    for (size_t g : chunk) CHECK(g == next++);
  }
  CHECK(next == groups);
}

}  // namespace

TEST_CASE("awq_chunks keeps groups that share a tensor together") {
  const auto gqa = llama_groups(3, true);
  const std::vector<uint64_t> one(gqa.size(), 1);
  // A target of one byte: every group would close its chunk, but down_proj
  // divides up_proj's rows, so gate/up and down stay together.
  const Chunks chunks = awq_chunks(gqa, one, 1);
  check_partition(chunks, gqa.size());
  CHECK(chunks == Chunks{{0}, {1}, {2, 3}, {4}, {5}, {6, 7}, {8}, {9}, {10, 11}});

  // Without GQA o_proj's scales divide v_proj's rows: q/k/v and o together.
  const auto mha = llama_groups(2, false);
  CHECK(awq_chunks(mha, std::vector<uint64_t>(mha.size(), 1), 1) == Chunks{{0, 1}, {2, 3}, {4, 5}, {6, 7}});
}

TEST_CASE("awq_chunks closes a chunk at the byte target") {
  const auto groups = llama_groups(4, true);
  const std::vector<uint64_t> bytes(groups.size(), 10);  // 40 a layer
  CHECK(awq_chunks(groups, bytes, 80) == Chunks{{0, 1, 2, 3, 4, 5, 6, 7}, {8, 9, 10, 11, 12, 13, 14, 15}});
  // 30 bytes reached inside gate/up's pair: the chunk waits for down.
  CHECK(awq_chunks(groups, bytes, 30).front() == std::vector<size_t>{0, 1, 2, 3});
  // More than the model: one chunk.
  CHECK(awq_chunks(groups, bytes, 1000) == Chunks{{0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15}});
  CHECK(awq_chunks({}, {}, 1).empty());
}

TEST_CASE("awq_chunks follows a shared tensor across other groups") {
  // Group 3 lists what group 0 lists: groups 0..3 form one chunk even with a target of one byte.
  std::vector<LinearInputGroup> groups = {
      {{{"a", false}}, {"norm.weight"}}, {{{"b", false}}, {}}, {{{"c", false}}, {}}, {{{"d", false}}, {"a.weight"}},
      {{{"e", false}}, {}}};
  const Chunks chunks = awq_chunks(groups, std::vector<uint64_t>(groups.size(), 1), 1);
  check_partition(chunks, groups.size());
  CHECK(chunks == Chunks{{0, 1, 2, 3}, {4}});
}
