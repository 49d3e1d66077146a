// Fused CPU kernels for training VarGFaceNet-style networks on MXNet 1.9.1.
//
// Why hand-written: MXNet's CPU wheel has no per-operator choice between oneDNN and its native
// kernels. oneDNN's convolutions are ~2x faster than the native ones on this network, but with
// oneDNN on, BatchNorm backward is ~17x slower than the native kernel and PReLU (never a oneDNN
// op) pays a layout reorder in every direction. These operators give BatchNorm(+PReLU) one fast
// implementation that runs beside oneDNN convolutions. Built against the external operator
// library API (lib_api.h ships inside the mxnet wheel), loaded by vargfacenet/symbol/fastops.py.
//
// Mathematics (identical to MXNet's BatchNorm with use_global_stats=False and
// LeakyReLU(act_type='prelu'), up to float rounding):
//   mean_c = E[x],  var_c = E[(x - mean_c)^2] (biased),  invstd = 1 / sqrt(var + eps)
//   z = (x - mean) * invstd * gamma + beta             (gamma = 1 when fix_gamma)
//   y = z                                                act_type = none
//   y = z > 0 ? z : slope_c * z                          act_type = prelu
//   moving_mean = momentum * moving_mean + (1 - momentum) * mean      (in forward)
//   moving_var  = momentum * moving_var  + (1 - momentum) * var
// These graphs are training graphs: batch statistics are always used. Inference and exported
// checkpoints use the standard operators (vargfacenet.symbol.fastpath).
//
// Operators:
//   vfn_bn_act(data, gamma, beta, moving_mean, moving_var[, slope]) -> out
//        attrs: eps, momentum, fix_gamma, act_type ('none' | 'prelu')
//   vfn_prelu(data, slope) -> out
//   vfn_channel_scale(data, scale) -> out = data * scale, scale of shape (N, C, 1, ...)
//        (the squeeze-and-excitation product, MXNet's broadcast_mul, whose backward reduction
//        is slow on CPU)
//   vfn_add_prelu(data, [scale,] other, slope) -> out = prelu(data [* scale] + other)
//        attrs: scaled ('0' | '1'); scale of shape (N, C, 1, ...). A residual sum and the PReLU
//        after it (with the SE product when scaled) in one pass: MXNet writes and re-reads the
//        full tensor between each of these operators, and at batch 32 this network's forward
//        pass is bound by memory traffic, not arithmetic.
// Tensors are (N, C, ...) with channels on axis 1, float32 or float64 (all alike). Gradients
// are written (req=write); the fast-path graphs never accumulate into these outputs.
#include <cmath>
#include <cstring>
#include <string>
#include <vector>

#include "mxnet/lib_api.h"

using namespace mxnet::ext;

namespace {

struct Layout {
  int64_t n, c, s;  // batch, channels, spatial size per channel (1 for 2-D inputs)
};

bool layout_of(const std::vector<int64_t>& shape, Layout* out) {
  if (shape.size() < 2) return false;
  out->n = shape[0];
  out->c = shape[1];
  out->s = 1;
  for (size_t i = 2; i < shape.size(); ++i) out->s *= shape[i];
  return true;
}

std::string attr(const std::unordered_map<std::string, std::string>& attrs,
                 const std::string& key, const std::string& fallback) {
  auto it = attrs.find(key);
  return it == attrs.end() ? fallback : it->second;
}

bool truthy(const std::string& v) { return v == "True" || v == "true" || v == "1"; }

struct BnParams {
  double eps, momentum;
  bool fix_gamma, prelu;
};

bool parse_bn(const std::unordered_map<std::string, std::string>& attrs, BnParams* p) {
  try {
    p->eps = std::stod(attr(attrs, "eps", "0.001"));
    p->momentum = std::stod(attr(attrs, "momentum", "0.9"));
  } catch (...) {
    MX_ERROR_MSG << "vfn_bn_act: eps and momentum must be numbers";
    return false;
  }
  p->fix_gamma = truthy(attr(attrs, "fix_gamma", "True"));
  std::string act = attr(attrs, "act_type", "none");
  if (act != "none" && act != "prelu") {
    MX_ERROR_MSG << "vfn_bn_act: act_type must be 'none' or 'prelu', got '" << act << "'";
    return false;
  }
  p->prelu = act == "prelu";
  return true;
}

// Batch statistics of channel c: mean and biased variance. Each row of S values is summed in
// T (vectorised) around a pivot (the channel's first value, so E[v^2] - E[v]^2 does not
// cancel), rows are combined in double.
template <typename T>
void channel_stats(const T* x, const Layout& l, int64_t c, double* mean, double* var) {
  const T pivot = x[c * l.s];
  double sum = 0.0, sumsq = 0.0;
  for (int64_t n = 0; n < l.n; ++n) {
    const T* p = x + (n * l.c + c) * l.s;
    T ls = T(0), lq = T(0);
#pragma omp simd reduction(+ : ls, lq)
    for (int64_t i = 0; i < l.s; ++i) {
      T v = p[i] - pivot;
      ls += v;
      lq += v * v;
    }
    sum += ls;
    sumsq += lq;
  }
  const double m = static_cast<double>(l.n * l.s);
  const double shifted = sum / m;
  *mean = pivot + shifted;
  double v = sumsq / m - shifted * shifted;
  *var = v > 0.0 ? v : 0.0;
}

// ---------------------------------------------------------------------------------------------
MXReturnValue bn_parse(const std::unordered_map<std::string, std::string>& attrs, int* num_in,
                       int* num_out) {
  BnParams p;
  if (!parse_bn(attrs, &p)) return MX_FAIL;
  *num_in = p.prelu ? 6 : 5;
  *num_out = 1;
  return MX_SUCCESS;
}

// Every input and the output share one type, float32 or float64 (whichever is known first; MXNet
// calls this again as more types become known). float64 exists for exact checks of whole
// networks: in float32, PReLU's kink turns rounding into O(1) gradient differences.
MXReturnValue same_float_type(const char* op, std::vector<int>* in_types,
                              std::vector<int>* out_types) {
  int known = -1;
  for (const std::vector<int>* types : {in_types, out_types}) {
    for (int t : *types) {
      if (t == -1) continue;
      if (t != kFloat32 && t != kFloat64) {
        MX_ERROR_MSG << op << ": inputs must be float32 or float64";
        return MX_FAIL;
      }
      if (known != -1 && t != known) {
        MX_ERROR_MSG << op << ": all inputs must have the same type (float32 or float64)";
        return MX_FAIL;
      }
      known = t;
    }
  }
  if (known == -1) return MX_SUCCESS;
  for (int& t : *in_types) t = known;
  for (int& t : *out_types) t = known;
  return MX_SUCCESS;
}

MXReturnValue bn_type(const std::unordered_map<std::string, std::string>& attrs,
                      std::vector<int>* in_types, std::vector<int>* out_types) {
  return same_float_type("vfn_bn_act", in_types, out_types);
}

MXReturnValue bn_shape(const std::unordered_map<std::string, std::string>& attrs,
                       std::vector<std::vector<unsigned int>>* in_shapes,
                       std::vector<std::vector<unsigned int>>* out_shapes) {
  const std::vector<unsigned int>& data = (*in_shapes)[0];
  if (data.size() < 2) {
    MX_ERROR_MSG << "vfn_bn_act: data must have at least 2 dimensions (N, C, ...)";
    return MX_FAIL;
  }
  for (size_t i = 1; i < in_shapes->size(); ++i) {
    std::vector<unsigned int>& s = (*in_shapes)[i];
    if (s.empty() || (s.size() == 1 && s[0] == 0)) s = {data[1]};  // parameters: (C,)
    if (s.size() != 1 || s[0] != data[1]) {
      MX_ERROR_MSG << "vfn_bn_act: input " << i << " must have shape (" << data[1] << ",)";
      return MX_FAIL;
    }
  }
  (*out_shapes)[0] = data;
  return MX_SUCCESS;
}

// Dense in, dense out. Without this, MXNet's default check rejects inputs whose storage type is
// still undefined when the executor binds (e.g. auxiliary states), though they are dense.
MXReturnValue dense_stype(const std::unordered_map<std::string, std::string>& attrs,
                          std::vector<int>* in_stypes, std::vector<int>* out_stypes) {
  for (size_t i = 0; i < in_stypes->size(); ++i) (*in_stypes)[i] = kDefaultStorage;
  for (size_t i = 0; i < out_stypes->size(); ++i) (*out_stypes)[i] = kDefaultStorage;
  return MX_SUCCESS;
}

MXReturnValue bn_mutate(const std::unordered_map<std::string, std::string>& attrs,
                        std::vector<int>* input_indices) {
  input_indices->push_back(3);  // moving_mean
  input_indices->push_back(4);  // moving_var
  return MX_SUCCESS;
}

template <typename T>
MXReturnValue bn_forward_t(const std::unordered_map<std::string, std::string>& attrs,
                           std::vector<MXTensor>* inputs, std::vector<MXTensor>* outputs,
                           const OpResource& res) {
  BnParams p;
  Layout l;
  if (!parse_bn(attrs, &p) || !layout_of((*inputs)[0].shape, &l)) return MX_FAIL;
  const T* x = (*inputs)[0].data<T>();
  const T* gamma = (*inputs)[1].data<T>();
  const T* beta = (*inputs)[2].data<T>();
  T* moving_mean = (*inputs)[3].data<T>();
  T* moving_var = (*inputs)[4].data<T>();
  const T* slope = p.prelu ? (*inputs)[5].data<T>() : nullptr;
  T* y = (*outputs)[0].data<T>();
#pragma omp parallel for schedule(static)
  for (int64_t c = 0; c < l.c; ++c) {
    double mean, var;
    channel_stats(x, l, c, &mean, &var);
    const double invstd = 1.0 / std::sqrt(var + p.eps);
    const double g = p.fix_gamma ? 1.0 : gamma[c];
    const T scale = static_cast<T>(g * invstd);
    // z = (x - mean) * scale + beta, centred first as MXNet does: x * scale + (beta - mean *
    // scale) loses digits to cancellation when |mean| >> std, and a deep network amplifies it
    const T fmean = static_cast<T>(mean), shift = beta[c];
    const T a = slope ? slope[c] : T(1);
    for (int64_t n = 0; n < l.n; ++n) {
      const T* px = x + (n * l.c + c) * l.s;
      T* py = y + (n * l.c + c) * l.s;
      if (slope) {
#pragma omp simd
        for (int64_t i = 0; i < l.s; ++i) {
          T z = (px[i] - fmean) * scale + shift;
          py[i] = z > T(0) ? z : a * z;
        }
      } else {
#pragma omp simd
        for (int64_t i = 0; i < l.s; ++i) py[i] = (px[i] - fmean) * scale + shift;
      }
    }
    moving_mean[c] = static_cast<T>(p.momentum * moving_mean[c] + (1.0 - p.momentum) * mean);
    moving_var[c] = static_cast<T>(p.momentum * moving_var[c] + (1.0 - p.momentum) * var);
  }
  return MX_SUCCESS;
}

// inputs: [dy, data, gamma, beta, moving_mean, moving_var, (slope), y]
// outputs: [ddata, dgamma, dbeta, dmoving_mean, dmoving_var, (dslope)]
template <typename T>
MXReturnValue bn_backward_t(const std::unordered_map<std::string, std::string>& attrs,
                            std::vector<MXTensor>* inputs, std::vector<MXTensor>* outputs,
                            const OpResource& res) {
  BnParams p;
  Layout l;
  if (!parse_bn(attrs, &p) || !layout_of((*inputs)[1].shape, &l)) return MX_FAIL;
  const T* dy = (*inputs)[0].data<T>();
  const T* x = (*inputs)[1].data<T>();
  const T* gamma = (*inputs)[2].data<T>();
  const T* beta = (*inputs)[3].data<T>();
  const T* slope = p.prelu ? (*inputs)[6].data<T>() : nullptr;
  T* dx = (*outputs)[0].data<T>();
  T* dgamma = (*outputs)[1].data<T>();
  T* dbeta = (*outputs)[2].data<T>();
  T* dslope = p.prelu ? (*outputs)[5].data<T>() : nullptr;
  for (int k = 3; k <= 4; ++k) {  // auxiliary states have no gradient
    if (static_cast<size_t>(k) < outputs->size() && (*outputs)[k].data_ptr)
      std::memset((*outputs)[k].data_ptr, 0, sizeof(T) * (*outputs)[k].size());
  }
  const double m = static_cast<double>(l.n * l.s);
#pragma omp parallel for schedule(static)
  for (int64_t c = 0; c < l.c; ++c) {
    double mean, var;
    channel_stats(x, l, c, &mean, &var);
    const double invstd = 1.0 / std::sqrt(var + p.eps);
    const double g = p.fix_gamma ? 1.0 : gamma[c];
    const T scale = static_cast<T>(g * invstd);
    const T shift = beta[c];
    const T a = slope ? slope[c] : T(1);
    // pass 1: sums of dz, dz * (x - mean) (dz = gradient at the BatchNorm output) and of the
    // slope gradient; T within a row (vectorised), double across rows
    const T fmean = static_cast<T>(mean);  // z is recomputed exactly as in forward
    double sum_dz = 0.0, sum_dzx = 0.0, sum_slope = 0.0;
    for (int64_t n = 0; n < l.n; ++n) {
      const T* px = x + (n * l.c + c) * l.s;
      const T* pd = dy + (n * l.c + c) * l.s;
      T s1 = T(0), s2 = T(0), s3 = T(0);
      if (slope) {
#pragma omp simd reduction(+ : s1, s2, s3)
        for (int64_t i = 0; i < l.s; ++i) {
          const T z = (px[i] - fmean) * scale + shift;
          const bool positive = z > T(0);
          const T dz = positive ? pd[i] : a * pd[i];
          s1 += dz;
          s2 += dz * (px[i] - fmean);
          s3 += positive ? T(0) : z * pd[i];
        }
      } else {
#pragma omp simd reduction(+ : s1, s2)
        for (int64_t i = 0; i < l.s; ++i) {
          s1 += pd[i];
          s2 += pd[i] * (px[i] - fmean);
        }
      }
      sum_dz += s1;
      sum_dzx += s2;
      sum_slope += s3;
    }
    // dbeta = sum dz; dgamma = sum dz * xhat;
    // dx = g * invstd * (dz - dbeta / m - xhat * dgamma / m)
    const double d_beta = sum_dz;
    const double d_gamma = invstd * (sum_dzx - (mean - fmean) * sum_dz);
    const double k_dz = g * invstd;
    const double k_x = -g * invstd * invstd * d_gamma / m;
    const double k_0 = -g * invstd * d_beta / m;  // dx = k_dz dz + k_x (x - mean) + k_0
    const T fa = static_cast<T>(k_dz), fb = static_cast<T>(k_x),
                fc = static_cast<T>(k_0);
    for (int64_t n = 0; n < l.n; ++n) {
      const T* px = x + (n * l.c + c) * l.s;
      const T* pd = dy + (n * l.c + c) * l.s;
      T* po = dx + (n * l.c + c) * l.s;
      if (slope) {
#pragma omp simd
        for (int64_t i = 0; i < l.s; ++i) {
          T z = (px[i] - fmean) * scale + shift;
          T dz = z > T(0) ? pd[i] : a * pd[i];
          po[i] = fa * dz + fb * (px[i] - fmean) + fc;
        }
      } else {
#pragma omp simd
        for (int64_t i = 0; i < l.s; ++i) po[i] = fa * pd[i] + fb * (px[i] - fmean) + fc;
      }
    }
    dbeta[c] = static_cast<T>(d_beta);
    dgamma[c] = p.fix_gamma ? T(0) : static_cast<T>(d_gamma);
    if (dslope) dslope[c] = static_cast<T>(sum_slope);
  }
  return MX_SUCCESS;
}

// ---------------------------------------------------------------------------------------------
MXReturnValue prelu_parse(const std::unordered_map<std::string, std::string>& attrs,
                          int* num_in, int* num_out) {
  *num_in = 2;
  *num_out = 1;
  return MX_SUCCESS;
}

MXReturnValue prelu_type(const std::unordered_map<std::string, std::string>& attrs,
                         std::vector<int>* in_types, std::vector<int>* out_types) {
  return same_float_type("vfn_prelu", in_types, out_types);
}

MXReturnValue scale_type(const std::unordered_map<std::string, std::string>& attrs,
                         std::vector<int>* in_types, std::vector<int>* out_types) {
  return same_float_type("vfn_channel_scale", in_types, out_types);
}

MXReturnValue add_type(const std::unordered_map<std::string, std::string>& attrs,
                       std::vector<int>* in_types, std::vector<int>* out_types) {
  return same_float_type("vfn_add_prelu", in_types, out_types);
}

MXReturnValue prelu_shape(const std::unordered_map<std::string, std::string>& attrs,
                          std::vector<std::vector<unsigned int>>* in_shapes,
                          std::vector<std::vector<unsigned int>>* out_shapes) {
  return bn_shape(attrs, in_shapes, out_shapes);
}

template <typename T>
MXReturnValue prelu_forward_t(const std::unordered_map<std::string, std::string>& attrs,
                              std::vector<MXTensor>* inputs, std::vector<MXTensor>* outputs,
                              const OpResource& res) {
  Layout l;
  if (!layout_of((*inputs)[0].shape, &l)) return MX_FAIL;
  const T* x = (*inputs)[0].data<T>();
  const T* slope = (*inputs)[1].data<T>();
  T* y = (*outputs)[0].data<T>();
#pragma omp parallel for schedule(static) collapse(2)
  for (int64_t n = 0; n < l.n; ++n) {
    for (int64_t c = 0; c < l.c; ++c) {
      const T a = slope[c];
      const T* px = x + (n * l.c + c) * l.s;
      T* py = y + (n * l.c + c) * l.s;
#pragma omp simd
      for (int64_t i = 0; i < l.s; ++i) py[i] = px[i] > T(0) ? px[i] : a * px[i];
    }
  }
  return MX_SUCCESS;
}

// inputs: [dy, data, slope, y]; outputs: [ddata, dslope]
template <typename T>
MXReturnValue prelu_backward_t(const std::unordered_map<std::string, std::string>& attrs,
                               std::vector<MXTensor>* inputs, std::vector<MXTensor>* outputs,
                               const OpResource& res) {
  Layout l;
  if (!layout_of((*inputs)[1].shape, &l)) return MX_FAIL;
  const T* dy = (*inputs)[0].data<T>();
  const T* x = (*inputs)[1].data<T>();
  const T* slope = (*inputs)[2].data<T>();
  T* dx = (*outputs)[0].data<T>();
  T* dslope = (*outputs)[1].data<T>();
#pragma omp parallel for schedule(static)
  for (int64_t c = 0; c < l.c; ++c) {
    const T a = slope[c];
    double total = 0.0;
    for (int64_t n = 0; n < l.n; ++n) {
      const T* px = x + (n * l.c + c) * l.s;
      const T* pd = dy + (n * l.c + c) * l.s;
      T* po = dx + (n * l.c + c) * l.s;
      T part = T(0);
#pragma omp simd reduction(+ : part)
      for (int64_t i = 0; i < l.s; ++i) {
        const bool positive = px[i] > T(0);
        po[i] = positive ? pd[i] : a * pd[i];
        part += positive ? T(0) : px[i] * pd[i];
      }
      total += part;
    }
    dslope[c] = static_cast<T>(total);
  }
  return MX_SUCCESS;
}

// ---------------------------------------------------------------------------------------------
MXReturnValue scale_shape(const std::unordered_map<std::string, std::string>& attrs,
                          std::vector<std::vector<unsigned int>>* in_shapes,
                          std::vector<std::vector<unsigned int>>* out_shapes) {
  const std::vector<unsigned int>& data = (*in_shapes)[0];
  const std::vector<unsigned int>& scale = (*in_shapes)[1];
  bool ok = data.size() >= 2 && scale.size() == data.size() && scale[0] == data[0] &&
            scale[1] == data[1];
  for (size_t i = 2; ok && i < scale.size(); ++i) ok = scale[i] == 1;
  if (!ok) {
    MX_ERROR_MSG << "vfn_channel_scale: scale must have shape (N, C, 1, ...) matching data";
    return MX_FAIL;
  }
  (*out_shapes)[0] = data;
  return MX_SUCCESS;
}

template <typename T>
MXReturnValue scale_forward_t(const std::unordered_map<std::string, std::string>& attrs,
                              std::vector<MXTensor>* inputs, std::vector<MXTensor>* outputs,
                              const OpResource& res) {
  Layout l;
  if (!layout_of((*inputs)[0].shape, &l)) return MX_FAIL;
  const T* x = (*inputs)[0].data<T>();
  const T* k = (*inputs)[1].data<T>();
  T* y = (*outputs)[0].data<T>();
#pragma omp parallel for schedule(static)
  for (int64_t row = 0; row < l.n * l.c; ++row) {
    const T f = k[row];
    const T* px = x + row * l.s;
    T* py = y + row * l.s;
#pragma omp simd
    for (int64_t i = 0; i < l.s; ++i) py[i] = px[i] * f;
  }
  return MX_SUCCESS;
}

// inputs: [dy, data, scale, y]; outputs: [ddata, dscale]
template <typename T>
MXReturnValue scale_backward_t(const std::unordered_map<std::string, std::string>& attrs,
                               std::vector<MXTensor>* inputs, std::vector<MXTensor>* outputs,
                               const OpResource& res) {
  Layout l;
  if (!layout_of((*inputs)[1].shape, &l)) return MX_FAIL;
  const T* dy = (*inputs)[0].data<T>();
  const T* x = (*inputs)[1].data<T>();
  const T* k = (*inputs)[2].data<T>();
  T* dx = (*outputs)[0].data<T>();
  T* dk = (*outputs)[1].data<T>();
#pragma omp parallel for schedule(static)
  for (int64_t row = 0; row < l.n * l.c; ++row) {
    const T f = k[row];
    const T* px = x + row * l.s;
    const T* pd = dy + row * l.s;
    T* po = dx + row * l.s;
    T total = T(0);
#pragma omp simd reduction(+ : total)
    for (int64_t i = 0; i < l.s; ++i) {
      po[i] = pd[i] * f;
      total += pd[i] * px[i];
    }
    dk[row] = total;
  }
  return MX_SUCCESS;
}

// ---------------------------------------------------------------------------------------------
bool add_scaled(const std::unordered_map<std::string, std::string>& attrs) {
  return truthy(attr(attrs, "scaled", "0"));
}

MXReturnValue add_parse(const std::unordered_map<std::string, std::string>& attrs, int* num_in,
                        int* num_out) {
  std::string v = attr(attrs, "scaled", "0");
  if (v != "0" && v != "1" && v != "True" && v != "False" && v != "true" && v != "false") {
    MX_ERROR_MSG << "vfn_add_prelu: scaled must be 0 or 1, got '" << v << "'";
    return MX_FAIL;
  }
  *num_in = add_scaled(attrs) ? 4 : 3;
  *num_out = 1;
  return MX_SUCCESS;
}

MXReturnValue add_shape(const std::unordered_map<std::string, std::string>& attrs,
                        std::vector<std::vector<unsigned int>>* in_shapes,
                        std::vector<std::vector<unsigned int>>* out_shapes) {
  const bool scaled = add_scaled(attrs);
  const std::vector<unsigned int>& data = (*in_shapes)[0];
  if (data.size() < 2) {
    MX_ERROR_MSG << "vfn_add_prelu: data must have at least 2 dimensions (N, C, ...)";
    return MX_FAIL;
  }
  if (scaled) {
    const std::vector<unsigned int>& scale = (*in_shapes)[1];
    bool ok = scale.size() == data.size() && scale[0] == data[0] && scale[1] == data[1];
    for (size_t i = 2; ok && i < scale.size(); ++i) ok = scale[i] == 1;
    if (!ok) {
      MX_ERROR_MSG << "vfn_add_prelu: scale must have shape (N, C, 1, ...) matching data";
      return MX_FAIL;
    }
  }
  if ((*in_shapes)[scaled ? 2 : 1] != data) {
    MX_ERROR_MSG << "vfn_add_prelu: the two summands must have the same shape";
    return MX_FAIL;
  }
  std::vector<unsigned int>& slope = (*in_shapes)[scaled ? 3 : 2];
  if (slope.empty() || (slope.size() == 1 && slope[0] == 0)) slope = {data[1]};
  if (slope.size() != 1 || slope[0] != data[1]) {
    MX_ERROR_MSG << "vfn_add_prelu: slope must have shape (" << data[1] << ",)";
    return MX_FAIL;
  }
  (*out_shapes)[0] = data;
  return MX_SUCCESS;
}

// The operator's inputs, data first at position `first` (0 in forward; 1 in backward, after dy)
template <typename T>
struct AddPreluInputs {
  bool scaled;
  Layout l;
  const T *x, *k, *other, *slope;  // k is null when not scaled
};

template <typename T>
bool add_inputs(const std::unordered_map<std::string, std::string>& attrs,
                std::vector<MXTensor>& inputs, size_t first, AddPreluInputs<T>* in) {
  in->scaled = add_scaled(attrs);
  if (!layout_of(inputs[first].shape, &in->l)) return false;
  const size_t at = first + (in->scaled ? 1 : 0);
  in->x = inputs[first].data<T>();
  in->k = in->scaled ? inputs[first + 1].data<T>() : nullptr;
  in->other = inputs[at + 1].data<T>();
  in->slope = inputs[at + 2].data<T>();
  return true;
}

template <typename T>
MXReturnValue add_forward_t(const std::unordered_map<std::string, std::string>& attrs,
                            std::vector<MXTensor>* inputs, std::vector<MXTensor>* outputs,
                            const OpResource& res) {
  AddPreluInputs<T> in;
  if (!add_inputs(attrs, *inputs, 0, &in)) return MX_FAIL;
  const bool scaled = in.scaled;
  const Layout l = in.l;
  const T *x = in.x, *k = in.k, *o = in.other, *slope = in.slope;
  T* y = (*outputs)[0].data<T>();
#pragma omp parallel for schedule(static)
  for (int64_t row = 0; row < l.n * l.c; ++row) {
    const T f = scaled ? k[row] : T(1);
    const T a = slope[row % l.c];
    const T* px = x + row * l.s;
    const T* po = o + row * l.s;
    T* py = y + row * l.s;
#pragma omp simd
    for (int64_t i = 0; i < l.s; ++i) {
      const T z = px[i] * f + po[i];
      py[i] = z > T(0) ? z : a * z;
    }
  }
  return MX_SUCCESS;
}

// inputs: [dy, data, (scale,) other, slope, y]; outputs: [ddata, (dscale,) dother, dslope]
template <typename T>
MXReturnValue add_backward_t(const std::unordered_map<std::string, std::string>& attrs,
                             std::vector<MXTensor>* inputs, std::vector<MXTensor>* outputs,
                             const OpResource& res) {
  AddPreluInputs<T> in;
  if (!add_inputs(attrs, *inputs, 1, &in)) return MX_FAIL;
  const bool scaled = in.scaled;
  const Layout l = in.l;
  const T *x = in.x, *k = in.k, *o = in.other, *slope = in.slope;
  const T* dy = (*inputs)[0].data<T>();
  T* dx = (*outputs)[0].data<T>();
  T* dk = scaled ? (*outputs)[1].data<T>() : nullptr;
  T* dother = (*outputs)[scaled ? 2 : 1].data<T>();
  T* dslope = (*outputs)[scaled ? 3 : 2].data<T>();
  // Per channel (one thread owns a channel across the batch, so the slope sum needs no atomics)
#pragma omp parallel for schedule(static)
  for (int64_t c = 0; c < l.c; ++c) {
    const T a = slope[c];
    double slope_total = 0.0;
    for (int64_t n = 0; n < l.n; ++n) {
      const int64_t row = n * l.c + c;
      const T f = scaled ? k[row] : T(1);
      const T* px = x + row * l.s;
      const T* po = o + row * l.s;
      const T* pd = dy + row * l.s;
      T* pdx = dx + row * l.s;
      T* pdo = dother + row * l.s;
      T part_slope = T(0), part_scale = T(0);
#pragma omp simd reduction(+ : part_slope, part_scale)
      for (int64_t i = 0; i < l.s; ++i) {
        const T z = px[i] * f + po[i];
        const bool positive = z > T(0);
        const T g = positive ? pd[i] : a * pd[i];
        pdo[i] = g;
        pdx[i] = g * f;
        part_scale += g * px[i];
        part_slope += positive ? T(0) : z * pd[i];
      }
      if (scaled) dk[row] = part_scale;
      slope_total += part_slope;
    }
    dslope[c] = static_cast<T>(slope_total);
  }
  return MX_SUCCESS;
}

// The registered entry points: one instantiation per type. Input 0 (data, or dy in backward)
// carries the type every tensor of the call shares (same_float_type).
#define VFN_DISPATCH(name)                                                                  \
  MXReturnValue name(const std::unordered_map<std::string, std::string>& attrs,             \
                     std::vector<MXTensor>* inputs, std::vector<MXTensor>* outputs,          \
                     const OpResource& res) {                                                \
    return (*inputs)[0].dtype == kFloat64 ? name##_t<double>(attrs, inputs, outputs, res)  \
                                          : name##_t<float>(attrs, inputs, outputs, res);  \
  }
VFN_DISPATCH(bn_forward)
VFN_DISPATCH(bn_backward)
VFN_DISPATCH(prelu_forward)
VFN_DISPATCH(prelu_backward)
VFN_DISPATCH(scale_forward)
VFN_DISPATCH(scale_backward)
VFN_DISPATCH(add_forward)
VFN_DISPATCH(add_backward)
#undef VFN_DISPATCH

}  // namespace

REGISTER_OP(vfn_bn_act)
    .setParseAttrs(bn_parse)
    .setInferType(bn_type)
    .setInferShape(bn_shape)
    .setInferSType(dense_stype)
    .setMutateInputs(bn_mutate)
    .setForward(bn_forward, "cpu")
    .setBackward(bn_backward, "cpu");

REGISTER_OP(vfn_prelu)
    .setParseAttrs(prelu_parse)
    .setInferType(prelu_type)
    .setInferShape(prelu_shape)
    .setInferSType(dense_stype)
    .setForward(prelu_forward, "cpu")
    .setBackward(prelu_backward, "cpu");

REGISTER_OP(vfn_channel_scale)
    .setParseAttrs(prelu_parse)
    .setInferType(scale_type)
    .setInferShape(scale_shape)
    .setInferSType(dense_stype)
    .setForward(scale_forward, "cpu")
    .setBackward(scale_backward, "cpu");

REGISTER_OP(vfn_add_prelu)
    .setParseAttrs(add_parse)
    .setInferType(add_type)
    .setInferShape(add_shape)
    .setInferSType(dense_stype)
    .setForward(add_forward, "cpu")
    .setBackward(add_backward, "cpu");

MXReturnValue initialize(int version) {
  if (version < 10900) {
    MX_ERROR_MSG << "vfn_ops needs MXNet >= 1.9.0, found " << version;
    return MX_FAIL;
  }
  return MX_SUCCESS;
}
