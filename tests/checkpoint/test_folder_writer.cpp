// FolderWriter (the WeightSink `hostrun lite` hands a quantizer): what it
// writes reads back through ModelDirectory, single file or sharded, and every
// misuse is refused with a message.
#include <nlohmann/json.hpp>

#include "checkpoint/folder_writer.hpp"
#include "checkpoint/model_directory.hpp"
#include "test_util.hpp"

using namespace hostrun;
using namespace hostrun::checkpoint;
using namespace checkpoint_test;

namespace {

std::vector<int32_t> counting(size_t n, int32_t from) {
  std::vector<int32_t> out(n);
  for (size_t i = 0; i < n; ++i) out[i] = from + int32_t(i);
  return out;
}

// Adds tensors "t0".."t{count-1}", each [4, 8] i32 (128 bytes), and config.json.
void fill(FolderWriter& writer, int count) {
  REQUIRE(writer.write_file("config.json", R"({"hidden_size": 8})").is_ok());
  for (int i = 0; i < count; ++i) {
    auto values = counting(32, i * 100);
    Status s = writer.add_tensor(fmt::format("t{}", i), TensorView::contiguous(values.data(), DType::i32, {4, 8}));
    REQUIRE_MESSAGE(s.is_ok(), s.message());
  }
}

void check_reads_back(const fs::path& dir, int count) {
  auto source = ModelDirectory::open(dir);
  REQUIRE_MESSAGE(source.has_value(), source.status().message());
  CHECK((*source)->config_json() == R"({"hidden_size": 8})");
  CHECK((*source)->tensor_names().size() == size_t(count));
  for (int i = 0; i < count; ++i) {
    auto view = (*source)->tensor(fmt::format("t{}", i));
    REQUIRE(view.has_value());
    CHECK(view->dtype == DType::i32);
    CHECK(view->shape[0] == 4);
    CHECK(view->shape[1] == 8);
    CHECK(view->as<const int32_t>()[31] == i * 100 + 31);
  }
}

}  // namespace

TEST_CASE("folder writer: one shard is model.safetensors, no index") {
  TempDir dir;
  auto writer = FolderWriter::create(dir.path());
  REQUIRE(writer.has_value());
  fill(**writer, 3);
  REQUIRE((*writer)->finish().is_ok());
  CHECK((*writer)->tensor_bytes() == 3 * 128);
  CHECK(fs::exists(dir / "model.safetensors"));
  CHECK_FALSE(fs::exists(dir / "model.safetensors.index.json"));
  check_reads_back(dir.path(), 3);
  auto again = (*writer)->add_tensor("late", TensorView::contiguous(nullptr, DType::i32, {0}));
  expect_error(again, ErrorCode::invalid_argument, {"after finish()"});
}

TEST_CASE("folder writer: shards named as save_pretrained names them, with the index") {
  TempDir dir;
  auto writer = FolderWriter::create(dir.path(), 300);  // two 128-byte tensors a shard
  REQUIRE(writer.has_value());
  fill(**writer, 5);
  REQUIRE((*writer)->finish().is_ok());
  for (const char* name : {"model-00001-of-00003.safetensors", "model-00002-of-00003.safetensors",
                           "model-00003-of-00003.safetensors", "model.safetensors.index.json"})
    CHECK_MESSAGE(fs::exists(dir / name), name);
  CHECK_FALSE(fs::exists(dir / "model.safetensors"));
  for (const auto& entry : fs::directory_iterator(dir.path()))
    CHECK_MESSAGE(entry.path().extension() != ".partial", entry.path().string());
  const auto index = nlohmann::json::parse(std::ifstream(dir / "model.safetensors.index.json"));
  CHECK(index["metadata"]["total_size"] == 5 * 128);
  CHECK(index["weight_map"]["t4"] == "model-00003-of-00003.safetensors");
  check_reads_back(dir.path(), 5);
}

TEST_CASE("folder writer: misuse is refused") {
  TempDir dir;
  auto writer = FolderWriter::create(dir.path());
  REQUIRE(writer.has_value());
  FolderWriter& w = **writer;
  float values[4] = {1, 2, 3, 4};
  REQUIRE(w.add_tensor("a", TensorView::contiguous(values, DType::f32, {4})).is_ok());
  expect_error(w.add_tensor("a", TensorView::contiguous(values, DType::f32, {4})), ErrorCode::invalid_argument,
               {"written twice"});
  TensorView strided = TensorView::contiguous(values, DType::f32, {2, 2});
  strided.strides[0] = 1;
  strided.strides[1] = 2;
  expect_error(w.add_tensor("b", strided), ErrorCode::invalid_argument, {"contiguous"});
  for (const char* bad : {"../x", "", "model.safetensors", "model.safetensors.index.json", "x.safetensors"})
    expect_error(w.write_file(bad, "{}"), ErrorCode::invalid_argument, {"plain file name"});
  REQUIRE(w.write_file("generation_config.json", "{}").is_ok());

  TempDir occupied;
  write_file(occupied / "x", bytes_of("x"));
  expect_error(FolderWriter::create(occupied.path()).status(), ErrorCode::invalid_argument, {"not empty"});
  expect_error(FolderWriter::create(occupied / "missing").status(), ErrorCode::invalid_argument, {"not a folder"});

  TempDir nothing;
  auto empty = FolderWriter::create(nothing.path());
  REQUIRE(empty.has_value());
  expect_error((*empty)->finish(), ErrorCode::invalid_argument, {"no tensor"});
}
