// Every way a safetensors file can lie is refused with a message naming the
// file and, where one is involved, the tensor.
#include <fmt/format.h>

#include "checkpoint/safetensors.hpp"
#include "test_util.hpp"

using namespace hostrun;
using namespace hostrun::checkpoint;
using namespace checkpoint_test;

namespace {

constexpr std::string_view kFile = "model-00001-of-00002.safetensors";
constexpr std::string_view kTensor = "model.layers.0.mlp.up_proj.weight";

// Writes `bytes` to a file named like a real shard and opens it.
Status open_status(const TempDir& dir, std::span<const std::byte> bytes) {
  write_file(dir / kFile, bytes);
  return SafetensorsFile::open(dir / kFile).status();
}

// One tensor entry with the given JSON fields, and `data` bytes of data.
Status open_entry(const TempDir& dir, std::string_view fields, size_t data) {
  std::string header = fmt::format(R"({{"{}":{{{}}}}})", kTensor, fields);
  return open_status(dir, make_file(header, data));
}

}  // namespace

TEST_CASE("corruption: a valid hand-made file opens (the baseline for the cases below)") {
  TempDir dir;
  auto status = open_entry(dir, R"("dtype":"BF16","shape":[8,16],"data_offsets":[0,256])", 256);
  CHECK_MESSAGE(status.is_ok(), status.message());
}

TEST_CASE("corruption: truncation at every length is refused") {
  TempDir dir;
  std::vector<std::byte> a(64), b(24);
  REQUIRE(write_safetensors(dir / "full.safetensors",
                            std::vector<TensorData>{{"model.embed_tokens.weight", DType::f32, {4, 4}, a},
                                                    {"model.norm.weight", DType::bf16, {12}, b}})
              .is_ok());
  const auto full = read_file(dir / "full.safetensors");
  uint64_t header_len = 0;
  for (int i = 7; i >= 0; --i) header_len = (header_len << 8) | uint64_t(full[i]);
  for (size_t length = 0; length < full.size(); ++length) {
    CAPTURE(length);
    auto status = open_status(dir, std::span(full).first(length));
    REQUIRE_FALSE(status.is_ok());
    CHECK(status.code() == ErrorCode::corrupt_data);
    CHECK(contains(status.message(), kFile));
    // Once the header is whole, it is a tensor whose bytes are missing.
    if (length >= 8 + header_len) CHECK(contains(status.message(), "tensor '"));
  }
}

TEST_CASE("corruption: files too short for the length field") {
  TempDir dir;
  expect_error(open_status(dir, {}), ErrorCode::corrupt_data, {kFile, "0 bytes"});
  std::vector<std::byte> seven(7);
  expect_error(open_status(dir, seven), ErrorCode::corrupt_data, {kFile, "7 bytes"});
}

TEST_CASE("corruption: header length larger than the file") {
  TempDir dir;
  expect_error(open_status(dir, make_file("{}", 0, 3)), ErrorCode::corrupt_data, {kFile, "header length 3"});
  expect_error(open_status(dir, make_file("{}", 0, UINT64_MAX)), ErrorCode::corrupt_data, {kFile, "limit"});
  expect_error(open_status(dir, make_file("{}", 0, kMaxHeaderBytes + 1)), ErrorCode::corrupt_data,
               {kFile, "100000001"});
}

TEST_CASE("corruption: header that is not a JSON object") {
  TempDir dir;
  expect_error(open_status(dir, make_file(R"({"a": )", 0)), ErrorCode::corrupt_data, {kFile, "not valid JSON"});
  expect_error(open_status(dir, make_file("[1, 2]", 0)), ErrorCode::corrupt_data, {kFile, "'{'"});
  expect_error(open_status(dir, make_file("", 0)), ErrorCode::corrupt_data, {kFile, "empty header"});
  expect_error(open_status(dir, make_file(R"({} trailing)", 0)), ErrorCode::corrupt_data,
               {kFile, "ends at byte 2 of 11", "reaches into the tensor data"});
  CHECK(open_status(dir, make_file("{}    ", 0)).is_ok());  // the spaces safetensors pads with are not data

  expect_error(open_status(dir, make_file("{\"\xff\xfe\":1}", 0)), ErrorCode::corrupt_data, {kFile, "not valid JSON"});
  std::string deep = "{\"a\":" + std::string(100000, '[') + std::string(100000, ']') + "}";
  expect_error(open_status(dir, make_file(deep, 0)), ErrorCode::corrupt_data,
               {kFile, "nests arrays and objects 100,001 deep", "at most 16 levels"});
  // 3 bytes of text that would hold 64 bytes each once parsed: refused before parsing.
  std::string empties = "{\"a\":[";
  for (int i = 0; i < 200'000; ++i) empties += i ? ",[]" : "[]";
  empties += "]}";
  expect_error(open_status(dir, make_file(empties, 0)), ErrorCode::corrupt_data, {kFile, "once parsed", "per byte of JSON"});
}

TEST_CASE("corruption: a header length that reaches into the data is named as such") {
  // The data behind the header holds '[' bytes: the old nesting check called
  // this "nests deeper than 16 levels".
  TempDir dir;
  std::string header = fmt::format(R"({{"{}":{{"dtype":"U8","shape":[64],"data_offsets":[0,64]}}}})", kTensor);
  std::vector<std::byte> bytes = make_file(header, 64);
  for (size_t i = 8 + header.size(); i < bytes.size(); ++i) bytes[i] = std::byte('[');
  const uint64_t longer = header.size() + 40;
  for (int b = 0; b < 8; ++b) bytes[b] = std::byte((longer >> (8 * b)) & 0xff);
  expect_error(open_status(dir, bytes), ErrorCode::corrupt_data,
               {kFile, fmt::format("ends at byte {} of {}", header.size(), longer), "reaches into the tensor data"});
}

TEST_CASE("corruption: a tensor listed twice") {
  TempDir dir;
  std::string header = fmt::format(R"({{"{0}":{{"dtype":"U8","shape":[1],"data_offsets":[0,1]}},)"
                                   R"("{0}":{{"dtype":"U8","shape":[1],"data_offsets":[1,2]}}}})",
                                   kTensor);
  expect_error(open_status(dir, make_file(header, 2)), ErrorCode::corrupt_data, {kFile, kTensor, "twice"});
}

TEST_CASE("corruption: offsets out of range") {
  TempDir dir;
  expect_error(open_entry(dir, R"("dtype":"BF16","shape":[8,16],"data_offsets":[0,256])", 255),
               ErrorCode::corrupt_data, {kFile, kTensor, "[0, 256]", "255 bytes"});
  expect_error(open_entry(dir, R"("dtype":"U8","shape":[0],"data_offsets":[300,300])", 10), ErrorCode::corrupt_data,
               {kFile, kTensor, "[300, 300]"});
  expect_error(open_entry(dir, R"("dtype":"U8","shape":[4],"data_offsets":[8,4])", 10), ErrorCode::corrupt_data,
               {kFile, kTensor, "[8, 4]", "begin after"});
  expect_error(open_entry(dir, R"("dtype":"U8","shape":[4],"data_offsets":[-4,0])", 10), ErrorCode::corrupt_data,
               {kFile, kTensor, "data_offsets"});
  expect_error(open_entry(dir, R"("dtype":"U8","shape":[4],"data_offsets":[0,18446744073709551615])", 10),
               ErrorCode::corrupt_data, {kFile, kTensor, "18446744073709551615"});
  expect_error(open_entry(dir, R"("dtype":"U8","shape":[4],"data_offsets":[0,1e30])", 10), ErrorCode::corrupt_data,
               {kFile, kTensor, "non-negative integers"});
  expect_error(open_entry(dir, R"("dtype":"U8","shape":[4],"data_offsets":[0,4,8])", 10), ErrorCode::corrupt_data,
               {kFile, kTensor, "3 elements"});
  expect_error(open_entry(dir, R"("dtype":"U8","shape":[4],"data_offsets":"0-4")", 10), ErrorCode::corrupt_data,
               {kFile, kTensor, "[begin, end]"});
}

TEST_CASE("corruption: overlapping tensors") {
  TempDir dir;
  std::string header = R"({"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]},)"
                       R"("b":{"dtype":"F32","shape":[2],"data_offsets":[8,16]}})";
  expect_error(open_status(dir, make_file(header, 16)), ErrorCode::corrupt_data, {kFile, "'a'", "'b'", "overlap"});
  // Identical ranges overlap too; touching ranges and empty tensors do not.
  header = R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})";
  expect_error(open_status(dir, make_file(header, 8)), ErrorCode::corrupt_data, {kFile, "overlap"});
  // A small tensor inside a big one, not adjacent to the one before it.
  header = R"({"a":{"dtype":"U8","shape":[10],"data_offsets":[0,10]},"b":{"dtype":"U8","shape":[2],"data_offsets":[10,12]},)"
           R"("c":{"dtype":"U8","shape":[1],"data_offsets":[5,6]}})";
  expect_error(open_status(dir, make_file(header, 12)), ErrorCode::corrupt_data, {kFile, "'c'", "'a'", "overlap"});
  header = R"({"a":{"dtype":"U8","shape":[4],"data_offsets":[0,4]},"b":{"dtype":"U8","shape":[4],"data_offsets":[4,8]},)"
           R"("c":{"dtype":"U8","shape":[0],"data_offsets":[2,2]}})";
  auto ok = open_status(dir, make_file(header, 8));
  CHECK_MESSAGE(ok.is_ok(), ok.message());
}

TEST_CASE("corruption: size mismatch between offsets and shape") {
  TempDir dir;
  expect_error(open_entry(dir, R"("dtype":"BF16","shape":[8,16],"data_offsets":[0,100])", 256),
               ErrorCode::corrupt_data,
               {fmt::format("{}: tensor '{}': data_offsets [0, 100] hold 100 bytes but shape [8, 16] of BF16 needs 256",
                            kFile, kTensor)});
}

TEST_CASE("corruption: dtypes") {
  TempDir dir;
  expect_error(open_entry(dir, R"("dtype":"F64","shape":[1],"data_offsets":[0,8])", 8), ErrorCode::unsupported,
               {kFile, kTensor, "'F64'", "BF16"});
  expect_error(open_entry(dir, R"("dtype":"Q7","shape":[1],"data_offsets":[0,8])", 8), ErrorCode::unsupported,
               {kFile, kTensor, "'Q7'"});
  expect_error(open_entry(dir, R"("dtype":4,"shape":[1],"data_offsets":[0,4])", 8), ErrorCode::corrupt_data,
               {kFile, kTensor, "dtype must be a string"});
  expect_error(open_entry(dir, R"("dtype":"f32","shape":[1],"data_offsets":[0,4])", 8), ErrorCode::unsupported,
               {kFile, kTensor, "'f32'"});
}

TEST_CASE("corruption: shapes") {
  TempDir dir;
  expect_error(open_entry(dir, R"("dtype":"U8","shape":[2,-3],"data_offsets":[0,0])", 8), ErrorCode::corrupt_data,
               {kFile, kTensor, "shape[1] is -3"});
  expect_error(open_entry(dir, R"("dtype":"U8","shape":[2.5],"data_offsets":[0,0])", 8), ErrorCode::corrupt_data,
               {kFile, kTensor, "shape[0] is 2.5"});
  expect_error(open_entry(dir, R"("dtype":"U8","shape":["2"],"data_offsets":[0,0])", 8), ErrorCode::corrupt_data,
               {kFile, kTensor, "shape[0]"});
  expect_error(open_entry(dir, R"("dtype":"U8","shape":4,"data_offsets":[0,4])", 8), ErrorCode::corrupt_data,
               {kFile, kTensor, "array of integers"});
  // Products that wrap in 64 bits must not pass for small ones.
  expect_error(open_entry(dir, R"("dtype":"F32","shape":[4294967296,4294967296,16],"data_offsets":[0,0])", 8),
               ErrorCode::corrupt_data, {kFile, kTensor, "2^63"});
  expect_error(open_entry(dir, R"("dtype":"F32","shape":[4611686018427387904],"data_offsets":[0,0])", 8),
               ErrorCode::corrupt_data, {kFile, kTensor, "2^64 bytes"});
  expect_error(open_entry(dir, R"("dtype":"U8","shape":[0,4294967296,4294967296],"data_offsets":[0,0])", 8),
               ErrorCode::corrupt_data, {kFile, kTensor, "2^63"});
  expect_error(open_entry(dir, R"("dtype":"U8","shape":[18446744073709551615],"data_offsets":[0,0])", 8),
               ErrorCode::corrupt_data, {kFile, kTensor, "shape[0]"});
  expect_error(open_entry(dir, R"("dtype":"U8","shape":[1,1,1,1,1,1,1],"data_offsets":[0,1])", 8),
               ErrorCode::unsupported, {kFile, kTensor, "7 dimensions"});
}

TEST_CASE("corruption: malformed entries") {
  TempDir dir;
  expect_error(open_status(dir, make_file(fmt::format(R"({{"{}":[1,2]}})", kTensor), 0)), ErrorCode::corrupt_data,
               {kFile, kTensor, "expected an object"});
  expect_error(open_entry(dir, R"("shape":[1],"data_offsets":[0,1])", 1), ErrorCode::corrupt_data,
               {kFile, kTensor, "'dtype'"});
  expect_error(open_entry(dir, R"("dtype":"U8","data_offsets":[0,1])", 1), ErrorCode::corrupt_data,
               {kFile, kTensor, "'shape'"});
  expect_error(open_entry(dir, R"("dtype":"U8","shape":[1])", 1), ErrorCode::corrupt_data,
               {kFile, kTensor, "'data_offsets'"});
  expect_error(open_status(dir, make_file(R"({"__metadata__":{"format":3}})", 0)), ErrorCode::corrupt_data,
               {kFile, "__metadata__", "'format'"});
  expect_error(open_status(dir, make_file(R"({"__metadata__":[]})", 0)), ErrorCode::corrupt_data,
               {kFile, "__metadata__"});
}

TEST_CASE("corruption: a huge tensor name is cut short in the message") {
  TempDir dir;
  std::string name(100000, 'x');
  std::string header = fmt::format(R"({{"{}":{{"dtype":"Q7","shape":[1],"data_offsets":[0,1]}}}})", name);
  auto status = open_status(dir, make_file(header, 1));
  REQUIRE_FALSE(status.is_ok());
  CHECK(status.message().size() < 1000);
  CHECK(contains(status.message(), "100000 bytes"));
}
