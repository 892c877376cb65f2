#include "auto_awq.hpp"
#include "chunks.hpp"

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <functional>
#include <map>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "ref/awq.hpp"
#include "ref/awq_search.hpp"
#include "ref/dtype.hpp"
#ifndef HOSTRUN_AWQ_CUDA
#define HOSTRUN_AWQ_CUDA 0
#endif
#if HOSTRUN_AWQ_CUDA
#include "awq_cuda_search.hpp"
#endif

namespace hostrun::awq {

namespace {

using nlohmann::ordered_json;

[[noreturn]] void fail(ErrorCode code, const std::string& message) { throw Error(code, "auto_awq: " + message); }

std::optional<ref::DType> ref_dtype(DType dtype) {
  switch (dtype) {
    case DType::f32: return ref::DType::f32;
    case DType::bf16: return ref::DType::bf16;
    case DType::f16: return ref::DType::f16;
    default: return std::nullopt;
  }
}

// A floating checkpoint tensor in f32, with its shape.
struct DenseTensor {
  std::vector<int64_t> shape;
  std::vector<float> values;
};

DenseTensor dense_of(const WeightSource& source, const std::string& name, const TensorView& view) {
  const auto dtype = ref_dtype(view.dtype);
  if (!dtype || !view.is_contiguous() || view.device.kind != DeviceKind::cpu)
    fail(ErrorCode::corrupt_data, fmt::format("{}: tensor '{}' is {} (expected f32, bf16 or f16 in host memory)",
                                              source.directory(), name, dtype_name(view.dtype)));
  DenseTensor t;
  t.shape.assign(view.shape.begin(), view.shape.begin() + view.rank);
  t.values.resize(size_t(view.numel()));
  ref::convert_to_f32(view.data, *dtype, t.values.size(), t.values.data());
  return t;
}

DenseTensor read_dense(const WeightSource& source, const std::string& name) {
  auto view = source.tensor(name);
  if (!view) throw Error(view.status());
  return dense_of(source, name, view.value());
}

// Runs body(i) for i in [0, count) on `most` threads (0: all cores); the first exception wins.
void parallel_for(size_t count, const std::function<void(size_t)>& body, size_t most = 0) {
  const size_t cores = most != 0 ? most : std::thread::hardware_concurrency();
  const size_t workers = std::max<size_t>(1, std::min<size_t>(count, cores));
  std::atomic<size_t> next{0};
  std::mutex error_mutex;
  std::exception_ptr error;
  auto work = [&] {
    for (size_t i; (i = next.fetch_add(1)) < count;) {
      try {
        body(i);
      } catch (...) {
        std::lock_guard lock(error_mutex);
        if (!error) error = std::current_exception();
        next = count;
      }
    }
  };
  std::vector<std::thread> threads;
  for (size_t w = 1; w < workers; ++w) threads.emplace_back(work);
  work();
  for (auto& t : threads) t.join();
  if (error) std::rethrow_exception(error);
}

// Progress from several threads, one call at a time.
class Progress {
 public:
  Progress(QuantizeProgress* sink, std::string stage, int64_t total) : sink_(sink), stage_(std::move(stage)), total_(total) {
    if (sink_) sink_->on_progress(stage_, 0, total_);
  }
  void step() {
    std::lock_guard lock(mutex_);
    ++done_;
    if (sink_) sink_->on_progress(stage_, done_, total_);
  }

 private:
  QuantizeProgress* sink_;
  std::string stage_;
  int64_t total_ = 0, done_ = 0;
  std::mutex mutex_;
};

// Keeps every `stride`-th token of the input of each group in `active` (the
// first linear of the group speaks for all of them); other groups' inputs
// are passed over.
class InputSampler final : public CalibrationObserver {
 public:
  struct Sampled {
    size_t in_features = 0;
    size_t seen = 0;          // tokens reported
    std::vector<float> rows;  // [count, in_features]
    size_t count() const { return in_features ? rows.size() / in_features : 0; }
  };

  InputSampler(const std::vector<LinearInputGroup>& groups, const std::vector<size_t>& active, size_t stride)
      : stride_(stride), sampled_(groups.size()), active_(groups.size(), false) {
    for (size_t g = 0; g < groups.size(); ++g)
      for (size_t i = 0; i < groups[g].linears.size(); ++i) where_[groups[g].linears[i].prefix] = {g, i};
    for (size_t g : active) active_[g] = true;
  }

  void on_linear_input(std::string_view linear, const TensorView& x) noexcept override {
    if (error_.is_ok()) error_ = guard([&] { record(linear, x); });
  }

  const Status& error() const { return error_; }
  std::vector<Sampled>& sampled() { return sampled_; }

 private:
  void record(std::string_view linear, const TensorView& x) {
    const auto found = where_.find(linear);
    if (found == where_.end())
      fail(ErrorCode::internal, fmt::format("the model reported the input of '{}', which none of its "
                                            "linear_input_groups() lists",
                                            linear));
    if (!active_[found->second.first]) return;
    if (x.rank != 2 || x.dtype != DType::f32 || x.device.kind != DeviceKind::cpu || x.strides[1] != 1 ||
        x.strides[0] < x.shape[1])
      fail(ErrorCode::internal, fmt::format("the model reported '{}' as {} rank {} (expected f32 rows in host memory)",
                                            linear, dtype_name(x.dtype), x.rank));
    Sampled& s = sampled_[found->second.first];
    const size_t in = size_t(x.shape[1]), tokens = size_t(x.shape[0]);
    if (s.in_features != 0 && s.in_features != in)
      fail(ErrorCode::internal, fmt::format("the model reported '{}' with {} input channels, its group had {}", linear,
                                            in, s.in_features));
    s.in_features = in;
    if (found->second.second != 0) return;  // the group's first linear already gave these rows
    const float* data = x.as<const float>();
    for (size_t t = 0; t < tokens; ++t)
      if ((s.seen + t) % stride_ == 0) s.rows.insert(s.rows.end(), data + t * size_t(x.strides[0]), data + t * size_t(x.strides[0]) + in);
    s.seen += tokens;
  }

  size_t stride_;
  std::vector<Sampled> sampled_;
  std::vector<bool> active_;
  std::map<std::string, std::pair<size_t, size_t>, std::less<>> where_;
  Status error_;
};

// At most `most` rows of the sample, evenly spaced.
std::vector<float> every_kth_row(const InputSampler::Sampled& s, size_t most) {
  const size_t count = s.count(), step = std::max<size_t>(1, (count + most - 1) / most);
  std::vector<float> rows;
  for (size_t t = 0; t < count; t += step)
    rows.insert(rows.end(), s.rows.begin() + std::ptrdiff_t(t * s.in_features),
                s.rows.begin() + std::ptrdiff_t((t + 1) * s.in_features));
  return rows;
}

// Where steps 2 and 3 search: kernels/ref on all cores, or the GPU the
// model runs on (awq_cuda_search.hpp: the same choices, one search at a time).
struct Searches {
  std::function<ref::AwqScaleSearch(std::span<const ref::AwqLinearView> layers, size_t in_features, const float* x,
                                    size_t tokens, size_t group_size)>
      scales;
  std::function<ref::AwqClipSearch(const float* weight, size_t out_features, size_t in_features, const float* x,
                                   size_t tokens, size_t group_size)>
      clip;
  size_t at_once = 0;  // searches run side by side (0: one a core)
  std::string where = "cpu";
};

Searches searches_for(const Device& device) {
  Searches s;
  if (device.kind == DeviceKind::cpu) {
    s.scales = [](std::span<const ref::AwqLinearView> layers, size_t in, const float* x, size_t tokens, size_t group) {
      return ref::awq_search_scales(layers, in, x, tokens, group);
    };
    s.clip = [](const float* w, size_t out, size_t in, const float* x, size_t tokens, size_t group) {
      return ref::awq_search_clip(w, out, in, x, tokens, group);
    };
    return s;
  }
#if HOSTRUN_AWQ_CUDA
  if (device.kind == DeviceKind::cuda) {
    auto gpu = std::make_shared<CudaAwqSearch>(device.index);
    s.scales = [gpu](std::span<const ref::AwqLinearView> layers, size_t in, const float* x, size_t tokens,
                     size_t group) { return gpu->search_scales(layers, in, x, tokens, group); };
    s.clip = [gpu](const float* w, size_t out, size_t in, const float* x, size_t tokens, size_t group) {
      return gpu->search_clip(w, out, in, x, tokens, group);
    };
    s.at_once = 1;
    s.where = fmt::format("cuda:{}", device.index);
    return s;
  }
#endif
  fail(ErrorCode::unsupported,
       fmt::format("the model runs on {}:{}, where this build of the awq plugin cannot search (it searches on the "
                   "cpu{})",
                   device.kind == DeviceKind::cuda ? "cuda" : "an unknown device", device.index,
                   HOSTRUN_AWQ_CUDA ? " and cuda" : ""));
}

struct GroupResult {
  bool scaled = false;
  ref::AwqScaleSearch search;
};

struct LinearResult {
  bool clipped = false;
  double mean_shrink = 0.0;
  double loss = 0.0, rtn_loss = 0.0;  // after the group's scales: clipped-and-rounded, plainly rounded
  ref::AwqPackedLayer packed;
};

void check_job(const QuantizeJob& job) {
  if (!job.source || !job.model || !job.output)
    fail(ErrorCode::invalid_argument, "a quantize job needs a source checkpoint, a loaded model and an output");
  if (job.bits != 4)
    fail(ErrorCode::invalid_argument,
         fmt::format("--w-bits {}: AutoAWQ's GEMM format holds 4-bit weights only (--w-bits 4)", job.bits));
  if (job.group_size != 32 && job.group_size != 64 && job.group_size != 128)
    fail(ErrorCode::invalid_argument, fmt::format("--w-group-size {}: expected 32, 64 or 128", job.group_size));
  if (job.calibration.empty()) fail(ErrorCode::invalid_argument, "no calibration sequences were given");
}

// The shape of a checkpoint tensor, read from its header (no data).
std::vector<int64_t> shape_of(const WeightSource& source, const std::string& name) {
  auto view = source.tensor(name);
  if (!view) throw Error(view.status());
  return {view->shape.begin(), view->shape.begin() + view->rank};
}

// Each group's input channels and the f32 bytes of the tensors it lists,
// after checking every linear and producer against the groups (before
// calibration, which is the long part).
struct GroupShapes {
  std::vector<size_t> in_features;
  std::vector<uint64_t> f32_bytes;
};
int64_t numel_of(const std::vector<int64_t>& shape) {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}
GroupShapes check_groups(const WeightSource& source, const std::vector<LinearInputGroup>& groups, size_t group_size) {
  std::vector<size_t> in_features(groups.size(), 0);
  std::vector<uint64_t> f32_bytes(groups.size(), 0);
  std::map<std::string, size_t> listed;  // linear prefix -> its group
  for (size_t g = 0; g < groups.size(); ++g) {
    if (groups[g].linears.empty()) fail(ErrorCode::internal, "the model reported a linear input group with no linears");
    for (const CalibratedLinear& linear : groups[g].linears) {
      const std::string name = linear.prefix + ".weight";
      if (!listed.emplace(linear.prefix, g).second)
        fail(ErrorCode::internal, fmt::format("the model lists '{}' in two linear input groups", linear.prefix));
      const std::vector<int64_t> shape = shape_of(source, name);
      if (shape.size() != 2 || shape[0] % 8 != 0 || shape[1] % int64_t(group_size) != 0)
        fail(ErrorCode::invalid_argument,
             fmt::format("{}: '{}' is [{}]: AWQ needs [out, in] with out a multiple of 8 and in a multiple of the "
                         "group size {}",
                         source.directory(), name, fmt::join(shape, ", "), group_size));
      if (in_features[g] != 0 && size_t(shape[1]) != in_features[g])
        fail(ErrorCode::internal,
             fmt::format("'{}' reads {} channels, the others of its group {}", name, shape[1], in_features[g]));
      in_features[g] = size_t(shape[1]);
      f32_bytes[g] += 4 * uint64_t(numel_of(shape));
    }
  }
  for (size_t g = 0; g < groups.size(); ++g)
    for (const std::string& name : groups[g].producers) {
      const std::vector<int64_t> shape = shape_of(source, name);
      if (shape.empty() || size_t(shape[0]) != in_features[g])
        fail(ErrorCode::internal, fmt::format("producer '{}' has {} channels along dimension 0; its group reads {}",
                                              name, shape.empty() ? 0 : shape[0], in_features[g]));
      f32_bytes[g] += 4 * uint64_t(numel_of(shape));
    }
  return {std::move(in_features), std::move(f32_bytes)};
}

// A chunk's linear weights and producers in f32.
std::map<std::string, DenseTensor> read_chunk_tensors(const WeightSource& source,
                                                      const std::vector<LinearInputGroup>& groups,
                                                      const std::vector<size_t>& chunk) {
  std::map<std::string, DenseTensor> tensors;
  for (size_t g : chunk) {
    for (const CalibratedLinear& linear : groups[g].linears)
      tensors.emplace(linear.prefix + ".weight", read_dense(source, linear.prefix + ".weight"));
    for (const std::string& name : groups[g].producers)
      if (!tensors.count(name)) tensors.emplace(name, read_dense(source, name));
  }
  return tensors;
}

// A contiguous host view of a shape known only at run time.
TensorView host_view(void* data, DType dtype, const std::vector<int64_t>& shape) {
  if (shape.size() > kMaxTensorRank) fail(ErrorCode::unsupported, fmt::format("a tensor of rank {}", shape.size()));
  TensorView v = TensorView::contiguous(data, dtype, {});
  v.rank = uint8_t(shape.size());
  int64_t stride = 1;
  for (int r = int(shape.size()) - 1; r >= 0; --r) {
    v.shape[size_t(r)] = shape[size_t(r)];
    v.strides[size_t(r)] = stride;
    stride *= shape[size_t(r)];
  }
  return v;
}

void write_f16(WeightSink& output, const std::string& name, const std::vector<int64_t>& shape, const float* values,
               size_t count) {
  std::vector<uint16_t> half(count);
  for (size_t i = 0; i < count; ++i) {
    if (std::isfinite(values[i]) && std::fabs(values[i]) > 65504.0f)
      fail(ErrorCode::invalid_argument, fmt::format("tensor '{}' holds {} at element {}, beyond f16's range (AutoAWQ "
                                                    "folders keep 16-bit tensors in f16)",
                                                    name, values[i], i));
    half[i] = ref::f32_to_f16(values[i]);
  }
  if (Status s = output.add_tensor(name, host_view(half.data(), DType::f16, shape)); !s) throw Error(s);
}

void write_packed(WeightSink& output, const std::string& prefix, ref::AwqPackedLayer& p) {
  const auto in = int64_t(p.in_features), out = int64_t(p.out_features), groups = int64_t(p.in_features / p.group_size);
  const auto add = [&](const char* suffix, void* data, DType dtype, std::vector<int64_t> shape) {
    if (Status s = output.add_tensor(prefix + suffix, host_view(data, dtype, shape)); !s) throw Error(s);
  };
  add(".qweight", p.qweight.data(), DType::i32, {in, out / 8});
  add(".qzeros", p.qzeros.data(), DType::i32, {groups, out / 8});
  add(".scales", p.scales.data(), DType::f16, {groups, out});
}

std::string config_with_quantization(const WeightSource& source, int32_t group_size) {
  ordered_json config = ordered_json::parse(source.config_json());
  if (!config.is_object()) fail(ErrorCode::corrupt_data, source.directory() + "/config.json is not an object");
  if (config.contains("quantization_config"))
    fail(ErrorCode::invalid_argument,
         fmt::format("{} is already quantized (config.json has quantization_config); auto_awq starts from 16- or "
                     "32-bit weights",
                     source.directory()));
  config["quantization_config"] = {{"quant_method", "awq"}, {"bits", 4},         {"group_size", group_size},
                                   {"zero_point", true},    {"version", "gemm"}, {"modules_to_not_convert", nullptr}};
  config["torch_dtype"] = "float16";
  return config.dump(2) + "\n";
}

// What steps 2-4 record for awq_search.json.
struct SearchSummary {
  ordered_json scaled_groups = ordered_json::array();
  ordered_json clipped_linears = ordered_json::array();
};

// Steps 2-4 for one chunk of groups (awq_chunks): search the scales of its
// groups (on their original weights), fold them, clip and round its
// linears, and write them and the producers it changed.
void quantize_chunk(const QuantizeJob& job, const std::vector<LinearInputGroup>& groups,
                    const std::vector<size_t>& chunk, const std::vector<size_t>& in_features,
                    std::vector<InputSampler::Sampled>& inputs, const Searches& search, Progress& progress,
                    SearchSummary& summary, std::set<std::string>& written) {
  const size_t group_size = size_t(job.group_size);
  std::map<std::string, DenseTensor> tensors = read_chunk_tensors(*job.source, groups, chunk);

  // 2. Scales, searched on the original weights, then folded.
  std::vector<GroupResult> group_results(chunk.size());
  parallel_for(chunk.size(), [&](size_t c) {
    const size_t g = chunk[c];
    if (groups[g].producers.empty()) return;
    std::vector<ref::AwqLinearView> views;
    for (const CalibratedLinear& linear : groups[g].linears) {
      const DenseTensor& w = tensors.at(linear.prefix + ".weight");
      views.push_back({w.values.data(), size_t(w.shape[0])});
    }
    group_results[c].scaled = true;
    group_results[c].search = search.scales(views, in_features[g], inputs[g].rows.data(), inputs[g].count(), group_size);
  }, search.at_once);
  for (size_t c = 0; c < chunk.size(); ++c) {
    if (!group_results[c].scaled) continue;
    const size_t g = chunk[c], in = in_features[g];
    const std::vector<float>& s = group_results[c].search.scales;
    for (const CalibratedLinear& linear : groups[g].linears) {
      std::vector<float>& w = tensors.at(linear.prefix + ".weight").values;
      for (size_t o = 0; o < w.size() / in; ++o)
        for (size_t i = 0; i < in; ++i) w[o * in + i] *= s[i];
    }
    for (const std::string& name : groups[g].producers) {
      std::vector<float>& p = tensors.at(name).values;
      const size_t slice = p.size() / in;
      for (size_t ch = 0; ch < in; ++ch)
        for (size_t j = 0; j < slice; ++j) p[ch * slice + j] /= s[ch];
    }
    std::vector<float>& x = inputs[g].rows;
    for (size_t t = 0; t < inputs[g].count(); ++t)
      for (size_t i = 0; i < in; ++i) x[t * in + i] /= s[i];
    std::vector<std::string> prefixes;
    for (const CalibratedLinear& linear : groups[g].linears) prefixes.push_back(linear.prefix);
    const ref::AwqScaleSearch& r = group_results[c].search;
    summary.scaled_groups.push_back(
        {{"linears", prefixes}, {"alpha", r.alpha}, {"loss", r.loss}, {"rtn_loss", r.rtn_loss}});
  }

  // 3. Clipping, one linear at a time (the clipped weights replace the
  // scaled ones), then 4. rounding, on all cores.
  std::vector<std::pair<size_t, const CalibratedLinear*>> linears;
  for (size_t g : chunk)
    for (const CalibratedLinear& linear : groups[g].linears) linears.push_back({g, &linear});
  std::vector<LinearResult> results(linears.size());
  parallel_for(linears.size(), [&](size_t k) {
    const auto [g, linear] = linears[k];
    if (linear->feeds_attention_logits) return;
    std::vector<float>& w = tensors.at(linear->prefix + ".weight").values;
    const size_t in = in_features[g], out = w.size() / in;
    LinearResult& r = results[k];
    const std::vector<float> x = every_kth_row(inputs[g], kClipTokens);
    ref::AwqClipSearch clip = search.clip(w.data(), out, in, x.data(), x.size() / in, group_size);
    r.clipped = true;
    r.loss = clip.loss;
    r.rtn_loss = clip.rtn_loss;
    double shrink = 0.0;
    for (float v : clip.shrink) shrink += v;
    r.mean_shrink = shrink / double(std::max<size_t>(clip.shrink.size(), 1));
    w = std::move(clip.clipped);
  }, search.at_once);
  parallel_for(linears.size(), [&](size_t k) {
    const auto [g, linear] = linears[k];
    const std::vector<float>& w = tensors.at(linear->prefix + ".weight").values;
    const size_t in = in_features[g], out = w.size() / in;
    results[k].packed = ref::awq_quantize_rtn_packed(w.data(), out, in, group_size);
    progress.step();
  });

  // Written: the packed linears, then the producers the scales changed that are not linears (norm weights).
  for (size_t k = 0; k < linears.size(); ++k) {
    const CalibratedLinear& linear = *linears[k].second;
    write_packed(*job.output, linear.prefix, results[k].packed);
    written.insert(linear.prefix + ".weight");
    if (results[k].clipped)
      summary.clipped_linears.push_back({{"linear", linear.prefix}, {"mean_shrink", results[k].mean_shrink},
                                         {"loss", results[k].loss}, {"rtn_loss", results[k].rtn_loss}});
  }
  for (const auto& [name, tensor] : tensors)
    if (!written.count(name)) {
      write_f16(*job.output, name, tensor.shape, tensor.values.data(), tensor.values.size());
      written.insert(name);
    }
}

void auto_awq(const QuantizeJob& job) {
  check_job(job);
  const WeightSource& source = *job.source;
  const std::vector<LinearInputGroup> groups = job.model->linear_input_groups();
  if (groups.empty())
    fail(ErrorCode::unsupported, "the model reports no linear input groups (Model::linear_input_groups), so AWQ "
                                 "cannot tell what to scale");
  const std::string config_text = config_with_quantization(source, job.group_size);  // refuses a quantized source first
  const GroupShapes shapes = check_groups(source, groups, size_t(job.group_size));
  const std::vector<size_t>& in_features = shapes.in_features;

  // A chunk of about kChunkBytes of weights at a time (awq_chunks): the
  // calibration sequences run through the model once per chunk (1), keeping
  // only the inputs of the chunk's groups, which are then quantized (2-4),
  // so host memory holds one chunk's weights and samples. A model that fits
  // one chunk is calibrated once.
  size_t total_tokens = 0;
  for (const auto& sequence : job.calibration) total_tokens += sequence.size();
  const size_t stride = std::max<size_t>(1, (total_tokens + kSearchTokens - 1) / kSearchTokens);
  const std::vector<std::vector<size_t>> chunks = awq_chunks(groups, shapes.f32_bytes, kChunkBytes);
  const Searches searches = searches_for(job.model->info().device);
  SearchSummary search;
  std::set<std::string> written;
  size_t search_tokens = 0, clip_tokens = 0;
  for (size_t k = 0; k < chunks.size(); ++k) {
    const std::vector<size_t>& chunk = chunks[k];
    const std::string of_chunk = chunks.size() == 1 ? "" : fmt::format(" (chunk {} of {})", k + 1, chunks.size());
    // 1. Calibration.
    InputSampler sampler(groups, chunk, stride);
    {
      Progress progress(job.progress, "calibrating" + of_chunk, int64_t(job.calibration.size()));
      for (const auto& sequence : job.calibration) {
        if (Status s = job.model->observe_linear_inputs(sequence, sampler); !s)
          fail(s.code(), "calibration: " + s.message());
        if (!sampler.error().is_ok()) fail(sampler.error().code(), sampler.error().message());
        progress.step();
      }
    }
    std::vector<InputSampler::Sampled>& inputs = sampler.sampled();
    for (size_t g : chunk)
      if (inputs[g].count() == 0 || inputs[g].in_features != in_features[g])
        fail(ErrorCode::internal, fmt::format("calibration never reported a {}-channel input for '{}'",
                                              in_features[g], groups[g].linears.front().prefix));
    if (k == 0) {
      search_tokens = inputs[chunk.front()].count();
      clip_tokens = every_kth_row(inputs[chunk.front()], kClipTokens).size() / in_features[chunk.front()];
    }
    // 2-4.
    size_t linear_count = 0;
    for (size_t g : chunk) linear_count += groups[g].linears.size();
    Progress progress(job.progress, "quantizing linears" + of_chunk, int64_t(linear_count));
    quantize_chunk(job, groups, chunk, in_features, inputs, searches, progress, search, written);
  }

  // The other tensors (embeddings, final norm, LM head), in the source's order.
  std::vector<std::string> rest;
  for (const std::string& name : source.tensor_names())
    if (!written.count(name)) rest.push_back(name);
  {
    Progress progress(job.progress, "writing", int64_t(rest.size()));
    for (const std::string& name : rest) {
      auto view = source.tensor(name);
      if (!view) throw Error(view.status());
      if (ref_dtype(view->dtype)) {
        const DenseTensor t = dense_of(source, name, view.value());
        write_f16(*job.output, name, t.shape, t.values.data(), t.values.size());
      } else if (Status s = job.output->add_tensor(name, *view); !s) {
        throw Error(s);
      }
      progress.step();
    }
  }
  if (Status s = job.output->write_file("config.json", config_text); !s) throw Error(s);

  // What the searches found, beside the weights.
  ordered_json summary;
  summary["group_size"] = job.group_size;
  summary["calibration_sequences"] = job.calibration.size();
  summary["calibration_tokens"] = total_tokens;
  summary["search_tokens"] = search_tokens;
  summary["clip_tokens"] = clip_tokens;
  summary["searched_on"] = searches.where;
  summary["note"] = "loss: mean squared output error of the written layer on the sampled calibration inputs; "
                    "rtn_loss: the same for plain round-to-nearest";
  summary["scaled_groups"] = std::move(search.scaled_groups);
  summary["clipped_linears"] = std::move(search.clipped_linears);
  if (Status s = job.output->write_file("awq_search.json", summary.dump(2) + "\n"); !s) throw Error(s);
}

}  // namespace

Status run_auto_awq(const QuantizeJob& job) noexcept {
  return guard([&] { auto_awq(job); });
}

}  // namespace hostrun::awq
