// Random damage to a valid file: opening must either fail cleanly or yield
// views that lie inside the file. Runs under ASan in CI; each mutated file
// sits in a heap block of exactly its size, so any read past it is caught.
#include <memory>
#include <random>

#include "checkpoint/safetensors.hpp"
#include "test_util.hpp"

using namespace hostrun;
using namespace hostrun::checkpoint;
using namespace checkpoint_test;

namespace {

std::vector<std::byte> valid_file(const TempDir& dir) {
  std::vector<std::byte> f32(4 * 6), bf16(2 * 10), i64(8 * 2), u8(5), i8(3);
  for (size_t i = 0; i < f32.size(); ++i) f32[i] = std::byte(i);
  const auto path = dir / "seed.safetensors";
  REQUIRE(write_safetensors(path,
                            std::vector<TensorData>{{"model.embed_tokens.weight", DType::f32, {2, 3}, f32},
                                                    {"model.norm.weight", DType::bf16, {10}, bf16},
                                                    {"ids", DType::i64, {2}, i64},
                                                    {"mask", DType::u8, {5, 1}, u8},
                                                    {"q", DType::i8, {3}, i8},
                                                    {"empty", DType::f16, {0, 7}, {}}},
                            {{"format", "pt"}})
              .is_ok());
  return read_file(path);
}

void mutate(std::vector<std::byte>& file, std::mt19937_64& rng) {
  auto pick = [&](size_t n) { return n == 0 ? size_t(0) : size_t(rng() % n); };
  if (file.size() < 9) {  // too short for the header mutations below
    file.resize(pick(file.size() + 1));
    return;
  }
  uint64_t header_len = 0;
  for (int b = 7; b >= 0; --b) header_len = (header_len << 8) | uint64_t(file[b]);
  const size_t header_end = header_len > file.size() - 8 ? file.size() : size_t(8 + header_len);
  switch (rng() % 7) {
    case 0:  // flip random bits anywhere
      for (int k = 0, n = 1 + int(rng() % 4); k < n; ++k) file[pick(file.size())] ^= std::byte(1u << (rng() % 8));
      break;
    case 1:  // overwrite header bytes with arbitrary values
      for (int k = 0, n = 1 + int(rng() % 3); k < n; ++k) file[8 + pick(header_end - 8)] = std::byte(rng());
      break;
    case 2: {  // change one digit: offsets and shapes that still parse
      std::vector<size_t> digits;
      for (size_t i = 8; i < header_end; ++i)
        if (char(file[i]) >= '0' && char(file[i]) <= '9') digits.push_back(i);
      if (!digits.empty()) file[digits[pick(digits.size())]] = std::byte('0' + rng() % 10);
      break;
    }
    case 3:  // truncate
      file.resize(pick(file.size() + 1));
      break;
    case 4: {  // a different header length
      uint64_t length = rng() % 2 ? header_len + (rng() % 33) - 16 : rng() >> (rng() % 64);
      for (int b = 0; b < 8; ++b) file[b] = std::byte((length >> (8 * b)) & 0xff);
      break;
    }
    case 5: {  // delete a run of header bytes and fix the length so the JSON is read
      size_t at = 8 + pick(header_end - 8);
      size_t n = std::min(header_end - at, 1 + pick(12));
      file.erase(file.begin() + ptrdiff_t(at), file.begin() + ptrdiff_t(at + n));
      uint64_t length = header_len - n;
      for (int b = 0; b < 8; ++b) file[b] = std::byte((length >> (8 * b)) & 0xff);
      break;
    }
    case 6: {  // splice in JSON-ish tokens
      static const char* tokens[] = {"-1", "1e30", "[", "]", "{", "}", ",", "\"", "null", "18446744073709551615",
                                     "\"F64\"", "0,0", "99999999999"};
      std::string token = tokens[pick(std::size(tokens))];
      size_t at = 8 + pick(header_end - 8);
      for (size_t i = 0; i < token.size() && at + i < header_end; ++i) file[at + i] = std::byte(token[i]);
      break;
    }
  }
}

uint64_t touch_every_byte(const SafetensorsFile& file, std::span<const std::byte> bytes) {
  uint64_t sum = 0;
  for (const auto& entry : file.entries()) {
    TensorView view = file.view(entry);
    const auto* data = static_cast<const std::byte*>(view.data);
    CHECK(view.nbytes() == entry.nbytes());
    if (entry.nbytes() == 0) continue;
    // Either inside the file or in an aligned copy the reader owns.
    const bool inside = data >= bytes.data() && data + entry.nbytes() <= bytes.data() + bytes.size();
    if (inside) CHECK(data >= bytes.data() + 8);
    for (uint64_t i = 0; i < entry.nbytes(); ++i) sum += uint64_t(data[i]);
  }
  return sum;
}

}  // namespace

TEST_CASE("fuzz: damaged files never crash and never yield out-of-file views") {
  TempDir dir;
  const auto base = valid_file(dir);
  std::mt19937_64 rng(20240601);
  int opened = 0;
  int refused = 0;
  uint64_t checksum = 0;
  constexpr int kIterations = 4000;
  for (int iteration = 0; iteration < kIterations; ++iteration) {
    auto bytes = base;
    for (int m = 0, n = 1 + int(rng() % 3); m < n && !bytes.empty(); ++m) mutate(bytes, rng);
    // Exactly sized, so ASan sees any read past the end.
    std::unique_ptr<std::byte[]> exact(new std::byte[std::max<size_t>(bytes.size(), 1)]);
    std::memcpy(exact.get(), bytes.data(), bytes.size());
    std::span<const std::byte> view(exact.get(), bytes.size());
    auto file = SafetensorsFile::from_bytes(view, "fuzz.safetensors");
    if (file) {
      ++opened;
      checksum += touch_every_byte(*file, view);
    } else {
      ++refused;
      CHECK(contains(file.status().message(), "fuzz.safetensors"));
      CHECK(file.status().code() != ErrorCode::internal);
    }
    // Now and then the same bytes through the file and mmap path, which must agree.
    if (iteration % 16 == 0) {
      write_file(dir / "fuzz.safetensors", bytes);
      auto mapped = SafetensorsFile::open(dir / "fuzz.safetensors");
      CHECK(mapped.has_value() == file.has_value());
      if (mapped) checksum += touch_every_byte(*mapped, {});
    }
  }
  MESSAGE("opened " << opened << ", refused " << refused << " of " << kIterations << " (checksum " << checksum << ")");
  CHECK(refused > kIterations / 2);
  CHECK(opened > 0);  // some damage (data bytes, digits that still agree) leaves a valid file
}
