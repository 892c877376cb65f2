// llama_cpu against HF transformers (test suite hf_fixtures, ctest
// llama_cpu_hf_fixtures); what is checked: hf_fixture_check.hpp.
#include "hf_fixture_check.hpp"

using namespace llama_test;

TEST_SUITE("hf_fixtures") {
  TEST_CASE("llama_cpu matches HF transformers on the recorded fixtures") {
    const auto fixtures = fixture_folders();
    CHECK(fixtures.size() >= 3);
    for (const auto& folder : fixtures) check_fixture(folder);
  }
}
