// Write -> read round trips and the writer's own guarantees.
#include <cstdint>
#include <map>

#include "checkpoint/safetensors.hpp"
#include "test_util.hpp"

using namespace hostrun;
using namespace hostrun::checkpoint;
using namespace checkpoint_test;

namespace {

struct Owned {
  std::string name;
  DType dtype;
  std::vector<int64_t> shape;
  std::vector<std::byte> bytes;
};

Owned make_tensor(std::string name, DType dtype, std::vector<int64_t> shape, uint8_t salt) {
  uint64_t n = dtype_bits(dtype) / 8;
  for (auto d : shape) n *= uint64_t(d);
  std::vector<std::byte> bytes(n);
  for (size_t i = 0; i < n; ++i) bytes[i] = std::byte(uint8_t(i * 31 + salt));
  return {std::move(name), dtype, std::move(shape), std::move(bytes)};
}

std::vector<TensorData> as_data(const std::vector<Owned>& tensors) {
  std::vector<TensorData> out;
  for (const auto& t : tensors) out.push_back({t.name, t.dtype, t.shape, t.bytes});
  return out;
}

}  // namespace

TEST_CASE("safetensors: every dtype round-trips through write and read") {
  TempDir dir;
  const std::vector<Owned> tensors = {
      make_tensor("a.f32", DType::f32, {3, 5}, 1),     make_tensor("b.f16", DType::f16, {7}, 2),
      make_tensor("c.bf16", DType::bf16, {2, 3, 4}, 3), make_tensor("d.i32", DType::i32, {4}, 4),
      make_tensor("e.i64", DType::i64, {3}, 5),        make_tensor("f.i8", DType::i8, {5}, 6),
      make_tensor("g.u8", DType::u8, {3, 1}, 7),       make_tensor("h.empty", DType::u8, {0, 4}, 8),
      make_tensor("i.scalar", DType::f32, {}, 9),      make_tensor("j.rank6", DType::bf16, {1, 2, 1, 2, 1, 3}, 10),
      make_tensor("k.e4m3", DType::f8_e4m3, {3, 4}, 11), make_tensor("l.e5m2", DType::f8_e5m2, {5}, 12),
  };
  const auto path = dir / "all.safetensors";
  REQUIRE(write_safetensors(path, as_data(tensors), {{"format", "pt"}}).is_ok());

  auto file = SafetensorsFile::open(path);
  REQUIRE_MESSAGE(file.has_value(), file.status().message());
  CHECK(file->metadata() == std::map<std::string, std::string>{{"format", "pt"}});
  REQUIRE(file->entries().size() == tensors.size());
  for (const auto& t : tensors) {
    INFO(t.name);
    auto view = file->tensor(t.name);
    REQUIRE(view.has_value());
    CHECK(view->dtype == t.dtype);
    CHECK(view->device == Device{});
    REQUIRE(view->rank == t.shape.size());
    for (size_t r = 0; r < t.shape.size(); ++r) CHECK(view->shape[r] == t.shape[r]);
    CHECK(view->is_contiguous());
    CHECK(view->nbytes() == t.bytes.size());
    // The writer orders by element size, so every view is naturally aligned.
    CHECK(reinterpret_cast<uintptr_t>(view->data) % (dtype_bits(t.dtype) / 8) == 0);
    if (!t.bytes.empty()) CHECK(std::memcmp(view->data, t.bytes.data(), t.bytes.size()) == 0);
  }
  auto strides = file->tensor("c.bf16")->strides;
  CHECK(strides[0] == 12);
  CHECK(strides[1] == 4);
  CHECK(strides[2] == 1);

  // The header is padded to 8 bytes and the data section has no holes, as the
  // reference implementation requires of files it reads.
  auto raw = read_file(path);
  uint64_t header_len = 0;
  for (int b = 7; b >= 0; --b) header_len = (header_len << 8) | uint64_t(raw[b]);
  CHECK(header_len % 8 == 0);
  uint64_t data_bytes = 0;
  for (const auto& t : tensors) data_bytes += t.bytes.size();
  CHECK(raw.size() == 8 + header_len + data_bytes);
  CHECK(char(raw[8]) == '{');
}

TEST_CASE("safetensors: a missing tensor is not_found naming tensor and file") {
  TempDir dir;
  auto t = make_tensor("w", DType::f32, {2}, 0);
  REQUIRE(write_safetensors(dir / "one.safetensors", as_data({t})).is_ok());
  auto file = SafetensorsFile::open(dir / "one.safetensors");
  REQUIRE(file.has_value());
  expect_error(file->tensor("nope").status(), ErrorCode::not_found, {"'nope'", "one.safetensors"});
}

TEST_CASE("safetensors: a missing file is not_found naming it") {
  TempDir dir;
  expect_error(SafetensorsFile::open(dir / "absent.safetensors").status(), ErrorCode::not_found,
               {"absent.safetensors"});
}

TEST_CASE("safetensors: a misaligned tensor from another writer is served aligned") {
  // U8 [3] first, then F32 [2] at data offset 3: legal, but a float* there
  // would be misaligned. Header padded so the data section starts 8-aligned.
  std::string header =
      R"({"a":{"dtype":"U8","shape":[3],"data_offsets":[0,3]},"b":{"dtype":"F32","shape":[2],"data_offsets":[3,11]}})";
  header.append((8 - header.size() % 8) % 8, ' ');
  auto bytes = make_file(header, 11);
  // Copy into 8-aligned storage so the test controls the data section's alignment.
  std::vector<uint64_t> storage((bytes.size() + 7) / 8);
  std::memcpy(storage.data(), bytes.data(), bytes.size());
  auto file = SafetensorsFile::from_bytes({reinterpret_cast<const std::byte*>(storage.data()), bytes.size()}, "mis");
  REQUIRE_MESSAGE(file.has_value(), file.status().message());
  auto b = file->tensor("b");
  REQUIRE(b.has_value());
  CHECK(reinterpret_cast<uintptr_t>(b->data) % 4 == 0);
  for (int i = 0; i < 8; ++i) CHECK(static_cast<const std::byte*>(b->data)[i] == std::byte(3 + i));
}

TEST_CASE("safetensors: the streaming writer takes pieces in any tensor order") {
  TempDir dir;
  const auto path = dir / "stream.safetensors";
  auto a = make_tensor("a", DType::bf16, {4, 8}, 1);
  auto b = make_tensor("b", DType::f32, {5}, 2);
  auto writer = SafetensorsWriter::create(path, {{"a", DType::bf16, {4, 8}}, {"b", DType::f32, {5}}});
  REQUIRE(writer.has_value());
  auto& w = **writer;
  REQUIRE(w.append("b", b.bytes).is_ok());
  std::span<const std::byte> all(a.bytes);
  REQUIRE(w.append("a", all.subspan(0, 10)).is_ok());
  REQUIRE(w.append("a", all.subspan(10, 30)).is_ok());
  // Not complete yet: finish refuses and names the tensor.
  expect_error(w.finish(), ErrorCode::invalid_argument, {"'a'", "40 of its 64"});
  REQUIRE(w.append("a", all.subspan(40)).is_ok());
  expect_error(w.append("a", all.subspan(0, 1)), ErrorCode::invalid_argument, {"'a'"});
  expect_error(w.append("zzz", all.subspan(0, 1)), ErrorCode::invalid_argument, {"'zzz'"});
  CHECK_FALSE(fs::exists(path));  // nothing visible before finish
  REQUIRE(w.finish().is_ok());
  CHECK(fs::file_size(path) == w.file_size());

  auto file = SafetensorsFile::open(path);
  REQUIRE(file.has_value());
  CHECK(std::memcmp(file->tensor("a")->data, a.bytes.data(), a.bytes.size()) == 0);
  CHECK(std::memcmp(file->tensor("b")->data, b.bytes.data(), b.bytes.size()) == 0);
}

TEST_CASE("safetensors: an abandoned writer leaves no file behind") {
  TempDir dir;
  const auto path = dir / "abandoned.safetensors";
  {
    auto writer = SafetensorsWriter::create(path, {{"a", DType::f32, {4}}});
    REQUIRE(writer.has_value());
  }
  CHECK(fs::is_empty(dir.path()));
}

TEST_CASE("safetensors: the writer refuses bad input, naming the tensor") {
  TempDir dir;
  const auto path = dir / "bad.safetensors";
  std::vector<std::byte> three(3);
  expect_error(write_safetensors(path, std::vector<TensorData>{{"w", DType::f32, {2}, three}}),
               ErrorCode::invalid_argument, {"'w'", "3 bytes given", "needs 8"});
  expect_error(write_safetensors(path, std::vector<TensorData>{{"w", DType::i4, {2}, three}}),
               ErrorCode::unsupported, {"'w'", "i4"});
  expect_error(write_safetensors(path, std::vector<TensorData>{{"w", DType::f32, {-1}, {}}}),
               ErrorCode::invalid_argument, {"'w'", "negative"});
  expect_error(write_safetensors(path, std::vector<TensorData>{{"w", DType::u8, {0}, {}}, {"w", DType::u8, {0}, {}}}),
               ErrorCode::invalid_argument, {"'w'", "twice"});
  expect_error(write_safetensors(path, std::vector<TensorData>{{"__metadata__", DType::u8, {0}, {}}}),
               ErrorCode::invalid_argument, {"__metadata__"});
  CHECK_FALSE(fs::exists(path));
}

TEST_CASE("safetensors: a file with no tensors is valid") {
  TempDir dir;
  REQUIRE(write_safetensors(dir / "empty.safetensors", {}).is_ok());
  auto file = SafetensorsFile::open(dir / "empty.safetensors");
  REQUIRE_MESSAGE(file.has_value(), file.status().message());
  CHECK(file->entries().empty());
}
