#include "chunks.hpp"

#include <algorithm>
#include <map>
#include <string>

namespace hostrun::awq {

std::vector<std::vector<size_t>> awq_chunks(const std::vector<LinearInputGroup>& groups,
                                           const std::vector<uint64_t>& f32_bytes, uint64_t target_bytes) {
  std::vector<size_t> root(groups.size());
  for (size_t g = 0; g < groups.size(); ++g) root[g] = g;
  const auto find = [&](size_t g) {
    while (root[g] != g) g = root[g] = root[root[g]];
    return g;
  };
  std::map<std::string, size_t> first_group;  // tensor -> the first group that lists it
  for (size_t g = 0; g < groups.size(); ++g) {
    std::vector<std::string> touched = groups[g].producers;
    for (const CalibratedLinear& linear : groups[g].linears) touched.push_back(linear.prefix + ".weight");
    for (const std::string& name : touched) {
      const auto [it, inserted] = first_group.emplace(name, g);
      if (!inserted) root[find(g)] = find(it->second);
    }
  }
  // Components in the order of their first group; a chunk closes once it
  // holds `target_bytes` and no later group belongs to its components.
  std::vector<std::vector<size_t>> chunks;
  std::vector<size_t> last_of_component(groups.size(), 0);
  for (size_t g = 0; g < groups.size(); ++g) last_of_component[find(g)] = g;
  std::vector<size_t> current;
  uint64_t bytes = 0;
  size_t reaches = 0;  // the last group any component of `current` has
  for (size_t g = 0; g < groups.size(); ++g) {
    current.push_back(g);
    bytes += f32_bytes[g];
    reaches = std::max(reaches, last_of_component[find(g)]);
    if (bytes >= target_bytes && reaches == g) {
      chunks.push_back(std::move(current));
      current.clear();
      bytes = 0;
    }
  }
  if (!current.empty()) chunks.push_back(std::move(current));
  return chunks;
}

}  // namespace hostrun::awq
