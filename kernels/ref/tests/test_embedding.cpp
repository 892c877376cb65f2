#include <string>

#include "ref/embedding.hpp"
#include "tests/helpers.hpp"

using namespace hostrun::ref;
using namespace hostrun::ref::test;

TEST_CASE("embedding: rows of the table, every dtype") {
  std::mt19937 rng(21);
  for (const DType dtype : all_dtypes) {
    for (const std::size_t hidden : {1u, 64u, 136u}) {
      CAPTURE(dtype_name(dtype));
      CAPTURE(hidden);
      const std::size_t vocab = 50;
      const StoredValues table = store(random_floats(rng, vocab * hidden), dtype);
      const std::vector<std::int32_t> ids = {0, 49, 7, 7, 23};
      std::vector<float> out(ids.size() * hidden, -123.0f);
      REQUIRE(embedding_lookup(ids.data(), ids.size(), table.bytes.data(), dtype, vocab, hidden, out.data()) ==
              Status::ok);
      for (std::size_t t = 0; t < ids.size(); ++t) {
        for (std::size_t i = 0; i < hidden; ++i) REQUIRE(out[t * hidden + i] == table.as_f32[ids[t] * hidden + i]);
      }
    }
  }
}

TEST_CASE("embedding: an out-of-range id is reported and nothing is written") {
  const std::size_t vocab = 4, hidden = 3;
  const std::vector<float> table(vocab * hidden, 1.0f);
  for (const std::int32_t bad_id : {4, -1, 1 << 30}) {
    const std::vector<std::int32_t> ids = {0, 3, bad_id, 1};
    std::vector<float> out(ids.size() * hidden, -7.0f);
    std::size_t first_bad = 99;
    CHECK(embedding_lookup(ids.data(), ids.size(), table.data(), DType::f32, vocab, hidden, out.data(), &first_bad) ==
          Status::token_id_out_of_range);
    CHECK(first_bad == 2);
    for (const float v : out) CHECK(v == -7.0f);
  }
  CHECK(std::string(status_name(Status::token_id_out_of_range)) == "token_id_out_of_range");
}
