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
// Tensors are (N, C, ...) with channels on axis 1, float32. Gradients are written (req=write);
// the fast-path graphs never accumulate into these outputs.
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
// float (vectorised) around a pivot (the channel's first value, so E[v^2] - E[v]^2 does not
// cancel), rows are combined in double.
void channel_stats(const float* x, const Layout& l, int64_t c, double* mean, double* var) {
  const float pivot = x[c * l.s];
  double sum = 0.0, sumsq = 0.0;
  for (int64_t n = 0; n < l.n; ++n) {
    const float* p = x + (n * l.c + c) * l.s;
    float ls = 0.0f, lq = 0.0f;
#pragma omp simd reduction(+ : ls, lq)
    for (int64_t i = 0; i < l.s; ++i) {
      float v = p[i] - pivot;
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

MXReturnValue bn_type(const std::unordered_map<std::string, std::string>& attrs,
                      std::vector<int>* in_types, std::vector<int>* out_types) {
  for (size_t i = 0; i < in_types->size(); ++i) {
    if ((*in_types)[i] != kFloat32 && (*in_types)[i] != -1) {
      MX_ERROR_MSG << "vfn_bn_act: input " << i << " must be float32";
      return MX_FAIL;
    }
    (*in_types)[i] = kFloat32;
  }
  (*out_types)[0] = kFloat32;
  return MX_SUCCESS;
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

MXReturnValue bn_forward(const std::unordered_map<std::string, std::string>& attrs,
                         std::vector<MXTensor>* inputs, std::vector<MXTensor>* outputs,
                         const OpResource& res) {
  BnParams p;
  Layout l;
  if (!parse_bn(attrs, &p) || !layout_of((*inputs)[0].shape, &l)) return MX_FAIL;
  const float* x = (*inputs)[0].data<float>();
  const float* gamma = (*inputs)[1].data<float>();
  const float* beta = (*inputs)[2].data<float>();
  float* moving_mean = (*inputs)[3].data<float>();
  float* moving_var = (*inputs)[4].data<float>();
  const float* slope = p.prelu ? (*inputs)[5].data<float>() : nullptr;
  float* y = (*outputs)[0].data<float>();
#pragma omp parallel for schedule(static)
  for (int64_t c = 0; c < l.c; ++c) {
    double mean, var;
    channel_stats(x, l, c, &mean, &var);
    const double invstd = 1.0 / std::sqrt(var + p.eps);
    const double g = p.fix_gamma ? 1.0 : gamma[c];
    const float scale = static_cast<float>(g * invstd);
    // z = (x - mean) * scale + beta, centred first as MXNet does: x * scale + (beta - mean *
    // scale) loses digits to cancellation when |mean| >> std, and a deep network amplifies it
    const float fmean = static_cast<float>(mean), shift = beta[c];
    const float a = slope ? slope[c] : 1.0f;
    for (int64_t n = 0; n < l.n; ++n) {
      const float* px = x + (n * l.c + c) * l.s;
      float* py = y + (n * l.c + c) * l.s;
      if (slope) {
#pragma omp simd
        for (int64_t i = 0; i < l.s; ++i) {
          float z = (px[i] - fmean) * scale + shift;
          py[i] = z > 0.0f ? z : a * z;
        }
      } else {
#pragma omp simd
        for (int64_t i = 0; i < l.s; ++i) py[i] = (px[i] - fmean) * scale + shift;
      }
    }
    moving_mean[c] = static_cast<float>(p.momentum * moving_mean[c] + (1.0 - p.momentum) * mean);
    moving_var[c] = static_cast<float>(p.momentum * moving_var[c] + (1.0 - p.momentum) * var);
  }
  return MX_SUCCESS;
}

// inputs: [dy, data, gamma, beta, moving_mean, moving_var, (slope), y]
// outputs: [ddata, dgamma, dbeta, dmoving_mean, dmoving_var, (dslope)]
MXReturnValue bn_backward(const std::unordered_map<std::string, std::string>& attrs,
                          std::vector<MXTensor>* inputs, std::vector<MXTensor>* outputs,
                          const OpResource& res) {
  BnParams p;
  Layout l;
  if (!parse_bn(attrs, &p) || !layout_of((*inputs)[1].shape, &l)) return MX_FAIL;
  const float* dy = (*inputs)[0].data<float>();
  const float* x = (*inputs)[1].data<float>();
  const float* gamma = (*inputs)[2].data<float>();
  const float* beta = (*inputs)[3].data<float>();
  const float* slope = p.prelu ? (*inputs)[6].data<float>() : nullptr;
  float* dx = (*outputs)[0].data<float>();
  float* dgamma = (*outputs)[1].data<float>();
  float* dbeta = (*outputs)[2].data<float>();
  float* dslope = p.prelu ? (*outputs)[5].data<float>() : nullptr;
  for (int k = 3; k <= 4; ++k) {  // auxiliary states have no gradient
    if (static_cast<size_t>(k) < outputs->size() && (*outputs)[k].data_ptr)
      std::memset((*outputs)[k].data_ptr, 0, sizeof(float) * (*outputs)[k].size());
  }
  const double m = static_cast<double>(l.n * l.s);
#pragma omp parallel for schedule(static)
  for (int64_t c = 0; c < l.c; ++c) {
    double mean, var;
    channel_stats(x, l, c, &mean, &var);
    const double invstd = 1.0 / std::sqrt(var + p.eps);
    const double g = p.fix_gamma ? 1.0 : gamma[c];
    const float scale = static_cast<float>(g * invstd);
    const float shift = beta[c];
    const float a = slope ? slope[c] : 1.0f;
    // pass 1: sums of dz, dz * (x - mean) (dz = gradient at the BatchNorm output) and of the
    // slope gradient; float within a row (vectorised), double across rows
    const float fmean = static_cast<float>(mean);  // z is recomputed exactly as in forward
    double sum_dz = 0.0, sum_dzx = 0.0, sum_slope = 0.0;
    for (int64_t n = 0; n < l.n; ++n) {
      const float* px = x + (n * l.c + c) * l.s;
      const float* pd = dy + (n * l.c + c) * l.s;
      float s1 = 0.0f, s2 = 0.0f, s3 = 0.0f;
      if (slope) {
#pragma omp simd reduction(+ : s1, s2, s3)
        for (int64_t i = 0; i < l.s; ++i) {
          const float z = (px[i] - fmean) * scale + shift;
          const bool positive = z > 0.0f;
          const float dz = positive ? pd[i] : a * pd[i];
          s1 += dz;
          s2 += dz * (px[i] - fmean);
          s3 += positive ? 0.0f : z * pd[i];
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
    // dbeta = sum dz; dgamma = sum dz * xhat; dx = g * invstd * (dz - dbeta / m - xhat * dgamma / m)
    const double d_beta = sum_dz;
    const double d_gamma = invstd * (sum_dzx - (mean - fmean) * sum_dz);
    const double k_dz = g * invstd;
    const double k_x = -g * invstd * invstd * d_gamma / m;
    const double k_0 = -g * invstd * d_beta / m;  // dx = k_dz dz + k_x (x - mean) + k_0
    const float fa = static_cast<float>(k_dz), fb = static_cast<float>(k_x),
                fc = static_cast<float>(k_0);
    for (int64_t n = 0; n < l.n; ++n) {
      const float* px = x + (n * l.c + c) * l.s;
      const float* pd = dy + (n * l.c + c) * l.s;
      float* po = dx + (n * l.c + c) * l.s;
      if (slope) {
#pragma omp simd
        for (int64_t i = 0; i < l.s; ++i) {
          float z = (px[i] - fmean) * scale + shift;
          float dz = z > 0.0f ? pd[i] : a * pd[i];
          po[i] = fa * dz + fb * (px[i] - fmean) + fc;
        }
      } else {
#pragma omp simd
        for (int64_t i = 0; i < l.s; ++i) po[i] = fa * pd[i] + fb * (px[i] - fmean) + fc;
      }
    }
    dbeta[c] = static_cast<float>(d_beta);
    dgamma[c] = p.fix_gamma ? 0.0f : static_cast<float>(d_gamma);
    if (dslope) dslope[c] = static_cast<float>(sum_slope);
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
  return bn_type(attrs, in_types, out_types);
}

MXReturnValue prelu_shape(const std::unordered_map<std::string, std::string>& attrs,
                          std::vector<std::vector<unsigned int>>* in_shapes,
                          std::vector<std::vector<unsigned int>>* out_shapes) {
  return bn_shape(attrs, in_shapes, out_shapes);
}

MXReturnValue prelu_forward(const std::unordered_map<std::string, std::string>& attrs,
                            std::vector<MXTensor>* inputs, std::vector<MXTensor>* outputs,
                            const OpResource& res) {
  Layout l;
  if (!layout_of((*inputs)[0].shape, &l)) return MX_FAIL;
  const float* x = (*inputs)[0].data<float>();
  const float* slope = (*inputs)[1].data<float>();
  float* y = (*outputs)[0].data<float>();
#pragma omp parallel for schedule(static) collapse(2)
  for (int64_t n = 0; n < l.n; ++n) {
    for (int64_t c = 0; c < l.c; ++c) {
      const float a = slope[c];
      const float* px = x + (n * l.c + c) * l.s;
      float* py = y + (n * l.c + c) * l.s;
#pragma omp simd
      for (int64_t i = 0; i < l.s; ++i) py[i] = px[i] > 0.0f ? px[i] : a * px[i];
    }
  }
  return MX_SUCCESS;
}

// inputs: [dy, data, slope, y]; outputs: [ddata, dslope]
MXReturnValue prelu_backward(const std::unordered_map<std::string, std::string>& attrs,
                             std::vector<MXTensor>* inputs, std::vector<MXTensor>* outputs,
                             const OpResource& res) {
  Layout l;
  if (!layout_of((*inputs)[1].shape, &l)) return MX_FAIL;
  const float* dy = (*inputs)[0].data<float>();
  const float* x = (*inputs)[1].data<float>();
  const float* slope = (*inputs)[2].data<float>();
  float* dx = (*outputs)[0].data<float>();
  float* dslope = (*outputs)[1].data<float>();
#pragma omp parallel for schedule(static)
  for (int64_t c = 0; c < l.c; ++c) {
    const float a = slope[c];
    double total = 0.0;
    for (int64_t n = 0; n < l.n; ++n) {
      const float* px = x + (n * l.c + c) * l.s;
      const float* pd = dy + (n * l.c + c) * l.s;
      float* po = dx + (n * l.c + c) * l.s;
      float part = 0.0f;
#pragma omp simd reduction(+ : part)
      for (int64_t i = 0; i < l.s; ++i) {
        const bool positive = px[i] > 0.0f;
        po[i] = positive ? pd[i] : a * pd[i];
        part += positive ? 0.0f : px[i] * pd[i];
      }
      total += part;
    }
    dslope[c] = static_cast<float>(total);
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

MXReturnValue scale_forward(const std::unordered_map<std::string, std::string>& attrs,
                            std::vector<MXTensor>* inputs, std::vector<MXTensor>* outputs,
                            const OpResource& res) {
  Layout l;
  if (!layout_of((*inputs)[0].shape, &l)) return MX_FAIL;
  const float* x = (*inputs)[0].data<float>();
  const float* k = (*inputs)[1].data<float>();
  float* y = (*outputs)[0].data<float>();
#pragma omp parallel for schedule(static)
  for (int64_t row = 0; row < l.n * l.c; ++row) {
    const float f = k[row];
    const float* px = x + row * l.s;
    float* py = y + row * l.s;
#pragma omp simd
    for (int64_t i = 0; i < l.s; ++i) py[i] = px[i] * f;
  }
  return MX_SUCCESS;
}

// inputs: [dy, data, scale, y]; outputs: [ddata, dscale]
MXReturnValue scale_backward(const std::unordered_map<std::string, std::string>& attrs,
                             std::vector<MXTensor>* inputs, std::vector<MXTensor>* outputs,
                             const OpResource& res) {
  Layout l;
  if (!layout_of((*inputs)[1].shape, &l)) return MX_FAIL;
  const float* dy = (*inputs)[0].data<float>();
  const float* x = (*inputs)[1].data<float>();
  const float* k = (*inputs)[2].data<float>();
  float* dx = (*outputs)[0].data<float>();
  float* dk = (*outputs)[1].data<float>();
#pragma omp parallel for schedule(static)
  for (int64_t row = 0; row < l.n * l.c; ++row) {
    const float f = k[row];
    const float* px = x + row * l.s;
    const float* pd = dy + row * l.s;
    float* po = dx + row * l.s;
    float total = 0.0f;
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
struct AddPreluInputs {
  bool scaled;
  Layout l;
  const float *x, *k, *other, *slope;  // k is null when not scaled
};

bool add_inputs(const std::unordered_map<std::string, std::string>& attrs,
                std::vector<MXTensor>& inputs, size_t first, AddPreluInputs* in) {
  in->scaled = add_scaled(attrs);
  if (!layout_of(inputs[first].shape, &in->l)) return false;
  const size_t at = first + (in->scaled ? 1 : 0);
  in->x = inputs[first].data<float>();
  in->k = in->scaled ? inputs[first + 1].data<float>() : nullptr;
  in->other = inputs[at + 1].data<float>();
  in->slope = inputs[at + 2].data<float>();
  return true;
}

MXReturnValue add_forward(const std::unordered_map<std::string, std::string>& attrs,
                          std::vector<MXTensor>* inputs, std::vector<MXTensor>* outputs,
                          const OpResource& res) {
  AddPreluInputs in;
  if (!add_inputs(attrs, *inputs, 0, &in)) return MX_FAIL;
  const bool scaled = in.scaled;
  const Layout l = in.l;
  const float *x = in.x, *k = in.k, *o = in.other, *slope = in.slope;
  float* y = (*outputs)[0].data<float>();
#pragma omp parallel for schedule(static)
  for (int64_t row = 0; row < l.n * l.c; ++row) {
    const float f = scaled ? k[row] : 1.0f;
    const float a = slope[row % l.c];
    const float* px = x + row * l.s;
    const float* po = o + row * l.s;
    float* py = y + row * l.s;
#pragma omp simd
    for (int64_t i = 0; i < l.s; ++i) {
      const float z = px[i] * f + po[i];
      py[i] = z > 0.0f ? z : a * z;
    }
  }
  return MX_SUCCESS;
}

// inputs: [dy, data, (scale,) other, slope, y]; outputs: [ddata, (dscale,) dother, dslope]
MXReturnValue add_backward(const std::unordered_map<std::string, std::string>& attrs,
                           std::vector<MXTensor>* inputs, std::vector<MXTensor>* outputs,
                           const OpResource& res) {
  AddPreluInputs in;
  if (!add_inputs(attrs, *inputs, 1, &in)) return MX_FAIL;
  const bool scaled = in.scaled;
  const Layout l = in.l;
  const float *x = in.x, *k = in.k, *o = in.other, *slope = in.slope;
  const float* dy = (*inputs)[0].data<float>();
  float* dx = (*outputs)[0].data<float>();
  float* dk = scaled ? (*outputs)[1].data<float>() : nullptr;
  float* dother = (*outputs)[scaled ? 2 : 1].data<float>();
  float* dslope = (*outputs)[scaled ? 3 : 2].data<float>();
  // Per channel (one thread owns a channel across the batch, so the slope sum needs no atomics)
#pragma omp parallel for schedule(static)
  for (int64_t c = 0; c < l.c; ++c) {
    const float a = slope[c];
    double slope_total = 0.0;
    for (int64_t n = 0; n < l.n; ++n) {
      const int64_t row = n * l.c + c;
      const float f = scaled ? k[row] : 1.0f;
      const float* px = x + row * l.s;
      const float* po = o + row * l.s;
      const float* pd = dy + row * l.s;
      float* pdx = dx + row * l.s;
      float* pdo = dother + row * l.s;
      float part_slope = 0.0f, part_scale = 0.0f;
#pragma omp simd reduction(+ : part_slope, part_scale)
      for (int64_t i = 0; i < l.s; ++i) {
        const float z = px[i] * f + po[i];
        const bool positive = z > 0.0f;
        const float g = positive ? pd[i] : a * pd[i];
        pdo[i] = g;
        pdx[i] = g * f;
        part_scale += g * px[i];
        part_slope += positive ? 0.0f : z * pd[i];
      }
      if (scaled) dk[row] = part_scale;
      slope_total += part_slope;
    }
    dslope[c] = static_cast<float>(slope_total);
  }
  return MX_SUCCESS;
}

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
    .setInferType(prelu_type)
    .setInferShape(scale_shape)
    .setInferSType(dense_stype)
    .setForward(scale_forward, "cpu")
    .setBackward(scale_backward, "cpu");

REGISTER_OP(vfn_add_prelu)
    .setParseAttrs(add_parse)
    .setInferType(prelu_type)
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
