#include "onnx_vision/cpu_executor.hpp"

#include <algorithm>
#include <array>
#include <cmath>
#include <functional>
#include <numeric>

#include <fmt/format.h>
#include <fmt/ranges.h>

namespace hostrun::onnx_vision {

namespace {

using Shape = std::vector<std::int64_t>;

[[noreturn]] void refuse(std::string message) { throw Error(ErrorCode::invalid_argument, std::move(message)); }

std::int64_t count(const Shape& shape) {
  return std::accumulate(shape.begin(), shape.end(), std::int64_t(1), std::multiplies<>());
}

// ---- a node's view: its inputs, attributes and where errors point -------

struct NodeCall {
  const onnx::NodeProto& node;
  int index;
  std::vector<const HostTensor*> in;  // nullptr for an omitted optional input

  std::string where() const { return fmt::format("node {} '{}' ({})", index, node.name(), node.op_type()); }
  [[noreturn]] void fail(std::string_view why) const { refuse(fmt::format("{}: {}", where(), why)); }

  const HostTensor& input(std::size_t k) const {
    if (k >= in.size() || in[k] == nullptr) fail(fmt::format("input {} is missing", k));
    return *in[k];
  }
  const HostTensor* optional(std::size_t k) const { return k < in.size() ? in[k] : nullptr; }
  const HostTensor& floats(std::size_t k) const {
    const HostTensor& t = input(k);
    if (t.element != Element::f32) fail(fmt::format("input {} must be floating point", k));
    return t;
  }
  const HostTensor& ints(std::size_t k) const {
    const HostTensor& t = input(k);
    if (t.element != Element::i64) fail(fmt::format("input {} must be integer", k));
    return t;
  }
  const onnx::AttributeProto* attribute(std::string_view name) const {
    for (const auto& a : node.attribute())
      if (a.name() == name) return &a;
    return nullptr;
  }
  std::int64_t int_attr(std::string_view name, std::int64_t fallback) const {
    const auto* a = attribute(name);
    return a ? a->i() : fallback;
  }
  float float_attr(std::string_view name, float fallback) const {
    const auto* a = attribute(name);
    return a ? a->f() : fallback;
  }
  std::vector<std::int64_t> ints_attr(std::string_view name, std::vector<std::int64_t> fallback = {}) const {
    const auto* a = attribute(name);
    return a ? std::vector<std::int64_t>(a->ints().begin(), a->ints().end()) : fallback;
  }
  // An axis in [-rank, rank) as [0, rank).
  std::int64_t axis(std::int64_t value, std::int64_t rank) const {
    if (value < -rank || value >= rank) fail(fmt::format("axis {} is out of range for rank {}", value, rank));
    return value < 0 ? value + rank : value;
  }
};

// ---- broadcasting -----------------------------------------------------------

Shape broadcast(const NodeCall& call, const std::vector<Shape>& shapes) {
  std::size_t rank = 0;
  for (const Shape& s : shapes) rank = std::max(rank, s.size());
  Shape out(rank, 1);
  for (const Shape& s : shapes)
    for (std::size_t k = 0; k < s.size(); ++k) {
      std::int64_t& o = out[rank - s.size() + k];
      const std::int64_t d = s[k];
      if (d == o || d == 1) continue;
      if (o == 1) o = d;
      else call.fail(fmt::format("shapes {} do not broadcast", fmt::join(shapes, " and ")));
    }
  return out;
}

// Flat index into an input of `shape` for each flat index of `out` (numpy broadcasting).
std::vector<std::int64_t> broadcast_index(const Shape& shape, const Shape& out) {
  const std::size_t rank = out.size();
  Shape strides(rank, 0);
  std::int64_t stride = 1;
  for (std::size_t k = shape.size(); k-- > 0;) {
    strides[rank - shape.size() + k] = shape[k] == 1 ? 0 : stride;
    stride *= shape[k];
  }
  const std::int64_t n = count(out);
  std::vector<std::int64_t> index(static_cast<std::size_t>(n));
  Shape at(rank, 0);
  std::int64_t flat = 0;
  for (std::int64_t i = 0; i < n; ++i) {
    index[std::size_t(i)] = flat;
    for (std::size_t k = rank; k-- > 0;) {  // odometer
      flat += strides[k];
      if (++at[k] < out[k]) break;
      flat -= strides[k] * out[k];
      at[k] = 0;
    }
  }
  return index;
}

template <typename F>
HostTensor binary(const NodeCall& call, F f_float, bool compare = false) {
  const HostTensor& a = call.input(0);
  const HostTensor& b = call.input(1);
  if (a.element != b.element) call.fail("both inputs must be of one element type");
  const Shape out = broadcast(call, {a.shape, b.shape});
  const auto ia = broadcast_index(a.shape, out), ib = broadcast_index(b.shape, out);
  const std::size_t n = ia.size();
  if (a.element == Element::f32) {
    if (compare) {
      std::vector<std::int64_t> r(n);
      for (std::size_t k = 0; k < n; ++k) r[k] = f_float(a.f[std::size_t(ia[k])], b.f[std::size_t(ib[k])]) != 0.0f;
      return HostTensor::ints(out, std::move(r));
    }
    std::vector<float> r(n);
    for (std::size_t k = 0; k < n; ++k) r[k] = f_float(a.f[std::size_t(ia[k])], b.f[std::size_t(ib[k])]);
    return HostTensor::floats(out, std::move(r));
  }
  // Integer operands (shape arithmetic): the operation picked once, not per element.
  const std::string& op = call.node.op_type();
  std::int64_t (*int_op)(std::int64_t, std::int64_t) = nullptr;
  if (op == "Add") int_op = [](std::int64_t x, std::int64_t y) { return x + y; };
  else if (op == "Sub") int_op = [](std::int64_t x, std::int64_t y) { return x - y; };
  else if (op == "Mul") int_op = [](std::int64_t x, std::int64_t y) { return x * y; };
  else if (op == "Div") int_op = [](std::int64_t x, std::int64_t y) { return x / y; };
  else if (op == "Equal") int_op = [](std::int64_t x, std::int64_t y) { return std::int64_t(x == y); };
  else call.fail("integer inputs are not supported");
  std::vector<std::int64_t> r(n);
  for (std::size_t k = 0; k < n; ++k) {
    const std::int64_t x = a.i[std::size_t(ia[k])], y = b.i[std::size_t(ib[k])];
    if (op == "Div" && y == 0) call.fail("integer division by zero");
    r[k] = int_op(x, y);
  }
  return HostTensor::ints(out, std::move(r));
}

template <typename F>
HostTensor unary(const NodeCall& call, F f) {
  HostTensor out = call.floats(0);
  for (float& v : out.f) v = f(v);
  return out;
}

// ---- operators ----------------------------------------------------------------

HostTensor matmul(const NodeCall& call) {
  const HostTensor& a = call.floats(0);
  const HostTensor& b = call.floats(1);
  if (a.shape.empty() || b.shape.empty()) call.fail("inputs must have at least one dimension");
  Shape as = a.shape, bs = b.shape;
  const bool a_vector = as.size() == 1, b_vector = bs.size() == 1;
  if (a_vector) as.insert(as.begin(), 1);
  if (b_vector) bs.push_back(1);
  const std::int64_t m = as[as.size() - 2], k = as.back(), n = bs.back();
  if (bs[bs.size() - 2] != k) call.fail(fmt::format("inner dimensions differ: {} and {}", fmt::join(a.shape, "x"), fmt::join(b.shape, "x")));
  const Shape a_batch(as.begin(), as.end() - 2), b_batch(bs.begin(), bs.end() - 2);
  const Shape batch = broadcast(call, {a_batch, b_batch});
  const auto ia = broadcast_index(a_batch, batch), ib = broadcast_index(b_batch, batch);
  std::vector<float> out(ia.size() * std::size_t(m * n), 0.0f);
  for (std::size_t p = 0; p < ia.size(); ++p) {
    const float* x = a.f.data() + ia[p] * m * k;
    const float* y = b.f.data() + ib[p] * k * n;
    float* z = out.data() + std::int64_t(p) * m * n;
    for (std::int64_t r = 0; r < m; ++r)
      for (std::int64_t c = 0; c < k; ++c) {
        const float v = x[r * k + c];
        for (std::int64_t j = 0; j < n; ++j) z[r * n + j] += v * y[c * n + j];
      }
  }
  Shape shape = batch;
  if (!a_vector) shape.push_back(m);
  if (!b_vector) shape.push_back(n);
  return HostTensor::floats(shape, std::move(out));
}

HostTensor gemm(const NodeCall& call) {
  const HostTensor& a = call.floats(0);
  const HostTensor& b = call.floats(1);
  if (a.shape.size() != 2 || b.shape.size() != 2) call.fail("A and B must be matrices");
  const bool ta = call.int_attr("transA", 0) != 0, tb = call.int_attr("transB", 0) != 0;
  const float alpha = call.float_attr("alpha", 1.0f), beta = call.float_attr("beta", 1.0f);
  const std::int64_t m = ta ? a.shape[1] : a.shape[0], k = ta ? a.shape[0] : a.shape[1];
  const std::int64_t n = tb ? b.shape[0] : b.shape[1];
  if ((tb ? b.shape[1] : b.shape[0]) != k) call.fail("inner dimensions differ");
  std::vector<float> out(std::size_t(m * n), 0.0f);
  for (std::int64_t r = 0; r < m; ++r)
    for (std::int64_t j = 0; j < n; ++j) {
      float sum = 0.0f;
      for (std::int64_t c = 0; c < k; ++c)
        sum += a.f[std::size_t(ta ? c * m + r : r * k + c)] * b.f[std::size_t(tb ? j * k + c : c * n + j)];
      out[std::size_t(r * n + j)] = alpha * sum;
    }
  if (const HostTensor* c = call.optional(2)) {
    if (c->element != Element::f32) call.fail("C must be floating point");
    const Shape shape{m, n};
    if (broadcast(call, {c->shape, shape}) != shape) call.fail("C does not broadcast to M x N");
    const auto ic = broadcast_index(c->shape, shape);
    for (std::size_t q = 0; q < out.size(); ++q) out[q] += beta * c->f[std::size_t(ic[q])];
  }
  return HostTensor::floats({m, n}, std::move(out));
}

HostTensor conv(const NodeCall& call) {
  const HostTensor& x = call.floats(0);
  const HostTensor& w = call.floats(1);
  if (x.shape.size() != 4 || w.shape.size() != 4) call.fail("only 2-D convolutions (4-D input and weight) are supported");
  const std::int64_t group = call.int_attr("group", 1);
  const std::int64_t batch = x.shape[0], channels = x.shape[1], height = x.shape[2], width = x.shape[3];
  const std::int64_t filters = w.shape[0], per_group = w.shape[1], kh = w.shape[2], kw = w.shape[3];
  if (group < 1 || channels != per_group * group || filters % group != 0)
    call.fail(fmt::format("{} input channels, weight {}, group {} do not agree", channels, fmt::join(w.shape, "x"), group));
  const Shape strides = call.ints_attr("strides", {1, 1}), dilations = call.ints_attr("dilations", {1, 1});
  const Shape pads = call.ints_attr("pads", {0, 0, 0, 0});
  if (strides.size() != 2 || dilations.size() != 2 || pads.size() != 4) call.fail("strides, dilations and pads must be 2-D");
  const std::int64_t out_h = (height + pads[0] + pads[2] - dilations[0] * (kh - 1) - 1) / strides[0] + 1;
  const std::int64_t out_w = (width + pads[1] + pads[3] - dilations[1] * (kw - 1) - 1) / strides[1] + 1;
  if (out_h <= 0 || out_w <= 0) call.fail("the kernel is larger than the padded input");
  const HostTensor* bias = call.optional(2);
  std::vector<float> out(std::size_t(batch * filters * out_h * out_w));
  const std::int64_t filters_per_group = filters / group;
  for (std::int64_t b = 0; b < batch; ++b)
    for (std::int64_t f = 0; f < filters; ++f) {
      const std::int64_t g = f / filters_per_group;
      for (std::int64_t oy = 0; oy < out_h; ++oy)
        for (std::int64_t ox = 0; ox < out_w; ++ox) {
          float sum = bias ? bias->f[std::size_t(f)] : 0.0f;
          for (std::int64_t c = 0; c < per_group; ++c)
            for (std::int64_t ky = 0; ky < kh; ++ky) {
              const std::int64_t iy = oy * strides[0] - pads[0] + ky * dilations[0];
              if (iy < 0 || iy >= height) continue;
              for (std::int64_t kx = 0; kx < kw; ++kx) {
                const std::int64_t ix = ox * strides[1] - pads[1] + kx * dilations[1];
                if (ix < 0 || ix >= width) continue;
                sum += x.f[std::size_t(((b * channels + g * per_group + c) * height + iy) * width + ix)] *
                       w.f[std::size_t(((f * per_group + c) * kh + ky) * kw + kx)];
              }
            }
          out[std::size_t(((b * filters + f) * out_h + oy) * out_w + ox)] = sum;
        }
    }
  return HostTensor::floats({batch, filters, out_h, out_w}, std::move(out));
}

// Splits `shape` around `axis` into (outer, size, inner).
std::array<std::int64_t, 3> around(const Shape& shape, std::int64_t axis) {
  std::int64_t outer = 1, inner = 1;
  for (std::int64_t k = 0; k < axis; ++k) outer *= shape[std::size_t(k)];
  for (std::size_t k = std::size_t(axis) + 1; k < shape.size(); ++k) inner *= shape[k];
  return {outer, shape[std::size_t(axis)], inner};
}

HostTensor softmax(const NodeCall& call) {
  HostTensor out = call.floats(0);
  const std::int64_t axis = call.axis(call.int_attr("axis", -1), std::int64_t(out.shape.size()));
  const auto [outer, size, inner] = around(out.shape, axis);
  for (std::int64_t o = 0; o < outer; ++o)
    for (std::int64_t i = 0; i < inner; ++i) {
      float* base = out.f.data() + o * size * inner + i;
      float max = -INFINITY, sum = 0.0f;
      for (std::int64_t s = 0; s < size; ++s) max = std::max(max, base[s * inner]);
      for (std::int64_t s = 0; s < size; ++s) sum += (base[s * inner] = std::exp(base[s * inner] - max));
      for (std::int64_t s = 0; s < size; ++s) base[s * inner] /= sum;
    }
  return out;
}

HostTensor layer_norm(const NodeCall& call) {
  const HostTensor& x = call.floats(0);
  const HostTensor& scale = call.floats(1);
  const HostTensor* bias = call.optional(2);
  for (int k = 1; k < call.node.output_size(); ++k)
    if (!call.node.output(k).empty()) call.fail("only the first output (Y) is supported");
  const std::int64_t axis = call.axis(call.int_attr("axis", -1), std::int64_t(x.shape.size()));
  const float epsilon = call.float_attr("epsilon", 1e-5f);
  const Shape normalized(x.shape.begin() + axis, x.shape.end());
  const std::int64_t size = count(normalized), rows = x.numel() / std::max<std::int64_t>(size, 1);
  const auto is = broadcast_index(scale.shape, normalized);
  std::vector<std::int64_t> ib;
  if (bias) ib = broadcast_index(bias->shape, normalized);
  if (broadcast(call, {scale.shape, normalized}) != normalized) call.fail("Scale does not broadcast to the normalized dims");
  HostTensor out = x;
  for (std::int64_t r = 0; r < rows; ++r) {
    float* v = out.f.data() + r * size;
    double mean = 0.0, var = 0.0;
    for (std::int64_t k = 0; k < size; ++k) mean += v[k];
    mean /= double(size);
    for (std::int64_t k = 0; k < size; ++k) var += (v[k] - mean) * (v[k] - mean);
    var /= double(size);
    const double inv = 1.0 / std::sqrt(var + double(epsilon));
    for (std::int64_t k = 0; k < size; ++k)
      v[k] = float((v[k] - mean) * inv) * scale.f[std::size_t(is[std::size_t(k)])] +
             (bias ? bias->f[std::size_t(ib[std::size_t(k)])] : 0.0f);
  }
  return out;
}

HostTensor reduce_mean(const NodeCall& call) {
  const HostTensor& x = call.floats(0);
  const std::int64_t rank = std::int64_t(x.shape.size());
  Shape axes = call.ints_attr("axes");
  if (axes.empty()) {
    axes.resize(std::size_t(rank));
    std::iota(axes.begin(), axes.end(), 0);
  }
  std::vector<bool> reduced(std::size_t(rank), false);
  for (std::int64_t a : axes) reduced[std::size_t(call.axis(a, rank))] = true;
  const bool keep = call.int_attr("keepdims", 1) != 0;
  Shape kept_shape;
  for (std::int64_t k = 0; k < rank; ++k) kept_shape.push_back(reduced[std::size_t(k)] ? 1 : x.shape[std::size_t(k)]);
  // Each input element adds into the output element it reduces to.
  const auto index = broadcast_index(kept_shape, x.shape);
  std::vector<double> sums(std::size_t(count(kept_shape)), 0.0);
  for (std::size_t k = 0; k < index.size(); ++k) sums[std::size_t(index[k])] += x.f[k];
  const double per = double(x.numel()) / double(std::max<std::int64_t>(count(kept_shape), 1));
  std::vector<float> out(sums.size());
  for (std::size_t k = 0; k < sums.size(); ++k) out[k] = float(sums[k] / per);
  Shape shape;
  for (std::int64_t k = 0; k < rank; ++k)
    if (keep || !reduced[std::size_t(k)]) shape.push_back(kept_shape[std::size_t(k)]);
  return HostTensor::floats(shape, std::move(out));
}

HostTensor with_shape(const HostTensor& in, Shape shape) {
  HostTensor out = in;
  out.shape = std::move(shape);
  return out;
}

HostTensor reshape(const NodeCall& call) {
  const HostTensor& x = call.input(0);
  const HostTensor& target = call.ints(1);
  const bool allow_zero = call.int_attr("allowzero", 0) != 0;
  Shape shape(target.i.begin(), target.i.end());
  std::int64_t known = 1, infer = -1;
  for (std::size_t k = 0; k < shape.size(); ++k) {
    if (shape[k] == 0 && !allow_zero) {
      if (k >= x.shape.size()) call.fail("a 0 in the shape has no input dimension to copy");
      shape[k] = x.shape[k];
    }
    if (shape[k] == -1) {
      if (infer >= 0) call.fail("more than one -1 in the shape");
      infer = std::int64_t(k);
    } else if (shape[k] < 0) {
      call.fail(fmt::format("shape entry {} is negative", shape[k]));
    } else {
      known *= shape[k];
    }
  }
  if (infer >= 0) {
    if (known == 0 || x.numel() % known != 0) call.fail(fmt::format("cannot infer the -1 of {} for {} elements", fmt::join(target.i, "x"), x.numel()));
    shape[std::size_t(infer)] = x.numel() / known;
  }
  if (count(shape) != x.numel())
    call.fail(fmt::format("shape {} holds {} elements, the input {}", fmt::join(shape, "x"), count(shape), x.numel()));
  return with_shape(x, shape);
}

// Copies elements of `in` by index (the element type kept).
HostTensor gather_flat(const HostTensor& in, Shape shape, const std::vector<std::int64_t>& from) {
  HostTensor out;
  out.element = in.element;
  out.shape = std::move(shape);
  if (in.element == Element::f32) {
    out.f.resize(from.size());
    for (std::size_t k = 0; k < from.size(); ++k) out.f[k] = in.f[std::size_t(from[k])];
  } else {
    out.i.resize(from.size());
    for (std::size_t k = 0; k < from.size(); ++k) out.i[k] = in.i[std::size_t(from[k])];
  }
  return out;
}

Shape strides_of(const Shape& shape) {
  Shape strides(shape.size(), 1);
  for (std::size_t k = shape.size(); k-- > 1;) strides[k - 1] = strides[k] * shape[k];
  return strides;
}

HostTensor transpose(const NodeCall& call) {
  const HostTensor& x = call.input(0);
  const std::size_t rank = x.shape.size();
  Shape perm = call.ints_attr("perm");
  if (perm.empty())
    for (std::size_t k = rank; k-- > 0;) perm.push_back(std::int64_t(k));
  if (perm.size() != rank) call.fail("perm must name every axis once");
  std::vector<bool> seen(rank, false);
  for (std::int64_t p : perm) {
    if (p < 0 || p >= std::int64_t(rank) || seen[std::size_t(p)]) call.fail("perm must name every axis once");
    seen[std::size_t(p)] = true;
  }
  Shape shape(rank), in_strides = strides_of(x.shape), permuted(rank);
  for (std::size_t k = 0; k < rank; ++k) {
    shape[k] = x.shape[std::size_t(perm[k])];
    permuted[k] = in_strides[std::size_t(perm[k])];
  }
  std::vector<std::int64_t> from(std::size_t(count(shape)));
  Shape at(rank, 0);
  std::int64_t flat = 0;
  for (auto& f : from) {
    f = flat;
    for (std::size_t k = rank; k-- > 0;) {
      flat += permuted[k];
      if (++at[k] < shape[k]) break;
      flat -= permuted[k] * shape[k];
      at[k] = 0;
    }
  }
  return gather_flat(x, shape, from);
}

HostTensor concat(const NodeCall& call) {
  const HostTensor& first = call.input(0);
  const std::int64_t rank = std::int64_t(first.shape.size());
  const std::int64_t axis = call.axis(call.int_attr("axis", 0), rank);
  Shape shape = first.shape;
  shape[std::size_t(axis)] = 0;
  for (std::size_t k = 0; k < call.in.size(); ++k) {
    const HostTensor& t = call.input(k);
    if (t.element != first.element || std::int64_t(t.shape.size()) != rank) call.fail("inputs differ in type or rank");
    for (std::int64_t d = 0; d < rank; ++d)
      if (d != axis && t.shape[std::size_t(d)] != first.shape[std::size_t(d)]) call.fail("inputs differ off the axis");
    shape[std::size_t(axis)] += t.shape[std::size_t(axis)];
  }
  HostTensor out;
  out.element = first.element;
  out.shape = shape;
  [[maybe_unused]] const auto [outer, total, inner] = around(shape, axis);
  for (std::int64_t o = 0; o < outer; ++o)
    for (std::size_t k = 0; k < call.in.size(); ++k) {
      const HostTensor& t = *call.in[k];
      const std::int64_t run = t.shape[std::size_t(axis)] * inner;
      if (t.element == Element::f32) out.f.insert(out.f.end(), t.f.begin() + o * run, t.f.begin() + (o + 1) * run);
      else out.i.insert(out.i.end(), t.i.begin() + o * run, t.i.begin() + (o + 1) * run);
    }
  return out;
}

HostTensor slice(const NodeCall& call) {
  const HostTensor& x = call.input(0);
  const std::int64_t rank = std::int64_t(x.shape.size());
  const HostTensor& starts = call.ints(1);
  const HostTensor& ends = call.ints(2);
  const std::size_t n = starts.i.size();
  if (ends.i.size() != n) call.fail("starts and ends differ in length");
  Shape axes(n), steps(n, 1);
  std::iota(axes.begin(), axes.end(), 0);
  if (const HostTensor* a = call.optional(3)) axes = a->i;
  if (const HostTensor* s = call.optional(4)) steps = s->i;
  if (axes.size() != n || steps.size() != n) call.fail("axes and steps must match starts");
  Shape begin(std::size_t(rank), 0), step(std::size_t(rank), 1), shape = x.shape;
  for (std::size_t k = 0; k < n; ++k) {
    const std::size_t a = std::size_t(call.axis(axes[k], rank));
    const std::int64_t dim = x.shape[a], s = steps[k];
    if (s == 0) call.fail("a step of 0");
    std::int64_t b = starts.i[k], e = ends.i[k];
    if (b < 0) b += dim;
    if (e < 0) e += dim;
    if (s > 0) {
      b = std::clamp<std::int64_t>(b, 0, dim);
      e = std::clamp<std::int64_t>(e, 0, dim);
      shape[a] = e > b ? (e - b + s - 1) / s : 0;
    } else {
      b = std::clamp<std::int64_t>(b, 0, dim - 1);
      e = std::clamp<std::int64_t>(e, -1, dim - 1);
      shape[a] = b > e ? (b - e - s - 1) / -s : 0;
    }
    begin[a] = b;
    step[a] = s;
  }
  const Shape in_strides = strides_of(x.shape);
  std::vector<std::int64_t> from(std::size_t(count(shape)));
  Shape at(std::size_t(rank), 0);
  for (auto& f : from) {
    std::int64_t flat = 0;
    for (std::size_t k = 0; k < std::size_t(rank); ++k) flat += (begin[k] + at[k] * step[k]) * in_strides[k];
    f = flat;
    for (std::size_t k = std::size_t(rank); k-- > 0;) {
      if (++at[k] < shape[k]) break;
      at[k] = 0;
    }
  }
  return gather_flat(x, shape, from);
}

HostTensor gather(const NodeCall& call) {
  const HostTensor& x = call.input(0);
  const HostTensor& indices = call.ints(1);
  const std::int64_t rank = std::int64_t(x.shape.size());
  if (rank == 0) call.fail("data must have at least one dimension");
  const std::int64_t axis = call.axis(call.int_attr("axis", 0), rank);
  const auto [outer, size, inner] = around(x.shape, axis);
  Shape shape(x.shape.begin(), x.shape.begin() + axis);
  shape.insert(shape.end(), indices.shape.begin(), indices.shape.end());
  shape.insert(shape.end(), x.shape.begin() + axis + 1, x.shape.end());
  std::vector<std::int64_t> from;
  from.reserve(std::size_t(count(shape)));
  for (std::int64_t o = 0; o < outer; ++o)
    for (std::int64_t index : indices.i) {
      if (index < -size || index >= size) call.fail(fmt::format("index {} is out of range for {} entries", index, size));
      const std::int64_t row = index < 0 ? index + size : index;
      for (std::int64_t i = 0; i < inner; ++i) from.push_back((o * size + row) * inner + i);
    }
  return gather_flat(x, shape, from);
}

HostTensor unsqueeze(const NodeCall& call) {
  const HostTensor& x = call.input(0);
  const HostTensor& axes = call.ints(1);
  const std::int64_t rank = std::int64_t(x.shape.size() + axes.i.size());
  std::vector<bool> added(std::size_t(rank), false);
  for (std::int64_t a : axes.i) {
    const std::int64_t k = call.axis(a, rank);
    if (added[std::size_t(k)]) call.fail("an axis is named twice");
    added[std::size_t(k)] = true;
  }
  Shape shape;
  std::size_t next = 0;
  for (std::int64_t k = 0; k < rank; ++k) shape.push_back(added[std::size_t(k)] ? 1 : x.shape[next++]);
  return with_shape(x, shape);
}

HostTensor squeeze(const NodeCall& call) {
  const HostTensor& x = call.input(0);
  const std::int64_t rank = std::int64_t(x.shape.size());
  std::vector<bool> removed(std::size_t(rank), false);
  if (const HostTensor* axes = call.optional(1)) {
    for (std::int64_t a : axes->i) {
      const std::int64_t k = call.axis(a, rank);
      if (x.shape[std::size_t(k)] != 1) call.fail(fmt::format("axis {} has size {}, not 1", k, x.shape[std::size_t(k)]));
      removed[std::size_t(k)] = true;
    }
  } else {
    for (std::int64_t k = 0; k < rank; ++k) removed[std::size_t(k)] = x.shape[std::size_t(k)] == 1;
  }
  Shape shape;
  for (std::int64_t k = 0; k < rank; ++k)
    if (!removed[std::size_t(k)]) shape.push_back(x.shape[std::size_t(k)]);
  return with_shape(x, shape);
}

HostTensor shape_of(const NodeCall& call) {
  const Shape& s = call.input(0).shape;
  const std::int64_t rank = std::int64_t(s.size());
  std::int64_t start = call.int_attr("start", 0), end = call.int_attr("end", rank);
  if (start < 0) start += rank;
  if (end < 0) end += rank;
  start = std::clamp<std::int64_t>(start, 0, rank);
  end = std::clamp<std::int64_t>(end, 0, rank);
  Shape dims(s.begin() + start, s.begin() + std::max(start, end));
  return HostTensor::ints({std::int64_t(dims.size())}, dims);
}

HostTensor cast(const NodeCall& call) {
  const HostTensor& x = call.input(0);
  const int to = int(call.int_attr("to", 0));
  const bool to_float = to == onnx::TensorProto::FLOAT || to == onnx::TensorProto::FLOAT16 ||
                        to == onnx::TensorProto::BFLOAT16 || to == onnx::TensorProto::DOUBLE;
  const bool to_int = to == onnx::TensorProto::INT64 || to == onnx::TensorProto::INT32 || to == onnx::TensorProto::BOOL;
  if (!to_float && !to_int) call.fail(fmt::format("casting to element type {} is not supported", to));
  const bool to_bool = to == onnx::TensorProto::BOOL;
  if (to_float) {
    if (x.element == Element::f32) return x;
    std::vector<float> out(x.i.begin(), x.i.end());
    return HostTensor::floats(x.shape, std::move(out));
  }
  std::vector<std::int64_t> out(std::size_t(x.numel()));
  for (std::size_t k = 0; k < out.size(); ++k) {
    if (x.element == Element::f32) {
      const float v = x.f[k];
      if (!to_bool && !(std::fabs(v) < 9.2e18f)) call.fail("a float out of int64's range");
      out[k] = to_bool ? v != 0.0f : std::int64_t(v);
    } else {
      out[k] = to_bool ? x.i[k] != 0 : x.i[k];
    }
  }
  return HostTensor::ints(x.shape, std::move(out));
}

HostTensor constant(const NodeCall& call, const std::filesystem::path& directory) {
  if (const auto* a = call.attribute("value")) {
    Result<HostTensor> t = tensor_from_proto(a->t(), directory, std::int64_t(1) << 30);
    if (!t) call.fail(t.status().message());
    return std::move(t).value();
  }
  if (const auto* a = call.attribute("value_float")) return HostTensor::floats({}, {a->f()});
  if (const auto* a = call.attribute("value_floats")) return HostTensor::floats({a->floats_size()}, {a->floats().begin(), a->floats().end()});
  if (const auto* a = call.attribute("value_int")) return HostTensor::ints({}, {a->i()});
  if (const auto* a = call.attribute("value_ints")) return HostTensor::ints({a->ints_size()}, {a->ints().begin(), a->ints().end()});
  call.fail("needs one of value, value_float(s), value_int(s)");
}

HostTensor constant_of_shape(const NodeCall& call, const std::filesystem::path& directory) {
  const Shape shape = call.ints(0).i;
  for (std::int64_t d : shape)
    if (d < 0) call.fail("negative size");
  HostTensor value = HostTensor::floats({1}, {0.0f});
  if (const auto* a = call.attribute("value")) {
    Result<HostTensor> t = tensor_from_proto(a->t(), directory, 64);
    if (!t || t->numel() != 1) call.fail("value must be one element");
    value = std::move(t).value();
  }
  if (value.element == Element::f32) return HostTensor::floats(shape, std::vector<float>(std::size_t(count(shape)), value.f[0]));
  return HostTensor::ints(shape, std::vector<std::int64_t>(std::size_t(count(shape)), value.i[0]));
}

HostTensor expand(const NodeCall& call) {
  const HostTensor& x = call.input(0);
  const Shape shape = broadcast(call, {x.shape, call.ints(1).i});
  return gather_flat(x, shape, broadcast_index(x.shape, shape));
}

HostTensor where(const NodeCall& call) {
  const HostTensor& condition = call.ints(0);
  const HostTensor& a = call.input(1);
  const HostTensor& b = call.input(2);
  if (a.element != b.element) call.fail("X and Y differ in element type");
  const Shape shape = broadcast(call, {condition.shape, a.shape, b.shape});
  const auto ic = broadcast_index(condition.shape, shape), ia = broadcast_index(a.shape, shape),
             ib = broadcast_index(b.shape, shape);
  HostTensor out;
  out.element = a.element;
  out.shape = shape;
  for (std::size_t k = 0; k < ic.size(); ++k) {
    const bool take_a = condition.i[std::size_t(ic[k])] != 0;
    if (a.element == Element::f32) out.f.push_back(take_a ? a.f[std::size_t(ia[k])] : b.f[std::size_t(ib[k])]);
    else out.i.push_back(take_a ? a.i[std::size_t(ia[k])] : b.i[std::size_t(ib[k])]);
  }
  return out;
}

HostTensor flatten(const NodeCall& call) {
  const HostTensor& x = call.input(0);
  const std::int64_t rank = std::int64_t(x.shape.size());
  std::int64_t axis = call.int_attr("axis", 1);
  if (axis < -rank || axis > rank) call.fail("axis out of range");
  if (axis < 0) axis += rank;
  std::int64_t outer = 1;
  for (std::int64_t k = 0; k < axis; ++k) outer *= x.shape[std::size_t(k)];
  return with_shape(x, {outer, x.numel() / std::max<std::int64_t>(outer, 1)});
}

HostTensor run_node(const NodeCall& call, const std::filesystem::path& directory) {
  const std::string& op = call.node.op_type();
  if (op == "Add") return binary(call, [](float a, float b) { return a + b; });
  if (op == "Sub") return binary(call, [](float a, float b) { return a - b; });
  if (op == "Mul") return binary(call, [](float a, float b) { return a * b; });
  if (op == "Div") return binary(call, [](float a, float b) { return a / b; });
  if (op == "Pow") return binary(call, [](float a, float b) { return std::pow(a, b); });
  if (op == "Equal") return binary(call, [](float a, float b) { return a == b ? 1.0f : 0.0f; }, true);
  if (op == "Sigmoid") return unary(call, [](float v) { return 1.0f / (1.0f + std::exp(-v)); });
  if (op == "Erf") return unary(call, [](float v) { return std::erf(v); });
  if (op == "Sqrt") return unary(call, [](float v) { return std::sqrt(v); });
  if (op == "Tanh") return unary(call, [](float v) { return std::tanh(v); });
  if (op == "Relu") return unary(call, [](float v) { return std::max(v, 0.0f); });
  if (op == "Neg") {
    HostTensor out = call.input(0);
    for (float& v : out.f) v = -v;
    for (std::int64_t& v : out.i) v = -v;
    return out;
  }
  if (op == "MatMul") return matmul(call);
  if (op == "Gemm") return gemm(call);
  if (op == "Conv") return conv(call);
  if (op == "Softmax") return softmax(call);
  if (op == "LayerNormalization") return layer_norm(call);
  if (op == "ReduceMean") return reduce_mean(call);
  if (op == "Reshape") return reshape(call);
  if (op == "Transpose") return transpose(call);
  if (op == "Concat") return concat(call);
  if (op == "Slice") return slice(call);
  if (op == "Gather") return gather(call);
  if (op == "Unsqueeze") return unsqueeze(call);
  if (op == "Squeeze") return squeeze(call);
  if (op == "Shape") return shape_of(call);
  if (op == "Cast") return cast(call);
  if (op == "Constant") return constant(call, directory);
  if (op == "ConstantOfShape") return constant_of_shape(call, directory);
  if (op == "Expand") return expand(call);
  if (op == "Where") return where(call);
  if (op == "Flatten") return flatten(call);
  if (op == "Identity") return call.input(0);
  call.fail("operator not implemented on the CPU");
}

}  // namespace

Result<HostTensor> run_node_on_cpu(const onnx::NodeProto& node, int index, std::vector<const HostTensor*> inputs,
                                   const std::filesystem::path& directory) {
  return guard_result<HostTensor>([&] {
    NodeCall call{node, index, std::move(inputs)};
    return run_node(call, directory);
  });
}

Result<std::vector<HostTensor>> run_on_cpu(const Graph& graph, const std::map<std::string, HostTensor>& inputs) {
  return guard_result<std::vector<HostTensor>>([&] {
    std::map<std::string, HostTensor> values;
    std::map<std::string, const HostTensor*> named;
    for (const auto& [name, tensor] : graph.initializers) named[name] = &tensor;
    for (const Graph::Value& input : graph.inputs) {
      const auto it = inputs.find(input.name);
      if (it == inputs.end()) refuse(fmt::format("input '{}' was not given", input.name));
      const HostTensor& t = it->second;
      if (t.element != input.element || t.shape != input.shape ||
          std::int64_t(t.element == Element::f32 ? t.f.size() : t.i.size()) != count(input.shape))
        refuse(fmt::format("input '{}' must be {} of shape [{}], got {} of [{}]", input.name,
                           input.element == Element::f32 ? "float" : "integer", fmt::join(input.shape, ", "),
                           t.element == Element::f32 ? "float" : "integer", fmt::join(t.shape, ", ")));
      named[input.name] = &t;
    }
    for (const auto& [name, tensor] : inputs)
      if (!named.count(name)) refuse(fmt::format("'{}' is not an input of the graph", name));
    const auto& nodes = graph.proto().node();
    // Each computed value is dropped after the last node that reads it (graph
    // outputs never), so memory holds the live values, not the whole history.
    std::map<std::string, int> last_read;
    for (int n = 0; n < nodes.size(); ++n)
      for (const auto& input : nodes[n].input()) last_read[input] = n;
    for (const Graph::Value& output : graph.outputs) last_read[output.name] = nodes.size();
    for (int n = 0; n < nodes.size(); ++n) {
      const onnx::NodeProto& node = nodes[n];
      NodeCall call{node, n, {}};
      for (const auto& input : node.input()) call.in.push_back(input.empty() ? nullptr : named.at(input));
      HostTensor out = run_node(call, graph.directory);
      if (node.output_size() < 1) call.fail("has no output");
      auto [it, inserted] = values.insert_or_assign(node.output(0), std::move(out));
      named[node.output(0)] = &it->second;
      for (const auto& input : node.input())
        if (last_read[input] == n && values.erase(input) > 0) named.erase(input);
    }
    std::vector<HostTensor> outputs;
    for (const Graph::Value& output : graph.outputs) outputs.push_back(*named.at(output.name));
    return outputs;
  });
}

}  // namespace hostrun::onnx_vision
