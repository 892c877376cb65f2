// The safetensors reader. Nothing in a file is trusted: every length, offset
// and shape is checked against the bytes actually present, in integers that
// cannot overflow, before a view is made.
#include <algorithm>
#include <cstring>
#include <limits>
#include <unordered_set>

#include <hostrun/json_bounds.hpp>
#include <nlohmann/json.hpp>

#include "checkpoint/detail.hpp"
#include "checkpoint/safetensors.hpp"

namespace hostrun::checkpoint {

using detail::fail;
using detail::quote_name;
using detail::shape_text;
using nlohmann::json;

namespace {

// A real header nests three deep ({name: {"shape": [...]}}); anything much
// deeper is hostile, and refusing it up front bounds the parser's work. The
// memory budget is json_bounds.hpp's default.
const JsonLimits kHeaderLimits = [] {
  JsonLimits limits;
  limits.max_depth = 16;
  return limits;
}();

uint64_t read_le64(const std::byte* p) noexcept {
  uint64_t v = 0;
  for (int i = 7; i >= 0; --i) v = (v << 8) | uint64_t(p[i]);
  return v;
}

// A JSON integer as uint64, or nullopt when it is not a non-negative integer.
std::optional<uint64_t> as_count(const json& value) {
  if (value.is_number_unsigned()) return value.get<uint64_t>();
  if (value.is_number_integer()) {
    int64_t v = value.get<int64_t>();
    if (v >= 0) return uint64_t(v);
  }
  return std::nullopt;
}

std::string describe_value(const json& value) {
  // Scalars are short enough to show; containers could be anything.
  if (value.is_number() || value.is_boolean() || value.is_null()) return value.dump();
  if (value.is_string()) return quote_name(value.get_ref<const std::string&>());
  return std::string("a JSON ") + value.type_name();
}

}  // namespace

Result<SafetensorsFile> SafetensorsFile::open(const std::filesystem::path& path) noexcept {
  return detail::to_result<SafetensorsFile>([&] {
    SafetensorsFile file;
    file.label_ = path.string();
    file.mapping_ = MappedFile(path);
    file.bytes_ = file.mapping_.bytes();
    file.parse();
    return file;
  });
}

Result<SafetensorsFile> SafetensorsFile::from_bytes(std::span<const std::byte> bytes, std::string label) noexcept {
  return detail::to_result<SafetensorsFile>([&] {
    SafetensorsFile file;
    file.label_ = std::move(label);
    file.bytes_ = bytes;
    file.parse();
    return file;
  });
}

void SafetensorsFile::parse() {
  const uint64_t size = bytes_.size();
  if (size < 8)
    fail(ErrorCode::corrupt_data, "{}: file is {} bytes; a safetensors file starts with an 8-byte header length",
         label_, size);
  const uint64_t header_len = read_le64(bytes_.data());
  if (header_len > kMaxHeaderBytes)
    fail(ErrorCode::corrupt_data, "{}: header length {} exceeds the limit of {} bytes", label_, header_len,
         kMaxHeaderBytes);
  if (header_len > size - 8)
    fail(ErrorCode::corrupt_data,
         "{}: header length {} runs past the end of the file (file is {} bytes, {} after the length field)",
         label_, header_len, size, size - 8);
  std::string_view header(reinterpret_cast<const char*>(bytes_.data() + 8), size_t(header_len));
  if (header.empty() || header.front() != '{')
    fail(ErrorCode::corrupt_data, "{}: header must be a JSON object starting with '{{', found {}", label_,
         header.empty() ? std::string("an empty header") : fmt::format("byte 0x{:02x}", uint8_t(header.front())));
  // A header length that reaches into the tensor data: the object closes
  // before the header ends and bytes other than the spaces safetensors pads
  // with follow. Said first, since those bytes may look like anything.
  const JsonShape shape = scan_json_shape(header, kHeaderLimits);
  if (shape.first_value_end != std::string_view::npos) {
    const size_t extra = header.find_first_not_of(" \t\r\n", shape.first_value_end);
    if (extra != std::string_view::npos)
      fail(ErrorCode::corrupt_data,
           "{}: the header's JSON object ends at byte {} of {}, and byte {} after it is not padding: the header "
           "length reaches into the tensor data (or the header has bytes after its object)",
           label_, shape.first_value_end, header_len, extra);
  }
  if (Status bounds = check_json_bounds(header, kHeaderLimits, "the header"); !bounds)
    fail(ErrorCode::corrupt_data, "{}: {}; a safetensors header needs 3 levels", label_, bounds.message());

  // nlohmann keeps the last of two equal keys silently; a tensor listed twice
  // is a lie about the file, so the parser callback watches top-level keys.
  std::unordered_set<std::string> seen;
  std::optional<std::string> duplicate;
  json::parser_callback_t watch_keys = [&](int depth, json::parse_event_t event, json& parsed) {
    if (event == json::parse_event_t::key && depth == 1 && !duplicate) {
      const auto& key = parsed.get_ref<const std::string&>();
      if (!seen.insert(key).second) duplicate = key;
    }
    return true;
  };
  json root;
  try {
    root = json::parse(header.begin(), header.end(), watch_keys);
  } catch (const json::exception& e) {
    fail(ErrorCode::corrupt_data, "{}: header is not valid JSON: {}", label_, e.what());
  }
  seen.clear();
  if (duplicate) fail(ErrorCode::corrupt_data, "{}: header lists tensor {} twice", label_, quote_name(*duplicate));
  if (!root.is_object())
    fail(ErrorCode::corrupt_data, "{}: header must be a JSON object, found a JSON {}", label_, root.type_name());

  const uint64_t data_size = size - 8 - header_len;
  data_section_ = bytes_.data() + 8 + header_len;
  entries_.reserve(root.size());
  for (const auto& [name, value] : root.items()) {
    if (name == "__metadata__") {
      if (!value.is_object())
        fail(ErrorCode::corrupt_data, "{}: __metadata__ must be an object of strings, found a JSON {}", label_,
             value.type_name());
      for (const auto& [key, text] : value.items()) {
        if (!text.is_string())
          fail(ErrorCode::corrupt_data, "{}: __metadata__ key {} must hold a string, found {}", label_,
               quote_name(key), describe_value(text));
        metadata_.emplace(key, text.get<std::string>());
      }
      continue;
    }
    const std::string where = fmt::format("{}: tensor {}", label_, quote_name(name));
    if (!value.is_object())
      fail(ErrorCode::corrupt_data, "{}: expected an object with dtype, shape and data_offsets, found {}", where,
           describe_value(value));
    TensorEntry entry;
    entry.name = name;

    auto dtype_it = value.find("dtype");
    if (dtype_it == value.end()) fail(ErrorCode::corrupt_data, "{}: missing key 'dtype'", where);
    if (!dtype_it->is_string())
      fail(ErrorCode::corrupt_data, "{}: dtype must be a string, found {}", where, describe_value(*dtype_it));
    const auto& dtype_name = dtype_it->get_ref<const std::string&>();
    auto dtype = detail::dtype_from_safetensors(dtype_name);
    if (!dtype)
      fail(ErrorCode::unsupported,
           "{}: dtype {} is not supported (supported: F32, F16, BF16, I32, I64, I8, U8, F8_E4M3, F8_E5M2)",
           where, quote_name(dtype_name));
    entry.dtype = *dtype;

    auto shape_it = value.find("shape");
    if (shape_it == value.end()) fail(ErrorCode::corrupt_data, "{}: missing key 'shape'", where);
    if (!shape_it->is_array())
      fail(ErrorCode::corrupt_data, "{}: shape must be an array of integers, found {}", where,
           describe_value(*shape_it));
    if (shape_it->size() > kMaxTensorRank)
      fail(ErrorCode::unsupported, "{}: shape has {} dimensions; at most {} are supported", where,
           shape_it->size(), kMaxTensorRank);
    // Sizes are multiplied in 64 bits, refusing to wrap: a shape like
    // [2^40, 2^40] must not multiply down to a small number that fits. Zero
    // dimensions are counted as one for the first product so an empty tensor
    // with absurd other dimensions cannot overflow strides computed later.
    uint64_t span = 1;
    bool overflow = false;
    for (size_t i = 0; i < shape_it->size(); ++i) {
      const json& dim = (*shape_it)[i];
      auto count = as_count(dim);
      if (!count || *count > uint64_t(std::numeric_limits<int64_t>::max()))
        fail(ErrorCode::corrupt_data, "{}: shape[{}] is {}; expected a non-negative integer", where, i,
             describe_value(dim));
      entry.shape.push_back(int64_t(*count));
      overflow = overflow || __builtin_mul_overflow(span, std::max<uint64_t>(*count, 1), &span);
    }
    if (overflow || span > uint64_t(std::numeric_limits<int64_t>::max()))
      fail(ErrorCode::corrupt_data, "{}: shape {} has more than 2^63 elements", where, shape_text(entry.shape));
    uint64_t numel = 1;
    for (int64_t d : entry.shape) numel *= uint64_t(d);  // <= span, cannot wrap
    uint64_t needed = 0;
    if (__builtin_mul_overflow(numel, detail::element_bytes(entry.dtype), &needed))
      fail(ErrorCode::corrupt_data, "{}: shape {} of {} needs more than 2^64 bytes", where,
           shape_text(entry.shape), dtype_name);

    auto offsets_it = value.find("data_offsets");
    if (offsets_it == value.end()) fail(ErrorCode::corrupt_data, "{}: missing key 'data_offsets'", where);
    if (!offsets_it->is_array() || offsets_it->size() != 2)
      fail(ErrorCode::corrupt_data, "{}: data_offsets must be [begin, end], found {}", where,
           offsets_it->is_array() ? fmt::format("an array of {} elements", offsets_it->size())
                                  : describe_value(*offsets_it));
    auto begin = as_count((*offsets_it)[0]);
    auto end = as_count((*offsets_it)[1]);
    if (!begin || !end)
      fail(ErrorCode::corrupt_data, "{}: data_offsets must be two non-negative integers, found [{}, {}]", where,
           describe_value((*offsets_it)[0]), describe_value((*offsets_it)[1]));
    if (*begin > *end)
      fail(ErrorCode::corrupt_data, "{}: data_offsets [{}, {}] begin after they end", where, *begin, *end);
    if (*end > data_size)
      fail(ErrorCode::corrupt_data,
           "{}: data_offsets [{}, {}] end past the data section, which holds {} bytes (file is {} bytes)", where,
           *begin, *end, data_size, size);
    if (*end - *begin != needed)
      fail(ErrorCode::corrupt_data, "{}: data_offsets [{}, {}] hold {} bytes but shape {} of {} needs {}", where,
           *begin, *end, *end - *begin, shape_text(entry.shape), dtype_name, needed);
    entry.data_begin = *begin;
    entry.data_end = *end;
    entries_.push_back(std::move(entry));
  }
  // items() walks nlohmann's std::map in key order, so entries_ is already
  // sorted by name, which find() relies on.

  // Overlap: sweep the non-empty tensors in offset order; each must start at
  // or after the furthest end seen so far.
  std::vector<const TensorEntry*> by_offset;
  by_offset.reserve(entries_.size());
  for (const auto& e : entries_)
    if (e.nbytes() > 0) by_offset.push_back(&e);
  std::sort(by_offset.begin(), by_offset.end(), [](const TensorEntry* a, const TensorEntry* b) {
    return a->data_begin != b->data_begin ? a->data_begin < b->data_begin : a->data_end < b->data_end;
  });
  const TensorEntry* furthest = nullptr;
  for (const TensorEntry* e : by_offset) {
    if (furthest != nullptr && e->data_begin < furthest->data_end)
      fail(ErrorCode::corrupt_data, "{}: tensor {}: data_offsets [{}, {}] overlap tensor {} at [{}, {}]", label_,
           quote_name(e->name), e->data_begin, e->data_end, quote_name(furthest->name), furthest->data_begin,
           furthest->data_end);
    if (furthest == nullptr || e->data_end > furthest->data_end) furthest = e;
  }

  for (const auto& e : entries_) {
    const std::byte* at = data_section_ + e.data_begin;
    const uint64_t align = detail::element_bytes(e.dtype);
    if (e.nbytes() == 0 || reinterpret_cast<uintptr_t>(at) % align == 0) continue;
    auto copy = std::make_unique<std::byte[]>(e.nbytes());
    std::memcpy(copy.get(), at, e.nbytes());
    aligned_copies_.emplace(e.name, std::move(copy));
  }
}

const TensorEntry* SafetensorsFile::find(std::string_view name) const noexcept {
  auto it = std::lower_bound(entries_.begin(), entries_.end(), name,
                             [](const TensorEntry& e, std::string_view n) { return e.name < n; });
  return it != entries_.end() && it->name == name ? &*it : nullptr;
}

TensorView SafetensorsFile::view(const TensorEntry& entry) const noexcept {
  TensorView v;
  const std::byte* at = data_section_ + entry.data_begin;
  if (auto copy = aligned_copies_.find(entry.name); copy != aligned_copies_.end()) at = copy->second.get();
  // The SDK's view is mutable by type only; the pages are mapped PROT_READ.
  v.data = const_cast<std::byte*>(at);
  v.dtype = entry.dtype;
  v.device = Device{};
  v.rank = uint8_t(entry.shape.size());
  int64_t stride = 1;
  for (int r = int(v.rank) - 1; r >= 0; --r) {
    v.shape[r] = entry.shape[r];
    v.strides[r] = stride;
    // Bounded by the file size, which was checked; never overflows.
    stride *= entry.shape[r];
  }
  return v;
}

Result<TensorView> SafetensorsFile::tensor(std::string_view name) const noexcept {
  if (const TensorEntry* e = find(name)) return view(*e);
  return detail::to_result<TensorView>([&]() -> TensorView {
    fail(ErrorCode::not_found, "{}: no tensor {}", label_, quote_name(name));
  });
}

}  // namespace hostrun::checkpoint
