#include <doctest/doctest.h>

#include <hostrun/status.hpp>
#include <hostrun/tensor.hpp>
#include <stdexcept>

using namespace hostrun;

TEST_CASE("guard turns whatever a body throws into a Status") {
  CHECK(guard([] {}).is_ok());
  CHECK(guard([] { return Status(ErrorCode::not_found, "x"); }).code() == ErrorCode::not_found);
  Status e = guard([] { throw Error(ErrorCode::corrupt_data, "bad header"); });
  CHECK(e.code() == ErrorCode::corrupt_data);
  CHECK(e.message() == "bad header");
  CHECK(guard([] { throw std::runtime_error("boom"); }).message() == "boom");
  CHECK(guard([] { throw 3; }).code() == ErrorCode::internal);
  CHECK(guard([] { throw std::bad_alloc(); }).code() == ErrorCode::out_of_memory);
}

TEST_CASE("Result holds a value or the reason there is none") {
  Result<int> good = 5;
  REQUIRE(good.has_value());
  CHECK(*good == 5);
  Result<int> bad = Status(ErrorCode::io_error, "disk");
  CHECK_FALSE(bad.has_value());
  CHECK(bad.status().message() == "disk");
  Result<int> misuse = Status();  // an ok Status is not a value
  CHECK_FALSE(misuse.has_value());
  CHECK(misuse.status().code() == ErrorCode::internal);
}

TEST_CASE("TensorView counts elements, bytes and contiguity") {
  float data[24];
  auto v = TensorView::contiguous(data, DType::f32, {2, 3, 4});
  CHECK(v.rank == 3);
  CHECK(v.numel() == 24);
  CHECK(v.nbytes() == 96);
  CHECK(v.strides[0] == 12);
  CHECK(v.strides[2] == 1);
  CHECK(v.is_contiguous());
  v.strides[0] = 13;
  CHECK_FALSE(v.is_contiguous());
  auto packed = TensorView::contiguous(data, DType::u4, {3, 5});
  CHECK(packed.nbytes() == 8);  // 15 four-bit values round up to 8 bytes
}
