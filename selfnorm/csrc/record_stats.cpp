// Fused per-record statistics for selfnorm.recording.ActivationRecorder (CPU, float32).
//
// One call reduces every captured activation tensor, every gradient and every weight matrix of
// a record, spread over torch's intra-op threads (a shared task counter, so threads that finish
// early take the next tensor). Each task writes only its own output slots and partial weight
// sums are combined in task order afterwards, so the results do not depend on the number of
// threads or on which thread ran what. Built on first use by selfnorm/record_kernel.py; the
// torch-ops path in recording.py computes the same quantities and the tests compare the two.
#include <torch/extension.h>

#include <ATen/Parallel.h>

#include <algorithm>
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
  std::vector<int32_t> index;
  std::vector<int64_t> counts;  // four interleaved sub-histograms
};

// sum, #zeros, #(x <= thr), #NaN, min, max; bin index of every value.
// The index: 1 + floor((x - low) * scale) clamped to [0, bins + 1]; NaN -> bins + 1
// (the first comparison is false for NaN, the second keeps it).
void first_pass(const float* x, int64_t n, float thr, const Binning& bn, int32_t* index,
                double* sum, int64_t* zeros, int64_t* sat, int64_t* nans, float* mn, float* mx) {
  const float top = static_cast<float>(bn.bins - 1);
  double s = 0.0;
  int64_t z = 0, t = 0, q = 0;
  float lo = std::numeric_limits<float>::infinity(), hi = -lo;
  for (int64_t b = 0; b < n; b += kBlock) {
    const int64_t e = std::min(n, b + kBlock);
    float a = 0.f, blo = lo, bhi = hi;
    int32_t bz = 0, bt = 0, bq = 0;
#pragma omp simd reduction(+ : a, bz, bt, bq) reduction(min : blo) reduction(max : bhi)
    for (int64_t i = b; i < e; ++i) {
      const float v = x[i];
      a += v;
      bz += v == 0.f;
      bt += v <= thr;
      bq += v != v;
      blo = std::min(blo, v);
      bhi = std::max(bhi, v);
      float k = std::fma(v, bn.scale, bn.shift);
      k = k <= top ? k : top;
      k = k >= 0.f ? k : 0.f;
      index[i] = static_cast<int32_t>(k);
    }
    s += a;
    z += bz;
    t += bt;
    q += bq;
    lo = blo;
    hi = bhi;
  }
  *sum = s;
  *zeros = z;
  *sat = t;
  *nans = q;
  *mn = lo;
  *mx = hi;
}

// sum of (x - mean)^2: the second of two passes, accurate whatever the mean.
double squared_deviations(const float* x, int64_t n, double mean) {
  const float m = static_cast<float>(mean);
  double s = 0.0;
  for (int64_t b = 0; b < n; b += kBlock) {
    const int64_t e = std::min(n, b + kBlock);
    float a = 0.f;
#pragma omp simd reduction(+ : a)
    for (int64_t i = b; i < e; ++i) {
      const float d = x[i] - m;
      a += d * d;
    }
    s += a;
  }
  return s;
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

void count_bins(const int32_t* index, int64_t n, int64_t bins, int64_t* counts, int64_t* out) {
  std::fill(counts, counts + 4 * bins, 0);
  int64_t* c0 = counts;
  int64_t* c1 = counts + bins;
  int64_t* c2 = counts + 2 * bins;
  int64_t* c3 = counts + 3 * bins;
  int64_t i = 0;
  for (; i + 4 <= n; i += 4) {  // four sub-histograms: no wait on the previous increment
    ++c0[index[i]];
    ++c1[index[i + 1]];
    ++c2[index[i + 2]];
    ++c3[index[i + 3]];
  }
  for (; i < n; ++i) ++c0[index[i]];
  for (int64_t k = 0; k < bins; ++k) out[k] = c0[k] + c1[k] + c2[k] + c3[k];
}

void activation_task(const at::Tensor& t, float thr, const Binning& bn, Scratch& s,
                     double* stats, int64_t* hist) {
  const float* x = t.data_ptr<float>();
  const int64_t n = t.numel();
  const int64_t lead = t.dim() >= 2 ? t.size(0) : 1;
  const int64_t units = t.dim() >= 2 ? t.size(1) : n;
  const int64_t inner = n / std::max<int64_t>(lead * units, 1);
  if (static_cast<int64_t>(s.index.size()) < n) s.index.resize(n);
  if (static_cast<int64_t>(s.unit_max.size()) < units) s.unit_max.resize(units);
  if (static_cast<int64_t>(s.counts.size()) < 4 * bn.bins) s.counts.resize(4 * bn.bins);
  double sum;
  int64_t zeros, sat, nans;
  float mn, mx;
  first_pass(x, n, thr, bn, s.index.data(), &sum, &zeros, &sat, &nans, &mn, &mx);
  const double mean = sum / static_cast<double>(n);
  const double nan = std::numeric_limits<double>::quiet_NaN();
  stats[0] = mean;
  stats[1] = squared_deviations(x, n, mean) / static_cast<double>(n);
  stats[2] = nans ? nan : mn;  // like torch.amin/amax: NaN wins
  stats[3] = nans ? nan : mx;
  stats[4] = static_cast<double>(zeros);
  stats[5] = static_cast<double>(sat);
  stats[6] = static_cast<double>(dead_units(x, lead, units, inner, s.unit_max.data()));
  count_bins(s.index.data(), n, bn.bins, s.counts.data(), hist);
}

void gradient_task(const at::Tensor& g, double* out) {
  const float* x = g.data_ptr<float>();
  const int64_t n = g.numel();
  double sum = 0.0;
  for (int64_t b = 0; b < n; b += kBlock) {
    const int64_t e = std::min(n, b + kBlock);
    float a = 0.f;
#pragma omp simd reduction(+ : a)
    for (int64_t i = b; i < e; ++i) a += x[i];
    sum += a;
  }
  const double mean = sum / static_cast<double>(n);
  out[0] = mean;
  out[1] = squared_deviations(x, n, mean) / static_cast<double>(n);
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

// acts: activation tensors (batch, units, ...); thresholds: the saturation threshold of each
// (-inf where none); grads: gradient tensors; weights: (units, fan) weight matrices.
// Returns (stats (A, 7) float64, hist (A, bins + 2) int64, grad (G, 2) float64 mean and var,
// weights (W, 4) float64 sums over units of omega, omega^2, tau, tau^2).
std::vector<at::Tensor> record_stats(const std::vector<at::Tensor>& acts,
                                     const std::vector<double>& thresholds,
                                     const std::vector<at::Tensor>& grads,
                                     const std::vector<at::Tensor>& weights, double scale,
                                     double shift, int64_t bins) {
  TORCH_CHECK(acts.size() == thresholds.size(), "one threshold per activation tensor");
  TORCH_CHECK(bins >= 3 && bins <= (int64_t{1} << 30), "bins + 2 out of range: ", bins);
  for (const auto& t : acts) check_input(t, "activations");
  for (const auto& t : grads) check_input(t, "gradients");
  for (const auto& t : weights) {
    check_input(t, "weights");
    TORCH_CHECK(t.dim() == 2, "weights must be 2-D (units, fan), got ", t.dim(), "-D");
  }
  const Binning bn{static_cast<float>(scale), static_cast<float>(shift), bins};
  const int64_t na = acts.size(), ng = grads.size(), nw = weights.size();

  struct WeightBlock {
    int64_t layer, r0, r1;
  };
  std::vector<WeightBlock> blocks;  // rows of about 64k values per task
  for (int64_t l = 0; l < nw; ++l) {
    const int64_t rows = weights[l].size(0), fan = weights[l].size(1);
    const int64_t step = std::max<int64_t>(1, (int64_t{1} << 16) / fan);
    for (int64_t r = 0; r < rows; r += step) blocks.push_back({l, r, std::min(rows, r + step)});
  }
  const int64_t nb = blocks.size();

  auto f64 = at::TensorOptions().dtype(at::kDouble);
  at::Tensor stats = at::empty({na, kStats}, f64);
  at::Tensor hist = at::empty({na, bins}, f64.dtype(at::kLong));
  at::Tensor grad = at::empty({ng, 2}, f64);
  at::Tensor partial = at::zeros({nb, 4}, f64);
  double* ps = stats.data_ptr<double>();
  int64_t* ph = hist.data_ptr<int64_t>();
  double* pg = grad.data_ptr<double>();
  double* pp = partial.data_ptr<double>();

  // big tasks first (weight blocks, then activations, then gradients)
  const int64_t tasks = nb + na + ng;
  std::atomic<int64_t> next{0};
  at::parallel_for(0, at::get_num_threads(), 1, [&](int64_t, int64_t) {
    Scratch s;
    for (int64_t k = next.fetch_add(1); k < tasks; k = next.fetch_add(1)) {
      if (k < nb) {
        const auto& b = blocks[k];
        const at::Tensor& w = weights[b.layer];
        weight_task(w.data_ptr<float>(), w.size(1), b.r0, b.r1, pp + 4 * k);
      } else if (k < nb + na) {
        const int64_t a = k - nb;
        activation_task(acts[a], static_cast<float>(thresholds[a]), bn, s, ps + kStats * a,
                        ph + bins * a);
      } else {
        gradient_task(grads[k - nb - na], pg + 2 * (k - nb - na));
      }
    }
  });

  at::Tensor wsum = at::zeros({nw, 4}, f64);
  double* pw = wsum.data_ptr<double>();
  for (int64_t k = 0; k < nb; ++k)  // fixed order: the same sums for any thread count
    for (int j = 0; j < 4; ++j) pw[4 * blocks[k].layer + j] += pp[4 * k + j];
  return {stats, hist, grad, wsum};
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("record_stats", &record_stats,
        "Fused activation, gradient and weight statistics of one record (CPU float32)",
        pybind11::call_guard<pybind11::gil_scoped_release>());
}
