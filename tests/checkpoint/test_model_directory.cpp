// Model directories: single file, sharded with an index, and every way an
// index can disagree with its shards.
#include <nlohmann/json.hpp>

#include <sys/stat.h>

#include "checkpoint/model_directory.hpp"
#include "test_util.hpp"

using namespace hostrun;
using namespace hostrun::checkpoint;
using namespace checkpoint_test;
using nlohmann::json;

namespace {

void write_text(const fs::path& path, std::string_view text) { write_file(path, bytes_of(text)); }

std::vector<std::byte> filled(size_t n, uint8_t salt) {
  std::vector<std::byte> out(n);
  for (size_t i = 0; i < n; ++i) out[i] = std::byte(uint8_t(i + salt));
  return out;
}

// config.json plus two shards and an index, hand-made.
void write_two_shards(const TempDir& dir, const json& weight_map) {
  write_text(dir / "config.json", "{}");
  auto a = filled(16, 1), b = filled(8, 2), c = filled(4, 3);
  REQUIRE(write_safetensors(dir / "model-00001-of-00002.safetensors",
                            std::vector<TensorData>{{"a", DType::f32, {4}, a}, {"b", DType::bf16, {4}, b}})
              .is_ok());
  REQUIRE(write_safetensors(dir / "model-00002-of-00002.safetensors",
                            std::vector<TensorData>{{"c", DType::u8, {4}, c}})
              .is_ok());
  write_text(dir / "model.safetensors.index.json",
             json{{"metadata", {{"total_size", 28}}}, {"weight_map", weight_map}}.dump());
}

const json kGoodMap = {{"a", "model-00001-of-00002.safetensors"},
                       {"b", "model-00001-of-00002.safetensors"},
                       {"c", "model-00002-of-00002.safetensors"}};

}  // namespace

TEST_CASE("model directory: a single model.safetensors") {
  TempDir dir;
  write_text(dir / "config.json", R"({"hidden_size": 4})");
  auto w = filled(24, 5);
  REQUIRE(write_safetensors(dir / "model.safetensors", std::vector<TensorData>{{"w", DType::f16, {3, 4}, w}}).is_ok());
  auto source = ModelDirectory::open(dir.path());
  REQUIRE_MESSAGE(source.has_value(), source.status().message());
  const WeightSource& weights = **source;
  CHECK(weights.directory() == dir.path().string());
  CHECK(weights.config_json() == R"({"hidden_size": 4})");
  CHECK(weights.tensor_names() == std::vector<std::string>{"w"});
  auto view = weights.tensor("w");
  REQUIRE(view.has_value());
  CHECK(view->dtype == DType::f16);
  CHECK(view->rank == 2);
  CHECK(std::memcmp(view->data, w.data(), w.size()) == 0);
  CHECK_FALSE((*source)->sharded());
  CHECK((*source)->total_tensor_bytes() == 24);
  expect_error(weights.tensor("model.norm.weight").status(), ErrorCode::not_found,
               {"'model.norm.weight'", dir.path().string()});
}

TEST_CASE("model directory: missing pieces") {
  TempDir dir;
  expect_error(ModelDirectory::open(dir / "nowhere").status(), ErrorCode::not_found, {"nowhere"});
  expect_error(ModelDirectory::open(dir.path()).status(), ErrorCode::not_found, {"config.json"});
  write_text(dir / "config.json", "{}");
  expect_error(ModelDirectory::open(dir.path()).status(), ErrorCode::not_found,
               {"model.safetensors", "model.safetensors.index.json"});
}

TEST_CASE("model directory: a corrupt file's error reaches the caller unchanged") {
  TempDir dir;
  write_text(dir / "config.json", "{}");
  write_file(dir / "model.safetensors", make_file(R"({"w":{"dtype":"U8","shape":[4],"data_offsets":[0,4]}})", 2));
  expect_error(ModelDirectory::open(dir.path()).status(), ErrorCode::corrupt_data, {"model.safetensors", "'w'"});
}

TEST_CASE("model directory: sharded with an index") {
  TempDir dir;
  write_two_shards(dir, kGoodMap);
  auto source = ModelDirectory::open(dir.path());
  REQUIRE_MESSAGE(source.has_value(), source.status().message());
  CHECK((*source)->sharded());
  CHECK((*source)->files().size() == 2);
  CHECK((*source)->tensor_names() == std::vector<std::string>{"a", "b", "c"});
  CHECK(contains((*source)->file_of("c")->label(), "model-00002-of-00002.safetensors"));
  auto c = (*source)->tensor("c");
  REQUIRE(c.has_value());
  CHECK(static_cast<const uint8_t*>(c->data)[3] == 6);
}

TEST_CASE("model directory: an index naming a missing file") {
  TempDir dir;
  json map = kGoodMap;
  map["d"] = "model-00003-of-00003.safetensors";
  write_two_shards(dir, map);
  expect_error(ModelDirectory::open(dir.path()).status(), ErrorCode::not_found,
               {"'d'", "model-00003-of-00003.safetensors", "does not exist"});
}

TEST_CASE("model directory: a tensor missing from the shard the index names") {
  TempDir dir;
  json map = kGoodMap;
  map["c"] = "model-00001-of-00002.safetensors";
  write_two_shards(dir, map);
  expect_error(ModelDirectory::open(dir.path()).status(), ErrorCode::corrupt_data,
               {"'c'", "model-00001-of-00002.safetensors", "does not hold it"});
}

TEST_CASE("model directory: a tensor in two files") {
  TempDir dir;
  write_two_shards(dir, kGoodMap);
  auto dup = filled(4, 9);
  REQUIRE(write_safetensors(dir / "model-00002-of-00002.safetensors",
                            std::vector<TensorData>{{"c", DType::u8, {4}, dup}, {"a", DType::u8, {4}, dup}})
              .is_ok());
  expect_error(ModelDirectory::open(dir.path()).status(), ErrorCode::corrupt_data,
               {"'a'", "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors", "both"});
}

TEST_CASE("model directory: an index that is not one") {
  TempDir dir;
  write_two_shards(dir, kGoodMap);
  write_text(dir / "model.safetensors.index.json", "{\"weight_map\": ");
  expect_error(ModelDirectory::open(dir.path()).status(), ErrorCode::corrupt_data,
               {"model.safetensors.index.json", "not valid JSON"});
  write_text(dir / "model.safetensors.index.json", R"({"metadata": {}})");
  expect_error(ModelDirectory::open(dir.path()).status(), ErrorCode::corrupt_data,
               {"model.safetensors.index.json", "'weight_map'"});
  write_text(dir / "model.safetensors.index.json", R"({"weight_map": {"a": 3}})");
  expect_error(ModelDirectory::open(dir.path()).status(), ErrorCode::corrupt_data,
               {"model.safetensors.index.json", "'a'"});
  write_text(dir / "model.safetensors.index.json", R"({"weight_map": {"a": "../model-00001-of-00002.safetensors"}})");
  expect_error(ModelDirectory::open(dir.path()).status(), ErrorCode::corrupt_data,
               {"model.safetensors.index.json", "'a'", "inside the directory"});
}


TEST_CASE("model directory: read_file reads small plain files of the folder, nothing else") {
  TempDir dir;
  write_two_shards(dir, kGoodMap);
  write_text(dir / "generation_config.json", R"({"eos_token_id": 2})");
  auto source = ModelDirectory::open(dir.path());
  REQUIRE_MESSAGE(source.has_value(), source.status().message());
  auto generation = (*source)->read_file("generation_config.json");
  REQUIRE_MESSAGE(generation.has_value(), generation.status().message());
  CHECK(*generation == R"({"eos_token_id": 2})");
  CHECK((*source)->read_file("preprocessor_config.json").status().code() == ErrorCode::not_found);
  for (std::string_view bad : {"", ".", "..", "../config.json", "sub/file.json"})
    CHECK((*source)->read_file(bad).status().code() == ErrorCode::invalid_argument);
  // A link is followed (an HF cache snapshot links into ../../blobs) to a
  // regular file; a FIFO, a folder or a link to either is refused (a read
  // would never end, or means nothing).
  TempDir blobs;
  write_text(blobs / "0123abcd", R"({"do_sample": true})");
  fs::create_symlink(blobs / "0123abcd", dir / "linked.json");
  auto linked = (*source)->read_file("linked.json");
  REQUIRE_MESSAGE(linked.has_value(), linked.status().message());
  CHECK(*linked == R"({"do_sample": true})");
  REQUIRE(::mkfifo((dir / "fifo.json").c_str(), 0600) == 0);
  CHECK((*source)->read_file("fifo.json").status().code() == ErrorCode::invalid_argument);
  fs::create_symlink(dir / "fifo.json", dir / "to_fifo.json");
  CHECK((*source)->read_file("to_fifo.json").status().code() == ErrorCode::invalid_argument);
  fs::create_directory(dir / "folder.json");
  CHECK((*source)->read_file("folder.json").status().code() == ErrorCode::invalid_argument);
}
