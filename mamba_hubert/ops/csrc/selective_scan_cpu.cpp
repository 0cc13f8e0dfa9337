// Fused selective scan (Mamba-1 S6) for CPU tensors: forward and backward.
//
// Semantics are those of mamba-ssm's selective_scan_fn with input-dependent B and C:
//   dt = delta + delta_bias (then softplus),  h_t = exp(dt_t A) h_{t-1} + dt_t B_t u_t,
//   y_t = C_t . h_t + D u_t,  out = y * silu(z);  h_{-1} = initial_state, or 0 without one.
// Rows (batch x d_inner) run in parallel; each row walks the time axis once with its state in registers.
// Memory is O(batch * d_inner * (L + d_state)): the forward keeps the state only every kCheckpoint steps and
// the backward recomputes one chunk of states at a time from those checkpoints before its reverse scan.
// The state dimension is processed in 32-byte packs (GCC vector extensions), so vectorisation does not depend
// on the auto-vectoriser; the code is compiled twice (baseline x86-64, where a pack is two SSE registers, and
// AVX2+FMA) and picked at run time, so a cached build stays valid on any x86-64 CPU. Elsewhere (e.g. aarch64)
// only the generic build is used; GCC maps the packs onto that machine's vector registers.

#include <ATen/Parallel.h>
#include <torch/extension.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#pragma GCC diagnostic ignored "-Wpsabi"  // packs only cross always-inlined calls, never a real ABI boundary

namespace {

constexpr int64_t kCheckpoint = 64;  // time steps between stored states
constexpr int64_t kLanes = 8;        // the state dim is zero-padded to a multiple of this
constexpr int64_t kMaxGroup = 32;    // lanes handled together in one pass over time

#define MH_INLINE inline __attribute__((always_inline))
#if defined(__x86_64__)
#define MH_AVX2 __attribute__((target("avx2,fma")))
#else
#define MH_AVX2  // other architectures run the baseline build only (cpu_has_avx2() is false)
#endif

// ---------------------------------------------------------------------------------------------------------
// Packs: 32 bytes of one element type. Every math helper below takes a scalar or a pack alike, so the
// row-wise loops use the pack version for the body and the scalar version for the tail.

using f8 = float __attribute__((vector_size(32)));
using i8 = int32_t __attribute__((vector_size(32)));
using u8 = uint32_t __attribute__((vector_size(32)));
using f4 = float __attribute__((vector_size(16)));
using d4 = double __attribute__((vector_size(32)));
using d2 = double __attribute__((vector_size(16)));

template <typename T>
struct Pack;
template <>
struct Pack<float> {
  using V = f8;
  static constexpr int kWidth = 8;
};
template <>
struct Pack<double> {
  using V = d4;
  static constexpr int kWidth = 4;
};

template <typename V, typename T>
MH_INLINE V load(const T* p) {
  V v;
  std::memcpy(&v, p, sizeof(V));
  return v;
}

template <typename V, typename T>
MH_INLINE void store(T* p, const V& v) {
  std::memcpy(p, &v, sizeof(V));
}

MH_INLINE float hsum(f8 v) {
  f4 s = __builtin_shufflevector(v, v, 0, 1, 2, 3) + __builtin_shufflevector(v, v, 4, 5, 6, 7);
  s += __builtin_shufflevector(s, s, 2, 3, 0, 1);
  s += __builtin_shufflevector(s, s, 1, 0, 3, 2);
  return s[0];
}

MH_INLINE double hsum(d4 v) {
  const d2 s = __builtin_shufflevector(v, v, 0, 1) + __builtin_shufflevector(v, v, 2, 3);
  return s[0] + s[1];
}

MH_INLINE float to_float(int32_t x) { return static_cast<float>(x); }
MH_INLINE f8 to_float(i8 x) { return __builtin_convertvector(x, f8); }

template <typename To, typename From>
MH_INLINE To bit_cast(const From& x) {
  static_assert(sizeof(To) == sizeof(From), "bit_cast needs equal sizes");
  To y;
  std::memcpy(&y, &x, sizeof(To));
  return y;
}

// Cephes-style expf for float scalars and packs (a few ulp): exp(x) = 2^k exp(r), k = round(x / ln2),
// |r| <= ln2 / 2. Inputs are clamped to the normal range: results below FLT_MIN come out as FLT_MIN and
// above ~2^127 saturate instead of reaching inf.
template <typename V, typename U>
MH_INLINE V exp_float(V x) {
  x = x < -87.3365447f ? -87.3365447f : x;
  x = x > 88.3762626f ? 88.3762626f : x;
  // Adding 1.5 * 2^23 rounds x / ln2 to an integer held in the low mantissa bits; the extra 127 is the
  // exponent bias, so shifting those bits into the exponent field gives 2^k directly.
  constexpr float kShift = 12582912.0f + 127.0f;
  const V t = x * 1.44269504088896341f + kShift;
  const V k = t - kShift;
  const V r = x - k * 0.693359375f + k * 2.12194440e-4f;  // ln2 split in two so that k * ln2 is exact
  V p = r * 1.9875691500e-4f + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * (r * r) + r + 1.0f;
  return p * bit_cast<V>(bit_cast<U>(t) << 23);
}

// Cephes-style logf for positive normal x: x = 2^e m with m in [sqrt(1/2), sqrt(2)), log(m) by a
// polynomial in m - 1.
template <typename V, typename I>
MH_INLINE V log_float(V x) {
  I bits = bit_cast<I>(x);
  V e = to_float(((bits >> 23) & 0xff) - 126);
  V m = bit_cast<V>((bits & 0x007fffff) | 0x3f000000);
  const auto low = m < 0.707106781186547524f;
  e = low ? e - 1.0f : e;
  m = low ? m + m - 1.0f : m - 1.0f;
  const V m2 = m * m;
  V p = m * 7.0376836292e-2f - 1.1514610310e-1f;
  p = p * m + 1.1676998740e-1f;
  p = p * m - 1.2420140846e-1f;
  p = p * m + 1.4249322787e-1f;
  p = p * m - 1.6668057665e-1f;
  p = p * m + 2.0000714765e-1f;
  p = p * m - 2.4999993993e-1f;
  p = p * m + 3.3333331174e-1f;
  const V y = p * m * m2 - e * 2.12194440e-4f - m2 * 0.5f;
  return m + y + e * 0.693359375f;
}

MH_INLINE float exp_v(float x) { return exp_float<float, uint32_t>(x); }
MH_INLINE f8 exp_v(f8 x) { return exp_float<f8, u8>(x); }
MH_INLINE float log_v(float x) { return log_float<float, int32_t>(x); }
MH_INLINE f8 log_v(f8 x) { return log_float<f8, i8>(x); }
// float64 only serves gradient checks: libm, lane by lane.
MH_INLINE double exp_v(double x) { return std::exp(x); }
MH_INLINE double log_v(double x) { return std::log(x); }
MH_INLINE d4 exp_v(d4 x) { return d4{std::exp(x[0]), std::exp(x[1]), std::exp(x[2]), std::exp(x[3])}; }
MH_INLINE d4 log_v(d4 x) { return d4{std::log(x[0]), std::log(x[1]), std::log(x[2]), std::log(x[3])}; }

// torch's softplus (beta 1, threshold 20). log1p(e) = log(w) * e / (w - 1) with w = 1 + e stays accurate
// when e is tiny, where log(1 + e) alone would lose the digits that matter for small step sizes.
template <typename T, typename V>
MH_INLINE V softplus_v(V x) {
  const V e = exp_v(x);
  const V w = e + T(1);
  const V l = w == T(1) ? e : log_v(w) * (e / (w - T(1)));
  return x > T(20) ? x : l;
}

// d softplus / dx, as torch computes it: 1 above the threshold, else sigmoid(x).
template <typename T, typename V>
MH_INLINE V softplus_grad_v(V x) {
  const V e = exp_v(x), one = V{} + T(1);
  return x > T(20) ? one : e / (e + T(1));
}

template <typename T, typename V>
MH_INLINE V sigmoid_v(V x) {
  return T(1) / (exp_v(-x) + T(1));
}

// ---------------------------------------------------------------------------------------------------------
// Row-wise elementwise passes over time: packs for the body, scalars for the tail.

template <typename T>
MH_INLINE void step_sizes_row(const T* raw, T bias, bool softplus, int64_t len, T* dt) {
  using V = typename Pack<T>::V;
  constexpr int W = Pack<T>::kWidth;
  int64_t t = 0;
  if (softplus) {
    for (; t + W <= len; t += W) store(dt + t, softplus_v<T>(load<V>(raw + t) + bias));
    for (; t < len; ++t) dt[t] = softplus_v<T>(raw[t] + bias);
  } else {
    for (; t < len; ++t) dt[t] = raw[t] + bias;
  }
}

// y *= silu(z)
template <typename T>
MH_INLINE void gate_row(const T* z, int64_t len, T* y) {
  using V = typename Pack<T>::V;
  constexpr int W = Pack<T>::kWidth;
  int64_t t = 0;
  for (; t + W <= len; t += W) {
    const V zt = load<V>(z + t);
    store(y + t, load<V>(y + t) * zt * sigmoid_v<T>(zt));
  }
  for (; t < len; ++t) y[t] *= z[t] * sigmoid_v<T>(z[t]);
}

// dz = dout * y * silu'(z), silu'(z) = s (1 + z (1 - s)) with s = sigmoid(z)
template <typename T>
MH_INLINE void gate_grad_row(const T* z, const T* dout, const T* y, int64_t len, T* dz) {
  using V = typename Pack<T>::V;
  constexpr int W = Pack<T>::kWidth;
  int64_t t = 0;
  for (; t + W <= len; t += W) {
    const V zt = load<V>(z + t), s = sigmoid_v<T>(zt);
    store(dz + t, load<V>(dout + t) * load<V>(y + t) * s * ((T(1) - s) * zt + T(1)));
  }
  for (; t < len; ++t) {
    const T s = sigmoid_v<T>(z[t]);
    dz[t] = dout[t] * y[t] * s * ((T(1) - s) * z[t] + T(1));
  }
}

// ddt *= d softplus(raw + bias)
template <typename T>
MH_INLINE void softplus_grad_row(const T* raw, T bias, int64_t len, T* ddt) {
  using V = typename Pack<T>::V;
  constexpr int W = Pack<T>::kWidth;
  int64_t t = 0;
  for (; t + W <= len; t += W) store(ddt + t, load<V>(ddt + t) * softplus_grad_v<T>(load<V>(raw + t) + bias));
  for (; t < len; ++t) ddt[t] *= softplus_grad_v<T>(raw[t] + bias);
}

// ---------------------------------------------------------------------------------------------------------
// Problem description shared by forward and backward: raw pointers into contiguous tensors.

template <typename T>
struct Problem {
  const T* u;      // (batch, dim, len)
  const T* delta;  // (batch, dim, len)
  const T* A;      // (dim, npad), zero-padded
  const T* B;      // (batch, len, npad), transposed and zero-padded
  const T* C;      // (batch, len, npad)
  const T* D;      // (dim) or null
  const T* z;      // (batch, dim, len) or null
  const T* bias;   // (dim) or null
  const T* h0;     // (batch, dim, nstate) or null: the state entering step 0
  bool softplus;
  int64_t dim, len, nstate, npad, nchunks;
};

template <typename T>
MH_INLINE void row_step_sizes(const Problem<T>& p, int64_t row, T* dt) {
  step_sizes_row(p.delta + row * p.len, p.bias ? p.bias[row % p.dim] : T(0), p.softplus, p.len, dt);
}

// One time step for G lanes (K packs): h <- exp(dt a) h + x b; returns C . h. kKeep also stores h and the
// decay for the backward's reverse scan.
template <typename T, int K, bool kKeep>
MH_INLINE T advance(typename Pack<T>::V* h, const typename Pack<T>::V* a, T dt, T x, const T* b, const T* c,
                    T* h_keep, T* decay_keep) {
  using V = typename Pack<T>::V;
  constexpr int W = Pack<T>::kWidth;
  V acc{};
  for (int k = 0; k < K; ++k) {
    const V decay = exp_v(a[k] * dt);
    h[k] = decay * h[k] + load<V>(b + k * W) * x;
    acc += load<V>(c + k * W) * h[k];
    if (kKeep) {
      store(h_keep + k * W, h[k]);
      store(decay_keep + k * W, decay);
    }
  }
  return hsum(acc);
}

// ---------------------------------------------------------------------------------------------------------
// Forward

template <typename T>
struct ForwardOut {
  T* out;   // (batch, dim, len)
  T* last;  // (batch, dim, nstate) or null
  T* ckpt;  // (batch, dim, nchunks, npad) or null: state entering each chunk
};

template <typename T, int G>
MH_INLINE void forward_group(const Problem<T>& p, const ForwardOut<T>& o, int64_t row, int64_t n0, const T* dt,
                             T* y) {
  using V = typename Pack<T>::V;
  constexpr int W = Pack<T>::kWidth, K = G / W;
  const int64_t b = row / p.dim, d = row % p.dim;
  const T* u = p.u + row * p.len;
  const T* Bb = p.B + b * p.len * p.npad + n0;
  const T* Cb = p.C + b * p.len * p.npad + n0;
  V a[K], h[K];
  T start[G] = {};  // padded lanes stay zero
  for (int64_t n = 0; p.h0 && n < G && n0 + n < p.nstate; ++n) start[n] = p.h0[row * p.nstate + n0 + n];
  for (int k = 0; k < K; ++k) {
    a[k] = load<V>(p.A + d * p.npad + n0 + k * W);
    h[k] = load<V>(start + k * W);
  }
  for (int64_t c = 0; c < p.nchunks; ++c) {
    if (o.ckpt) {
      T* slot = o.ckpt + (row * p.nchunks + c) * p.npad + n0;
      for (int k = 0; k < K; ++k) store(slot + k * W, h[k]);
    }
    const int64_t t1 = std::min(p.len, (c + 1) * kCheckpoint);
    for (int64_t t = c * kCheckpoint; t < t1; ++t) {
      y[t] += advance<T, K, false>(h, a, dt[t], dt[t] * u[t], Bb + t * p.npad, Cb + t * p.npad, nullptr, nullptr);
    }
  }
  if (o.last) {
    T hs[G];
    for (int k = 0; k < K; ++k) store(hs + k * W, h[k]);
    for (int64_t n = 0; n < G && n0 + n < p.nstate; ++n) o.last[row * p.nstate + n0 + n] = hs[n];
  }
}

template <typename T>
MH_INLINE void forward_rows(const Problem<T>& p, const ForwardOut<T>& o, int64_t begin, int64_t end) {
  std::vector<T> dt(p.len);
  for (int64_t row = begin; row < end; ++row) {
    const T* u = p.u + row * p.len;
    T* y = o.out + row * p.len;
    row_step_sizes(p, row, dt.data());
    const T skip = p.D ? p.D[row % p.dim] : T(0);
    for (int64_t t = 0; t < p.len; ++t) y[t] = skip * u[t];
    for (int64_t n0 = 0; n0 < p.npad; n0 += kMaxGroup) {
      switch (std::min(kMaxGroup, p.npad - n0)) {
        case 8: forward_group<T, 8>(p, o, row, n0, dt.data(), y); break;
        case 16: forward_group<T, 16>(p, o, row, n0, dt.data(), y); break;
        case 24: forward_group<T, 24>(p, o, row, n0, dt.data(), y); break;
        default: forward_group<T, 32>(p, o, row, n0, dt.data(), y); break;
      }
    }
    if (p.z) gate_row(p.z + row * p.len, p.len, y);
  }
}

template <typename T>
MH_AVX2 void forward_rows_avx2(const Problem<T>& p, const ForwardOut<T>& o, int64_t begin, int64_t end) {
  forward_rows(p, o, begin, end);
}

template <typename T>
void forward_rows_base(const Problem<T>& p, const ForwardOut<T>& o, int64_t begin, int64_t end) {
  forward_rows(p, o, begin, end);
}

// ---------------------------------------------------------------------------------------------------------
// Backward

template <typename T>
struct BackwardIo {
  const T* dout;   // (batch, dim, len)
  const T* dlast;  // (batch, dim, nstate) or null
  const T* ckpt;   // (batch, dim, nchunks, npad)
  T* du;           // (batch, dim, len)
  T* ddelta;       // (batch, dim, len)
  T* dz;           // (batch, dim, len) or null
  T* dA;           // (dim, npad), accumulated over the batch
  T* dD;           // (dim) or null, accumulated
  T* dbias;        // (dim) or null, accumulated
  T* dh0;          // (batch, dim, nstate) or null: gradient of the state entering step 0
};

// Per-thread scratch: row buffers plus this thread's share of the dB / dC sums over d_inner.
template <typename T>
struct Scratch {
  T* dt;     // (len)
  T* g;      // (len) gradient reaching y before the gate
  T* y;      // (len) ungated output, recomputed for dz; null without z
  T* h;      // (kCheckpoint, kMaxGroup) states of the current chunk
  T* decay;  // (kCheckpoint, kMaxGroup)
  T* dB;     // (len, npad)
  T* dC;     // (len, npad)
};

template <typename T, int G>
MH_INLINE void backward_group(const Problem<T>& p, const BackwardIo<T>& io, const Scratch<T>& s, int64_t row,
                              int64_t n0) {
  using V = typename Pack<T>::V;
  constexpr int W = Pack<T>::kWidth, K = G / W;
  const int64_t b = row / p.dim, d = row % p.dim;
  const T* u = p.u + row * p.len;
  const T* Bb = p.B + b * p.len * p.npad + n0;
  const T* Cb = p.C + b * p.len * p.npad + n0;
  T* ddt = io.ddelta + row * p.len;
  T* du = io.du + row * p.len;
  V a[K], dh[K], dA[K], h[K];
  T dlast[G] = {};
  for (int64_t n = 0; io.dlast && n < G && n0 + n < p.nstate; ++n) dlast[n] = io.dlast[row * p.nstate + n0 + n];
  for (int k = 0; k < K; ++k) {
    a[k] = load<V>(p.A + d * p.npad + n0 + k * W);
    dh[k] = load<V>(dlast + k * W);
    dA[k] = V{};
  }
  for (int64_t c = p.nchunks - 1; c >= 0; --c) {
    const int64_t t0 = c * kCheckpoint;
    const int64_t count = std::min(p.len, t0 + kCheckpoint) - t0;
    const T* h0 = io.ckpt + (row * p.nchunks + c) * p.npad + n0;
    for (int k = 0; k < K; ++k) h[k] = load<V>(h0 + k * W);
    for (int64_t i = 0; i < count; ++i) {
      const int64_t t = t0 + i;
      const T cy = advance<T, K, true>(h, a, s.dt[t], s.dt[t] * u[t], Bb + t * p.npad, Cb + t * p.npad,
                                       s.h + i * G, s.decay + i * G);
      if (s.y) s.y[t] += cy;
    }
    for (int64_t i = count - 1; i >= 0; --i) {
      // dh holds decay_{t+1} * dh_{t+1}; adding g_t C_t completes the adjoint of h_t.
      const int64_t t = t0 + i;
      const T* bt = Bb + t * p.npad;
      const T* ct = Cb + t * p.npad;
      const T* hc = s.h + i * G;
      const T* hp = i ? s.h + (i - 1) * G : h0;
      const T* decay = s.decay + i * G;
      T* dbt = s.dB + t * p.npad + n0;
      T* dct = s.dC + t * p.npad + n0;
      const T gt = s.g[t], dtt = s.dt[t], ut = u[t];
      V sum_dt{}, sum_du{};
      for (int k = 0; k < K; ++k) {
        const V bk = load<V>(bt + k * W), dk = load<V>(decay + k * W);
        const V adj = dh[k] + load<V>(ct + k * W) * gt;
        const V carried = dk * load<V>(hp + k * W);
        store(dct + k * W, load<V>(dct + k * W) + load<V>(hc + k * W) * gt);
        store(dbt + k * W, load<V>(dbt + k * W) + adj * (dtt * ut));
        sum_dt += adj * (a[k] * carried + bk * ut);
        sum_du += adj * bk;
        dA[k] += adj * carried * dtt;
        dh[k] = dk * adj;
      }
      ddt[t] += hsum(sum_dt);
      du[t] += dtt * hsum(sum_du);
    }
  }
  for (int k = 0; k < K; ++k) {
    T* slot = io.dA + d * p.npad + n0 + k * W;
    store(slot, load<V>(slot) + dA[k]);
  }
  if (io.dh0) {  // after step 0's adjoint, dh is decay_0 * adj_0: the gradient of the state before it
    T dstart[G];
    for (int k = 0; k < K; ++k) store(dstart + k * W, dh[k]);
    for (int64_t n = 0; n < G && n0 + n < p.nstate; ++n) io.dh0[row * p.nstate + n0 + n] = dstart[n];
  }
}

template <typename T>
MH_INLINE void backward_rows(const Problem<T>& p, const BackwardIo<T>& io, const Scratch<T>& s, int64_t batch_index,
                             int64_t begin, int64_t end) {
  for (int64_t d = begin; d < end; ++d) {
    const int64_t row = batch_index * p.dim + d;
    const T* u = p.u + row * p.len;
    const T* dout = io.dout + row * p.len;
    const T* z = p.z ? p.z + row * p.len : nullptr;
    T* ddt = io.ddelta + row * p.len;
    T* du = io.du + row * p.len;
    row_step_sizes(p, row, s.dt);
    std::copy(dout, dout + p.len, s.g);
    if (z) gate_row(z, p.len, s.g);  // g = dout * silu(z), gated like the forward's output
    const T skip = p.D ? p.D[d] : T(0);
    T dskip = 0;
    for (int64_t t = 0; t < p.len; ++t) {
      du[t] = skip * s.g[t];
      ddt[t] = 0;
      dskip += s.g[t] * u[t];
    }
    if (io.dD) io.dD[d] += dskip;
    if (s.y) {
      for (int64_t t = 0; t < p.len; ++t) s.y[t] = skip * u[t];
    }
    for (int64_t n0 = 0; n0 < p.npad; n0 += kMaxGroup) {
      switch (std::min(kMaxGroup, p.npad - n0)) {
        case 8: backward_group<T, 8>(p, io, s, row, n0); break;
        case 16: backward_group<T, 16>(p, io, s, row, n0); break;
        case 24: backward_group<T, 24>(p, io, s, row, n0); break;
        default: backward_group<T, 32>(p, io, s, row, n0); break;
      }
    }
    if (z) gate_grad_row(z, dout, s.y, p.len, io.dz + row * p.len);
    // Chain rule through dt = softplus(delta + bias); ddt holds the gradient w.r.t. dt until here.
    if (p.softplus) softplus_grad_row(p.delta + row * p.len, p.bias ? p.bias[d] : T(0), p.len, ddt);
    if (io.dbias) {
      T dbias = 0;
      for (int64_t t = 0; t < p.len; ++t) dbias += ddt[t];
      io.dbias[d] += dbias;
    }
  }
}

template <typename T>
MH_AVX2 void backward_rows_avx2(const Problem<T>& p, const BackwardIo<T>& io, const Scratch<T>& s,
                                int64_t batch_index, int64_t begin, int64_t end) {
  backward_rows(p, io, s, batch_index, begin, end);
}

template <typename T>
void backward_rows_base(const Problem<T>& p, const BackwardIo<T>& io, const Scratch<T>& s, int64_t batch_index,
                        int64_t begin, int64_t end) {
  backward_rows(p, io, s, batch_index, begin, end);
}

// ---------------------------------------------------------------------------------------------------------
// Tensor plumbing

bool cpu_has_avx2() {
#if defined(__x86_64__)
  static const bool yes = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return yes;
#else
  return false;
#endif
}

std::atomic<bool> avx2_enabled{true};

bool has_avx2() { return avx2_enabled.load(std::memory_order_relaxed) && cpu_has_avx2(); }

// Lets tests run the baseline code on an AVX2 machine; returns whether AVX2 code runs from now on.
bool set_avx2(bool enabled) {
  avx2_enabled = enabled;
  return has_avx2();
}

int64_t padded_states(int64_t nstate) { return (nstate + kLanes - 1) / kLanes * kLanes; }

// (batch, nstate, len) -> (batch, len, npad) with zero lanes beyond nstate.
at::Tensor time_major_padded(const at::Tensor& x, int64_t npad) {
  auto out = at::zeros({x.size(0), x.size(2), npad}, x.options());
  out.narrow(2, 0, x.size(1)).copy_(x.transpose(1, 2));
  return out;
}

template <typename T>
const T* data_or_null(const c10::optional<at::Tensor>& t) {
  return t.has_value() ? t->data_ptr<T>() : nullptr;
}

void check_inputs(const at::Tensor& u, const at::Tensor& delta, const at::Tensor& A, const at::Tensor& B,
                  const at::Tensor& C, const c10::optional<at::Tensor>& D, const c10::optional<at::Tensor>& z,
                  const c10::optional<at::Tensor>& bias, const c10::optional<at::Tensor>& h0) {
  TORCH_CHECK(u.scalar_type() == at::kFloat || u.scalar_type() == at::kDouble,
              "selective_scan_cpu computes in float32 or float64, got ", u.scalar_type());
  TORCH_CHECK(u.dim() == 3, "u must be (batch, d_inner, L), got ", u.sizes());
  const auto batch = u.size(0), dim = u.size(1), len = u.size(2);
  TORCH_CHECK(A.dim() == 2 && A.size(0) == dim, "A must be (d_inner, d_state), got ", A.sizes());
  const auto nstate = A.size(1);
  TORCH_CHECK(delta.sizes() == u.sizes(), "delta must have u's shape ", u.sizes(), ", got ", delta.sizes());
  for (const auto* bc : {&B, &C}) {
    TORCH_CHECK(bc->dim() == 3 && bc->size(0) == batch && bc->size(1) == nstate && bc->size(2) == len,
                "B and C must be input-dependent (batch, d_state, L) = (", batch, ", ", nstate, ", ", len,
                "), got ", bc->sizes());
  }
  if (z) TORCH_CHECK(z->sizes() == u.sizes(), "z must have u's shape ", u.sizes(), ", got ", z->sizes());
  for (const auto* v : {&D, &bias}) {
    if (v->has_value()) TORCH_CHECK((*v)->dim() == 1 && (*v)->size(0) == dim, "D and delta_bias must be (d_inner,)");
  }
  if (h0) {
    TORCH_CHECK(h0->dim() == 3 && h0->size(0) == batch && h0->size(1) == dim && h0->size(2) == nstate,
                "initial_state must be (batch, d_inner, d_state) = (", batch, ", ", dim, ", ", nstate, "), got ",
                h0->sizes());
  }
  auto check_layout = [&u](const at::Tensor& t) {
    TORCH_CHECK(t.device().is_cpu() && t.is_contiguous() && t.scalar_type() == u.scalar_type(),
                "inputs must be contiguous CPU tensors of one dtype");
  };
  for (const at::Tensor* t : {&u, &delta, &A, &B, &C}) check_layout(*t);
  for (const auto* t : {&D, &z, &bias, &h0}) {
    if (t->has_value()) check_layout(**t);
  }
}

// Keeps the padded copies alive for as long as the raw pointers in Problem are used.
struct Prepared {
  at::Tensor A, B, C;
  int64_t nstate, npad, nchunks;
};

Prepared prepare(const at::Tensor& u, const at::Tensor& A, const at::Tensor& B, const at::Tensor& C) {
  const int64_t nstate = A.size(1), npad = padded_states(nstate);
  auto Ap = at::zeros({A.size(0), npad}, A.options());
  Ap.narrow(1, 0, nstate).copy_(A);
  const int64_t nchunks = (u.size(2) + kCheckpoint - 1) / kCheckpoint;
  return {Ap, time_major_padded(B, npad), time_major_padded(C, npad), nstate, npad, nchunks};
}

template <typename T>
Problem<T> make_problem(const at::Tensor& u, const at::Tensor& delta, const Prepared& pr,
                        const c10::optional<at::Tensor>& D, const c10::optional<at::Tensor>& z,
                        const c10::optional<at::Tensor>& bias, const c10::optional<at::Tensor>& h0,
                        bool softplus) {
  return {u.data_ptr<T>(),    delta.data_ptr<T>(), pr.A.data_ptr<T>(),    pr.B.data_ptr<T>(),
          pr.C.data_ptr<T>(), data_or_null<T>(D),  data_or_null<T>(z),    data_or_null<T>(bias),
          data_or_null<T>(h0), softplus,           u.size(1),             u.size(2),
          pr.nstate,          pr.npad,             pr.nchunks};
}

// Returns (out, last_state or empty, checkpoints or empty).
std::vector<at::Tensor> scan_forward(const at::Tensor& u, const at::Tensor& delta, const at::Tensor& A,
                                     const at::Tensor& B, const at::Tensor& C, const c10::optional<at::Tensor>& D,
                                     const c10::optional<at::Tensor>& z, const c10::optional<at::Tensor>& bias,
                                     const c10::optional<at::Tensor>& initial_state, bool softplus,
                                     bool return_last_state, bool keep_checkpoints) {
  check_inputs(u, delta, A, B, C, D, z, bias, initial_state);
  const auto pr = prepare(u, A, B, C);
  const int64_t batch = u.size(0), dim = u.size(1);
  auto out = at::empty_like(u);
  auto last = return_last_state ? at::empty({batch, dim, pr.nstate}, u.options()) : at::Tensor();
  auto ckpt = keep_checkpoints ? at::empty({batch, dim, pr.nchunks, pr.npad}, u.options()) : at::Tensor();
  AT_DISPATCH_FLOATING_TYPES(u.scalar_type(), "selective_scan_cpu_fwd", [&] {
    const auto p = make_problem<scalar_t>(u, delta, pr, D, z, bias, initial_state, softplus);
    const ForwardOut<scalar_t> o{out.data_ptr<scalar_t>(), last.defined() ? last.data_ptr<scalar_t>() : nullptr,
                                 ckpt.defined() ? ckpt.data_ptr<scalar_t>() : nullptr};
    at::parallel_for(0, batch * dim, 1, [&](int64_t begin, int64_t end) {
      if (has_avx2()) {
        forward_rows_avx2(p, o, begin, end);
      } else {
        forward_rows_base(p, o, begin, end);
      }
    });
  });
  return {out, last, ckpt};
}

// Returns (du, ddelta, dA, dB, dC, dD or empty, dz or empty, ddelta_bias or empty, dinitial_state or empty).
// The checkpoints already hold the initial state (the first one is the state entering step 0), so the backward
// takes only whether there was one.
std::vector<at::Tensor> scan_backward(const at::Tensor& dout, const c10::optional<at::Tensor>& dlast,
                                      const at::Tensor& u, const at::Tensor& delta, const at::Tensor& A,
                                      const at::Tensor& B, const at::Tensor& C, const c10::optional<at::Tensor>& D,
                                      const c10::optional<at::Tensor>& z, const c10::optional<at::Tensor>& bias,
                                      bool softplus, const at::Tensor& ckpt, bool has_initial_state) {
  check_inputs(u, delta, A, B, C, D, z, bias, c10::nullopt);
  const auto pr = prepare(u, A, B, C);
  TORCH_CHECK(dout.sizes() == u.sizes() && dout.is_contiguous() && dout.scalar_type() == u.scalar_type(),
              "grad of out must be contiguous with u's shape and dtype");
  TORCH_CHECK(ckpt.is_contiguous() && ckpt.sizes() == at::IntArrayRef({u.size(0), u.size(1), pr.nchunks, pr.npad}),
              "checkpoints do not match the inputs");
  if (dlast) TORCH_CHECK(dlast->is_contiguous() && dlast->scalar_type() == u.scalar_type(), "bad last-state grad");
  const int64_t batch = u.size(0), dim = u.size(1), len = u.size(2), npad = pr.npad;
  auto du = at::empty_like(u), ddelta = at::empty_like(u);
  auto dz = z ? at::empty_like(u) : at::Tensor();
  auto dA = at::zeros({dim, npad}, u.options());
  auto dD = D ? at::zeros({dim}, u.options()) : at::Tensor();
  auto dbias = bias ? at::zeros({dim}, u.options()) : at::Tensor();
  auto dh0 = has_initial_state ? at::empty({batch, dim, pr.nstate}, u.options()) : at::Tensor();
  auto dB = at::empty({batch, len, npad}, u.options()), dC = at::empty({batch, len, npad}, u.options());
  // dB and dC sum over d_inner, which is split across threads: each thread sums into its own slot. Called
  // from inside a parallel region, parallel_for runs inline on this thread, so one slot does.
  const bool nested = at::in_parallel_region();
  const int64_t threads = nested ? 1 : at::get_num_threads();
  auto partial = at::empty({threads, 2, len, npad}, u.options());
  AT_DISPATCH_FLOATING_TYPES(u.scalar_type(), "selective_scan_cpu_bwd", [&] {
    const auto p = make_problem<scalar_t>(u, delta, pr, D, z, bias, c10::nullopt, softplus);
    const BackwardIo<scalar_t> io{dout.data_ptr<scalar_t>(),
                                  data_or_null<scalar_t>(dlast),
                                  ckpt.data_ptr<scalar_t>(),
                                  du.data_ptr<scalar_t>(),
                                  ddelta.data_ptr<scalar_t>(),
                                  dz.defined() ? dz.data_ptr<scalar_t>() : nullptr,
                                  dA.data_ptr<scalar_t>(),
                                  dD.defined() ? dD.data_ptr<scalar_t>() : nullptr,
                                  dbias.defined() ? dbias.data_ptr<scalar_t>() : nullptr,
                                  dh0.defined() ? dh0.data_ptr<scalar_t>() : nullptr};
    for (int64_t b = 0; b < batch; ++b) {
      partial.zero_();
      at::parallel_for(0, dim, 1, [&](int64_t begin, int64_t end) {
        const int64_t slot = nested ? 0 : at::get_thread_num();
        TORCH_CHECK(slot < threads, "thread id beyond the reduction slots");
        std::vector<scalar_t> rows((z ? 3 : 2) * len), chunk(2 * kCheckpoint * kMaxGroup);
        scalar_t* part = partial.data_ptr<scalar_t>() + slot * 2 * len * npad;
        const Scratch<scalar_t> s{rows.data(),          rows.data() + len,
                                  z ? rows.data() + 2 * len : nullptr,
                                  chunk.data(),         chunk.data() + kCheckpoint * kMaxGroup,
                                  part,                 part + len * npad};
        if (has_avx2()) {
          backward_rows_avx2(p, io, s, b, begin, end);
        } else {
          backward_rows_base(p, io, s, b, begin, end);
        }
      });
      dB[b].copy_(partial.select(1, 0).sum(0));
      dC[b].copy_(partial.select(1, 1).sum(0));
    }
  });
  const auto nstate = pr.nstate;
  auto unpad = [nstate](const at::Tensor& t) { return t.narrow(2, 0, nstate).transpose(1, 2).contiguous(); };
  return {du,
          ddelta,
          dA.narrow(1, 0, nstate).contiguous(),
          unpad(dB),
          unpad(dC),
          dD,
          dz,
          dbias,
          dh0};
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("forward", &scan_forward, "selective scan forward (CPU)");
  m.def("backward", &scan_backward, "selective scan backward (CPU)");
  m.def("set_avx2", &set_avx2, "allow (true) or forbid the AVX2+FMA code path; returns whether it is used");
  m.attr("checkpoint_interval") = kCheckpoint;
}
