// Fused per-record statistics for selfnorm.recording (CPU, float32).
//
// Per activation tensor one pass computes sum, zeros, saturated values, min, max and the
// histogram (bin indices of a block of values go through an L1-sized buffer and are counted by
// pairs of values where the bins are few), a second pass the squared deviations from the mean
// (exact two-pass variance); dead units take a pass over the units' maxima, only for the ReLU
// family. The tensors of one call are spread over torch's
// intra-op threads; every task writes only its own output rows, and partial weight sums are added
// in block order, so the results do not depend on the number of threads. Two pure functions,
// called from Python with tensors and output buffers; no hooks, no state. An opt-in
// implementation of selfnorm/recording/reduce.py (built on first use by
// selfnorm/recording/kernel.py); the tests compare the two.
#include <torch/extension.h>

#include <ATen/Parallel.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

namespace {

constexpr int64_t kBlock = 4096;  // float partial sums over at most this many values
constexpr int64_t kStats = 7;     // mean, var, min, max, #zeros, #saturated, #dead units

struct Binning {
  float scale;   // bins / (high - low)
  float shift;   // 1 - low * scale: value -> 1 + bin index before the clamp
  int64_t bins;  // bins + 2 (underflow, overflow)
};

struct Scratch {
  std::vector<float> unit_max;
  alignas(64) int32_t index[kBlock];  // bin indices of one block
  std::vector<int64_t> counts;        // four interleaved sub-histograms (many bins)
  std::vector<uint16_t> pairs;        // two (bins, bins) tables of pair counts (few bins)
};

// Pairs of values are counted in (bins, bins) tables up to this many bins (+ 2): two tables of
// uint16 cells stay in a 48 KB L1 cache; more bins count values one by one.
constexpr int64_t kPairBins = 96;
// Values between two drains of the pair tables: a cell counts at most one pair in four of
// them (< 2^16).
constexpr int64_t kChunk = int64_t{1} << 17;

constexpr int kLanes = 32;  // independent accumulators: the adds do not wait on each other

// Bin index of a value: 1 + floor((x - low) * scale) clamped to [0, bins + 1]; NaN -> bins + 1
// (the first comparison is false for NaN, the second keeps it).
inline int32_t bin_index(float v, const Binning& bn, float top) {
  float k = std::fma(v, bn.scale, bn.shift);
  k = k <= top ? k : top;
  k = k >= 0.f ? k : 0.f;
  return static_cast<int32_t>(k);
}

struct FirstPass {
  double sum = 0.0;
  int64_t zeros = 0, sat = 0;
  float mn = std::numeric_limits<float>::infinity(), mx = -mn;
};

// Add the bin indices of a block to four interleaved sub-histograms (so that an increment
// does not wait for the previous one to the same bin).
inline void count_block(const int32_t* index, int64_t n, int64_t bins, int64_t* counts) {
  int64_t* c0 = counts;
  int64_t* c1 = counts + bins;
  int64_t* c2 = counts + 2 * bins;
  int64_t* c3 = counts + 3 * bins;
  int64_t i = 0;
  for (; i + 4 <= n; i += 4) {
    ++c0[index[i]];
    ++c1[index[i + 1]];
    ++c2[index[i + 2]];
    ++c3[index[i + 3]];
  }
  for (; i < n; ++i) ++c0[index[i]];
}

// Count a block's bin indices by pairs: values 2k and 2k + 1 add one to cell
// (bin(x[2k]), bin(x[2k+1])) of a (bins, bins) table, alternating between two tables so that
// consecutive increments rarely wait on each other. A count costs a load and a store whatever
// it counts: pairs halve them, and the pair indices are formed in a vectorized pass over the
// index buffer (overwriting its first half). An odd last value goes straight to counts.
inline void count_pairs(int32_t* index, int64_t n, int64_t bins, uint16_t* t0, uint16_t* t1,
                        int64_t* counts) {
  const int64_t pairs = n / 2;
  const int32_t stride = static_cast<int32_t>(bins);
#pragma omp simd
  for (int64_t k = 0; k < pairs; ++k) index[k] = index[2 * k] * stride + index[2 * k + 1];
  int64_t k = 0;
  for (; k + 2 <= pairs; k += 2) {
    ++t0[index[k]];
    ++t1[index[k + 1]];
  }
  if (k < pairs) ++t0[index[k]];
  if (n % 2) ++counts[index[n - 1]];
}

// Add both pair tables' marginals to counts (row a: pairs whose first value is in bin a;
// column b: pairs whose second value is in bin b) and zero the tables.
void drain_pairs(uint16_t* tables, int64_t bins, int64_t* counts) {
  const int64_t cells = bins * bins;
  int64_t col[kPairBins] = {};
  for (int64_t a = 0; a < bins; ++a) {
    const uint16_t* r0 = tables + a * bins;
    const uint16_t* r1 = r0 + cells;
    int64_t row = 0;
    for (int64_t b = 0; b < bins; ++b) {
      const int64_t v = int64_t{r0[b]} + r1[b];
      row += v;
      col[b] += v;
    }
    counts[a] += row;
  }
  for (int64_t b = 0; b < bins; ++b) counts[b] += col[b];
  std::fill(tables, tables + 2 * cells, uint16_t{0});
}

// One pass: sum, #zeros, #(x <= thr) (kSat), min, max, and the histogram. Blocks of kBlock
// values: lane-wise float partial sums then double; the bin indices of a block go through a
// small buffer (index, kBlock entries) that stays in the L1 cache, then are counted by pairs
// (kPairs: into the two zeroed tables, drained into counts, the zeroed histogram) or one by one
// (into counts: four zeroed sub-histograms).
template <bool kSat, bool kPairs>
FirstPass first_pass(const float* x, int64_t n, float thr, const Binning& bn, int32_t* index,
                     uint16_t* tables, int64_t* counts) {
  const float top = static_cast<float>(bn.bins - 1);
  alignas(64) float sum[kLanes], lo[kLanes], hi[kLanes];
  alignas(64) int32_t zeros[kLanes], sat[kLanes];
  for (int j = 0; j < kLanes; ++j) {
    sum[j] = 0.f;
    lo[j] = std::numeric_limits<float>::infinity();
    hi[j] = -lo[j];
    zeros[j] = sat[j] = 0;
  }
  FirstPass r;
  for (int64_t b = 0; b < n; b += kBlock) {
    const float* xb = x + b;
    const int64_t m = std::min(kBlock, n - b);
    const int64_t full = m - m % kLanes;
    for (int64_t i = 0; i < full; i += kLanes) {
#pragma omp simd
      for (int j = 0; j < kLanes; ++j) {
        const float v = xb[i + j];
        sum[j] += v;
        zeros[j] += v == 0.f;
        if (kSat) sat[j] += v <= thr;
        lo[j] = std::min(lo[j], v);
        hi[j] = std::max(hi[j], v);
        index[i + j] = bin_index(v, bn, top);
      }
    }
    float part = 0.f;
    for (int j = 0; j < kLanes; ++j) {
      part += sum[j];
      sum[j] = 0.f;
    }
    r.sum += part;
    for (int64_t i = full; i < m; ++i) {
      const float v = xb[i];
      r.sum += v;
      r.zeros += v == 0.f;
      if (kSat) r.sat += v <= thr;
      r.mn = std::min(r.mn, v);
      r.mx = std::max(r.mx, v);
      index[i] = bin_index(v, bn, top);
    }
    if (kPairs) {
      count_pairs(index, m, bn.bins, tables, tables + bn.bins * bn.bins, counts);
      if ((b + m) % kChunk == 0 || b + m == n) drain_pairs(tables, bn.bins, counts);
    } else {
      count_block(index, m, bn.bins, counts);
    }
  }
  for (int j = 0; j < kLanes; ++j) {
    r.zeros += zeros[j];
    r.sat += sat[j];
    r.mn = std::min(r.mn, lo[j]);
    r.mx = std::max(r.mx, hi[j]);
  }
  return r;
}

// Sum of term(x[i]): lane-wise float partial sums over blocks of kBlock values, then double.
template <typename F>
double lane_sum(const float* x, int64_t n, const F& term) {
  alignas(64) float acc[kLanes] = {};
  double s = 0.0;
  const int64_t full = n - n % kLanes;
  for (int64_t i = 0; i < full;) {
    const int64_t end = std::min(full, i + kBlock);
    for (; i < end; i += kLanes) {
#pragma omp simd
      for (int j = 0; j < kLanes; ++j) acc[j] += term(x[i + j]);
    }
    float part = 0.f;
    for (int j = 0; j < kLanes; ++j) {
      part += acc[j];
      acc[j] = 0.f;
    }
    s += part;
  }
  for (int64_t i = full; i < n; ++i) s += term(x[i]);
  return s;
}

// Sum of (x - mean)^2: the second of two passes, accurate whatever the mean.
double squared_deviations(const float* x, int64_t n, double mean) {
  const float m = static_cast<float>(mean);
  return lane_sum(x, n, [m](float v) {
    const float d = v - m;
    return d * d;
  });
}

double plain_sum(const float* x, int64_t n) {
  return lane_sum(x, n, [](float v) { return v; });
}

// Units (dim 1) whose maximum over the batch (dim 0) and the rest (dims 2...) is <= 0.
int64_t dead_units(const float* x, int64_t lead, int64_t units, int64_t inner, float* unit_max) {
  const float neg = -std::numeric_limits<float>::infinity();
  std::fill(unit_max, unit_max + units, neg);
  for (int64_t b = 0; b < lead; ++b) {
    const float* row = x + b * units * inner;
    if (inner == 1) {
#pragma omp simd
      for (int64_t u = 0; u < units; ++u) unit_max[u] = std::max(unit_max[u], row[u]);
    } else {
      for (int64_t u = 0; u < units; ++u) {
        const float* p = row + u * inner;
        float m = unit_max[u];
#pragma omp simd reduction(max : m)
        for (int64_t i = 0; i < inner; ++i) m = std::max(m, p[i]);
        unit_max[u] = m;
      }
    }
  }
  int64_t dead = 0;
  for (int64_t u = 0; u < units; ++u) dead += unit_max[u] <= 0.f;
  return dead;
}

// thr: saturation threshold (-inf: none); dead: count dead units (ReLU family).
void activation_task(const at::Tensor& t, float thr, bool dead, const Binning& bn, Scratch& s,
                     double* stats, int64_t* hist) {
  const float* x = t.data_ptr<float>();
  const int64_t n = t.numel();
  const int64_t lead = t.dim() >= 2 ? t.size(0) : 1;
  const int64_t units = t.dim() >= 2 ? t.size(1) : n;
  const int64_t inner = n / std::max<int64_t>(lead * units, 1);
  if (static_cast<int64_t>(s.unit_max.size()) < units) s.unit_max.resize(units);
  const bool with_sat = thr > -std::numeric_limits<float>::infinity();
  const bool by_pairs = bn.bins <= kPairBins;
  FirstPass r;
  if (by_pairs) {
    if (static_cast<int64_t>(s.pairs.size()) != 2 * bn.bins * bn.bins)
      s.pairs.assign(2 * bn.bins * bn.bins, 0);  // stays zeroed: drain_pairs clears the tables
    std::fill(hist, hist + bn.bins, int64_t{0});
    uint16_t* t = s.pairs.data();
    r = with_sat ? first_pass<true, true>(x, n, thr, bn, s.index, t, hist)
                 : first_pass<false, true>(x, n, thr, bn, s.index, t, hist);
  } else {
    s.counts.assign(4 * bn.bins, 0);
    int64_t* c = s.counts.data();
    r = with_sat ? first_pass<true, false>(x, n, thr, bn, s.index, nullptr, c)
                 : first_pass<false, false>(x, n, thr, bn, s.index, nullptr, c);
  }
  const double mean = r.sum / static_cast<double>(n);
  const double nan = std::numeric_limits<double>::quiet_NaN();
  // NaN never wins a std::min/max: like torch.amin/amax, a NaN anywhere makes them NaN
  // (then the sum is NaN too, which is checked first: the scan runs only then)
  const bool has_nan = std::isnan(r.sum) && std::any_of(x, x + n, [](float v) { return v != v; });
  stats[0] = mean;
  stats[1] = squared_deviations(x, n, mean) / static_cast<double>(n);
  stats[2] = has_nan ? nan : r.mn;
  stats[3] = has_nan ? nan : r.mx;
  stats[4] = static_cast<double>(r.zeros);
  stats[5] = static_cast<double>(r.sat);
  stats[6] = dead ? static_cast<double>(dead_units(x, lead, units, inner, s.unit_max.data())) : nan;
  if (!by_pairs) {
    const int64_t* c = s.counts.data();
    const int64_t bins = bn.bins;
    for (int64_t k = 0; k < bins; ++k)
      hist[k] = c[k] + c[bins + k] + c[2 * bins + k] + c[3 * bins + k];
  }
}


// Rows [r0, r1) of a (units, fan) weight: sums over those units of omega, omega^2, tau, tau^2
// with omega = sum_i w_i and tau = sum_i w_i^2 of each unit.
void weight_task(const float* w, int64_t fan, int64_t r0, int64_t r1, double* out) {
  double so = 0.0, so2 = 0.0, st = 0.0, st2 = 0.0;
  for (int64_t r = r0; r < r1; ++r) {
    const float* row = w + r * fan;
    double omega = 0.0, tau = 0.0;
    for (int64_t b = 0; b < fan; b += kBlock) {
      const int64_t e = std::min(fan, b + kBlock);
      float a = 0.f, a2 = 0.f;
#pragma omp simd reduction(+ : a, a2)
      for (int64_t i = b; i < e; ++i) {
        a += row[i];
        a2 += row[i] * row[i];
      }
      omega += a;
      tau += a2;
    }
    so += omega;
    so2 += omega * omega;
    st += tau;
    st2 += tau * tau;
  }
  out[0] = so;
  out[1] = so2;
  out[2] = st;
  out[3] = st2;
}

void check_input(const at::Tensor& t, const char* what) {
  TORCH_CHECK(t.device().is_cpu() && t.scalar_type() == at::kFloat && t.is_contiguous(),
              what, " must be contiguous float32 CPU tensors (got ", t.scalar_type(), " on ",
              t.device(), t.is_contiguous() ? "" : ", not contiguous", ")");
  TORCH_CHECK(t.numel() > 0, what, " must not be empty");
}

}  // namespace

// ---- entry points: the recorder's hooks write into one record's buffers ----------------------

namespace {

void check_rows(const at::Tensor& out, int64_t rows, int64_t cols, at::ScalarType type,
                const char* what) {
  TORCH_CHECK(out.device().is_cpu() && out.scalar_type() == type && out.is_contiguous() &&
                  out.dim() == 2 && out.size(0) >= rows && (cols < 0 || out.size(1) == cols),
              what, ": output buffer of the wrong shape or type");
}

// Run task(k) for k in [0, n): inline for one task, else over torch's intra-op threads.
template <typename F>
void run_tasks(int64_t n, const F& task) {
  const int64_t threads = std::min<int64_t>(n, at::get_num_threads());
  if (threads <= 1 || at::in_parallel_region()) {
    for (int64_t k = 0; k < n; ++k) task(k);
    return;
  }
  std::atomic<int64_t> next{0};
  at::parallel_for(0, threads, 1, [&](int64_t, int64_t) {
    for (int64_t k = next.fetch_add(1); k < n; k = next.fetch_add(1)) task(k);
  });
}

}  // namespace

// Statistics of xs[k] into row rows[k] of stats (R, 7), hist (R, bins + 2) and meta (R, 2)
// (numel, units): thresholds[k] is its saturation threshold (-inf: none), dead[k] whether to
// count dead units (else NaN).
void activations_into(const std::vector<at::Tensor>& xs, const std::vector<double>& thresholds,
                      const std::vector<bool>& dead, const std::vector<int64_t>& rows,
                      const at::Tensor& stats, const at::Tensor& hist, const at::Tensor& meta,
                      double scale, double shift) {
  TORCH_CHECK(xs.size() == thresholds.size() && xs.size() == rows.size() &&
                  xs.size() == dead.size(),
              "one threshold, dead flag and row per tensor");
  for (const auto& t : xs) check_input(t, "activations");
  int64_t top = 0;
  for (int64_t r : rows) {
    TORCH_CHECK(r >= 0, "row out of range");
    top = std::max(top, r + 1);
  }
  check_rows(stats, top, kStats, at::kDouble, "stats");
  check_rows(hist, top, -1, at::kLong, "hist");
  check_rows(meta, top, 2, at::kLong, "meta");
  TORCH_CHECK(hist.size(1) >= 3, "hist needs bins + 2 >= 3 columns");
  const Binning bn{static_cast<float>(scale), static_cast<float>(shift), hist.size(1)};
  double* ps = stats.data_ptr<double>();
  int64_t* ph = hist.data_ptr<int64_t>();
  run_tasks(xs.size(), [&](int64_t k) {
    thread_local Scratch s;  // buffers kept between calls
    activation_task(xs[k], static_cast<float>(thresholds[k]), dead[k], bn, s,
                    ps + kStats * rows[k], ph + bn.bins * rows[k]);
  });
  int64_t* pm = meta.data_ptr<int64_t>();
  for (size_t k = 0; k < xs.size(); ++k) {
    pm[2 * rows[k]] = xs[k].numel();
    pm[2 * rows[k] + 1] = xs[k].dim() >= 2 ? xs[k].size(1) : xs[k].numel();
  }
}

// Sums over units of omega, omega^2, tau, tau^2 of each (units, fan) weight into out (W, 4),
// in blocks of about 64k values over torch's threads, added up in block order (the same sums
// for any number of threads).
void check_weights(const std::vector<at::Tensor>& weights) {
  for (const auto& t : weights) {
    check_input(t, "weights");
    TORCH_CHECK(t.dim() == 2, "weights must be 2-D (units, fan), got ", t.dim(), "-D");
  }
}

void weights_into(const std::vector<at::Tensor>& weights, const at::Tensor& out) {
  check_weights(weights);
  check_rows(out, weights.size(), 4, at::kDouble, "weights");
  struct Block {
    int64_t layer, r0, r1;
  };
  std::vector<Block> blocks;
  for (size_t l = 0; l < weights.size(); ++l) {
    const int64_t rows = weights[l].size(0), fan = weights[l].size(1);
    const int64_t step = std::max<int64_t>(1, (int64_t{1} << 16) / fan);
    for (int64_t r = 0; r < rows; r += step)
      blocks.push_back({static_cast<int64_t>(l), r, std::min(rows, r + step)});
  }
  std::vector<double> partial(4 * blocks.size());
  run_tasks(blocks.size(), [&](int64_t k) {
    const Block& b = blocks[k];
    const at::Tensor& w = weights[b.layer];
    weight_task(w.data_ptr<float>(), w.size(1), b.r0, b.r1, partial.data() + 4 * k);
  });
  double* o = out.data_ptr<double>();
  std::fill(o, o + 4 * weights.size(), 0.0);
  for (size_t k = 0; k < blocks.size(); ++k)
    for (int j = 0; j < 4; ++j) o[4 * blocks[k].layer + j] += partial[4 * k + j];
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  const auto nogil = pybind11::call_guard<pybind11::gil_scoped_release>();
  m.def("activations_into", &activations_into, "Activation statistics into rows of buffers",
        nogil);
  m.def("weights_into", &weights_into, "Omega/tau sums of weight matrices into a buffer", nogil);
}
