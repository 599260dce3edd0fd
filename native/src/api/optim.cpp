// Optimizers with exactly torch.optim's single-tensor semantics (PyTorch 1.13 _single_tensor_sgd /
// _single_tensor_adamw). A step updates every parameter of every group inside one native call.
#include <ATen/ATen.h>
#include <ATen/core/grad_mode.h>

#include <cmath>
#include <cstring>
#include <string>

#include "common.h"

namespace {

struct ParamState {
  at::Tensor param;
  int64_t step = 0;          // AdamW: number of steps taken for this parameter
  at::Tensor exp_avg;        // AdamW
  at::Tensor exp_avg_sq;     // AdamW
  at::Tensor max_exp_avg_sq; // AdamW with amsgrad
  at::Tensor momentum_buffer; // SGD with momentum
};

struct Group {
  sl_optim_options options;
  std::vector<ParamState> params;
};

struct Optimizer {
  int32_t kind;
  std::vector<Group> groups;
};

Optimizer& get_opt(sl_optimizer h) {
  if (h == nullptr) throw sl::ArgumentError("optimizer handle is null");
  return *reinterpret_cast<Optimizer*>(h);
}

void validate(int32_t kind, const sl_optim_options& o) {
  auto bad = [](const std::string& what) { throw sl::ArgumentError("invalid optimizer option: " + what); };
  if (!(o.lr >= 0)) bad("lr must be >= 0, got " + std::to_string(o.lr));
  if (!(o.weight_decay >= 0)) bad("weight_decay must be >= 0, got " + std::to_string(o.weight_decay));
  if (kind == SL_OPTIM_SGD) {
    if (!(o.momentum >= 0)) bad("momentum must be >= 0, got " + std::to_string(o.momentum));
    if (o.nesterov && (o.momentum <= 0 || o.dampening != 0))
      bad("nesterov momentum requires a momentum and zero dampening");
  } else {
    if (!(o.eps >= 0)) bad("eps must be >= 0, got " + std::to_string(o.eps));
    if (!(o.beta1 >= 0 && o.beta1 < 1)) bad("beta1 must be in [0, 1), got " + std::to_string(o.beta1));
    if (!(o.beta2 >= 0 && o.beta2 < 1)) bad("beta2 must be in [0, 1), got " + std::to_string(o.beta2));
  }
}

void sgd_step(const sl_optim_options& o, ParamState& s) {
  auto& param = s.param;
  const auto& grad = param.grad();
  at::Tensor d_p = o.maximize ? grad.neg() : grad;
  if (o.weight_decay != 0) d_p = d_p.add(param, o.weight_decay);
  if (o.momentum != 0) {
    if (!s.momentum_buffer.defined()) {
      s.momentum_buffer = d_p.clone().detach();
    } else {
      s.momentum_buffer.mul_(o.momentum).add_(d_p, 1 - o.dampening);
    }
    d_p = o.nesterov ? d_p.add(s.momentum_buffer, o.momentum) : s.momentum_buffer;
  }
  param.add_(d_p, -o.lr);
}

void adamw_step(const sl_optim_options& o, ParamState& s) {
  auto& param = s.param;
  at::Tensor grad = o.maximize ? param.grad().neg() : param.grad();
  if (!s.exp_avg.defined()) {
    s.exp_avg = at::zeros_like(param, at::MemoryFormat::Preserve);
    s.exp_avg_sq = at::zeros_like(param, at::MemoryFormat::Preserve);
    if (o.amsgrad) s.max_exp_avg_sq = at::zeros_like(param, at::MemoryFormat::Preserve);
  }
  s.step += 1;
  param.mul_(1 - o.lr * o.weight_decay);
  s.exp_avg.mul_(o.beta1).add_(grad, 1 - o.beta1);
  s.exp_avg_sq.mul_(o.beta2).addcmul_(grad, grad, 1 - o.beta2);
  const double step = static_cast<double>(s.step);
  const double bias_correction1 = 1 - std::pow(o.beta1, step);
  const double bias_correction2 = 1 - std::pow(o.beta2, step);
  const double step_size = o.lr / bias_correction1;
  const double bias_correction2_sqrt = std::sqrt(bias_correction2);
  at::Tensor denom;
  if (o.amsgrad) {
    if (!s.max_exp_avg_sq.defined()) s.max_exp_avg_sq = at::zeros_like(param, at::MemoryFormat::Preserve);
    at::maximum_out(s.max_exp_avg_sq, s.max_exp_avg_sq, s.exp_avg_sq);
    denom = (s.max_exp_avg_sq.sqrt() / bias_correction2_sqrt).add_(o.eps);
  } else {
    denom = (s.exp_avg_sq.sqrt() / bias_correction2_sqrt).add_(o.eps);
  }
  param.addcdiv_(s.exp_avg, denom, -step_size);
}

}  // namespace

extern "C" {

sl_status sl_optim_new(int32_t kind, sl_optimizer* out) {
  SL_TRY
  if (kind != SL_OPTIM_SGD && kind != SL_OPTIM_ADAMW)
    throw sl::ArgumentError("unknown optimizer kind " + std::to_string(kind));
  sl::require(out, "out");
  *out = reinterpret_cast<sl_optimizer>(new Optimizer{kind, {}});
  SL_CATCH
}

sl_status sl_optim_free(sl_optimizer opt) {
  SL_TRY
  delete reinterpret_cast<Optimizer*>(opt);
  SL_CATCH
}

sl_status sl_optim_add_group(sl_optimizer opt, const sl_tensor* params, int32_t count,
                             const sl_optim_options* options) {
  SL_TRY
  auto& o = get_opt(opt);
  const auto& opts = *sl::require(options, "options");
  validate(o.kind, opts);
  auto list = sl::tensor_list(params, count, "params");
  Group g{opts, {}};
  for (size_t i = 0; i < list.size(); ++i) {
    const auto& p = list[i];
    if (!p.is_leaf())
      throw sl::ArgumentError("parameter " + std::to_string(i) + " of the group is not a leaf tensor; an optimizer "
                              "can only update leaves");
    if (!p.is_floating_point())
      throw sl::ArgumentError("parameter " + std::to_string(i) + " has dtype " +
                              std::string(c10::toString(p.scalar_type())) + "; optimizers need floating point");
    for (const auto& other : o.groups)
      for (const auto& s : other.params)
        if (s.param.is_same(p))
          throw sl::ArgumentError("parameter " + std::to_string(i) + " already belongs to another parameter group");
    for (const auto& s : g.params)
      if (s.param.is_same(p)) throw sl::ArgumentError("parameter " + std::to_string(i) + " appears twice in the group");
    ParamState s;
    s.param = p;
    g.params.push_back(std::move(s));
  }
  o.groups.push_back(std::move(g));
  SL_CATCH
}

sl_status sl_optim_set_group_options(sl_optimizer opt, int32_t group, const sl_optim_options* options) {
  SL_TRY
  auto& o = get_opt(opt);
  if (group < 0 || group >= static_cast<int32_t>(o.groups.size()))
    throw sl::ArgumentError("no parameter group " + std::to_string(group));
  validate(o.kind, *sl::require(options, "options"));
  o.groups[static_cast<size_t>(group)].options = *options;
  SL_CATCH
}

sl_status sl_optim_get_group_options(sl_optimizer opt, int32_t group, sl_optim_options* options) {
  SL_TRY
  auto& o = get_opt(opt);
  if (group < 0 || group >= static_cast<int32_t>(o.groups.size()))
    throw sl::ArgumentError("no parameter group " + std::to_string(group));
  *sl::require(options, "options") = o.groups[static_cast<size_t>(group)].options;
  SL_CATCH
}

sl_status sl_optim_step(sl_optimizer opt) {
  SL_TRY
  auto& o = get_opt(opt);
  at::NoGradGuard no_grad;
  for (auto& g : o.groups)
    for (auto& s : g.params) {
      if (!s.param.grad().defined()) continue;  // torch.optim skips parameters without a gradient
      if (o.kind == SL_OPTIM_SGD) sgd_step(g.options, s);
      else adamw_step(g.options, s);
    }
  SL_CATCH
}

sl_status sl_optim_zero_grad(sl_optimizer opt, int32_t set_to_none) {
  SL_TRY
  auto& o = get_opt(opt);
  for (auto& g : o.groups)
    for (auto& s : g.params) {
      auto& grad = s.param.mutable_grad();
      if (!grad.defined()) continue;
      if (set_to_none) {
        grad = at::Tensor();
      } else {
        if (grad.grad_fn()) grad = grad.detach();
        else grad.requires_grad_(false);
        grad.zero_();
      }
    }
  SL_CATCH
}

sl_status sl_optim_state(sl_optimizer opt, int32_t group, int32_t index, const char* name, sl_tensor* out) {
  SL_TRY
  auto& o = get_opt(opt);
  if (group < 0 || group >= static_cast<int32_t>(o.groups.size()))
    throw sl::ArgumentError("no parameter group " + std::to_string(group));
  auto& g = o.groups[static_cast<size_t>(group)];
  if (index < 0 || index >= static_cast<int32_t>(g.params.size()))
    throw sl::ArgumentError("group " + std::to_string(group) + " has no parameter " + std::to_string(index));
  const auto& s = g.params[static_cast<size_t>(index)];
  const std::string n = sl::require(name, "name");
  at::Tensor r;
  if (n == "step") r = s.step > 0 ? at::scalar_tensor(static_cast<double>(s.step), at::kFloat) : at::Tensor();
  else if (n == "exp_avg") r = s.exp_avg;
  else if (n == "exp_avg_sq") r = s.exp_avg_sq;
  else if (n == "max_exp_avg_sq") r = s.max_exp_avg_sq;
  else if (n == "momentum_buffer") r = s.momentum_buffer;
  else throw sl::ArgumentError("unknown optimizer state '" + n + "'");
  SL_OUT(out) = r.defined() ? sl::new_handle(r) : nullptr;
  SL_CATCH
}

}  // extern "C"
